//! warden: a sandboxed code-execution MCP server.
//!
//! Agents send Python or JavaScript; warden runs each call in a fresh Wasmtime guest with fuel,
//! wall-clock, memory and output limits, a private `/workspace`, no network and no host
//! environment, and returns the output, the files the code produced and an audit record.
//!
//! # Layout
//!
//! Data flows one way: request → [`policy`] → [`sandbox`] → outcome → audit → response.
//!
//! * [`policy`]: isolation profiles (what guests may do).
//! * [`runtime`]: the upstream language runtimes: install, verify, precompile, load.
//! * [`sandbox`]: one guest run under limits, its workspace and its outcome.
//! * [`home`]: the data directory.
//! * [`cli`]: the `warden` command line.

pub mod cli;
pub mod digest;
pub mod home;
pub mod policy;
pub mod runtime;
pub mod sandbox;
