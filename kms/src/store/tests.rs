use super::seal::KekError;
use super::*;
use crate::pool::KeyPool;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed on drop (no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "qpon-kms-store-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic test key bytes (splitmix64), distinct per seed.
fn block(seed: u64, bits: usize) -> BitBlock {
    let mut x = seed;
    let bytes: Vec<u8> = (0..bits.div_ceil(8))
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect();
    BitBlock::from_bytes(&bytes, bits)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Checks the ledger against the totals and that no byte left the pool twice.
fn audit(pool: &StorePool) -> Totals {
    let t = pool.totals().unwrap();
    let mut per_kind = (vec![0u64; 4], 0u64, 0u64);
    let mut seen: std::collections::HashMap<Uuid, Vec<(u64, u64)>> = Default::default();
    for (i, e) in pool.ledger().unwrap().enumerate() {
        assert_eq!(e.seq, i as u64, "ledger has gaps");
        match e.kind {
            LedgerKind::Consumed(p) => per_kind.0[p as usize] += e.len,
            LedgerKind::Skipped => per_kind.1 += e.len,
            LedgerKind::Discarded => per_kind.2 += e.len,
        }
        seen.entry(e.block).or_default().push((e.offset, e.offset + e.len));
    }
    for ranges in seen.values_mut() {
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlapping ledger ranges {w:?}");
        }
    }
    assert_eq!(per_kind.0, t.consumed.to_vec());
    assert_eq!((per_kind.1, per_kind.2), (t.skipped, t.discarded));
    assert_eq!(t.appended, t.level + t.consumed.iter().sum::<u64>() + t.skipped + t.discarded);
    t
}

#[test]
fn append_and_reopen_keep_blocks_and_level() {
    let dir = TempDir::new();
    let path = dir.file("keys.redb");
    {
        let store = KeyStore::open(&path).unwrap();
        let mut p = store.pool(3);
        p.append(id(1), &block(1, 1024)).unwrap();
        p.append(id(2), &block(2, 2048)).unwrap();
        store.pool(4).append_block(id(3), &block(3, 512)).unwrap();
        assert_eq!((p.level_bits(), KeyPool::blocks(&p)), (3072, 2));
    }
    let store = KeyStore::open(&path).unwrap();
    let p = store.pool(3);
    assert_eq!((p.level_bits(), KeyPool::blocks(&p)), (3072, 2));
    assert_eq!(store.pool(4).level_bits(), 512);
    assert_eq!(store.pool(5).level_bits(), 0);
    let infos = p.block_infos().unwrap();
    assert_eq!(
        infos.iter().map(|b| (b.id, b.seq, b.bits)).collect::<Vec<_>>(),
        [(id(1), 0, 1024), (id(2), 1, 2048)]
    );
    // The stored bytes are the block's bytes.
    assert_eq!(p.consume(Purpose::Api, 128).unwrap().key.expose(), block(1, 1024).to_bytes());
}

#[test]
fn consumption_across_reopen_never_overlaps_and_ledger_accounts_every_byte() {
    let dir = TempDir::new();
    let path = dir.file("keys.redb");
    let mut got: Vec<(Uuid, u64, Vec<u8>)> = Vec::new();
    let sizes = [16usize, 32, 5, 64, 40, 16, 1, 100];
    for round in 0..3u64 {
        let store = KeyStore::open(&path).unwrap();
        let p = store.pool(1);
        p.append_block(id(u128::from(round) + 10), &block(round, 8 * 150 + 3)).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            match p.consume(Purpose::ALL[i % 4], n) {
                Ok(c) => got.push((c.block, c.offset, c.key.expose().to_vec())),
                Err(StoreError::Exhausted { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        audit(&p);
    }
    let store = KeyStore::open(&path).unwrap();
    let p = store.pool(1);
    let t = audit(&p);
    assert_eq!(t.unusable_bits, 9);
    assert_eq!(t.appended, 450);
    let total: usize = got.iter().map(|g| g.2.len()).sum();
    assert_eq!(t.consumed.iter().sum::<u64>(), total as u64);
    // Every returned slice is exactly the block's bytes at the recorded offset.
    for (b, off, key) in &got {
        let seed = (b.as_u128() - 10) as u64;
        let src = block(seed, 8 * 150 + 3).to_bytes();
        assert_eq!(&src[*off as usize..*off as usize + key.len()], key.as_slice());
    }
    // Consumptions match the ledger one for one.
    let consumed: Vec<_> = p
        .ledger()
        .unwrap()
        .filter(|e| matches!(e.kind, LedgerKind::Consumed(_)))
        .map(|e| (e.block, e.offset, e.len))
        .collect();
    let returned: Vec<_> = got.iter().map(|g| (g.0, g.1, g.2.len() as u64)).collect();
    assert_eq!(consumed, returned);
}

#[test]
fn both_ends_get_identical_bytes() {
    let dir = TempDir::new();
    let olt = KeyStore::open(dir.file("olt.redb")).unwrap().pool(7);
    let onu = KeyStore::open(dir.file("onu.redb")).unwrap().pool(7);
    for n in 0..4u64 {
        for p in [&olt, &onu] {
            p.append_block(id(u128::from(n) + 100), &block(n, 8 * (50 + 30 * n as usize))).unwrap();
        }
    }
    olt.discard(id(101)).unwrap();
    onu.discard(id(101)).unwrap();
    let reqs = [(Purpose::ClassicalAuth, 32), (Purpose::Downstream, 16), (Purpose::Api, 45)];
    for i in 0..12 {
        let (purpose, n) = reqs[i % reqs.len()];
        let (a, b) = (olt.consume(purpose, n), onu.consume(purpose, n));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!((a.block, a.offset), (b.block, b.offset));
                assert_eq!(a.key, b.key);
                assert_ne!(a.block, id(101));
            }
            (Err(StoreError::Exhausted { .. }), Err(StoreError::Exhausted { .. })) => {}
            (a, b) => panic!("ends disagree: {a:?} / {b:?}"),
        }
    }
    assert_eq!(audit(&olt), audit(&onu));
    assert_eq!(olt.ledger().unwrap().collect::<Vec<_>>(), onu.ledger().unwrap().collect::<Vec<_>>());
}

#[test]
fn exhausted_when_empty_or_short_and_nothing_consumed() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(0);
    assert!(matches!(p.consume(Purpose::Api, 1), Err(StoreError::Exhausted { requested: 1, available: 0 })));
    p.append_block(id(1), &block(1, 80)).unwrap();
    p.append_block(id(2), &block(2, 80)).unwrap();
    // 20 bytes are in the pool, but no block holds 11: refused, and no tail skipped.
    assert!(matches!(
        p.consume(Purpose::Api, 11),
        Err(StoreError::Exhausted { requested: 11, available: 20 })
    ));
    assert_eq!(p.ledger().unwrap().count(), 0);
    assert_eq!(p.level_bits(), 160);
    assert!(matches!(p.consume(Purpose::Api, 0), Err(StoreError::InvalidRequest(_))));
    // A request that fits skips the first block's tail, recorded.
    p.consume(Purpose::Api, 4).unwrap();
    let c = p.consume(Purpose::Api, 8).unwrap();
    assert_eq!((c.block, c.offset), (id(2), 0));
    let t = audit(&p);
    assert_eq!((t.skipped, t.level), (6, 2));
    assert!(matches!(p.consume(Purpose::Api, 3), Err(StoreError::Exhausted { .. })));
    assert_eq!(p.consume(Purpose::Api, 2).unwrap().offset, 8);
    assert!(matches!(p.consume(Purpose::Api, 1), Err(StoreError::Exhausted { .. })));
    assert_eq!(audit(&p).level, 0);
}

#[test]
fn discard_removes_bytes_and_they_are_never_consumed() {
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let store = KeyStore::open(&path).unwrap();
    let p = store.pool(2);
    for n in 1..=3 {
        p.append_block(id(n), &block(n as u64, 800)).unwrap();
    }
    p.consume(Purpose::Downstream, 30).unwrap();
    // Partly used current block: only its remainder is discarded.
    assert_eq!(p.discard(id(1)).unwrap(), 70);
    assert_eq!(p.discard(id(3)).unwrap(), 100);
    assert_eq!(p.discard(id(3)).unwrap(), 0);
    assert_eq!(p.level_bits(), 800);
    assert!(matches!(p.discard(id(99)), Err(StoreError::UnknownBlock(_))));
    // Another ONU's block is not ours to discard.
    store.pool(9).append_block(id(50), &block(50, 64)).unwrap();
    assert!(matches!(p.discard(id(50)), Err(StoreError::UnknownBlock(_))));
    drop((p, store));
    let p = KeyStore::open(&path).unwrap().pool(2);
    let mut n = 0;
    loop {
        match p.consume(Purpose::SensorAuth, 7) {
            Ok(c) => {
                assert_eq!(c.block, id(2));
                n += 1;
            }
            Err(StoreError::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(n, 14);
    let t = audit(&p);
    // Block 2's last 2 bytes stay unused (no later request fitted): level, not skipped.
    assert_eq!((t.discarded, t.skipped, t.level), (170, 0, 2));
    assert_eq!(p.block_infos().unwrap()[0].state, BlockState::Discarded);
}

#[test]
fn duplicate_block_id_refused_store_wide() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let mut p = store.pool(1);
    p.append(id(1), &block(1, 64)).unwrap();
    assert!(matches!(p.append_block(id(1), &block(2, 64)), Err(StoreError::Duplicate(_))));
    assert_eq!(PoolError::from(StoreError::Duplicate(id(1))), PoolError::Duplicate(id(1)));
    assert!(matches!(store.pool(2).append_block(id(1), &block(3, 64)), Err(StoreError::Duplicate(_))));
    assert_eq!((p.level_bits(), store.pool(2).level_bits()), (64, 0));
    assert_eq!(p.consume(Purpose::Api, 8).unwrap().key.expose(), block(1, 64).to_bytes());
}

#[cfg(unix)]
#[test]
fn file_mode_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    drop(KeyStore::open(&path).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // A pre-existing, too-open file is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(KeyStore::open(&path).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn garbage_and_foreign_files_are_refused() {
    let dir = TempDir::new();
    let garbage = dir.file("garbage");
    let junk: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&garbage, &junk).unwrap();
    let e = KeyStore::open(&garbage).unwrap_err();
    assert!(matches!(e, StoreError::NotAKeyStore { .. }), "{e:?}");
    assert_eq!(std::fs::read(&garbage).unwrap(), junk, "a foreign file must be left unchanged");
    std::fs::write(&garbage, b"short").unwrap();
    assert!(KeyStore::open(&garbage).is_err());
    // A redb file of another program.
    let foreign = dir.file("foreign.redb");
    {
        let db = Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("theirs")).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(KeyStore::open(&foreign), Err(StoreError::NotAKeyStore { .. })));
}

#[test]
fn second_open_of_same_file_is_refused() {
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let _a = KeyStore::open(&path).unwrap();
    assert!(matches!(KeyStore::open(&path), Err(StoreError::Locked(_))));
}

#[test]
fn key_ids_are_deterministic_v5_and_distinct() {
    let b = Uuid::from_u128(0x1234);
    assert_eq!(key_id(b, 0), key_id(b, 0));
    assert_ne!(key_id(b, 0), key_id(b, 1));
    assert_ne!(key_id(b, 0), key_id(Uuid::from_u128(0x1235), 0));
    assert_eq!(key_id(b, 7).get_version_num(), 5);
}

#[test]
fn errors_and_debug_carry_no_key_bytes() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(1);
    p.append_block(id(1), &BitBlock::from_bytes(&[0xAB; 8], 64)).unwrap();
    let c = p.consume(Purpose::Api, 8).unwrap();
    let d = format!("{c:?} {p:?} {store:?}");
    assert!(!d.contains("171") && !d.to_lowercase().contains("ab, "), "{d}");
}

