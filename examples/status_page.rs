//! Serve the status page with a fake, changing boot storm, for a browser.
//!
//! ```text
//! cargo run --example status_page [-- --port 8080 --seconds 600]
//! ```
//! prints the URL and serves `/`, `/status.json` and `/metrics` on 127.0.0.1 until `--seconds`
//! have passed (600 by default). Nothing real boots: four fake workers run 20-40 transfers of
//! WinPE and Linux files, a PXE MTFTP session has a dozen members, and DHCP decisions come every
//! few seconds; five minutes of history are made up at start so the graph has a shape.
//!
//! This is a test driver, not the server's: a blocking std `TcpListener` and a thread per
//! connection drive the same sans-IO [`Connection`] and [`Site`] that the engine will. The test
//! `tests/status_page.rs` includes this file to serve the page to headless Chromium.

use ringboot::metrics::http::{Connection, Limits};
use ringboot::metrics::{
    DhcpMode, DhcpType, DhcpView, Info, McProtocol, MemberView, Outcome, Recorder, RefuseReason,
    Registry, SessionView, Site, Status, TransferPublisher, TransferView,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const FILES: &[(&str, u64)] = &[
    ("boot/x64/sources/boot.wim", 412_000_000),
    ("EFI/Microsoft/Boot/bootmgfw.efi", 1_530_000),
    ("boot/BCD", 16_384),
    ("boot/boot.sdi", 3_170_304),
    ("ipxe/snponly.efi", 212_000),
    ("linux/debian-12/vmlinuz-6.1.0-18-amd64", 8_110_000),
    ("linux/debian-12/initrd.img-6.1.0-18-amd64", 61_200_000),
    ("pxelinux.0", 46_000),
];

/// A small deterministic PRNG (xorshift64*), enough for fake traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct FakeTransfer {
    id: u64,
    client: SocketAddr,
    file: &'static str,
    size: u64,
    done: u64,
    rate: u64,
    started: Instant,
    acked_first: bool,
}

struct FakeWorker {
    recorder: Recorder,
    publisher: TransferPublisher,
    transfers: Vec<FakeTransfer>,
}

/// The fake storm: call [`World::step`] with increasing instants.
struct World {
    status: Arc<Status>,
    workers: Vec<FakeWorker>,
    ctl: Recorder,
    mc: ringboot::metrics::McPublisher,
    rng: Rng,
    next_id: u64,
    mc_started: Instant,
    mc_position: u64,
    mc_sent: u64,
    leases: u64,
    last: Instant,
    begin: Instant,
    /// Whether to add a transfer and a DHCP decision with markup in their names.
    hostile: bool,
}

/// A file name and vendor class a hostile client could send: the page must show them as text.
pub const HOSTILE_NAME: &str = "<img src=x onerror=\"document.title='pwned'\">\u{1b}[31m.efi";

impl World {
    fn new(status: Arc<Status>, begin: Instant, hostile: bool) -> World {
        let workers = (0..4)
            .map(|_| FakeWorker {
                recorder: status.registry().recorder(),
                publisher: status.transfer_publisher(),
                transfers: Vec::new(),
            })
            .collect();
        World {
            ctl: status.registry().recorder(),
            mc: status.multicast_publisher(),
            status,
            workers,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            next_id: 1,
            mc_started: begin,
            mc_position: 0,
            mc_sent: 0,
            leases: 0,
            last: begin,
            begin,
            hostile,
        }
    }

    /// How many transfers the storm wants at `now`: a slow wave between 12 and 40.
    fn target(&self, now: Instant) -> usize {
        let t = now.saturating_duration_since(self.begin).as_secs_f64();
        (26.0 + 14.0 * (t / 47.0).sin() + 3.0 * (t / 11.0).cos()) as usize
    }

