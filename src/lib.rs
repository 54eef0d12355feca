//! ringboot: a network-boot content server.
//!
//! Layout (see README "Architecture"):
//! - [`proto`]: the sans-IO protocol core (codec, negotiation, transfer and client state machines).
//! - [`store`]: the memory-mapped file store with a path jail.
//! - [`server`]: the drivers: per-core io_uring workers and the epoll fallback.
//! - [`config`]: the one config model (file and flags, merged, validated once).

pub mod config;
pub mod dhcp;
pub mod proto;
pub mod ratelog;
pub mod server;
pub mod store;