// ---------------------------------------------------------------------------------------
// Provisional blocks (pool sync)

fn states(p: &StorePool) -> Vec<(Uuid, BlockState)> {
    p.block_infos().unwrap().iter().map(|b| (b.id, b.state)).collect()
}

/// Whether the raw key-bytes / share rows of block `b` are still in the file.
fn stored_values(store: &KeyStore, b: Uuid) -> (bool, bool) {
    let txn = store.db.begin_read().unwrap();
    let keys = txn.open_table(KEYS).unwrap().get(b.as_u128()).unwrap().is_some();
    let shares = txn.open_table(SHARES).unwrap().get(b.as_u128()).unwrap().is_some();
    (keys, shares)
}

#[test]
fn provisional_is_not_consumable_until_committed() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(1);
    p.append_provisional(id(1), &block(1, 8 * 80 + 5), &[9u8; 40]).unwrap();
    let t = audit(&p);
    assert_eq!((t.provisional, t.level, t.appended, t.blocks, t.unusable_bits), (80, 0, 0, 0, 0));
    assert_eq!(p.level_bits(), 0);
    assert!(matches!(p.consume(Purpose::Api, 1), Err(StoreError::Exhausted { available: 0, .. })));
    assert_eq!(states(&p), [(id(1), BlockState::Provisional)]);
    assert_eq!(p.block_infos().unwrap()[0].remaining_bytes(), 0);
    assert_eq!(p.last_committed().unwrap(), None);
    assert!(p.auth_shares().unwrap().is_empty());
    // IDs are unique store-wide whatever the state.
    assert!(matches!(p.append_block(id(1), &block(2, 64)), Err(StoreError::Duplicate(_))));
    assert!(matches!(
        store.pool(2).append_provisional(id(1), &block(2, 64), &[]),
        Err(StoreError::Duplicate(_))
    ));
    // Only the owner can commit.
    assert!(matches!(store.pool(2).commit_block(id(1)), Err(StoreError::UnknownBlock(_))));
    assert!(matches!(p.commit_block(id(7)), Err(StoreError::UnknownBlock(_))));

    p.commit_block(id(1)).unwrap();
    let t = audit(&p);
    assert_eq!((t.provisional, t.level, t.appended, t.blocks, t.unusable_bits), (0, 80, 80, 1, 5));
    p.commit_block(id(1)).unwrap(); // idempotent
    assert_eq!(audit(&p), t);
    assert_eq!(p.last_committed().unwrap(), Some(id(1)));
    assert_eq!(p.consume(Purpose::Api, 80).unwrap().key.expose(), &block(1, 8 * 80 + 5).to_bytes()[..80]);
}

