//! The thin I/O loop around the SWIM state machine: UDP packets, TCP push/pull
//! streams, timers, and the registry's deltas in and out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::messages::{AckResp, ErrResp, Message, MessageType, Ping, PushPull};
use super::replication::Replication;
use super::swim::{MemberEvent, Output, Swim, SwimConfig};
use super::view::ClusterView;
use super::wire::{self, Keyring, WireError};
use crate::gateway::Gateway;
use crate::registry::Delta;

/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 65_536;
/// Largest push/pull stream we read (memberlist's own cap is far above what a
/// registry needs; this bounds a peer's claim on our memory).
const MAX_STREAM: usize = 64 * 1024 * 1024;
/// A TCP exchange that takes longer than this is abandoned (memberlist's TCPTimeout).
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::plan::ClusterSettings;

/// A push/pull stream event handed from a connection task to the loop.
enum StreamEvent {
    /// A peer pushed its state; answer with ours.
    Incoming {
        from: SocketAddr,
        remote: PushPull,
        reply: oneshot::Sender<PushPull>,
    },
    /// The answer to a push/pull we started.
    Reply(PushPull),
    /// A user message sent over TCP (memberlist's `SendReliable`).
    User(Vec<u8>),
    /// How a TCP fallback ping we sent ended.
    PingResult { seq: u32, contacted: bool },
}

/// The gossip sockets: TCP and UDP on one port.
pub type GossipSockets = (std::net::TcpListener, std::net::UdpSocket);

/// Starts the loop on `sockets` (bound by `bind`, or inherited from the process this
/// one replaces). The returned task runs until aborted (the gateway's lifetime).
pub async fn start(
    gateway: Arc<Gateway>,
    settings: ClusterSettings,
    sockets: GossipSockets,
) -> std::io::Result<(Arc<ClusterView>, JoinHandle<()>)> {
    let (tcp, udp) = sockets;
    let (tcp, udp) = (TcpListener::from_std(tcp)?, UdpSocket::from_std(udp)?);
    let bound = udp.local_addr()?;
    let mut advertise = settings.advertised();
    if advertise.port() == 0 {
        advertise.set_port(bound.port());
    }
    let keys = Keyring::new(settings.secret_key.clone().into_iter().collect())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let view = Arc::new(ClusterView::with_alive_counter(
        gateway.cluster_limits.alive_counter(),
    ));
    *view.gossip_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
    let config = SwimConfig::lan(gateway.node_name.clone(), advertise);
    let mut seeds = resolve_seeds(&settings.join).await;
    // Our own address (a seed name that resolves to every node) is not a peer.
    seeds.retain(|seed| *seed != advertise);
    tracing::info!(node = %gateway.node_name, gossip = %bound, %advertise, seeds = seeds.len(), encrypted = keys.is_enabled(), "cluster starting");
    let looper = Loop {
        swim: Swim::new(config, Instant::now()),
        gateway,
        udp: Arc::new(udp),
        keys,
        view: view.clone(),
        replication: Replication::default(),
    };
    let task = tokio::spawn(looper.run(tcp, seeds));
    Ok((view, task))
}

