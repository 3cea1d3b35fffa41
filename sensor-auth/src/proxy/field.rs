//! The field role: authenticated link frames in, Modbus/TCP to the device, sealed
//! responses back.
//!
//! One hub task owns the [`FieldEnd`] (so one replay window covers every link
//! connection), the device connection and the table of requests at the device (keyed by
//! the transaction id this proxy gave them on the device connection).

use super::link::{AduReader, FrameReader, accept_until, now_ms, sleep_until, spawn_writer};
use super::{Proxy, ProxyConfig, ProxyError, deliver};
use crate::mbap::{Adu, GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_FAILED, classify};
use crate::{Class, FieldEnd, Status};
use std::collections::HashMap;
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
    Frame { conn: u64, reply: mpsc::Sender<Vec<u8>>, frame: Vec<u8> },
    DeviceUp { generation: u64, tx: mpsc::Sender<Vec<u8>> },
    DeviceFailed { generation: u64, reason: String },
    DeviceResponse { generation: u64, adu: Adu },
    DeviceDown { generation: u64 },
}

/// An authenticated request on its way to the device.
struct Job {
    conn: u64,
    reply: mpsc::Sender<Vec<u8>>,
    request_seq: u64,
    class: Class,
    /// The request as the control proxy sealed it.
    request: Adu,
}

enum Device {
    Down,
    Connecting { generation: u64, queue: Vec<Job> },
    Up { generation: u64, tx: mpsc::Sender<Vec<u8>> },
}

struct Hub {
    end: FieldEnd,
    config: Arc<ProxyConfig>,
    device: Device,
    generation: u64,
    /// Requests at the device, by the transaction id used on the device connection.
    pending: HashMap<u16, (Job, Instant)>,
    next_tid: u16,
    events: mpsc::Sender<Event>,
    /// The device connection's tasks (stopped with the hub).
    tasks: JoinSet<()>,
    link_up: watch::Sender<bool>,
    status: watch::Sender<Status>,
}

pub(super) async fn serve(p: Proxy, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
    let config = p.config;
    let mut end = FieldEnd::try_new(config.auth.clone(), p.pads)
        .map_err(|e| super::ConfigError(format!("invalid `auth`: {e}")))?;
    // A write carried with a reading's shorter tag is refused by the library too.
    end.set_classifier(crate::mbap::classify_adu);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(1024);
    let mut tasks = JoinSet::new();
    let mut hub = Hub {
        end,
        config: Arc::clone(&config),
        device: Device::Down,
        generation: 0,
        pending: HashMap::new(),
        next_tid: 0,
        events: ev_tx.clone(),
        tasks: JoinSet::new(),
        link_up: p.link_up,
        status: p.status,
    };
    hub.publish();
    // The hub owns the library end; if it ever stops, the proxy stops (loudly).
    let mut core = JoinSet::new();
    core.spawn(async move {
        loop {
            let next = hub.pending.values().map(|(_, d)| *d).min();
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(ev) => hub.handle(ev),
                    None => break,
                },
                () = sleep_until(next), if next.is_some() => hub.expire(Instant::now()),
            }
            while hub.tasks.try_join_next().is_some() {}
            hub.publish();
        }
    });
    let mut next_conn = 0u64;
    let depth = config.auth.max_outstanding + 16;
    accept_until(
        &p.listener,
        config.max_connections,
        "link",
        &mut core,
        &mut tasks,
        shutdown,
        |sock, addr| {
            next_conn += 1;
            link_connection(sock, addr, next_conn, depth, ev_tx.clone())
        },
    )
    .await
}

/// One link connection: frames in (to the hub), sealed responses out.
async fn link_connection(
    sock: TcpStream,
    addr: SocketAddr,
    conn: u64,
    depth: usize,
    ev: mpsc::Sender<Event>,
) {
    let _ = sock.set_nodelay(true);
    let (r, w) = sock.into_split();
    let (reply, writer) = spawn_writer(w, depth);
    let mut reader = FrameReader::new(r);
    info!(peer = %addr, conn, "link connection accepted");
    loop {
        match reader.next().await {
            Ok(Some(frame)) => {
                if ev.send(Event::Frame { conn, reply: reply.clone(), frame }).await.is_err() {
                    break;
                }
            }
            Ok(None) => {
                info!(peer = %addr, conn, "link connection closed by the peer");
                break;
            }
            Err(e) => {
                warn!(peer = %addr, conn, "closing link connection: {e}");
                break;
            }
        }
    }
    writer.abort();
}

