//! Streaming a run's output to the front while its guest runs: every [`EVERY`], what the
//! guest's stdout and stderr gained goes out as one [`Reply::Output`]; when the run ends, what
//! the last read missed follows from the report, so that the chunks add up to the output the
//! report holds (for output that is UTF-8).
//!
//! Owns the chunking and the bounds the front holds the executor to: each chunk at most
//! [`OUTPUT_CHUNK_BYTES`] per stream, all of a run's chunks at most its output caps. Does not
//! own reading the pipes ([`crate::sandbox::io::OutputWatch`]) or what the front does with the
//! chunks.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::channel::proto::{OUTPUT_CHUNK_BYTES, Reply};
use crate::sandbox::RunReport;
use crate::sandbox::io::OutputWatch;

/// How often new output is sent. Short enough to feel live, long enough that a guest printing
/// in a tight loop costs a few frames a second, not one per line.
pub const EVERY: Duration = Duration::from_millis(200);

pub struct Streamer {
    id: u64,
    out: UnboundedSender<Reply>,
    watch: OutputWatch,
    /// Most bytes each stream may send in all (the run's caps; 0 for a stream not streamed).
    caps: [usize; 2],
    sent: [usize; 2],
    /// Whether everything read so far was UTF-8, so that the report's text lines up with the
    /// bytes read and its tail can be sent at the end.
    clean: [bool; 2],
}

impl Streamer {
    pub fn new(id: u64, out: UnboundedSender<Reply>, watch: OutputWatch, caps: [usize; 2]) -> Streamer {
        Streamer { id, out, watch, caps, sent: [0, 0], clean: [true, true] }
    }

    /// Sends what the guest wrote since the last tick, if anything, in as many chunks as it
    /// takes (so a fast writer is followed live, not at one chunk per tick).
    pub fn tick(&mut self) {
        while self.tick_once() {}
    }

    /// Sends one chunk of new output; whether there may be more.
    fn tick_once(&mut self) -> bool {
        let [out, err] = self.watch.read_new(OUTPUT_CHUNK_BYTES);
        if out.is_empty() && err.is_empty() {
            return false;
        }
        let mut clean = self.clean;
        let mut text = |i: usize, bytes: Vec<u8>| {
            String::from_utf8(bytes).unwrap_or_else(|e| {
                clean[i] = false;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            })
        };
        let text = [text(0, out), text(1, err)];
        self.clean = clean;
        self.send(text)
    }

    /// After the run: the part of the report's output that no tick read, in as many chunks as
    /// it takes. Skipped for a stream that was not UTF-8 (its text and bytes do not line up).
    pub fn finish(mut self, report: &RunReport) {
        let read = self.watch.consumed();
        let mut tails = [&report.stdout, &report.stderr].map(|s| s.as_str());
        for i in 0..2 {
            tails[i] = if self.clean[i] { tails[i].get(read[i]..).unwrap_or("") } else { "" };
        }
        while tails.iter().any(|t| !t.is_empty()) {
            let mut chunk = [String::new(), String::new()];
            for i in 0..2 {
                let n = tails[i].floor_char_boundary(OUTPUT_CHUNK_BYTES.min(tails[i].len()));
                // A character longer than the chunk bound cannot happen (4 bytes at most), but
                // never loop without progress.
                let n = if n == 0 { tails[i].len() } else { n };
                chunk[i] = tails[i][..n].to_string();
                tails[i] = &tails[i][n..];
            }
            if !self.send(chunk) {
                break;
            }
        }
    }

