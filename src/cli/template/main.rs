//! TOOL_NAME: a warden tool. It reads its arguments (`Input`) as JSON and returns `Output`;
//! `warden tools build` turns both types into the package's JSON Schemas.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A text to count.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The text.
    text: String,
}

/// What was counted.
#[derive(Serialize, JsonSchema)]
struct Output {
    lines: usize,
    words: usize,
    characters: usize,
}

fn count(input: Input) -> Result<Output, String> {
    Ok(Output {
        lines: input.text.lines().count(),
        words: input.text.split_whitespace().count(),
        characters: input.text.chars().count(),
    })
}

fn main() {
    warden_guest::run(count)
}
