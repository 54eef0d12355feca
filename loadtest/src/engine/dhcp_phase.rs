//! The `--dhcp` phase of the unicast engine: the shared DHCP sockets and each machine's DHCP
//! client before its TFTP steps.

use super::*;

impl Engine {
    pub(super) fn open_dhcp(&mut self) {
        let Some(setup) = self.shared.dhcp.clone() else {
            return;
        };
        let mut port = match DhcpPort::open(&setup.interface) {
            Ok(p) => p,
            Err(e) => {
                self.dhcp = Some(Err(e.to_string()));
                return;
            }
        };
        for fd in port.fds() {
            let _ = self.poller.add(fd, DHCP_TOKEN);
        }
        for (i, m) in self.machines.iter().enumerate() {
            if let Some(spec) = &m.spec.dhcp {
                port.register(spec, i);
            }
        }
        self.dhcp = Some(Ok(port));
    }

    pub(super) fn start_dhcp(&mut self, i: usize, now: Instant) {
        let (Some(setup), Some(spec)) = (&self.shared.dhcp, self.machines[i].spec.dhcp) else {
            return;
        };
        if let Some(Err(e)) = &self.dhcp {
            let detail = e.clone();
            return self.finish(
                i,
                now,
                Outcome::Failed {
                    reason: "socket".into(),
                    detail,
                },
            );
        }
        self.machines[i].dhcp = Some(DhcpClient::new(spec, setup, now));
        self.dhcp_progress(i, now);
    }

    /// Send what machine `i`'s exchange has to send; when it ended, start its TFTP steps or fail.
    pub(super) fn dhcp_progress(&mut self, i: usize, now: Instant) {
        let Some(d) = self.machines[i].dhcp.as_mut() else {
            return;
        };
        if let Some(Ok(port)) = &mut self.dhcp {
            port.flush(d, now);
        }
        let Some(result) = d.outcome() else {
            return;
        };
        let setup = self.shared.dhcp.as_ref().expect("a DHCP phase has a setup");
        let result = match result {
            Ok(l) => setup.tftp_server(l).map(|s| (l.clone(), s)),
            Err(f) => Err(f.clone()),
        };
        let (retransmits, naks) = (d.retransmits(), d.naks());
        let m = &mut self.machines[i];
        m.dhcp = None;
        let mut out = crate::dhcp::Outcome {
            retransmits,
            naks,
            ..Default::default()
        };
        match result {
            Ok((lease, server)) => {
                out.duration = m.started.map(|s| now - s);
                out.address = Some(lease.address);
                out.tftp_server = match server.ip() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                };
                m.server = Some(server);
                m.dhcp_out = Some(out);
                m.next_phase_at = Some(now);
            }
            Err(f) => {
                m.dhcp_out = Some(out);
                let (reason, detail) = (f.reason().to_string(), f.to_string());
                self.finish(i, now, Outcome::Failed { reason, detail });
            }
        }
    }

    pub(super) fn on_dhcp_readable(&mut self, now: Instant) {
        let Some(Ok(port)) = self.dhcp.as_mut() else {
            return;
        };
        let mut hit = Vec::new();
        let machines = &mut self.machines;
        port.recv(|i, from, datagram| {
            if let Some(d) = machines.get_mut(i).and_then(|m| m.dhcp.as_mut()) {
                d.handle_datagram(now, from, datagram);
                hit.push(i);
            }
        });
        for i in hit {
            self.dhcp_progress(i, now);
            self.rearm(i);
        }
    }
}
