//! The corrector: holds the noisy key, asks parity questions round by round, flips bits.

use super::error::ReconcileError;
use super::messages::{
    CascadeStart, ParityQuery, PassQuery, ReconcileDone, ReconcileReply, ReconcileRequest,
};
use super::parity::{block_parities, get, set, toggle};
use super::permutation::PassPermutation;
use super::schedule::{Profile, Schedule};
use super::tree::{Layout, split};
use super::{Reconciled, Reconciler};
use crate::bits::{BitBlock, words_for};

/// Tuning of the corrector side (the responder does not need to know it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CascadeOptions {
    /// Give up (with [`ReconcileError::RoundLimit`]) rather than send more queries.
    pub max_round_trips: u32,
    /// When the next pass starts bisecting, in percent: pass `p+1` starts once the odd
    /// blocks still open in passes `0..=p` number at most this percentage of pass `p+1`'s
    /// odd blocks. `0` is Cascade's order (a pass starts when every earlier pass is even),
    /// which discloses the fewest parities; larger values overlap passes and save round
    /// trips, at the price of errors found by a larger block (more parities) that the
    /// cascade through the small blocks would have found more cheaply. Passes already
    /// started always bisect together (that costs nothing measurable).
    pub start_next_percent: u16,
    /// Ask single-bit parities in the sparse tail when every pass points at one bit of a
    /// small odd block (see the module docs).
    pub probes: bool,
}

impl Default for CascadeOptions {
    /// The options [`Profile::Efficient`] was tuned with.
    fn default() -> Self {
        Self::for_profile(Profile::Efficient)
    }
}

impl CascadeOptions {
    /// The options a schedule [`Profile`] was tuned with.
    pub fn for_profile(profile: Profile) -> Self {
        Self { max_round_trips: 1000, start_next_percent: profile.start_next_percent(), probes: true }
    }
}

/// The noisy-key side of Cascade.
///
/// Call order (see [`Reconciler`]): build with [`CascadeCorrector::new`] (draws the public
/// seed from an injected [`rand::CryptoRng`]) or [`CascadeCorrector::with_seed`]; then
/// loop: send every request [`poll_request`](Reconciler::poll_request) yields until it
/// yields `None`; if [`is_finished`](Reconciler::is_finished), stop; otherwise feed the
/// responder's reply to [`handle_reply`](Reconciler::handle_reply). The first flight is
/// `CascadeStart` + the first `ParityQuery` (all top-level block parities of all passes),
/// the last is `Done`. Then [`finish`](CascadeCorrector::finish) gives the corrected key,
/// the exact number of parity bits disclosed and the round trips.
///
/// Each round, every block being bisected (in every pass started so far, see
/// [`CascadeOptions::start_next_percent`], including blocks of earlier passes made odd
/// again by a correction: the cascade) advances one bisection level, so a round is one
/// message each way. Parities already known are reused, never asked again (see the
/// [module docs](super)).
///
/// Answers are trusted only as far as they must be: a bisection that ends on a padding
/// bit or on a bit corrected before gives [`ReconcileError::Inconsistent`], and the
/// limits ([`CascadeOptions::max_round_trips`], at most one flip per bit) bound the work
/// a lying responder can cause.
pub struct CascadeCorrector {
    key: BitBlock,
    n: usize,
    start: CascadeStart,
    opts: CascadeOptions,
    passes: Vec<Pass>,
    flipped: Vec<u64>,
    flips: u64,
    /// Every flip so far, in order; each pass catches up lazily (see `sync`).
    log: Vec<u32>,
    phase: Phase,
    pending: ParityQuery,
    leaked: u64,
    rounds: u32,
    questions: Vec<Vec<u32>>,
    scratch: Vec<u32>,
    /// Passes `0..started` may bisect concurrently.
    started: usize,
    /// This round's single-bit probes: (pass, leaf node id, permuted position).
    probes: Vec<(usize, u32, u32)>,
    /// Bits confirmed wrong by a probe, to flip before the next round.
    confirmed: Vec<u32>,
}

/// Probe only when a round has at most this many questions (the tail of a run)...
const PROBE_MAX_ACTIVE: usize = 8;
/// ... for nodes of at most this many bits.
const PROBE_MAX_NODE: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    New,
    SendTop,
    Await,
    Ready,
    Finished,
    Failed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::New | Phase::SendTop | Phase::Ready => "about to send a request",
            Phase::Await => "awaiting a parity answer",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
        }
    }
}