/// TCP and UDP on one port (memberlist's convention: peers derive one from the other).
/// For port 0 the TCP port is picked first and UDP takes the same number, retrying
/// with a new one if that UDP port happens to be in use.
pub fn bind(addr: SocketAddr) -> std::io::Result<GossipSockets> {
    let mut last_error = None;
    for _ in 0..10 {
        let tcp = crate::sockets::listen_tcp(addr, 128, false)?;
        let mut same = addr;
        same.set_port(tcp.local_addr()?.port());
        match bind_udp(same) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free gossip port")))
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    // Gossip bursts (a push/pull reply, a broadcast storm) should not be dropped by a
    // small default receive buffer; memberlist asks for 2 MiB too.
    let _ = socket.set_recv_buffer_size(2 * 1024 * 1024);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Addresses tried per seed name: a headless Kubernetes Service answers one name with
/// every pod's address (our own among them), so more than the first are kept.
const ADDRS_PER_SEED: usize = 8;

async fn resolve_seeds(join: &[String]) -> Vec<SocketAddr> {
    let mut seeds = Vec::new();
    for seed in join {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => seeds.extend(addrs.take(ADDRS_PER_SEED)),
            Err(e) => tracing::warn!(seed, error = %e, "cannot resolve a cluster seed"),
        }
    }
    seeds
}

struct Loop {
    swim: Swim,
    gateway: Arc<Gateway>,
    udp: Arc<UdpSocket>,
    keys: Keyring,
    view: Arc<ClusterView>,
    replication: Replication,
}

impl Loop {
    async fn run(mut self, tcp: TcpListener, seeds: Vec<SocketAddr>) {
        let (deltas_tx, mut deltas) = mpsc::unbounded_channel::<Delta>();
        self.gateway.set_gossip(deltas_tx);
        let (streams_tx, mut streams) = mpsc::channel::<StreamEvent>(64);
        let outputs = self.swim.join(&seeds, Instant::now());
        self.handle(outputs, &streams_tx);
        self.publish_members();
        // Seeds that are not up yet are tried again (1 s, doubling to 30 s) until some
        // other node is known: nodes of a cluster may start in any order.
        let mut rejoin_every = Duration::from_secs(1);
        let mut rejoin_at = Instant::now() + rejoin_every;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = Instant::now();
            if !seeds.is_empty() && now >= rejoin_at {
                if self.swim.members().len() <= 1 {
                    tracing::info!(
                        seeds = seeds.len(),
                        "no cluster member known yet: joining again"
                    );
                    let outputs = self.swim.join(&seeds, now);
                    self.handle(outputs, &streams_tx);
                    rejoin_every = (rejoin_every * 2).min(Duration::from_secs(30));
                }
                rejoin_at = now + rejoin_every;
            }
            let deadline = self.swim.next_deadline().min(rejoin_at);
            let outputs = tokio::select! {
                received = self.udp.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        self.count("received", "udp", n);
                        self.on_packet(&buf[..n], from)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "gossip receive failed");
                        Vec::new()
                    }
                },
                accepted = tcp.accept() => {
                    if let Ok((stream, from)) = accepted {
                        let keys = self.keys.clone();
                        let events = streams_tx.clone();
                        let name = self.gateway.node_name.clone();
                        tokio::spawn(serve_stream(stream, from, name, keys, events));
                    }
                    Vec::new()
                }
                Some(event) = streams.recv() => match event {
                    StreamEvent::Incoming { from, remote, reply } => {
                        let (mut ours, outputs) = self.swim.handle_push_pull(from, remote, Instant::now());
                        ours.user_state = self.local_user_state();
                        let _ = reply.send(ours);
                        outputs
                    }
                    StreamEvent::PingResult { seq, contacted } => {
                        self.swim.handle_tcp_ping_result(seq, contacted, Instant::now())
                    }
                    StreamEvent::Reply(remote) => self.swim.handle_push_pull_reply(remote, Instant::now()),
                    StreamEvent::User(payload) => {
                        if self.apply_user_payload(&payload, Instant::now()) {
                            self.gateway.refresh_services();
                        }
                        Vec::new()
                    }
                },
                Some(delta) = deltas.recv() => {
                    self.broadcast(&delta);
                    Vec::new()
                }
                () = tokio::time::sleep_until(deadline) => self.swim.tick(Instant::now()),
                () = self.view.leave_requested() => {
                    self.leave(&streams_tx).await;
                    return;
                }
            };
            self.handle(outputs, &streams_tx);
            self.deliver_registry_updates();
        }
    }

    /// Announces our departure and keeps gossiping (at most 2 s) until the news is out,
    /// as memberlist's `Leave` waits for its broadcast.
    async fn leave(&mut self, streams: &mpsc::Sender<StreamEvent>) {
        tracing::info!("leaving the cluster");
        let outputs = self.swim.leave(Instant::now());
        self.handle(outputs, streams);
        let until = Instant::now() + Duration::from_secs(2);
        while self.swim.pending_broadcasts() > 0 && Instant::now() < until {
            tokio::time::sleep_until(self.swim.next_deadline().min(until)).await;
            let outputs = self.swim.tick(Instant::now());
            self.handle(outputs, streams);
        }
    }

    /// The registry's full state for a push/pull we send or answer.
    fn local_user_state(&mut self) -> Vec<u8> {
        let registry = self.gateway.registry();
        self.replication.local_state(&registry).as_ref().clone()
    }

    fn broadcast(&mut self, delta: &Delta) {
        Replication::broadcast(&mut self.swim, delta);
    }

    fn on_packet(&mut self, packet: &[u8], from: SocketAddr) -> Vec<Output> {
        match wire::open_packet(packet, &[], &self.keys) {
            Ok(messages) => self.swim.handle_packet(from, messages, Instant::now()),
            Err(e) => {
                tracing::debug!(%from, error = %e, "gossip packet dropped");
                Vec::new()
            }
        }
    }

    fn handle(&mut self, outputs: Vec<Output>, streams: &mpsc::Sender<StreamEvent>) {
        let mut membership_changed = false;
        for output in outputs {
            match output {
                Output::Packet { to, messages } => self.send_packet(to, &messages),
                Output::PushPull { to, mut state } => {
                    state.user_state = self.local_user_state();
                    let keys = self.keys.clone();
                    let events = streams.clone();
                    let bytes = self.gateway.metrics.gossip_bytes.clone();
                    tokio::spawn(async move {
                        match push_pull(to, &state, &keys, &bytes).await {
                            Ok(remote) => {
                                let _ = events.send(StreamEvent::Reply(remote)).await;
                            }
                            Err(e) => tracing::debug!(peer = %to, error = %e, "push/pull failed"),
                        }
                    });
                }
                Output::TcpPing { to, ping, deadline } => {
                    let keys = self.keys.clone();
                    let events = streams.clone();
                    let bytes = self.gateway.metrics.gossip_bytes.clone();
                    tokio::spawn(async move {
                        let seq = ping.seq_no;
                        let pinged =
                            tokio::time::timeout_at(deadline, tcp_ping(to, ping, &keys, &bytes));
                        let contacted = match pinged.await {
                            Ok(Ok(())) => true,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %to, error = %e, "TCP fallback ping failed");
                                false
                            }
                            Err(_) => false,
                        };
                        let _ = events
                            .send(StreamEvent::PingResult { seq, contacted })
                            .await;
                    });
                }
                Output::Event(event) => {
                    membership_changed = true;
                    self.on_member_event(event);
                }
            }
        }
        if membership_changed {
            self.publish_members();
        }
    }

    fn count(&self, direction: &str, transport: &str, bytes: usize) {
        self.gateway
            .metrics
            .gossip_bytes
            .with_label_values(&[direction, transport])
            .inc_by(bytes as u64);
    }

    fn publish_members(&self) {
        self.view.set_members(self.swim.members());
    }

    fn send_packet(&self, to: SocketAddr, messages: &[Message]) {
        let encoded: Vec<Vec<u8>> = messages.iter().map(wire::encode_message).collect();
        // A lone message goes bare, as memberlist sends it; more are compounded.
        let payloads = match encoded.len() {
            0 => Vec::new(),
            1..=255 => vec![wire::compound(&encoded)],
            _ => wire::compounds(&encoded),
        };
        for payload in payloads {
            match wire::seal_packet(payload, &[], true, &self.keys) {
                // A full socket buffer drops the packet, as UDP would: SWIM tolerates loss.
                Ok(packet) => {
                    if self.udp.try_send_to(&packet, to).is_ok() {
                        self.count("sent", "udp", packet.len());
                    }
                }
                Err(e) => tracing::debug!(peer = %to, error = %e, "gossip packet not sent"),
            }
        }
    }

    fn on_member_event(&mut self, event: MemberEvent) {
        match &event {
            MemberEvent::Joined(m) => {
                tracing::info!(node = %m.name, addr = %m.addr, "cluster member joined")
            }
            MemberEvent::Updated(m) => tracing::debug!(node = %m.name, "cluster member updated"),
            MemberEvent::Suspected(name) => {
                tracing::info!(node = %name, "cluster member suspected")
            }
            MemberEvent::Died(name) | MemberEvent::Left(name) => {
                tracing::warn!(node = %name, "cluster member gone: withdrawing its registrations")
            }
        }
        let changed = {
            let mut registry = self.gateway.registry();
            Replication::on_event(&mut registry, &mut self.swim, &event, Instant::now())
        };
        if changed {
            self.gateway.refresh_services();
        }
    }

    /// Applies registry deltas and full states received by gossip.
    fn deliver_registry_updates(&mut self) {
        let changed = {
            let mut registry = self.gateway.registry();
            self.replication
                .receive(&mut registry, &mut self.swim, Instant::now())
        };
        if changed {
            self.gateway.refresh_services();
        }
    }
}

