//! ringboot: a network-boot content server.

pub mod proto;
