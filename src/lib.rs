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
//! * [`engine`], [`runtime`], [`sandbox`]: three layers, each importing only the ones before it.
//!   [`engine`] is the Wasmtime engine configuration and the epoch tick; [`runtime`] the upstream
//!   language runtimes (install, verify, precompile, load); [`sandbox`] one guest run under
//!   limits against warden's host calls, its workspace and its outcome.
//! * [`executor`]: the request path, independent of transport; [`session`] and [`artifacts`]
//!   keep state between calls; [`audit`] records every decision.
//! * [`mcp`] and [`transport`]: the MCP tools over stdio and streamable HTTP.
//! * [`home`]: the data directory.
//! * [`cli`]: the `warden` command line.

pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod digest;
pub mod engine;
pub mod executor;
pub mod service;
#[doc(hidden)]
pub mod fuzzing;
pub mod harden;
pub mod home;
pub mod limiter;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod sandbox;
pub mod session;
pub mod throttle;
pub mod tools;
pub mod transport;