/// Connects to the device and relays its ADUs to the hub until the connection ends.
async fn device_connection(
    addr: SocketAddr,
    generation: u64,
    config: Arc<ProxyConfig>,
    ev: mpsc::Sender<Event>,
) {
    let connect =
        tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms), TcpStream::connect(addr));
    let sock = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = ev.send(Event::DeviceFailed { generation, reason: e.to_string() }).await;
            return;
        }
        Err(_) => {
            let _ = ev.send(Event::DeviceFailed { generation, reason: "connection timed out".into() }).await;
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    let (r, w) = sock.into_split();
    let (tx, writer) = spawn_writer(w, config.auth.max_outstanding + 16);
    if ev.send(Event::DeviceUp { generation, tx }).await.is_err() {
        writer.abort();
        return;
    }
    let mut reader = AduReader::new(r);
    loop {
        match reader.next().await {
            Ok(Some(adu)) => {
                if ev.send(Event::DeviceResponse { generation, adu }).await.is_err() {
                    break;
                }
            }
            Ok(None) => {
                info!(device = %addr, "device closed the connection");
                break;
            }
            Err(e) => {
                warn!(device = %addr, "closing the device connection: {e}");
                break;
            }
        }
    }
    writer.abort();
    let _ = ev.send(Event::DeviceDown { generation }).await;
}

