//! The `ringboot` binary: parse the command line, load the configuration, set up logging, run.
//!
//! `ringboot serve --root DIR` binds the listeners, logs `listening on ADDR[, ADDR...] (backend=...,
//! workers=N)` once every worker is ready, and runs until SIGINT or SIGTERM (exit code 0). A
//! usage error exits with code 2 (clap's message); a configuration that cannot be used exits
//! with code 1 and one line per problem (`ringboot: FILE:LINE:COLUMN: KEY: what is wrong`).
//!
//! At start, what the configuration names on this host is looked up (the DHCP interface's
//! address, the CPU count), the soft descriptor limit is raised to the hard one, and the transfer
//! caps are sized to it (see `ringboot::engine::workers::descriptor_budget`). A worker or service thread
//! (DHCP, multicast) that fails, panics or ends on its own stops the process: one ERROR line
//! naming it and why, then exit code 1 (a supervisor restarts it); nothing stops silently.

use anyhow::{Context, Result};
use ringboot::config::cli::{self, Cmd, TestFault};
use ringboot::config::{self, Config, LogConfig, LogFormat};
use ringboot::dhcp::DhcpMode;
use ringboot::engine::ctl::{self, CtlService, Signals};
use ringboot::engine::mcast;
use ringboot::engine::workers::{
    self as srv, AdmissionConfig, Fault, Server, ServerConfig, Shutdown,
};
use ringboot::engine::{Control, Flow};
use ringboot::store::{self, Store};
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{error, info, warn};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lines the log writer may hold before it drops (and counts) new ones.
const LOG_BUFFER_LINES: usize = 16_384;

/// Logging through a bounded, non-blocking buffer: workers never wait for stderr. When stderr is a
/// pipe nobody reads, lines beyond [`LOG_BUFFER_LINES`] are dropped and counted (see
/// [`report_dropped_log_lines`]) instead of stalling downloads. The guard flushes at exit.
fn init_logging(log: &LogConfig) -> Result<(WorkerGuard, ErrorCounter)> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).with_context(|| format!("bad RUST_LOG {s:?}"))?
        }
        _ => EnvFilter::new(match log.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("ringboot-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let r = match log.format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok((guard, dropped))
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

/// Run the server with a loaded configuration until a stop signal or a failure.
fn serve(
    mut config: Config,
    warnings: Vec<config::Problem>,
    fault: Option<TestFault>,
) -> Result<ExitCode> {
    let (_log_guard, log_dropped) = init_logging(&config.log)?;
    install_panic_hook();
    for w in &warnings {
        warn!("{w}");
    }
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
            warn!(limit = now, error = %e, "cannot raise the descriptor limit; it stays {now}");
            now
        }
    };
    resolve_host(&mut config)?;
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
    } = config;
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let store = Store::new(&root, store_options)
        .with_context(|| format!("cannot serve {}", root.display()))?;
    let admission = admission(&caps, nofile, workers, listen.len());
    info!(
        max_transfers = admission.max_transfers,
        max_per_client = admission.max_per_client,
        client_rate = admission.client_rate,
        "transfer caps: {} at once, {} per client address, {} new per second per address",
        admission.max_transfers,
        admission.max_per_client,
        admission.client_rate
    );
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
            fault: server_fault,
        },
        store.clone(),
    )?;
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    let n = server.workers();
    let shutdown = Shutdown::new().context("cannot create the shutdown eventfd")?;
    // The control engine: signals, the multicast service, the DHCP responder.
    let mut hosted = vec![CtlService::Signals(
        Signals::new(&[]).context("cannot create a signalfd")?,
    )];
    if mc.enabled() {
        let (handle, svc) = mcast::bind(mc, store).context("cannot start the multicast service")?;
        server.set_multicast(handle);
        hosted.push(CtlService::Multicast(Box::new(svc)));
    }
    if dhcp.mode != DhcpMode::Off {
        let mode = dhcp.mode;
        let responder = ringboot::dhcp::bind(dhcp).context("cannot start the DHCP responder")?;
        hosted.push(CtlService::Dhcp(Box::new(responder)));
        info!(mode = %mode, "DHCP responder started");
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
    let mut running = server.start(shutdown)?;
    info!(
        "listening on {} (backend={}, workers={})",
        addrs.join(", "),
        running.backend(),
        n
    );
    let mut failure = None;
    loop {
        match control_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Control::Stop(sig)) => {
                info!("received {sig}; shutting down");
                break;
            }
            // No other signal is forwarded yet (the place where SIGHUP reload plugs in).
            Ok(Control::Signal(_)) => {}
            Err(_) => {}
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
    if let Err(e) = ctl::block_signals(&[]) {
        eprintln!("ringboot: cannot block SIGINT/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let Cmd::Serve(args) = cli::parse().cmd;
    let (config, warnings) = match config::load(&args) {
        Ok(c) => c,
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("ringboot: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    match serve(config, warnings, args.fault) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
