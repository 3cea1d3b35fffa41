//! Downstream encryption keys per ONU at the OLT: rotation from the ONU's pool, the key
//! switch announced over the authenticated classical channel, and the pool-empty policy.
//!
//! Every ONU sees the whole downstream, so each ONU's frames are sealed under that ONU's
//! own AES-128 key (`qpon_mux::downstream`: two key slots, a 2-bit key index in each
//! frame header, switching at a superframe). When a rotation is due the OLT takes the next
//! 16 bytes of the ONU's pool for purpose `Downstream` (durably, in its ledger), loads them
//! into the idle slot from superframe `now + lead_superframes`, and announces the use with
//! the slot and switch superframe ([`qpon_qkd::session::PoolUse`], XGS-PON's Key_Control and
//! Key_Switching_Time in one tagged control message); the ONU takes the same bytes from its
//! own pool and installs them in the same slot. Both ends switch at that superframe.
//!
//! **Rotation** is due when the current key has been in use for `rotate_every_superframes`
//! superframes or has sealed `rotate_every_bytes` payload bytes (0 turns either trigger
//! off), and only once the previous switch has happened. The first key is taken as soon as
//! the ONU's pool and session allow; before it no frame is sent (never in clear).
//!
//! **Pool empty.** When a rotation is due and the pool cannot give 16 bytes, the policy
//! decides: [`OnPoolEmpty::KeepKeyAndAlarm`] (what operators expect: the current key stays
//! in use, the alarm is raised) or [`OnPoolEmpty::StopTraffic`] (no frame for this ONU is
//! sealed until a new key is installed). Either way the alarm is counted in
//! [`DownstreamStats::pool_empty_alarms`] (once per episode) and latched in
//! [`DownstreamStats::alarm`]; traffic is never sent in clear.
//!
//! **Budget.** Each rotation costs 16 pool bytes and one tagged control message each way
//! (see `qpon_qkd::session`, "Pool use"): about one rotation per distilled block can be
//! authenticated from the blocks' own shares, so rotate every few blocks, not every frame.
//!
//! **One-time pads** ([`qpon_mux::otp`]) for flows marked as such: the caller seals such a
//! flow's payloads with [`OltDownstream::seal_otp`] instead of [`OltDownstream::seal`].
//! From the first such request on, the ONU keeps a pad reserve: runs of
//! `otp_run_bytes` pool bytes are taken (purpose `Downstream`, durably) and announced as pool
//! uses *without* a key switch — which is what tells the ONU a use is a pad run — until
//! `otp_reserve_runs` runs are held or in flight. A run is used for frames only once the ONU
//! has acknowledged its use (so the ONU holds it before the first frame needing it
//! arrives). No pad → the frame is refused ([`SealError::Mux`] with `PadExhausted`), never
//! sent in clear or under AES. Pads cost key at the flow's own rate: one byte per byte.

use qpon_kms::{KeyPool, PoolError, Purpose};
use qpon_mux::{DownstreamError, DownstreamKey, DownstreamKeys, KeyIndex, KeysConfig, OnuId, OtpPads};
use qpon_qkd::SecretBytes;
use qpon_qkd::session::{KeySwitch, PoolUse};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Bytes of one downstream key (AES-128).
pub const KEY_BYTES: usize = 16;

/// One-time-pad runs held (or in flight) per ONU at most, at either end: the ONU drops its
/// oldest run beyond this, so the OLT never holds more.
pub const MAX_PAD_RUNS: usize = 8;

/// What to do when a rotation is due and the ONU's pool is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPoolEmpty {
    /// Keep sealing under the current key and raise the alarm (the default).
    #[default]
    KeepKeyAndAlarm,
    /// Seal nothing more for the ONU until a new key is installed, and raise the alarm.
    StopTraffic,
}