#[test]
fn provisional_block_keeps_its_place_in_the_order() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(1);
    p.append_provisional(id(1), &block(1, 240), &[]).unwrap();
    p.append_block(id(2), &block(2, 480)).unwrap();
    // The provisional block is passed over, not skipped.
    let c = p.consume(Purpose::Downstream, 8).unwrap();
    assert_eq!((c.block, c.offset), (id(2), 0));
    assert_eq!(audit(&p).skipped, 0);
    // Committed later, it is served from its place in the order (before block 2's rest).
    p.commit_block(id(1)).unwrap();
    let c = p.consume(Purpose::Downstream, 8).unwrap();
    assert_eq!((c.block, c.offset), (id(1), 0));
    assert_eq!(c.key.expose(), &block(1, 240).to_bytes()[..8]);
    // A request too long for block 1's tail skips it and goes on in block 2.
    let c = p.consume(Purpose::Downstream, 23).unwrap();
    assert_eq!((c.block, c.offset), (id(2), 8));
    let t = audit(&p);
    assert_eq!((t.skipped, t.level), (22, 29));
}

#[test]
fn discard_of_provisional_and_committed_blocks_is_ledgered_and_balances() {
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let store = KeyStore::open(&path).unwrap();
    let p = store.pool(3);
    p.append_block(id(1), &block(1, 800)).unwrap();
    p.append_provisional(id(2), &block(2, 8 * 50 + 3), &[1u8; 30]).unwrap();
    p.consume(Purpose::Api, 30).unwrap();
    assert_eq!(stored_values(&store, id(2)), (true, true));

    assert_eq!(p.discard(id(2)).unwrap(), 50);
    let t = audit(&p);
    assert_eq!(
        (t.provisional, t.appended, t.discarded, t.level, t.blocks, t.unusable_bits),
        (0, 150, 50, 70, 2, 3)
    );
    assert_eq!(stored_values(&store, id(2)), (false, false), "a discard deletes key bytes and share");
    assert!(matches!(p.commit_block(id(2)), Err(StoreError::BlockDiscarded(b)) if b == id(2)));
    assert_eq!(p.discard(id(2)).unwrap(), 0);

    assert_eq!(p.discard(id(1)).unwrap(), 70);
    assert_eq!(stored_values(&store, id(1)), (false, false));
    let ledger: Vec<_> = p.ledger().unwrap().map(|e| (e.kind, e.block, e.offset, e.len)).collect();
    assert_eq!(
        ledger,
        [
            (LedgerKind::Consumed(Purpose::Api), id(1), 0, 30),
            (LedgerKind::Discarded, id(2), 0, 50),
            (LedgerKind::Discarded, id(1), 30, 70),
        ]
    );
    drop((p, store));
    let p = KeyStore::open(&path).unwrap().pool(3);
    let t = audit(&p);
    assert_eq!((t.appended, t.discarded, t.level, t.provisional), (150, 120, 0, 0));
    assert_eq!(states(&p), [(id(1), BlockState::Discarded), (id(2), BlockState::Discarded)]);
}

