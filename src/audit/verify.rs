//! Checking an audit log's hash chain over the exact bytes written, and saying where it breaks.
//!
//! The file is split on newlines as raw bytes; a version-2 line's hash is recomputed over its
//! own bytes (see the format in the parent module), never over a re-serialization, so a byte
//! changed, added or removed anywhere fails on the line that holds it. Old-format (version 1)
//! lines are accepted only before the first version-2 line, and counted separately so the
//! report can say how much of the log has the weaker, pre-byte-exact protection.

use std::collections::HashSet;
use std::io::BufRead;

use serde_json::Value;

use super::{FORMAT_VERSION, GENESIS, HASH_PREFIX, TRAILER_LEN, chain_hash, legacy_line_hash};

/// The result of walking a log.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Lines that verified.
    pub lines: usize,
    /// Of those, lines in the old (version 1) format.
    pub legacy_lines: usize,
    /// Hash of the last good line (the genesis hash for an empty log).
    pub last_hash: String,
    /// The first problem, with its line number.
    pub problem: Option<String>,
}

/// Checks one version-2 line's framing and hash; returns its hash.
fn check_v2(bytes: &[u8], line: &serde_json::Map<String, Value>, prev_hash: &str) -> Result<String, String> {
    if bytes.len() < TRAILER_LEN + 2 || !bytes.ends_with(b"\"}") {
        return Err("contents were edited (the line does not end in its hash field)".into());
    }
    let split = bytes.len() - TRAILER_LEN;
    let (body_part, trailer) = bytes.split_at(split);
    let hex = &trailer[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    if !trailer.starts_with(HASH_PREFIX) || !hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return Err("contents were edited (the line does not end in a well-formed hash field)".into());
    }
    let recorded = std::str::from_utf8(hex).expect("checked ASCII");
    let prev = line.get("prev").and_then(Value::as_str).unwrap_or("");
    if prev != prev_hash {
        return Err(format!(
            "chain broken: it follows {prev:.16}… but the previous line hashes to {prev_hash:.16}… (a line was removed, inserted or reordered before it)"
        ));
    }
    let mut body = Vec::with_capacity(body_part.len() + 1);
    body.extend_from_slice(body_part);
    body.push(b'}');
    let actual = chain_hash(prev_hash, &body);
    if recorded != actual {
        return Err(format!("contents were edited (hash {recorded:.16}… does not match {actual:.16}…)"));
    }
    Ok(actual)
}

pub fn verify_reader(mut reader: impl BufRead) -> VerifyReport {
    let mut report = VerifyReport { last_hash: GENESIS.to_string(), ..Default::default() };
    let mut seen_ids = HashSet::new();
    let mut seen_v2 = false;
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
            report.problem =
                Some(format!("line {n}: torn last line ({} bytes without a newline): the writer stopped mid-write", buf.len()));
            return report;
        };
        let parsed: Result<Value, _> = serde_json::from_slice(bytes);
        let Ok(Value::Object(line)) = parsed else {
            report.problem = Some(format!("line {n}: not a JSON record"));
            return report;
        };
        let checked = match line.get("v") {
            Some(v) if v.as_u64() == Some(FORMAT_VERSION) => {
                seen_v2 = true;
                check_v2(bytes, &line, &report.last_hash)
            }
            Some(v) => Err(format!("unknown format version {:.32}", v.to_string())),
            None if seen_v2 => {
                Err("an old-format line after a new-format one (lines in the old format are only accepted at the start of a log)".into())
            }
            None => {
                let prev = line.get("prev").and_then(Value::as_str).unwrap_or("");
                let recorded = line.get("hash").and_then(Value::as_str).unwrap_or("");
                let actual = legacy_line_hash(&line);
                if prev != report.last_hash {
                    Err(format!(
                        "chain broken: it follows {prev:.16}… but the previous line hashes to {:.16}… (a line was removed, inserted or reordered before it)",
                        report.last_hash
                    ))
                } else if recorded != actual {
                    Err(format!("contents were edited (hash {recorded:.16}… does not match {actual:.16}…)"))
                } else {
                    report.legacy_lines += 1;
                    Ok(actual)
                }
            }
        };
        let hash = match checked {
            Ok(h) => h,
            Err(why) => {
                report.problem = Some(format!("line {n}: {why}"));
                return report;
            }
        };
        if let Some(id) = line.get("id").and_then(Value::as_str) {
            if !seen_ids.insert(id.to_string()) {
                report.problem = Some(format!("line {n}: event id {id:.64} appears twice"));
                return report;
            }
        }
        report.last_hash = hash;
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
            log.append("test", serde_json::json!({"i": i})).unwrap();
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
        log.append("test", serde_json::json!({})).unwrap();
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

    #[test]
    fn every_single_byte_change_fails_on_its_line() {
        let (_d, path) = log_with(3);
        let good = std::fs::read(&path).unwrap();
        let line_of = |i: usize| good[..i].iter().filter(|&&b| b == b'\n').count() + 1;
        for i in 0..good.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let r = verify_reader(&bad[..]);
                let problem = r.problem.unwrap_or_else(|| panic!("flipping byte {i} by {flip:#x} still verifies"));
                assert!(problem.starts_with(&format!("line {}:", line_of(i))), "byte {i}: {problem}");
            }
        }
    }

    #[test]
    fn a_duplicate_key_or_other_spacing_fails() {
        let (_d, path) = log_with(2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let dup = lines[1].replacen("{", "{\"i\":7,", 1);
        let spaced = lines[1].replace("\":", "\": ");
        for edited in [dup, spaced] {
            let log = format!("{}\n{}\n", lines[0], edited);
            let problem = verify_reader(log.as_bytes()).problem.unwrap_or_default();
            assert!(problem.starts_with("line 2: contents were edited"), "{problem}");
        }
    }

    #[test]
    fn an_old_format_log_still_verifies_and_grows_in_the_new_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.jsonl");
        // Two lines exactly as the version-1 writer made them.
        let mut prev = GENESIS.to_string();
        let mut text = String::new();
        for i in 0..2 {
            let mut m = serde_json::Map::new();
            m.insert("id".into(), format!("old-{i}").into());
            m.insert("kind".into(), "test".into());
            m.insert("prev".into(), prev.clone().into());
            let h = legacy_line_hash(&m);
            m.insert("hash".into(), h.clone().into());
            text.push_str(&serde_json::to_string(&m).unwrap());
            text.push('\n');
            prev = h;
        }
        std::fs::write(&path, &text).unwrap();
        let log = AuditLog::open(&path).expect("an old-format log opens");
        log.append("test", serde_json::json!({"new": true})).unwrap();
        let r = verify(&path);
        assert_eq!((r.lines, r.legacy_lines, r.problem), (3, 2, None));
        // An old-format line after a new one is a downgrade.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(text.lines().next().unwrap().as_bytes());
        bytes.push(b'\n');
        let problem = verify_reader(&bytes[..]).problem.unwrap_or_default();
        assert!(problem.starts_with("line 4: an old-format line"), "{problem}");
    }

    #[test]
    fn reserved_keys_cannot_be_forged_by_an_event() {
        let (_d, path) = log_with(0);
        let log = AuditLog::open(&path).unwrap();
        let line = log.append("test", serde_json::json!({"hash": "x", "prev": "y", "v": 1, "kind": "other", "id": "z"})).unwrap();
        assert_eq!(line["kind"], "test");
        assert_eq!(line["v"], 2);
        assert_eq!(verify(&path).problem, None);
    }
}
