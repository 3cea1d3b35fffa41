//! The control role: Modbus/TCP clients in, sealed requests out on the link.
//!
//! One hub task owns the [`ControlEnd`], the link's writer and the table of requests in
//! flight (keyed by the request's sequence number). Client connections and the link
//! manager only move bytes and send the hub events, so the library is never shared.

use super::link::{AduReader, FrameReader, accept_until, now_ms, sleep_until, spawn_writer};
use super::{Proxy, ProxyConfig, ProxyError, deliver};
use crate::mbap::{Adu, GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_FAILED, classify};
use crate::{AuthError, Class, ControlEnd, Status};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Exception 0x06: server device busy (too many requests in flight).
const BUSY: u8 = 0x06;

enum Event {
    Request { client: SocketAddr, reply: mpsc::Sender<Vec<u8>>, adu: Adu },
    LinkUp { generation: u64, tx: mpsc::Sender<Vec<u8>> },
    LinkFrame { generation: u64, frame: Vec<u8> },
    LinkDown { generation: u64 },
}

struct Pending {
    client: SocketAddr,
    reply: mpsc::Sender<Vec<u8>>,
    /// The client's request as received (its transaction id is restored on the answer).
    request: Adu,
    class: Class,
    deadline: Instant,
}

/// A command held below the low-water mark (policy `hold`), retried until `deadline`.
struct Held {
    client: SocketAddr,
    reply: mpsc::Sender<Vec<u8>>,
    request: Adu,
    deadline: Instant,
}

/// How often held commands are retried.
const HOLD_RETRY: Duration = Duration::from_millis(100);

struct Hub {
    end: ControlEnd,
    config: Arc<ProxyConfig>,
    link: Option<(u64, mpsc::Sender<Vec<u8>>)>,
    pending: HashMap<u64, Pending>,
    held: VecDeque<Held>,
    link_up: watch::Sender<bool>,
    status: watch::Sender<Status>,
}

pub(super) async fn serve(p: Proxy, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
    let config = p.config;
    let end = ControlEnd::try_new(config.auth.clone(), p.pads)
        .map_err(|e| super::ConfigError(format!("invalid `auth`: {e}")))?;
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(1024);
    let mut tasks = JoinSet::new();
    let mut hub = Hub {
        end,
        config: Arc::clone(&config),
        link: None,
        pending: HashMap::new(),
        held: VecDeque::new(),
        link_up: p.link_up,
        status: p.status,
    };
    hub.publish();
    // The hub owns the library end; if it ever stops, the proxy stops (loudly).
    let mut core = JoinSet::new();
    core.spawn(async move {
        loop {
            let retry = (!hub.held.is_empty()).then(|| Instant::now() + HOLD_RETRY);
            let next = hub.pending.values().map(|p| p.deadline).chain(retry).min();
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(ev) => hub.handle(ev),
                    None => break,
                },
                () = sleep_until(next), if next.is_some() => hub.tick(Instant::now()),
            }
            hub.publish();
        }
    });
    tasks.spawn(link_manager(Arc::clone(&config), ev_tx.clone()));
    accept_until(
        &p.listener,
        config.max_connections,
        "client",
        &mut core,
        &mut tasks,
        shutdown,
        |sock, addr| client_connection(sock, addr, ev_tx.clone()),
    )
    .await
}

/// One Modbus/TCP client: ADUs in (to the hub), answers out (from the hub).
async fn client_connection(sock: TcpStream, addr: SocketAddr, ev: mpsc::Sender<Event>) {
    let _ = sock.set_nodelay(true);
    let (r, w) = sock.into_split();
    let (reply, writer) = spawn_writer(w, 64);
    let mut reader = AduReader::new(r);
    debug!(client = %addr, "client connected");
    loop {
        match reader.next().await {
            Ok(Some(adu)) => {
                if ev.send(Event::Request { client: addr, reply: reply.clone(), adu }).await.is_err() {
                    writer.abort();
                    return;
                }
            }
            Ok(None) => {
                debug!(client = %addr, "client closed the connection");
                // Answers still in flight are written; the writer ends when they are.
                return;
            }
            Err(e) => {
                warn!(client = %addr, "closing client connection: {e}");
                writer.abort();
                return;
            }
        }
    }
}

