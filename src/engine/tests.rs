use super::*;
use crate::sys::poll::EventFd;
use std::sync::mpsc;
use std::time::Duration;

/// A service that counts wake-ups of an eventfd, ticks a timer and asks to stop after `stop_at`
/// ticks.
struct Probe {
    fd: EventFd,
    reads: usize,
    ticks: usize,
    stop_at: usize,
    fail_on_read: bool,
    shut: mpsc::Sender<&'static str>,
}

impl<R: Reactor> Service<R> for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn start(&mut self, io: &mut Io<'_, R>, now: Instant) -> io::Result<()> {
        io.watch(self.fd.as_raw_fd(), 7)?;
        io.arm(1, now + Duration::from_millis(1));
        Ok(())
    }
    fn on_readable(&mut self, _io: &mut Io<'_, R>, sub: u32, _now: Instant) -> io::Result<()> {
        assert_eq!(sub, 7);
        self.fd.drain();
        self.reads += 1;
        if self.fail_on_read {
            return Err(io::Error::other("boom"));
        }
        Ok(())
    }
    fn on_timer(&mut self, io: &mut Io<'_, R>, key: u64, now: Instant) -> io::Result<()> {
        assert_eq!(key, 1);
        self.ticks += 1;
        if self.ticks == self.stop_at {
            io.control(Control::Stop("test"));
        } else {
            io.arm(1, now + Duration::from_millis(1));
        }
        Ok(())
    }
    fn shutdown(&mut self, _now: Instant) {
        let _ = self.shut.send("shut");
    }
}

fn probe(stop_at: usize, fail_on_read: bool) -> (Probe, mpsc::Receiver<&'static str>) {
    let (tx, rx) = mpsc::channel();
    (
        Probe {
            fd: EventFd::new().unwrap(),
            reads: 0,
            ticks: 0,
            stop_at,
            fail_on_read,
            shut: tx,
        },
        rx,
    )
}

/// A probe that stops after five ticks (and, with `notified`, reads its eventfd once) runs to
/// its control on engine `e`, and is shut down.
fn five_ticks_then_a_stop<R: Reactor>(mut e: Engine<Probe, R>, notified: bool) {
    let (p, shut) = probe(5, false);
    if notified {
        p.fd.notify();
    }
    e.add(p).unwrap();
    let mut seen = Vec::new();
    e.run(|c| {
        seen.push(c);
        Flow::Stop
    })
    .unwrap();
    assert_eq!(seen, vec![Control::Stop("test")]);
    assert_eq!(e.services[0].ticks, 5);
    assert_eq!(e.services[0].reads, usize::from(notified));
    assert_eq!(shut.try_recv(), Ok("shut"));
}

#[test]
fn timers_fire_and_a_control_stops_the_engine() {
    let e = Engine::<Probe>::new().unwrap();
    five_ticks_then_a_stop(e, false);
}

#[test]
fn a_failing_service_stops_the_engine_with_its_name() {
    let mut e = Engine::<Probe>::new().unwrap();
    let (p, shut) = probe(usize::MAX, true);
    p.fd.notify();
    e.add(p).unwrap();
    let err = e.run(|_| Flow::Continue).unwrap_err();
    assert_eq!(err.to_string(), "the probe stopped: boom");
    assert_eq!(shut.try_recv(), Ok("shut"));
}

#[test]
fn a_stopper_stops_it_from_another_thread() {
    let mut e = Engine::<Probe>::new().unwrap();
    let (p, _shut) = probe(usize::MAX, false);
    e.add(p).unwrap();
    let stop = e.stopper();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        stop.stop();
    });
    e.run(|_| Flow::Continue).unwrap();
    t.join().unwrap();
    assert!(e.services[0].ticks >= 1);
}

/// The same engine over the io_uring reactor: readiness (multishot poll), timers, controls, and
/// a failure, as on epoll.
#[test]
fn the_engine_runs_on_the_ring_too() {
    if super::uring::probe().is_err() {
        eprintln!("io_uring unavailable here; skipped");
        return;
    }
    let ring = || super::uring::Ring::new(super::uring::new_ring().unwrap());
    let e = Engine::<Probe, _>::with_reactor(ring().unwrap(), Stopper::new().unwrap()).unwrap();
    five_ticks_then_a_stop(e, true);

    let mut e = Engine::<Probe, _>::with_reactor(ring().unwrap(), Stopper::new().unwrap()).unwrap();
    let (p, _shut) = probe(usize::MAX, true);
    p.fd.notify();
    e.add(p).unwrap();
    let err = e.run(|_| Flow::Continue).unwrap_err();
    assert_eq!(err.to_string(), "the probe stopped: boom");
}

/// First-pass events of one wait are handed before late ones, whatever their order.
#[test]
fn late_tokens_come_in_the_second_pass() {
    use crate::sys::poll::EventFd;
    struct Order {
        fds: [EventFd; 2],
        seen: Vec<u64>,
    }
    impl Service for Order {
        fn name(&self) -> &'static str {
            "order"
        }
        fn start(&mut self, io: &mut Io<'_>, _now: Instant) -> io::Result<()> {
            io.watch_as(self.fds[0].as_raw_fd(), 1, Pass::Late)?;
            io.watch_as(self.fds[1].as_raw_fd(), 2, Pass::First)
        }
        fn on_readable(&mut self, io: &mut Io<'_>, sub: u32, _now: Instant) -> io::Result<()> {
            self.seen.push(sub as u64);
            self.fds[sub as usize - 1].drain();
            if self.seen.len() == 2 {
                io.control(Control::Stop("test"));
            }
            Ok(())
        }
        fn on_timer(&mut self, _io: &mut Io<'_>, _key: u64, _now: Instant) -> io::Result<()> {
            Ok(())
        }
        fn shutdown(&mut self, _now: Instant) {}
    }
    let mut e = Engine::<Order>::new().unwrap();
    let o = Order {
        fds: [EventFd::new().unwrap(), EventFd::new().unwrap()],
        seen: Vec::new(),
    };
    o.fds[0].notify();
    o.fds[1].notify();
    e.add(o).unwrap();
    e.run(|_| Flow::Stop).unwrap();
    assert_eq!(e.services[0].seen, vec![2, 1]);
}
