//! json_query: a warden tool that queries a JSON document with JSONPath (RFC 9535).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::{JsonPath, ParseError};

/// A JSON document and the JSONPath query to run on it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The document to query: any JSON value.
    pub document: Value,
    /// An RFC 9535 JSONPath query, starting at the root `$`: for example `$.store.book[0].title`,
    /// `$..author`, `$.items[-2:]` or `$.items[?@.price < 10 && match(@.name, 'a.*')]`.
    pub query: String,
}

/// What the query selected.
#[derive(Debug, PartialEq, Serialize, JsonSchema)]
pub struct Output {
    /// The selected values, in document order.
    pub matches: Vec<Value>,
    /// How many values were selected.
    pub count: u64,
}

/// The tool: parses the query and runs it.
pub fn query(input: Input) -> Result<Output, String> {
    let path = JsonPath::parse(&input.query).map_err(|e| describe(&input.query, &e))?;
    let matches: Vec<Value> = path.query(&input.document).all().into_iter().cloned().collect();
    Ok(Output { count: matches.len() as u64, matches })
}

/// "invalid JSONPath query at character N: <problem>", with the query and a caret under the
/// spot when the query is one short line.
fn describe(query: &str, e: &ParseError) -> String {
    let mut byte = e.position().min(query.len());
    while !query.is_char_boundary(byte) {
        byte -= 1;
    }
    let column = query[..byte].chars().count();
    let mut message = format!("invalid JSONPath query at character {}: {}", column + 1, e.message());
    if query.is_empty() {
        message.push_str(" (the query is empty; a query starts with `$`)");
    } else if !query.contains(['\n', '\r']) && query.chars().count() <= 120 {
        message.push_str(&format!("\n  {query}\n  {}^", " ".repeat(column)));
    }
    message
}

fn main() {
    warden_guest::run(query)
}

#[cfg(test)]
mod tests;
