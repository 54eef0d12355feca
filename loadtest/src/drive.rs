//! The one engine of the load tester: many emulated machines on one thread, over ringboot's
//! [`Poller`] and the core's one [`TimerQueue`], for every kind of storm (unicast in
//! [`crate::engine`], with the `--dhcp` phase's machines beside it; multicast in
//! [`crate::mcast`]).
//!
//! Contract:
//! - A [`Fleet`] is the set of machines of one thread. It never waits: [`run`] waits for the
//!   earliest machine timer, a datagram, the run's deadline or at most 100 ms (to see an abort),
//!   reads the clock once per wake-up, fires the due timers ([`Fleet::on_timer`]: the machine is
//!   serviced and re-armed), hands every ready socket to [`Fleet::on_ready`], and reports the bytes
//!   received to the live counters once per turn.
//! - At the deadline or on an abort every machine still running is stopped ([`Fleet::stop_all`]).
//! - [`spawn`] starts one engine thread per set of machines and [`join`] collects what they
//!   return; a panicking engine thread is an error of the run.
//! - What every engine reports is written once, here: the [`Live`] counters while it runs, a
//!   [`MachineResult`] per machine at the end (the report of [`crate::report`] reads those).

use anyhow::{anyhow, Result};
use ringboot::proto::timer::TimerQueue;
use ringboot::sys::poll::{Event, Events, Poller};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest wait: an abort or the deadline is seen within this.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// The machines of one engine thread.
pub(crate) trait Fleet {
    fn timers(&mut self) -> &mut TimerQueue<u32>;
    fn poller(&self) -> &Poller;
    /// Machines not yet done.
    fn running(&self) -> usize;
    /// The run's deadline.
    fn deadline(&self) -> Instant;
    /// Whether the run was aborted (the server stopped answering, ^C).
    fn aborted(&self) -> bool;
    /// Stop every machine still running (deadline or abort).
    fn stop_all(&mut self, now: Instant);
    /// Work of every turn before the timers (starting late joiners); an earlier wake-up it needs.
    fn turn(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
    /// Machine `i`'s timer is due: service it and re-arm it.
    fn on_timer(&mut self, i: usize, now: Instant);
    /// A registered socket is ready.
    fn on_ready(&mut self, ev: Event, now: Instant);
    /// Add the bytes received since the last call to the live counters.
    fn report_bytes(&mut self);
}

/// The [`Fleet`] methods that every engine answers the same way, from its fields `timers`,
/// `poller`, `running` and `$shared` (`deadline`, `live.abort`) and its own `stop_all`, `service`
/// and `rearm`. Used inside `impl Fleet for ...`.
macro_rules! fleet_common {
    ($shared:ident) => {
        fn timers(&mut self) -> &mut ringboot::proto::timer::TimerQueue<u32> {
            &mut self.timers
        }

        fn poller(&self) -> &ringboot::sys::poll::Poller {
            &self.poller
        }

        fn running(&self) -> usize {
            self.running
        }

        fn deadline(&self) -> std::time::Instant {
            self.$shared.deadline
        }

        fn aborted(&self) -> bool {
            self.$shared
                .live
                .abort
                .load(std::sync::atomic::Ordering::Relaxed)
        }

        fn stop_all(&mut self, now: std::time::Instant) {
            Self::stop_all(self, now)
        }

        fn on_timer(&mut self, i: usize, now: std::time::Instant) {
            self.service(i, now);
            self.rearm(i);
        }
    };
}
pub(crate) use fleet_common;

/// Run `fleet` to the end (every machine done) or to the deadline.
pub(crate) fn run(fleet: &mut impl Fleet, events: usize) {
    let mut events = Events::with_capacity(events);
    while fleet.running() > 0 {
        let now = Instant::now();
        if now >= fleet.deadline() || fleet.aborted() {
            fleet.stop_all(now);
            break;
        }
        let early = fleet.turn(now);
        while let Some(i) = fleet.timers().pop_expired(now) {
            fleet.on_timer(i as usize, now);
        }
        fleet.report_bytes();
        if fleet.running() == 0 {
            break;
        }
        let mut next = fleet
            .timers()
            .next_deadline()
            .unwrap_or(now + MAX_WAIT)
            .min(fleet.deadline());
        if let Some(t) = early {
            next = next.min(t);
        }
        let wait = next.saturating_duration_since(Instant::now());
        let ms = wait.as_micros().div_ceil(1000).min(MAX_WAIT.as_millis()) as i32;
        if let Err(err) = fleet.poller().wait(&mut events, ms) {
            panic!("waiting for events: {err}");
        }
        let now = Instant::now();
        for ev in events.iter() {
            fleet.on_ready(ev, now);
        }
    }
    fleet.report_bytes();
}

/// One engine thread per set of machines, named `{name}-{k}`, each running `body`.
pub(crate) fn spawn<S: Send + 'static, R: Send + 'static>(
    name: &str,
    per_thread: Vec<Vec<S>>,
    body: impl Fn(Vec<S>) -> R + Clone + Send + 'static,
) -> Vec<JoinHandle<R>> {
    per_thread
        .into_iter()
        .enumerate()
        .map(|(k, specs)| {
            let body = body.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{k}"))
                .spawn(move || body(specs))
                .expect("spawn an engine thread")
        })
        .collect()
}

/// Wait for every engine thread.
pub(crate) fn join<R>(handles: Vec<JoinHandle<R>>) -> Result<Vec<R>> {
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow!("an engine thread panicked")))
        .collect()
}

