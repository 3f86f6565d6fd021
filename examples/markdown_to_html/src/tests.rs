use super::*;
use warden_guest::serde_json::{self, Value, json};

fn html(markdown: &str) -> String {
    render(Input { markdown: markdown.into(), allow_raw_html: false }).unwrap().html
}

fn raw(markdown: &str) -> String {
    render(Input { markdown: markdown.into(), allow_raw_html: true }).unwrap().html
}

#[test]
fn renders_commonmark() {
    assert_eq!(
        html("# Title\n\nSome *emphasis* and `code`.\n"),
        "<h1>Title</h1>\n<p>Some <em>emphasis</em> and <code>code</code>.</p>\n"
    );
    assert_eq!(html(""), "");
    assert_eq!(
        html("[a](https://example.com/x?a=1&b=2 \"t\")"),
        "<p><a href=\"https://example.com/x?a=1&amp;b=2\" title=\"t\">a</a></p>\n"
    );
}

#[test]
fn tables_strikethrough_tasklists_and_footnotes_are_on() {
    let table = html("| a | b |\n|---|--:|\n| 1 | 2 |\n");
    assert!(
        table.starts_with("<table><thead><tr><th>a</th><th style=\"text-align: right\">b</th></tr></thead><tbody>"),
        "{table}"
    );
    assert!(table.contains("<td>1</td><td style=\"text-align: right\">2</td>"), "{table}");
    assert_eq!(html("~~gone~~"), "<p><del>gone</del></p>\n");
    let tasks = html("- [x] done\n- [ ] to do\n");
    assert!(tasks.contains("<input disabled=\"\" type=\"checkbox\" checked=\"\"/>\ndone"), "{tasks}");
    assert!(tasks.contains("<input disabled=\"\" type=\"checkbox\"/>\nto do"), "{tasks}");
    let notes = html("Claim.[^1]\n\n[^1]: Source.\n");
    assert!(notes.contains("<sup class=\"footnote-reference\"><a href=\"#1\">1</a></sup>"), "{notes}");
    assert!(notes.contains("<div class=\"footnote-definition\" id=\"1\">"), "{notes}");
}

#[test]
fn raw_html_is_escaped_by_default() {
    assert_eq!(html("a <b onclick=\"x()\">bold</b> c"), "<p>a &lt;b onclick=\"x()\"&gt;bold&lt;/b&gt; c</p>\n");
    let block = html("<script>alert(1)</script>\n\nafter\n");
    assert!(!block.contains("<script"), "{block}");
    assert!(block.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{block}");
    assert!(block.ends_with("<p>after</p>\n"), "{block}");
    let div = html("<div>\n*x*\n</div>\n");
    assert!(!div.contains("<div"), "{div}");
    // Image alt text keeps to text as well.
    assert_eq!(html("![a <i>b</i>](p.png)"), "<p><img src=\"p.png\" alt=\"a &lt;i&gt;b&lt;/i&gt;\" /></p>\n");
}

#[test]
fn raw_html_passes_when_allowed() {
    assert_eq!(raw("a <b>bold</b> c"), "<p>a <b>bold</b> c</p>\n");
    assert_eq!(raw("<div>\nx\n</div>\n"), "<div>\nx\n</div>\n");
    assert_eq!(raw("[x](javascript:alert(1))"), "<p><a href=\"javascript:alert(1)\">x</a></p>\n");
}

#[test]
fn script_urls_are_neutralized_by_default() {
    for md in [
        "[x](javascript:alert(1))",
        "[x](JavaScript:alert(1))",
        "[x](<  java\tscript:alert(1)>)",
        "[x](javascript&#58;alert(1))",
        "[x](vbscript:msgbox)",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x][r]\n\n[r]: javascript:alert(1)",
        "<javascript:alert(1)>",
    ] {
        let out = html(md);
        assert!(out.contains("href=\"#\""), "{md}: {out}");
        let lower = out.to_ascii_lowercase();
        assert!(
            !lower.contains("href=\"j") && !lower.contains("href=\"v") && !lower.contains("href=\"d"),
            "{md}: {out}"
        );
    }
    assert_eq!(html("![i](data:image/svg+xml,x)"), "<p><img src=\"#\" alt=\"i\" /></p>\n");
    // Ordinary URLs are untouched.
    for url in ["https://example.com", "/relative/path", "#anchor", "mailto:a@example.com", "javascript-guide.html"] {
        assert!(html(&format!("[x]({url})")).contains(&format!("href=\"{url}\"")), "{url}");
    }
}

#[test]
fn unsafe_url_detection() {
    assert!(is_unsafe_url("javascript:x"));
    assert!(is_unsafe_url(" \u{1}JAVASCRIPT:x"));
    assert!(is_unsafe_url("jav\nascript:x"));
    assert!(is_unsafe_url("Data:text/html,x"));
    assert!(!is_unsafe_url("https://example.com/javascript:x"));
    assert!(!is_unsafe_url("javascript"));
    assert!(!is_unsafe_url(""));
}

#[test]
fn arguments_default_and_refuse_unknown_fields() {
    let i: Input = warden_guest::parse_arguments(&br#"{"markdown": "x"}"#[..]).unwrap();
    assert!(!i.allow_raw_html);
    let e = warden_guest::parse_arguments::<Input>(&br#"{"markdown": "x", "raw": true}"#[..]).unwrap_err();
    assert!(e.to_string().contains("unknown field `raw`"), "{e}");
    let e = warden_guest::parse_arguments::<Input>(&br#"{"markdown": ["x"]}"#[..]).unwrap_err();
    assert_eq!(e.to_string(), "invalid arguments: at /markdown: invalid type: sequence, expected a string");
}

#[test]
fn the_schemas_describe_the_contract() {
    let s = warden_guest::schemas::<Input, Output>();
    assert_eq!(s["input"]["type"], "object");
    assert_eq!(s["input"]["required"], json!(["markdown"]));
    assert_eq!(s["input"]["properties"]["allow_raw_html"]["default"], false);
    assert_eq!(s["output"]["required"], json!(["html"]));
}

#[test]
fn a_call_end_to_end_through_the_sdk() {
    let r = warden_guest::respond(&["markdown_to_html"], &br#"{"markdown": "**hi** <b>"}"#[..], render);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v, json!({"html": "<p><strong>hi</strong> &lt;b&gt;</p>\n"}));
}
