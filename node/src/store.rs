//! The persistent key store of a service: `keys.redb` in the configured data directory,
//! optionally sealed under a key-encryption key (KEK). Both services open it through
//! [`open_store`], so the directory's creation, the KEK's resolution and the errors (which
//! name the configuration field at fault) are the same for the OLT and the ONU.
//!
//! KEK resolution ([`resolve_kek`]): a non-empty `kek_file` is read with
//! [`Kek::from_file`] (64 hex digits, mode 0600); an empty one takes the KEK from the
//! environment variable [`KEK_ENV`] (`QPON_KEK`) if it is set, and otherwise the store is
//! unencrypted. A KEK that is named but unusable is an error, never a silent fallback to an
//! unencrypted store.

use crate::config::ConfigError;
use qpon_kms::{KEK_ENV, Kek, KeyPool, KeyStore, StoreError, StoreOptions, StorePool};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The store file's name inside the data directory.
pub const STORE_FILE: &str = "keys.redb";

/// Where a service's pools come from.
pub enum PoolSource<M> {
    /// The store in the configuration's data directory (what the binaries use).
    Config,
    /// An already opened store (tests that inspect it while the service runs).
    Store(KeyStore),
    /// In-memory pools and pad ledgers, lost when the process stops (tests only; the
    /// ETSI API needs a store).
    Memory(M),
}

impl<M> PoolSource<M> {
    /// Opens the store this source names (`Config`: [`open_store`] with the given fields),
    /// or gives back the in-memory pools.
    pub fn open(self, settings: &StoreSettings<'_>) -> Result<Result<KeyStore, M>, ConfigError> {
        match self {
            PoolSource::Config => open_store(settings).map(Ok),
            PoolSource::Store(s) => Ok(Ok(s)),
            PoolSource::Memory(m) => Ok(Err(m)),
        }
    }
}

/// The configuration fields of a store, with their names for error messages.
#[derive(Clone, Copy, Debug)]
pub struct StoreSettings<'a> {
    /// The data directory (created with mode 0700 if absent).
    pub data_dir: &'a Path,
    /// Its field name, e.g. `olt.data_dir`.
    pub data_dir_field: &'a str,
    /// The KEK file (empty: `QPON_KEK` if set, else unencrypted).
    pub kek_file: &'a Path,
    /// Its field name, e.g. `olt.kek_file`.
    pub kek_field: &'a str,
}

/// The KEK a configuration selects (see the module docs); `None` = unencrypted store.
pub fn resolve_kek(kek_file: &Path, field: &str) -> Result<Option<Kek>, ConfigError> {
    if !kek_file.as_os_str().is_empty() {
        return Kek::from_file(kek_file).map(Some).map_err(|e| ConfigError::field(field, e));
    }
    if std::env::var_os(KEK_ENV).is_none() {
        return Ok(None);
    }
    Kek::from_env(KEK_ENV)
        .map(Some)
        .map_err(|e| ConfigError::field(field, format!("empty, so the KEK comes from {KEK_ENV}: {e}")))
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub fn create_data_dir(dir: &Path, field: &str) -> Result<(), ConfigError> {
    if dir.as_os_str().is_empty() {
        return Err(ConfigError::field(field, "must not be empty"));
    }
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| ConfigError::field(field, format!("creating {}: {e}", dir.display())))
}

/// The store file of a data directory.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE)
}

/// Resolves the KEK, creates the data directory and opens (or creates) `keys.redb` in it.
/// Errors name the field at fault: the KEK's for a missing, unreadable or wrong KEK, the
/// data directory's otherwise.
pub fn open_store(s: &StoreSettings<'_>) -> Result<KeyStore, ConfigError> {
    let kek = resolve_kek(s.kek_file, s.kek_field)?;
    create_data_dir(s.data_dir, s.data_dir_field)?;
    let path = store_path(s.data_dir);
    KeyStore::open_with(&path, StoreOptions { kek }).map_err(|e| match e {
        StoreError::KekRequired | StoreError::WrongKek | StoreError::NotEncrypted => {
            ConfigError::field(s.kek_field, format!("{}: {e}", path.display()))
        }
        other => ConfigError::field(s.data_dir_field, other),
    })
}

/// One ONU's pool as the status pages report it (from the store, or from the driver's
/// counters for in-memory pools).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolFigures {
    /// Unused key bits (the level).
    pub pool_bits: u64,
    /// Blocks committed so far (including ones discarded later).
    pub committed_blocks: u64,
    /// Blocks discarded (provisional ones the peer may lack, or truncated at a pool sync).
    pub discarded_blocks: u64,
    /// Bytes consumed, by purpose (`classical_auth`, `downstream`, `sensor_auth`, `api`);
    /// empty for in-memory pools.
    pub consumed_bytes: BTreeMap<String, u64>,
}

/// The status name of a purpose.
pub fn purpose_name(p: qpon_kms::Purpose) -> &'static str {
    match p {
        qpon_kms::Purpose::ClassicalAuth => "classical_auth",
        qpon_kms::Purpose::Downstream => "downstream",
        qpon_kms::Purpose::SensorAuth => "sensor_auth",
        qpon_kms::Purpose::Api => "api",
    }
}

impl PoolFigures {
    /// From a pool the driver holds (no per-purpose figures), with `discarded` counted by
    /// the driver.
    pub fn from_pool(pool: &dyn KeyPool, discarded: u64) -> Self {
        Self {
            pool_bits: pool.level_bits(),
            committed_blocks: pool.blocks(),
            discarded_blocks: discarded,
            consumed_bytes: BTreeMap::new(),
        }
    }

    /// From the store (one consistent read of the totals, one of the block list).
    pub fn from_store(pool: &StorePool) -> Result<Self, StoreError> {
        let t = pool.totals()?;
        let discarded =
            pool.block_infos()?.iter().filter(|b| b.state == qpon_kms::BlockState::Discarded).count() as u64;
        Ok(Self {
            pool_bits: t.level * 8,
            committed_blocks: t.blocks,
            discarded_blocks: discarded,
            consumed_bytes: qpon_kms::Purpose::ALL
                .iter()
                .map(|&p| (purpose_name(p).to_string(), t.consumed_for(p)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qpon-node-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn opens_in_a_private_new_directory_and_names_the_fields() {
        let d = temp("open");
        let data = d.join("a/b");
        let kek = d.join("kek");
        let s = StoreSettings {
            data_dir: &data,
            data_dir_field: "x.data_dir",
            kek_file: &kek,
            kek_field: "x.kek_file",
        };
        // A named KEK file that does not exist: the KEK field is named, nothing created.
        let e = open_store(&s).unwrap_err();
        assert!(e.0.contains("`x.kek_file`"), "{e}");
        assert!(!data.exists());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(&kek, "11".repeat(32)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(open_store(&s).unwrap_err().0.contains("chmod 600"));
            std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let store = open_store(&s).unwrap();
        assert!(store.is_encrypted());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let figures = PoolFigures::from_store(&store.pool(1)).unwrap();
        assert_eq!(figures.consumed_bytes.len(), 4);
        drop(store);
        // The same store without its KEK: refused, naming the KEK field.
        let plain = StoreSettings { kek_file: Path::new(""), ..s };
        if std::env::var_os(KEK_ENV).is_none() {
            let e = open_store(&plain).unwrap_err();
            assert!(e.0.contains("`x.kek_file`") && e.0.contains("encrypted"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
