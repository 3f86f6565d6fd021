use super::*;
use serde_json::json;

/// The example document of RFC 9535, section 1.5.
fn store() -> Value {
    json!({ "store": {
        "book": [
            { "category": "reference", "author": "Nigel Rees", "title": "Sayings of the Century", "price": 8.95 },
            { "category": "fiction", "author": "Evelyn Waugh", "title": "Sword of Honour", "price": 12.99 },
            { "category": "fiction", "author": "Herman Melville", "title": "Moby Dick", "isbn": "0-553-21311-3",
              "price": 8.99 },
            { "category": "fiction", "author": "J. R. R. Tolkien", "title": "The Lord of the Rings",
              "isbn": "0-395-19395-8", "price": 22.99 }
        ],
        "bicycle": { "color": "red", "price": 399 }
    }})
}

fn run(document: Value, q: &str) -> Result<Output, String> {
    query(Input { document, query: q.into() })
}

fn matches(q: &str) -> Vec<Value> {
    let out = run(store(), q).unwrap();
    assert_eq!(out.count as usize, out.matches.len());
    out.matches
}

#[test]
fn the_rfc_examples() {
    assert_eq!(
        matches("$.store.book[*].author"),
        [json!("Nigel Rees"), json!("Evelyn Waugh"), json!("Herman Melville"), json!("J. R. R. Tolkien")]
    );
    assert_eq!(matches("$..author").len(), 4);
    assert_eq!(matches("$.store.*").len(), 2);
    assert_eq!(matches("$.store..price").len(), 5);
    assert_eq!(matches("$..book[2]"), [store()["store"]["book"][2].clone()]);
    assert_eq!(matches("$..book[2].author"), [json!("Herman Melville")]);
    assert_eq!(matches("$..book[2].publisher"), Vec::<Value>::new());
    assert_eq!(matches("$..book[-1].title"), [json!("The Lord of the Rings")]);
    assert_eq!(matches("$..book[0,1].title").len(), 2);
    assert_eq!(matches("$..book[:2].title").len(), 2);
    assert_eq!(matches("$..book[?@.isbn].title"), [json!("Moby Dick"), json!("The Lord of the Rings")]);
    assert_eq!(matches("$..book[?@.price<10].title"), [json!("Sayings of the Century"), json!("Moby Dick")]);
    assert_eq!(matches("$..*").len(), 27);
}

#[test]
fn the_standard_functions_work() {
    assert_eq!(
        matches("$.store.book[?length(@.title) > 15].title"),
        [json!("Sayings of the Century"), json!("The Lord of the Rings")]
    );
    assert_eq!(matches("$.store.book[?match(@.author, '.*Rees')].price"), [json!(8.95)]);
    assert_eq!(matches("$.store.book[?search(@.title, 'Rings')].category"), [json!("fiction")]);
    assert_eq!(matches("$.store[?count(@.*) == 4]").len(), 1);
    assert_eq!(matches("$.store.book[?value(@.price) == 22.99].author"), [json!("J. R. R. Tolkien")]);
}

#[test]
fn any_json_value_can_be_the_document() {
    assert_eq!(run(json!([1, 2, 3]), "$[1:]").unwrap(), Output { matches: vec![json!(2), json!(3)], count: 2 });
    assert_eq!(run(json!("text"), "$").unwrap().matches, [json!("text")]);
    assert_eq!(run(json!(null), "$").unwrap().matches, [Value::Null]);
    assert_eq!(run(json!(null), "$.a").unwrap(), Output { matches: vec![], count: 0 });
}

#[test]
fn object_keys_keep_their_order() {
    let doc: Value = serde_json::from_str(r#"{"z": 1, "a": 2, "m": 3}"#).unwrap();
    assert_eq!(run(doc, "$.*").unwrap().matches, [json!(1), json!(2), json!(3)]);
}

#[test]
fn a_malformed_query_names_the_problem_and_where() {
    let e = run(store(), "$.store[?@.price <]").unwrap_err();
    assert!(e.starts_with("invalid JSONPath query at character "), "{e}");
    assert!(e.contains("\n  $.store[?@.price <]\n  "), "{e}");
    assert!(e.ends_with('^'), "{e}");
    let e = run(store(), "store.book").unwrap_err();
    assert!(e.starts_with("invalid JSONPath query at character 1: "), "{e}");
    assert!(e.ends_with("\n  store.book\n  ^"), "{e}");
    let e = run(store(), "").unwrap_err();
    assert!(e.contains("the query is empty"), "{e}");
    // RFC 9535 is strict: no trailing dot, no unknown functions.
    assert!(run(store(), "$.store.").is_err());
    assert!(run(store(), "$[?nope(@)]").is_err());
}

#[test]
fn the_caret_points_at_the_problem() {
    let e = run(json!({}), "$.a[?@.b ==]").unwrap_err();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    let caret = lines[2].find('^').unwrap();
    let at: usize =
        lines[0]["invalid JSONPath query at character ".len()..].split(':').next().unwrap().parse().unwrap();
    assert_eq!(caret - 2 + 1, at, "{e}");
}

#[test]
fn arguments_are_both_required() {
    let e = warden_guest::parse_arguments::<Input>(&br#"{"query": "$"}"#[..]).unwrap_err();
    assert_eq!(e.to_string(), "invalid arguments: missing field `document`");
    let i: Input = warden_guest::parse_arguments(&br#"{"document": null, "query": "$"}"#[..]).unwrap();
    assert_eq!(i.document, Value::Null);
}

#[test]
fn the_schemas_describe_the_contract() {
    let s = warden_guest::schemas::<Input, Output>();
    assert_eq!(s["input"]["type"], "object");
    assert_eq!(s["input"]["required"], json!(["document", "query"]));
    assert_eq!(s["input"]["properties"]["query"]["type"], "string");
    assert!(s["input"]["properties"]["document"].get("type").is_none(), "any JSON value");
    assert_eq!(s["output"]["required"], json!(["matches", "count"]));
}

#[test]
fn a_call_end_to_end_through_the_sdk() {
    let stdin = br#"{"document": {"a": [1, 2, 3]}, "query": "$.a[?@ > 1]"}"#;
    let r = warden_guest::respond(&["json_query"], &stdin[..], query);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "{\"matches\":[2,3],\"count\":2}\n");
    let r = warden_guest::respond(&["json_query"], &br#"{"document": 1, "query": "$["}"#[..], query);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("invalid JSONPath query at character "), "{}", r.stderr);
}
