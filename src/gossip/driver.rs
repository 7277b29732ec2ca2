//! The UDP loop around the gossip core. See the [module docs](super).

use super::{EventKind, GossipEvent, Member};
use cairn_net::gossip::crypto::{self, DecryptError, Keyring};
use cairn_net::gossip::wire::{self, WireError};
use cairn_net::gossip::{
    Config, Gossip, GossipError, MemberEvent, Millis, NodeMeta, Output, Stats, Status, Timer,
};
use glommio::net::UdpSocket;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// How to start a gossip driver. [`GossipConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Address to bind (`--bind`). Unspecified (0.0.0.0 or ::) needs `advertise`.
    pub bind: IpAddr,
    /// UDP port (`--serf-lan-port`, 8301 by default; 0 lets the kernel choose, for tests).
    pub port: u16,
    /// The address other members reach us at, which is also our identity in the pool.
    /// `None`: the bound address.
    pub advertise: Option<SocketAddr>,
    /// The gossip parameters (`Profile::lan()`, `wan()`, `local()`, overridden as needed).
    pub profile: Config,
    /// What we tell other members about ourselves.
    pub meta: NodeMeta,
    /// Members to contact at start (`--join`); empty starts a pool of our own. The core
    /// asks them again every probe period until one answers.
    pub join: Vec<SocketAddr>,
    /// `Some`: every datagram is sealed with AES-256-GCM (`--encrypt`).
    pub keyring: Option<Keyring>,
    /// SO_RCVBUF asked for. A burst of news (a crash wave, a mass join) arrives faster
    /// than one core may drain it; what the kernel cannot buffer is lost, and the gossip
    /// counts a lost ack as a failed probe. The kernel caps it at net.core.rmem_max (see
    /// tuning/sysctl.conf); the size granted is in [`GossipHandle::socket_buffers`].
    pub recv_buffer_bytes: usize,
    /// SO_SNDBUF asked for: a push of full state on join sends many datagrams at once.
    pub send_buffer_bytes: usize,
    /// Events kept for slow subscribers; one that falls further behind gets
    /// `RecvError::Lagged` and should re-read [`GossipHandle::members`].
    pub event_capacity: usize,
    /// Longest [`GossipHandle::leave`] waits for its news to be sent.
    pub leave_timeout: Duration,
}

impl GossipConfig {
    pub fn new(bind: SocketAddr, profile: Config, meta: NodeMeta) -> GossipConfig {
        GossipConfig {
            bind: bind.ip(),
            port: bind.port(),
            advertise: None,
            profile,
            meta,
            join: Vec::new(),
            keyring: None,
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 1 << 20,
            event_capacity: 4_096,
            leave_timeout: Duration::from_secs(3),
        }
    }
}

/// Why the driver could not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("gossip: {0}")]
    Gossip(#[from] GossipError),
    #[error(
        "the gossip port {addr} is already in use (another agent on this machine? pick \
         another --serf-lan-port)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("binding the gossip socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up the gossip socket: {0}")]
    Socket(std::io::Error),
    #[error(
        "the gossip bind address {0} is unspecified; give an advertise address other \
         members can reach"
    )]
    NoAdvertise(IpAddr),
}

/// Why [`GossipHandle::join_and_wait`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("gossip: {0}")]
    Gossip(#[from] GossipError),
    #[error("{0}")]
    NoAnswer(NoAnswer),
}

