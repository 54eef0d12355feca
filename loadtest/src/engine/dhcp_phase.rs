//! The `--dhcp` phase as machines of their own: one [`DhcpClient`] per emulated machine that has
//! a DHCP identity, all sharing this thread's [`DhcpPort`], on the unicast engine's poller and
//! its one timer queue.
//!
//! Contract:
//! - A [`DhcpPhase`] owns the exchanges: the unicast machine of slot `i` only starts one
//!   ([`DhcpPhase::start`]) and, when it ends, reads its [`Ended`]: the lease and the TFTP server
//!   it named (its TFTP steps then start there) or the failure that ends the machine. It keeps
//!   no DHCP state of its own beyond that outcome.
//! - Timer keys: the DHCP machine of slot `i` is armed under [`DHCP_KEY`]` | i` on the engine's
//!   queue, beside the TFTP machine's `i`; [`dhcp_slot`] tells them apart.
//! - The port's sockets are read at the DHCP token; each datagram goes to the machine its xid
//!   and chaddr name. Nothing is allocated per datagram beyond the client machine's decode.

use super::*;
use crate::dhcp::Setup;

/// The timer key bit of a DHCP machine (its slot below it).
pub(super) const DHCP_KEY: usize = 1 << 31;

/// The slot of a DHCP machine's timer key (`None`: a TFTP machine's key).
pub(super) fn dhcp_slot(key: usize) -> Option<usize> {
    (key & DHCP_KEY != 0).then_some(key & !DHCP_KEY)
}

/// How one machine's DHCP exchange ended.
pub(super) enum Ended {
    /// A lease: the TFTP steps go to `server`. The outcome's duration is the caller's.
    Leased {
        out: crate::dhcp::Outcome,
        server: SocketAddr,
    },
    /// The machine fails with this reason; `out` when the exchange ran.
    Failed {
        out: Option<crate::dhcp::Outcome>,
        reason: String,
        detail: String,
    },
}

/// The DHCP machines of one engine thread.
pub(super) struct DhcpPhase {
    setup: Setup,
    /// The shared sockets, or why they could not be opened.
    port: Result<DhcpPort, String>,
    /// The running exchange of each slot.
    clients: Vec<Option<DhcpClient>>,
    /// Slots that got a datagram in the last read (reused).
    hit: Vec<usize>,
}

impl DhcpPhase {
    /// Open the shared sockets on `poller` (at `token`) and register every machine's identity.
    pub(super) fn open(setup: Setup, machines: &[Machine], poller: &Poller, token: u64) -> Self {
        let port = DhcpPort::open(&setup.interface).map_err(|e| e.to_string());
        let port = port.map(|mut port| {
            for fd in port.fds() {
                let _ = poller.add(fd, token);
            }
            for (i, m) in machines.iter().enumerate() {
                if let Some(spec) = &m.spec.dhcp {
                    port.register(spec, i);
                }
            }
            port
        });
        DhcpPhase {
            setup,
            port,
            clients: (0..machines.len()).map(|_| None).collect(),
            hit: Vec::new(),
        }
    }

    /// When slot `i`'s exchange wants its timer.
    pub(super) fn next_wake(&self, i: usize) -> Option<Instant> {
        self.clients.get(i)?.as_ref()?.poll_timeout()
    }

    /// Start slot `i`'s exchange.
    pub(super) fn start(
        &mut self,
        i: usize,
        spec: crate::dhcp::Spec,
        now: Instant,
    ) -> Option<Ended> {
        if let Err(e) = &self.port {
            return Some(Ended::Failed {
                out: None,
                reason: "socket".into(),
                detail: e.clone(),
            });
        }
        self.clients[i] = Some(DhcpClient::new(spec, &self.setup, now));
        self.progress(i, now)
    }

    /// Slot `i`'s timer is due.
    pub(super) fn on_timer(&mut self, i: usize, now: Instant) -> Option<Ended> {
        let d = self.clients.get_mut(i)?.as_mut()?;
        if d.poll_timeout().is_some_and(|t| t <= now) {
            d.handle_timeout(now);
            return self.progress(i, now);
        }
        None
    }