/// Where a block's bisection stands: the deepest known odd node, valid while no bit of the
/// block has been flipped since (`epoch`).
#[derive(Clone, Copy, Default)]
struct Cursor {
    id: u32,
    s: u32,
    e: u32,
    epoch: u32,
    /// A probe in this node found a correct bit: bisect it instead.
    probed: bool,
}

struct Pass {
    layout: Layout,
    perm: PassPermutation,
    /// The corrector's key in this pass's order (built on first use).
    copy: BitBlock,
    materialized: bool,
    /// Reference parity of each top-level block.
    top_ref: Vec<u64>,
    top_known: bool,
    /// Top-level blocks whose parity differs from the reference.
    odd: Vec<u64>,
    odd_count: u32,
    /// Per internal node (allocated on first answer): the left child's reference parity
    /// is known ...
    asked: Vec<u64>,
    /// ... and is this.
    left_ref: Vec<u64>,
    cursor: Vec<Cursor>,
    /// Per block: changes whenever a bit inside it flips.
    epoch: Vec<u32>,
    /// Flips of the log already applied to `copy`, `odd` and `epoch`.
    synced: usize,
}

impl CascadeCorrector {
    /// A corrector for `noisy`, drawing the public permutation seed from `rng` (the OS RNG
    /// or a QRNG on hardware).
    ///
    /// # Errors
    /// If the schedule does not fit the key (see [`Schedule::validate`]).
    pub fn new(
        noisy: BitBlock,
        schedule: Schedule,
        rng: &mut impl rand::CryptoRng,
        opts: CascadeOptions,
    ) -> Result<Self, ReconcileError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::with_seed(noisy, schedule, seed, opts)
    }

    /// A corrector with an explicit seed (simulation, tests, or a seed drawn elsewhere).
    ///
    /// # Errors
    /// If the schedule does not fit the key (see [`Schedule::validate`]).
    pub fn with_seed(
        noisy: BitBlock,
        schedule: Schedule,
        seed: [u8; 32],
        opts: CascadeOptions,
    ) -> Result<Self, ReconcileError> {
        let n = noisy.len();
        schedule.validate(n)?;
        let kind = schedule.permutation;
        let n_perm = kind.permuted_len(n) as u32;
        let passes: Vec<Pass> = schedule
            .block_sizes
            .iter()
            .enumerate()
            .map(|(p, &k)| {
                let perm = PassPermutation::generate(kind, &seed, p as u32, n, true);
                let layout = Layout::new(n_perm, k);
                let nbw = words_for(layout.nb as usize);
                Pass {
                    layout,
                    perm,
                    copy: BitBlock::zeros(0),
                    materialized: false,
                    top_ref: vec![0; nbw],
                    top_known: false,
                    odd: vec![0; nbw],
                    odd_count: 0,
                    asked: Vec::new(),
                    left_ref: Vec::new(),
                    cursor: vec![Cursor::default(); layout.nb as usize],
                    epoch: vec![0; layout.nb as usize],
                    synced: 0,
                }
            })
            .collect();
        let np = passes.len();
        Ok(Self {
            key: noisy,
            n,
            start: CascadeStart { n_bits: n as u64, seed, schedule },
            opts,
            passes,
            flipped: vec![0; words_for(n)],
            flips: 0,
            log: Vec::new(),
            phase: Phase::New,
            pending: ParityQuery::default(),
            leaked: 0,
            rounds: 0,
            questions: vec![Vec::new(); np],
            scratch: Vec::new(),
            started: 1,
            probes: Vec::new(),
            confirmed: Vec::new(),
        })
    }

    /// The `CascadeStart` this corrector sends (seed and schedule), e.g. to log it.
    pub fn start_message(&self) -> &CascadeStart {
        &self.start
    }

    /// Bits flipped so far (each one a corrected error when the answers are honest).
    pub fn corrected_bits(&self) -> u64 {
        self.flips
    }

    /// The result: corrected key, disclosed parity bits, round trips.
    ///
    /// # Errors
    /// [`ReconcileError::NotFinished`] before `Done` was produced.
    pub fn finish(self) -> Result<Reconciled, ReconcileError> {
        if self.phase != Phase::Finished {
            return Err(ReconcileError::NotFinished);
        }
        Ok(Reconciled {
            key: self.key,
            leaked_bits: self.leaked,
            round_trips: self.rounds,
            corrected_bits: self.flips,
        })
    }

    /// Round 1: every top-level block of every pass, except the last block of each pass
    /// after the first (inferred from the total parity, which pass 1 gives).
    fn top_query(&self) -> ParityQuery {
        let passes = self
            .passes
            .iter()
            .enumerate()
            .filter_map(|(p, ps)| {
                let count = if p == 0 { ps.layout.nb } else { ps.layout.nb - 1 };
                (count > 0).then(|| PassQuery {
                    pass: p as u16,
                    top_first: 0,
                    top_count: count,
                    nodes: Vec::new(),
                })
            })
            .collect();
        ParityQuery { round: self.rounds + 1, passes }
    }

    fn apply_answer(&mut self, parities: &BitBlock) {
        let mut i = 0usize;
        let pending = std::mem::take(&mut self.pending);
        for pq in &pending.passes {
            let ps = &mut self.passes[usize::from(pq.pass)];
            for b in pq.top_first..pq.top_first + pq.top_count {
                set(&mut ps.top_ref, b as usize, parities.get(i));
                i += 1;
            }
            for &id in &pq.nodes {
                let a = parities.get(i);
                i += 1;
                if let Some(&(_, _, j)) =
                    self.probes.iter().find(|&&(q, leaf, _)| q == usize::from(pq.pass) && leaf == id)
                {
                    let x = ps.perm.forward(j);
                    if (x as usize) < self.n && a != self.key.get(x as usize) {
                        self.confirmed.push(x);
                    } else {
                        ps.cursor[(id >> ps.layout.shift()) as usize].probed = true;
                    }
                    continue;
                }
                if ps.asked.is_empty() {
                    let slots = words_for(ps.layout.internal_slots());
                    ps.asked = vec![0; slots];
                    ps.left_ref = vec![0; slots];
                }
                let idx = ps.layout.internal_index(ps.layout.parent(id));
                set(&mut ps.asked, idx, true);
                set(&mut ps.left_ref, idx, a);
            }
        }
        self.probes.clear();
        if self.passes.iter().any(|p| !p.top_known) {
            self.complete_top_level();
        }
    }

    /// In the sparse tail of a run, a small odd node often holds exactly one error that
    /// every pass already points at: the only position whose block is odd in every other
    /// pass. Asking that single bit's parity (one bit, one round) replaces a whole
    /// bisection when right, and costs one bit when wrong.
    fn add_probes(&mut self) {
        let total: usize = self.questions.iter().map(Vec::len).sum();
        if total > PROBE_MAX_ACTIVE || self.passes.len() < 4 {
            return;
        }
        for p in 0..self.passes.len() {
            self.sync(p);
        }
        let mut probed: Vec<u32> = Vec::new();
        for p in 0..self.passes.len() {
            for qi in 0..self.questions[p].len() {
                let ps = &self.passes[p];
                let b = self.questions[p][qi] >> ps.layout.shift();
                let c = ps.cursor[b as usize];
                if c.e - c.s > PROBE_MAX_NODE || c.probed {
                    continue;
                }
                let mut hit = None;
                let mut count = 0;
                for j in c.s..c.e {
                    let x = ps.perm.forward(j);
                    if x as usize >= self.n || get(&self.flipped, x as usize) {
                        continue;
                    }
                    let all_odd = self.passes.iter().enumerate().all(|(q, qs)| {
                        q == p || get(&qs.odd, qs.layout.block_of(qs.perm.inverse(x)) as usize)
                    });
                    if all_odd {
                        count += 1;
                        hit = Some((j, x));
                    }
                }
                if let (1, Some((j, x))) = (count, hit)
                    && !probed.contains(&x)
                {
                    let leaf = leaf_id(&ps.layout, b, j);
                    self.questions[p][qi] = leaf;
                    self.probes.push((p, leaf, j));
                    probed.push(x);
                }
            }
        }
        if self.probes.is_empty() {
            return;
        }
        // Bisections in other passes that contain a probed bit wait one round: they are
        // most likely chasing the same error.
        for (q, qs) in self.passes.iter().enumerate() {
            let probes = &self.probes;
            let questions = &mut self.questions[q];
            questions.retain(|&id| {
                if probes.iter().any(|&(pp, leaf, _)| pp == q && leaf == id) {
                    return true;
                }
                let c = qs.cursor[(id >> qs.layout.shift()) as usize];
                !probed.iter().any(|&x| {
                    let j = qs.perm.inverse(x);
                    c.s <= j && j < c.e
                })
            });
            questions.sort_unstable();
        }
    }

    /// After round 1: infer the missing top-level parities (the odd blocks are found when
    /// each pass is first used, see `sync`).
    fn complete_top_level(&mut self) {
        let total = self.passes[0].top_ref.iter().fold(0u32, |a, w| a ^ (w.count_ones() & 1)) == 1;
        for (p, ps) in self.passes.iter_mut().enumerate() {
            if p > 0 {
                let last = ps.layout.nb as usize - 1;
                let others = ps.top_ref.iter().fold(0u32, |a, w| a ^ (w.count_ones() & 1)) == 1;
                set(&mut ps.top_ref, last, total ^ others);
            }
            ps.top_known = true;
            ps.materialized = false;
        }
    }

    /// Advances every eligible odd block as far as known parities allow (flipping bits at
    /// the end of bisections) and collects the next questions into `self.questions`.
    /// Returns whether any question is left to ask.
    fn settle(&mut self) -> Result<bool, ReconcileError> {
        let np = self.passes.len();
        loop {
            for q in &mut self.questions {
                q.clear();
            }
            let mut pmin = None;
            for p in 0..np {
                self.sync(p);
                if self.passes[p].odd_count > 0 {
                    pmin = Some(p);
                    break;
                }
            }
            let Some(pmin) = pmin else {
                return Ok(false);
            };
            let theta = u64::from(self.opts.start_next_percent);
            self.started = self.started.max(pmin + 1);
            while self.started < np {
                for p in pmin..=self.started {
                    self.sync(p);
                }
                let active: u64 = self.passes[..self.started].iter().map(|p| u64::from(p.odd_count)).sum();
                if active * 100 > theta * u64::from(self.passes[self.started].odd_count) {
                    break;
                }
                self.started += 1;
            }
            let flips_before = self.flips;
            for p in pmin..self.started {
                self.sync(p);
                if self.passes[p].odd_count == 0 {
                    continue;
                }
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                for (wi, &w) in self.passes[p].odd.iter().enumerate() {
                    let mut w = w;
                    while w != 0 {
                        scratch.push((wi as u32) << 6 | w.trailing_zeros());
                        w &= w - 1;
                    }
                }
                for &b in &scratch {
                    if get(&self.passes[p].odd, b as usize) {
                        match self.advance(p, b) {
                            Ok(Some(id)) => self.questions[p].push(id),
                            Ok(None) => self.sync(p),
                            Err(e) => {
                                self.scratch = scratch;
                                return Err(e);
                            }
                        }
                    }
                }
                self.scratch = scratch;
            }
            if self.flips == flips_before {
                return Ok(self.questions.iter().any(|q| !q.is_empty()));
            }
        }
    }

    /// Brings pass `p` up to date with the flip log: one flip at a time when few are
    /// pending, else by permuting the whole corrected key again (cheaper beyond about one
    /// flip per two words).
    fn sync(&mut self, p: usize) {
        let ps = &mut self.passes[p];
        let pending = &self.log[ps.synced..];
        if ps.materialized && pending.is_empty() {
            return;
        }
        if !ps.materialized || pending.len() > self.key.words().len() / 2 {
            ps.copy = ps.perm.gather(&self.key);
            ps.materialized = true;
            if ps.top_known {
                let cur = block_parities(&ps.copy, &ps.layout);
                ps.odd_count = 0;
                for ((o, &r), &c) in ps.odd.iter_mut().zip(&ps.top_ref).zip(&cur) {
                    *o = r ^ c;
                    ps.odd_count += o.count_ones();
                }
            }
            for e in &mut ps.epoch {
                *e = e.wrapping_add(1);
            }
        } else {
            for &x in pending {
                let j = ps.perm.inverse(x);
                ps.copy.flip(j as usize);
                let b = ps.layout.block_of(j) as usize;
                ps.epoch[b] = ps.epoch[b].wrapping_add(1);
                if ps.top_known {
                    toggle(&mut ps.odd, b);
                    if get(&ps.odd, b) {
                        ps.odd_count += 1;
                    } else {
                        ps.odd_count -= 1;
                    }
                }
            }
        }
        ps.synced = self.log.len();
    }

    /// Descends odd block `b` of pass `p` through known parities. Returns the node whose
    /// parity must be asked next, or `None` after flipping the erroneous bit.
    fn advance(&mut self, p: usize, b: u32) -> Result<Option<u32>, ReconcileError> {
        let ps = &mut self.passes[p];
        let l = ps.layout;
        let ep = ps.epoch[b as usize];
        let c = ps.cursor[b as usize];
        let (mut id, mut s, mut e) = if c.id != 0 && c.epoch == ep {
            (c.id, c.s, c.e)
        } else {
            let (s, e) = l.block_range(b);
            (l.root(b), s, e)
        };
        // Invariant: node [s, e) differs from the reference in an odd number of bits.
        let x = loop {
            if e - s == 1 {
                break ps.perm.forward(s);
            }
            let idx = l.internal_index(id);
            let left = l.left_child(id);
            if ps.asked.is_empty() || !get(&ps.asked, idx) {
                if !(c.id == id && c.epoch == ep) {
                    ps.cursor[b as usize] = Cursor { id, s, e, epoch: ep, probed: false };
                }
                return Ok(Some(left));
            }
            let m = split(s, e);
            if get(&ps.left_ref, idx) ^ ps.copy.parity_range(s as usize, m as usize) {
                (id, e) = (left, m);
            } else {
                (id, s) = (left + 1, m);
            }
        };
        self.flip(x)?;
        Ok(None)
    }

    /// Flips original bit `x` in the key; passes catch up in `sync`.
    fn flip(&mut self, x: u32) -> Result<(), ReconcileError> {
        let xi = x as usize;
        if xi >= self.n {
            return Err(ReconcileError::Inconsistent("a bisection ended on a padding bit"));
        }
        if get(&self.flipped, xi) {
            return Err(ReconcileError::Inconsistent("a bisection ended on a bit already corrected"));
        }
        toggle(&mut self.flipped, xi);
        self.key.flip(xi);
        self.flips += 1;
        self.log.push(x);
        Ok(())
    }

    fn next_query(&mut self) -> ParityQuery {
        let passes = self
            .questions
            .iter_mut()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(p, q)| {
                debug_assert!(q.windows(2).all(|w| w[0] < w[1]));
                PassQuery { pass: p as u16, top_first: 0, top_count: 0, nodes: std::mem::take(q) }
            })
            .collect();
        ParityQuery { round: self.rounds + 1, passes }
    }

    fn poll(&mut self) -> Result<Option<ReconcileRequest>, ReconcileError> {
        match self.phase {
            Phase::New => {
                self.phase = Phase::SendTop;
                Ok(Some(ReconcileRequest::CascadeStart(self.start.clone())))
            }
            Phase::SendTop => {
                let q = self.top_query();
                self.pending = q.clone();
                self.phase = Phase::Await;
                Ok(Some(ReconcileRequest::ParityQuery(q)))
            }
            Phase::Ready => {
                for x in std::mem::take(&mut self.confirmed) {
                    self.flip(x)?;
                }
                if !self.settle()? {
                    self.phase = Phase::Finished;
                    return Ok(Some(ReconcileRequest::Done(ReconcileDone {
                        leaked_bits: self.leaked,
                        round_trips: self.rounds,
                    })));
                }
                if self.rounds >= self.opts.max_round_trips {
                    return Err(ReconcileError::RoundLimit { limit: self.opts.max_round_trips });
                }
                if self.opts.probes {
                    self.add_probes();
                }
                let q = self.next_query();
                self.pending = q.clone();
                self.phase = Phase::Await;
                Ok(Some(ReconcileRequest::ParityQuery(q)))
            }
            Phase::Await | Phase::Finished | Phase::Failed => Ok(None),
        }
    }
}