/// No member answered a join in time, with what the driver saw meanwhile (which usually
/// says why). The driver keeps asking the seeds every probe period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAnswer {
    pub seeds: usize,
    pub waited: Duration,
    /// Whether this node seals its datagrams.
    pub encrypted: bool,
    /// Datagrams received meanwhile that no installed key authenticates.
    pub auth_failures: u64,
    /// Plain gossip datagrams received meanwhile while encryption is on here.
    pub unencrypted: u64,
    /// Sealed datagrams received meanwhile while encryption is off here.
    pub encrypted_without_key: u64,
    /// Other refused datagrams received meanwhile.
    pub other_drops: u64,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no gossip member answered within {:.1} s ({} seeds asked)",
            self.waited.as_secs_f64(),
            self.seeds
        )?;
        if self.auth_failures > 0 {
            write!(
                f,
                "; {} datagrams failed authentication: the pool uses a different encryption \
                 key (check --encrypt)",
                self.auth_failures
            )?;
        }
        if self.encrypted_without_key > 0 {
            write!(
                f,
                "; {} datagrams arrived encrypted but encryption is off here: the pool uses \
                 --encrypt",
                self.encrypted_without_key
            )?;
        }
        if self.unencrypted > 0 {
            write!(
                f,
                "; {} datagrams arrived unencrypted but encryption is on here: the pool does \
                 not use --encrypt",
                self.unencrypted
            )?;
        }
        if self.other_drops > 0 {
            write!(f, "; {} malformed datagrams were dropped", self.other_drops)?;
        }
        if self.auth_failures + self.encrypted_without_key + self.unencrypted == 0 {
            if self.encrypted {
                write!(
                    f,
                    "; a member whose encryption key differs drops our datagrams silently, so \
                     check that every agent uses the same --encrypt key, then the addresses, \
                     ports and firewalls"
                )?;
            } else {
                write!(
                    f,
                    "; check the addresses, ports and firewalls, and whether the pool uses \
                     --encrypt (it would drop our plain datagrams silently)"
                )?;
            }
        }
        Ok(())
    }
}

/// A refused datagram: who sent it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedDatagram {
    pub from: SocketAddr,
    pub reason: String,
}

/// The driver's counters, with the core's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Sends the kernel refused (e.g. no route); the datagram is lost, as on the wire.
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Larger than the largest datagram a member sends.
    pub dropped_oversize: u64,
    /// Truncated or malformed: a sealed datagram too short to hold its header and tag,
    /// or a gossip datagram whose messages do not decode.
    pub dropped_malformed: u64,
    /// Not a Cairn gossip datagram (wrong magic or, with encryption on, an unknown
    /// sealed-datagram version).
    pub dropped_foreign: u64,
    /// A gossip protocol version this node does not speak.
    pub dropped_unknown_version: u64,
    /// No installed key authenticates it (a different key, or altered on the way).
    pub dropped_auth: u64,
    /// A plain gossip datagram while encryption is on here.
    pub dropped_unencrypted: u64,
    /// A sealed datagram while encryption is off here.
    pub dropped_encrypted: u64,
    /// The most recent refusal, for operators asking "why".
    pub last_drop: Option<DroppedDatagram>,
    /// The core's own counters (probes, refutations, ...).
    pub core: Stats,
}

impl DriverStats {
    /// Every datagram refused, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_oversize
            + self.dropped_malformed
            + self.dropped_foreign
            + self.dropped_unknown_version
            + self.dropped_auth
            + self.dropped_unencrypted
            + self.dropped_encrypted
    }
}

/// The state the driver's tasks share. Single-threaded: every borrow ends before an
/// `.await`, so the tasks never see each other's half-done work.
struct Inner {
    core: RefCell<Gossip>,
    socket: UdpSocket,
    keyring: RefCell<Option<Keyring>>,
    /// Draws nonces. Cryptographically secure (ChaCha), seeded from the OS at start.
    rng: RefCell<StdRng>,
    /// Pending timer firings, earliest first. The core never cancels timers (stale
    /// firings are ignored), so a set that also removes duplicates is all it takes.
    timers: RefCell<BTreeSet<(Millis, Timer)>>,
    /// Wakes the timer task when a timer earlier than all others was set.
    timers_changed: Notify,
    started: Instant,
    /// Largest datagram accepted: the core's limit plus the seal.
    max_datagram: usize,
    /// Decoded metadata of known members, so events carry names without decoding the
    /// core's table; pruned when the core reclaims tombstones.
    metas: RefCell<HashMap<SocketAddr, NodeMeta>>,
    local_meta: RefCell<NodeMeta>,
    /// Made by the first [`GossipHandle::subscribe`]: tokio's broadcast channel allocates
    /// and fills every slot when it is made (4,096 × 176 B = 708 KiB at the default
    /// capacity), and a client agent never subscribes. Nothing is lost: a receiver only
    /// sees what is sent after it subscribed.
    events: RefCell<Option<broadcast::Sender<GossipEvent>>>,
    event_capacity: usize,
    stats: RefCell<DriverStats>,
    /// Tombstones may have been reclaimed: prune `metas`.
    reclaimed: Cell<bool>,
}

