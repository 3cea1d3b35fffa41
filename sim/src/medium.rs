//! A deterministic TCP/IP medium for the whole-PON emulation (DESIGN.md §6–§7): the
//! classical channel between the OLT and its ONUs runs over real TCP (smoltcp 0.14) on a
//! simulated PON, driven by the emulation's discrete-event clock.
//!
//! - **Stacks.** smoltcp [`Interface`]s with `Medium::Ip` (no ARP). Each ONU is an
//!   interface with one TCP socket that connects to the OLT. The OLT holds one listening
//!   socket per ONU, by default on an interface per ONU link
//!   ([`OltInterfaces::PerOnu`]: an OLT terminates each ONU on a logical link of its own),
//!   or all on one interface ([`OltInterfaces::Shared`]), whose sockets smoltcp then walks
//!   in full on every poll (at 128 ONUs the whole emulation took ~65 % more CPU time).
//!   ONU `k` is `10.128.0.0 + k + 1`, the OLT `10.0.0.1`; the OLT listens for ONU `k` on
//!   port `20000 + k` (the emulation routes a connection to its ONU by port, where the
//!   binaries use the stream hello), and the ONU connects from a fresh port on every
//!   (re)connection so stale segments of an old connection never match the new one.
//! - **The PON.** A packet leaves its interface, is serialised at `line_rate_bps` on its
//!   direction's shared line (downstream broadcast / upstream TDMA, one queue each), and
//!   arrives after its ONU's fibre delay (5 µs/km, given by the caller) — or is lost, with
//!   probability `drop_chance`, by a fault injector seeded from the medium's seed. Packets
//!   between one OLT–ONU pair arrive in order; TCP repairs the losses.
//! - **Clock.** Virtual nanoseconds ([`qpon_qkd::time::Instant`]); only the caller moves
//!   time, through [`TcpMedium::poll`]. At one instant every interface with work is polled
//!   until nothing more happens; [`TcpMedium::poll_timeout`] names the next instant with
//!   work (a delivery, a TCP timer, a reconnection). Only interfaces with delivered
//!   packets, queued data or a due timer are polled.
//! - **TCP timers.** smoltcp's clock runs [`TcpConfig::time_scale`] times faster than the
//!   virtual clock. smoltcp hard-codes the RFC 6298 floor of 1 s on its retransmission
//!   timeout (and 1 s initially, 60 s at most), meant for Internet paths, and keeps its
//!   RTT estimate in whole milliseconds; it has no SACK and resends from the last ACK
//!   after a timeout. On a PON whose round trip is ~0.2 ms, 5 % loss then stalls a
//!   connection for most of the time (a 3-connection bulk transfer took 140 s of virtual
//!   time at scale 5, 2.8 s at scale 200). The default scale of 200 gives a 5 ms floor
//!   (300 ms ceiling), what a LAN stack tuned with `rto_min` uses, and a sub-millisecond
//!   RTT estimate. Durations in [`TcpConfig`] are virtual; smoltcp's other fixed timers
//!   (TIME-WAIT, challenge-ACK rate limit) shrink by the same factor, which no
//!   connection here relies on.
//! - **Messages.** Each direction of a connection carries length-prefixed messages
//!   (`u32` big-endian length, then the bytes); a length above
//!   [`TcpConfig::max_message`] is a protocol error that resets the connection.
//! - **Connections.** A connection is *up* when both ends are established. Messages sent
//!   before the first connection is up wait in a queue; once a connection has broken
//!   (reset, timed out, protocol error, or [`TcpMedium::break_link`]) both ends are aborted,
//!   queued and partly received messages are discarded, messages sent until the new
//!   connection is up are dropped (they belong to the sessions' old link), the OLT listens
//!   again and the ONU reconnects after [`TcpConfig::reconnect_delay`]. The medium reports
//!   [`MediumEvent::Reconnected`] when the new connection is up, so the caller can reset
//!   both sessions' links at the same instant.
//!
//! Everything is a function of the seed and the caller's calls: no wall clock, no threads,
//! no hash-map iteration order.

use qpon_qkd::rng::{ChaCha20Rng, seeded};
use qpon_qkd::session::stream::StreamDecoder;
use qpon_qkd::time::{Duration, Instant};
use rand::RngExt;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// OLT → ONU.
    Down,
    /// ONU → OLT.
    Up,
}

/// Something the caller must know about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediumEvent {
    /// The first connection of this ONU is up.
    Connected(usize),
    /// This ONU's connection broke; messages are dropped until it is back.
    Disconnected(usize),
    /// A new connection of this ONU is up: reset both sessions' links now.
    Reconnected(usize),
}

/// Why a message was not queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such ONU.
    #[error("no ONU {0} on this medium")]
    NoSuchOnu(usize),
    /// The message is longer than [`TcpConfig::max_message`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection broke and is not back yet: the message was dropped.
    #[error("the connection of ONU {0} is down")]
    LinkDown(usize),
}