/// Node id of the single bit at permuted position `j` of block `b`.
fn leaf_id(l: &Layout, b: u32, j: u32) -> u32 {
    let (mut s, mut e) = l.block_range(b);
    let mut id = l.root(b);
    while e - s > 1 {
        let m = split(s, e);
        id = l.left_child(id);
        if j < m {
            e = m;
        } else {
            id += 1;
            s = m;
        }
    }
    id
}

impl Reconciler for CascadeCorrector {
    fn poll_request(&mut self) -> Result<Option<ReconcileRequest>, ReconcileError> {
        let r = self.poll();
        if r.is_err() {
            self.phase = Phase::Failed;
        }
        r
    }

    fn handle_reply(&mut self, reply: &ReconcileReply) -> Result<(), ReconcileError> {
        if self.phase != Phase::Await {
            return Err(ReconcileError::Unexpected { got: reply.kind(), state: self.phase.name() });
        }
        let ReconcileReply::ParityAnswer(ans) = reply;
        if ans.round != self.pending.round {
            return Err(ReconcileError::invalid(
                "parity_answer.round",
                format!("round {}, expected {}", ans.round, self.pending.round),
            ));
        }
        let bits = self.pending.bits();
        ans.check_len(bits)?;
        self.apply_answer(&ans.parities);
        self.leaked += bits;
        self.rounds += 1;
        self.phase = Phase::Ready;
        Ok(())
    }

    fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    fn round_trips(&self) -> u32 {
        self.rounds
    }

    fn finish_boxed(self: Box<Self>) -> Result<Reconciled, ReconcileError> {
        (*self).finish()
    }
}
