//! Resuming one ONU's session from the key store after a (re)start.
//!
//! A session's authentication material is the pre-shared secret followed by the
//! authentication shares of the committed blocks, in order; its pad ledger is the store's;
//! the pool agreement needs the last committed block (`qpon_qkd::session`, "Pool
//! agreement"). The OLT also discards every provisional block first: a block it held only
//! provisionally when it stopped may be missing at the ONU, and the pool sync that opens
//! the next connection makes the ONU discard it too.

use crate::store::{KeyStore, StoreAuthLedger, StoreError, StorePool};
use qpon_qkd::SecretBytes;
use qpon_qkd::session::AuthMaterial;
use uuid::Uuid;

/// Which end of the link resumes (the OLT decides the pool agreement, the ONU follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The OLT's side.
    Olt,
    /// The ONU's side.
    Onu,
}

/// What a session needs to start from the store. `Debug` shows no key material.
#[derive(Debug)]
pub struct Resumed {
    /// The ONU's pool.
    pub pool: StorePool,
    /// The persistent pad ledger (shared by every ONU of the store).
    pub ledger: StoreAuthLedger,
    /// Pre-shared secret + committed shares.
    pub material: AuthMaterial,
    /// The last committed block and the length of its authentication share (pass the ID to
    /// `OltSession::restore_last_committed`, both to `OnuSession::restore_last_committed`).
    pub last_committed: Option<(Uuid, usize)>,
    /// Provisional blocks discarded now (OLT only).
    pub discarded: Vec<Uuid>,
}

impl KeyStore {
    /// Reads what `end`'s session for `onu` needs to resume (see the module docs).
    pub fn resume(&self, onu: u16, psk: &SecretBytes, end: End) -> Result<Resumed, StoreError> {
        let pool = self.pool(onu);
        let discarded = match end {
            End::Olt => pool.discard_provisional()?,
            End::Onu => Vec::new(),
        };
        let mut material = AuthMaterial::from_psk(psk);
        let shares = pool.auth_shares()?;
        for s in &shares {
            material.append_share(s.expose());
        }
        let last_committed =
            pool.last_committed()?.map(|id| (id, shares.last().map_or(0, |s| s.expose().len())));
        Ok(Resumed { pool, ledger: self.auth_ledger(), material, last_committed, discarded })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_qkd::BitBlock;
    use qpon_qkd::session::{ProvisionalBlock, Stream};

    #[test]
    fn resume_rebuilds_material_and_discards_the_olts_provisional_blocks() {
        let dir = std::env::temp_dir().join(format!("qpon-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.redb");
        let _ = std::fs::remove_file(&path);
        let psk = SecretBytes::new(vec![5u8; 200]);
        {
            let store = KeyStore::open(&path).unwrap();
            let mut pool = store.pool(3);
            let staged = |n: u128, b: u8| ProvisionalBlock {
                id: Uuid::from_u128(n),
                key: BitBlock::zeros(256),
                share: SecretBytes::new(vec![b; 40]),
            };
            crate::KeyPool::stage(&mut pool, &staged(1, 7)).unwrap();
            crate::KeyPool::append(&mut pool, Uuid::from_u128(1), &BitBlock::zeros(256)).unwrap();
            crate::KeyPool::stage(&mut pool, &staged(2, 8)).unwrap();
        }
        let store = KeyStore::open(&path).unwrap();
        let onu = store.resume(3, &psk, End::Onu).unwrap();
        assert_eq!(onu.last_committed, Some((Uuid::from_u128(1), 40)));
        assert!(onu.discarded.is_empty());
        let mut expect = AuthMaterial::from_psk(&psk);
        expect.append_share(&[7u8; 40]);
        for s in Stream::ALL {
            assert_eq!(onu.material.available(s, 0), expect.available(s, 0));
        }
        let olt = store.resume(3, &psk, End::Olt).unwrap();
        assert_eq!(olt.discarded, vec![Uuid::from_u128(2)]);
        assert!(!format!("{olt:?}").contains("[7"));
        drop((onu, olt, store));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