    fn step(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let running: usize = self.workers.iter().map(|w| w.transfers.len()).sum();
        let want = self.target(now);
        for _ in running..want {
            if self.rng.below(4) != 0 {
                continue; // not all at once
            }
            let (file, size) = FILES[self.rng.below(FILES.len() as u64) as usize];
            let w = self.rng.below(self.workers.len() as u64) as usize;
            let host = 10 + self.rng.below(240) as u8;
            let port = 1024 + self.rng.below(60_000) as u16;
            let id = self.next_id;
            self.next_id += 1;
            let worker = &mut self.workers[w];
            if self.rng.below(40) == 0 {
                worker.recorder.refused(RefuseReason::NotFound);
                continue;
            }
            worker.recorder.transfer_started();
            worker.transfers.push(FakeTransfer {
                id,
                client: SocketAddr::from(([10, 20, 0, host], port)),
                file,
                size,
                done: 0,
                rate: 4_000_000 + self.rng.below(9_000_000),
                started: now,
                acked_first: false,
            });
        }
        for worker in &mut self.workers {
            let rec = &worker.recorder;
            worker.transfers.retain_mut(|t| {
                let step = ((t.rate as f64) * dt) as u64;
                let before = t.done;
                t.done = (t.done + step).min(t.size);
                let bytes = t.done - before;
                rec.data_sent(bytes.div_ceil(1432), bytes);
                if !t.acked_first && t.done > 0 {
                    t.acked_first = true;
                    rec.first_block(Duration::from_micros(1500 + (t.id % 7) * 900));
                }
                if t.id % 97 == 0 && t.done > t.size / 3 {
                    rec.timeout();
                    rec.blocks_resent(4);
                }
                if t.done >= t.size {
                    let took = now.saturating_duration_since(t.started);
                    let outcome = if t.id % 53 == 0 {
                        Outcome::Timeout
                    } else {
                        Outcome::Completed
                    };
                    rec.transfer_ended(outcome, took, t.size);
                    return false;
                }
                true
            });
            if worker.publisher.due(now) {
                let mut batch = worker.publisher.begin(now);
                if self.hostile {
                    batch.push(&TransferView {
                        id: 0,
                        client: SocketAddr::from(([10, 20, 0, 9], 6666)),
                        file: HOSTILE_NAME.as_bytes(),
                        bytes_done: 1,
                        size: Some(2),
                        started: self.begin,
                    });
                }
                for t in &worker.transfers {
                    batch.push(&TransferView {
                        id: t.id,
                        client: t.client,
                        file: t.file.as_bytes(),
                        bytes_done: t.done,
                        size: Some(t.size),
                        started: t.started,
                    });
                }
            }
        }
        // DHCP: a decision every couple of seconds.
        if self.rng.below(1000) < (dt * 450.0) as u64 {
            let mac = [
                0x52,
                0x54,
                0x00,
                self.rng.below(256) as u8,
                self.rng.below(256) as u8,
                self.rng.below(256) as u8,
            ];
            let uefi = self.rng.below(3) != 0;
            let arch: u16 = if uefi { 7 } else { 0 };
            let vendor = if uefi {
                "PXEClient:Arch:00007:UNDI:003016"
            } else {
                "PXEClient:Arch:00000:UNDI:002001"
            };
            let boot = if uefi {
                "ipxe/snponly.efi"
            } else {
                "pxelinux.0"
            };
            self.leases = (self.leases + 1).min(180);
            let ip = Ipv4Addr::new(10, 20, 0, 10 + (self.leases as u8));
            for message in [DhcpType::Discover, DhcpType::Offer] {
                self.ctl.dhcp_message(
                    message,
                    DhcpMode::Full,
                    ringboot::metrics::ArchClass::from_option93(Some(arch)),
                );
            }
            self.ctl.set_leases(self.leases, 200 - self.leases);
            self.status.record_dhcp(
                now,
                &DhcpView {
                    message: DhcpType::Offer,
                    mode: DhcpMode::Full,
                    mac: &mac,
                    ip: Some(ip),
                    arch: Some(arch),
                    vendor_class: vendor.as_bytes(),
                    boot: boot.as_bytes(),
                },
            );
        }
        // One PXE MTFTP session for the big image, twelve members.
        let (file, size) = FILES[0];
        let mc_rate = 11_000_000.0;
        let sent = (mc_rate * dt) as u64;
        self.mc_position += sent;
        if self.mc_position >= size {
            self.mc_position = 0;
            self.mc_started = now;
            self.mc_sent = 0;
        }
        self.mc_sent += sent;
        self.ctl.multicast_sent(McProtocol::PxeMtftp, sent);
        self.ctl.set_multicast(McProtocol::PxeMtftp, 1, 12);
        if self.mc.due(now) {
            let mut batch = self.mc.begin(now);
            batch.session(&SessionView {
                id: 1,
                protocol: McProtocol::PxeMtftp,
                file: file.as_bytes(),
                group: SocketAddr::from(([224, 0, 1, 1], 1758)),
                size,
                position: self.mc_position,
                bytes_sent: self.mc_sent,
                members: 12,
                started: self.mc_started,
            });
            for m in 0..12u8 {
                batch.member(MemberView {
                    addr: SocketAddr::from(([10, 20, 1, 20 + m], 1759)),
                    master: m == 0,
                });
            }
        }
        self.status.tick(now);
    }
}

