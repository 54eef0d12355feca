use super::*;
use crate::engine::links::Links;
use crate::proto::tftp::admit::{Admission, AdmissionConfig};
use crate::store::StoreOptions;
use crate::sys;
use crate::sys::cmsg::PktInfo;
use std::net::UdpSocket;

/// A driver that keeps every send in flight and every receive armed until the test says
/// otherwise (an io_uring stand-in), or completes them at once (an epoll stand-in).
struct FakeDriver {
    asynchronous: bool,
    /// Control datagrams stay in flight too (else they complete at once, really sent).
    ctrl_async: bool,
    watched: Vec<(SlotId, RawFd)>,
    unwatched: Vec<SlotId>,
    sends: Vec<(SlotId, usize)>,
    /// Every submission in order.
    order: Vec<Sub>,
    /// The timers the core armed (the engine's queue).
    timers: crate::proto::timer::TimerQueue<u64>,
}

/// A submission seen by the fake driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// A window of this many calls.
    Window(usize),
    /// A control datagram with this opcode.
    Ctrl(u16),
}

impl FakeDriver {
    fn new(asynchronous: bool) -> Self {
        FakeDriver {
            asynchronous,
            ctrl_async: false,
            watched: Vec::new(),
            unwatched: Vec::new(),
            sends: Vec::new(),
            order: Vec::new(),
            timers: Default::default(),
        }
    }
}

impl Driver for FakeDriver {
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
        self.watched.push((id, fd));
        Ok(())
    }
    fn unwatch(&mut self, id: SlotId, _fd: RawFd) -> bool {
        self.unwatched.push(id);
        !self.asynchronous
    }
    fn send(&mut self, id: SlotId, _fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
        self.sends.push((id, msgs.len()));
        self.order.push(Sub::Window(msgs.len()));
        if self.asynchronous {
            SendStatus::InFlight(msgs.len() as u32)
        } else {
            SendStatus::Done(None)
        }
    }
    fn send_ctrl(&mut self, _id: SlotId, fd: RawFd, msg: &mut libc::mmsghdr) -> SendStatus {
        // SAFETY: TxBufs built one iovec over its live control buffer.
        let bytes = unsafe {
            let iov = &*msg.msg_hdr.msg_iov;
            std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
        };
        self.order
            .push(Sub::Ctrl(u16::from_be_bytes([bytes[0], bytes[1]])));
        // Really sent (the clients of these tests read their OACK and ERROR).
        // SAFETY: as above; sendmsg reads the msghdr only.
        let r = unsafe { libc::sendmsg(fd, &msg.msg_hdr, libc::MSG_DONTWAIT) };
        assert!(r >= 0, "control datagram not sent");
        if self.asynchronous && self.ctrl_async {
            SendStatus::InFlight(1)
        } else {
            SendStatus::Done(None)
        }
    }
    fn arm(&mut self, key: u64, at: Instant) {
        self.timers.arm(key, at);
    }
    fn cancel(&mut self, key: u64) {
        self.timers.cancel(key);
    }
}

impl FakeDriver {
    /// The earliest deadline a transfer armed (the core's own reports left out).
    fn next_deadline(&mut self) -> Option<Instant> {
        self.timers.cancel(AUX_KEY);
        self.timers.next_deadline()
    }

    /// Fire every timer due at `now`, as the engine does.
    fn run_timers(&mut self, core: &mut Core, now: Instant) {
        while let Some(key) = self.timers.pop_expired(now) {
            core.on_timer(key, now, self);
        }
    }
}

/// The identity of what `fd` refers to now (device, inode), or `None` if it is closed.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat on any integer is safe; it fails with EBADF when nothing is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

struct Rig {
    _dir: tempfile::TempDir,
    core: Core,
}

/// A core with GSO over a 1 MiB `a.bin`, the default limits and no interface cap.
fn rig(adm: AdmissionConfig) -> Rig {
    rig_with(adm, Limits::default(), Default::default(), true)
}

/// A core over a 1 MiB `a.bin` with these limits, interface caps and GSO.
fn rig_with(adm: AdmissionConfig, limits: Limits, links: Arc<Links>, gso: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), vec![7u8; 1 << 20]).unwrap();
    let store = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let shared = Arc::new(Shared {
        store,
        limits,
        min_rto: Duration::from_millis(2),
        port_range: None,
        multicast: None,
        admission: Admission::new(adm),
        settings: None,
        workers: 1,
        fault: None,
        metrics: None,
        draining: None,
        links,
    });
    let sock = sys::socket::listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let core = Core::new(0, shared, vec![Listener { sock, addr }], gso);
    Rig { _dir: dir, core }
}