/// Downstream key management settings (the `[downstream]` table of the OLT config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Encrypt downstream traffic with keys from the pools (default off).
    pub enabled: bool,
    /// Rotate after this many superframes under one key (default 80 000 = 10 s of 125 µs
    /// superframes; 0: no time trigger).
    pub rotate_every_superframes: u64,
    /// Rotate after this many payload bytes under one key (default 0: no byte trigger).
    pub rotate_every_bytes: u64,
    /// A new key applies this many superframes after it is announced (default 800 =
    /// 100 ms: room for the announcement's round trip and a retransmission or two).
    pub lead_superframes: u64,
    /// The pool-empty policy (default: keep the key and raise the alarm).
    pub on_pool_empty: OnPoolEmpty,
    /// One-time-pad flows: bytes per pad run taken from the pool (default 4096; less when
    /// the block under the pool's cursor holds less; a payload must fit in one run).
    pub otp_run_bytes: u32,
    /// One-time-pad flows: runs kept ready or in flight per ONU that has such a flow
    /// (default 2).
    pub otp_reserve_runs: u32,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rotate_every_superframes: 80_000,
            rotate_every_bytes: 0,
            lead_superframes: 800,
            on_pool_empty: OnPoolEmpty::KeepKeyAndAlarm,
            otp_run_bytes: 4096,
            otp_reserve_runs: 2,
        }
    }
}

/// A downstream alarm (latched in [`DownstreamStats::alarm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamAlarm {
    /// A rotation was due and the pool had no key: the current key stays in use.
    PoolEmptyKeyKept {
        /// The superframe the rotation was due at.
        superframe: u64,
    },
    /// A rotation was due and the pool had no key: traffic to the ONU is stopped.
    PoolEmptyTrafficStopped {
        /// The superframe the rotation was due at.
        superframe: u64,
    },
}

/// Downstream counters of one ONU at the OLT.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DownstreamStats {
    /// Keys taken from the pool, installed and announced.
    pub keys_installed: u64,
    /// Key switches reached (a new key's first superframe passed while sealing).
    pub switches: u64,
    /// Frames sealed.
    pub frames_sealed: u64,
    /// Payload bytes sealed.
    pub bytes_sealed: u64,
    /// Frames refused (no key yet, traffic stopped, …): never sent in clear.
    pub frames_refused: u64,
    /// Pool-empty episodes (each raised the alarm once).
    pub pool_empty_alarms: u64,
    /// The newest alarm, if any.
    pub alarm: Option<DownstreamAlarm>,
    /// Whether traffic is stopped (pool empty under [`OnPoolEmpty::StopTraffic`]).
    pub stopped: bool,
    /// One-time-pad runs taken from the pool and announced.
    pub pad_runs: u64,
    /// One-time-pad frames sealed.
    pub otp_frames_sealed: u64,
    /// One-time-pad frames refused (no acknowledged pad with room): never sent.
    pub otp_frames_refused: u64,
}

/// Why a payload was not sealed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Downstream encryption is not enabled, or the ONU is unknown.
    #[error("downstream encryption is not enabled for onu {0}")]
    NotEnabled(u16),
    /// The pool ran dry under the stop-traffic policy: nothing is sent.
    #[error("downstream traffic to onu {0} is stopped (pool empty)")]
    Stopped(u16),
    /// The framing or key state refused it (e.g. no key yet).
    #[error(transparent)]
    Mux(#[from] DownstreamError),
}

/// What a rotation did.
#[derive(Debug)]
pub enum Rotation {
    /// Nothing was due (or the session cannot announce now).
    NotDue,
    /// A key was taken and installed: announce this use.
    Announce(PoolUse),
    /// The pool is empty (the policy was applied).
    PoolEmpty,
    /// The pool failed otherwise (the caller stops the session).
    Failed(PoolError),
}

/// One ONU's downstream key state at the OLT.
#[derive(Debug)]
pub struct OltDownstream {
    cfg: DownstreamConfig,
    keys: DownstreamKeys,
    /// First superframe of the key in use (or about to be), and of the pending one.
    current_from: Option<u64>,
    pending_from: Option<u64>,
    /// Payload bytes sealed under the current key.
    bytes_under_current: u64,
    /// Inside a pool-empty episode (the alarm was raised).
    empty: bool,
    stats: DownstreamStats,
    /// One-time pads: runs the ONU acknowledged (usable), runs announced and not yet
    /// acknowledged (use number, bytes), and whether a flow asked for pads.
    pads: OtpPads,
    pads_unacked: VecDeque<(u64, SecretBytes)>,
    pads_wanted: bool,
}

