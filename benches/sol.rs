//! Speed of light: the syscalls a TFTP server makes for a boot storm, with no protocol at all.
//!
//! `cargo bench --bench sol -- --profile uefi --clients 200 --size-mib 64`
//!
//! N connected UDP socket pairs on loopback. The "server" thread does what ringboot's worker
//! does per window and nothing else: one receive per ACK, then one `sendmsg` per window carrying
//! the window's blocks as a GSO train (`UDP_SEGMENT = 4 + blksize`; a single plain datagram for a
//! lockstep window), two iovecs per block (a 4-byte header and a slice of a shared in-memory
//! "file", so no byte is copied in user space), woken by `epoll_wait`. The "client" thread reads
//! the datagrams (`recvmmsg`, 64 at a time) and sends one 4-byte ACK per window, like a firmware.
//! No block numbers are checked, no timers, no loss handling, no options.
//!
//! What it prints is the floor of this machine for the profile: the server thread's CPU seconds
//! per GB of payload (`getrusage(RUSAGE_THREAD)`), to divide ringboot's by in the same run
//! (`benches/sol.sh` runs both). ringboot submits its receives and sends through io_uring, which
//! saves the syscall entries this program pays, so a multiple below 1 is possible; above 1 is the
//! cost of everything the protocol adds (parsing, the state machine, timers, per-transfer
//! sockets, logging) plus what the loadtest steals from the same cores.
//!
//! Output: one human line on stderr and one `key=value` line on stdout (for scripts).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

struct Args {
    profile: String,
    clients: usize,
    size: u64,
    blksize: usize,
    window: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: sol [--profile uefi|ipxe|bios|custom] [--clients N] [--size-mib M] [--blksize B] \
         [--windowsize W]\n  uefi: blksize 1468 window 4; ipxe: 1432 lockstep; bios: 1456 lockstep"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        profile: "uefi".into(),
        clients: 200,
        size: 64 << 20,
        blksize: 0,
        window: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--profile" => a.profile = v(),
            "--clients" => a.clients = v().parse().unwrap_or_else(|_| usage()),
            "--size-mib" => a.size = v().parse::<u64>().unwrap_or_else(|_| usage()) << 20,
            "--blksize" => a.blksize = v().parse().unwrap_or_else(|_| usage()),
            "--windowsize" => a.window = v().parse().unwrap_or_else(|_| usage()),
            // cargo bench passes --bench; ignore it.
            "--bench" => {}
            _ => usage(),
        }
    }
    let (b, w) = match a.profile.as_str() {
        "uefi" => (1468, 4),
        "ipxe" => (1432, 1),
        "bios" => (1456, 1),
        "custom" => (1468, 16),
        _ => usage(),
    };
    if a.blksize == 0 {
        a.blksize = b;
    }
    if a.window == 0 {
        a.window = w;
    }
    if a.clients == 0 || a.blksize < 8 || a.blksize > 8192 || a.window == 0 || a.window > 64 {
        usage();
    }
    a
}

fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// Wait (at most a second) for input on `ep`; the indexes of the ready descriptors.
fn ready(
    ep: i32,
    events: &mut [libc::epoll_event],
) -> io::Result<impl Iterator<Item = usize> + '_> {
    // SAFETY: epoll_wait into our buffer.
    let n = check(
        unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) },
        "epoll_wait",
    )?;
    Ok(events[..n as usize].iter().map(|ev| ev.u64 as usize))
}

/// An epoll instance watching `fds` for input, with the fd's index as its token.
fn epoll(fds: &[i32]) -> io::Result<i32> {
    // SAFETY: plain epoll calls on descriptors we own.
    let ep = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    for (i, &fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        check(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            "epoll_ctl",
        )?;
    }
    Ok(ep)
}

