//! The `ringboot` binary: parse the command line, load the configuration, set up logging, run.
//!
//! `ringboot serve --root DIR` checks the configuration on this host (`ringboot check` runs the
//! same checks and exits 0 or 1), binds the listeners, starts the metrics listener
//! (`--metrics`), drops root (`--user`), logs `listening on ADDR[, ADDR...] (backend=...,
//! workers=N)` once every worker is ready, and runs until SIGINT or SIGTERM: new requests are
//! refused, running transfers finish for `--drain-timeout`, exit code 0. SIGHUP reloads the
//! configuration (see `ringboot::service::reload`: DHCP boot rules and boot files, log level,
//! transfer options and caps, the MTFTP list and multicast session settings, for what follows)
//! without touching running transfers or sessions; an invalid one is refused with one line. The signals are blocked in every thread and taken by
//! the main thread with `sigtimedwait`. A usage error exits with code 2 (clap's message); a
//! configuration that cannot be used exits with code 1 and one line per problem
//! (`ringboot: FILE:LINE:COLUMN: KEY: what is wrong`).
//!
//! At start, what the configuration names on this host is looked up (the DHCP interface's
//! address, the CPU count), the soft descriptor limit is raised to the hard one, and the transfer
//! caps are sized to it (see `ringboot::engine::workers::descriptor_budget`). A worker or service thread
//! (DHCP, multicast) that fails, panics or ends on its own stops the process: one ERROR line
//! naming it and why, then exit code 1 (a supervisor restarts it); nothing stops silently.

use anyhow::{Context, Result};
use ringboot::config::cli::{self, Cmd, TestFault};
use ringboot::config::{self, Config, LogConfig};
use ringboot::dhcp::DhcpMode;
use ringboot::dhcp::{Hooks, PolicySlot};
use ringboot::engine::ctl::{self, CtlService, Signals};
use ringboot::engine::mcast;
use ringboot::engine::workers::{
    self as srv, AdmissionConfig, Fault, Server, ServerConfig, Shutdown,
};
use ringboot::engine::{Control, Flow};
use ringboot::metrics::{Info, Registry, Status};
use ringboot::service::privileges::{self, Cap};
use ringboot::service::{self, LevelHandle};
use ringboot::store::{self, Store};
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{error, info, warn};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lines the log writer may hold before it drops (and counts) new ones.
const LOG_BUFFER_LINES: usize = 16_384;

/// Logging through a bounded, non-blocking buffer: workers never wait for stderr. When stderr is a
/// pipe nobody reads, lines beyond [`LOG_BUFFER_LINES`] are dropped and counted (see
/// [`report_dropped_log_lines`]) instead of stalling downloads. The guard flushes at exit. No
/// colour unless stderr is a terminal (and `NO_COLOR` is unset); under journald no timestamps.
fn init_logging(log: &LogConfig) -> Result<(WorkerGuard, ErrorCounter, LevelHandle)> {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("ringboot-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let level = service::init_logging(log, writer).map_err(anyhow::Error::msg)?;
    Ok((guard, dropped, level))
}

/// Log how many lines the bounded log buffer dropped since the last report (called periodically).
/// The report goes through the same buffer, so while it is full the report itself is dropped:
/// `total` (since start) keeps the count that the first report to get through must give.
fn report_dropped_log_lines(counter: &ErrorCounter, reported: &mut usize) {
    let n = counter.dropped_lines();
    if n > *reported {
        tracing::warn!(
            dropped = n - *reported,
            total = n,
            "log output is not keeping up; lines were dropped"
        );
        *reported = n;
    }
}

/// Where the latest panic of each thread happened, for the line that reports it.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Threads whose end the main loop watches and reports itself (workers, services).
fn watched(thread: &str) -> bool {
    thread.starts_with("ringboot-w") || thread == ctl::THREAD || thread == "ringboot-fault"
}

/// Panics go to the log: a watched thread's panic is reported (with its place) by the line
/// that stops the server; any other thread's panic is logged here at ERROR.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if watched(&thread) {
            let mut p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|(t, _)| *t != thread);
            if p.len() < 64 {
                p.push((thread, place));
            }
        } else {
            error!(
                thread,
                place,
                "panic: {}",
                srv::panic_message(info.payload())
            );
        }
    }));
}

