//! The request path of the TFTP service: a datagram on a listening socket, the endpoint's
//! decision, the store lookup, the transfer socket, the refusals (see the contract of
//! [`super`]).

use super::{Core, Driver, Io, Slot, MTU_CACHE_TTL};
use crate::engine::send::TxBufs;
use crate::proto::tftp::endpoint::{
    self, Accept, Decision, McRequest, Multicast, NoMulticast, Refusal,
};
use crate::proto::tftp::packet::{emit_error_fmt, ErrorCode};
use crate::sys;
use crate::sys::cmsg::PktInfo;
use crate::sys::socket::TransferSocketError;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;
use tracing::{debug, info, trace, warn};

impl Core {
    pub(super) fn note_malformed(
        &mut self,
        peer: Option<SocketAddr>,
        what: &dyn std::fmt::Display,
        now: Instant,
    ) {
        debug!(worker = self.worker, client = %peer.map_or_else(|| "-".to_owned(), |p| p.to_string()), reason = %what, "malformed datagram on the listening port");
        if let Some(n) = self.logs.allow(|l| &mut l.malformed, now) {
            warn!(
                worker = self.worker,
                client = %peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                reason = %what,
                suppressed = n,
                "malformed datagram on the listening port (one line a second; details at debug)"
            );
        }
    }

    /// Send the ERROR datagram of `len` bytes in `self.reply` from listening socket `li`.
    pub(super) fn send_reply(
        &mut self,
        li: usize,
        len: usize,
        peer: &SocketAddr,
        info: Option<&PktInfo>,
    ) {
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        if let Err(e) = sys::socket::send_from(l.sock.as_raw_fd(), &self.reply[..len], peer, info) {
            debug!(client = %peer, reason = %e, "could not send ERROR");
        }
    }

