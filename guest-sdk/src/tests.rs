use super::*;
use serde::Deserialize;
use serde_json::json;

/// Sums numbers.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The numbers to add.
    numbers: Vec<f64>,
    /// Scales the sum.
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    label: Option<Label>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Label {
    text: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Output {
    sum: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

fn sum(input: Input) -> Result<Output, String> {
    if input.numbers.is_empty() {
        return Err("give at least one number".into());
    }
    Ok(Output { sum: input.numbers.iter().sum::<f64>() * input.scale, label: input.label.map(|l| l.text) })
}

fn call(stdin: &str) -> Response {
    respond(&["sum"], stdin.as_bytes(), sum)
}

fn parse(stdin: &str) -> Result<Input, ArgumentError> {
    parse_arguments::<Input>(stdin.as_bytes())
}

#[test]
fn a_call_prints_the_result_as_one_line_of_json() {
    let r = call(r#"{"numbers": [1, 2, 3.5], "scale": 2}"#);
    assert_eq!(r.code, exit::OK, "{r:?}");
    assert_eq!(r.stderr, "");
    assert!(r.stdout.ends_with('\n') && r.stdout.trim_end().lines().count() == 1);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v, json!({"sum": 13.0}));
}

#[test]
fn a_handler_error_is_exit_1_with_its_message_on_stderr() {
    let r = call(r#"{"numbers": []}"#);
    assert_eq!(r, Response { stdout: String::new(), stderr: "give at least one number\n".into(), code: exit::FAILED });
}

#[test]
fn an_empty_handler_message_still_says_something() {
    let r = respond(&["t"], &b"{}"[..], |_: Value| Err::<Value, _>(""));
    assert_eq!(r.code, exit::FAILED);
    assert_eq!(r.stderr, "the tool failed without saying why\n");
}

#[test]
fn alternate_display_shows_a_chain_of_causes() {
    struct Chain;
    impl Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if f.alternate() { f.write_str("outer: inner") } else { f.write_str("outer") }
        }
    }
    let r = respond(&["t"], &b"{}"[..], |_: serde_json::Map<String, Value>| Err::<Value, _>(Chain));
    assert_eq!(r.stderr, "outer: inner\n");
}

#[test]
fn bad_arguments_are_exit_2_and_never_reach_the_handler() {
    let r = respond(&["sum"], &br#"{"numbers": "1 2"}"#[..], |_: Input| -> Result<Output, String> {
        panic!("the handler must not run")
    });
    assert_eq!(r.code, exit::INVALID_ARGUMENTS);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.starts_with("invalid arguments: at /numbers: invalid type: string \"1 2\", expected a sequence"),
        "{}",
        r.stderr
    );
}

#[test]
fn argument_errors_name_the_problem_and_where() {
    let cases = [
        // Not JSON at all, or not an object.
        ("numbers", "the arguments are not valid JSON: expected ident (line 1, column 3)"),
        ("[1, 2", "the arguments are not valid JSON: EOF while parsing a list (line 1, column 5)"),
        ("1 2", "the arguments are not valid JSON: trailing characters (line 1, column 3)"),
        ("[1, 2]", "the arguments must be one JSON object, but stdin holds an array"),
        ("  \"x\"", "the arguments must be one JSON object, but stdin holds a string"),
        ("-1", "the arguments must be one JSON object, but stdin holds a number"),
        ("true", "the arguments must be one JSON object, but stdin holds a boolean"),
        ("null", "the arguments must be one JSON object, but stdin holds null"),
        // Broken JSON.
        ("{\"numbers\": [1,", "the arguments are not valid JSON: EOF while parsing a value (line 1, column 15)"),
        ("{\"numbers\": [1]} x", "the arguments are not valid JSON: trailing characters (line 1, column 18)"),
        ("{\"numbers\": [1]}{}", "the arguments are not valid JSON: trailing characters (line 1, column 17)"),
        ("{numbers: [1]}", "the arguments are not valid JSON: key must be a string (line 1, column 2)"),
        // Valid JSON of the wrong shape.
        ("{}", "invalid arguments: missing field `numbers`"),
        ("{\"numbers\": [1, \"2\"]}", "invalid arguments: at /numbers/1: invalid type: string \"2\", expected f64"),
        ("{\"numbers\": [1], \"scale\": null}", "invalid arguments: at /scale: invalid type: null, expected f64"),
        (
            "{\"numbers\": [1], \"label\": {\"text\": 3}}",
            "invalid arguments: at /label/text: invalid type: integer `3`, expected a string",
        ),
        (
            "{\"numbers\": [1], \"labels\": 1}",
            "invalid arguments: at /labels: unknown field `labels`, expected one of `numbers`, `scale`, `label`",
        ),
    ];
    for (stdin, expected) in cases {
        let e = parse(stdin).expect_err(stdin);
        let message = e.to_string();
        assert!(message.starts_with(expected), "for {stdin:?}\n got: {message}\nwant: {expected}...");
    }
}