/// A rig allowing 100 descriptors, with one transfer requested over `drv` by a loopback
/// client (returned, with the time of the request).
fn started(drv: &mut FakeDriver) -> (Rig, UdpSocket, Instant) {
    let mut r = rig(AdmissionConfig::for_descriptors(100));
    let c = client();
    let now = Instant::now();
    request(&mut r, &c, drv, now);
    (r, c, now)
}

/// ACK of block 0 (after the OACK).
const ACK0: &[u8] = b"\x00\x04\x00\x00";
/// ERROR 0 "stop": the client aborts.
const STOP: &[u8] = b"\x00\x05\x00\x00stop\x00";

/// The first transfer's client ACKs block 0 (a window goes out) and then aborts; returns the
/// transfer's slot, socket and that socket's identity before the abort.
fn window_then_stop(
    r: &mut Rig,
    drv: &mut FakeDriver,
    now: Instant,
) -> (SlotId, RawFd, (u64, u64)) {
    let (id, fd) = drv.watched[0];
    let sock_id = identity(fd).unwrap();
    r.core.on_transfer_datagram(id, ACK0, false, now, drv);
    r.core.on_transfer_datagram(id, STOP, false, now, drv);
    (id, fd, sock_id)
}

const RRQ: &[u8] = b"\x00\x01a.bin\x00octet\x00blksize\x001468\x00windowsize\x0064\x00";

fn request(r: &mut Rig, client: &UdpSocket, drv: &mut FakeDriver, now: Instant) {
    request_with(r, RRQ, client, drv, now);
}

/// `client` sends `rrq` to the rig's listener, as if received on loopback.
fn request_with(r: &mut Rig, rrq: &[u8], client: &UdpSocket, drv: &mut FakeDriver, now: Instant) {
    let info = PktInfo {
        local: "127.0.0.1".parse().unwrap(),
        ifindex: 0,
    };
    let peer = client.local_addr().unwrap();
    r.core
        .on_request(0, rrq, false, Some(peer), Some(info), now, drv);
}

fn client() -> UdpSocket {
    client_at("127.0.0.1")
}

fn client_at(ip: &str) -> UdpSocket {
    let c = UdpSocket::bind((ip, 0)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// The core closes a transfer's socket only after every send naming it has completed and its
/// receive has ended: the descriptor number cannot be reused while a linked send that names
/// it may still be issued (issue 8, defect 6).
#[test]
fn socket_stays_open_until_sends_and_receive_end() {
    let mut drv = FakeDriver::new(true);
    let (mut r, c, now) = started(&mut drv);
    let (id, fd) = drv.watched[0];
    let sock_id = identity(fd).expect("transfer socket open");
    let mut buf = [0u8; 1500];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 6], "OACK first: {:?}", &buf[..n]);
    // ACK 0: one window of 64 blocks goes out as linked calls that stay in flight.
    r.core.on_transfer_datagram(id, ACK0, false, now, &mut drv);
    let calls = drv.sends[0].1;
    assert!(calls >= 2, "a window of 64 x 1468 bytes is several calls");
    // The client aborts mid-window: the transfer is over, but its socket must stay open.
    r.core.on_transfer_datagram(id, STOP, false, now, &mut drv);
    assert_eq!(drv.unwatched, [id]);
    assert!(!r.core.is_live(id));
    assert_eq!(r.core.lingering(), 1);
    assert_eq!(identity(fd), Some(sock_id), "closed with sends in flight");
    for call in 0..calls {
        r.core.on_send_complete(id, call, 1000, now, &mut drv);
    }
    assert_eq!(
        identity(fd),
        Some(sock_id),
        "closed while its receive could still complete"
    );
    r.core.on_recv_ended(id);
    assert_eq!(r.core.lingering(), 0);
    assert_ne!(identity(fd), Some(sock_id), "socket not closed at the end");
    // Stale completions for the freed slot are ignored.
    r.core.on_send_complete(id, 0, 1000, now, &mut drv);
    r.core.on_recv_ended(id);
}

/// The other order: the receive ends first, the sends complete later.
#[test]
fn socket_closes_after_the_last_send_when_the_receive_ended_first() {
    let mut drv = FakeDriver::new(true);
    let (mut r, _c, now) = started(&mut drv);
    let (id, fd, sock_id) = window_then_stop(&mut r, &mut drv, now);
    r.core.on_recv_ended(id);
    let calls = drv.sends[0].1;
    for call in 0..calls - 1 {
        r.core.on_send_complete(id, call, 1000, now, &mut drv);
        assert_eq!(identity(fd), Some(sock_id));
    }
    r.core.on_send_complete(id, calls - 1, 1000, now, &mut drv);
    assert_ne!(identity(fd), Some(sock_id));
}