#[test]
fn discard_after_rolls_back_to_the_agreed_block() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(4);
    p.append_block(id(1), &block(1, 160)).unwrap();
    p.append_block(id(2), &block(2, 160)).unwrap();
    p.append_provisional(id(3), &block(3, 160), &[3; 8]).unwrap();
    p.append_block(id(4), &block(4, 160)).unwrap();
    p.append_provisional(id(5), &block(5, 160), &[5; 8]).unwrap();
    p.discard(id(4)).unwrap();
    p.consume(Purpose::Api, 15).unwrap();
    p.consume(Purpose::Api, 8).unwrap(); // skips block 1's last 5 bytes, takes 8 of block 2
    assert_eq!(p.last_committed().unwrap(), Some(id(2)));

    // Unknown IDs (or another ONU's) change nothing.
    store.pool(5).append_block(id(50), &block(50, 64)).unwrap();
    let before = (audit(&p), states(&p), p.ledger().unwrap().count());
    for bad in [id(99), id(50)] {
        assert!(matches!(p.discard_after(Some(bad)), Err(StoreError::UnknownBlock(b)) if b == bad));
    }
    assert_eq!((audit(&p), states(&p), p.ledger().unwrap().count()), before);

    let out = p.discard_after(Some(id(1))).unwrap();
    assert_eq!(
        out,
        [(id(2), BlockState::Committed), (id(3), BlockState::Provisional), (id(5), BlockState::Provisional)]
    );
    let t = audit(&p);
    // Block 2: 12 unused bytes; blocks 3 and 5: 20 each; block 4 was discarded (20) before.
    assert_eq!((t.discarded, t.level, t.provisional, t.appended), (72, 0, 0, 100));
    assert_eq!(states(&p)[0], (id(1), BlockState::Committed));
    assert_eq!(p.last_committed().unwrap(), Some(id(1)));
    assert!(p.discard_after(Some(id(1))).unwrap().is_empty());
    // After the last block: nothing to do.
    assert!(p.discard_after(Some(id(5))).unwrap().is_empty());
    // None: everything.
    assert_eq!(p.discard_after(None).unwrap(), [(id(1), BlockState::Committed)]);
    assert_eq!(p.last_committed().unwrap(), None);
    let t = audit(&p);
    assert_eq!((t.level, t.appended), (0, 100));
    assert!(states(&p).iter().all(|s| s.1 == BlockState::Discarded));
}

#[test]
fn discard_provisional_leaves_committed_blocks() {
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let p = store.pool(4);
    p.append_provisional(id(1), &block(1, 80), &[]).unwrap();
    p.append_block(id(2), &block(2, 80)).unwrap();
    p.append_provisional(id(3), &block(3, 80), &[1]).unwrap();
    p.append_provisional(id(4), &block(4, 80), &[]).unwrap();
    p.commit_block(id(4)).unwrap();
    assert_eq!(p.discard_provisional().unwrap(), [id(1), id(3)]);
    assert!(p.discard_provisional().unwrap().is_empty());
    let t = audit(&p);
    assert_eq!((t.provisional, t.level, t.discarded, t.blocks), (0, 20, 20, 4));
    assert_eq!(p.last_committed().unwrap(), Some(id(4)));
}