/// Counters the progress display and the throughput sampler read while the storm runs.
#[derive(Default)]
pub struct Live {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub vanished: AtomicU64,
    pub bytes: AtomicU64,
    /// Set by the main thread to stop every engine early (Ctrl-C is not handled; this is for errors).
    pub abort: AtomicBool,
    /// Absent-server detection ([`crate::server_check`]).
    pub server: ServerSigns,
}

/// What the machines have heard from the server so far: enough for the main thread to tell
/// "no server there" from "a slow server" early.
#[derive(Default)]
pub struct ServerSigns {
    /// Microseconds after `t0` of the first TFTP request sent, plus one (0: none yet).
    pub first_request_us: AtomicU64,
    /// Transfers (phases) that got any datagram back from the server.
    pub answered: AtomicU64,
    /// Requests to the server's request port answered by an ICMP error (port, host or network
    /// unreachable) before any datagram came back.
    pub unreachable: AtomicU64,
    /// Set by the main thread when it stopped the run for want of a server: why.
    pub verdict: std::sync::Mutex<Option<String>>,
}

/// How a machine ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Short reason (the key in the failure table) and a detail for the first example.
    Failed {
        reason: String,
        detail: String,
    },
    /// Left on purpose in the middle of a download (`--vanish`).
    Vanished,
}

/// A struct of `u64` counters with `add`, which sums another one into it field by field (the
/// field list is written once, so a new counter cannot be left out of the sum).
macro_rules! summed_counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$doc:meta])* pub $field:ident: u64,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl $name {
            pub fn add(&mut self, o: &$name) {
                $(self.$field += o.$field;)*
            }
        }
    };
}

summed_counters! {
    /// Per-machine counters.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Counters {
        /// In-order DATA blocks delivered.
        pub blocks: u64,
        /// DATA blocks that arrived again (retransmitted or duplicated).
        pub duplicates: u64,
        /// DATA blocks ahead of the expected one (a gap: loss or reordering).
        pub out_of_order: u64,
        pub timeouts: u64,
        pub acks_sent: u64,
        /// Transfers (phases) started, probes included.
        pub requests: u64,
        /// Steps that ended in the expected "file not found".
        pub misses: u64,
        pub dropped_in: u64,
        pub dropped_acks: u64,
        pub duplicated: u64,
        pub reordered: u64,
        /// Packets from a port other than the transfer's (the client answers them with ERROR 5).
        pub foreign: u64,
        /// Packets dropped because a slow client's queue was full.
        pub overflow: u64,
    }
}

/// What one machine did.
#[derive(Clone, Debug)]
pub struct MachineResult {
    pub index: usize,
    pub outcome: Outcome,
    /// First packet, relative to `t0` (None: never started).
    pub started: Option<Duration>,
    pub ended: Duration,
    /// First in-order DATA block, relative to `t0`.
    pub first_data: Option<Duration>,
    pub bytes: u64,
    pub counters: Counters,
    /// The `--dhcp` phase (None without one).
    pub dhcp: Option<crate::dhcp::Outcome>,
}

impl MachineResult {
    /// Machine `index` at the end of the run (`end`), its times (`started`, `first_data`, `ended`)
    /// made relative to `t0`; with no outcome it was still running at the deadline. No bytes, no
    /// counters and no DHCP phase yet: the engine adds its own.
    pub(crate) fn at_end(
        index: usize,
        outcome: Option<Outcome>,
        [started, first_data, ended]: [Option<Instant>; 3],
        (t0, end): (Instant, Instant),
    ) -> MachineResult {
        MachineResult {
            index,
            outcome: outcome.unwrap_or_else(|| Outcome::Failed {
                reason: "deadline".into(),
                detail: "still running at the deadline".into(),
            }),
            started: started.map(|s| s - t0),
            ended: ended.unwrap_or(end) - t0,
            first_data: first_data.map(|s| s - t0),
            bytes: 0,
            counters: Counters::default(),
            dhcp: None,
        }
    }
}
