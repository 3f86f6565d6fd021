//! warden: a sandboxed code-execution MCP server.
//!
//! Agents send Python or JavaScript; warden runs each call in a fresh Wasmtime guest with fuel,
//! wall-clock, memory and output limits, a private `/workspace`, no network and no host
//! environment, and returns the output, the files the code produced and an audit record.
//!
//! # Layout
//!
//! Data flows one way: request → policy → admission → sandbox → outcome → audit → response.
//!
//! The front (what answers requests):
//! * [`mcp`] and [`transport`]: the MCP tools over stdio and streamable HTTP, with the HTTP
//!   edge checks; [`auth`]: who is calling and under which profile.
//! * [`service`]: the request path, independent of transport: validation against the caller's
//!   [`policy`], admission (with [`limiter`] and [`throttle`]), the audited call, [`session`]s
//!   and retained [`artifacts`].
//! * [`audit`]: the hash-chained record of every decision, as typed events; [`metrics`].
//!
//! The executor side (what runs guests), in layers that each import only the ones before it:
//! * [`engine`]: the Wasmtime engine configuration and the epoch tick.
//! * [`runtime`]: the upstream language runtimes (install, verify, precompile, load).
//! * [`sandbox`]: one guest run under limits against warden's host calls, its workspace and its
//!   outcome; [`tools`]: package tools and the code-mode door.
//! * [`executor`]: runs a validated, admitted call in the sandbox.
//!
//! Around them: [`home`] (the data directory), [`harden`] (Landlock and seccomp for the process),
//! [`api`] (the request and result types), [`digest`], and [`cli`] (the `warden` command line).

pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod digest;
pub mod engine;
pub mod executor;
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
pub mod server;
pub mod service;
pub mod session;
pub mod snapshots;
pub mod spawner;
pub mod telemetry;
pub mod throttle;
pub mod tools;
pub mod transport;
