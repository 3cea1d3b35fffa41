//! Information reconciliation: Cascade, sans-IO and two-sided.
//!
//! The **corrector** holds the noisy key; it asks parity questions and flips bits until its
//! key equals the **responder**'s reference key. Every parity bit the responder discloses
//! is counted, on both sides, into λ_EC — exactly, never estimated: λ_EC is the number of
//! bits in all `ParityAnswer`s. The session layer only moves [`ReconcileRequest`]s one way
//! and [`ReconcileReply`]s the other (framing and authenticating them); the method behind
//! them is hidden by the [`Reconciler`] and [`ReconcileResponder`] traits so another one
//! (e.g. LDPC) can slot in later.
//!
//! ## Protocol
//!
//! 1. Corrector → `CascadeStart { n_bits, seed, schedule }`, immediately followed by the
//!    first `ParityQuery`: the parities of every top-level block of every pass (all passes
//!    of a fixed schedule disclose them anyway, so asking them at once costs nothing extra
//!    and saves a round trip per pass). The last block of every pass after the first is
//!    not asked: it is the total parity (known from pass 1) minus the others.
//! 2. Responder → one `ParityAnswer` per query, bits in query order.
//! 3. Corrector → one `ParityQuery` per round: for every block being bisected, the parity
//!    of the left half of its current odd sub-block (the right half's parity is inferred).
//!    Every block under bisection — in all passes started so far (see
//!    [`CascadeOptions::start_next_percent`]), including blocks of earlier passes made odd
//!    again by a correction, the cascade — advances one level per round, so a 10⁵-bit
//!    frame needs tens of round trips, not thousands.
//! 4. Corrector → `Done { leaked_bits, round_trips }` once no block of any pass differs
//!    in parity; the responder checks the counts against its own.
//!
//! A query names blocks and bisection nodes by number, not by bit positions: pass `p`
//! cuts its permuted order `0..N` into blocks `[b·k_p, (b+1)·k_p)`; each block is a binary
//! tree whose node `[s, e)` splits at `s + ⌈(e−s)/2⌉`; nodes are numbered heap-style
//! within the block (root 1, children `2h`, `2h+1`) and the node id is
//! `b · 2^(D+1) + h` with `D = ⌈log2 k_p⌉`. The responder checks every id. A round's
//! query is a few bytes per question (one `u32` node id; a whole range of top-level
//! blocks is two numbers).
//!
//! ## Reuse of known parities
//!
//! Nothing is asked twice or asked when it can be inferred: a right half is its parent
//! minus its left sibling; the last block of each pass after the first is inferred from
//! the total parity; and when a correction makes a block odd again, its bisection resumes
//! from the deepest already-known sub-block that is odd. In the sparse tail of a run the
//! corrector may also ask a single bit's parity (a *probe*, one bit, one round) when
//! every pass's odd blocks point at the same bit of a small odd block
//! ([`CascadeOptions::probes`]); a wrong guess costs one bit and the bisection goes on.
//!
//! ## Shuffles
//!
//! The per-pass permutations are public randomness: the corrector draws a 32-byte seed
//! from an injected [`rand::CryptoRng`] (OS RNG or QRNG on hardware) and sends it; both
//! ends expand it with ChaCha8, one stream per pass, into the same permutations (recipe in
//! the `permutation` source file; the default [`PermutationKind::WordSkew`] costs about
//! 10 µs per pass for 10⁵ bits, and measured the same efficiency, frame error rate and
//! round trips as full Fisher–Yates shuffles). Each end keeps its key permuted once per
//! pass, so a block or bisection parity is a word-wise parity of a range; the corrector
//! applies its corrections to a pass's copy (through the inverse permutation) when it
//! next needs that pass, or re-permutes the corrected key when many are pending.
//!
//! ## Jobs
//!
//! All state lives in the two plain structs; no call blocks or does I/O, so each step
//! (`poll_request` after a `handle_reply`) is a pure job a driver can run on a worker pool
//! (both types are `Send`). [`run_local`] runs both ends in one thread: for tests,
//! simulation and benchmarks.

mod corrector;
mod error;
mod messages;
mod parity;
mod permutation;
mod responder;
mod schedule;
mod tree;

pub use corrector::{CascadeCorrector, CascadeOptions};
pub use error::ReconcileError;
pub use messages::{
    CascadeStart, ParityAnswer, ParityQuery, PassQuery, ReconcileDone, ReconcileReply, ReconcileRequest,
};
pub use responder::CascadeResponder;
pub use schedule::{
    CONFIRMATION_PASSES, MAX_BITS, MAX_PASSES, MAX_PLANNING_QBER, MIN_PLANNING_QBER, PermutationKind,
    Profile, Schedule, expected_schedule,
};

use crate::bits::BitBlock;

