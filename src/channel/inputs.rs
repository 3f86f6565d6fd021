//! The inputs blob: how a run's stdin and input files reach the executor without travelling as
//! frames. The front writes them, back to back, to [`INPUTS_FILE`](super::proto::INPUTS_FILE) in
//! the call's directory and sends their layout ([`Inputs`]); the executor reads the blob once,
//! checks it against the layout, and removes it before the guest starts.
//!
//! The blob sits beside `workspace/` and `tmp/`, where no guest can reach it.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::proto::{INPUTS_FILE, Inputs};
use crate::sandbox::InputFile;

/// Writes `stdin` and `files` to the blob in `dir` and returns their layout (front side).
pub fn stage(dir: &Path, stdin: &[u8], files: &[InputFile]) -> io::Result<Inputs> {
    let layout = Inputs { stdin: stdin.len() as u64, files: files.iter().map(|f| (f.path.clone(), f.content.len() as u64)).collect() };
    if layout.total() == Some(0) {
        return Ok(layout);
    }
    let mut blob = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(dir.join(INPUTS_FILE))?;
    blob.write_all(stdin)?;
    for f in files {
        blob.write_all(&f.content)?;
    }
    Ok(layout)
}

/// Reads and removes the blob in `dir`, split as `layout` says (executor side). Refuses a blob
/// whose size is not exactly what the layout adds up to.
pub fn take(dir: &Path, layout: &Inputs) -> io::Result<(Vec<u8>, Vec<InputFile>)> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let total = layout.total().ok_or_else(|| bad("the inputs layout overflows".into()))?;
    if total == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let path = dir.join(INPUTS_FILE);
    let mut blob = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
    let _ = std::fs::remove_file(&path);
    let meta = blob.metadata()?;
    if !meta.is_file() || meta.len() != total {
        return Err(bad(format!("the inputs blob holds {} bytes, its layout says {total}", meta.len())));
    }
    let mut all = Vec::with_capacity(total as usize);
    (&mut blob).take(total).read_to_end(&mut all)?;
    if all.len() as u64 != total {
        return Err(bad("the inputs blob shrank while read".into()));
    }
    let mut rest = all.split_off(layout.stdin as usize);
    let stdin = all;
    let mut files = Vec::with_capacity(layout.files.len());
    for (path, len) in &layout.files {
        let tail = rest.split_off(*len as usize);
        files.push(InputFile { path: path.clone(), content: std::mem::replace(&mut rest, tail) });
    }
    Ok((stdin, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_and_a_tampered_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![InputFile { path: "a.txt".into(), content: b"alpha".to_vec() }, InputFile { path: "d/b".into(), content: vec![] }];
        let layout = stage(dir.path(), b"in", &files).unwrap();
        let (stdin, got) = take(dir.path(), &layout).unwrap();
        assert_eq!(stdin, b"in");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].content, b"alpha");
        assert_eq!(got[1].path, "d/b");
        assert!(!dir.path().join(INPUTS_FILE).exists(), "the blob is removed once read");

        let layout = stage(dir.path(), b"", &files).unwrap();
        std::fs::write(dir.path().join(INPUTS_FILE), b"alphaX").unwrap();
        assert!(take(dir.path(), &layout).is_err());
        assert!(take(dir.path(), &Inputs { stdin: u64::MAX, files: vec![("x".into(), 2)] }).is_err());
    }
}
