//! A reload of the multicast settings (SIGHUP): the MTFTP file list and the session settings
//! (rate, window, timeout, retries, TTL, interface, loopback) for new sessions.
//!
//! Contract: [`McHandle::reload`] leaves the new [`McConfig`] in the shared admission (one short
//! lock) and wakes the service; the service takes it at its wake-up ([`McService::take_reload`])
//! and keeps what is bound or sized at start (ports, groups, listen addresses, member caps: the
//! binary names those as needing a restart). Running sessions are not touched: each keeps its
//! own group, socket and session parameters. A running PXE MTFTP session whose file (with the
//! same group and port) is still listed goes on taking new opens; one whose file was removed or
//! moved to another group is *retired*: it serves its members to the end, and new opens of a
//! removed file are refused (`no MTFTP for this file`), those of a moved one start a session on
//! the new group.

use super::{lock, Key, McConfig, McHandle, McService};
use tracing::info;

impl McHandle {
    /// Hand the multicast service new settings for its next sessions (see the module docs).
    pub fn reload(&self, cfg: McConfig) {
        lock(&self.admission).reload = Some(Box::new(cfg));
        self.wake.notify();
    }
}

impl McConfig {
    /// What a running service takes from `next` at a reload: the MTFTP list and the session
    /// settings (rate, window, timeout, retries, TTL, interface, loopback), with what is bound
    /// or sized at start (ports, groups, listen addresses, member caps) kept from `self`.
    pub fn with_session_settings(&self, next: &McConfig) -> McConfig {
        McConfig {
            mtftp: next.mtftp.clone(),
            rate: next.rate,
            window: next.window,
            timeout: next.timeout,
            retries: next.retries,
            ttl: next.ttl,
            interface: next.interface,
            loopback: next.loopback,
            ..self.clone()
        }
    }
}

impl McService {
    /// Take the settings of a reload, if one was handed over (see the module docs).
    pub(super) fn take_reload(&mut self) {
        let Some(next) = lock(&self.admission).reload.take() else {
            return;
        };
        let mut retired = 0usize;
        for r in self.sessions.values_mut() {
            let Key::Mtftp(i) = r.key else {
                continue;
            };
            let same = self
                .cfg
                .mtftp
                .get(i)
                .and_then(|old| next.mtftp.iter().position(|f| f == old));
            r.key = match same {
                Some(j) => Key::Mtftp(j),
                None => {
                    retired += 1;
                    Key::Retired
                }
            };
        }
        self.cfg = self.cfg.with_session_settings(&next);
        for f in &self.cfg.mtftp {
            info!(file = f.file.as_str(), group = %f.group, client_port = f.client_port, port = self.cfg.mtftp_port, "PXE MTFTP enabled");
        }
        info!(
            mtftp_files = self.cfg.mtftp.len(),
            rate = self.cfg.rate,
            window = self.cfg.window,
            retired_sessions = retired,
            "multicast settings reloaded for new sessions (running sessions go on)"
        );
    }
}