impl OltDownstream {
    /// Empty key state for `onu`.
    pub fn new(onu: u16, cfg: DownstreamConfig) -> Self {
        // The OLT never sends under the old key after a switch.
        let keys =
            DownstreamKeys::new(OnuId(onu), KeysConfig { overlap_superframes: 0, require_encryption: true });
        Self {
            cfg,
            keys,
            current_from: None,
            pending_from: None,
            bytes_under_current: 0,
            empty: false,
            stats: DownstreamStats::default(),
            pads: OtpPads::new(OnuId(onu), MAX_PAD_RUNS),
            pads_unacked: VecDeque::new(),
            pads_wanted: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DownstreamConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &DownstreamStats {
        &self.stats
    }

    /// Moves the clock to `superframe`: a pending key whose first superframe is reached
    /// becomes current (a switch) and the old key is erased.
    pub fn advance_to(&mut self, superframe: u64) {
        if let Some(p) = self.pending_from
            && superframe >= p
        {
            if self.current_from.is_some() {
                self.stats.switches += 1;
            }
            self.current_from = Some(p);
            self.pending_from = None;
            self.bytes_under_current = 0;
        }
        self.keys.advance_to(superframe);
    }

    /// Whether a rotation is due at `superframe`.
    pub fn due(&self, superframe: u64) -> bool {
        if !self.cfg.enabled || self.pending_from.is_some() {
            return false;
        }
        let Some(from) = self.current_from else { return true };
        let by_time = self.cfg.rotate_every_superframes > 0
            && superframe.saturating_sub(from) >= self.cfg.rotate_every_superframes;
        let by_bytes =
            self.cfg.rotate_every_bytes > 0 && self.bytes_under_current >= self.cfg.rotate_every_bytes;
        by_time || by_bytes
    }

    /// Rotates if due: takes the next key from `pool` (recorded there durably), installs it
    /// from `superframe + lead_superframes` and returns the use to announce; applies the
    /// pool-empty policy when the pool has no key. The caller checks first that the session
    /// can announce (synced, not stopped, no backlog).
    pub fn rotate(&mut self, superframe: u64, pool: &mut dyn KeyPool) -> Rotation {
        self.advance_to(superframe);
        if !self.due(superframe) {
            return Rotation::NotDue;
        }
        let (block, offset, bytes) = match pool.take(Purpose::Downstream, KEY_BYTES) {
            Ok(t) => t,
            Err(PoolError::Exhausted { .. }) => {
                self.pool_empty(superframe);
                return Rotation::PoolEmpty;
            }
            Err(e) => return Rotation::Failed(e),
        };
        let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes.expose()) else {
            return Rotation::Failed(PoolError::Store("pool returned a short key".into()));
        };
        let from = superframe.saturating_add(self.cfg.lead_superframes.max(1));
        let index = match self.keys.install(DownstreamKey::from_bytes(raw), from) {
            Ok(i) => i,
            // Both slots busy cannot happen after `advance_to` (overlap 0 at the OLT); if
            // it did, the consumed key is lost but recorded, and still announced so the
            // ONU's pool follows (without a switch).
            Err(_) => {
                let mut u = use_of(offset, None);
                u.block = block;
                return Rotation::Announce(u);
            }
        };
        self.empty = false;
        self.stats.stopped = false;
        self.stats.keys_installed += 1;
        self.pending_from = Some(from);
        let slot = index.bits() - 1;
        let mut u = use_of(offset, Some(KeySwitch { slot, from_superframe: from }));
        u.block = block;
        Rotation::Announce(u)
    }

    fn pool_empty(&mut self, superframe: u64) {
        if self.current_from.is_none() {
            // No key yet (the pool has not filled): nothing is sent, nothing to alarm.
            return;
        }
        if !self.empty {
            self.empty = true;
            self.stats.pool_empty_alarms += 1;
        }
        self.stats.alarm = Some(match self.cfg.on_pool_empty {
            OnPoolEmpty::KeepKeyAndAlarm => DownstreamAlarm::PoolEmptyKeyKept { superframe },
            OnPoolEmpty::StopTraffic => {
                self.stats.stopped = true;
                DownstreamAlarm::PoolEmptyTrafficStopped { superframe }
            }
        });
    }

    /// Seals `payload` for this ONU in `superframe` under the key in force; returns the
    /// frame. Refused (never sent in clear) without a key or while traffic is stopped.
    pub fn seal(&mut self, onu: u16, superframe: u64, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        self.advance_to(superframe);
        if self.stats.stopped {
            self.stats.frames_refused += 1;
            return Err(SealError::Stopped(onu));
        }
        match self.keys.seal(superframe, payload) {
            Ok(f) => {
                self.stats.frames_sealed += 1;
                self.stats.bytes_sealed += payload.len() as u64;
                self.bytes_under_current += payload.len() as u64;
                Ok(f)
            }
            Err(e) => {
                self.stats.frames_refused += 1;
                Err(e.into())
            }
        }
    }

    /// Seals `payload` of a flow marked for one-time pads: XORed with unused pad bytes the
    /// ONU holds (see the module docs). The first call turns the pad reserve on for this
    /// ONU; while no acknowledged run has room the frame is refused, never sent otherwise.
    pub fn seal_otp(&mut self, superframe: u64, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        self.pads_wanted = true;
        match self.pads.seal(superframe, payload) {
            Ok(f) => {
                self.stats.otp_frames_sealed += 1;
                Ok(f)
            }
            Err(e) => {
                self.stats.otp_frames_refused += 1;
                Err(e.into())
            }
        }
    }

    /// Pad runs announced and acknowledged up to use `acked` become usable.
    pub fn pads_acked(&mut self, acked: u64) {
        while self.pads_unacked.front().is_some_and(|(seq, _)| *seq <= acked) {
            let Some((seq, bytes)) = self.pads_unacked.pop_front() else { break };
            // Use numbers beyond u32 cannot name a run in a frame: such a run stays unused
            // (consumed and recorded at both ends).
            if let Ok(run) = u32::try_from(seq) {
                let _ = self.pads.add_run(run, bytes.expose());
            }
        }
    }

    /// Whether the pad reserve wants another run (a pad flow exists and fewer than
    /// `otp_reserve_runs` runs' worth of bytes are held or in flight).
    pub fn pads_low(&self) -> bool {
        let run = u64::from(self.cfg.otp_run_bytes.max(1));
        let held = self.pads.available() + self.pads_unacked.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        // Runs are bounded in number too (they may be shorter than `otp_run_bytes` when
        // blocks are short): the ONU keeps at most [`MAX_PAD_RUNS`], dropping the oldest,
        // so the OLT never holds more than that.
        let runs = self.pads.runs() + self.pads_unacked.len();
        self.cfg.enabled
            && self.pads_wanted
            && held < u64::from(self.cfg.otp_reserve_runs) * run
            && runs < MAX_PAD_RUNS
    }

    /// Takes one pad run from `pool` (durably) and returns the use to announce; the
    /// caller records the use number it got with [`pad_run_announced`](Self::pad_run_announced).
    pub fn take_pad_run(&mut self, pool: &mut dyn KeyPool) -> Result<(PoolUse, SecretBytes), PoolError> {
        // A run lies within one block: at most `otp_run_bytes`, and no more than the
        // block under the cursor still holds (so no tail is skipped for a run).
        let room = pool.unused_runs()?.first().map_or(0, |r| r.2);
        let len = u64::from(self.cfg.otp_run_bytes.max(1)).min(room) as u32;
        if len == 0 {
            return Err(PoolError::Exhausted { requested: u64::from(self.cfg.otp_run_bytes), available: 0 });
        }
        let (block, offset, bytes) = pool.take(Purpose::Downstream, len as usize)?;
        let u = PoolUse { seq: 0, purpose: Purpose::Downstream as u8, block, offset, len, switch: None };
        Ok((u, bytes))
    }

    /// The pad run taken by [`take_pad_run`](Self::take_pad_run) was announced as use `seq`.
    pub fn pad_run_announced(&mut self, seq: u64, bytes: SecretBytes) {
        self.stats.pad_runs += 1;
        self.pads_unacked.push_back((seq, bytes));
    }

    /// Unused pad bytes the ONU has acknowledged.
    pub fn pad_bytes(&self) -> u64 {
        self.pads.available()
    }

    /// The key index in force at `superframe`, if any.
    pub fn active_at(&self, superframe: u64) -> Option<KeyIndex> {
        self.keys.active_at(superframe)
    }
}

/// A downstream use at `offset` (the caller sets the block).
fn use_of(offset: u64, switch: Option<KeySwitch>) -> PoolUse {
    PoolUse {
        seq: 0,
        purpose: Purpose::Downstream as u8,
        block: Default::default(),
        offset,
        len: KEY_BYTES as u32,
        switch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_kms::MemoryPool;
    use qpon_mux::downstream::Frame;
    use qpon_qkd::BitBlock;

    fn pool(keys: usize) -> MemoryPool {
        let mut p = MemoryPool::new();
        let bits: Vec<bool> = (0..keys * 8 * KEY_BYTES).map(|i| (i * 7 + i / 3) % 5 < 2).collect();
        p.append(Default::default(), &BitBlock::from_bools(&bits)).unwrap();
        p
    }

    fn cfg(on_pool_empty: OnPoolEmpty) -> DownstreamConfig {
        DownstreamConfig {
            enabled: true,
            rotate_every_superframes: 100,
            rotate_every_bytes: 0,
            lead_superframes: 10,
            on_pool_empty,
            ..DownstreamConfig::default()
        }
    }

    fn key_index(frame: &[u8]) -> KeyIndex {
        Frame::new_checked(frame).unwrap().key_index().unwrap()
    }

    #[test]
    fn rotates_on_schedule_and_never_sends_in_clear() {
        let mut p = pool(3);
        let mut ds = OltDownstream::new(4, cfg(OnPoolEmpty::KeepKeyAndAlarm));
        // No key yet: nothing is sealed.
        assert!(ds.seal(4, 0, b"x").is_err());
        let Rotation::Announce(u) = ds.rotate(0, &mut p) else { panic!("first key") };
        assert_eq!(u.switch, Some(KeySwitch { slot: 0, from_superframe: 10 }));
        assert_eq!((u.offset, u.len, u.purpose), (0, 16, Purpose::Downstream as u8));
        assert!(matches!(ds.rotate(5, &mut p), Rotation::NotDue));
        assert!(ds.seal(4, 9, b"x").is_err(), "before the key's first superframe");
        assert_eq!(key_index(&ds.seal(4, 10, b"x").unwrap()), KeyIndex::Slot1);
        assert!(matches!(ds.rotate(50, &mut p), Rotation::NotDue));
        let Rotation::Announce(u) = ds.rotate(110, &mut p) else { panic!("rotation due") };
        assert_eq!(u.switch, Some(KeySwitch { slot: 1, from_superframe: 120 }));
        assert_eq!(key_index(&ds.seal(4, 119, b"x").unwrap()), KeyIndex::Slot1);
        assert_eq!(key_index(&ds.seal(4, 120, b"x").unwrap()), KeyIndex::Slot2);
        assert_eq!(ds.stats().switches, 1);
        assert_eq!(ds.stats().keys_installed, 2);
        assert_eq!(p.consumed_bytes(Purpose::Downstream), 32);
    }

    #[test]
    fn pool_empty_keeps_the_key_with_an_alarm_by_default() {
        let mut p = pool(1);
        let mut ds = OltDownstream::new(1, cfg(OnPoolEmpty::KeepKeyAndAlarm));
        assert!(matches!(ds.rotate(0, &mut p), Rotation::Announce(_)));
        assert!(matches!(ds.rotate(200, &mut p), Rotation::PoolEmpty));
        assert!(matches!(ds.rotate(300, &mut p), Rotation::PoolEmpty));
        assert_eq!(ds.stats().pool_empty_alarms, 1, "one alarm per episode");
        assert!(matches!(ds.stats().alarm, Some(DownstreamAlarm::PoolEmptyKeyKept { superframe: 300 })));
        assert_eq!(key_index(&ds.seal(1, 301, b"still encrypted").unwrap()), KeyIndex::Slot1);
    }

    #[test]
    fn pool_empty_stops_traffic_under_that_policy_until_a_new_key() {
        let mut p = pool(1);
        let mut ds = OltDownstream::new(1, cfg(OnPoolEmpty::StopTraffic));
        assert!(matches!(ds.rotate(0, &mut p), Rotation::Announce(_)));
        assert!(ds.seal(1, 20, b"x").is_ok());
        assert!(matches!(ds.rotate(200, &mut p), Rotation::PoolEmpty));
        assert_eq!(ds.seal(1, 201, b"x"), Err(SealError::Stopped(1)));
        assert!(ds.stats().stopped);
        assert_eq!(ds.stats().pool_empty_alarms, 1);
        // The pool refills: a new key and traffic again.
        let bits: Vec<bool> = (0..8 * KEY_BYTES).map(|i| i % 2 == 0).collect();
        p.append(qpon_kms::key_id(Default::default(), 9), &BitBlock::from_bools(&bits)).unwrap();
        assert!(matches!(ds.rotate(300, &mut p), Rotation::Announce(_)));
        assert!(!ds.stats().stopped);
        assert_eq!(key_index(&ds.seal(1, 310, b"x").unwrap()), KeyIndex::Slot2);
    }

    #[test]
    fn pad_flows_use_acknowledged_runs_only_and_never_send_otherwise() {
        let mut p = pool(600);
        let mut cfg = cfg(OnPoolEmpty::KeepKeyAndAlarm);
        cfg.otp_run_bytes = 1000;
        let mut ds = OltDownstream::new(3, cfg);
        let mut onu = OtpPads::new(OnuId(3), 4);
        // No pad flow yet: no reserve is kept.
        assert!(!ds.pads_low());
        assert!(matches!(ds.seal_otp(0, b"x"), Err(SealError::Mux(DownstreamError::PadExhausted(1)))));
        // The first request turned the reserve on: two runs are taken, announced as uses
        // without a key switch (that is what makes them pad runs at the ONU).
        let mut seq = 0;
        while ds.pads_low() {
            let (u, bytes) = ds.take_pad_run(&mut p).unwrap();
            assert_eq!((u.switch, u.len, u.purpose), (None, 1000, Purpose::Downstream as u8));
            seq += 1;
            onu.add_run(seq as u32, bytes.expose()).unwrap();
            ds.pad_run_announced(seq, bytes);
        }
        assert_eq!((seq, p.consumed_bytes(Purpose::Downstream)), (2, 2000));
        // Not acknowledged yet: still refused.
        assert!(ds.seal_otp(1, b"x").is_err());
        ds.pads_acked(1);
        assert_eq!(ds.pad_bytes(), 1000);
        let f = ds.seal_otp(2, &[0x42; 600]).unwrap();
        assert!(!f.windows(600).any(|w| w == [0x42; 600]), "sent in clear");
        assert_eq!(onu.open(&f).unwrap().1, vec![0x42; 600]);
        assert!(onu.open(&f).is_err(), "a replay opens");
        // 400 bytes left in run 1: a 500-byte payload waits for run 2's acknowledgement.
        assert!(ds.seal_otp(3, &[1; 500]).is_err());
        ds.pads_acked(2);
        let g = ds.seal_otp(4, &[1; 500]).unwrap();
        assert_eq!(onu.open(&g).unwrap().1, vec![1; 500]);
        assert_eq!(
            (ds.stats().otp_frames_sealed, ds.stats().otp_frames_refused, ds.stats().pad_runs),
            (2, 3, 2)
        );
        // The keyed path is untouched by the pads: no key yet, nothing sealed.
        assert!(ds.seal(3, 5, b"x").is_err());
    }
}