/// A running gossip driver on the current glommio executor. See the [module
/// docs](super). Dropping it stops the driver at once.
pub struct GossipHandle {
    inner: Rc<Inner>,
    local: SocketAddr,
    buffers: (usize, usize),
    leave_timeout: Duration,
    /// Dropping a glommio task cancels it: these end with the handle.
    _tasks: Vec<glommio::Task<()>>,
}

impl GossipHandle {
    /// Binds the socket, starts the core (joining `cfg.join`) and spawns the driver's
    /// tasks on the current glommio executor. Must be called from inside one.
    pub fn start(cfg: GossipConfig) -> Result<GossipHandle, StartError> {
        cfg.profile.validate().map_err(GossipError::from)?;
        let bind = SocketAddr::new(cfg.bind, cfg.port);
        let (std_socket, buffers) =
            bind_socket(bind, cfg.recv_buffer_bytes, cfg.send_buffer_bytes)?;
        let bound = std_socket.local_addr().map_err(StartError::Socket)?;
        let local = match cfg.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => return Err(StartError::NoAdvertise(bind.ip())),
            None => bound,
        };
        let mut rng = StdRng::from_os_rng();
        let mut core = Gossip::new(cfg.profile.clone(), local, &cfg.meta, 0, rng.random())?;
        let started = Instant::now();
        core.join(0, &cfg.join)?;
        let socket = UdpSocket::from(glommio_socket2::Socket::from(std_socket));
        let seal = if cfg.keyring.is_some() {
            crypto::OVERHEAD
        } else {
            0
        };
        let inner = Rc::new(Inner {
            core: RefCell::new(core),
            socket,
            keyring: RefCell::new(cfg.keyring),
            rng: RefCell::new(rng),
            timers: RefCell::new(BTreeSet::new()),
            timers_changed: Notify::new(),
            started,
            max_datagram: cfg.profile.max_packet_bytes + seal,
            metas: RefCell::new(HashMap::new()),
            local_meta: RefCell::new(cfg.meta),
            events: RefCell::new(None),
            event_capacity: cfg.event_capacity.max(1),
            stats: RefCell::new(DriverStats::default()),
            reclaimed: Cell::new(false),
        });
        let tasks = vec![
            glommio::spawn_local(receive_loop(inner.clone())),
            glommio::spawn_local(timer_loop(inner.clone())),
        ];
        Ok(GossipHandle {
            inner,
            local,
            buffers,
            leave_timeout: cfg.leave_timeout,
            _tasks: tasks,
        })
    }

    /// Our address in the pool (the advertised one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// (SO_RCVBUF, SO_SNDBUF) as the kernel granted them (Linux reports twice the
    /// usable size, capped by net.core.rmem_max / wmem_max).
    pub fn socket_buffers(&self) -> (usize, usize) {
        self.buffers
    }

    /// Every member we know of, ourselves first, then in address order; failed and left
    /// members stay listed until their tombstones are reclaimed.
    pub fn members(&self) -> Vec<Member> {
        let core = self.inner.core.borrow();
        let (status, incarnation) = core
            .status_of(&self.local)
            .expect("the core always knows the local node");
        let meta = self.inner.local_meta.borrow().clone();
        let mut out = vec![Member {
            name: meta.name.clone(),
            addr: self.local,
            status,
            incarnation,
            meta,
        }];
        out.extend(core.members().map(|m| Member {
            name: m.meta.name.clone(),
            addr: m.addr,
            status: m.status,
            incarnation: m.incarnation,
            meta: m.meta,
        }));
        out
    }

    /// Live members (alive or suspect) including ourselves.
    pub fn num_live(&self) -> usize {
        self.inner.core.borrow().num_live()
    }

    /// Membership events from now on. Bounded: see [`GossipConfig::event_capacity`].
    pub fn subscribe(&self) -> broadcast::Receiver<GossipEvent> {
        let capacity = self.inner.event_capacity;
        self.inner
            .events
            .borrow_mut()
            .get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// The driver's counters, with the core's.
    pub fn stats(&self) -> DriverStats {
        let mut s = self.inner.stats.borrow().clone();
        s.core = self.inner.core.borrow().stats();
        s
    }

    /// Asks `seeds` for their state and announces ourselves; returns how many were
    /// asked. Does not wait for answers: see [`GossipHandle::join_and_wait`].
    pub async fn join(&self, seeds: &[SocketAddr]) -> Result<usize, GossipError> {
        let n = {
            let now = self.inner.now();
            self.inner.core.borrow_mut().join(now, seeds)?
        };
        flush(&self.inner).await;
        Ok(n)
    }

    /// [`GossipHandle::join`], then waits until some member is known alive or `timeout`
    /// passes. Returns the number of live members (ourselves included). On timeout the
    /// error says what was received meanwhile, which usually tells why (a different
    /// encryption key, encryption on one side only).
    pub async fn join_and_wait(
        &self,
        seeds: &[SocketAddr],
        timeout: Duration,
    ) -> Result<usize, JoinError> {
        let before = self.stats();
        let started = Instant::now();
        let asked = self.join(seeds).await?;
        let poll = Duration::from_millis(10);
        loop {
            let live = self.num_live();
            if live > 1 {
                return Ok(live);
            }
            if started.elapsed() >= timeout {
                let now = self.stats();
                let auth_failures = now.dropped_auth - before.dropped_auth;
                let unencrypted = now.dropped_unencrypted - before.dropped_unencrypted;
                let encrypted_without_key = now.dropped_encrypted - before.dropped_encrypted;
                let other_drops = (now.dropped() - before.dropped())
                    - auth_failures
                    - unencrypted
                    - encrypted_without_key;
                return Err(JoinError::NoAnswer(NoAnswer {
                    seeds: asked,
                    waited: started.elapsed(),
                    encrypted: self.inner.keyring.borrow().is_some(),
                    auth_failures,
                    unencrypted,
                    encrypted_without_key,
                    other_drops,
                }));
            }
            glommio::timer::sleep(poll).await;
        }
    }

    /// Leaves gracefully: tells the pool we left, then keeps the driver running until
    /// the news has been sent its full number of times or `leave_timeout` passed. Drop
    /// the handle afterwards. Members show this node as left, not failed.
    pub async fn leave(&self) -> Result<(), GossipError> {
        {
            let now = self.inner.now();
            self.inner.core.borrow_mut().leave(now)?;
        }
        flush(&self.inner).await;
        let deadline = Instant::now() + self.leave_timeout;
        let poll = Duration::from_millis(
            (self.inner.core.borrow().config().gossip_interval_ms / 2).clamp(5, 100),
        );
        while self.inner.core.borrow().pending_broadcasts() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(poll).await;
        }
        Ok(())
    }

    /// Forces the failed member named `name` to leave (Consul's `force-leave`).
    pub async fn force_leave(&self, name: &str) -> Result<(), String> {
        let addr = self
            .members()
            .into_iter()
            .filter(|m| m.name == name && m.addr != self.local)
            .map(|m| m.addr)
            .next();
        let Some(addr) = addr else {
            return Err(format!("no member named {name:?} in the pool"));
        };
        {
            let now = self.inner.now();
            self.inner
                .core
                .borrow_mut()
                .force_leave(now, addr)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        flush(&self.inner).await;
        Ok(())
    }

    /// Replaces our metadata (tags, ...) and tells the pool.
    pub async fn update_meta(&self, meta: NodeMeta) -> Result<(), GossipError> {
        {
            let now = self.inner.now();
            self.inner.core.borrow_mut().update_meta(now, &meta)?;
        }
        *self.inner.local_meta.borrow_mut() = meta;
        flush(&self.inner).await;
        Ok(())
    }

    /// Runs `f` on the keyring (install, use, remove, list keys: rotation). `None` when
    /// the driver was started without encryption; encryption cannot be turned on or off
    /// while running, as half a pool would stop hearing the other half.
    pub fn with_keyring<R>(&self, f: impl FnOnce(&mut Keyring) -> R) -> Option<R> {
        self.inner.keyring.borrow_mut().as_mut().map(f)
    }
}

