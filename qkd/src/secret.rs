//! Buffers that hold key material: zeroised on drop, never printed, compared in constant
//! time.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes (key, pad, hash key). `Debug` shows the length only.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

impl PartialEq for SecretBytes {
    /// Constant-time in the contents (the length is not secret).
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SecretBytes {}

/// Constant-time equality of two byte strings (length is public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_length_only() {
        let s = SecretBytes::new(vec![0xAB; 5]);
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes(5 bytes)");
        assert!(!d.contains("ab") && !d.contains("171"));
    }

    #[test]
    fn equality() {
        assert_eq!(SecretBytes::from_slice(b"abc"), SecretBytes::from_slice(b"abc"));
        assert_ne!(SecretBytes::from_slice(b"abc"), SecretBytes::from_slice(b"abd"));
        assert_ne!(SecretBytes::from_slice(b"abc"), SecretBytes::from_slice(b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