    /// Sends one chunk, cut to what the caps leave. Returns whether anything is left to send.
    fn send(&mut self, mut text: [String; 2]) -> bool {
        for (i, t) in text.iter_mut().enumerate() {
            let room = self.caps[i].saturating_sub(self.sent[i]).min(OUTPUT_CHUNK_BYTES);
            if t.len() > room {
                t.truncate(t.floor_char_boundary(room));
            }
            self.sent[i] += t.len();
        }
        if text.iter().any(|t| !t.is_empty()) {
            let [stdout, stderr] = text;
            let _ = self.out.send(Reply::Output { id: self.id, stdout, stderr });
        }
        self.sent.iter().zip(&self.caps).any(|(s, c)| s < c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::io::CappedPipe;
    use crate::sandbox::{Outcome, RunReport};
    use tokio::sync::mpsc::unbounded_channel;
    use wasmtime_wasi::p2::OutputStream;

    fn report(stdout: &str, stderr: &str) -> RunReport {
        RunReport {
            outcome: Outcome::Ok,
            exit_code: Some(0),
            stdout: stdout.into(),
            stderr: stderr.into(),
            truncated: false,
            duration_ms: 0,
            fuel_used: 0,
            artifacts: Vec::new(),
            message: None,
            ended_session: false,
            phases: Vec::new(),
        }
    }

    fn chunks(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Reply>) -> Vec<(String, String)> {
        let mut v = Vec::new();
        while let Ok(Reply::Output { id: 7, stdout, stderr }) = rx.try_recv() {
            v.push((stdout, stderr));
        }
        v
    }

    #[test]
    fn chunks_add_up_to_the_report_and_respect_the_bounds() {
        let (tx, mut rx) = unbounded_channel();
        let (mut out, mut err) = (CappedPipe::new(1 << 20), CappedPipe::new(1 << 20));
        let watch = OutputWatch::default();
        watch.attach(&out, &err);
        let mut s = Streamer::new(7, tx, watch, [1 << 20, 1 << 20]);
        s.tick();
        assert!(chunks(&mut rx).is_empty(), "nothing new, nothing sent");
        out.write(bytes::Bytes::from("a".repeat(OUTPUT_CHUNK_BYTES + 10))).unwrap();
        err.write(bytes::Bytes::from_static(b"warn\n")).unwrap();
        s.tick();
        let first = chunks(&mut rx);
        assert_eq!(first.len(), 2, "one tick sends all that is new, a chunk at a time");
        assert_eq!((first[0].0.len(), first[0].1.as_str()), (OUTPUT_CHUNK_BYTES, "warn\n"));
        assert_eq!((first[1].0.len(), first[1].1.as_str()), (10, ""));
        // The run ends before the next tick: the rest comes from the report, in bounded chunks.
        out.write(bytes::Bytes::from("b".repeat(OUTPUT_CHUNK_BYTES))).unwrap();
        let all_out = format!("{}{}", "a".repeat(OUTPUT_CHUNK_BYTES + 10), "b".repeat(OUTPUT_CHUNK_BYTES));
        s.finish(&report(&all_out, "warn\n"));
        let rest = chunks(&mut rx);
        assert!(rest.iter().all(|(o, e)| o.len() <= OUTPUT_CHUNK_BYTES && e.is_empty()), "{:?}", rest.len());
        let streamed: String = first.iter().chain(&rest).map(|(o, _)| o.as_str()).collect();
        assert_eq!(streamed, all_out, "the chunks add up to the report, in order");
    }

    #[test]
    fn a_stream_never_sends_more_than_its_cap() {
        let (tx, mut rx) = unbounded_channel();
        let (mut out, err) = (CappedPipe::new(1 << 20), CappedPipe::new(1 << 20));
        let watch = OutputWatch::default();
        watch.attach(&out, &err);
        // A tool's stdout is its result, not streamed: cap 0.
        let mut s = Streamer::new(7, tx, watch, [0, 100]);
        out.write(bytes::Bytes::from_static(b"{\"result\": 1}")).unwrap();
        s.tick();
        s.finish(&report("{\"result\": 1}", &"e".repeat(300)));
        let got = chunks(&mut rx);
        assert!(got.iter().all(|(o, _)| o.is_empty()), "{got:?}");
        assert_eq!(got.iter().map(|(_, e)| e.len()).sum::<usize>(), 100);
    }
}
