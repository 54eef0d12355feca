//! What the DHCP responder tells the log, the metrics and the status page, and how a reloaded
//! configuration reaches it.
//!
//! Contract: [`Hooks`] come with [`super::bind_with`]: an optional status model (metrics and
//! the page) and a [`PolicySlot`] through which the binary hands a new decision policy (SIGHUP).
//! The responder checks the slot's generation (one relaxed load) before each decision and takes
//! the new policy when it changed: no lock per datagram. Every answered request gives one INFO
//! line (the decision: mac, ip, arch, vendor/user class, mode, boot file, server); the
//! admission rate limits bound how many there can be.

use super::Responder as Driver;
use crate::metrics::{
    ArchClass, DhcpIgnored, DhcpMode as MMode, DhcpType, DhcpView, Recorder, Status,
};
use crate::proto::dhcp::decide::{mac_str, Note};
use crate::proto::dhcp::policy::{DhcpMode, Policy};
use crate::proto::dhcp::wire::ClientInfo;
use dhcproto::v4::Message;
use dhcproto::v4::MessageType;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A new policy handed to a running responder (see the module docs).
#[derive(Debug, Default)]
pub struct PolicySlot {
    generation: AtomicU64,
    next: Mutex<Option<Policy>>,
}

impl PolicySlot {
    /// Hand `policy` to the responder; it takes it before its next decision.
    pub fn replace(&self, policy: Policy) {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = Some(policy);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// What the responder reports to, besides the log.
#[derive(Debug, Default, Clone)]
pub struct Hooks {
    pub status: Option<Arc<Status>>,
    pub reload: Arc<PolicySlot>,
}

/// The responder's side of the hooks.
pub(super) struct Observer {
    rec: Option<Recorder>,
    status: Option<Arc<Status>>,
    reload: Arc<PolicySlot>,
    seen: u64,
}

impl Observer {
    pub(super) fn new(h: Hooks) -> Observer {
        Observer {
            rec: h.status.as_ref().map(|s| s.registry().recorder()),
            status: h.status,
            reload: h.reload,
            seen: 0,
        }
    }
}

fn msg_type(t: Option<MessageType>) -> DhcpType {
    match t {
        Some(MessageType::Discover) => DhcpType::Discover,
        Some(MessageType::Offer) => DhcpType::Offer,
        Some(MessageType::Request) => DhcpType::Request,
        Some(MessageType::Decline) => DhcpType::Decline,
        Some(MessageType::Ack) => DhcpType::Ack,
        Some(MessageType::Nak) => DhcpType::Nak,
        Some(MessageType::Release) => DhcpType::Release,
        Some(MessageType::Inform) => DhcpType::Inform,
        _ => DhcpType::Other,
    }
}

impl Driver {
    /// A datagram dropped before any decision: counted for the summary line and the metrics.
    pub(super) fn dropped(&mut self, why: super::Drop, now: Instant) {
        self.drops.count(why, now);
        if let Some(r) = &self.observer.rec {
            r.dhcp_ignored(match why {
                super::Drop::Malformed(_) | super::Drop::TooLong => DhcpIgnored::Malformed,
                super::Drop::Refused(_) => DhcpIgnored::RateLimited,
                super::Drop::NoLocalAddress | super::Drop::AckNotSaved => DhcpIgnored::Other,
            });
        }
    }

    /// A request decided without a reply: why, for the metrics (a proxy ignores clients that
    /// are not PXE; a request for another server, or that no rule matched, is not for us).
    pub(super) fn note_unanswered(&self, req: &Message, note: Option<&Note<'_>>) {
        let Some(r) = &self.observer.rec else {
            return;
        };
        let why = match note {
            Some(Note::PoolFull { .. }) => DhcpIgnored::PoolExhausted,
            Some(_) => DhcpIgnored::Other,
            None if self.cfg.mode == DhcpMode::Proxy && !ClientInfo::of(req).pxe => {
                DhcpIgnored::NotPxe
            }
            None => DhcpIgnored::NotForUs,
        };
        r.dhcp_ignored(why);
    }

    /// Take a reloaded policy, if one was handed over since the last decision.
    pub(super) fn take_reload(&mut self) {
        let g = self.observer.reload.generation.load(Ordering::Acquire);
        if g == self.observer.seen {
            return;
        }
        self.observer.seen = g;
        let next = self
            .observer
            .reload
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(p) = next {
            self.policy = p;
            tracing::info!(target: super::LOG_TARGET, "DHCP boot rules reloaded");
        }
    }

    /// A request `req` was answered with `reply` (logged at INFO, counted, shown on the page).
    pub(super) fn note_decision(&mut self, req: &Message, reply: &Message, server: Ipv4Addr) {
        let mode = match self.cfg.mode {
            DhcpMode::Full => MMode::Full,
            _ => MMode::Proxy,
        };
        let client = ClientInfo::of(req);
        let arch = client.arch.map(|a| a.0);
        let class = ArchClass::from_option93(arch);
        let vendor = match req.opts().get(dhcproto::v4::OptionCode::ClassIdentifier) {
            Some(dhcproto::v4::DhcpOption::ClassIdentifier(v)) => v.as_slice(),
            _ => &[],
        };
        let user_class = client.user_class.as_deref().unwrap_or(&[]);
        let boot = reply
            .fname()
            .map(|f| f.split(|b| *b == 0).next().unwrap_or(&[]))
            .unwrap_or(&[]);
        let ty = msg_type(reply.opts().msg_type());
        let ip = Some(reply.yiaddr())
            .filter(|a| !a.is_unspecified())
            .or(Some(req.ciaddr()).filter(|a| !a.is_unspecified()));
        if let Some(r) = &self.observer.rec {
            r.dhcp_message(msg_type(req.opts().msg_type()), mode, class);
            r.dhcp_message(ty, mode, class);
            if let (DhcpMode::Full, Some(range)) = (self.cfg.mode, self.cfg.range) {
                // Records in the pool (bound, offered or held after a decline) against its size.
                let size =
                    u64::from(u32::from(range.end).saturating_sub(u32::from(range.start))) + 1;
                let used = self.state.in_range(range).count() as u64;
                r.set_leases(used, size.saturating_sub(used));
            }
        }
        if let Some(s) = &self.observer.status {
            s.record_dhcp(
                Instant::now(),
                &DhcpView {
                    message: ty,
                    mode,
                    mac: req.chaddr(),
                    ip,
                    arch,
                    vendor_class: vendor,
                    boot,
                },
            );
        }
        tracing::info!(target: super::LOG_TARGET,
            mac = %mac_str(req.chaddr()),
            ip = ip.map_or_else(|| "-".to_owned(), |a| a.to_string()).as_str(),
            arch = class.as_str(),
            vendor_class = String::from_utf8_lossy(vendor).as_ref(),
            user_class = String::from_utf8_lossy(user_class).as_ref(),
            mode = mode.as_str(),
            reply = ty.as_str(),
            boot_file = String::from_utf8_lossy(boot).as_ref(),
            server = %server,
            "DHCP decision"
        );
    }
}