impl Loop {
    /// Applies one registry delta that came over a TCP stream.
    fn apply_user_payload(&mut self, payload: &[u8], now: Instant) -> bool {
        let mut registry = self.gateway.registry();
        Replication::apply_payload(&mut registry, &mut self.swim, payload, now)
    }
}

/// Reads from `stream` until `parse` accepts the bytes (it says `Truncated` until then).
async fn read_message<T>(
    stream: &mut TcpStream,
    mut parse: impl FnMut(&[u8]) -> Result<T, WireError>,
) -> Result<T, String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-message".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_STREAM {
            return Err("stream message too large".to_owned());
        }
        match parse(&buf) {
            Ok(value) => return Ok(value),
            Err(WireError::Truncated) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Our side of a push/pull we start: send our state, read theirs.
async fn push_pull(
    to: SocketAddr,
    state: &PushPull,
    keys: &Keyring,
    bytes: &prometheus::IntCounterVec,
) -> Result<PushPull, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let sealed = wire::seal_stream(wire::encode_push_pull(state), &[], keys)
            .map_err(|e| e.to_string())?;
        stream.write_all(&sealed).await.map_err(|e| e.to_string())?;
        bytes
            .with_label_values(&["sent", "tcp"])
            .inc_by(sealed.len() as u64);
        let mut size = 0;
        let reply = read_message(&mut stream, |buf| {
            size = buf.len();
            let inner = wire::open_stream_reply(buf, &[], keys)?;
            wire::decode_push_pull(&inner)
        })
        .await;
        bytes
            .with_label_values(&["received", "tcp"])
            .inc_by(size as u64);
        reply
    };
    tokio::time::timeout(STREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// memberlist's `sendPingAndWaitForAck`: a ping over a fresh TCP stream, answered by an
/// ack with the same sequence number (the caller bounds it by the probe's end).
async fn tcp_ping(
    to: SocketAddr,
    ping: Ping,
    keys: &Keyring,
    bytes: &prometheus::IntCounterVec,
) -> Result<(), String> {
    let seq = ping.seq_no;
    let mut stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let sealed = wire::seal_stream(wire::encode_message(&Message::Ping(ping)), &[], keys)
        .map_err(|e| e.to_string())?;
    stream.write_all(&sealed).await.map_err(|e| e.to_string())?;
    bytes
        .with_label_values(&["sent", "tcp"])
        .inc_by(sealed.len() as u64);
    let mut size = 0;
    let reply = read_message(&mut stream, |buf| {
        size = buf.len();
        let inner = wire::open_stream_reply(buf, &[], keys)?;
        wire::decode_message(&inner)
    })
    .await?;
    bytes
        .with_label_values(&["received", "tcp"])
        .inc_by(size as u64);
    match reply {
        Message::Ack(ack) if ack.seq_no == seq => Ok(()),
        Message::Ack(ack) => Err(format!("ack for {} instead of {seq}", ack.seq_no)),
        _ => Err("the reply to a ping is not an ack".to_owned()),
    }
}

/// An accepted gossip stream: a push/pull (answered with our state), a user message, or
/// a TCP ping for `name` (answered with an ack, as memberlist's `handleConn` does).
async fn serve_stream(
    mut stream: TcpStream,
    from: SocketAddr,
    name: String,
    keys: Keyring,
    events: mpsc::Sender<StreamEvent>,
) {
    let exchange = async {
        let inner = read_message(&mut stream, |buf| {
            let inner = wire::open_stream(buf, &[], &keys)?;
            // Make sure the message is complete before handing it on.
            match inner.first().copied().map(MessageType::try_from) {
                Some(Ok(MessageType::PushPull)) => {
                    wire::decode_push_pull(&inner)?;
                }
                Some(Ok(MessageType::User)) => {
                    wire::decode_user_stream(&inner)?;
                }
                _ => {
                    wire::decode_message(&inner)?;
                }
            }
            Ok(inner)
        })
        .await?;
        let reply = match inner.first().copied().map(MessageType::try_from) {
            Some(Ok(MessageType::PushPull)) => {
                let remote = wire::decode_push_pull(&inner).map_err(|e| e.to_string())?;
                let (tx, rx) = oneshot::channel();
                events
                    .send(StreamEvent::Incoming {
                        from,
                        remote,
                        reply: tx,
                    })
                    .await
                    .map_err(|_| "cluster loop stopped".to_owned())?;
                let ours = rx.await.map_err(|_| "no state to answer with".to_owned())?;
                wire::encode_push_pull(&ours)
            }
            Some(Ok(MessageType::User)) => {
                let payload = wire::decode_user_stream(&inner).map_err(|e| e.to_string())?;
                events
                    .send(StreamEvent::User(payload))
                    .await
                    .map_err(|_| "cluster loop stopped".to_owned())?;
                // memberlist does not answer a user message.
                return Ok(());
            }
            _ => match wire::decode_message(&inner) {
                // memberlist ignores a ping for another node (a reused address).
                Ok(Message::Ping(ping)) if ping.node.is_empty() || ping.node == name => {
                    wire::encode_message(&Message::Ack(AckResp {
                        seq_no: ping.seq_no,
                        payload: Vec::new(),
                    }))
                }
                Ok(Message::Ping(ping)) => {
                    return Err(format!("ping for another node {:?}", ping.node));
                }
                _ => return Err("unsupported stream message".to_owned()),
            },
        };
        let sealed = wire::seal_stream_reply(reply, &[], &keys).map_err(|e| e.to_string())?;
        stream.write_all(&sealed).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %from, error = %e, "gossip stream failed");
            // As memberlist's handleConn does: tell the peer why (a joining node then
            // reports the reason, e.g. a decryption failure, rather than a bare EOF).
            let reply = wire::encode_message(&Message::Err(ErrResp { error: e }));
            if let Ok(sealed) = wire::seal_stream_reply(reply, &[], &keys) {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(&sealed)).await;
            }
        }
        Err(_) => tracing::debug!(peer = %from, "gossip stream timed out"),
    }
}
