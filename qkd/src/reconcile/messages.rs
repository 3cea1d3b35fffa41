//! The reconciliation messages: plain data the session frames and authenticates.
//!
//! Corrector → responder: [`ReconcileRequest`] (`CascadeStart`, `ParityQuery`, `Done`).
//! Responder → corrector: [`ReconcileReply`] (`ParityAnswer`, one per query).

use super::error::ReconcileError;
use super::schedule::Schedule;
use crate::bits::BitBlock;
use serde::{Deserialize, Serialize};

/// A message from the corrector (noisy key) to the responder (reference key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReconcileRequest {
    /// Opens a Cascade run. Not answered.
    CascadeStart(CascadeStart),
    /// Asks parities. Answered by exactly one [`ReconcileReply::ParityAnswer`].
    ParityQuery(ParityQuery),
    /// Closes the run. Not answered.
    Done(ReconcileDone),
}

impl ReconcileRequest {
    /// The message kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileRequest::CascadeStart(_) => "cascade_start",
            ReconcileRequest::ParityQuery(_) => "parity_query",
            ReconcileRequest::Done(_) => "done",
        }
    }
}

/// A message from the responder to the corrector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReconcileReply {
    /// The parities a [`ParityQuery`] asked for.
    ParityAnswer(ParityAnswer),
}

impl ReconcileReply {
    /// The message kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileReply::ParityAnswer(_) => "parity_answer",
        }
    }
}

/// Opens a Cascade run: everything the responder needs to build the same passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CascadeStart {
    /// Key length in bits; must equal the responder's key length.
    pub n_bits: u64,
    /// Public seed of all per-pass permutations, drawn by the corrector from its
    /// (OS or quantum) RNG.
    pub seed: [u8; 32],
    /// The passes.
    pub schedule: Schedule,
}

/// One round's parity questions, grouped by pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParityQuery {
    /// Round number: 1 for the first query, then +1 per query. A query repeating the last
    /// round exactly (a retransmission) gets the same answer again, counted once.
    pub round: u32,
    /// Questions per pass, passes strictly increasing.
    pub passes: Vec<PassQuery>,
}

/// Questions about one pass.
///
/// The answer carries, in this order, the parities of top-level blocks
/// `top_first .. top_first + top_count`, then the parity of each node in `nodes`
/// (see the numbering in the module docs of [`super`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassQuery {
    /// Pass index (0-based) in the schedule.
    pub pass: u16,
    /// First top-level block asked.
    pub top_first: u32,
    /// Number of consecutive top-level blocks asked.
    pub top_count: u32,
    /// Bisection nodes asked, by node id, strictly increasing.
    pub nodes: Vec<u32>,
}

impl ParityQuery {
    /// Number of parity bits this query asks for (saturating; the responder checks sizes
    /// before trusting it).
    pub fn bits(&self) -> u64 {
        self.passes.iter().map(|p| u64::from(p.top_count).saturating_add(p.nodes.len() as u64)).sum()
    }
}

/// The parities of one query, in query order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParityAnswer {
    /// The round answered.
    pub round: u32,
    /// Bit `i` = parity of the `i`-th thing asked.
    pub parities: BitBlock,
}

/// Closes a run; carries the corrector's counts so the responder can cross-check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileDone {
    /// Parity bits the corrector received (must equal the responder's count).
    pub leaked_bits: u64,
    /// Queries answered.
    pub round_trips: u32,
}

impl ParityAnswer {
    pub(crate) fn check_len(&self, expected: u64) -> Result<(), ReconcileError> {
        if self.parities.len() as u64 != expected {
            return Err(ReconcileError::invalid(
                "parity_answer.parities",
                format!("{} parities for {expected} questions", self.parities.len()),
            ));
        }
        Ok(())
    }
}
