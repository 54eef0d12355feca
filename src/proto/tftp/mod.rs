//! TFTP (RFC 1350, 2347-2349, 7440): the codec, negotiation and the machines that speak it.
//!
//! - [`packet`]: checked views of datagrams and their encoders; [`options`]: typed options and
//!   negotiation; [`block`]: the wrapping block number; [`netascii`]: the text-mode encoder.
//! - [`endpoint`]: everything about a request that is not I/O (duplicates, refusals, caps,
//!   negotiation, the multicast hand-off), with [`admit`] the caps shared by every worker.
//! - [`transfer`]: the server side of one read; [`client`]: a firmware-like reader, for tests
//!   and the load tester.

pub mod admit;
pub mod block;
pub mod client;
pub mod endpoint;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod transfer;

pub use block::BlockNum;
pub use options::{BlockSize, Limits, Negotiated, RequestOptions, WindowSize};
pub use packet::{ErrorCode, Mode, OptionList, Packet, ParseError, Request};
