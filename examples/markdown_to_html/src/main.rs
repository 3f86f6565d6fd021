//! markdown_to_html: a warden tool that renders Markdown to HTML.
//!
//! It uses serde and schemars through warden_guest's re-exports, so its Cargo.toml needs no
//! other dependency than the SDK and pulldown-cmark; the derives are pointed at the re-exported
//! crates with `#[serde(crate = ...)]` and `#[schemars(crate = ...)]`.

use std::convert::Infallible;

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};
use warden_guest::schemars::JsonSchema;
use warden_guest::serde::{Deserialize, Serialize};

/// Markdown to render.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "warden_guest::serde", deny_unknown_fields)]
#[schemars(crate = "warden_guest::schemars")]
pub struct Input {
    /// The Markdown text: CommonMark with tables, ~~strikethrough~~, task lists (`- [x]`) and
    /// footnotes (`[^1]`).
    pub markdown: String,
    /// Pass raw HTML in the Markdown through as HTML, and link URLs as written. By default raw
    /// HTML is escaped, so it shows as text, and javascript:, vbscript: and data: URLs in links
    /// and images are replaced by "#". Only set this for Markdown you trust.
    #[serde(default)]
    pub allow_raw_html: bool,
}

/// The rendered HTML.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(crate = "warden_guest::serde")]
#[schemars(crate = "warden_guest::schemars")]
pub struct Output {
    /// An HTML fragment (no `<html>` or `<body>`).
    pub html: String,
}

/// The Markdown extensions this tool turns on.
pub fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS | Options::ENABLE_FOOTNOTES
}

/// The tool: renders the Markdown. It cannot fail.
pub fn render(input: Input) -> Result<Output, Infallible> {
    let parser = Parser::new_ext(&input.markdown, options());
    let mut out = String::with_capacity(input.markdown.len() + input.markdown.len() / 2);
    if input.allow_raw_html {
        html::push_html(&mut out, parser);
    } else {
        html::push_html(&mut out, parser.map(safe));
    }
    Ok(Output { html: out })
}

/// Makes one event safe to render from untrusted Markdown: raw HTML becomes text (which the
/// renderer escapes), and script-bearing URLs are replaced.
fn safe(event: Event<'_>) -> Event<'_> {
    match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: safe_url(dest_url), title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Image { link_type, dest_url: safe_url(dest_url), title, id })
        }
        other => other,
    }
}

/// URL schemes that run code or smuggle documents when clicked or loaded.
const UNSAFE_SCHEMES: &[&str] = &["javascript:", "vbscript:", "data:"];

fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    if is_unsafe_url(&url) { CowStr::Borrowed("#") } else { url }
}

/// Whether a URL has an unsafe scheme as a browser would read it: leading spaces and control
/// characters are skipped, tabs and line breaks anywhere are ignored, and case does not matter.
pub fn is_unsafe_url(url: &str) -> bool {
    let seen: String = url
        .trim_start_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    UNSAFE_SCHEMES.iter().any(|scheme| seen.starts_with(scheme))
}

fn main() {
    warden_guest::run(render)
}

#[cfg(test)]
mod tests;
