//! csv_summary: a warden tool that summarizes a CSV table, column by column.

use std::borrow::Cow;
use std::collections::HashMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest CSV text accepted, in bytes.
pub const MAX_CSV_BYTES: usize = 16 << 20;
/// The most columns a table may have (as many as a spreadsheet has).
pub const MAX_COLUMNS: usize = 16_384;
/// Distinct values are counted up to this many per column.
pub const DISTINCT_CAP: usize = 1000;
/// How many of the most frequent values `top` lists.
pub const TOP: usize = 5;

/// A CSV table to summarize.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The CSV text, at most 16 MiB.
    pub csv: String,
    /// The field delimiter: one ASCII character other than `"`, CR or LF (for example "," ";"
    /// "|" or a tab).
    #[serde(default)]
    pub delimiter: Delimiter,
    /// Whether the first record names the columns. Without a header the columns are named
    /// column_1, column_2, ...
    #[serde(default = "yes")]
    pub has_header: bool,
}

fn yes() -> bool {
    true
}

/// The summary of a table.
#[derive(Debug, PartialEq, Serialize, JsonSchema)]
pub struct Summary {
    /// The number of data records (the header not included).
    pub rows: u64,
    /// One summary per column, in the table's order.
    pub columns: Vec<Column>,
}

/// The summary of one column. Values are read with surrounding whitespace removed; a value that
/// is then empty, or missing from a short record, counts as empty.
#[derive(Debug, PartialEq, Serialize, JsonSchema)]
pub struct Column {
    /// The column's name from the header, or column_N (counting from 1) when it has none.
    pub name: String,
    /// How many records have a non-empty value in this column.
    pub count: u64,
    /// How many records have no value in this column (`count + empty = rows`).
    pub empty: u64,
    /// True when the column has values and every one of them is a finite number.
    pub numeric: bool,
    /// The smallest value (numeric columns only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest value (numeric columns only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The arithmetic mean (numeric columns only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// How many different values the column has, counted up to 1000 (1000 means "1000 or more").
    pub distinct: u64,
    /// For columns that are not numeric: the most frequent values, at most 5, most frequent
    /// first (equal counts in value order). Only the first 1000 distinct values of a column are
    /// tracked, so for columns with more this is approximate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<TopValue>>,
}

/// A value and how many records have it.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct TopValue {
    pub value: String,
    pub count: u64,
}

/// A CSV field delimiter: one ASCII character that is not a quote or a line break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiter(pub u8);

impl Default for Delimiter {
    fn default() -> Self {
        Delimiter(b',')
    }
}

impl TryFrom<&str> for Delimiter {
    type Error = String;

    fn try_from(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii() && !matches!(c, '"' | '\r' | '\n') => Ok(Delimiter(c as u8)),
            (Some(c), None) => {
                Err(format!("the delimiter {c:?} cannot be used: use one ASCII character other than '\"', CR or LF"))
            }
            _ => Err(format!("the delimiter must be exactly one character, not {s:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for Delimiter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(deserializer)?;
        Delimiter::try_from(&*s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Delimiter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&char::from(self.0).to_string())
    }
}

impl JsonSchema for Delimiter {
    fn schema_name() -> Cow<'static, str> {
        "Delimiter".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1, "maxLength": 1 })
    }
}

/// Running statistics of one column.
#[derive(Default)]
struct Stats {
    count: u64,
    /// Non-numeric values seen (then the numbers below are no longer kept up).
    text: bool,
    min: f64,
    max: f64,
    /// A Neumaier-compensated sum.
    sum: f64,
    compensation: f64,
    /// Counts of the first DISTINCT_CAP distinct values.
    values: HashMap<String, u64>,
}

impl Stats {
    fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        self.count += 1;
        if !self.text {
            match parse_number(value) {
                Some(x) => self.add_number(x),
                None => self.text = true,
            }
        }
        if let Some(n) = self.values.get_mut(value) {
            *n += 1;
        } else if self.values.len() < DISTINCT_CAP {
            self.values.insert(value.to_owned(), 1);
        }
    }

    fn add_number(&mut self, x: f64) {
        if self.count == 1 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let t = self.sum + x;
        self.compensation += if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
    }

    fn finish(self, name: String, rows: u64) -> Column {
        let numeric = self.count > 0 && !self.text;
        let mean = (self.sum + self.compensation) / self.count as f64;
        let top = (!numeric).then(|| {
            let mut top: Vec<(String, u64)> = self.values.iter().map(|(v, n)| (v.clone(), *n)).collect();
            top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(TOP);
            top.into_iter().map(|(value, count)| TopValue { value, count }).collect()
        });
        Column {
            name,
            count: self.count,
            empty: rows - self.count,
            numeric,
            min: numeric.then_some(self.min),
            max: numeric.then_some(self.max),
            // A sum past f64's range has no mean to show.
            mean: (numeric && mean.is_finite()).then_some(mean),
            distinct: self.values.len() as u64,
            top,
        }
    }
}

/// A finite number in the usual notations (`12`, `-3.5`, `1e6`, `+.5`); not `NaN` or `inf`.
fn parse_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The tool: reads the table and summarizes each column.
pub fn summarize(input: Input) -> Result<Summary, String> {
    if input.csv.len() > MAX_CSV_BYTES {
        return Err(format!(
            "the CSV text is {} bytes; csv_summary accepts at most 16 MiB ({MAX_CSV_BYTES} bytes)",
            input.csv.len()
        ));
    }
    let text = input.csv.strip_prefix('\u{feff}').unwrap_or(&input.csv);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(input.delimiter.0)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut names: Vec<String> = Vec::new();
    let mut stats: Vec<Stats> = Vec::new();
    let mut rows: u64 = 0;
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(describe_csv_error(&e)),
        }
        if record.len() > MAX_COLUMNS {
            let line = record.position().map_or(0, |p| p.line());
            return Err(format!(
                "the record on line {line} has {} fields; csv_summary handles at most {MAX_COLUMNS} columns",
                record.len()
            ));
        }
        if std::mem::take(&mut first) && input.has_header {
            names = record.iter().map(|name| name.trim().to_owned()).collect();
            continue;
        }
        rows += 1;
        if record.len() > stats.len() {
            stats.resize_with(record.len(), Stats::default);
        }
        for (column, value) in stats.iter_mut().zip(record.iter()) {
            column.add(value.trim());
        }
    }
    let width = stats.len().max(names.len());
    stats.resize_with(width, Stats::default);
    let mut names = names.into_iter();
    let columns = stats
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let name = names.next().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("column_{}", i + 1));
            s.finish(name, rows)
        })
        .collect();
    Ok(Summary { rows, columns })
}

fn describe_csv_error(e: &csv::Error) -> String {
    match e.position() {
        Some(p) => format!("the CSV cannot be read at line {}: {e}", p.line()),
        None => format!("the CSV cannot be read: {e}"),
    }
}

fn main() {
    warden_guest::run(summarize)
}

#[cfg(test)]
mod tests;