impl Inner {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn drop_datagram(&self, from: SocketAddr, why: Refusal, reason: String) {
        let mut s = self.stats.borrow_mut();
        match why {
            Refusal::Oversize => s.dropped_oversize += 1,
            Refusal::Malformed => s.dropped_malformed += 1,
            Refusal::Foreign => s.dropped_foreign += 1,
            Refusal::UnknownVersion => s.dropped_unknown_version += 1,
            Refusal::Auth => s.dropped_auth += 1,
            Refusal::Unencrypted => s.dropped_unencrypted += 1,
            Refusal::Encrypted => s.dropped_encrypted += 1,
        }
        s.last_drop = Some(DroppedDatagram { from, reason });
    }

    /// Opens, decodes and applies one datagram, or drops and counts it.
    fn on_datagram(&self, data: &[u8], from: SocketAddr, truncated: bool) {
        if truncated {
            let reason = format!("datagram larger than the {}-byte limit", self.max_datagram);
            return self.drop_datagram(from, Refusal::Oversize, reason);
        }
        let plain = match &*self.keyring.borrow() {
            Some(ring) => {
                if data.starts_with(&wire::MAGIC) {
                    let reason = "unencrypted gossip datagram while encryption is on".to_string();
                    return self.drop_datagram(from, Refusal::Unencrypted, reason);
                }
                match ring.decrypt(data) {
                    Ok(p) => bytes::Bytes::from(p),
                    Err(e) => {
                        let why = match e {
                            DecryptError::TooShort { .. } => Refusal::Malformed,
                            DecryptError::UnknownVersion(_) => Refusal::Foreign,
                            DecryptError::Authentication { .. } => Refusal::Auth,
                        };
                        return self.drop_datagram(from, why, e.to_string());
                    }
                }
            }
            None => {
                if data.first() == Some(&crypto::VERSION) && data.len() >= crypto::OVERHEAD {
                    let reason =
                        "encrypted gossip datagram while encryption is off here".to_string();
                    return self.drop_datagram(from, Refusal::Encrypted, reason);
                }
                bytes::Bytes::copy_from_slice(data)
            }
        };
        let now = self.now();
        let r = self.core.borrow_mut().handle_packet(now, from, &plain);
        match r {
            Ok(()) => self.stats.borrow_mut().datagrams_received += 1,
            Err(e) => {
                let why = match e {
                    WireError::BadMagic(_) => Refusal::Foreign,
                    WireError::UnsupportedVersion(_) => Refusal::UnknownVersion,
                    WireError::Oversize { .. } => Refusal::Oversize,
                    WireError::Truncated(_)
                    | WireError::UnknownKind(_)
                    | WireError::Malformed(_)
                    | WireError::MetaTooLarge { .. } => Refusal::Malformed,
                };
                self.drop_datagram(from, why, e.to_string());
            }
        }
    }