/// A running demo server.
pub struct Demo {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Demo {
    /// Stop serving and feeding; waits for the threads (at most about a second).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Start the fake storm and serve it on 127.0.0.1:`port` (0: a free port). `hostile`: one
/// transfer and one DHCP decision carry markup ([`HOSTILE_NAME`]) in their strings.
pub fn start(port: u16, hostile: bool) -> std::io::Result<Demo> {
    let now = Instant::now();
    let history = Duration::from_secs(300);
    let begin = now.checked_sub(history).unwrap_or(now);
    let registry = Arc::new(Registry::new(Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: "io_uring".to_owned(),
        workers: 4,
    }));
    let status = Arc::new(Status::new(Arc::clone(&registry), begin));
    let mut world = World::new(Arc::clone(&status), begin, hostile);
    // Five made-up minutes, one step a second, so the graph has a history.
    let mut t = begin;
    while t + Duration::from_secs(1) < now {
        t += Duration::from_secs(1);
        world.step(t);
    }
    if hostile {
        status.record_dhcp(
            now,
            &DhcpView {
                message: DhcpType::Ack,
                mode: DhcpMode::Full,
                mac: &[0xde, 0xad, 0xbe, 0xef, 0, 1],
                ip: None,
                arch: Some(4242),
                vendor_class: b"<script>document.title='pwned'</script>",
                boot: HOSTILE_NAME.as_bytes(),
            },
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                world.step(Instant::now());
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let server = {
        let stop = Arc::clone(&stop);
        let site = Site::new(status);
        thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let site = site.clone();
                        let stop = Arc::clone(&stop);
                        conns.push(thread::spawn(move || serve(stream, site, &stop)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
                conns.retain(|c: &thread::JoinHandle<()>| !c.is_finished());
            }
            for c in conns {
                let _ = c.join();
            }
        })
    };
    Ok(Demo {
        addr,
        stop,
        threads: vec![feeder, server],
    })
}

/// Drive one connection with blocking reads (a 200 ms read timeout stands for the timer).
fn serve(mut stream: TcpStream, mut site: Site, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut conn = Connection::new(Instant::now(), Limits::default());
    let mut buf = [0u8; 4096];
    while !conn.is_closed() && !stop.load(Ordering::Relaxed) {
        conn.serve(Instant::now(), &mut site);
        while let Some(bytes) = conn.poll_transmit() {
            match stream.write(bytes) {
                Ok(n) => conn.handle_sent(Instant::now(), n),
                Err(_) => return,
            }
            conn.serve(Instant::now(), &mut site);
        }
        if conn.is_closed() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => conn.handle_eof(Instant::now()),
            Ok(n) => conn.handle_bytes(Instant::now(), &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                conn.handle_timeout(Instant::now());
            }
            Err(_) => return,
        }
    }
}

#[allow(dead_code)] // included by tests/status_page.rs, which has its own main
fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut seconds = 600u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--port", Some(v)) if v <= u64::from(u16::MAX) => port = v as u16,
            ("--seconds", Some(v)) => seconds = v,
            _ => {
                eprintln!("usage: status_page [--port PORT] [--seconds N]");
                std::process::exit(2);
            }
        }
    }
    let demo = start(port, false)?;
    println!("status page: http://{}/ (for {seconds} s)", demo.addr);
    thread::sleep(Duration::from_secs(seconds));
    demo.stop();
    Ok(())
}