/// A synchronous driver (epoll) frees at once.
#[test]
fn synchronous_driver_closes_at_once() {
    let mut drv = FakeDriver::new(false);
    let (mut r, _c, now) = started(&mut drv);
    let (_, fd, sock_id) = window_then_stop(&mut r, &mut drv, now);
    assert_eq!(r.core.lingering(), 0);
    assert_ne!(identity(fd), Some(sock_id));
}

/// At the transfer cap, a new request takes the place of the oldest transfer whose client
/// never answered; with an asynchronous driver that transfer's socket still waits for its
/// receive to end. Either way the new client gets its OACK and the count stays right.
#[test]
fn over_the_cap_an_unanswered_transfer_makes_room() {
    for asynchronous in [true, false] {
        let mut r = rig(AdmissionConfig {
            max_transfers: 1,
            max_per_client: 1,
            client_rate: 0,
        });
        let mut drv = FakeDriver::new(asynchronous);
        // Three client addresses (each within its own per-client cap of 1).
        let (a, b) = (client_at("127.0.0.2"), client_at("127.0.0.3"));
        let now = Instant::now();
        request(&mut r, &a, &mut drv, now);
        let (ida, fda) = drv.watched[0];
        let sock_a = identity(fda).unwrap();
        request(&mut r, &b, &mut drv, now);
        assert_eq!(drv.watched.len(), 2, "b admitted");
        assert!(!r.core.is_live(ida), "a dropped");
        if asynchronous {
            assert_eq!(
                identity(fda),
                Some(sock_a),
                "a's socket waits for its receive"
            );
        }
        let mut buf = [0u8; 1500];
        b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0, 6]);
        // b answered: it cannot be dropped for a third client, which is refused.
        let (idb, _) = drv.watched[1];
        r.core.on_transfer_datagram(idb, ACK0, false, now, &mut drv);
        let third = client_at("127.0.0.4");
        request(&mut r, &third, &mut drv, now);
        assert_eq!(drv.watched.len(), 2);
        let (n, _) = third.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 5, 0, 0]);
        assert!(std::str::from_utf8(&buf[4..n])
            .unwrap()
            .contains("server busy"));
        r.core.on_recv_ended(ida);
        assert_ne!(identity(fda), Some(sock_a));
        assert_eq!(r.core.shared.admission.total(), 1);
        assert_eq!(
            (r.core.endpoint.held(), r.core.endpoint.evicted_waiting()),
            (1, 0)
        );
        // b ends: its place comes back, and a new client gets it.
        r.core.on_transfer_datagram(idb, STOP, false, now, &mut drv);
        r.core.on_recv_ended(idb);
        if asynchronous {
            let calls: Vec<usize> = drv
                .sends
                .iter()
                .filter(|(id, _)| *id == idb)
                .map(|(_, n)| *n)
                .collect();
            for n in calls {
                for call in 0..n {
                    r.core.on_send_complete(idb, call, 1000, now, &mut drv);
                }
            }
        }
        assert_eq!(r.core.endpoint.held(), 0);
        request(&mut r, &third, &mut drv, now);
        assert_eq!(drv.watched.len(), 3);
    }
}

/// A window larger than the send buffers goes out in several builds.
#[test]
fn large_windows_are_sent_in_bounded_builds() {
    let limits = Limits {
        max_window: crate::proto::tftp::options::WindowSize::new(1024).unwrap(),
        max_window_bytes: 1 << 30,
        ..Limits::default()
    };
    let adm = AdmissionConfig::for_descriptors(100);
    let mut r = rig_with(adm, limits, Default::default(), false);
    let mut drv = FakeDriver::new(true);
    let c = client();
    let rrq = b"\x00\x01a.bin\x00octet\x00blksize\x00512\x00windowsize\x001000\x00";
    let now = Instant::now();
    request_with(&mut r, rrq, &c, &mut drv, now);
    let (id, _) = drv.watched[0];
    r.core.on_transfer_datagram(id, ACK0, false, now, &mut drv);
    // Without GSO: one call per block, at most MAX_TX_BLOCKS per build.
    let mut total = 0;
    for _ in 0..100 {
        let Some(&(_, n)) = drv.sends.last() else {
            break;
        };
        assert!(n <= super::super::send::MAX_TX_BLOCKS);
        total += n;
        let before = drv.sends.len();
        for call in 0..n {
            r.core.on_send_complete(id, call, 516, now, &mut drv);
        }
        if drv.sends.len() == before {
            break;
        }
    }
    assert_eq!(total, 1000, "the whole window went out");
}

