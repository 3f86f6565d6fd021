use super::*;
use serde_json::{Value, json};
use warden_guest::serde_json;

fn input(csv: &str) -> Input {
    Input { csv: csv.into(), delimiter: Delimiter::default(), has_header: true }
}

fn summary(csv: &str) -> Value {
    serde_json::to_value(summarize(input(csv)).unwrap()).unwrap()
}

#[test]
fn summarizes_numeric_and_text_columns() {
    let s = summary("name,age,city\nAda,36,London\nAlan,41,London\nGrace,,New York\nLinus,28,Helsinki\n");
    assert_eq!(
        s,
        json!({
            "rows": 4,
            "columns": [
                {"name": "name", "count": 4, "empty": 0, "numeric": false, "distinct": 4,
                 "top": [{"value": "Ada", "count": 1}, {"value": "Alan", "count": 1}, {"value": "Grace", "count": 1},
                         {"value": "Linus", "count": 1}]},
                {"name": "age", "count": 3, "empty": 1, "numeric": true, "min": 28.0, "max": 41.0, "mean": 35.0,
                 "distinct": 3},
                {"name": "city", "count": 4, "empty": 0, "numeric": false, "distinct": 3,
                 "top": [{"value": "London", "count": 2}, {"value": "Helsinki", "count": 1},
                         {"value": "New York", "count": 1}]},
            ]
        })
    );
}

#[test]
fn the_example_from_the_readme() {
    let s = summary("a,b\n1,2\n");
    assert_eq!(
        s,
        json!({"rows": 1, "columns": [
            {"name": "a", "count": 1, "empty": 0, "numeric": true, "min": 1.0, "max": 1.0, "mean": 1.0, "distinct": 1},
            {"name": "b", "count": 1, "empty": 0, "numeric": true, "min": 2.0, "max": 2.0, "mean": 2.0, "distinct": 1},
        ]})
    );
}

#[test]
fn numbers_in_the_usual_notations_are_numeric() {
    let s = summary("x\n-3.5\n1e3\n+.5\n 7 \n0\n");
    let c = &s["columns"][0];
    assert_eq!(c["numeric"], true);
    assert_eq!(c["min"], -3.5);
    assert_eq!(c["max"], 1000.0);
    assert_eq!(c["mean"], (-3.5 + 1000.0 + 0.5 + 7.0) / 5.0);
    assert!(c.get("top").is_none());
}

#[test]
fn one_non_number_makes_a_column_text() {
    for odd in ["n/a", "NaN", "inf", "1,5", "0x10", "1_000"] {
        let s = summary(&format!("x\n1\n2\n\"{odd}\"\n"));
        let c = &s["columns"][0];
        assert_eq!(c["numeric"], false, "{odd}");
        assert!(c.get("min").is_none() && c.get("max").is_none() && c.get("mean").is_none(), "{odd}");
        assert_eq!(c["top"].as_array().unwrap().len(), 3, "{odd}");
    }
}