    fn set_timer(&self, at: Millis, timer: Timer) {
        let mut t = self.timers.borrow_mut();
        let earliest = t.first().map(|(a, _)| *a);
        t.insert((at, timer));
        if earliest.is_none_or(|e| at < e) {
            self.timers_changed.notify_one();
        }
    }

    fn publish(&self, e: MemberEvent) {
        let addr = e.addr();
        let (kind, incarnation, status) = match &e {
            MemberEvent::Joined {
                incarnation, meta, ..
            } => {
                self.metas.borrow_mut().insert(addr, meta.clone());
                (EventKind::Joined, *incarnation, Status::Alive)
            }
            MemberEvent::Updated {
                incarnation, meta, ..
            } => {
                self.metas.borrow_mut().insert(addr, meta.clone());
                (EventKind::Updated, *incarnation, Status::Alive)
            }
            MemberEvent::Alive { incarnation, .. } => {
                (EventKind::Alive, *incarnation, Status::Alive)
            }
            MemberEvent::Suspect { incarnation, .. } => {
                (EventKind::Suspect, *incarnation, Status::Suspect)
            }
            MemberEvent::Failed { incarnation, .. } => {
                (EventKind::Failed, *incarnation, Status::Dead)
            }
            MemberEvent::Left { incarnation, .. } => (EventKind::Left, *incarnation, Status::Left),
        };
        let events = self.events.borrow();
        let Some(events) = events.as_ref() else {
            return;
        };
        let meta = self.metas.borrow().get(&addr).cloned().unwrap_or_default();
        let member = Member {
            name: meta.name.clone(),
            addr,
            status,
            incarnation,
            meta,
        };
        // No subscriber is not an error: events are for whoever listens.
        let _ = events.send(GossipEvent { kind, member });
    }

