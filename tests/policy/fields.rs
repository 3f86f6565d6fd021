//! Every field of the profile type is compared by `policy diff` and shown by `policy explain`.
//!
//! The list of fields is not typed here: it is derived from the profile type itself, by parsing a
//! profile, serialising the parsed `PolicyFile` and walking every leaf. Each leaf is changed
//! generically (numbers moved by one, booleans flipped, strings extended or switched to another
//! variant the parser names, arrays grown or shrunk), and the real binary must report the change
//! under that field's name. A field added to the type and forgotten by the field table fails here.

use std::path::{Path, PathBuf};

use serde_json::Value;
use warden::policy::{Policy, PolicyFile};

use super::warden;

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Leaf paths of `v`: scalars, nulls, and empty arrays or objects.
fn leaves(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(Seg::Key(k.clone()));
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// The dotted name of a leaf, without array indices (`mounts.host`, `env.set.LANG`).
fn dotted(path: &[Seg]) -> String {
    path.iter().filter_map(|s| if let Seg::Key(k) = s { Some(k.as_str()) } else { None }).collect::<Vec<_>>().join(".")
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// The variants a serde "unknown variant" error lists.
fn variants(err: &str) -> Vec<String> {
    err.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Candidate changes of the leaf at `path`, as whole profiles (JSON), most natural first.
fn candidates(base: &Value, path: &[Seg]) -> Vec<Value> {
    let mut out = Vec::new();
    let with = |x: Value| {
        let mut v = base.clone();
        *at(&mut v, path) = x;
        v
    };
    let leaf = {
        let mut b = base.clone();
        at(&mut b, path).clone()
    };
    match &leaf {
        Value::Number(n) => {
            let n = n.as_u64().expect("profile numbers are unsigned");
            out.push(with(Value::from(n + 1)));
            if n > 0 {
                out.push(with(Value::from(n - 1)));
            }
        }
        Value::Bool(b) => out.push(with(Value::Bool(!b))),
        Value::String(s) => {
            // A directory (a mount's host path) is changed to a sibling directory.
            let other = format!("{s}-other");
            if Path::new(s).is_absolute() && Path::new(s).is_dir() && std::fs::create_dir_all(&other).is_ok() {
                out.push(with(Value::String(other)));
            }
            let extended = with(Value::String(format!("{s}x")));
            if let Err(e) = serde_json::from_value::<PolicyFile>(extended.clone()) {
                for variant in variants(&e.to_string()).into_iter().filter(|x| x != s) {
                    out.push(with(Value::String(variant)));
                }
            }
            out.push(extended);
        }
        Value::Array(_) => {
            out.push(with(Value::Array(vec![Value::String("XNEW".into())])));
        }
        Value::Object(_) => {
            out.push(with(serde_json::json!({"XNEW": "x"})));
        }
        Value::Null => {}
    }
    // An element of an array can also be removed.
    if let Some((Seg::Index(i), parent)) = path.split_last() {
        let mut v = base.clone();
        at(&mut v, parent).as_array_mut().unwrap().remove(*i);
        out.push(v);
    }
    out
}

fn write_profile(dir: &Path, name: &str, file: &PolicyFile) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(file).expect("a profile serialises to TOML")).unwrap();
    path
}

/// `policy explain` without its first line (which names the file and its digest).
fn explain(path: &Path) -> String {
    let (status, out, err) = warden(&["policy", "explain", path.to_str().unwrap()], &[]);
    assert_eq!(status, 0, "{err}");
    out.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[test]
fn diff_and_explain_report_a_change_to_every_field_of_the_profile_type() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().canonicalize().unwrap();
    let mounted = scratch.join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    // The default profile, with the sections it leaves empty given one entry each, so that the
    // walk sees the shape of their elements too.
    let text = format!(
        "{}\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n\n[tools]\nallowed = [\"csv_summary\"]\ncalls_per_execution = 1\n",
        include_str!("../../policies/default.toml"),
        mounted.display().to_string()
    );
    let base = Policy::parse(&text, "base").unwrap();
    let base_json = serde_json::to_value(&base.file).unwrap();
    let base_path = write_profile(&scratch, "base", &base.file);
    let reparsed = Policy::load(base_path.to_str().unwrap()).unwrap();
    assert_eq!(reparsed.file, base.file, "the serialised profile reads back the same");
    let base_explain = explain(&base_path);

    let mut paths = Vec::new();
    leaves(&base_json, &mut Vec::new(), &mut paths);
    assert!(paths.len() >= 25, "the walk found only {} leaves", paths.len());
    let mut covered = Vec::new();
    for (n, path) in paths.iter().enumerate() {
        let name = dotted(path);
        let changed = candidates(&base_json, path)
            .into_iter()
            .filter_map(|v| serde_json::from_value::<PolicyFile>(v).ok())
            .filter(|f| *f != base.file)
            .find_map(|f| {
                let p = write_profile(&scratch, &format!("changed{n}"), &f);
                Policy::load(p.to_str().unwrap()).ok().map(|_| p)
            })
            .unwrap_or_else(|| panic!("{name}: no generic change of this leaf gives a valid profile; teach this test how to change it"));
        let (status, out, err) = warden(&["policy", "diff", base_path.to_str().unwrap(), changed.to_str().unwrap()], &[]);
        assert_eq!(status, 0, "{name}: {err}");
        let fields: Vec<&str> = out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
        let field = fields
            .iter()
            .find(|f| name == **f || name.starts_with(&format!("{f}.")))
            .unwrap_or_else(|| panic!("{name}: `policy diff` does not report a change to it:\n{out}"));
        let explained = explain(&changed);
        assert_ne!(explained, base_explain, "{name}: `policy explain` shows no difference");
        assert!(
            explained.lines().any(|l| l.trim_start().starts_with(&format!("{field} "))),
            "{name}: `policy explain` does not list {field}:\n{explained}"
        );
        covered.push(name);
    }
    eprintln!("fields changed and reported: {}", covered.join(", "));
}

#[test]
fn each_field_is_classified_as_widening_or_narrowing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("m")).unwrap();
    let mount =
        |mode: &str| format!("\n[[mounts]]\nhost = {:?}\nguest = \"/data\"\nmode = \"{mode}\"\n", d.join("m").display().to_string());
    let write = |name: &str, edits: &[(&str, &str)], extra: &str| {
        let mut text = include_str!("../../policies/default.toml").to_string();
        for (a, b) in edits {
            assert!(text.contains(a), "{a}");
            text = text.replace(a, b);
        }
        text.push_str(extra);
        let p = d.join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let tools = |n: u32| format!("\n[tools]\nallowed = [\"csv_summary\"]\ncalls_per_execution = {n}\n");
    let a = write("a", &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]")], &tools(1));
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (
            write("calls", &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]")], &tools(50)),
            "WIDENS",
            "tools.calls_per_execution",
        ),
        (write("runtime", &[], &tools(1)), "WIDENS", "runtimes.allowed"),
        (
            write("mount", &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]")], &(tools(1) + &mount("ro"))),
            "WIDENS",
            "mounts",
        ),
        (
            write(
                "pass",
                &[
                    ("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]"),
                    ("set = { LANG = \"C.UTF-8\" }", "set = { LANG = \"C.UTF-8\" }\npass = [\"PATH\"]"),
                ],
                &tools(1),
            ),
            "WIDENS",
            "env.pass",
        ),
        (
            write(
                "fewer",
                &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]"), ("memory_mb = 512", "memory_mb = 256")],
                &tools(1),
            ),
            "narrows",
            "limits.memory_mb",
        ),
        (
            write(
                "queue",
                &[
                    ("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]"),
                    ("queue_timeout_ms = 10_000", "queue_timeout_ms = 20_000"),
                ],
                &tools(1),
            ),
            "changes",
            "limits.queue_timeout_ms",
        ),
        (
            write(
                "soft",
                &[("allowed = [\"python\", \"javascript\"]", "allowed = [\"python\"]"), ("mode = \"best-effort\"", "mode = \"off\"")],
                &tools(1),
            ),
            "WIDENS",
            "hardening.mode",
        ),
    ];
    for (b, label, field) in cases {
        let (status, out, err) = warden(&["policy", "diff", a.to_str().unwrap(), b.to_str().unwrap(), "--fail-on-widen"], &[]);
        assert!(
            out.lines().any(|l| l.starts_with(label) && l.split_whitespace().nth(1) == Some(field)),
            "{field} should be {label}:\n{out}"
        );
        assert_eq!(status, if label == "WIDENS" { 3 } else { 0 }, "{field}: {err}");
    }
    // A mount turned from read-only to read-write widens.
    let ro = write("ro", &[], &mount("ro"));
    let rw = write("rw", &[], &mount("rw"));
    let (_, out, _) = warden(&["policy", "diff", ro.to_str().unwrap(), rw.to_str().unwrap()], &[]);
    assert!(out.lines().any(|l| l.starts_with("WIDENS") && l.contains("mounts") && l.contains("(rw)")), "{out}");
}
