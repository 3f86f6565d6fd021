//! Fuzz target: arbitrary bytes as one MCP JSON-RPC message (the transports and tools/call validation); see `warden::fuzzing::mcp_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden::fuzzing::mcp_request(data));
