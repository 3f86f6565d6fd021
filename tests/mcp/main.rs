//! The real `warden serve` binary driven by rmcp's client, over stdio and streamable HTTP.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;
#[path = "../common/packages.rs"]
mod packages;

mod errors;
mod execute;
mod http;
mod sessions;
mod snapshots;
mod tasks;