/// Tunables of the TCP medium. Durations are virtual time.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// IP MTU of the PON's interfaces, bytes.
    pub mtu: usize,
    /// Size of each socket's receive and transmit buffer, bytes (window scaling is used
    /// above 64 KiB). 64 KiB is ~3 ms of a 0.2 ms round trip at 10 Gb/s, far more than one
    /// session needs; larger windows only make smoltcp's go-back-N recovery resend more
    /// under loss (and cost memory: two buffers per socket, two sockets per ONU).
    pub socket_buffer: usize,
    /// Longest message accepted from a stream, bytes; a longer length prefix is a protocol
    /// error.
    pub max_message: usize,
    /// Serialisation rate of each direction's shared line, bit/s (`None`: instantaneous).
    pub line_rate_bps: Option<f64>,
    /// smoltcp's clock runs this many times faster than the virtual clock (see the module
    /// doc); 1 leaves smoltcp's timers as they are.
    pub time_scale: u32,
    /// Delayed-ACK timeout (`None`: acknowledge at once).
    pub ack_delay: Option<Duration>,
    /// Keep-alive interval of idle connections (`None`: none).
    pub keep_alive: Option<Duration>,
    /// A connection whose peer has sent nothing for this long is aborted (`None`: never).
    pub timeout: Option<Duration>,
    /// Wait before an ONU reconnects after its connection broke or was refused.
    pub reconnect_delay: Duration,
    /// How the OLT's end is built.
    pub olt_interfaces: OltInterfaces,
}

/// How the OLT's TCP/IP stack is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OltInterfaces {
    /// One interface per ONU link (each with the OLT's address and one socket), as an OLT
    /// terminates each ONU on a logical link of its own (GEM port / LLID). Polling the
    /// OLT then costs in proportion to the links with traffic.
    #[default]
    PerOnu,
    /// One interface holding every ONU's socket, as one host stack would: every poll of
    /// the OLT walks all its sockets (smoltcp's egress and `poll_at`), so its cost grows
    /// with the number of ONUs.
    Shared,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            socket_buffer: 64 * 1024,
            max_message: 1 << 20,
            line_rate_bps: Some(10e9),
            time_scale: 200,
            ack_delay: Some(Duration::from_millis(1)),
            keep_alive: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_secs(20)),
            reconnect_delay: Duration::from_millis(1),
            olt_interfaces: OltInterfaces::PerOnu,
        }
    }
}

/// What happened on the medium so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// IP packets put on the medium (both directions, including lost ones).
    pub packets: u64,
    /// Packets lost by the fault injector.
    pub dropped: u64,
    /// IP bytes put on the medium.
    pub bytes: u64,
    /// TCP segments whose payload starts before the highest sequence number already sent
    /// on their connection (retransmissions and keep-alive probes).
    pub retransmits: u64,
    /// Messages handed to the caller, per direction.
    pub messages_down: u64,
    /// See `messages_down`.
    pub messages_up: u64,
    /// Messages dropped because their connection was down.
    pub messages_dropped: u64,
    /// Connections that broke.
    pub disconnects: u64,
    /// Streams closed for a bad length prefix.
    pub protocol_errors: u64,
}

const OLT_PORT_BASE: u16 = 20000;
const ONU_PORT_BASE: u16 = 30000;
const ONU_PORTS: u32 = 30000;

fn olt_addr() -> Ipv4Address {
    Ipv4Address::new(10, 0, 0, 1)
}

fn onu_addr(k: usize) -> Ipv4Address {
    Ipv4Address::from_bits(0x0A80_0000 + k as u32 + 1)
}

/// smoltcp's clock → the first virtual ns at which smoltcp sees that time.
fn from_smol(scale: u32, t: smoltcp::time::Instant) -> u64 {
    let us = u128::try_from(t.total_micros()).unwrap_or(0);
    let ns = (us * 1000).div_ceil(u128::from(scale.max(1)));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The simulated PON port of one interface: packets received (put there by the medium)
/// and packets transmitted (taken by the medium after each poll).
#[derive(Default)]
struct Port {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Port {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = phy::Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // The simulated medium loses packets but never corrupts them.
        caps.checksum = ChecksumCapabilities::ignored();
        caps
    }
}

/// One interface with its sockets.
struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    port: Port,
    /// ONUs whose connection has a socket here.
    conns: Vec<usize>,
    /// 0 for the OLT's end, 1 for an ONU's.
    side: usize,
    /// When smoltcp next wants to be polled (virtual ns); mirrored in `TcpMedium::timers`.
    next_poll: Option<u64>,
    dirty: bool,
}

/// A queued outgoing message: its length prefix, its bytes, and how much is written.
struct OutMsg {
    hdr: [u8; 4],
    body: Vec<u8>,
    off: usize,
}

/// One end of a connection.
struct End {
    handle: SocketHandle,
    sendq: VecDeque<OutMsg>,
    /// Reassembles the length-prefixed messages (the same framing as the binaries' TCP).
    reader: StreamDecoder,
    /// Highest TCP sequence number sent (for counting retransmissions).
    snd_max: Option<u32>,
}

impl End {
    fn clear(&mut self) {
        self.sendq.clear();
        self.reader = StreamDecoder::new(self.reader.max());
        self.snd_max = None;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Handshake in progress; `first` until a connection was ever up.
    Connecting {
        first: bool,
    },
    Up,
}

/// The connection of one ONU.
struct Conn {
    /// `[OLT end, ONU end]`.
    ends: [End; 2],
    /// The stacks holding them.
    stacks: [usize; 2],
    state: LinkState,
    /// Connections attempted (picks the ONU's local port).
    attempts: u32,
    /// When the ONU (re)connects.
    retry_at: Option<u64>,
    delay: u64,
}

/// A packet in flight.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
    to: usize,
    bytes: Vec<u8>,
}