/// Keeps the link to the field proxy up: connect, read frames until it drops, wait,
/// connect again. Each connection gets a new generation number.
async fn link_manager(config: Arc<ProxyConfig>, ev: mpsc::Sender<Event>) {
    let Some(peer) = config.peer else { return };
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut generation = 0u64;
    let mut failing = false;
    loop {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(peer)).await {
            Ok(Ok(sock)) => {
                failing = false;
                generation += 1;
                let _ = sock.set_nodelay(true);
                let (r, w) = sock.into_split();
                let (tx, writer) = spawn_writer(w, config.auth.max_outstanding + 16);
                info!(%peer, "link to the field proxy up");
                if ev.send(Event::LinkUp { generation, tx }).await.is_err() {
                    writer.abort();
                    return;
                }
                let mut reader = FrameReader::new(r);
                let reason = loop {
                    match reader.next().await {
                        Ok(Some(frame)) => {
                            if ev.send(Event::LinkFrame { generation, frame }).await.is_err() {
                                writer.abort();
                                return;
                            }
                        }
                        Ok(None) => break "closed by the field proxy".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                writer.abort();
                warn!(%peer, "link to the field proxy down: {reason}");
                if ev.send(Event::LinkDown { generation }).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    warn!(%peer, "cannot reach the field proxy: {e}; retrying every {} ms", config.reconnect_ms);
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    warn!(%peer, "connecting to the field proxy timed out; retrying every {} ms", config.reconnect_ms);
                }
                failing = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(config.reconnect_ms)).await;
    }
}

impl Hub {
    fn publish(&self) {
        self.status.send_replace(self.end.status());
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Request { client, reply, adu } => self.request(client, reply, adu),
            Event::LinkUp { generation, tx } => {
                self.link = Some((generation, tx));
                self.link_up.send_replace(true);
                // The field proxy may have restarted: do not wait for timeouts to leave a
                // batch it will refuse.
                self.end.link_restarted();
            }
            Event::LinkFrame { generation, frame } => {
                if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
                    self.response(&frame);
                }
            }
            Event::LinkDown { generation } => {
                if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
                    self.link = None;
                    self.link_up.send_replace(false);
                    // Requests in flight may have reached the device: 0x0B. Their
                    // responses can no longer come (a new link is a new connection).
                    let lost: Vec<(u64, Pending)> = self.pending.drain().collect();
                    for (seq, p) in lost {
                        debug!(seq, client = %p.client, "link lost with the request in flight");
                        self.end.request_timed_out(seq);
                        answer(&p.reply, p.request.exception(GATEWAY_TARGET_FAILED));
                    }
                    for h in self.held.drain(..) {
                        answer(&h.reply, h.request.exception(GATEWAY_PATH_UNAVAILABLE));
                    }
                }
            }
        }
    }

    fn request(&mut self, client: SocketAddr, reply: mpsc::Sender<Vec<u8>>, adu: Adu) {
        let (tid, unit, fc) = (adu.transaction_id(), adu.unit_id(), adu.function_code());
        if !self.config.unit_allowed(unit) {
            info!(%client, tid, unit, fc, "unit not allowed: exception 0x0A");
            return answer(&reply, adu.exception(GATEWAY_PATH_UNAVAILABLE));
        }
        if self.link.is_none() {
            info!(%client, tid, unit, fc, "link to the field proxy is down: exception 0x0A");
            return answer(&reply, adu.exception(GATEWAY_PATH_UNAVAILABLE));
        }
        if self.pending.len() + self.held.len() >= self.config.auth.max_outstanding {
            warn!(%client, tid, unit, fc, "{} requests in flight: exception 0x06", self.pending.len());
            return answer(&reply, adu.exception(BUSY));
        }
        if !self.held.is_empty() && classify(fc) == Class::Command {
            // Commands keep their order: behind the held ones.
            let deadline = Instant::now() + Duration::from_millis(self.config.auth.response_timeout_ms);
            self.held.push_back(Held { client, reply, request: adu, deadline });
            return;
        }
        if let Some(h) = self.seal_and_send(client, reply, adu) {
            let deadline = Instant::now() + Duration::from_millis(self.config.auth.response_timeout_ms);
            info!(client = %h.0, tid, "command held below the low-water mark");
            self.held.push_back(Held { client: h.0, reply: h.1, request: h.2, deadline });
        }
    }

    /// Seals a request and sends it on the link; answers the client itself on failure.
    /// Gives the request back if the policy says to hold it.
    fn seal_and_send(
        &mut self,
        client: SocketAddr,
        reply: mpsc::Sender<Vec<u8>>,
        adu: Adu,
    ) -> Option<(SocketAddr, mpsc::Sender<Vec<u8>>, Adu)> {
        let (tid, unit, fc) = (adu.transaction_id(), adu.unit_id(), adu.function_code());
        let Some((_, link)) = &self.link else {
            answer(&reply, adu.exception(GATEWAY_PATH_UNAVAILABLE));
            return None;
        };
        let class = classify(fc);
        let sealed = match self.end.seal_request(class, adu.as_bytes(), now_ms()) {
            Ok(s) => s,
            Err(AuthError::Held { .. }) => return Some((client, reply, adu)),
            Err(e) => {
                warn!(%client, tid, unit, fc, %class, "request not sealed, exception 0x0A: {e}");
                answer(&reply, adu.exception(GATEWAY_PATH_UNAVAILABLE));
                return None;
            }
        };
        let seq = sealed.seq;
        if !deliver(link, sealed.bytes, "link") {
            // The pads are spent; that is the price of never reusing one.
            warn!(%client, tid, seq, "link cannot take the request: exception 0x0A");
            self.end.request_timed_out(seq);
            answer(&reply, adu.exception(GATEWAY_PATH_UNAVAILABLE));
            return None;
        }
        debug!(%client, tid, unit, fc, seq, %class, "request sealed and sent");
        let deadline = Instant::now() + Duration::from_millis(self.config.auth.response_timeout_ms);
        self.pending.insert(seq, Pending { client, reply, request: adu, class, deadline });
        None
    }

    fn response(&mut self, frame: &[u8]) {
        let opened = match self.end.open_response(frame, now_ms()) {
            Ok(o) => o,
            Err(e) => {
                warn!(len = frame.len(), code = e.code(), "refused link frame: {e}");
                // A refused response (bad tag) forgets its request in the library; the
                // client learns at its deadline (the frame's claims are not to be trusted).
                return;
            }
        };
        let Some(request_seq) = opened.request_seq else {
            warn!(seq = opened.seq, "refused link frame: not bound to a request");
            return;
        };
        let Some(p) = self.pending.remove(&request_seq) else {
            warn!(
                seq = opened.seq,
                request_seq, "authenticated response to no request in flight (late?): dropped"
            );
            return;
        };
        if opened.class != p.class {
            warn!(
                request_seq,
                "response class {} differs from the request's {}: exception 0x0B", opened.class, p.class
            );
            return answer(&p.reply, p.request.exception(GATEWAY_TARGET_FAILED));
        }
        let mut adu = match Adu::parse(&opened.payload) {
            Ok(a) if a.answers(&p.request) => a,
            Ok(a) => {
                warn!(request_seq, "response {a:?} does not answer {:?}: exception 0x0B", p.request);
                return answer(&p.reply, p.request.exception(GATEWAY_TARGET_FAILED));
            }
            Err(e) => {
                warn!(request_seq, "authenticated response is not an ADU ({e}): exception 0x0B");
                return answer(&p.reply, p.request.exception(GATEWAY_TARGET_FAILED));
            }
        };
        adu.set_transaction_id(p.request.transaction_id());
        debug!(client = %p.client, request_seq, tid = adu.transaction_id(), "response delivered");
        answer(&p.reply, adu);
    }

    /// Timer: answers requests past their deadline, retries held commands.
    fn tick(&mut self, now: Instant) {
        let late: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
        for seq in late {
            if let Some(p) = self.pending.remove(&seq) {
                warn!(seq, client = %p.client, tid = p.request.transaction_id(), "no authenticated response in time: exception 0x0B");
                // The library retires the batch: the field end may have retired it.
                self.end.request_timed_out(seq);
                answer(&p.reply, p.request.exception(GATEWAY_TARGET_FAILED));
            }
        }
        // Retry held commands only once the pads left are back above the mark (one store
        // read per tick while something is held), so a long hold does not count a refusal
        // per retry.
        let refilled = !self.held.is_empty() && {
            let s = self.end.status();
            s.pool_remaining_bytes + s.batch_remaining_bytes >= self.config.auth.low_water_bytes
        };
        while let Some(h) = self.held.pop_front() {
            if !refilled && h.deadline > now {
                self.held.push_front(h);
                break;
            }
            if h.deadline <= now {
                warn!(client = %h.client, tid = h.request.transaction_id(), "held command not sent in time: exception 0x0A");
                answer(&h.reply, h.request.exception(GATEWAY_PATH_UNAVAILABLE));
                continue;
            }
            if let Some((client, reply, request)) = self.seal_and_send(h.client, h.reply, h.request) {
                self.held.push_front(Held { client, reply, request, deadline: h.deadline });
                break;
            }
        }
    }
}

fn answer(reply: &mpsc::Sender<Vec<u8>>, adu: Adu) {
    deliver(reply, adu.into_bytes(), "client");
}