#[test]
fn auth_shares_of_committed_blocks_survive_reopen() {
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let s = |n: u8| vec![n; 100 + usize::from(n)];
    {
        let store = KeyStore::open(&path).unwrap();
        let p = store.pool(6);
        p.append_provisional(id(1), &block(1, 64), &s(1)).unwrap();
        p.append_block(id(2), &block(2, 64)).unwrap();
        p.append_provisional(id(3), &block(3, 64), &s(3)).unwrap();
        p.append_provisional(id(4), &block(4, 64), &s(4)).unwrap();
        store.pool(7).append_provisional(id(10), &block(10, 64), &s(10)).unwrap();
        store.pool(7).commit_block(id(10)).unwrap();
        p.commit_block(id(3)).unwrap();
        p.commit_block(id(1)).unwrap();
    }
    let store = KeyStore::open(&path).unwrap();
    let p = store.pool(6);
    let got: Vec<Vec<u8>> = p.auth_shares().unwrap().iter().map(|x| x.expose().to_vec()).collect();
    assert_eq!(got, [s(1), vec![], s(3)]);
    assert_eq!(store.pool(7).auth_shares().unwrap()[0].expose(), s(10).as_slice());
    p.commit_block(id(4)).unwrap();
    p.discard(id(3)).unwrap();
    let got: Vec<Vec<u8>> = p.auth_shares().unwrap().iter().map(|x| x.expose().to_vec()).collect();
    assert_eq!(got, [s(1), vec![], s(4)]);
}

#[test]
fn old_counter_records_without_provisional_word_still_decode() {
    let m = OnuMeta { next_block_seq: 2, head_seq: 1, next_ledger_seq: 3, totals: Totals::default() };
    let mut b = m.encode();
    b.truncate((OnuMeta::WORDS - 1) * 8);
    let d = OnuMeta::decode(0, &b).unwrap();
    assert_eq!((d.next_block_seq, d.head_seq, d.next_ledger_seq, d.totals), (2, 1, 3, Totals::default()));
    assert!(OnuMeta::decode(0, &b[..b.len() - 8]).is_err());
}

// ---------------------------------------------------------------------------------------
// Batched consumption

#[test]
fn consume_many_equals_single_consumes_on_a_twin() {
    let dir = TempDir::new();
    let a = KeyStore::open(dir.file("a.redb")).unwrap().pool(1);
    let b = KeyStore::open(dir.file("b.redb")).unwrap().pool(1);
    for p in [&a, &b] {
        for n in 0..5u64 {
            p.append_block(id(u128::from(n) + 1), &block(n, 8 * (700 + 333 * n as usize) + 1)).unwrap();
        }
    }
    let batches = [(Purpose::Downstream, 32, 64), (Purpose::Api, 45, 10), (Purpose::SensorAuth, 7, 33)];
    let mut exhausted = false;
    for (i, &(purpose, each, count)) in batches.iter().cycle().take(9).enumerate() {
        let many = a.consume_many(purpose, each, count);
        let before = (audit(&b), b.ledger().unwrap().count());
        let singles: Result<Vec<_>, _> = (0..count).map(|_| b.consume(purpose, each)).collect();
        match (many, singles) {
            (Ok(m), Ok(s)) => {
                assert_eq!(m.len(), count);
                for (x, y) in m.iter().zip(&s) {
                    assert_eq!((x.block, x.offset, &x.key), (y.block, y.offset, &y.key), "batch {i}");
                }
            }
            (Err(StoreError::Exhausted { .. }), Err(StoreError::Exhausted { .. })) => {
                // All or nothing: the batch took nothing (the twin's singles may have taken
                // some before failing, so the twins part here).
                assert!(before.0.level < (each * count) as u64);
                assert_eq!((audit(&a), a.ledger().unwrap().count()), before);
                exhausted = true;
                break;
            }
            (m, s) => panic!("batch {i}: {:?} vs {:?}", m.map(|v| v.len()), s.map(|v| v.len())),
        }
        assert_eq!(audit(&a), audit(&b));
        assert_eq!(a.ledger().unwrap().collect::<Vec<_>>(), b.ledger().unwrap().collect::<Vec<_>>());
    }
    assert!(exhausted, "the script must run the pool dry");
    assert!(a.consume_many(Purpose::Api, 1, 0).unwrap().is_empty());
    assert!(matches!(a.consume_many(Purpose::Api, 0, 3), Err(StoreError::InvalidRequest(_))));
}

#[test]
fn consume_many_is_all_or_nothing() {
    let dir = TempDir::new();
    let p = KeyStore::open(dir.file("k.redb")).unwrap().pool(1);
    p.append_block(id(1), &block(1, 8 * 100)).unwrap();
    p.append_block(id(2), &block(2, 8 * 100)).unwrap();
    let before = (audit(&p), p.ledger().unwrap().count());
    // 7 × 30 bytes: 3 fit in each block, the 7th does not.
    assert!(matches!(
        p.consume_many(Purpose::Api, 30, 7),
        Err(StoreError::Exhausted { requested: 210, available: 200 })
    ));
    assert_eq!((audit(&p), p.ledger().unwrap().count()), before);
    let got = p.consume_many(Purpose::Api, 30, 6).unwrap();
    assert_eq!(
        got.iter().map(|c| (c.block, c.offset)).collect::<Vec<_>>(),
        [(id(1), 0), (id(1), 30), (id(1), 60), (id(2), 0), (id(2), 30), (id(2), 60)]
    );
    let t = audit(&p);
    assert_eq!((t.skipped, t.level), (10, 10));
}

