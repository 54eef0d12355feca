//! The stream of a [`Session`]: flow control by the master's ACKs, repairs of its gaps, RTT
//! timing, and PXE MTFTP opens and listeners asked to be master. See the module docs of
//! [`super`](crate::proto::mtftp::session) for the contract.

use super::*;

impl Session {
    /// Call at [`poll_timeout`](Self::poll_timeout): resends, backoff, vanished masters.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d || self.over {
            return;
        }
        if self.lingering && self.members.is_empty() {
            // Nobody re-opened while the session lingered: it is over.
            return self.finish();
        }
        self.stats.timeouts += 1;
        self.tries += 1;
        self.ctl.forget_probe();
        let unconfirmed = self.cfg.protocol == Protocol::PxeMtftp && !self.confirmed;
        let budget = if unconfirmed {
            self.cfg.retries.min(UNCONFIRMED_RETRIES)
        } else {
            self.cfg.retries
        };
        if unconfirmed && self.promoting && self.tries > budget {
            // The listeners asked did not answer: the next one.
            self.stats.listeners_silent += self.members.len() as u32;
            self.silent_in_a_row += 1;
            if self.silent_in_a_row >= SILENT_LISTENERS {
                // Those remembered are most likely done; one that is not re-opens on its own.
                self.listeners.clear();
            }
            self.members.clear();
            self.master = None;
            self.pending.clear();
            return self.promote(now);
        }
        let silent = now.saturating_duration_since(self.heard_at);
        let long_silent = silent >= self.cfg.timeout * (self.cfg.retries + 1);
        if self.tries > budget && (unconfirmed || self.awaiting_master || long_silent) {
            if unconfirmed {
                // No opener acknowledged: they all go (spoofed, or gone); the next listener is
                // asked, or the session ends.
                for m in std::mem::take(&mut self.members) {
                    self.stats.members_vanished += 1;
                    self.event(SessionEvent::Left {
                        addr: m.addr,
                        reason: LeaveReason::Vanished,
                    });
                }
                self.master = None;
                self.pending.clear();
                self.promote(now);
            } else if let Some(idx) = self
                .master
                .and_then(|a| self.members.iter().position(|m| m.addr == a))
            {
                // The master vanished.
                self.member_gone(idx, now, LeaveReason::Vanished);
            } else {
                self.finish();
            }
            return;
        }
        if self.awaiting_master && !unconfirmed {
            if let Some(m) = self.master {
                if !self.pending.iter().any(|p| p.to() == m) {
                    self.pending.push_back(Pending::Oack {
                        to: m,
                        master: true,
                    });
                }
            }
            // A named master that never answered may be long gone (passive members leave
            // without a word): every member waits while it is asked, so ask at a steady pace,
            // not backing off.
            self.deadline = Some(now + self.cfg.timeout);
            return;
        }
        if unconfirmed {
            // Every opener may have lost its unicast block 1 (or its ACK): once more each, at a
            // steady pace; still nothing to the group.
            for i in 0..self.members.len() {
                let to = self.members[i].addr;
                self.members[i].first_sent = Some(now);
                if !self.pending.contains(&Pending::FirstBlock { to }) {
                    self.pending.push_back(Pending::FirstBlock { to });
                }
            }
            let wait = if self.promoting {
                self.promote_wait()
            } else {
                self.cfg.timeout
            };
            self.deadline = Some(now + wait);
            return;
        }
        // The master is silent: what it lacks (blocks, or its ACKs) may be lost. Its first gap
        // again, and the window's credit back; the wait backs off.
        self.inflight = 0;
        self.recent.clear();
        self.rto = self.rto_base() * (1 << self.tries.min(MAX_BACKOFF_SHIFT));
        self.ctl.on_timeout();
        self.cc.loss = true;
        if self.ctl.is_slow() && self.send_away_slow(now) {
            return;
        }
        self.queue_repair(now);
        self.deadline = Some(now + self.rto);
    }

    /// PXE MTFTP open. See the module docs.
    pub(super) fn open(&mut self, addr: SocketAddr, now: Instant) -> Result<Joined, JoinError> {
        if self.confirmed {
            if self.master == Some(addr) {
                // The master re-opened (it heard nothing for a while): it is master again once
                // it has block 1 unicast, at most once per timeout.
                let due = self.members[0]
                    .first_sent
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.timeout);
                if due && !self.pending.contains(&Pending::FirstBlock { to: addr }) {
                    self.members[0].first_sent = Some(now);
                    self.pending.push_back(Pending::FirstBlock { to: addr });
                }
                return Ok(Joined::Again);
            }
            if !self.admits_joiners() {
                // A file of more than 65535 blocks whose stream has started: a new listener would
                // hear block numbers of a later wrap before it has the first 65535 blocks, and
                // iPXE places a number in the 65536-block span of its first gap, so it would
                // misplace them (or abort at number 0). An ERROR now is a clean failure its
                // script can answer (retry, or plain TFTP); it may open again after this session.
                self.stats.joins_late += 1;
                return Err(JoinError::Late);
            }
            self.remember(addr);
            if self.tries >= 1 && !self.awaiting_master {
                // The master is silent (a wait passed without its ACK) and so is the group: an
                // opener left unanswered now hears nothing, and iPXE falls back to plain TFTP
                // after four such re-opens, with a corrupt image when it had heard the last
                // block (it keeps the file size, not the block map). It is alive: ask it.
                self.listeners.retain(|&a| a != addr);
                self.listeners.push_front(addr);
                self.members.clear();
                self.master = None;
                self.pending.clear();
                self.promote(now);
                return Ok(Joined::New);
            }
            return Err(JoinError::Busy);
        }
        if let Some(i) = self.members.iter().position(|m| m.addr == addr) {
            // A re-open by a candidate: its block 1 may be lost. Once per timeout at most.
            let due = self.members[i]
                .first_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.timeout);
            if due && !self.pending.contains(&Pending::FirstBlock { to: addr }) {
                self.members[i].first_sent = Some(now);
                self.pending.push_back(Pending::FirstBlock { to: addr });
            }
            return Ok(Joined::Again);
        }
        // The newest opener gets `timeout / 4` to acknowledge its block 1 before another may try:
        // openers arriving together (a classroom powered on at once) get one master, not several.
        if self
            .newest_open
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout / 4)
        {
            self.remember(addr);
            return Err(JoinError::Busy);
        }
        self.newest_open = Some(now);
        if self.members.len() >= MAX_CANDIDATES {
            let old = self.members.remove(0);
            self.pending.retain(|p| p.to() != old.addr);
            self.event(SessionEvent::Left {
                addr: old.addr,
                reason: LeaveReason::Superseded,
            });
        }
        self.members.push(Member {
            addr,
            served: true,
            first_sent: Some(now),
        });
        self.stats.members_joined += 1;
        self.event(SessionEvent::Joined(addr));
        self.master = Some(addr);
        // Each new opener gets the whole (short) unconfirmed budget to acknowledge.
        self.tries = 0;
        self.deadline = Some(now + self.cfg.timeout);
        self.pending.push_back(Pending::FirstBlock { to: addr });
        Ok(Joined::New)
    }

    /// PXE MTFTP: an opener not answered is a listener: it hears the stream, and is asked to be
    /// master in turn (its gaps are learned then) rather than starting a new pass at block 1 after
    /// this one.
    pub(super) fn remember(&mut self, addr: SocketAddr) {
        if self.listeners.len() < MAX_LISTENERS && !self.listeners.contains(&addr) {
            self.listeners.push_back(addr);
        }
    }

    /// A new master: its position is unknown until it acknowledges; nothing of the last one's
    /// repairs or timing applies to it.
    pub(super) fn new_master(&mut self) {
        self.awaiting_master = true;
        self.acked = 0;
        self.tries = 0;
        self.inflight = 0;
        self.repairs.clear();
        self.repair_lo = 0;
        self.repair_hi = 0;
        self.burst = 1;
        self.ctl.new_master();
        self.named_hi = self.sent_hi;
        // The path is much the same for every member: the RTT measured so far stays.
        self.rto = self.rto_base();
    }

    /// The master's first ACK: it has everything up to `acked`; the stream goes on where it is
    /// and its gaps are repaired.
    pub(super) fn start_from(&mut self, acked: u64, now: Instant) {
        self.awaiting_master = false;
        self.heard_at = now;
        self.acked = acked;
        self.tries = 0;
        self.rto = self.rto_base();
        self.deadline = (self.acked < self.sent_hi).then(|| now + self.rto);
        self.queue_repair(now);
    }

    /// The retransmission wait: from the master's measured RTT (`srtt + 4 rttvar`, at least
    /// [`MIN_RTO`]), never more than the configured timeout; the configured timeout until measured.
    pub(super) fn rto_base(&self) -> Duration {
        match self.srtt {
            Some(s) => (s + 4 * self.rttvar).clamp(MIN_RTO.min(self.cfg.timeout), self.cfg.timeout),
            None => self.cfg.timeout,
        }
    }

    /// After an ACK from the master: the round trip it timed, if any, smoothed (RFC 6298).
    pub(super) fn sample_rtt(&mut self) -> Option<Duration> {
        let r = self.ctl.take_sample()?;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let dev = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + dev) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        Some(r)
    }

    /// The master's ACK of `index` (its highest contiguous block, iPXE, EDK2 and atftp alike).
    pub(super) fn master_ack(&mut self, index: u64, now: Instant) {
        let slow = self.ctl.on_ack(now, index, self.srtt);
        let rtt = self.sample_rtt();
        self.heard_at = now;
        self.note_cc_ack(index.saturating_sub(self.acked), rtt, now);
        // Flow control: an ACK is at least one block out of the network; progress says how many.
        let progress = index.saturating_sub(self.acked).max(1);
        self.inflight = self.inflight.saturating_sub(progress);
        self.tries = 0;
        self.rto = self.rto_base();
        self.acked = self.acked.max(index);
        self.deadline = (self.acked < self.sent_hi).then(|| now + self.rto);
        // A gap in what went out while it was master is its own loss (not a late start).
        if self.queue_repair(now) && self.acked >= self.named_hi {
            self.ctl.on_loss(self.acked + 1);
            self.cc.gap();
        }
        if slow {
            self.send_away_slow(now);
        }
    }

    /// [`SlowPolicy::Unicast`]: the master cannot keep the floor rate: an ERROR to it, and the
    /// next member is master. Not the last member (there is no room to keep the pace for).
    /// Returns true when it was sent away.
    pub(super) fn send_away_slow(&mut self, now: Instant) -> bool {
        let others = self.members.len() > 1 || !self.listeners.is_empty();
        let Some(at) = self.master else { return false };
        let Some(idx) = self.members.iter().position(|m| m.addr == at) else {
            return false;
        };
        if self.cfg.slow != SlowPolicy::Unicast || !others {
            return false;
        }
        self.member_gone(idx, now, LeaveReason::Slow);
        if !self.over {
            self.pending.push_back(Pending::Slow { to: at });
        }
        true
    }

    /// Repair the master's first gap when it lies in what was sent already and is not on its
    /// way (it lost it, or it joined after it went); runs of gaps (a late joiner) double the run
    /// up to `window`. The stream is not rewound: repairs go out once, merged with it, and
    /// everyone missing them hears them too.
    /// Returns true when a repair was queued.
    pub(super) fn queue_repair(&mut self, now: Instant) -> bool {
        let gap = self.acked + 1;
        if gap > self.sent_hi.min(self.total_blocks)
            || self.in_flight(gap, now)
            || self.repairs.iter().any(|r| (r.0..r.0 + r.1).contains(&gap))
        {
            return false;
        }
        let window = self.cfg.window.get() as u64;
        self.burst = if self.repair_hi > 0 && gap == self.repair_hi + 1 {
            (self.burst * 2).min(window)
        } else if (self.repair_lo..=self.repair_hi).contains(&gap) {
            self.burst // The run was lost: again, as long.
        } else {
            1
        };
        let count = self.burst.min(self.sent_hi + 1 - gap);
        if self.repairs.len() < REPAIR_RUNS {
            self.repairs.push_back((gap, count));
        }
        self.repair_lo = gap;
        self.repair_hi = gap + count - 1;
        true
    }

    /// Whether block `index` went less than a retransmission wait ago (may be on its way).
    pub(super) fn in_flight(&self, index: u64, now: Instant) -> bool {
        let rto = self.rto_base();
        self.recent
            .iter()
            .rev()
            .take_while(|r| now.saturating_duration_since(r.2) < rto)
            .any(|r| (r.0..r.0 + r.1).contains(&index))
    }

    /// PXE MTFTP: ask the next remembered listener to be master (block 1 unicast: iPXE and PXE
    /// ROMs take a unicast block as "you are master" and ACK their first gap); it confirms like
    /// a first opener. No listener left: the session is over.
    pub(super) fn promote(&mut self, now: Instant) {
        let Some(addr) = self.listeners.pop_front() else {
            if self.silent_in_a_row > 0 && !self.lingering {
                // The last ones asked were silent: most likely done, but firmware still working
                // through the stream answers late (iPXE under QEMU: 2-4 s). Keep the session and
                // its port open for [`LINGER`]: a late ACK meets an open port (not an ICMP error,
                // after which iPXE 2019 fell back to TFTP and kept a corrupt block map), and its
                // re-open is answered like a first opener's, in this session.
                self.lingering = true;
                self.confirmed = false;
                self.promoting = false;
                self.new_master();
                self.master = None;
                self.members.clear();
                self.pending.clear();
                self.deadline = Some(now + LINGER);
                return;
            }
            return self.finish();
        };
        self.confirmed = false;
        self.members.clear();
        self.members.push(Member {
            addr,
            served: true,
            first_sent: Some(now),
        });
        self.master = Some(addr);
        self.stats.listeners_asked += 1;
        self.promoting = true;
        self.new_master();
        self.newest_open = Some(now);
        self.pending.retain(|p| p.to() == addr);
        self.pending.push_back(Pending::FirstBlock { to: addr });
        // A listener that has everything already is gone: do not wait long for it (one that lost
        // its block 1 re-opens on its own).
        self.tries = 0;
        self.deadline = Some(now + self.promote_wait());
    }

    /// How long a listener asked to be master gets to answer, per try. A listener that is
    /// behind and answers later finds the session lingering ([`LINGER`]) and re-opens.
    pub(super) fn promote_wait(&self) -> Duration {
        match self.srtt {
            Some(_) => (self.rto_base() * 4).min(self.cfg.timeout),
            None => self.cfg.timeout,
        }
    }

    /// A master is there and acknowledging, the window has room, and there is something to send.
    pub(super) fn can_send(&self) -> bool {
        let established = self.master.is_some()
            && !self.awaiting_master
            && (self.cfg.protocol == Protocol::Rfc2090 || self.confirmed);
        established
            && self.inflight < self.cfg.window.get() as u64
            && (!self.repairs.is_empty() || self.cursor <= self.total_blocks)
    }

    /// Blocks to the group: repairs first, then the stream; never more than the window's credit.
    /// At most `limit` blocks (the uplink's grant, [`super::pace`]).
    pub(super) fn send_blocks(&mut self, now: Instant, limit: u64) -> Option<Transmit> {
        if !self.can_send() || now < self.next_send_at || limit == 0 {
            return None;
        }
        // Repairs first, then the stream; never more than the window's credit.
        let (first, avail) = match self.repairs.front() {
            Some(&r) => r,
            None => (self.cursor, self.total_blocks + 1 - self.cursor),
        };
        let mut count = avail
            .min(self.cfg.window.get() as u64 - self.inflight)
            .min(limit);
        // Token bucket: as many blocks as the rate allows by `now`, with at most 1 ms of burst credit.
        let rate = self.ctl.rate();
        if rate > 0 {
            let per_block = Duration::from_secs_f64(self.blksize as f64 / rate as f64);
            let earliest = now.checked_sub(BURST).unwrap_or(now);
            let start = self.next_send_at.max(earliest);
            let allowed = (now.saturating_duration_since(start).as_secs_f64()
                / per_block.as_secs_f64().max(1e-9)) as u64
                + 1;
            count = count.min(allowed);
            self.next_send_at = start + per_block.mul_f64(count as f64);
        }
        match self.repairs.front_mut() {
            Some(r) => {
                r.0 += count;
                r.1 -= count;
                if r.1 == 0 {
                    self.repairs.pop_front();
                }
            }
            None => self.cursor += count,
        }
        self.inflight += count;
        self.cc.last_send = Some(now);
        if self.recent.len() >= RECENT_RUNS {
            self.recent.pop_front();
        }
        self.recent.push_back((first, count, now));
        let resent = self.sent_hi.saturating_sub(first - 1).min(count);
        if resent == 0 {
            self.ctl.on_send(now, first + count - 1);
        } else if first == self.acked + 1 && self.tries == 0 {
            // A repair of the master's first gap, whose last copy went more than a wait ago
            // (`in_flight`) and not right after a timeout: the ACK that covers it answers this
            // copy, so it is timed too (Karn's ambiguity does not arise). After the pass only
            // repairs go out: untimed, the wait kept whatever the pass's last round trips were
            // (a busy moment: 50+ ms for every lost repair of every later master).
            self.ctl.on_send(now, first);
        }
        self.sent_hi = self.sent_hi.max(first + count - 1);
        self.stats.blocks_sent += count;
        self.stats.blocks_resent += resent;
        let (off, _) = self.block_range(first);
        let (last_off, last_len) = self.block_range(first + count - 1);
        self.stats.bytes_sent += last_off + last_len as u64 - off;
        if self.deadline.is_none() {
            // The master has the current (backed-off) wait to acknowledge what went out.
            self.deadline = Some(now + self.rto);
        }
        Some(Transmit {
            dest: self.cfg.group,
            payload: Payload::Blocks {
                first,
                count: count as u32,
            },
        })
    }
}
