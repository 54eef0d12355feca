//! What the multicast service tells the metrics registry and the status page (`--metrics`):
//! sessions and members by protocol, and every running session (file, protocol, group, members
//! with the master marked, bytes sent, progress) for the page and `/status.json`, once a second;
//! each session's bytes when it ends; refusals by reason. Nothing per datagram.

use super::{McService as Service, Running};
use crate::metrics::status::MEMBERS_LISTED;
use crate::metrics::{
    McProtocol, McPublisher, McRefusal, MemberView, Recorder, SessionView, Status,
};
use crate::proto::mtftp::Protocol;
use std::time::{Duration, Instant};

/// The service's recorder, its status publisher and when it next sets the gauges.
pub(super) struct Observer {
    rec: Recorder,
    publisher: McPublisher,
    next: Instant,
}

impl Observer {
    pub(super) fn new(status: &Status) -> Observer {
        Observer {
            rec: status.registry().recorder(),
            publisher: status.multicast_publisher(),
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
        let mut batch = o.publisher.begin(now);
        for (&token, r) in &self.sessions {
            let st = r.session.stats();
            let size = r.content.len();
            // Distinct blocks sent so far, as bytes: the stream's reach in the file.
            let blocks = st.blocks_sent.saturating_sub(st.blocks_resent);
            let blksize = u64::from(r.session.config().blksize.get());
            batch.session(&SessionView {
                id: token,
                protocol: protocol(r),
                file: r.content.display_path().as_bytes(),
                group: r.group,
                size,
                position: blocks.saturating_mul(blksize).min(size),
                bytes_sent: st.bytes_sent,
                members: r.session.members(),
                started: r.started,
            });
            let master = r.session.master();
            for addr in r.session.member_addrs().take(MEMBERS_LISTED) {
                batch.member(MemberView {
                    addr,
                    master: master == Some(addr),
                });
            }
        }
    }

    /// A PXE MTFTP open refused.
    pub(super) fn observe_refusal(&self, why: McRefusal) {
        if let Some(o) = &self.observer {
            o.rec.multicast_refused(why);
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