fn panic_place(thread: &str) -> String {
    let p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    p.iter()
        .find(|(t, _)| t == thread)
        .map(|(_, place)| format!(" at {place}"))
        .unwrap_or_default()
}

/// A service thread (DHCP responder, multicast service) whose end is watched.
struct Service {
    name: &'static str,
    thread: &'static str,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    /// Why it ended, if it has (joining it).
    fn ended(&mut self) -> Option<String> {
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return None;
        }
        let h = self.handle.take()?;
        Some(match h.join() {
            Ok(()) => format!("the {} stopped unexpectedly", self.name),
            Err(p) => format!(
                "the {} panicked{}: {}",
                self.name,
                panic_place(self.thread),
                srv::panic_message(&*p)
            ),
        })
    }
}

/// One line with the transfer caps `a` (at start, and after a reload under `what`).
fn log_caps(what: &str, a: &AdmissionConfig) {
    info!(
        max_transfers = a.max_transfers,
        max_per_client = a.max_per_client,
        client_rate = a.client_rate,
        "{what}: {} at once, {} per client address, {} new per second per address",
        a.max_transfers,
        a.max_per_client,
        a.client_rate
    );
}

/// The transfer caps: the configured ones, or defaults sized to the descriptor limit; caps
/// above what the descriptors allow are lowered (with a warning), so an overload is refused with
/// an ERROR rather than failing with `EMFILE` everywhere.
fn admission(caps: &config::Caps, nofile: u64, workers: usize, listen: usize) -> AdmissionConfig {
    let budget = srv::descriptor_budget(nofile, workers, listen);
    if budget < 64 {
        warn!(
            nofile,
            budget,
            "the descriptor limit {nofile} leaves room for only {budget} transfers with {workers} workers; raise it (LimitNOFILE= / ulimit -n) or use fewer --workers"
        );
    }
    let mut a = AdmissionConfig::for_descriptors(budget);
    if let Some(m) = caps.max_transfers {
        if m as u64 > budget {
            warn!(
                max_transfers = m,
                budget,
                nofile,
                "--max-transfers {m} is more than the descriptor limit {nofile} allows; using {budget} (raise LimitNOFILE / ulimit -n to allow more)"
            );
            a.max_transfers = (budget as usize).max(1);
        } else {
            a.max_transfers = m;
        }
        a.max_per_client = (a.max_transfers / 8).clamp(1, 64);
    }
    if let Some(p) = caps.max_per_client {
        a.max_per_client = p.min(a.max_transfers);
    }
    a.client_rate = caps.client_rate;
    a
}

/// Look up what the configuration names on this host (I/O, once at start; `ringboot check` will
/// run the same): the DHCP interface's address and mask.
fn resolve_host(config: &mut Config) -> Result<()> {
    let dhcp = &mut config.dhcp;
    if dhcp.mode == DhcpMode::Off {
        return Ok(());
    }
    let ifs = if dhcp.needs_addresses() {
        ringboot::sys::iface::interfaces().context("listing network interfaces (getifaddrs)")?
    } else {
        Vec::new()
    };
    dhcp.resolve_addresses(&ifs)?;
    Ok(())
}

/// Every problem of `config` on this host: (errors, warnings), one line each.
fn preflight(config: &mut Config) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    if let Err(e) = resolve_host(config) {
        errors.push(format!("{e:#}"));
    }
    let (e, w) = service::check::host_problems(config);
    errors.extend(e.iter().map(ToString::to_string));
    (errors, w.iter().map(ToString::to_string).collect())
}

