//! Pre-shared secrets on disk: raw bytes, private to their owner, never overwritten.

use crate::config::ConfigError;
use qpon_qkd::secret::SecretBytes;
use std::path::Path;

/// Smallest pre-shared secret accepted, in bytes: enough for the first blocks' hash keys
/// and pads of every stream (each block then refills the reserve from its own key).
pub const MIN_PSK_BYTES: usize = 1024;

/// Reads a pre-shared secret file, refusing short ones and, on Unix, files that others can
/// read or write.
pub fn read_psk(path: &Path) -> Result<SecretBytes, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
    if bytes.len() < MIN_PSK_BYTES {
        return Err(ConfigError(format!(
            "{}: a pre-shared secret needs at least {MIN_PSK_BYTES} bytes, found {}",
            path.display(),
            bytes.len()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(ConfigError(format!(
                "{}: a pre-shared secret must not be accessible to others (mode {:o}; chmod 600)",
                path.display(),
                mode & 0o777
            )));
        }
    }
    Ok(SecretBytes::new(bytes))
}

/// Writes a fresh pre-shared secret of `bytes` bytes from the OS RNG to `path` with mode
/// 0600, refusing to overwrite an existing file. Copy it to the ONU over a trusted path.
pub fn write_psk(path: &Path, bytes: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut key = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut qpon_qkd::rng::os_rng(), &mut key);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = opts.open(path).and_then(|mut f| {
        f.write_all(&key)?;
        f.sync_all()
    });
    zeroize::Zeroize::zeroize(&mut key);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_must_be_private_and_long_enough() {
        let dir = std::env::temp_dir().join(format!("qpon-node-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.psk");
        let _ = std::fs::remove_file(&p);
        write_psk(&p, 4096).unwrap();
        assert_eq!(read_psk(&p).unwrap().len(), 4096);
        assert!(write_psk(&p, 4096).is_err(), "never overwrites a secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(read_psk(&p).unwrap_err().0.contains("chmod 600"));
        }
        let short = dir.join("short.psk");
        let _ = std::fs::remove_file(&short);
        write_psk(&short, 10).unwrap();
        assert!(read_psk(&short).unwrap_err().0.contains("at least"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
