//! Encryption at rest: the key-encryption key ([`Kek`]) and the AEAD that seals key bytes
//! and authentication shares in the store file.
//!
//! Scheme. At creation an encrypted store draws a random 32-byte salt and keeps it in the
//! file; the data key is HKDF-SHA256(salt, KEK, "qpon-kms data key v1"), so two store files
//! under one KEK never share a data key. Each value is sealed with AES-256-GCM (`ring`):
//!
//! - **nonce** (96 bits) = ONU id (16) ‖ the block's arrival index in that ONU's pool (64)
//!   ‖ value kind (8) ‖ 0 (8). (ONU, arrival index) identifies one block of the store for
//!   ever (indexes are never reused, a block ID maps to exactly one of them), and each value
//!   is written once and never rewritten (a discard deletes it), so no nonce repeats under
//!   one data key. It is derived from what the block's metadata already holds, so nothing
//!   extra is stored; unlike a truncation of the 128-bit block ID it is injective.
//! - **AAD** = a domain label ‖ ONU id ‖ block ID ‖ value kind, so a sealed value moved to
//!   another row, block, ONU or kind fails to open ([`StoreError::Corrupt`]).
//!
//! The store also keeps a *check value*: a constant sealed under a nonce no block value
//! uses (kind 0xFF). Opening it tells a wrong KEK ([`StoreError::WrongKek`]) from corruption.

use std::path::{Path, PathBuf};

use qpon_qkd::SecretBytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::StoreError;

/// Conventional name of the environment variable holding the KEK in hex.
pub const KEK_ENV: &str = "QPON_KEK";

/// Key-encryption key: 32 secret bytes, zeroised on drop. `Debug` prints nothing secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Kek(pub(super) [u8; 32]);

impl core::fmt::Debug for Kek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// Why a [`Kek`] could not be loaded. Never carries the key material itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// Not exactly 64 hexadecimal digits (after trimming surrounding whitespace).
    #[error("a KEK must be 64 hexadecimal digits")]
    InvalidHex,
    /// The environment variable is unset (or not Unicode).
    #[error("environment variable {0} is not set")]
    MissingVar(String),
    /// The KEK file could not be read.
    #[error("KEK file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The KEK file is readable by its group or by others (mode shown in octal).
    #[error("KEK file {path} has mode {mode:o}; it must not be group- or world-accessible (chmod 600)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A KEK from 64 hexadecimal digits (either case); surrounding whitespace is ignored.
    pub fn from_hex(hex: &str) -> Result<Self, KekError> {
        let s = hex.trim().as_bytes();
        if s.len() != 64 {
            return Err(KekError::InvalidHex);
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut k = Kek([0u8; 32]);
        for (i, pair) in s.chunks_exact(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => k.0[i] = (h << 4) | l,
                _ => return Err(KekError::InvalidHex),
            }
        }
        Ok(k)
    }

    /// A KEK from the environment variable `var` (conventionally [`KEK_ENV`]) in hex.
    pub fn from_env(var: &str) -> Result<Self, KekError> {
        let mut v = std::env::var(var).map_err(|_| KekError::MissingVar(var.to_string()))?;
        let k = Self::from_hex(&v);
        v.zeroize();
        k
    }

    /// A KEK from a file holding 64 hex digits (surrounding whitespace allowed). On Unix a
    /// file accessible to its group or to others is refused ([`KekError::Permissions`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KekError> {
        let path = path.as_ref();
        let io = |source| KekError::Io { path: path.to_path_buf(), source };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KekError::Permissions { path: path.to_path_buf(), mode });
            }
        }
        let mut bytes = std::fs::read(path).map_err(io)?;
        let k = std::str::from_utf8(&bytes).map_err(|_| KekError::InvalidHex).and_then(Self::from_hex);
        bytes.zeroize();
        k
    }
}

/// Which value of a block is sealed (part of nonce and AAD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ValueKind {
    /// The block's key bytes.
    Key = 1,
    /// The block's authentication share.
    Share = 2,
}