    /// Read the shared sockets: the slots that got a datagram (hand the list back with
    /// [`give_back`](Self::give_back) once each is [`progress`](Self::progress)ed).
    pub(super) fn read(&mut self, now: Instant) -> Vec<usize> {
        let mut hit = std::mem::take(&mut self.hit);
        hit.clear();
        let Ok(port) = self.port.as_mut() else {
            return hit;
        };
        let clients = &mut self.clients;
        port.recv(|i, from, datagram| {
            if let Some(d) = clients.get_mut(i).and_then(|c| c.as_mut()) {
                d.handle_datagram(now, from, datagram);
                hit.push(i);
            }
        });
        hit
    }

    pub(super) fn give_back(&mut self, hit: Vec<usize>) {
        self.hit = hit;
    }

    /// Slot `i`'s machine ended (the deadline, say): its exchange goes.
    pub(super) fn forget(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            *c = None;
        }
    }

    /// Send what slot `i`'s exchange has to send; when it ended, how.
    pub(super) fn progress(&mut self, i: usize, now: Instant) -> Option<Ended> {
        let d = self.clients.get_mut(i)?.as_mut()?;
        if let Ok(port) = &mut self.port {
            port.flush(d, now);
        }
        let result = d.outcome()?;
        let result = match result {
            Ok(l) => self.setup.tftp_server(l).map(|s| (l.clone(), s)),
            Err(f) => Err(f.clone()),
        };
        let out = crate::dhcp::Outcome {
            retransmits: d.retransmits(),
            naks: d.naks(),
            ..Default::default()
        };
        self.clients[i] = None;
        Some(match result {
            Ok((lease, server)) => Ended::Leased {
                out: crate::dhcp::Outcome {
                    address: Some(lease.address),
                    tftp_server: match server.ip() {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    },
                    ..out
                },
                server,
            },
            Err(f) => Ended::Failed {
                out: Some(out),
                reason: f.reason().to_string(),
                detail: f.to_string(),
            },
        })
    }
}

impl Engine {
    /// Machine `i` starts its DHCP machine.
    pub(super) fn start_dhcp(&mut self, i: usize, now: Instant) {
        let (Some(p), Some(spec)) = (self.dhcp.as_mut(), self.machines[i].spec.dhcp) else {
            return;
        };
        let ended = p.start(i, spec, now);
        self.dhcp_ended(i, ended, now);
    }

    /// The DHCP machine of slot `i`: its timer is due.
    pub(super) fn dhcp_timer(&mut self, i: usize, now: Instant) {
        let Some(p) = self.dhcp.as_mut() else {
            return;
        };
        let ended = p.on_timer(i, now);
        self.dhcp_ended(i, ended, now);
    }

    pub(super) fn on_dhcp_readable(&mut self, now: Instant) {
        let Some(p) = self.dhcp.as_mut() else {
            return;
        };
        let hit = p.read(now);
        for &i in &hit {
            let ended = self.dhcp.as_mut().and_then(|p| p.progress(i, now));
            self.dhcp_ended(i, ended, now);
        }
        if let Some(p) = self.dhcp.as_mut() {
            p.give_back(hit);
        }
    }

    /// Re-arm the DHCP machine of slot `i`, then act on how its exchange ended, if it did.
    fn dhcp_ended(&mut self, i: usize, ended: Option<Ended>, now: Instant) {
        let key = (DHCP_KEY | i) as u32;
        match self.dhcp.as_ref().and_then(|p| p.next_wake(i)) {
            Some(t) => self.timers.arm(key, t),
            None => self.timers.cancel(key),
        }
        match ended {
            None => {}
            Some(Ended::Leased { mut out, server }) => {
                let m = &mut self.machines[i];
                out.duration = m.started.map(|s| now - s);
                m.server = Some(server);
                m.dhcp_out = Some(out);
                m.next_phase_at = Some(now);
                self.rearm(i);
            }
            Some(Ended::Failed {
                out,
                reason,
                detail,
            }) => {
                self.machines[i].dhcp_out = out;
                self.finish(i, now, Outcome::Failed { reason, detail });
            }
        }
    }
}
