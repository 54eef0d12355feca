//! ringboot: a network-boot content server.
//!
//! Layout (see README "Architecture"):
//! - [`proto`]: the sans-IO protocol core (codecs, the request endpoint, transfer, session and
//!   client state machines, the timer queue, the seeded generator, the simulation harness).
//! - [`store`]: the memory-mapped file store with a path jail.
//! - [`sys`]: the one system layer (sockets, control messages, interfaces, epoll).
//! - [`engine`]: the one event loop and the control engine (`ringboot-ctl`: signals, multicast,
//!   DHCP).
//! - [`engine::workers`]: the drivers: per-core io_uring workers and the epoll fallback.
//! - [`metrics`]: the metrics registry, the status model and page, and their HTTP machine.
//! - [`config`]: the one config model (file and flags, merged, validated once).

pub mod config;
pub mod dhcp;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod proto;
pub mod service;
pub mod store;
pub mod sys;

/// The origin of virtual time for the sans-IO core's tests and simulations
/// ([`proto::sim::Sim`]): any instant serves, and reading the clock is not the core's to do
/// (`.ci/check-sans-io`), so it is read here, once per process.
#[doc(hidden)]
pub fn sim_origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}