/// The TCP/IP medium between one OLT and `onus` ONUs. See the module doc.
pub struct TcpMedium {
    cfg: TcpConfig,
    /// The OLT's stack(s) and one per ONU; each connection names its two.
    stacks: Vec<Stack>,
    /// `(next_poll, stack)` of every stack with a timer.
    timers: BTreeSet<(u64, usize)>,
    conns: Vec<Conn>,
    flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    drop_chance: f64,
    fault: ChaCha20Rng,
    /// Shared lines: busy until (virtual ns), downstream and upstream.
    line_busy: [u64; 2],
    now: u64,
    inbox: VecDeque<(usize, Direction, Vec<u8>)>,
    events: VecDeque<MediumEvent>,
    counters: Counters,
    /// Stacks to poll at the current instant.
    dirty: Vec<usize>,
    /// Pending reconnections (rare): ONU indices with `retry_at` set.
    retries: Vec<usize>,
}

impl TcpMedium {
    /// A medium with `onus` ONUs whose fibre delays are `delays`, losing each packet with
    /// probability `drop_chance`, faults and TCP initial sequence numbers drawn from
    /// `seed`; default [`TcpConfig`].
    ///
    /// # Panics
    /// If `delays.len() != onus`.
    pub fn new(onus: usize, delays: Vec<Duration>, drop_chance: f64, seed: u64) -> Self {
        Self::with_config(onus, delays, drop_chance, seed, TcpConfig::default())
    }

    /// As [`TcpMedium::new`] with explicit tunables.
    ///
    /// # Panics
    /// If `delays.len() != onus`, or more than 65 000 ONUs.
    pub fn with_config(
        onus: usize,
        delays: Vec<Duration>,
        drop_chance: f64,
        seed: u64,
        cfg: TcpConfig,
    ) -> Self {
        assert_eq!(delays.len(), onus, "one fibre delay per ONU");
        assert!(onus < usize::from(u16::MAX - OLT_PORT_BASE), "too many ONUs");
        let shared = cfg.olt_interfaces == OltInterfaces::Shared;
        let mut m = Self {
            stacks: Vec::with_capacity(2 * onus + 1),
            timers: BTreeSet::new(),
            conns: Vec::with_capacity(onus),
            flight: BinaryHeap::new(),
            seq: 0,
            drop_chance: drop_chance.clamp(0.0, 1.0),
            fault: seeded(seed ^ 0x7C9_FA17),
            line_busy: [0; 2],
            now: 0,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            dirty: Vec::new(),
            retries: Vec::new(),
            cfg,
        };
        if shared {
            let olt = m.new_stack(seed, 0, 0, IpAddress::Ipv4(olt_addr()));
            m.stacks.push(olt);
        }
        for (k, delay) in delays.iter().enumerate() {
            let olt_s = if shared {
                0
            } else {
                let olt = m.new_stack(seed, m.stacks.len(), 0, IpAddress::Ipv4(olt_addr()));
                m.stacks.push(olt);
                m.stacks.len() - 1
            };
            let mut st = m.new_stack(seed, m.stacks.len(), 1, IpAddress::Ipv4(onu_addr(k)));
            let olt_sock = m.new_socket();
            let onu_sock = m.new_socket();
            let olt_h = m.stacks[olt_s].sockets.add(olt_sock);
            m.stacks[olt_s].conns.push(k);
            let onu_h = st.sockets.add(onu_sock);
            st.conns.push(k);
            m.stacks.push(st);
            let onu_s = m.stacks.len() - 1;
            let max = u32::try_from(m.cfg.max_message).unwrap_or(u32::MAX);
            let end = |handle| End {
                handle,
                sendq: VecDeque::new(),
                reader: StreamDecoder::new(max),
                snd_max: None,
            };
            m.conns.push(Conn {
                ends: [end(olt_h), end(onu_h)],
                stacks: [olt_s, onu_s],
                state: LinkState::Connecting { first: true },
                attempts: 0,
                retry_at: Some(0),
                delay: u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            });
            m.retries.push(k);
            m.listen(k);
        }
        m
    }