// ---------------------------------------------------------------------------------------
// Persistent pad ledger

#[test]
fn store_auth_ledger_persists_high_water_and_refuses_reuse_only() {
    use qpon_qkd::session::{AuthError, AuthLedger, Direction, LedgerEntry as E, Purpose as AP, Stream};
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let down = Stream::Pads(Direction::Downstream);
    let up = Stream::Pads(Direction::Upstream);
    let script = [
        (1, E::Skipped { stream: Stream::HashKeys, from: 0, to: 2 }),
        (1, E::Used { stream: Stream::HashKeys, index: 2, purpose: AP::HashKey }),
        (1, E::Used { stream: down, index: 0, purpose: AP::TagSent }),
        (1, E::Used { stream: down, index: 1, purpose: AP::TagSent }),
        (2, E::Used { stream: down, index: 0, purpose: AP::TagSent }),
        (1, E::Skipped { stream: up, from: 0, to: 3 }),
        (1, E::Used { stream: up, index: 3, purpose: AP::TagChecked }),
        // A jump ahead without a skip entry is not a reuse: accepted.
        (2, E::Used { stream: up, index: 5, purpose: AP::TagChecked }),
    ];
    {
        let store = KeyStore::open(&path).unwrap();
        let mut l = store.auth_ledger();
        let l2 = l.clone();
        for (onu, e) in script {
            l.record(onu, e).unwrap();
        }
        assert_eq!(l2.high_water(1, down), 2);
        // Below the high-water mark: refused, nothing recorded.
        for e in [
            E::Used { stream: down, index: 1, purpose: AP::TagSent },
            E::Skipped { stream: up, from: 2, to: 9 },
            E::Used { stream: Stream::HashKeys, index: 0, purpose: AP::HashKey },
        ] {
            assert!(matches!(l.record(1, e), Err(AuthError::AlreadyUsed { .. })), "{e:?}");
        }
        assert!(matches!(
            l.record(1, E::Skipped { stream: down, from: 9, to: 4 }),
            Err(AuthError::Ledger(_))
        ));
        // An empty skip is harmless.
        l.record(1, E::Skipped { stream: down, from: 2, to: 2 }).unwrap();
    }
    let store = KeyStore::open(&path).unwrap();
    let mut l = StoreAuthLedger::new(&store);
    let hw = |l: &StoreAuthLedger, onu, s| l.high_water(onu, s);
    assert_eq!(
        [hw(&l, 1, Stream::HashKeys), hw(&l, 1, down), hw(&l, 1, up), hw(&l, 2, down), hw(&l, 2, up)],
        [3, 2, 4, 1, 6]
    );
    assert_eq!(hw(&l, 2, Stream::HashKeys), 0);
    assert_eq!(hw(&l, 9, down), 0);
    let mut want1: Vec<E> = script.iter().filter(|s| s.0 == 1).map(|s| s.1).collect();
    want1.push(E::Skipped { stream: down, from: 2, to: 2 });
    assert_eq!(l.entries(1).unwrap(), want1);
    assert_eq!(l.entries(2).unwrap().len(), 2);
    assert_eq!((l.find_reuse(1).unwrap(), l.find_reuse(2).unwrap()), (None, None));
    // Resumes where it left off.
    l.record(1, E::Used { stream: down, index: 2, purpose: AP::TagSent }).unwrap();
    assert!(matches!(
        l.record(1, E::Used { stream: down, index: 2, purpose: AP::TagSent }),
        Err(AuthError::AlreadyUsed { index: 2, high_water: 3, .. })
    ));
    assert_eq!(l.high_water(1, down), 3);
    // The key pools are untouched by the pad ledger.
    assert_eq!(store.pool(1).totals().unwrap(), Totals::default());
}

#[test]
fn find_reuse_detects_overlaps_in_raw_entries() {
    use qpon_qkd::session::{Direction, LedgerEntry as E, Purpose as AP, Stream};
    let dir = TempDir::new();
    let store = KeyStore::open(dir.file("k.redb")).unwrap();
    let l = store.auth_ledger();
    let down = Stream::Pads(Direction::Downstream);
    // Write past the record() guard, as a corrupted or foreign ledger might.
    let txn = begin(&store.db).unwrap();
    {
        let mut t = txn.open_table(TableDefinition::<(u16, u64), &[u8]>::new("auth_ledger")).unwrap();
        let raw = |e: E| auth_ledger_test_encode(&e);
        t.insert((1, 0), raw(E::Skipped { stream: down, from: 0, to: 5 }).as_slice()).unwrap();
        t.insert(
            (1, 1),
            raw(E::Used { stream: Stream::HashKeys, index: 3, purpose: AP::HashKey }).as_slice(),
        )
        .unwrap();
        t.insert((1, 2), raw(E::Used { stream: down, index: 4, purpose: AP::TagSent }).as_slice()).unwrap();
    }
    txn.commit().unwrap();
    assert_eq!(l.find_reuse(1).unwrap(), Some((down, 4)));
    assert_eq!(l.find_reuse(2).unwrap(), None);
}