impl Hub {
    fn publish(&self) {
        self.status.send_replace(self.end.status());
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Frame { conn, reply, frame } => self.frame(conn, reply, &frame),
            Event::DeviceUp { generation, tx } => {
                let queue = match core::mem::replace(&mut self.device, Device::Down) {
                    Device::Connecting { generation: g, queue } if g == generation => queue,
                    other => {
                        self.device = other;
                        return;
                    }
                };
                info!(device = ?self.config.device, "device connected");
                self.device = Device::Up { generation, tx };
                self.link_up.send_replace(true);
                for job in queue {
                    self.forward(job);
                }
            }
            Event::DeviceFailed { generation, reason } => {
                if let Device::Connecting { generation: g, .. } = &self.device
                    && *g == generation
                {
                    warn!(device = ?self.config.device, "cannot reach the device: {reason}");
                    if let Device::Connecting { queue, .. } =
                        core::mem::replace(&mut self.device, Device::Down)
                    {
                        for job in queue {
                            self.exception(job, GATEWAY_TARGET_FAILED);
                        }
                    }
                }
            }
            Event::DeviceResponse { generation, adu } => {
                if matches!(&self.device, Device::Up { generation: g, .. } if *g == generation) {
                    self.device_response(adu);
                }
            }
            Event::DeviceDown { generation } => {
                if matches!(&self.device, Device::Up { generation: g, .. } if *g == generation) {
                    self.device = Device::Down;
                    self.link_up.send_replace(false);
                    let lost: Vec<(Job, Instant)> = self.pending.drain().map(|(_, v)| v).collect();
                    for (job, _) in lost {
                        self.exception(job, GATEWAY_TARGET_FAILED);
                    }
                }
            }
        }
    }

    fn frame(&mut self, conn: u64, reply: mpsc::Sender<Vec<u8>>, frame: &[u8]) {
        let opened = match self.end.open_request(frame, now_ms()) {
            Ok(o) => o,
            Err(e) => {
                warn!(conn, len = frame.len(), code = e.code(), "refused link frame: {e}");
                return;
            }
        };
        if opened.request_seq.is_some() {
            warn!(conn, seq = opened.seq, "refused link frame: a response where a request belongs");
            return;
        }
        let request = match Adu::parse(&opened.payload) {
            Ok(a) => a,
            Err(e) => {
                warn!(conn, seq = opened.seq, "authenticated request is not a Modbus/TCP ADU: {e}; dropped");
                return;
            }
        };
        let fc = request.function_code();
        if classify(fc) == Class::Command && opened.class != Class::Command {
            warn!(
                conn,
                seq = opened.seq,
                fc,
                "refused: a command carried in a {:?}-class frame",
                opened.class
            );
            return;
        }
        let job = Job { conn, reply, request_seq: opened.seq, class: opened.class, request };
        let unit = job.request.unit_id();
        if !self.config.unit_allowed(unit) {
            info!(conn, seq = job.request_seq, unit, fc, "unit not allowed: exception 0x0A");
            return self.exception(job, GATEWAY_PATH_UNAVAILABLE);
        }
        debug!(conn, seq = job.request_seq, unit, fc, "request authenticated");
        let queued = match &self.device {
            Device::Connecting { queue, .. } => queue.len(),
            _ => 0,
        };
        if self.pending.len() + queued >= self.config.auth.max_outstanding {
            warn!(
                conn,
                seq = job.request_seq,
                "{} requests in flight: exception 0x06",
                self.pending.len() + queued
            );
            return self.exception(job, BUSY);
        }
        self.forward(job);
    }

    /// Sends an authenticated request to the device, connecting first if needed.
    fn forward(&mut self, job: Job) {
        match &mut self.device {
            Device::Up { tx, .. } => {
                let tx = tx.clone();
                let tid = self.free_tid();
                let mut adu = job.request.clone();
                adu.set_transaction_id(tid);
                if deliver(&tx, adu.into_bytes(), "device") {
                    let deadline = Instant::now() + Duration::from_millis(self.config.device_timeout_ms);
                    self.pending.insert(tid, (job, deadline));
                } else {
                    self.exception(job, GATEWAY_TARGET_FAILED);
                }
            }
            Device::Connecting { queue, .. } => queue.push(job),
            Device::Down => {
                let Some(addr) = self.config.device else {
                    return self.exception(job, GATEWAY_PATH_UNAVAILABLE);
                };
                self.generation += 1;
                let generation = self.generation;
                self.device = Device::Connecting { generation, queue: vec![job] };
                let (config, ev) = (Arc::clone(&self.config), self.events.clone());
                self.tasks.spawn(device_connection(addr, generation, config, ev));
            }
        }
    }

    /// A transaction id not in use on the device connection.
    fn free_tid(&mut self) -> u16 {
        // max_outstanding is far below 65 536 in any sane configuration; the loop is bounded anyway.
        for _ in 0..=u16::MAX {
            let t = self.next_tid;
            self.next_tid = self.next_tid.wrapping_add(1);
            if !self.pending.contains_key(&t) {
                return t;
            }
        }
        self.next_tid
    }

    fn device_response(&mut self, adu: Adu) {
        let tid = adu.transaction_id();
        let Some((job, _)) = self.pending.remove(&tid) else {
            warn!(tid, "device answered no request in flight (late?): dropped");
            return;
        };
        if !adu.answers(&job.request) {
            warn!(
                seq = job.request_seq,
                "device response {adu:?} does not answer {:?}: exception 0x0B", job.request
            );
            return self.exception(job, GATEWAY_TARGET_FAILED);
        }
        self.respond(job, adu);
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u16> = self.pending.iter().filter(|(_, (_, d))| *d <= now).map(|(t, _)| *t).collect();
        for tid in late {
            if let Some((job, _)) = self.pending.remove(&tid) {
                warn!(seq = job.request_seq, "device did not answer in time: exception 0x0B");
                self.exception(job, GATEWAY_TARGET_FAILED);
            }
        }
    }

    fn exception(&mut self, job: Job, code: u8) {
        let adu = job.request.exception(code);
        self.respond(job, adu);
    }

    /// Seals `adu` (with the request's transaction id) as the answer to `job`.
    fn respond(&mut self, job: Job, mut adu: Adu) {
        adu.set_transaction_id(job.request.transaction_id());
        match self.end.seal_response(job.request_seq, job.class, adu.as_bytes(), now_ms()) {
            Ok(sealed) => {
                debug!(conn = job.conn, request_seq = job.request_seq, seq = sealed.seq, "response sealed");
                deliver(&job.reply, sealed.bytes, "link");
            }
            Err(e) => {
                warn!(
                    conn = job.conn,
                    request_seq = job.request_seq,
                    "response not sealed (the client will time out): {e}"
                );
            }
        }
    }
}
