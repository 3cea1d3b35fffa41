//! Per-ONU statistics kept by the OLT driver.

use qpon_qkd::session::{AbortReason, BlockStats, SiftTotals};
use serde::Serialize;
use std::collections::BTreeMap;

/// What the OLT knows about one ONU's key generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OnuStats {
    /// Detections attributed to the ONU by the slot map.
    pub detections: u64,
    /// Detections flagged as double clicks.
    pub double_clicks: u64,
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits appended to the pool.
    pub secret_bits: u64,
    /// Sifted key bits in finished blocks.
    pub sifted_bits: u64,
    /// Key-basis errors corrected by reconciliation, summed over finished blocks.
    pub key_errors: u64,
    /// Aborted blocks by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Blocks withdrawn from the pool (provisional or committed) by the pool agreement.
    pub discarded: u64,
    /// The pool's last failure (the session then stopped).
    pub pool_error: Option<String>,
    /// ETSI API keys issued from this ONU's pool (and announced to it).
    pub api_keys: u64,
    /// The last finished block's statistics.
    pub last_block: Option<BlockStats>,
    /// Gates the ONU owned by slot map (pulses it sent), up to the last detector status.
    pub owned_gates: u64,
    /// Sifting's per-class statistics over every block (from the session, refreshed at
    /// each detector status).
    pub sift: SiftTotals,
}

impl OnuStats {
    /// Records a finished block.
    pub fn on_block(&mut self, key_bits: u64, s: &BlockStats) {
        self.blocks += 1;
        self.secret_bits += key_bits;
        self.sifted_bits += s.key_bits;
        self.key_errors += (s.key_qber * s.key_bits as f64).round() as u64;
        self.last_block = Some(s.clone());
    }

    /// Records an aborted block.
    pub fn on_abort(&mut self, reason: &AbortReason) {
        *self.aborted.entry(format!("{reason:?}")).or_default() += 1;
    }

    /// Key-basis QBER over finished blocks (errors corrected / sifted bits).
    pub fn qber(&self) -> f64 {
        if self.sifted_bits > 0 { self.key_errors as f64 / self.sifted_bits as f64 } else { 0.0 }
    }
}