#[test]
fn argument_errors_carry_a_json_pointer() {
    assert_eq!(parse(r#"{"numbers": [1, "2"]}"#).unwrap_err().pointer, "/numbers/1");
    assert_eq!(parse("{}").unwrap_err().pointer, "");
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Odd {
        #[serde(rename = "a/b~c")]
        x: u8,
    }
    let e = parse_arguments::<Odd>(&br#"{"a/b~c": -1}"#[..]).unwrap_err();
    assert_eq!(e.pointer, "/a~1b~0c");
}

#[test]
fn syntax_errors_give_the_position_in_the_input() {
    let e = parse("{\n  \"numbers\": [1, tru]\n}").unwrap_err().to_string();
    assert_eq!(e, "the arguments are not valid JSON: expected ident (line 2, column 21)");
}

#[test]
fn valid_arguments_parse_with_defaults() {
    assert_eq!(parse(r#" {"numbers": [1]} "#).unwrap(), Input { numbers: vec![1.0], scale: 1.0, label: None });
    let full = parse("{\"numbers\": [], \"scale\": -2.5, \"label\": {\"text\": \"t\"}}\n").unwrap();
    assert_eq!(full, Input { numbers: vec![], scale: -2.5, label: Some(Label { text: "t".into() }) });
}

#[test]
fn empty_stdin_reads_as_an_empty_object() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct AllOptional {
        #[serde(default)]
        n: u32,
    }
    for stdin in ["", "  \n\t "] {
        assert_eq!(parse_arguments::<AllOptional>(stdin.as_bytes()).unwrap(), AllOptional { n: 0 });
        assert_eq!(parse(stdin).unwrap_err().to_string(), "invalid arguments: missing field `numbers`");
    }
}

#[test]
fn arguments_are_streamed_through_a_small_buffer() {
    let text: String = "x".repeat(100_000);
    let stdin = format!("{{\"numbers\": [], \"label\": {{\"text\": \"{text}\"}}}}");
    let reader = io::BufReader::with_capacity(7, stdin.as_bytes());
    let input: Input = parse_arguments(reader).unwrap();
    assert_eq!(input.label.unwrap().text, text);
    // Leading whitespace longer than the buffer is skipped too.
    let reader = io::BufReader::with_capacity(3, "          {\"numbers\": [2]}".as_bytes());
    assert_eq!(parse_arguments::<Input>(reader).unwrap().numbers, vec![2.0]);
}

#[test]
fn non_utf8_input_is_an_argument_error() {
    let e = parse_arguments::<Input>(&b"{\"numbers\": [], \"label\": {\"text\": \"\xff\"}}"[..]).unwrap_err();
    assert!(e.to_string().starts_with("the arguments are not valid JSON: invalid unicode code point"), "{e}");
}

#[test]
fn schemas_are_json_schema_2020_12_with_an_object_input() {
    let s = schemas::<Input, Output>();
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["input", "output"]);
    let input = &s["input"];
    assert_eq!(input["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(input["type"], "object");
    assert_eq!(input["title"], "Input");
    assert_eq!(input["description"], "Sums numbers.");
    assert_eq!(input["required"], json!(["numbers"]));
    assert_eq!(input["additionalProperties"], json!(false));
    assert_eq!(input["properties"]["numbers"]["description"], "The numbers to add.");
    assert_eq!(input["properties"]["scale"]["default"], json!(1.0));
    // Properties keep the struct's order.
    let order: Vec<&String> = input["properties"].as_object().unwrap().keys().collect();
    assert_eq!(order, ["numbers", "scale", "label"]);
    // Nested types are definitions, referenced locally.
    assert!(input["$defs"]["Label"].is_object(), "{input}");
    assert!(check_input_schema(input).is_ok());
}

#[test]
fn the_output_schema_describes_what_is_serialized() {
    let output = &schemas::<Input, Output>()["output"];
    assert_eq!(output["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(output["type"], "object");
    // `label` is skipped when None, so it is optional; `sum` is always there.
    assert_eq!(output["required"], json!(["sum"]));
    assert!(output["properties"]["label"].is_object());
}

#[test]
fn the_schema_query_prints_both_schemas() {
    let r = respond(&["sum", SCHEMA_FLAG], io::empty(), sum);
    assert_eq!(r.code, exit::OK, "{r:?}");
    assert_eq!(r.stderr, "");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v, schemas::<Input, Output>());
}

#[test]
fn the_schema_query_ignores_stdin() {
    let r = respond(&["sum", SCHEMA_FLAG], &b"not json"[..], sum);
    assert_eq!(r.code, exit::OK);
}

#[test]
fn an_input_type_that_is_not_an_object_fails_the_schema_query() {
    let r = respond(&["t", SCHEMA_FLAG], io::empty(), |s: String| Ok::<_, String>(s));
    assert_eq!(r.code, exit::FAILED);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("must be a struct"), "{}", r.stderr);
    assert!(r.stderr.contains("\"type\": \"string\""), "{}", r.stderr);
    let r = respond(&["t", SCHEMA_FLAG], io::empty(), |v: Value| Ok::<_, String>(v));
    assert_eq!(r.code, exit::FAILED);
    assert!(r.stderr.contains("no single type"), "{}", r.stderr);
    // A map is an object, and so fine.
    let r = respond(&["t", SCHEMA_FLAG], io::empty(), |m: std::collections::BTreeMap<String, u8>| Ok::<_, String>(m));
    assert_eq!(r.code, exit::OK, "{r:?}");
}

#[test]
fn other_command_lines_are_usage_errors() {
    assert_eq!(invocation::<&str>(&[]), Invocation::Call);
    assert_eq!(invocation(&["t"]), Invocation::Call);
    assert_eq!(invocation(&["t", "--warden-schema"]), Invocation::Schema);
    for args in [&["t", "--help"][..], &["t", "--warden-schema", "x"], &["t", "{}"]] {
        let r = respond(args, &b"{\"numbers\": [1]}"[..], sum);
        assert_eq!(r.code, exit::INVALID_ARGUMENTS, "{args:?}");
        assert_eq!(r.stdout, "");
        assert!(r.stderr.starts_with("unexpected command-line arguments: "), "{}", r.stderr);
        assert!(r.stderr.contains("usage: t < arguments.json"), "{}", r.stderr);
    }
}

#[test]
fn a_result_that_is_not_json_is_a_failure() {
    let r = respond(&["t"], &b"{}"[..], |_: Value| {
        let mut m = std::collections::BTreeMap::new();
        m.insert(vec![1u8], 1u8); // a map with non-string keys has no JSON form
        Ok::<_, String>(m)
    });
    assert_eq!(r.code, exit::FAILED);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.starts_with("the tool's result cannot be written as JSON: "), "{}", r.stderr);
}

#[test]
fn descriptions_are_unwrapped_like_markdown() {
    let cases = [
        ("one line", "one line"),
        ("wrapped\nline", "wrapped line"),
        ("para one\nwrapped\n\npara two", "para one wrapped\n\npara two"),
        ("items:\n- a\n- b\n1. c\n10) d", "items:\n- a\n- b\n1. c\n10) d"),
        ("code:\n```\nx\ny\n```\nafter\nmore", "code:\n```\nx\ny\n```\nafter more"),
        ("hard break  \nnext", "hard break  \nnext"),
        ("text\n    indented\n> quote\n# head\n| t |", "text\n    indented\n> quote\n# head\n| t |"),
        ("1999 was\na year", "1999 was a year"),
    ];
    for (from, to) in cases {
        assert_eq!(unwrap_markdown(from), to, "{from:?}");
    }
}

#[test]
fn doc_comments_become_one_line_descriptions_everywhere() {
    /// A type whose doc comment
    /// is wrapped.
    #[derive(Deserialize, Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Wrapped {
        /// A field whose doc comment
        /// is wrapped.
        field: Inner,
    }
    /// Inner, wrapped
    /// too.
    #[derive(Deserialize, Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        /// Deep
        /// down.
        x: u8,
    }
    let s = schemas::<Wrapped, Wrapped>();
    for side in ["input", "output"] {
        let schema = &s[side];
        assert_eq!(schema["description"], "A type whose doc comment is wrapped.");
        assert_eq!(schema["properties"]["field"]["description"], "A field whose doc comment is wrapped.");
        assert_eq!(schema["$defs"]["Inner"]["description"], "Inner, wrapped too.");
        assert_eq!(schema["$defs"]["Inner"]["properties"]["x"]["description"], "Deep down.");
    }
}
