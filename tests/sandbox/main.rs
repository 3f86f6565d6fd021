//! Sandbox core, against the real runtimes: each language runs, each limit produces its
//! outcome, and guests see nothing of the host.

#[path = "../common/mod.rs"]
mod common;

mod fork;
mod isolation;
mod javascript;
mod limits;
mod pool;
mod python;