/// A control datagram never overtakes DATA: an ERROR polled while a window is in flight is
/// submitted only once the window has completed, and the socket stays open until the ERROR's own
/// send has completed too (issue 9; issue 8's rule on closing).
#[test]
fn error_after_a_window_is_submitted_after_it() {
    let mut drv = FakeDriver::new(true);
    drv.ctrl_async = true;
    let (mut r, c, now) = started(&mut drv);
    let (id, fd) = drv.watched[0];
    let sock_id = identity(fd).unwrap();
    assert_eq!(drv.order, [Sub::Ctrl(6)], "the OACK");
    let mut buf = [0u8; 1500];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 6], "OACK: {:?}", &buf[..n]);
    // The OACK's completion, then ACK 0: a window goes out and stays in flight.
    r.core
        .on_send_complete(id, CTRL_CALL, n as i32, now, &mut drv);
    r.core.on_transfer_datagram(id, ACK0, false, now, &mut drv);
    let calls = drv.sends[0].1;
    assert_eq!(drv.order, [Sub::Ctrl(6), Sub::Window(calls)]);
    // The server aborts the transfer (shutdown): its ERROR waits for the window.
    r.core.shutdown(now, &mut drv);
    assert!(!r.core.is_live(id));
    assert_eq!(drv.order.len(), 2, "ERROR submitted over DATA in flight");
    for call in 0..calls {
        r.core.on_send_complete(id, call, 1000, now, &mut drv);
    }
    assert_eq!(
        drv.order,
        [Sub::Ctrl(6), Sub::Window(calls), Sub::Ctrl(5)],
        "the ERROR follows the window"
    );
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 5], "ERROR: {:?}", &buf[..n]);
    r.core.on_recv_ended(id);
    assert!(r.core.sends_in_flight());
    assert_eq!(
        identity(fd),
        Some(sock_id),
        "closed with the ERROR in flight"
    );
    r.core
        .on_send_complete(id, CTRL_CALL, n as i32, now, &mut drv);
    assert!(!r.core.sends_in_flight());
    assert_eq!(r.core.lingering(), 0);
    assert_ne!(identity(fd), Some(sock_id), "socket not closed at the end");
}

/// A synchronous driver (epoll) sends the ERROR at once, in order after the window.
#[test]
fn synchronous_driver_sends_the_error_at_once() {
    let mut drv = FakeDriver::new(false);
    let (mut r, _c, now) = started(&mut drv);
    let (id, _) = drv.watched[0];
    r.core.on_transfer_datagram(id, ACK0, false, now, &mut drv);
    let calls = drv.sends[0].1;
    r.core.shutdown(now, &mut drv);
    assert_eq!(drv.order, [Sub::Ctrl(6), Sub::Window(calls), Sub::Ctrl(5)]);
}

/// With an operator cap on the interface, the driver sends a window in paced pieces: each
/// piece is one build of at most the pacer's quantum, the rest waits in the transfer, and the
/// worker's one timer queue wakes it (never armed in the past) until the whole window is out.
#[test]
fn a_capped_interface_paces_a_window_in_pieces_through_the_timer_queue() {
    // 10 Mbit/s: a quantum of 250 µs is under two blocks, so every piece is two blocks.
    let cap = crate::proto::cc::Rate::from_bits_per_sec(10_000_000);
    let adm = AdmissionConfig::for_descriptors(100);
    let links = Arc::new(Links::new([(0, cap)]));
    let mut r = rig_with(adm, Limits::default(), links, false);
    let mut drv = FakeDriver::new(true);
    let c = client();
    let mut now = Instant::now();
    request(&mut r, &c, &mut drv, now);
    let (id, _) = drv.watched[0];
    r.core.on_transfer_datagram(id, ACK0, false, now, &mut drv);
    let mut total = 0;
    let mut pieces = 0;
    for _ in 0..200 {
        // Complete what is in flight; then wake the transfer when its timer is due.
        if let Some(&(_, n)) = drv.sends.last() {
            if pieces < drv.sends.len() {
                pieces = drv.sends.len();
                assert!(n <= 2, "a piece is at most the quantum: {n} blocks");
                total += n;
                for call in 0..n {
                    r.core.on_send_complete(id, call, 1472, now, &mut drv);
                }
            }
        }
        if total >= 64 {
            break;
        }
        let due = drv
            .next_deadline()
            .expect("a paced transfer has its timer armed");
        assert!(due > now, "never armed in the past");
        now = due;
        drv.run_timers(&mut r.core, now);
    }
    assert_eq!(total, 64, "the whole window went out, in pieces");
    assert!(pieces >= 32);
}