fn set_buf(fd: i32, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt with an int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &bytes as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Server side of one pair.
struct Flow {
    /// Next byte offset of the file to send.
    offset: u64,
    /// Block number of the next block (wraps; never checked by anyone).
    block: u16,
    done: bool,
}

const CMSG_SPACE: usize = 32;

/// The server's send buffers, allocated once: a header and two iovecs per block of a window.
struct Tx {
    headers: Vec<[u8; 4]>,
    iov: Vec<libc::iovec>,
    cmsg: [u8; CMSG_SPACE],
}

/// What is served: a shared in-memory file (cycled through) standing for `size` bytes.
struct Content<'a> {
    file: &'a [u8],
    size: u64,
    blksize: usize,
}

/// One window: `count` blocks from `offset`, as one sendmsg (GSO when more than one block).
fn send_window(
    fd: i32,
    c: &Content<'_>,
    flow: &mut Flow,
    count: usize,
    tx: &mut Tx,
) -> io::Result<u64> {
    let (file, size, blksize) = (c.file, c.size, c.blksize);
    let (headers, iov, cmsg) = (&mut tx.headers, &mut tx.iov, &mut tx.cmsg);
    let mut sent = 0u64;
    let mut n = 0;
    for i in 0..count {
        if flow.offset > size {
            break;
        }
        let len = (size - flow.offset).min(blksize as u64) as usize;
        flow.block = flow.block.wrapping_add(1);
        headers[i] = [0, 3, (flow.block >> 8) as u8, flow.block as u8];
        let at = (flow.offset % (file.len() as u64 - blksize as u64)) as usize;
        iov[2 * i] = libc::iovec {
            iov_base: headers[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: 4,
        };
        iov[2 * i + 1] = libc::iovec {
            iov_base: file[at..].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        n += 1;
        sent += len as u64;
        flow.offset += len as u64;
        if len < blksize {
            // The short last block ends the transfer (and a GSO train: only the last segment
            // may be short).
            flow.offset = size + 1;
            break;
        }
    }
    if n == 0 {
        flow.done = true;
        return Ok(0);
    }
    // SAFETY: a msghdr over iovecs and a control buffer that live across the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2 * n;
    if n > 1 {
        unsafe {
            msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(2) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            let seg = (4 + blksize) as u16;
            std::ptr::copy_nonoverlapping(seg.to_ne_bytes().as_ptr(), libc::CMSG_DATA(c), 2);
        }
    }
    check(
        unsafe { libc::sendmsg(fd, &msg, 0) } as libc::c_int,
        "sendmsg",
    )?;
    if flow.offset > size {
        flow.done = true;
    }
    Ok(sent)
}

fn server(fds: Vec<i32>, a: &Args) -> io::Result<(f64, u64)> {
    let file: Vec<u8> = (0..(4usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let mut flows: Vec<Flow> = (0..fds.len())
        .map(|_| Flow {
            offset: 0,
            block: 0,
            done: false,
        })
        .collect();
    let mut tx = Tx {
        headers: vec![[0u8; 4]; a.window],
        iov: vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            2 * a.window
        ],
        cmsg: [0u8; CMSG_SPACE],
    };
    let content = Content {
        file: &file,
        size: a.size,
        blksize: a.blksize,
    };
    let cpu0 = thread_cpu();
    let mut bytes = 0u64;
    // The first window of every transfer (as after the OACK's ACK 0).
    for (i, &fd) in fds.iter().enumerate() {
        bytes += send_window(fd, &content, &mut flows[i], a.window, &mut tx)?;
    }
    let ep = epoll(&fds)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut left = flows.iter().filter(|f| !f.done).count();
    let mut ack = [0u8; 16];
    while left > 0 {
        for i in ready(ep, &mut events)? {
            let fd = fds[i];
            // One receive per ACK, until the socket is empty.
            loop {
                let r = unsafe {
                    libc::recv(
                        fd,
                        ack.as_mut_ptr() as *mut libc::c_void,
                        ack.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if r < 0 {
                    break;
                }
                if flows[i].done {
                    continue;
                }
                bytes += send_window(fd, &content, &mut flows[i], a.window, &mut tx)?;
                if flows[i].done {
                    left -= 1;
                }
            }
        }
    }
    // SAFETY: our epoll descriptor.
    unsafe { libc::close(ep) };
    Ok((thread_cpu() - cpu0, bytes))
}

fn client(fds: Vec<i32>, a: &Args) -> io::Result<(f64, u64)> {
    const BATCH: usize = 64;
    let cpu0 = thread_cpu();
    let blocks_total = a.size / a.blksize as u64 + 1;
    let mut got = vec![0u64; fds.len()];
    let mut since = vec![0usize; fds.len()];
    let mut left = fds.len();
    let ep = epoll(&fds)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut bufs = vec![[0u8; 9000]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdrs over our iovecs, rebuilt for each call.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
    let mut bytes = 0u64;
    let ack = [0u8, 4, 0, 0];
    while left > 0 {
        for i in ready(ep, &mut events)? {
            loop {
                for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m.msg_len = 0;
                }
                let r = unsafe {
                    libc::recvmmsg(
                        fds[i],
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    break;
                }
                for m in &msgs[..r as usize] {
                    let len = m.msg_len as usize;
                    bytes += len.saturating_sub(4) as u64;
                    got[i] += 1;
                    since[i] += 1;
                    let last = got[i] == blocks_total;
                    if since[i] == a.window || last {
                        since[i] = 0;
                        unsafe {
                            libc::send(fds[i], ack.as_ptr() as *const libc::c_void, 4, 0);
                        }
                    }
                    if last {
                        left -= 1;
                    }
                }
            }
        }
    }
    unsafe { libc::close(ep) };
    Ok((thread_cpu() - cpu0, bytes))
}

fn main() -> io::Result<()> {
    let a = parse();
    // Socket pairs: each side on its own port of 127.0.0.1, connected to the other.
    let mut srv = Vec::with_capacity(a.clients);
    let mut cli = Vec::with_capacity(a.clients);
    // Thousands of sockets need more than the usual 1024 descriptors.
    unsafe {
        let mut r: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max.min(a.clients as u64 * 2 + 64).max(r.rlim_cur);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    for _ in 0..a.clients {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let c = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        s.connect(c.local_addr()?)?;
        c.connect(s.local_addr()?)?;
        s.set_nonblocking(true)?;
        c.set_nonblocking(true)?;
        set_buf(c.as_raw_fd(), libc::SO_RCVBUF, 1 << 20);
        srv.push(s);
        cli.push(c);
    }
    let sfds: Vec<i32> = srv.iter().map(|s| s.as_raw_fd()).collect();
    let cfds: Vec<i32> = cli.iter().map(|s| s.as_raw_fd()).collect();
    let t0 = Instant::now();
    let (server_cpu, sent, client_cpu, received) = std::thread::scope(|sc| {
        let ca = &a;
        let ch = sc.spawn(move || client(cfds, ca));
        let (scpu, sent) = server(sfds, &a)?;
        let (ccpu, recv) = ch.join().expect("client thread")?;
        io::Result::Ok((scpu, sent, ccpu, recv))
    })?;
    let wall = t0.elapsed().as_secs_f64();
    let gb = sent as f64 / 1e9;
    eprintln!(
        "sol {} ({} x {} MiB, blksize {}, window {}): {:.2} GB in {:.2} s = {:.0} MB/s; \
         server {:.2} CPU-s ({:.3} CPU-s/GB), client {:.2} CPU-s",
        a.profile,
        a.clients,
        a.size >> 20,
        a.blksize,
        a.window,
        gb,
        wall,
        sent as f64 / 1e6 / wall,
        server_cpu,
        server_cpu / gb,
        client_cpu
    );
    println!(
        "sol profile={} clients={} bytes={} received={} wall_s={:.3} server_cpu_s={:.3} \
         server_cpu_s_per_gb={:.4} client_cpu_s={:.3}",
        a.profile,
        a.clients,
        sent,
        received,
        wall,
        server_cpu,
        server_cpu / gb,
        client_cpu
    );
    Ok(())
}
