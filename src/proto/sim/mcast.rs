//! The multicast nodes of the simulation: [`McServer`] (multicast sessions for one file, as the
//! multicast service runs them) and [`McMember`] (a multicast client machine).

use super::{BlockRun, Node};
use crate::proto::mtftp::client::{Arrival, McClient, McClientConfig, McEvent};
use crate::proto::mtftp::session::{Session, SessionConfig, SessionEvent, SessionStats};
use crate::proto::mtftp::Protocol;
use crate::proto::tftp::packet::Packet;
use std::net::SocketAddr;
use std::time::Instant;

/// Multicast [`Session`]s for one file, as the multicast service runs them: a request (any
/// datagram) to the request address joins the running session or starts one; each session
/// answers from its own address.
pub struct McServer {
    /// The request (or MTFTP open) address.
    pub addr: SocketAddr,
    cfg: SessionConfig,
    content: Vec<u8>,
    session: Option<(Session, SocketAddr)>,
    sessions: u16,
    blocks: Option<BlockRun>,
    /// Counters of the sessions that ended, summed.
    pub finished: SessionStats,
    /// Every session event, in order.
    pub events: Vec<SessionEvent>,
}

impl McServer {
    pub fn new(addr: SocketAddr, cfg: SessionConfig, content: Vec<u8>) -> Self {
        McServer {
            addr,
            cfg,
            content,
            session: None,
            sessions: 0,
            blocks: None,
            finished: SessionStats::default(),
            events: Vec::new(),
        }
    }

    /// The running session, if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref().map(|(s, _)| s)
    }

    /// Counters of every session, the running one included.
    pub fn stats(&self) -> SessionStats {
        let mut st = self.finished;
        if let Some((s, _)) = &self.session {
            let r = s.stats();
            st.bytes_sent += r.bytes_sent;
            st.blocks_sent += r.blocks_sent;
            st.members_done += r.members_done;
            st.members_vanished += r.members_vanished;
            st.timeouts += r.timeouts;
        }
        st
    }

    fn retire(&mut self) {
        if let Some((s, _)) = self.session.take_if(|(s, _)| s.is_over()) {
            let r = s.stats();
            self.finished.bytes_sent += r.bytes_sent;
            self.finished.blocks_sent += r.blocks_sent;
            self.finished.members_done += r.members_done;
            self.finished.members_vanished += r.members_vanished;
            self.finished.timeouts += r.timeouts;
        }
    }

    fn drain_events(&mut self) {
        if let Some((s, _)) = self.session.as_mut() {
            while let Some(e) = s.poll_event() {
                self.events.push(e);
            }
        }
    }
}

impl Node for McServer {
    fn receives(&self, addr: SocketAddr) -> bool {
        addr == self.addr || self.session.as_ref().is_some_and(|(_, a)| *a == addr)
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        if to == self.addr {
            if !matches!(Packet::parse(datagram), Ok(Packet::Rrq(_))) {
                return;
            }
            self.retire();
            if self.session.is_none() {
                self.sessions += 1;
                let local = SocketAddr::new(self.addr.ip(), 40_000 + self.sessions);
                self.session = Some((Session::new(self.cfg, now), local));
            }
            if let Some((s, _)) = self.session.as_mut() {
                let _ = s.join(now, from);
            }
        } else if let Some((s, _)) = self.session.as_mut() {
            s.handle_datagram(now, from, datagram);
        }
        self.drain_events();
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        let (s, local) = self.session.as_mut()?;
        let local = *local;
        loop {
            if let Some(run) = self.blocks.as_mut() {
                match run.emit_from(buf, &self.content, |i| s.block_range(i)) {
                    Some((to, n)) => return Some((local, to, n)),
                    None => self.blocks = None,
                }
            }
            let t = s.poll_transmit(now, buf);
            self.events.extend(std::iter::from_fn(|| s.poll_event()));
            let t = t?;
            if let Some((dest, n)) = t.datagram() {
                return Some((local, dest, n));
            }
            self.blocks = BlockRun::of(t);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session.as_ref()?.0.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some((s, _)) = self.session.as_mut() {
            s.handle_timeout(now);
        }
        self.drain_events();
    }
}

/// An [`McClient`] at one address: joins the group it is told to (or, PXE, the group it
/// listens on from the start), keeps what it received at each block's offset. It starts at
/// `start`; `gone` makes it vanish (takes and sends nothing).
pub struct McMember {
    pub addr: SocketAddr,
    pub client: Option<McClient>,
    protocol: Protocol,
    server: SocketAddr,
    filename: Vec<u8>,
    cfg: McClientConfig,
    groups: Vec<SocketAddr>,
    start_at: Option<Instant>,
    /// The file as received (blocks at their offsets).
    pub file: Vec<u8>,
    pub gone: bool,
    /// Failures reported.
    pub failures: Vec<McEvent>,
}

impl McMember {
    /// A member at `addr` that asks (RFC 2090) or opens (PXE: after listening on `group`)
    /// `server` for `filename` at `start`, keeping `len` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: SocketAddr,
        protocol: Protocol,
        server: SocketAddr,
        filename: &[u8],
        cfg: McClientConfig,
        group: Option<SocketAddr>,
        len: usize,
        start: Instant,
    ) -> Self {
        McMember {
            addr,
            client: None,
            protocol,
            server,
            filename: filename.to_vec(),
            cfg,
            groups: group.into_iter().collect(),
            start_at: Some(start),
            file: vec![0; len],
            gone: false,
            failures: Vec::new(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.is_finished())
    }

    pub fn is_over(&self) -> bool {
        self.gone || self.client.as_ref().is_some_and(|c| c.is_over())
    }

    fn take_events(&mut self) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        while let Some(e) = c.poll_event() {
            match e {
                McEvent::JoinGroup(g) => {
                    if !self.groups.contains(&g) {
                        self.groups.push(g);
                    }
                }
                McEvent::Finished => {}
                e @ McEvent::Failed(_) => self.failures.push(e),
            }
        }
    }
}

impl Node for McMember {
    fn receives(&self, addr: SocketAddr) -> bool {
        addr == self.addr || self.groups.contains(&addr)
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        if self.gone {
            return;
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let arrival = if to == self.addr {
            Arrival::Unicast
        } else {
            Arrival::Group
        };
        if let Some(d) = c.handle_datagram(now, from, arrival, datagram) {
            let off = d.offset as usize;
            self.file[off..off + d.bytes.len()].copy_from_slice(d.bytes);
        }
        self.take_events();
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        if self.gone {
            return None;
        }
        let (dest, n) = self.client.as_mut()?.poll_transmit(now, buf)?.datagram()?;
        Some((self.addr, dest, n))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.gone {
            return None;
        }
        match &self.client {
            Some(c) => c.poll_timeout(),
            None => self.start_at,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.client.is_none() {
            if self.start_at.is_some_and(|t| t <= now) {
                self.start_at = None;
                let (f, cfg) = (&self.filename, self.cfg.clone());
                self.client = Some(match self.protocol {
                    Protocol::Rfc2090 => McClient::rfc2090(self.server, f, cfg, now),
                    Protocol::PxeMtftp => McClient::pxe(self.server, f, cfg, now),
                });
            }
            return;
        }
        if let Some(c) = self.client.as_mut() {
            c.handle_timeout(now);
        }
        self.take_events();
    }
}

#[cfg(test)]
mod tests;
