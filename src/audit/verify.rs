//! Checking an audit log's hash chain, and saying where it breaks.

use std::collections::HashSet;
use std::io::BufRead;

use serde_json::Value;

use super::{GENESIS, line_hash};

/// The result of walking a log.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Lines that verified.
    pub lines: usize,
    /// Hash of the last good line (the genesis hash for an empty log).
    pub last_hash: String,
    /// The first problem, with its line number.
    pub problem: Option<String>,
}

pub fn verify_reader(mut reader: impl BufRead) -> VerifyReport {
    let mut report = VerifyReport { last_hash: GENESIS.to_string(), ..Default::default() };
    let mut seen_ids = HashSet::new();
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                report.problem = Some(format!("line {}: unreadable: {e}", n + 1));
                return report;
            }
        }
        n += 1;
        // Every complete record ends in a newline; a last line without one was cut mid-write.
        let Some(bytes) = buf.strip_suffix(b"\n") else {
            report.problem = Some(format!(
                "line {n}: torn last line ({} bytes without a newline): the writer stopped mid-write",
                buf.len()
            ));
            return report;
        };
        let parsed: Result<Value, _> = serde_json::from_slice(bytes);
        let Ok(Value::Object(line)) = parsed else {
            report.problem = Some(format!("line {n}: not a JSON record"));
            return report;
        };
        let prev = line.get("prev").and_then(Value::as_str).unwrap_or("");
        if prev != report.last_hash {
            report.problem = Some(format!(
                "line {n}: chain broken: it follows {prev:.16}… but the previous line hashes to {:.16}… (a line was removed, inserted or reordered before it)",
                report.last_hash
            ));
            return report;
        }
        let recorded = line.get("hash").and_then(Value::as_str).unwrap_or("");
        let actual = line_hash(&line);
        if recorded != actual {
            report.problem = Some(format!("line {n}: contents were edited (hash {recorded:.16}… does not match {actual:.16}…)"));
            return report;
        }
        if let Some(id) = line.get("id").and_then(Value::as_str) {
            if !seen_ids.insert(id.to_string()) {
                report.problem = Some(format!("line {n}: event id {id} appears twice"));
                return report;
            }
        }
        report.last_hash = actual;
        report.lines += 1;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;

    fn log_with(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.record("test", serde_json::json!({"i": i})).unwrap();
        }
        (dir, path)
    }

    fn verify(path: &std::path::Path) -> VerifyReport {
        verify_reader(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
    }

    #[test]
    fn a_complete_log_verifies_and_reopens() {
        let (_d, path) = log_with(3);
        let r = verify(&path);
        assert_eq!((r.lines, r.problem), (3, None));
        let log = AuditLog::open(&path).expect("a complete log reopens");
        log.record("test", serde_json::json!({})).unwrap();
        assert_eq!(verify(&path).lines, 4);
    }

    #[test]
    fn each_kind_of_tampering_is_found_with_its_line() {
        let (_d, path) = log_with(4);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let write = |ls: Vec<&str>, tail: &str| std::fs::write(&path, ls.join("\n") + tail).unwrap();
        let edited = lines[1].replace("\"i\":1", "\"i\":9");
        let cases: Vec<(Vec<&str>, &str, &str)> = vec![
            (vec![lines[0], &edited, lines[2], lines[3]], "\n", "line 2: contents were edited"),
            (vec![lines[0], lines[2], lines[3]], "\n", "line 2: chain broken"),
            (vec![lines[0], lines[2], lines[1], lines[3]], "\n", "line 2: chain broken"),
            (vec![lines[0], lines[1], lines[2], &lines[3][..40]], "", "line 4: torn last line"),
            (vec![lines[0], lines[1], lines[2], lines[3]], "", "line 4: torn last line"),
        ];
        for (ls, tail, want) in cases {
            write(ls, tail);
            let problem = verify(&path).problem.unwrap_or_default();
            assert!(problem.starts_with(want), "want {want:?}, got {problem:?}");
        }
    }
}