    fn new_stack(&self, seed: u64, index: usize, side: usize, addr: IpAddress) -> Stack {
        let mut port = Port { mtu: self.cfg.mtu, ..Port::default() };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64);
        let mut iface = Interface::new(config, &mut port, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(addr, 8));
        });
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            port,
            conns: Vec::new(),
            side,
            next_poll: None,
            dirty: false,
        }
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let b = self.cfg.socket_buffer;
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; b]), tcp::SocketBuffer::new(vec![0; b]));
        s.set_nagle_enabled(false);
        s.set_ack_delay(self.cfg.ack_delay.map(|d| self.scaled(d)));
        s.set_keep_alive(self.cfg.keep_alive.map(|d| self.scaled(d)));
        s.set_timeout(self.cfg.timeout.map(|d| self.scaled(d)));
        s
    }

    /// A virtual duration on smoltcp's clock.
    fn scaled(&self, d: Duration) -> smoltcp::time::Duration {
        let us = d.as_nanos().saturating_mul(u128::from(self.cfg.time_scale)) / 1000;
        smoltcp::time::Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// Virtual ns → smoltcp's clock.
    fn to_smol(&self, ns: u64) -> smoltcp::time::Instant {
        let us = u128::from(ns) * u128::from(self.cfg.time_scale) / 1000;
        smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    fn mark_dirty(&mut self, s: usize) {
        if !self.stacks[s].dirty {
            self.stacks[s].dirty = true;
            self.dirty.push(s);
        }
    }

    /// Puts the OLT's socket of ONU `k` in the listening state.
    fn listen(&mut self, k: usize) {
        let (h, st) = (self.conns[k].ends[0].handle, self.conns[k].stacks[0]);
        let s = self.stacks[st].sockets.get_mut::<tcp::Socket>(h);
        if s.state() != tcp::State::Listen {
            s.abort();
            let _ = s.listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(olt_addr())),
                port: OLT_PORT_BASE + k as u16,
            });
        }
    }

    /// The ONU's socket of ONU `k` connects from a fresh port.
    fn connect(&mut self, k: usize) {
        let c = &mut self.conns[k];
        let port = ONU_PORT_BASE + (c.attempts % ONU_PORTS) as u16;
        c.attempts += 1;
        let (h, si) = (c.ends[1].handle, c.stacks[1]);
        let st = &mut self.stacks[si];
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        s.abort();
        let remote = IpEndpoint::new(IpAddress::Ipv4(olt_addr()), OLT_PORT_BASE + k as u16);
        let _ = s.connect(st.iface.context(), remote, port);
        self.conns[k].ends[1].snd_max = None;
        self.mark_dirty(si);
    }

    /// Number of ONUs.
    pub fn onus(&self) -> usize {
        self.conns.len()
    }

    /// The tunables.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether ONU `onu`'s connection is up.
    pub fn is_up(&self, onu: usize) -> bool {
        self.conns.get(onu).is_some_and(|c| c.state == LinkState::Up)
    }

    /// Queues `msg` from the OLT to ONU `onu`.
    pub fn send_down(&mut self, onu: usize, msg: Vec<u8>) -> Result<(), SendError> {
        self.send(onu, 0, msg)
    }

    /// Queues `msg` from ONU `onu` to the OLT.
    pub fn send_up(&mut self, onu: usize, msg: Vec<u8>) -> Result<(), SendError> {
        self.send(onu, 1, msg)
    }

    fn send(&mut self, onu: usize, side: usize, msg: Vec<u8>) -> Result<(), SendError> {
        let max = self.cfg.max_message;
        let c = self.conns.get_mut(onu).ok_or(SendError::NoSuchOnu(onu))?;
        if msg.len() > max {
            return Err(SendError::TooLong { len: msg.len(), max });
        }
        if c.state == (LinkState::Connecting { first: false }) {
            self.counters.messages_dropped += 1;
            return Err(SendError::LinkDown(onu));
        }
        let hdr = (msg.len() as u32).to_be_bytes();
        c.ends[side].sendq.push_back(OutMsg { hdr, body: msg, off: 0 });
        let s = c.stacks[side];
        self.mark_dirty(s);
        Ok(())
    }

    /// Breaks ONU `onu`'s connection as a reset would (fault injection); it comes back by
    /// itself.
    pub fn break_link(&mut self, onu: usize) {
        if onu < self.conns.len() {
            self.disconnect(onu);
        }
    }

    /// The next completed message: `(onu, direction, bytes)`, in arrival order.
    pub fn recv(&mut self) -> Option<(usize, Direction, Vec<u8>)> {
        self.inbox.pop_front()
    }

    /// The next connection event.
    pub fn poll_event(&mut self) -> Option<MediumEvent> {
        self.events.pop_front()
    }

    /// When [`poll`](Self::poll) must next be called (the current time when queued data
    /// waits for a poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.dirty.is_empty() {
            return Some(Instant::from_nanos(self.now));
        }
        let flight = self.flight.peek().map(|Reverse(p)| p.at);
        let timers = self.timers.first().map(|&(t, _)| t);
        let retry = self.retries.iter().filter_map(|&k| self.conns[k].retry_at).min();
        [flight, timers, retry].into_iter().flatten().min().map(|t| Instant::from_nanos(t.max(self.now)))
    }

    /// Advances the medium to `now` (never backwards) and runs every interface with work
    /// until nothing more happens at `now`: packets due are delivered, TCP timers fire,
    /// queued messages are written as the windows allow, received messages go to
    /// [`recv`](Self::recv) and connection changes to [`poll_event`](Self::poll_event).
    pub fn poll(&mut self, now: Instant) {
        let now = now.as_nanos().max(self.now);
        self.now = now;
        loop {
            while self.flight.peek().is_some_and(|Reverse(p)| p.at <= now) {
                let Some(Reverse(p)) = self.flight.pop() else { break };
                self.stacks[p.to].port.rx.push_back(p.bytes);
                self.mark_dirty(p.to);
            }
            if !self.retries.is_empty() {
                let due: Vec<usize> = self
                    .retries
                    .iter()
                    .copied()
                    .filter(|&k| self.conns[k].retry_at.is_some_and(|t| t <= now))
                    .collect();
                if !due.is_empty() {
                    self.retries.retain(|k| !due.contains(k));
                    for k in due {
                        self.conns[k].retry_at = None;
                        self.connect(k);
                    }
                }
            }
            while let Some(&(t, s)) = self.timers.first()
                && t <= now
            {
                self.timers.pop_first();
                self.stacks[s].next_poll = None;
                self.mark_dirty(s);
            }
            if self.dirty.is_empty() {
                break;
            }
            let mut batch = std::mem::take(&mut self.dirty);
            batch.sort_unstable();
            for &s in &batch {
                self.stacks[s].dirty = false;
            }
            for &s in &batch {
                self.service(s, now);
            }
        }
    }

    /// Polls stack `s` at `now` until it has nothing more to do, then moves its packets onto
    /// the medium and checks its connections.
    fn service(&mut self, s: usize, now: u64) {
        let ts = self.to_smol(now);
        let mut broken: Vec<usize> = Vec::new();
        self.pump(s, &mut broken);
        // smoltcp's poll drains the port and sends all it can; only bytes written into or
        // read from the sockets (which opens windows) give it more to do.
        loop {
            let st = &mut self.stacks[s];
            st.iface.poll(ts, &mut st.port, &mut st.sockets);
            if !self.pump(s, &mut broken) {
                break;
            }
        }
        let scale = self.cfg.time_scale;
        let st = &mut self.stacks[s];
        let next = st.iface.poll_at(ts, &st.sockets).map(|t| from_smol(scale, t).max(now + 1));
        if next != st.next_poll {
            if let Some(old) = st.next_poll {
                self.timers.remove(&(old, s));
            }
            if let Some(t) = next {
                self.timers.insert((t, s));
            }
            st.next_poll = next;
        }
        let packets = std::mem::take(&mut self.stacks[s].port.tx);
        for p in packets {
            self.transmit(s, now, p);
        }
        for k in broken {
            self.counters.protocol_errors += 1;
            self.disconnect(k);
        }
        self.check_states(s, now);
    }

    /// Writes queued messages into the sockets of stack `s` and reads what they received.
    /// Returns whether any byte moved.
    fn pump(&mut self, s: usize, broken: &mut Vec<usize>) -> bool {
        let side = self.stacks[s].side;
        let dir = if side == 0 { Direction::Up } else { Direction::Down };
        let Self { stacks, conns, inbox, counters, .. } = self;
        let st = &mut stacks[s];
        let mut progress = false;
        for &k in &st.conns {
            let c = &mut conns[k];
            let end = &mut c.ends[side];
            let sock = st.sockets.get_mut::<tcp::Socket>(end.handle);
            if c.state == LinkState::Up {
                while let Some(m) = end.sendq.front_mut() {
                    if !sock.can_send() {
                        break;
                    }
                    let n = if m.off < 4 {
                        sock.send_slice(&m.hdr[m.off..]).unwrap_or(0)
                    } else {
                        sock.send_slice(&m.body[m.off - 4..]).unwrap_or(0)
                    };
                    if n == 0 {
                        break;
                    }
                    progress = true;
                    m.off += n;
                    if m.off == 4 + m.body.len() {
                        end.sendq.pop_front();
                    }
                }
            }
            while sock.can_recv() {
                let r = sock.recv(|buf| {
                    end.reader.push(buf);
                    let r = loop {
                        match end.reader.next_frame() {
                            Ok(Some(m)) => {
                                match dir {
                                    Direction::Down => counters.messages_down += 1,
                                    Direction::Up => counters.messages_up += 1,
                                }
                                inbox.push_back((k, dir, m));
                            }
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    };
                    (buf.len(), r)
                });
                progress = true;
                if !matches!(r, Ok(Ok(()))) {
                    broken.push(k);
                    break;
                }
            }
        }
        progress
    }

    /// Puts one packet sent by stack `s` on the medium.
    fn transmit(&mut self, s: usize, now: u64, p: Vec<u8>) {
        // IPv4 (no options from smoltcp, but read the IHL anyway) + TCP.
        let ihl = usize::from(p.first().map_or(5, |b| b & 0x0f)) * 4;
        let side = self.stacks[s].side;
        let k = match self.stacks[s].conns.as_slice() {
            [k] => *k,
            _ => {
                // The shared OLT interface: the destination names the ONU.
                let dst = p.get(16..20).map_or(0, |d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                dst.wrapping_sub(0x0A80_0001) as usize
            }
        };
        self.counters.packets += 1;
        self.counters.bytes += p.len() as u64;
        if k >= self.conns.len() {
            self.counters.dropped += 1;
            return;
        }
        if let Some(tcp) = p.get(ihl..).filter(|t| t.len() >= 20) {
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let doff = usize::from(tcp[12] >> 4) * 4;
            let flags = tcp[13];
            let len = tcp.len().saturating_sub(doff) as u32 + u32::from(flags & 0x03 != 0);
            let end = &mut self.conns[k].ends[side];
            if flags & 0x02 != 0 {
                end.snd_max = Some(seq.wrapping_add(len));
            } else if len > 0 {
                let last = seq.wrapping_add(len);
                match end.snd_max {
                    Some(m) => {
                        if (m.wrapping_sub(seq) as i32) > 0 {
                            self.counters.retransmits += 1;
                        }
                        if (last.wrapping_sub(m) as i32) > 0 {
                            end.snd_max = Some(last);
                        }
                    }
                    None => end.snd_max = Some(last),
                }
            }
        }
        if self.drop_chance > 0.0 && self.fault.random_bool(self.drop_chance) {
            self.counters.dropped += 1;
            return;
        }
        let line = &mut self.line_busy[side];
        let start = (*line).max(now);
        let ser = self.cfg.line_rate_bps.map_or(0, |r| ((p.len() as f64 * 8.0 / r) * 1e9).ceil() as u64);
        *line = start + ser;
        let at = start + ser + self.conns[k].delay;
        self.seq += 1;
        let to = self.conns[k].stacks[1 - side];
        self.flight.push(Reverse(InFlight { at, seq: self.seq, to, bytes: p }));
    }

    /// Updates the link states of the connections with a socket on stack `s`.
    fn check_states(&mut self, s: usize, now: u64) {
        let n = self.stacks[s].conns.len();
        for i in 0..n {
            let k = self.stacks[s].conns[i];
            let c = &self.conns[k];
            let olt = self.stacks[c.stacks[0]].sockets.get::<tcp::Socket>(c.ends[0].handle).state();
            let onu = self.stacks[c.stacks[1]].sockets.get::<tcp::Socket>(c.ends[1].handle).state();
            let [olt_s, onu_s] = c.stacks;
            match self.conns[k].state {
                LinkState::Up => {
                    if olt != tcp::State::Established || onu != tcp::State::Established {
                        self.disconnect(k);
                    }
                }
                LinkState::Connecting { first } => {
                    if olt == tcp::State::Established && onu == tcp::State::Established {
                        self.conns[k].state = LinkState::Up;
                        self.events.push_back(if first {
                            MediumEvent::Connected(k)
                        } else {
                            MediumEvent::Reconnected(k)
                        });
                        // Queued messages (first connection) can go now.
                        if !self.conns[k].ends[0].sendq.is_empty() {
                            self.mark_dirty(olt_s);
                        }
                        if !self.conns[k].ends[1].sendq.is_empty() {
                            self.mark_dirty(onu_s);
                        }
                    } else {
                        if matches!(olt, tcp::State::Closed | tcp::State::TimeWait) {
                            self.listen(k);
                            self.mark_dirty(olt_s);
                        }
                        if onu == tcp::State::Closed && self.conns[k].retry_at.is_none() {
                            self.conns[k].retry_at = Some(now + self.reconnect_delay_ns());
                            self.retries.push(k);
                        }
                    }
                }
            }
        }
    }

    fn reconnect_delay_ns(&self) -> u64 {
        u64::try_from(self.cfg.reconnect_delay.as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// Breaks ONU `k`'s connection: both ends aborted, queues discarded, the OLT listens
    /// again, the ONU reconnects after the delay.
    fn disconnect(&mut self, k: usize) {
        let was_up = self.conns[k].state == LinkState::Up;
        if !was_up && self.conns[k].retry_at.is_some() {
            return;
        }
        if was_up {
            self.counters.disconnects += 1;
            self.events.push_back(MediumEvent::Disconnected(k));
        }
        let c = &mut self.conns[k];
        for e in &mut c.ends {
            self.counters.messages_dropped += e.sendq.len() as u64;
            e.clear();
        }
        if was_up {
            c.state = LinkState::Connecting { first: false };
        }
        let (h, [olt_s, onu_s]) = (c.ends[1].handle, c.stacks);
        self.stacks[onu_s].sockets.get_mut::<tcp::Socket>(h).abort();
        self.listen(k);
        self.conns[k].retry_at = Some(self.now + self.reconnect_delay_ns());
        self.retries.push(k);
        self.mark_dirty(olt_s);
        self.mark_dirty(onu_s);
    }
}

/// Which medium carries the emulation's classical channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Medium {
    /// Length-prefixed messages over smoltcp TCP/IP (the default; DESIGN.md §6)
    #[default]
    Tcp,
    /// One datagram per message, after the fibre delay or lost; only the sessions
    /// retransmit (5 ms timeout)
    Datagram,
}

type Datagram = (u64, u64, usize, bool, Vec<u8>);

/// The datagram medium: each message is delivered after its ONU's fibre delay, or lost
/// with probability `drop_chance` (seeded); no serialisation, no connection, no
/// retransmission. Same API as [`TcpMedium`]; its packets are the messages.
pub struct DatagramMedium {
    delays: Vec<u64>,
    drop_chance: f64,
    fault: ChaCha20Rng,
    /// `(arrival, sequence, onu, upstream, message)`.
    flight: BinaryHeap<Reverse<Datagram>>,
    seq: u64,
    now: u64,
    inbox: VecDeque<(usize, Direction, Vec<u8>)>,
    counters: Counters,
}

impl DatagramMedium {
    /// A medium with one fibre delay per ONU.
    pub fn new(delays: Vec<Duration>, drop_chance: f64, seed: u64) -> Self {
        Self {
            delays: delays.iter().map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).collect(),
            drop_chance: drop_chance.clamp(0.0, 1.0),
            fault: seeded(seed ^ 0xFA17),
            flight: BinaryHeap::new(),
            seq: 0,
            now: 0,
            inbox: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Sends `msg` now (the time of the last poll) towards ONU `onu` (`up == false`) or
    /// from it.
    fn send(&mut self, onu: usize, up: bool, msg: Vec<u8>) -> Result<(), SendError> {
        let delay = *self.delays.get(onu).ok_or(SendError::NoSuchOnu(onu))?;
        self.counters.packets += 1;
        self.counters.bytes += msg.len() as u64;
        if self.drop_chance > 0.0 && self.fault.random_bool(self.drop_chance) {
            self.counters.dropped += 1;
            return Ok(());
        }
        self.seq += 1;
        self.flight.push(Reverse((self.now + delay, self.seq, onu, up, msg)));
        Ok(())
    }

    /// Delivers what is due at `now`.
    fn poll(&mut self, now: Instant) {
        self.now = self.now.max(now.as_nanos());
        while self.flight.peek().is_some_and(|Reverse(f)| f.0 <= self.now) {
            let Some(Reverse((_, _, onu, up, msg))) = self.flight.pop() else { break };
            let dir = if up {
                self.counters.messages_up += 1;
                Direction::Up
            } else {
                self.counters.messages_down += 1;
                Direction::Down
            };
            self.inbox.push_back((onu, dir, msg));
        }
    }
}

/// Either medium, behind one API (the emulation's classical channel).
pub enum Channel {
    /// See [`TcpMedium`].
    Tcp(Box<TcpMedium>),
    /// See [`DatagramMedium`].
    Datagram(Box<DatagramMedium>),
}

impl Channel {
    /// A channel of the given kind to `delays.len()` ONUs.
    pub fn new(kind: Medium, delays: Vec<Duration>, drop_chance: f64, seed: u64) -> Self {
        match kind {
            Medium::Tcp => Self::Tcp(Box::new(TcpMedium::new(delays.len(), delays, drop_chance, seed))),
            Medium::Datagram => Self::Datagram(Box::new(DatagramMedium::new(delays, drop_chance, seed))),
        }
    }

    /// See [`TcpMedium::send_down`].
    pub fn send_down(&mut self, onu: usize, msg: Vec<u8>) -> Result<(), SendError> {
        match self {
            Self::Tcp(m) => m.send_down(onu, msg),
            Self::Datagram(m) => m.send(onu, false, msg),
        }
    }

    /// See [`TcpMedium::send_up`].
    pub fn send_up(&mut self, onu: usize, msg: Vec<u8>) -> Result<(), SendError> {
        match self {
            Self::Tcp(m) => m.send_up(onu, msg),
            Self::Datagram(m) => m.send(onu, true, msg),
        }
    }

    /// See [`TcpMedium::poll`].
    pub fn poll(&mut self, now: Instant) {
        match self {
            Self::Tcp(m) => m.poll(now),
            Self::Datagram(m) => m.poll(now),
        }
    }

    /// See [`TcpMedium::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::Tcp(m) => m.poll_timeout(),
            Self::Datagram(m) => m.flight.peek().map(|Reverse(f)| Instant::from_nanos(f.0)),
        }
    }

    /// See [`TcpMedium::recv`].
    pub fn recv(&mut self) -> Option<(usize, Direction, Vec<u8>)> {
        match self {
            Self::Tcp(m) => m.recv(),
            Self::Datagram(m) => m.inbox.pop_front(),
        }
    }

    /// See [`TcpMedium::poll_event`] (the datagram medium has none).
    pub fn poll_event(&mut self) -> Option<MediumEvent> {
        match self {
            Self::Tcp(m) => m.poll_event(),
            Self::Datagram(_) => None,
        }
    }

    /// See [`TcpMedium::counters`].
    pub fn counters(&self) -> Counters {
        match self {
            Self::Tcp(m) => m.counters(),
            Self::Datagram(m) => m.counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the medium alone until `until`, or until `done` says so; returns the time.
    fn run_until(
        m: &mut TcpMedium,
        until: Instant,
        mut on_msg: impl FnMut(Instant, usize, Direction, Vec<u8>) -> bool,
    ) -> Instant {
        let mut now = Instant::from_nanos(m.now);
        loop {
            m.poll(now);
            let mut stop = false;
            while let Some((k, d, b)) = m.recv() {
                stop |= on_msg(now, k, d, b);
            }
            if stop {
                return now;
            }
            match m.poll_timeout() {
                Some(t) if t < until => now = t.max(now),
                _ => return now,
            }
        }
    }

    fn message(rng: &mut ChaCha20Rng, i: u64) -> Vec<u8> {
        // Mostly small, sometimes large (up to 200 kB), first 8 bytes = index.
        let len =
            if rng.random_bool(0.05) { rng.random_range(8..200_000) } else { rng.random_range(8..3_000) };
        let mut v = vec![0u8; len];
        rand::Rng::fill_bytes(rng, &mut v);
        v[..8].copy_from_slice(&i.to_be_bytes());
        v
    }

    /// Both directions of `onus` connections carry `count` random messages each; returns
    /// the delivery times and the counters.
    fn exchange(
        onus: usize,
        count: u64,
        drop: f64,
        seed: u64,
    ) -> (Vec<(u64, usize, Direction, u64)>, Counters) {
        exchange_with(onus, count, drop, seed, TcpConfig::default())
    }

    fn exchange_with(
        onus: usize,
        count: u64,
        drop: f64,
        seed: u64,
        cfg: TcpConfig,
    ) -> (Vec<(u64, usize, Direction, u64)>, Counters) {
        let delays: Vec<Duration> = (0..onus).map(|k| Duration::from_micros(10 + 25 * k as u64)).collect();
        let mut m = TcpMedium::with_config(onus, delays, drop, seed, cfg);
        let mut rng = seeded(seed ^ 99);
        let mut sent: Vec<[VecDeque<Vec<u8>>; 2]> =
            (0..onus).map(|_| [VecDeque::new(), VecDeque::new()]).collect();
        for i in 0..count {
            for (k, q) in sent.iter_mut().enumerate() {
                let d = message(&mut rng, i);
                q[0].push_back(d.clone());
                m.send_down(k, d).unwrap();
                let u = message(&mut rng, i);
                q[1].push_back(u.clone());
                m.send_up(k, u).unwrap();
            }
        }
        let mut log = Vec::new();
        let mut left = 2 * onus as u64 * count;
        run_until(&mut m, Instant::from_millis(600_000), |now, k, d, b| {
            let q = &mut sent[k][usize::from(d == Direction::Up)];
            let want = q.pop_front().expect("no more messages than sent");
            assert_eq!(b, want, "message intact and in order");
            log.push((now.as_nanos(), k, d, u64::from_be_bytes(b[..8].try_into().unwrap())));
            left -= 1;
            left == 0
        });
        assert_eq!(
            left,
            0,
            "all messages delivered: {:?} at {}, {:?}",
            m.counters(),
            m.now,
            m.poll_timeout()
        );
        (log, m.counters())
    }

    #[test]
    fn thousands_of_messages_arrive_in_order_and_intact() {
        let (log, c) = exchange(3, 1500, 0.0, 1);
        assert_eq!(log.len(), 9000);
        assert_eq!(c.dropped, 0);
        assert_eq!(c.retransmits, 0);
        assert_eq!(c.messages_up + c.messages_down, 9000);
    }

    #[test]
    fn one_shared_olt_interface_carries_the_same_messages() {
        let cfg = TcpConfig { olt_interfaces: OltInterfaces::Shared, ..TcpConfig::default() };
        let (log, c) = exchange_with(4, 500, 0.05, 7, cfg);
        assert_eq!(log.len(), 4000);
        assert!(c.dropped > 0);
        assert_eq!(c.disconnects, 0);
    }

    #[test]
    fn five_percent_loss_is_repaired() {
        let (log, c) = exchange(3, 1000, 0.05, 2);
        assert_eq!(log.len(), 6000);
        assert!(c.dropped > 100, "{c:?}");
        assert!(c.retransmits > 0, "{c:?}");
        assert_eq!(c.disconnects, 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_delivery_times() {
        let a = exchange(2, 300, 0.05, 5);
        let b = exchange(2, 300, 0.05, 5);
        assert_eq!(a, b);
        let c = exchange(2, 300, 0.05, 6);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn time_moves_only_through_the_caller() {
        let mut m = TcpMedium::new(1, vec![Duration::from_micros(100)], 0.0, 1);
        m.poll(Instant::ZERO);
        // The SYN is on the fibre; nothing arrives while the caller stays at zero.
        for _ in 0..10 {
            m.poll(Instant::ZERO);
        }
        assert!(!m.is_up(0));
        assert_eq!(m.poll_event(), None);
        let t = m.poll_timeout().unwrap();
        // The SYN: a few dozen bytes at 10 Gb/s, then 100 µs of fibre.
        assert!(t > Instant::from_micros(100) && t < Instant::from_nanos(100_100), "{t}");
        m.send_down(0, b"hello".to_vec()).unwrap();
        // The handshake takes one and a half round trips, the message one more way.
        let at = run_until(&mut m, Instant::from_millis(10), |_, k, d, b| {
            assert_eq!((k, d, b.as_slice()), (0, Direction::Down, &b"hello"[..]));
            true
        });
        assert!(at > Instant::from_micros(400) && at < Instant::from_micros(401), "{at}");
        assert_eq!(m.poll_event(), Some(MediumEvent::Connected(0)));
        assert!(m.is_up(0));
    }

    #[test]
    fn a_broken_link_comes_back_and_says_so() {
        let mut m = TcpMedium::new(2, vec![Duration::from_micros(50); 2], 0.0, 3);
        let mut now = Instant::ZERO;
        let step = |m: &mut TcpMedium, now: &mut Instant| {
            m.poll(*now);
            if let Some(t) = m.poll_timeout() {
                *now = t.max(*now);
            }
        };
        while !(m.is_up(0) && m.is_up(1)) {
            step(&mut m, &mut now);
        }
        m.send_down(1, vec![1; 10]).unwrap();
        m.break_link(1);
        assert_eq!(m.send_up(1, vec![2; 10]), Err(SendError::LinkDown(1)));
        while !m.is_up(1) {
            step(&mut m, &mut now);
        }
        let ev: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert_eq!(
            ev,
            [
                MediumEvent::Connected(0),
                MediumEvent::Connected(1),
                MediumEvent::Disconnected(1),
                MediumEvent::Reconnected(1)
            ]
        );
        assert_eq!(m.counters().messages_dropped, 2);
        // The new connection works.
        let t0 = Instant::from_nanos(m.now);
        m.send_up(1, vec![3; 70_000]).unwrap();
        let got = run_until(&mut m, now + Duration::from_millis(100), |_, k, d, b| {
            assert_eq!((k, d, b.len()), (1, Direction::Up, 70_000));
            true
        });
        assert!(got > t0);
    }

    #[test]
    fn an_oversized_length_is_a_protocol_error() {
        let cfg = TcpConfig { max_message: 1000, ..TcpConfig::default() };
        let mut m = TcpMedium::with_config(1, vec![Duration::from_micros(20)], 0.0, 4, cfg);
        assert!(matches!(m.send_down(0, vec![0; 1001]), Err(SendError::TooLong { .. })));
        // A peer announcing too long a message gets its connection reset.
        run_until(&mut m, Instant::from_millis(1), |_, _, _, _| false);
        assert!(m.is_up(0));
        let bogus = OutMsg { hdr: 5000u32.to_be_bytes(), body: Vec::new(), off: 0 };
        m.conns[0].ends[1].sendq.push_back(bogus);
        m.mark_dirty(m.conns[0].stacks[1]);
        m.send_up(0, b"after".to_vec()).unwrap();
        run_until(&mut m, Instant::from_millis(10), |_, _, _, _| panic!("nothing arrives"));
        assert_eq!(m.counters().protocol_errors, 1);
        let ev: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert_eq!(
            ev,
            [MediumEvent::Connected(0), MediumEvent::Disconnected(0), MediumEvent::Reconnected(0)]
        );
        m.send_up(0, b"again".to_vec()).unwrap();
        let mut got = Vec::new();
        run_until(&mut m, Instant::from_millis(20), |_, _, _, b| {
            got.push(b);
            true
        });
        assert_eq!(got, [b"again".to_vec()]);
    }
}
