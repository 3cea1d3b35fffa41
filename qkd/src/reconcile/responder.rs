//! The responder: holds the reference key, answers parity questions, counts every bit it
//! discloses.

use super::ReconcileResponder;
use super::error::ReconcileError;
use super::messages::{
    CascadeStart, ParityAnswer, ParityQuery, ReconcileDone, ReconcileReply, ReconcileRequest,
};
use super::parity::{block_parities, get};
use super::permutation::PassPermutation;
use super::tree::Layout;
use crate::bits::BitBlock;

/// The reference-key side of Cascade.
///
/// Call order: [`CascadeResponder::new`] with the reference key, then
/// [`handle_request`](ReconcileResponder::handle_request) for every request in arrival
/// order: a `CascadeStart` (no reply), `ParityQuery`s (one `ParityAnswer` each), and a
/// `Done` (no reply; checks the corrector's leakage count against ours). Every request is
/// validated in full before anything is answered or counted; a rejected request leaves
/// the state unchanged. [`leaked_bits`](ReconcileResponder::leaked_bits) is the exact
/// number of parity bits answered so far (a byte-identical retransmission of the last
/// query is answered again from cache and not counted twice).
pub struct CascadeResponder {
    reference: BitBlock,
    leak_limit: u64,
    state: State,
    leaked: u64,
    rounds: u32,
    last: Option<(ParityQuery, ParityAnswer)>,
}

enum State {
    AwaitStart,
    Active(Vec<RespPass>),
    Finished,
}

struct RespPass {
    layout: Layout,
    copy: BitBlock,
    top: Vec<u64>,
}

impl CascadeResponder {
    /// A responder for `reference`, refusing to disclose more than `reference.len()`
    /// parity bits in total.
    pub fn new(reference: BitBlock) -> Self {
        let limit = reference.len() as u64;
        Self::with_leak_limit(reference, limit)
    }

    /// A responder that refuses to disclose more than `leak_limit` parity bits.
    pub fn with_leak_limit(reference: BitBlock, leak_limit: u64) -> Self {
        Self { reference, leak_limit, state: State::AwaitStart, leaked: 0, rounds: 0, last: None }
    }

    /// Queries answered so far.
    pub fn round_trips(&self) -> u32 {
        self.rounds
    }

