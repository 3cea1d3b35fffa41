use super::*;
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
    assert_eq!(p.append(id(1), &block(2, 64)), Err(PoolError::Duplicate(id(1))));
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