/// Nonce kind byte of the check value; no block value uses it.
const CHECK_KIND: u8 = 0xFF;
const CHECK_PLAINTEXT: &[u8] = b"qpon-kms KEK check value v1";
const AAD_LABEL: &[u8] = b"qpon-kms sealed value v1";
const DATA_KEY_INFO: &[u8] = b"qpon-kms data key v1";
/// Length of the per-store salt.
pub(crate) const SALT_LEN: usize = 32;

/// The data key of an encrypted store.
pub(crate) struct Cipher {
    key: LessSafeKey,
}

impl Cipher {
    /// Derives the data key of a store with salt `salt` from `kek`.
    pub(crate) fn derive(kek: &Kek, salt: &[u8]) -> Result<Self, StoreError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&kek.0);
        let info = [DATA_KEY_INFO];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| StoreError::Corrupt("cannot derive the data key".into()))?;
        Ok(Self { key: LessSafeKey::new(UnboundKey::from(okm)) })
    }

    /// A fresh random salt.
    pub(crate) fn new_salt() -> Result<[u8; SALT_LEN], StoreError> {
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| {
            StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("no system randomness for the store salt"),
            }
        })?;
        Ok(salt)
    }

    fn nonce(onu: u16, seq: u64, kind: u8) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[0..2].copy_from_slice(&onu.to_be_bytes());
        n[2..10].copy_from_slice(&seq.to_be_bytes());
        n[10] = kind;
        Nonce::assume_unique_for_key(n)
    }

    fn aad(onu: u16, id: Uuid, kind: ValueKind) -> [u8; AAD_LABEL.len() + 2 + 16 + 1] {
        let mut a = [0u8; AAD_LABEL.len() + 2 + 16 + 1];
        let l = AAD_LABEL.len();
        a[..l].copy_from_slice(AAD_LABEL);
        a[l..l + 2].copy_from_slice(&onu.to_be_bytes());
        a[l + 2..l + 18].copy_from_slice(id.as_bytes());
        a[l + 18] = kind as u8;
        a
    }

    /// Seals value `kind` of block `id` (arrival index `seq` of ONU `onu`).
    pub(crate) fn seal(
        &self,
        onu: u16,
        seq: u64,
        id: Uuid,
        kind: ValueKind,
        plain: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::with_capacity(plain.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(plain);
        self.key
            .seal_in_place_append_tag(
                Self::nonce(onu, seq, kind as u8),
                Aad::from(Self::aad(onu, id, kind)),
                &mut buf,
            )
            .map_err(|_| {
                buf.zeroize();
                StoreError::Corrupt(format!("cannot seal a value of block {id}"))
            })?;
        Ok(buf)
    }

    /// Opens value `kind` of block `id`; any tampering is [`StoreError::Corrupt`].
    pub(crate) fn open(
        &self,
        onu: u16,
        seq: u64,
        id: Uuid,
        kind: ValueKind,
        sealed: &[u8],
    ) -> Result<SecretBytes, StoreError> {
        let mut buf = sealed.to_vec();
        let n = self
            .key
            .open_in_place(Self::nonce(onu, seq, kind as u8), Aad::from(Self::aad(onu, id, kind)), &mut buf)
            .map(|p| p.len());
        match n {
            Ok(n) => {
                buf.truncate(n);
                Ok(SecretBytes::new(buf))
            }
            Err(_) => {
                buf.zeroize();
                Err(StoreError::Corrupt(format!("sealed {kind:?} of block {id} does not authenticate")))
            }
        }
    }

    /// The check value recorded at creation.
    pub(crate) fn check_value(&self) -> Result<Vec<u8>, StoreError> {
        let mut buf = CHECK_PLAINTEXT.to_vec();
        self.key
            .seal_in_place_append_tag(Self::nonce(0, 0, CHECK_KIND), Aad::from(AAD_LABEL), &mut buf)
            .map_err(|_| StoreError::Corrupt("cannot seal the KEK check value".into()))?;
        Ok(buf)
    }

    /// Whether `check` is this key's check value.
    pub(crate) fn verify_check(&self, check: &[u8]) -> bool {
        let mut buf = check.to_vec();
        self.key
            .open_in_place(Self::nonce(0, 0, CHECK_KIND), Aad::from(AAD_LABEL), &mut buf)
            .is_ok_and(|p| p == CHECK_PLAINTEXT)
    }
}
