//! The sans-IO protocol core: codec, negotiation, transfer state machines.
//!
//! Nothing in this module opens a socket, touches a file or reads a clock: time comes in as `now`,
//! datagrams come in as byte slices, and what to send comes out as descriptors the driver executes.

pub mod block;
pub mod cc;
pub mod client;
pub mod dhcp;
pub mod mcclient;
pub mod multicast;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod transfer;

pub use block::BlockNum;
pub use options::{BlockSize, Limits, Negotiated, RequestOptions, WindowSize};
pub use packet::{ErrorCode, Mode, OptionList, Packet, ParseError, Request};