    /// A datagram arrived on listening socket `li` from `peer`, addressed to `info.local`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_request(
        &mut self,
        li: usize,
        data: &[u8],
        truncated: bool,
        peer: Option<SocketAddr>,
        info: Option<PktInfo>,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let Some(peer) = peer else {
            self.note_malformed(None, &"no source address", now);
            return;
        };
        match self.shared.fault {
            Some(crate::engine::workers::Fault::WorkerPanic) => {
                panic!("injected fault (--fault worker-panic) on a request")
            }
            Some(crate::engine::workers::Fault::WorkerError) if self.injected.is_none() => {
                self.injected = Some(io::Error::other(
                    "injected fault (--fault worker-error) on a request",
                ));
                return;
            }
            _ => {}
        }
        if self.draining(li, data, &peer, info.as_ref()) {
            return;
        }
        self.take_settings();
        let Some(listener) = self.listeners.get(li) else {
            return;
        };
        let local = info.map_or(listener.addr.ip(), |i| i.local);
        let listen_fd = listener.sock.as_raw_fd();
        let decision = self
            .endpoint
            .handle_request(now, peer, local, data, truncated);
        self.drain_endpoint(now, drv);
        let incoming = match decision {
            Decision::Lookup(incoming) => incoming,
            Decision::Duplicate(id) => {
                trace!(client = %peer, "duplicate request");
                return self.drive(id, now, drv);
            }
            Decision::Refuse(r) => {
                if let Some(o) = &self.observer {
                    o.refusal(&r);
                }
                let n = r.emit(&mut self.reply);
                self.send_reply(li, n, &peer, info.as_ref());
                match r {
                    Refusal::Write { filename } => {
                        if let Some(n) = self.logs.allow(|l| &mut l.write, now) {
                            info!(client = %peer, file = String::from_utf8_lossy(filename).as_ref(), reason = %r, suppressed = n, "write request refused");
                        }
                    }
                    Refusal::MailMode { filename } => {
                        if let Some(n) = self.logs.allow(|l| &mut l.refused, now) {
                            info!(client = %peer, file = String::from_utf8_lossy(filename).as_ref(), code = r.code().as_u16(), reason = %r, suppressed = n, "request refused");
                        }
                    }
                    Refusal::TooLarge => self.note_malformed(
                        Some(peer),
                        &"datagram larger than the receive buffer",
                        now,
                    ),
                    _ => self.note_malformed(Some(peer), &r, now),
                }
                return;
            }
            // An ERROR or ACK on the listening port is what clients such as tftp-hpa send after
            // a refusal: normal, at debug only.
            Decision::Drop(endpoint::Ignored::Unexpected(op)) if matches!(op as u16, 3..=6) => {
                return debug!(client = %peer, opcode = op as u16, "datagram other than a request on the listening port ignored");
            }
            Decision::Drop(why) => return self.note_malformed(Some(peer), &why, now),
        };
        let content = match self
            .shared
            .store
            .lookup(incoming.filename(), incoming.mode())
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(o) = &self.observer {
                    o.lookup_refused(&e);
                }
                let n = emit_error_fmt(&mut self.reply, e.error_code(), format_args!("{e}"));
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.refused, now) {
                    info!(client = %peer, file = String::from_utf8_lossy(incoming.filename()).as_ref(), code = e.error_code().as_u16(), reason = %e, suppressed = n, "request refused");
                }
                return;
            }
        };
        let ifindex = info.map_or(0, |i| i.ifindex);
        let mtu = self.mtu(ifindex, listen_fd, now);
        let mode = incoming.mode();
        // The OACK's window fits what the path has shown it holds (proto::tftp::endpoint).
        let link = self.shared.links.get(ifindex, local);
        let path_bytes = link
            .as_deref()
            .and_then(|l| crate::engine::links::lock(l).oack_window_bytes(now));
        let observer = &self.observer;
        let accepted = match &self.shared.multicast {
            Some(mc) => {
                // The service decides its own admission, synchronously: handed over, it answers
                // (OACK or ERROR); refused (pool, caps, saturation; logged there, rate-limited),
                // the endpoint serves the request as plain unicast, its OACK without `multicast`.
                let mut offer = |r: &McRequest, now: Instant| {
                    let join = crate::engine::mcast::McJoin {
                        client: r.client,
                        local: r.local,
                        content: content.clone(),
                        blksize: r.blksize,
                        tsize: r.tsize,
                    };
                    mc.submit(join, now)
                        .map_err(|r| observer.as_ref().map(|o| o.mc_refused(r)))
                        .is_ok()
                };
                let offer: &mut dyn Multicast = &mut offer;
                self.endpoint.accept(
                    now,
                    incoming,
                    content.transfer_len(),
                    mtu,
                    path_bytes,
                    offer,
                )
            }
            None => self.endpoint.accept(
                now,
                incoming,
                content.transfer_len(),
                mtu,
                path_bytes,
                &mut NoMulticast,
            ),
        };
        // An evicted transfer's socket closes before the new one opens.
        self.drain_endpoint(now, drv);
        let accepted = match accepted {
            Accept::Unicast(a) => a,
            Accept::Multicast => return,
            Accept::Refuse(r) => {
                if let Some(o) = &self.observer {
                    o.refusal(&r);
                }
                let n = r.emit(&mut self.reply);
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.over_cap, now) {
                    let c = self.shared.admission.current();
                    warn!(
                        worker = self.worker,
                        client = %peer,
                        cause = match r { Refusal::OverCap(o) => o.as_str(), _ => "" },
                        max_transfers = c.max_transfers,
                        max_per_client = c.max_per_client,
                        client_rate = c.client_rate,
                        suppressed = n,
                        "request refused: {r} (one line a second)",
                    );
                }
                return;
            }
        };
        let id = accepted.id;
        let sock = match sys::socket::transfer_socket(
            local,
            ifindex,
            peer,
            self.shared.port_range,
            &mut self.port_rng,
            self.endpoint.config().limits.allow_fragmentation,
        ) {
            Ok(s) => s,
            Err(e) => {
                if let Some(o) = &self.observer {
                    o.refused(crate::metrics::RefuseReason::NoSocket);
                }
                self.endpoint.release(id);
                let msg = match &e {
                    TransferSocketError::NoFreePort => "no free transfer port",
                    TransferSocketError::Io(_) => "cannot open a transfer socket",
                };
                let n = crate::proto::tftp::packet::emit_error(
                    &mut self.reply,
                    ErrorCode::NotDefined,
                    msg,
                );
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                    warn!(client = %peer, file = content.display_path(), reason = %e, suppressed = n, "request refused");
                }
                return;
            }
        };
        if let Err(e) = drv.watch(id.into(), sock.as_raw_fd()) {
            if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                warn!(client = %peer, reason = %e, suppressed = n, "cannot watch a transfer socket; request dropped");
            }
            self.endpoint.release(id);
            return;
        }
        let Some(t) = self.endpoint.transfer(id) else {
            return;
        };
        let negotiated = *t.negotiated();
        // At INFO once the client acknowledges data (`announce`): a spoofed request never does.
        debug!(
            client = %peer,
            file = content.display_path(),
            local = %local,
            mode = mode.as_str(),
            mtu = mtu.unwrap_or(0),
            worker = self.worker,
            "transfer accepted"
        );
        let window = (negotiated.windowsize.get() as usize).min(0x7fff);
        let io = Box::new(Io {
            content,
            link,
            sock: Some(sock),
            peer,
            tx: TxBufs::new(window),
            gso: accepted.gso,
            in_flight: 0,
            ctrl_in_flight: false,
            ctrl_pending: None,
            send_failure: None,
            pending: None,
            redo: None,
            rest: None,
            reason: None,
            evicted: false,
            closed: false,
            recv_armed: true,
            lingering: false,
            announced: false,
            counted: (0, 0),
        });
        let idx = id.index();
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, || None);
        }
        self.slots[idx] = Some(Slot { id, io: Some(io) });
        if let Some(o) = &self.observer {
            o.started();
        }
        self.drive(id, now, drv);
    }

    pub(super) fn mtu(&mut self, ifindex: u32, fd: RawFd, now: Instant) -> Option<u32> {
        if ifindex == 0 {
            return None;
        }
        if let Some(&(m, at)) = self.mtu_cache.get(&ifindex) {
            if now.saturating_duration_since(at) < MTU_CACHE_TTL {
                return m;
            }
        }
        let m = match sys::iface::interface_mtu(fd, ifindex) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!(ifindex, reason = %e, "cannot read the interface MTU");
                None
            }
        };
        self.mtu_cache.insert(ifindex, (m, now));
        m
    }
}