#[test]
fn empty_and_missing_values_count_as_empty() {
    let s = summary("a,b,c\n1,,x\n  ,2\n3\n");
    assert_eq!(s["rows"], 3);
    let counts: Vec<(u64, u64)> = s["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["count"].as_u64().unwrap(), c["empty"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [(2, 1), (1, 2), (1, 2)]);
}

#[test]
fn a_column_with_no_values_is_not_numeric() {
    let s = summary("a,b\n1,\n2,\n");
    assert_eq!(
        s["columns"][1],
        json!({"name": "b", "count": 0, "empty": 2, "numeric": false, "distinct": 0, "top": []})
    );
}

#[test]
fn without_a_header_columns_are_numbered() {
    let s = serde_json::to_value(summarize(Input { has_header: false, ..input("1,x\n2,y\n") }).unwrap()).unwrap();
    assert_eq!(s["rows"], 2);
    assert_eq!(s["columns"][0]["name"], "column_1");
    assert_eq!(s["columns"][1]["name"], "column_2");
}

#[test]
fn ragged_records_widen_the_table() {
    let s = summary("a,\n1,2,3\n");
    let names: Vec<&str> = s["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "column_2", "column_3"]);
    // A header wider than the data keeps its columns.
    let s = summary("a,b,c\n1\n");
    assert_eq!(s["columns"].as_array().unwrap().len(), 3);
    assert_eq!(
        s["columns"][2],
        json!({"name": "c", "count": 0, "empty": 1, "numeric": false, "distinct": 0, "top": []})
    );
}

#[test]
fn header_only_and_empty_tables() {
    assert_eq!(summary(""), json!({"rows": 0, "columns": []}));
    let s = summary("a,b\n");
    assert_eq!(s["rows"], 0);
    assert_eq!(
        s["columns"][0],
        json!({"name": "a", "count": 0, "empty": 0, "numeric": false, "distinct": 0, "top": []})
    );
}

#[test]
fn other_delimiters_quotes_crlf_and_a_bom() {
    let csv = "\u{feff}\"last; first\";n\r\n\"Lovelace; Ada\";1\r\n\"say \"\"hi\"\"\";2\r\n";
    let s = serde_json::to_value(summarize(Input { delimiter: Delimiter(b';'), ..input(csv) }).unwrap()).unwrap();
    assert_eq!(s["rows"], 2);
    assert_eq!(s["columns"][0]["name"], "last; first");
    assert_eq!(s["columns"][0]["top"][0]["value"], "Lovelace; Ada");
    assert_eq!(s["columns"][0]["top"][1]["value"], "say \"hi\"");
    assert_eq!(s["columns"][1]["mean"], 1.5);
    let tabs = serde_json::to_value(summarize(Input { delimiter: Delimiter(b'\t'), ..input("a\tb\n1\t2\n") }).unwrap())
        .unwrap();
    assert_eq!(tabs["columns"][1]["name"], "b");
}

#[test]
fn top_is_the_five_most_frequent_with_ties_in_value_order() {
    let mut csv = String::from("v\n");
    for (value, n) in [("e", 1), ("d", 2), ("c", 2), ("b", 3), ("a", 1), ("f", 5), ("g", 1)] {
        for _ in 0..n {
            csv += value;
            csv += "\n";
        }
    }
    let s = summary(&csv);
    assert_eq!(s["columns"][0]["distinct"], 7);
    assert_eq!(
        s["columns"][0]["top"],
        json!([{"value": "f", "count": 5}, {"value": "b", "count": 3}, {"value": "c", "count": 2},
               {"value": "d", "count": 2}, {"value": "a", "count": 1}])
    );
}

#[test]
fn distinct_is_capped_at_1000() {
    let mut csv = String::from("id,tag\n");
    for i in 0..2500 {
        csv += &format!("{i},t{}\n", i % 10);
    }
    let s = summary(&csv);
    assert_eq!(s["rows"], 2500);
    assert_eq!(s["columns"][0]["distinct"], DISTINCT_CAP as u64);
    assert_eq!(s["columns"][0]["mean"], 1249.5);
    assert_eq!(s["columns"][1]["distinct"], 10);
    assert_eq!(s["columns"][1]["top"][0], json!({"value": "t0", "count": 250}));
}

#[test]
fn a_mean_past_the_range_of_f64_is_left_out() {
    let s = summary("x\n1e308\n1.5e308\n");
    let c = &s["columns"][0];
    assert_eq!(c["numeric"], true);
    assert_eq!(c["max"], 1.5e308);
    assert!(c.get("mean").is_none(), "{c}");
}

#[test]
fn the_mean_is_accurately_summed() {
    let s = summary(&format!("x\n1e16\n{}-1e16\n", "1\n".repeat(10)));
    assert_eq!(s["columns"][0]["mean"], 10.0 / 12.0);
}

#[test]
fn inputs_over_16_mib_are_refused() {
    let big = "a\n".to_string() + &"x".repeat(MAX_CSV_BYTES - 1);
    let e = summarize(input(&big)).unwrap_err();
    assert_eq!(e, "the CSV text is 16777217 bytes; csv_summary accepts at most 16 MiB (16777216 bytes)");
    // Exactly 16 MiB is fine.
    let edge = "a\n".to_string() + &"x".repeat(MAX_CSV_BYTES - 2);
    assert_eq!(edge.len(), MAX_CSV_BYTES);
    assert_eq!(summarize(input(&edge)).unwrap().rows, 1);
}

#[test]
fn too_many_columns_are_refused() {
    let wide = format!("{}\n", vec!["1"; MAX_COLUMNS + 1].join(","));
    let e = summarize(input(&wide)).unwrap_err();
    assert_eq!(
        e,
        format!(
            "the record on line 1 has {} fields; csv_summary handles at most {MAX_COLUMNS} columns",
            MAX_COLUMNS + 1
        )
    );
}

#[test]
fn delimiters_must_be_one_usable_ascii_character() {
    let parse =
        |d: &str| warden_guest::parse_arguments::<Input>(format!("{{\"csv\": \"\", \"delimiter\": {d}}}").as_bytes());
    assert_eq!(parse("\";\"").unwrap().delimiter, Delimiter(b';'));
    assert_eq!(parse("\"\\t\"").unwrap().delimiter, Delimiter(b'\t'));
    for (d, why) in [
        ("\"\"", "the delimiter must be exactly one character, not \"\""),
        ("\";;\"", "the delimiter must be exactly one character, not \";;\""),
        ("\"§\"", "the delimiter '§' cannot be used"),
        ("\"\\\"\"", "the delimiter '\"' cannot be used"),
        ("\"\\n\"", "the delimiter '\\n' cannot be used"),
        ("44", "invalid type: integer `44`, expected a string"),
    ] {
        let e = parse(d).unwrap_err().to_string();
        assert!(e.starts_with(&format!("invalid arguments: at /delimiter: {why}")), "{d}: {e}");
    }
}

#[test]
fn arguments_take_their_defaults() {
    let i: Input = warden_guest::parse_arguments(&br#"{"csv": "a\n1"}"#[..]).unwrap();
    assert_eq!((i.delimiter, i.has_header), (Delimiter(b','), true));
    let e = warden_guest::parse_arguments::<Input>(&br#"{"csv": "a", "header": false}"#[..]).unwrap_err();
    assert!(e.to_string().contains("unknown field `header`"), "{e}");
}

#[test]
fn the_schemas_describe_the_contract() {
    let s = warden_guest::schemas::<Input, Summary>();
    let input = &s["input"];
    assert_eq!(input["type"], "object");
    assert_eq!(input["required"], json!(["csv"]));
    assert_eq!(input["additionalProperties"], false);
    assert_eq!(input["properties"]["delimiter"]["default"], ",");
    assert_eq!(input["properties"]["delimiter"]["maxLength"], 1);
    assert_eq!(input["properties"]["has_header"]["default"], true);
    let output = &s["output"];
    assert_eq!(output["required"], json!(["rows", "columns"]));
    let column = &output["$defs"]["Column"];
    assert_eq!(column["required"], json!(["name", "count", "empty", "numeric", "distinct"]));
}

#[test]
fn a_call_end_to_end_through_the_sdk() {
    let r = warden_guest::respond(&["csv_summary"], &br#"{"csv": "a,b\n1,2\n"}"#[..], summarize);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["rows"], 1);
    let r = warden_guest::respond(&["csv_summary"], &br#"{"csv": 1}"#[..], summarize);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr, "invalid arguments: at /csv: invalid type: integer `1`, expected a string\n");
}