    /// Gives the reference key back.
    pub fn into_reference(self) -> BitBlock {
        self.reference
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitStart => "awaiting cascade_start",
            State::Active(_) => "answering parity queries",
            State::Finished => "finished",
        }
    }

    fn start(&mut self, s: &CascadeStart) -> Result<(), ReconcileError> {
        let n = self.reference.len();
        if s.n_bits != n as u64 {
            return Err(ReconcileError::invalid(
                "cascade_start.n_bits",
                format!("{} bits, but the reference key has {n}", s.n_bits),
            ));
        }
        s.schedule.validate(n)?;
        let kind = s.schedule.permutation;
        let n_perm = kind.permuted_len(n) as u32;
        let passes = (0..s.schedule.passes())
            .map(|p| {
                let perm = PassPermutation::generate(kind, &s.seed, p as u32, n, false);
                let copy = perm.gather(&self.reference);
                let layout = Layout::new(n_perm, s.schedule.block_sizes[p]);
                let top = block_parities(&copy, &layout);
                RespPass { layout, copy, top }
            })
            .collect();
        self.state = State::Active(passes);
        Ok(())
    }

    fn answer(&mut self, q: &ParityQuery) -> Result<ParityAnswer, ReconcileError> {
        let State::Active(passes) = &self.state else {
            return Err(ReconcileError::Unexpected { got: "parity_query", state: "not answering" });
        };
        if let Some((lq, la)) = &self.last
            && lq == q
        {
            return Ok(la.clone());
        }
        if q.round != self.rounds + 1 {
            return Err(ReconcileError::invalid(
                "parity_query.round",
                format!("round {}, expected {}", q.round, self.rounds + 1),
            ));
        }
        // Sizes first: the count bounds every allocation below.
        let bits = q.bits();
        if bits == 0 {
            return Err(ReconcileError::invalid("parity_query.passes", "asks nothing"));
        }
        let requested = self.leaked.saturating_add(bits);
        if requested > self.leak_limit {
            return Err(ReconcileError::LeakageLimit { requested, limit: self.leak_limit });
        }
        let mut ranges = Vec::with_capacity(q.passes.iter().map(|p| p.nodes.len()).sum());
        let mut prev: Option<u16> = None;
        for pq in &q.passes {
            if prev.is_some_and(|p| p >= pq.pass) {
                return Err(ReconcileError::invalid("parity_query.passes", "passes not strictly increasing"));
            }
            prev = Some(pq.pass);
            let Some(rp) = passes.get(usize::from(pq.pass)) else {
                return Err(ReconcileError::invalid(
                    "parity_query.pass",
                    format!("pass {} of {}", pq.pass, passes.len()),
                ));
            };
            if pq.top_first.checked_add(pq.top_count).is_none_or(|end| end > rp.layout.nb) {
                return Err(ReconcileError::invalid(
                    "parity_query.top",
                    format!("blocks {}+{} of {}", pq.top_first, pq.top_count, rp.layout.nb),
                ));
            }
            if pq.nodes.windows(2).any(|w| w[0] >= w[1]) {
                return Err(ReconcileError::invalid(
                    "parity_query.nodes",
                    "node ids not strictly increasing",
                ));
            }
            for &id in &pq.nodes {
                let Some(r) = rp.layout.decode(id) else {
                    return Err(ReconcileError::invalid(
                        "parity_query.nodes",
                        format!("no node {id} in pass {}", pq.pass),
                    ));
                };
                ranges.push(r);
            }
        }
        // All checked: answer.
        let mut out = BitBlock::zeros(bits as usize);
        let mut i = 0usize;
        let mut ranges = ranges.into_iter();
        for pq in &q.passes {
            let rp = &passes[usize::from(pq.pass)];
            for b in pq.top_first..pq.top_first + pq.top_count {
                out.set(i, get(&rp.top, b as usize));
                i += 1;
            }
            for (s, e) in ranges.by_ref().take(pq.nodes.len()) {
                out.set(i, rp.copy.parity_range(s as usize, e as usize));
                i += 1;
            }
        }
        debug_assert_eq!(i as u64, bits);
        self.leaked = requested;
        self.rounds += 1;
        let ans = ParityAnswer { round: q.round, parities: out };
        self.last = Some((q.clone(), ans.clone()));
        Ok(ans)
    }

    fn done(&mut self, d: &ReconcileDone) -> Result<(), ReconcileError> {
        if d.leaked_bits != self.leaked {
            return Err(ReconcileError::LeakageMismatch { corrector: d.leaked_bits, responder: self.leaked });
        }
        if d.round_trips != self.rounds {
            return Err(ReconcileError::invalid(
                "done.round_trips",
                format!("{} round trips, but {} queries were answered", d.round_trips, self.rounds),
            ));
        }
        self.state = State::Finished;
        self.last = None;
        Ok(())
    }
}

impl ReconcileResponder for CascadeResponder {
    fn handle_request(&mut self, req: &ReconcileRequest) -> Result<Option<ReconcileReply>, ReconcileError> {
        let unexpected = |s: &Self| ReconcileError::Unexpected { got: req.kind(), state: s.state_name() };
        match (req, &self.state) {
            (ReconcileRequest::CascadeStart(s), State::AwaitStart) => self.start(s).map(|()| None),
            (ReconcileRequest::ParityQuery(q), State::Active(_)) => {
                self.answer(q).map(|a| Some(ReconcileReply::ParityAnswer(a)))
            }
            (ReconcileRequest::Done(d), State::Active(_)) => self.done(d).map(|()| None),
            _ => Err(unexpected(self)),
        }
    }

    fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}