/// `ringboot check`: every validation, one line per problem; exit code 0 or 1.
fn check(args: &cli::ServeArgs) -> ExitCode {
    let (mut config, warnings) = match config::load(args) {
        Ok(c) => c,
        Err(errors) => {
            for p in &errors.0 {
                println!("error: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let (errors, host_warnings) = preflight(&mut config);
    for w in warnings
        .iter()
        .map(ToString::to_string)
        .chain(host_warnings)
    {
        println!("warning: {w}");
    }
    for e in &errors {
        println!("error: {e}");
    }
    if config.dhcp.mode == DhcpMode::Full && errors.is_empty() {
        if let Err(e) = service::lock_leases(&config.dhcp.lease_path()) {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if errors.is_empty() {
        println!("ok: the configuration can be served");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a reload may change in a running server.
struct Live {
    args: cli::ServeArgs,
    config: Config,
    level: LevelHandle,
    dhcp: Arc<PolicySlot>,
    /// The workers' shared admission (the transfer caps a reload changes), and what its caps
    /// are sized against: the descriptor limit, the workers, the listen addresses.
    admission: Arc<ringboot::proto::tftp::admit::Admission>,
    /// The transfer options the workers take for new requests.
    settings: Option<Arc<ringboot::engine::settings::Settings>>,
    /// The multicast service, when it runs.
    multicast: Option<mcast::McHandle>,
    sizing: (u64, usize, usize),
}

/// SIGHUP: read the configuration again, validate it as at start, and hand over what can change
/// while running ([`service::reload::plan`] says what: DHCP boot rules and boot files, log
/// level, transfer options and caps for new requests, the MTFTP list and multicast session
/// settings for new sessions, the drain timeout); the rest is named as waiting for a restart.
/// Running transfers and multicast sessions are not touched. An invalid configuration is
/// refused with one line; the old one keeps running.
fn reload(live: &mut Live) {
    let (mut next, warnings) = match config::load(&live.args) {
        Ok(c) => c,
        Err(errors) => {
            let all: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            error!(reason = %all.join("; "), "reload refused: the configuration is invalid; the running one stays");
            return;
        }
    };
    let (errors, host_warnings) = preflight(&mut next);
    if !errors.is_empty() {
        error!(reason = %errors.join("; "), "reload refused: the configuration is invalid; the running one stays");
        return;
    }
    for w in warnings
        .iter()
        .map(ToString::to_string)
        .chain(host_warnings)
    {
        warn!("{w}");
    }
    let old = &live.config;
    let plan = service::reload::plan(old, &next, live.multicast.is_some());
    let mut applied = Vec::new();
    if plan.transfer_options {
        if let Some(s) = &live.settings {
            let l = next.limits;
            s.replace(ringboot::engine::settings::Tunables {
                limits: l,
                min_rto: next.min_rto,
            });
            info!(
                max_blksize = l.max_blksize.get(),
                max_window = l.max_window.get(),
                max_window_bytes = l.max_window_bytes,
                timeout_ms = l.timeout.as_millis() as u64,
                retries = l.retries,
                min_rto_ms = next.min_rto.as_millis() as u64,
                "reload: transfer options for new requests"
            );
            applied.push("transfer options");
        }
    }
    if plan.caps {
        let (nofile, workers, listen) = live.sizing;
        let want = admission(&next.caps, nofile, workers, listen);
        let now = live.admission.reconfigure(want);
        if let Some(s) = &live.settings {
            s.touch();
        }
        log_caps("reload: transfer caps for new requests", &now);
        applied.push("transfer caps");
    }
    if plan.multicast {
        if let Some(mc) = &live.multicast {
            mc.reload(old.multicast.with_session_settings(&next.multicast));
            applied.push("multicast (MTFTP files, session settings)");
        }
    }
    if plan.dhcp && old.dhcp.mode != DhcpMode::Off {
        live.dhcp
            .replace(ringboot::proto::dhcp::policy::Policy::from(&next.dhcp));
        applied.push("DHCP boot rules and files");
    }
    if plan.log_level {
        match service::filter(next.log.verbose) {
            Ok(f) => match live.level.reload(f) {
                Ok(()) => applied.push("log level"),
                Err(e) => warn!(reason = %e, "the log level could not be changed"),
            },
            Err(e) => warn!(reason = %e, "the log level could not be changed"),
        }
    }
    if plan.drain {
        applied.push("drain timeout");
    }
    if !plan.restart.is_empty() {
        warn!(
            settings = %plan.restart.join(", "),
            "reload: these settings changed and take effect at the next restart"
        );
    }
    // What waits for a restart stays as it runs (and is named again by the next reload).
    let mut keep = next;
    keep.root = old.root.clone();
    keep.listen = old.listen.clone();
    keep.workers = old.workers;
    keep.backend = old.backend;
    keep.port_range = old.port_range;
    keep.store = old.store.clone();
    keep.dhcp.mode = old.dhcp.mode;
    keep.dhcp.interface = old.dhcp.interface.clone();
    keep.service.metrics = old.service.metrics;
    keep.service.user = old.service.user.clone();
    keep.service.group = old.service.group.clone();
    keep.multicast = if plan.multicast {
        old.multicast.with_session_settings(&keep.multicast)
    } else {
        old.multicast.clone()
    };
    let applied = if applied.is_empty() {
        "nothing changed".to_string()
    } else {
        applied.join(", ")
    };
    info!(applied = %applied, "configuration reloaded ({applied})");
    live.config = keep;
}

/// Run the server with a loaded configuration until a stop signal or a failure.
fn serve(
    args: cli::ServeArgs,
    mut config: Config,
    warnings: Vec<config::Problem>,
    fault: Option<TestFault>,
) -> Result<ExitCode> {
    let (_log_guard, log_dropped, level) = init_logging(&config.log)?;
    install_panic_hook();
    for w in &warnings {
        warn!("{w}");
    }
    let (errors, host_warnings) = preflight(&mut config);
    for w in &host_warnings {
        warn!("{w}");
    }
    if !errors.is_empty() {
        // One ERROR line per problem, then exit code 1 (what `ringboot check` would say).
        for e in &errors {
            error!("{e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let _lease_lock = if config.dhcp.mode == DhcpMode::Full {
        Some(service::lock_leases(&config.dhcp.lease_path()).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let mut log_dropped_reported = 0;
    let nofile = match srv::raise_descriptor_limit() {
        Ok((before, after)) => {
            if after > before {
                info!(
                    before,
                    after, "descriptor limit raised from {before} to {after}"
                );
            } else {
                info!(limit = after, "descriptor limit {after}");
            }
            after
        }
        Err(e) => {
            let now = srv::descriptor_limit().unwrap_or(1024);
            warn!(limit = now, reason = %e, "cannot raise the descriptor limit; it stays {now}");
            now
        }
    };
    let live_config = config.clone();
    let Config {
        root,
        listen,
        workers,
        limits,
        min_rto,
        port_range,
        backend,
        caps,
        store: store_options,
        multicast: mc,
        dhcp,
        log: _,
        service: svc,
        rate_limits,
    } = config;
    // Checked to exist by the preflight; an interface gone since is an error too.
    let mut caps_by_index = Vec::new();
    for r in &rate_limits {
        let index = ringboot::sys::iface::index_of(&r.iface)
            .with_context(|| format!("--rate-limit: there is no interface {:?}", r.iface))?;
        // Wire bytes: the controller counts what the interface carries, headers included.
        caps_by_index.push((index, r.rate));
        info!(interface = r.iface.as_str(), rate = %r.rate, "rate limit: DATA out of {} paced at {} at most", r.iface, r.rate);
    }
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let store = Store::new(&root, store_options)
        .with_context(|| format!("cannot serve {}", root.display()))?;
    let sizing = (nofile, workers, listen.len());
    let admission = admission(&caps, nofile, workers, listen.len());
    let ceiling = srv::descriptor_budget(nofile, workers, listen.len()).max(1) as usize;
    log_caps("transfer caps", &admission);
    let server_fault = match fault {
        Some(TestFault::WorkerPanic) => Some(Fault::WorkerPanic),
        Some(TestFault::WorkerError) => Some(Fault::WorkerError),
        _ => None,
    };
    let mut server = Server::bind(
        ServerConfig {
            listen,
            workers,
            limits,
            min_rto,
            port_range,
            backend,
            admission,
            max_transfers_ceiling: ceiling.max(admission.max_transfers),
            fault: server_fault,
            rate_limits: caps_by_index,
        },
        store.clone(),
    )?;
    let registry = Arc::new(Registry::new(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: String::new(),
        workers,
    }));
    let status = Arc::new(Status::new(registry.clone(), std::time::Instant::now()));
    server.set_metrics(status.clone());
    let draining = Arc::new(AtomicBool::new(false));
    server.set_drain(draining.clone());
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    let n = server.workers();
    let tftp_admission = server.admission();
    let tftp_settings = server.settings();
    let mut mc_handle = None;
    let shutdown = Shutdown::new().context("cannot create the shutdown eventfd")?;
    // The control engine: signals, the multicast service, the DHCP responder.
    let mut hosted = vec![CtlService::Signals(
        Signals::new(&[libc::SIGHUP]).context("cannot create a signalfd")?,
    )];
    if mc.enabled() {
        let (handle, mut mc_svc) = mcast::bind_with(mc, store, Some(status.clone()))
            .context("cannot start the multicast service")?;
        // Sessions and unicast transfers share each interface's controller (and its cap).
        mc_svc.share_uplink(&server);
        mc_handle = Some(handle.clone());
        server.set_multicast(handle);
        hosted.push(CtlService::Multicast(Box::new(mc_svc)));
    }
    let dhcp_reload = Arc::new(PolicySlot::default());
    let dhcp_on = dhcp.mode != DhcpMode::Off;
    if dhcp_on {
        let mode = dhcp.mode;
        let hooks = Hooks {
            status: Some(status.clone()),
            reload: dhcp_reload.clone(),
        };
        let responder =
            ringboot::dhcp::bind_with(dhcp, hooks).context("cannot start the DHCP responder")?;
        hosted.push(CtlService::Dhcp(Box::new(responder)));
        info!(mode = %mode, "DHCP responder started");
    }
    if let Some(addr) = svc.metrics {
        let http = ringboot::metrics::serve::HttpService::bind(addr, status.clone())
            .with_context(|| format!("cannot listen for metrics on {addr} (--metrics)"))?;
        let bound = http.local_addr();
        info!(addr = %bound, "metrics on http://{bound}/metrics, status page on http://{bound}/");
        hosted.push(CtlService::Http(Box::new(http)));
    }
    let (controls, control_rx) = std::sync::mpsc::channel();
    // Every control goes to this thread, which decides (the hook for reload and the like).
    let mut ctl = ctl::spawn(hosted, move |c| {
        let _ = controls.send(c);
        Flow::Continue
    })
    .context("cannot start the control engine")?;
    let mut services = Vec::new();
    if let Some(f @ (TestFault::ServiceExit | TestFault::ServicePanic)) = fault {
        let t = std::thread::Builder::new()
            .name("ringboot-fault".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                if f == TestFault::ServicePanic {
                    panic!("injected fault (--fault service-panic)");
                }
            })?;
        services.push(Service {
            name: "test service (--fault)",
            thread: "ringboot-fault",
            handle: Some(t),
        });
    }
    let mut running = server.start(shutdown.clone())?;
    registry.set_info(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: running.backend().to_string(),
        workers: n,
    });
    if let Some(user) = &svc.user {
        // Every socket is bound: root is no longer needed. The main thread keeps what a
        // DHCP socket opened again would need.
        let keep: &[Cap] = if dhcp_on {
            &[Cap::NetBindService, Cap::NetRaw]
        } else {
            &[]
        };
        match privileges::drop_to(user, svc.group.as_deref(), keep) {
            Ok(d) => {
                info!(user = %user, uid = d.uid, gid = d.gid, "running as {user} (uid {}, gid {})", d.uid, d.gid)
            }
            Err(e) => {
                error!(reason = %e, "cannot drop root; stopping");
                shutdown.trigger();
                let _ = running.join();
                let _ = ctl.join();
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    info!(
        "listening on {} (backend={}, workers={})",
        addrs.join(", "),
        running.backend(),
        n
    );
    let mut live = Live {
        args,
        config: live_config,
        level,
        dhcp: dhcp_reload,
        admission: tftp_admission,
        settings: tftp_settings,
        multicast: mc_handle,
        sizing,
    };
    let mut failure = None;
    let mut drain_until: Option<std::time::Instant> = None;
    loop {
        match control_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Control::Signal(libc::SIGHUP)) => {
                info!("received SIGHUP; reloading the configuration");
                reload(&mut live);
            }
            Ok(Control::Stop(name)) if drain_until.is_none() => {
                let active = registry.totals().active();
                let drain = live.config.service.drain;
                if active == 0 || drain.is_zero() {
                    info!("received {name}; shutting down");
                    break;
                }
                info!(
                    active,
                    drain_timeout_s = drain.as_secs(),
                    "received {name}; refusing new requests, letting {active} running transfers finish (at most {} s; the same signal again stops at once)",
                    drain.as_secs()
                );
                draining.store(true, Ordering::SeqCst);
                drain_until = Some(std::time::Instant::now() + drain);
            }
            Ok(Control::Stop(_)) => {
                info!("received a second stop signal; shutting down now");
                break;
            }
            Ok(Control::Signal(_)) | Err(_) => {}
        }
        if let Some(t) = drain_until {
            let active = registry.totals().active();
            if active == 0 {
                info!("every transfer finished; shutting down");
                break;
            }
            if std::time::Instant::now() >= t {
                warn!(active, "drain timeout reached; ending {active} transfers");
                break;
            }
        }
        if let Some(e) = running.poll_failure() {
            let place = match &e {
                srv::ServerError::Panicked(w, _) => panic_place(&format!("ringboot-w{w}")),
                _ => String::new(),
            };
            failure = Some(format!("{e}{place}"));
            break;
        }
        if let Some(end) = ctl.ended() {
            failure = Some(match end {
                Ok(Ok(())) => "the control engine stopped unexpectedly".to_string(),
                Ok(Err(f)) => f.to_string(),
                Err(p) => format!(
                    "the control engine panicked{}: {}",
                    panic_place(ctl::THREAD),
                    srv::panic_message(&*p)
                ),
            });
            break;
        }
        if let Some(why) = services.iter_mut().find_map(Service::ended) {
            failure = Some(why);
            break;
        }
        report_dropped_log_lines(&log_dropped, &mut log_dropped_reported);
    }
    if let Some(why) = &failure {
        error!("{why}; stopping ringboot (exit code 1)");
    }
    let joined = running.join();
    // After the workers: the multicast service takes no more hand-offs, DHCP saves its leases.
    let _ = ctl.join();
    for s in &mut services {
        if let Some(h) = s.handle.take() {
            let _ = h.join();
        }
    }
    if failure.is_some() {
        return Ok(ExitCode::FAILURE);
    }
    joined?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the masks.
    store::block_lease_signal();
    if let Err(e) = ctl::block_signals(&[libc::SIGHUP]) {
        eprintln!("ringboot: cannot block SIGINT/SIGTERM/SIGHUP: {e}");
        return ExitCode::FAILURE;
    }
    let args = match cli::parse().cmd {
        Cmd::Serve(args) => args,
        Cmd::Check(args) => return check(&args),
    };
    let (config, warnings) = match config::load(&args) {
        Ok(c) => c,
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("ringboot: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let fault = args.fault;
    match serve(args, config, warnings, fault) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