    fn prune_metas(&self) {
        let core = self.core.borrow();
        self.metas
            .borrow_mut()
            .retain(|a, _| core.status_of(a).is_some());
    }
}

#[derive(Clone, Copy)]
enum Refusal {
    Oversize,
    Malformed,
    Foreign,
    UnknownVersion,
    Auth,
    Unencrypted,
    Encrypted,
}

/// Drains the core's outputs: records timers, publishes events, seals and sends
/// datagrams.
async fn flush(inner: &Inner) {
    let outputs: Vec<Output> = inner.core.borrow_mut().drain_outputs().collect();
    if outputs.is_empty() {
        return;
    }
    let mut sends = Vec::new();
    for o in outputs {
        match o {
            Output::Send { to, bytes } => {
                let datagram = match &*inner.keyring.borrow() {
                    Some(ring) => ring.encrypt(&mut *inner.rng.borrow_mut(), &bytes),
                    None => bytes.to_vec(),
                };
                sends.push((to, datagram));
            }
            Output::SetTimer { at, timer } => inner.set_timer(at, timer),
            Output::Event(e) => inner.publish(e),
        }
    }
    for (to, datagram) in sends {
        match inner.socket.send_to(&datagram, to).await {
            Ok(_) => inner.stats.borrow_mut().datagrams_sent += 1,
            Err(_) => inner.stats.borrow_mut().send_errors += 1,
        }
    }
}

async fn receive_loop(inner: Rc<Inner>) {
    // One byte more than any datagram we accept: a datagram that fills it was longer
    // (the kernel cut it) and is refused as oversize.
    let mut buf = vec![0u8; inner.max_datagram + 1];
    loop {
        match inner.socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                inner.on_datagram(&buf[..n], from, n == buf.len());
                flush(&inner).await;
            }
            Err(_) => {
                inner.stats.borrow_mut().recv_errors += 1;
                // A persistent error must not spin the core.
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn timer_loop(inner: Rc<Inner>) {
    // The join at start queued datagrams and the first timers.
    flush(&inner).await;
    loop {
        let now = inner.now();
        let earliest = inner.timers.borrow().first().map(|(at, _)| *at);
        match earliest {
            None => inner.timers_changed.notified().await,
            Some(at) if at > now => {
                let sleep = glommio::timer::sleep(Duration::from_millis(at - now));
                futures_lite::future::or(sleep, inner.timers_changed.notified()).await;
            }
            Some(_) => {
                let mut due = Vec::new();
                {
                    let mut t = inner.timers.borrow_mut();
                    while t.first().is_some_and(|(at, _)| *at <= now) {
                        let (_, timer) = t.pop_first().expect("checked above");
                        due.push(timer);
                    }
                }
                {
                    let mut core = inner.core.borrow_mut();
                    for timer in due {
                        if timer == Timer::Reclaim {
                            inner.reclaimed.set(true);
                        }
                        core.handle_timer(now, timer);
                    }
                }
                if inner.reclaimed.replace(false) {
                    inner.prune_metas();
                }
                flush(&inner).await;
            }
        }
    }
}

/// Binds a plain UDP socket (no SO_REUSEPORT, unlike glommio's own `bind`: a second
/// agent on the port must be an error, not a silent split of its traffic) with the
/// buffer sizes asked for. Returns it and the sizes the kernel granted.
fn bind_socket(
    addr: SocketAddr,
    recv_bytes: usize,
    send_bytes: usize,
) -> Result<(std::net::UdpSocket, (usize, usize)), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(StartError::Socket)?;
    // Best effort: the kernel caps both at its maximum rather than failing.
    s.set_recv_buffer_size(recv_bytes)
        .map_err(StartError::Socket)?;
    s.set_send_buffer_size(send_bytes)
        .map_err(StartError::Socket)?;
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortInUse { addr }
        } else {
            StartError::Bind { addr, source: e }
        }
    })?;
    let granted = (
        s.recv_buffer_size().map_err(StartError::Socket)?,
        s.send_buffer_size().map_err(StartError::Socket)?,
    );
    Ok((s.into(), granted))
}
