//! The sans-IO protocol core: wire codecs and protocol state machines.
//!
//! Nothing in this module opens a socket, touches a file, spawns a thread or reads a clock: time
//! comes in as `now`, datagrams come in as byte slices, and what to send comes out as
//! descriptors ([`Transmit`]) the driver executes. `.ci/check-sans-io` enforces the rule.
//!
//! - [`tftp`]: TFTP codec, option negotiation, the request [`tftp::endpoint`], the server
//!   [`tftp::transfer`] and the firmware-like [`tftp::client`].
//! - [`mtftp`]: multicast sessions (PXE MTFTP, RFC 2090) and their client.
//! - [`timer`]: the one timer queue drivers use; [`rng`]: the one seeded generator;
//!   [`sim`]: the simulation harness for machine-against-machine tests on virtual time;
//!   [`ratelog`]: rate-limited log lines.
//!
//! Every machine has the same shape: `handle_*(now, ..)` for inputs, `poll_transmit(now, buf)`
//! for what to send (a [`Transmit`] naming its destination), `poll_timeout()` for when to call
//! `handle_timeout(now)`, and `poll_event()` for what the driver must know.

pub mod cc;
pub mod dhcp;
pub mod mtftp;
pub mod ratelog;
pub mod rng;
pub mod sim;
pub mod tftp;
pub mod timer;

use std::net::SocketAddr;

/// One datagram (or run of DATA datagrams) a machine wants sent, from `poll_transmit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes: a peer, or a multicast group.
    pub dest: SocketAddr,
    pub payload: Payload,
}

/// What a [`Transmit`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A datagram of this many bytes, written into the buffer given to `poll_transmit`.
    Datagram(usize),
    /// DATA blocks with absolute indices `first .. first + count` (block 1 is index 1), in
    /// order. The driver builds each from the content: the 4-byte header
    /// ([`tftp::packet::data_header`]) and the machine's `block_range(index)` of the content,
    /// never copied. Only server machines (transfers, sessions) produce it.
    Blocks { first: u64, count: u32 },
}

impl Transmit {
    /// Where a datagram goes and its length; `None` for a run of blocks. Client machines only
    /// ever send datagrams.
    pub fn datagram(self) -> Option<(SocketAddr, usize)> {
        match self.payload {
            Payload::Datagram(n) => Some((self.dest, n)),
            Payload::Blocks { .. } => None,
        }
    }
}