/// Outcome of a finished reconciliation, on the corrector's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// The corrected key (equal to the reference unless a residual error escaped every
    /// pass; the verification hash decides).
    pub key: BitBlock,
    /// λ_EC: parity bits disclosed by the responder, exactly.
    pub leaked_bits: u64,
    /// Query/answer round trips.
    pub round_trips: u32,
    /// Bits the corrector flipped (the errors found).
    pub corrected_bits: u64,
}

/// The corrector side of a reconciliation method, as the session drives it.
///
/// Call order:
/// 1. Loop: call [`poll_request`](Reconciler::poll_request) and send each request until it
///    returns `None` (the first flight has two requests).
/// 2. If [`is_finished`](Reconciler::is_finished): stop (the last request sent was
///    `Done`). Otherwise wait for the reply, pass it to
///    [`handle_reply`](Reconciler::handle_reply), go to 1.
/// 3. Take the result with [`finish_boxed`](Reconciler::finish_boxed) (or the
///    implementation's own `finish`).
///
/// An `Err` from `handle_reply` rejects that reply and changes nothing (a corrupted reply
/// may be replaced by a retransmission); an `Err` from `poll_request` is final.
pub trait Reconciler: Send {
    /// The next request to send, or `None` when waiting for a reply or finished.
    ///
    /// # Errors
    /// The answers so far contradict each other, or a limit was reached.
    fn poll_request(&mut self) -> Result<Option<ReconcileRequest>, ReconcileError>;
    /// Takes the responder's reply to the last query.
    ///
    /// # Errors
    /// A reply that is not expected now or does not match the query.
    fn handle_reply(&mut self, reply: &ReconcileReply) -> Result<(), ReconcileError>;
    /// True once `Done` has been produced.
    fn is_finished(&self) -> bool;
    /// Parity bits received so far.
    fn leaked_bits(&self) -> u64;
    /// Replies received so far.
    fn round_trips(&self) -> u32;
    /// The result.
    ///
    /// # Errors
    /// [`ReconcileError::NotFinished`] before the end.
    fn finish_boxed(self: Box<Self>) -> Result<Reconciled, ReconcileError>;
}

/// The responder side of a reconciliation method.
///
/// Call [`handle_request`](ReconcileResponder::handle_request) for every request in
/// arrival order and send back the reply when there is one.
pub trait ReconcileResponder: Send {
    /// Processes one request; `Some` is the reply to send.
    ///
    /// # Errors
    /// A malformed, oversized or out-of-order request (nothing is answered or counted),
    /// or a `Done` whose counts disagree with ours.
    fn handle_request(&mut self, req: &ReconcileRequest) -> Result<Option<ReconcileReply>, ReconcileError>;
    /// Parity bits disclosed so far.
    fn leaked_bits(&self) -> u64;
    /// True once `Done` has been accepted.
    fn is_finished(&self) -> bool;
}

/// Runs both ends in-process, passing the requests and replies between them as a session
/// would (without serialising), until the corrector is finished.
///
/// # Errors
/// Whatever either end reports.
pub fn drive(
    corrector: &mut dyn Reconciler,
    responder: &mut dyn ReconcileResponder,
) -> Result<(), ReconcileError> {
    loop {
        let mut reply = None;
        while let Some(req) = corrector.poll_request()? {
            if let Some(r) = responder.handle_request(&req)? {
                reply = Some(r);
            }
        }
        if corrector.is_finished() {
            return Ok(());
        }
        let Some(r) = reply else {
            return Err(ReconcileError::Unexpected { got: "nothing", state: "waiting for a reply" });
        };
        corrector.handle_reply(&r)?;
    }
}

/// Reconciles `noisy` towards `reference` in-process with the default schedule for
/// `qber` and the permutation seed `seed`: the pure-job entry point for simulation, tests
/// and benchmarks.
///
/// # Errors
/// Bad parameters (lengths differ, `qber` out of range), or a failure of either end.
pub fn run_local(
    noisy: &BitBlock,
    reference: &BitBlock,
    qber: f64,
    seed: [u8; 32],
) -> Result<Reconciled, ReconcileError> {
    let schedule = Schedule::for_qber(qber, noisy.len())?;
    run_local_with(noisy, reference, schedule, seed, CascadeOptions::default())
}

/// [`run_local`] with an explicit schedule and options.
///
/// # Errors
/// As [`run_local`].
pub fn run_local_with(
    noisy: &BitBlock,
    reference: &BitBlock,
    schedule: Schedule,
    seed: [u8; 32],
    opts: CascadeOptions,
) -> Result<Reconciled, ReconcileError> {
    if noisy.len() != reference.len() {
        return Err(ReconcileError::invalid(
            "reference",
            format!("{} bits against a noisy key of {}", reference.len(), noisy.len()),
        ));
    }
    let mut c = CascadeCorrector::with_seed(noisy.clone(), schedule, seed, opts)?;
    let mut r = CascadeResponder::new(reference.clone());
    drive(&mut c, &mut r)?;
    c.finish()
}