fn auth_ledger_test_encode(e: &qpon_qkd::session::LedgerEntry) -> Vec<u8> {
    auth_ledger::test_encode(e)
}

// ---------------------------------------------------------------------------------------
// Encryption at rest

fn kek(n: u8) -> Kek {
    Kek::from_bytes([n; 32])
}

fn encrypted(path: &Path, k: Option<Kek>) -> Result<KeyStore, StoreError> {
    KeyStore::open_with(path, StoreOptions { kek: k })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_store_round_trips_and_hides_key_bytes() {
    let dir = TempDir::new();
    let key = block(77, 8 * 128);
    let share = [0x3Cu8; 64];
    for enc in [false, true] {
        let path = dir.file(if enc { "enc.redb" } else { "plain.redb" });
        {
            let store = encrypted(&path, enc.then(|| kek(1))).unwrap();
            assert_eq!(store.is_encrypted(), enc);
            let p = store.pool(2);
            p.append_provisional(id(1), &key, &share).unwrap();
            p.commit_block(id(1)).unwrap();
            assert_eq!(p.consume(Purpose::Api, 16).unwrap().key.expose(), &key.to_bytes()[..16]);
        }
        let raw = std::fs::read(&path).unwrap();
        let bytes = key.to_bytes();
        assert_eq!(contains(&raw, &bytes[32..64]), !enc, "encrypted={enc}");
        assert_eq!(contains(&raw, &share[..32]), !enc, "encrypted={enc}");
        let store = encrypted(&path, enc.then(|| kek(1))).unwrap();
        let p = store.pool(2);
        let c = p.consume(Purpose::Api, 32).unwrap();
        assert_eq!((c.offset, c.key.expose()), (16, &bytes[16..48]));
        assert_eq!(p.auth_shares().unwrap()[0].expose(), share.as_slice());
        audit(&p);
    }
}

#[test]
fn kek_mismatches_are_refused() {
    let dir = TempDir::new();
    let enc = dir.file("enc.redb");
    let plain = dir.file("plain.redb");
    encrypted(&enc, Some(kek(1))).unwrap().pool(0).append_block(id(1), &block(1, 64)).unwrap();
    KeyStore::open(&plain).unwrap().pool(0).append_block(id(1), &block(1, 64)).unwrap();
    assert!(matches!(KeyStore::open(&enc), Err(StoreError::KekRequired)));
    assert!(matches!(encrypted(&enc, Some(kek(2))), Err(StoreError::WrongKek)));
    assert!(matches!(encrypted(&plain, Some(kek(1))), Err(StoreError::NotEncrypted)));
    // Nothing was changed by the refusals.
    assert_eq!(encrypted(&enc, Some(kek(1))).unwrap().pool(0).level_bits(), 64);
    assert_eq!(KeyStore::open(&plain).unwrap().pool(0).level_bits(), 64);
}

#[test]
fn tampered_ciphertext_is_corrupt() {
    let dir = TempDir::new();
    let store = encrypted(&dir.file("k.redb"), Some(kek(5))).unwrap();
    let p = store.pool(1);
    p.append_provisional(id(1), &block(1, 256), &[1; 20]).unwrap();
    p.append_provisional(id(2), &block(2, 256), &[2; 20]).unwrap();
    p.commit_block(id(1)).unwrap();
    p.commit_block(id(2)).unwrap();
    let txn = begin(&store.db).unwrap();
    {
        let mut keys = txn.open_table(KEYS).unwrap();
        let mut v = keys.get(id(1).as_u128()).unwrap().unwrap().value().to_vec();
        v[3] ^= 1;
        keys.insert(id(1).as_u128(), v.as_slice()).unwrap();
        // A valid sealed share moved to another block does not open either.
        let mut shares = txn.open_table(SHARES).unwrap();
        let s1 = shares.get(id(1).as_u128()).unwrap().unwrap().value().to_vec();
        shares.insert(id(2).as_u128(), s1.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    assert!(matches!(p.consume(Purpose::Api, 4), Err(StoreError::Corrupt(_))));
    assert!(matches!(p.auth_shares(), Err(StoreError::Corrupt(_))));
    assert_eq!(p.ledger().unwrap().count(), 0, "a failed open consumes nothing");
}

#[test]
fn kek_loading() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let k = Kek::from_hex(&format!("  {hex}\n")).unwrap();
    assert_eq!(k.0[..3], [0x00, 0x11, 0x22]);
    assert_eq!(k.0[31], 0xFF);
    assert!(!format!("{k:?}").contains("11"));
    for bad in ["", &hex[1..], &format!("{hex}0"), &hex.replace('a', "g")] {
        assert!(matches!(Kek::from_hex(bad), Err(KekError::InvalidHex)), "{bad}");
    }
    assert!(matches!(Kek::from_env("QPON_KEK_SURELY_UNSET_1f3a"), Err(KekError::MissingVar(_))));
    let dir = TempDir::new();
    let f = dir.file("kek");
    std::fs::write(&f, format!("{hex}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(Kek::from_file(&f), Err(KekError::Permissions { mode: 0o640, .. })));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(Kek::from_file(&f).unwrap().0, k.0);
    assert!(matches!(Kek::from_file(dir.file("missing")), Err(KekError::Io { .. })));
    // The same KEK opens a store made with it, loaded any way.
    let path = dir.file("k.redb");
    drop(encrypted(&path, Some(Kek::from_file(&f).unwrap())).unwrap());
    assert!(encrypted(&path, Some(Kek::from_hex(hex).unwrap())).is_ok());
}

#[test]
fn consume_at_mirrors_the_peer_and_refuses_a_drifted_cursor() {
    let dir = TempDir::new();
    let a = KeyStore::open(dir.file("a.redb")).unwrap();
    let b = KeyStore::open(dir.file("b.redb")).unwrap();
    let (pa, pb) = (a.pool(3), b.pool(3));
    for (n, bits) in [(1u128, 8 * 20), (2, 8 * 64)] {
        pa.append_block(id(n), &block(n as u64, bits)).unwrap();
        pb.append_block(id(n), &block(n as u64, bits)).unwrap();
    }
    // The OLT's cursor: 16 bytes from block 1, then 16 more skip block 1's tail.
    let c1 = pa.consume(Purpose::Downstream, 16).unwrap();
    let c2 = pa.consume(Purpose::Downstream, 16).unwrap();
    assert_eq!((c1.block, c1.offset, c2.block, c2.offset), (id(1), 0, id(2), 0));
    // The mirror: wrong place refused, nothing changes.
    let before = pb.totals().unwrap();
    assert!(matches!(
        pb.consume_at(Purpose::Downstream, id(2), 0, 16),
        Err(StoreError::CursorDiverged { .. })
    ));
    assert!(matches!(
        pb.consume_at(Purpose::Downstream, id(9), 0, 16),
        Err(StoreError::CursorDiverged { .. })
    ));
    assert_eq!(pb.totals().unwrap(), before);
    assert_eq!(pb.ledger().unwrap().count(), 0);
    // In order, the same bytes.
    assert_eq!(pb.consume_at(Purpose::Downstream, id(1), 0, 16).unwrap().expose(), c1.key.expose());
    assert_eq!(pb.consume_at(Purpose::Downstream, id(2), 0, 16).unwrap().expose(), c2.key.expose());
    let strip =
        |p: &StorePool| p.ledger().unwrap().map(|e| (e.kind, e.block, e.offset, e.len)).collect::<Vec<_>>();
    assert_eq!(strip(&pa), strip(&pb));
    assert_eq!(pa.totals().unwrap(), pb.totals().unwrap());
    assert_eq!(pb.consumptions(Purpose::Downstream).unwrap(), vec![(id(1), 0, 16), (id(2), 0, 16)]);
    // Through the KeyPool trait.
    let (mut ka, mut kb): (Box<dyn KeyPool>, Box<dyn KeyPool>) = (Box::new(pa), Box::new(pb));
    let (blk, off, key) = ka.take(Purpose::Downstream, 16).unwrap();
    assert_eq!(kb.take_named(Purpose::Downstream, blk, off, 16).unwrap().expose(), key.expose());
    assert_eq!(ka.consumed_bytes(Purpose::Downstream), 48);
    assert_eq!(kb.consumed_bytes(Purpose::Downstream), 48);
    assert!(matches!(ka.take(Purpose::Downstream, 64), Err(PoolError::Exhausted { .. })));
}

#[test]
fn consumed_bytes_read_back_and_deliveries_are_marked_once_across_reopen() {
    let dir = TempDir::new();
    let path = dir.file("k.redb");
    let key = block(9, 8 * 64);
    let got = {
        let store = KeyStore::open(&path).unwrap();
        let pool = store.pool(2);
        pool.append_block(id(1), &key).unwrap();
        let c = pool.consume(Purpose::Api, 32).unwrap();
        // Unconsumed bytes cannot be read around the cursor; consumed ones read back equal.
        assert!(matches!(pool.read_consumed(id(1), 32, 8), Err(StoreError::NotConsumed { .. })));
        assert!(matches!(pool.read_consumed(id(1), 28, 8), Err(StoreError::NotConsumed { .. })));
        assert!(matches!(pool.read_consumed(id(7), 0, 8), Err(StoreError::NotConsumed { .. })));
        assert!(matches!(store.pool(3).read_consumed(id(1), 0, 8), Err(StoreError::NotConsumed { .. })));
        assert_eq!(pool.read_consumed(id(1), 16, 16).unwrap().expose(), &c.key.expose()[16..]);
        // All or none: a batch with one delivered ID records nothing.
        pool.mark_delivered(&[id(100)]).unwrap();
        assert!(
            matches!(pool.mark_delivered(&[id(101), id(100)]), Err(StoreError::AlreadyDelivered(x)) if x == id(100))
        );
        assert!(!pool.is_delivered(id(101)).unwrap());
        c.key
    };
    let store = KeyStore::open(&path).unwrap();
    let pool = store.pool(2);
    assert!(pool.is_delivered(id(100)).unwrap());
    assert!(matches!(pool.mark_delivered(&[id(100)]), Err(StoreError::AlreadyDelivered(_))));
    pool.mark_delivered(&[id(101)]).unwrap();
    assert_eq!(pool.read_consumed(id(1), 0, 32).unwrap().expose(), got.expose());
    // A discarded block's bytes are gone.
    pool.discard(id(1)).unwrap();
    assert!(matches!(pool.read_consumed(id(1), 0, 32), Err(StoreError::NotConsumed { .. })));
}
