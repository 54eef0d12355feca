//! What the multicast service tells the metrics registry (`--metrics`): sessions and members by
//! protocol once a second, and each session's bytes when it ends. Nothing per datagram.

use super::{McService as Service, Running};
use crate::metrics::{McProtocol, Recorder, Status};
use crate::proto::mtftp::Protocol;
use std::time::{Duration, Instant};

/// The service's recorder and when it next sets the gauges.
pub(super) struct Observer {
    rec: Recorder,
    next: Instant,
}

impl Observer {
    pub(super) fn new(status: &Status) -> Observer {
        Observer {
            rec: status.registry().recorder(),
            next: Instant::now(),
        }
    }
}

fn protocol(r: &Running) -> McProtocol {
    match r.session.config().protocol {
        Protocol::PxeMtftp => McProtocol::PxeMtftp,
        Protocol::Rfc2090 => McProtocol::Rfc2090,
    }
}

impl Service {
    /// Set the session and member gauges when a second has passed.
    pub(super) fn observe(&mut self, now: Instant) {
        let Some(o) = self.observer.as_mut() else {
            return;
        };
        if now < o.next {
            return;
        }
        o.next = now + Duration::from_secs(1);
        let mut counts = [(0u64, 0u64); 2];
        for r in self.sessions.values() {
            let c = &mut counts[protocol(r) as usize];
            c.0 += 1;
            c.1 += r.session.members() as u64;
        }
        for p in [McProtocol::PxeMtftp, McProtocol::Rfc2090] {
            let (s, m) = counts[p as usize];
            o.rec.set_multicast(p, s, m);
        }
    }

    /// A session ended: count the bytes it sent.
    pub(super) fn observe_end(&self, r: &Running) {
        if let Some(o) = &self.observer {
            o.rec
                .multicast_sent(protocol(r), r.session.stats().bytes_sent);
        }
    }
}
