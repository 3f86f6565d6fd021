//! The OTLP-JSON file exporter: each batch of spans is one line, an OTLP
//! `ExportTraceServiceRequest` in the protocol's JSON encoding (what the OpenTelemetry
//! Collector's `otlpjsonfile` receiver reads). Serialisation is `opentelemetry-proto`'s; this
//! module only writes lines and rotates.
//!
//! Rotation is copy-and-truncate at a stated size: when the next line would take the file past
//! `max_bytes`, its contents replace `<file>.1` and it starts again empty. Both files are opened
//! (and created) before the server confines itself, so Landlock needs rights on those two files
//! only, never on their directory. At most about `2 × max_bytes` of traces are on disk.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The default rotation size.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The smallest rotation size accepted: one batch line must fit comfortably.
pub const MIN_MAX_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct FileSettings {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// `<file>.1`: where the previous contents go when the file rotates.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The trace file and its rotated copy, opened before confinement.
#[derive(Debug)]
pub struct TraceFile {
    current: File,
    previous: File,
    written: u64,
    max_bytes: u64,
}

impl TraceFile {
    /// Opens (creating, mode 0640) the file and its rotated copy. Fails with a sentence that
    /// names the file.
    pub fn open(settings: &FileSettings) -> anyhow::Result<TraceFile> {
        let open = |p: &Path, append: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .append(append)
                .create(true)
                .mode(0o640)
                .open(p)
                .map_err(|e| anyhow::anyhow!("cannot open the trace file {}: {e} (check --otlp-file)", p.display()))
        };
        let current = open(&settings.path, true)?;
        let previous = open(&rotated_path(&settings.path), false)?;
        let written = current.metadata()?.len();
        Ok(TraceFile { current, previous, written, max_bytes: settings.max_bytes })
    }

    /// The exporter that writes here.
    pub fn exporter(self) -> FileExporter {
        FileExporter { file: Arc::new(Mutex::new(self)), resource: ResourceAttributesWithSchema::default() }
    }

    /// Appends one line, rotating first if it would take the file past its size.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.current.write_all(line) {
            // Take back a partly written line, so the next one does not join it.
            let _ = self.current.set_len(self.written);
            return Err(e);
        }
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.previous.set_len(0)?;
        self.previous.seek(SeekFrom::Start(0))?;
        self.current.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut self.current, &mut self.previous)?;
        self.previous.flush()?;
        // Appends go to the end, wherever the read offset is.
        self.current.set_len(0)?;
        self.written = 0;
        Ok(())
    }
}

/// Writes each batch as one OTLP-JSON line.
#[derive(Debug)]
pub struct FileExporter {
    file: Arc<Mutex<TraceFile>>,
    resource: ResourceAttributesWithSchema,
}

impl FileExporter {
    fn write(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &self.resource) };
        let mut line = serde_json::to_vec(&request).map_err(|e| OTelSdkError::InternalFailure(format!("encoding spans: {e}")))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.append(&line).map_err(|e| OTelSdkError::InternalFailure(format!("writing the trace file: {e}")))
    }
}

impl SpanExporter for FileExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // A local file: written at once, on the batch processor's own thread.
        std::future::ready(self.write(batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_by_copy_and_truncate_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let settings = FileSettings { path: dir.path().join("traces.jsonl"), max_bytes: 25 };
        let mut f = TraceFile::open(&settings).unwrap();
        f.append(b"first line of ten\n").unwrap();
        f.append(b"second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&settings.path).unwrap(), "first line of ten\nsecond\n");
        f.append(b"third\n").unwrap();
        assert_eq!(std::fs::read_to_string(&settings.path).unwrap(), "third\n");
        assert_eq!(std::fs::read_to_string(rotated_path(&settings.path)).unwrap(), "first line of ten\nsecond\n");
        // A line longer than the size still goes out whole, into an emptied file.
        f.append(&[b'x'; 40]).unwrap();
        assert_eq!(std::fs::read(&settings.path).unwrap().len(), 40);
        assert_eq!(std::fs::read_to_string(rotated_path(&settings.path)).unwrap(), "third\n");
        // Reopening continues where the file is.
        drop(f);
        let f = TraceFile::open(&settings).unwrap();
        assert_eq!(f.written, 40);
    }
}
