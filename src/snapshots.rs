//! Session snapshots on disk: a session's `/workspace` files and its interpreter's image
//! ([`crate::sandbox::image::GuestImage`]), kept for the principal that made them under the
//! profile they were made under, verified by sha256 before they are used, counted against that
//! principal's quota and removed when their retention ends.
//!
//! A suspended session is kept the same way, under `suspended/<profile>/<principal>/<session id>/`:
//! written when it idles or the server stops, and *claimed* when it is resumed — renamed to a
//! name of the claimant's own first, so of two servers sharing the store and resuming it at once,
//! exactly one gets it (rename is atomic; the other finds nothing to rename).
//!
//! Layout, under the store's root (`$WARDEN_HOME/snapshots`, or `--snapshot-dir` to share it
//! between replicas): `<profile>/<principal>/<id>/` holding `data` (every file's bytes back to
//! back, then the image) and `meta.json` ([`SnapshotMeta`]: who, what, where each part lies in
//! `data`, and the sha256 of `data`). The profile and principal directory names are digests of
//! their names, so a name never becomes a path. A snapshot is written into a temporary directory
//! beside its final one and renamed into place, so a reader (of this process or another replica)
//! sees it whole or not at all.
//!
//! Owns: the layout, the record, quotas, retention and integrity. Does not own: who may call
//! (the service checks the caller's profile and principal before asking), capturing or
//! restoring an interpreter (the executors do), nor the audit records (the service writes them).
//! Integrity is against damage and tampering with the data: someone able to rewrite both the
//! data and its record in the store can forge a snapshot (SECURITY.md).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::Language;
use crate::sandbox::InputFile;

/// The record of one snapshot (`meta.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    pub id: String,
    pub principal: String,
    pub profile: String,
    /// The session it was taken of.
    pub session_id: String,
    pub language: Language,
    /// The caller's name for it, if any.
    pub label: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub expires: u64,
    /// The runtime build the image is for ([`crate::runtime::RuntimeSpec::cache_key`]).
    pub runtime: String,
    /// The workspace files, in `data`'s order, with their lengths.
    pub files: Vec<(String, u64)>,
    /// Bytes of the interpreter's image after the files; 0 when the session had no live
    /// interpreter.
    pub image_bytes: u64,
    /// sha256 of `data`, hex.
    pub sha256: String,
    /// For a suspended session: when its lifetime ends (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ends: Option<u64>,
}

impl SnapshotMeta {
    pub fn files_bytes(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }

    /// Bytes the snapshot takes in the store (its quota charge).
    pub fn bytes(&self) -> u64 {
        self.files_bytes().saturating_add(self.image_bytes)
    }

    pub fn has_interpreter(&self) -> bool {
        self.image_bytes > 0
    }

    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires)
    }

    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created)
    }
}

/// A profile's snapshot limits.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotLimits {
    /// Snapshots one principal may keep (0: snapshots are off).
    pub per_principal: usize,
    /// Bytes one principal's snapshots may take.
    pub bytes_per_principal: u64,
    /// Bytes all snapshots under the profile may take.
    pub bytes: u64,
    pub retention: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshots are disabled by this server's policy (snapshots.max_per_principal = 0)")]
    Disabled,
    #[error("unknown snapshot_id {0:?}: it does not exist, has expired, or belongs to another client. list_snapshots shows yours")]
    Unknown(String),
    #[error("you keep {0} snapshots under this profile, your limit (snapshots.max_per_principal); delete one with delete_snapshot")]
    Count(usize),
    #[error(
        "this snapshot needs {needed} bytes and your snapshots may take {limit} in all (snapshots.max_bytes_per_principal); delete some with delete_snapshot, or remove files from the session's /workspace"
    )]
    PrincipalBytes { needed: u64, limit: u64 },
    #[error(
        "the snapshot store for this profile is full ({limit} bytes, snapshots.max_bytes); retry after older snapshots expire or are deleted"
    )]
    ProfileBytes { limit: u64 },
    #[error(
        "snapshot {id} failed its integrity check ({why}) and was not used; it was damaged or altered in storage. Delete it and take a new one"
    )]
    Tampered { id: String, why: String },
    #[error(
        "session {0:?} was suspended and has just been resumed by another server of this service; retry, and your call will reach the one holding it"
    )]
    Claimed(String),
    #[error("the snapshot store: {0}")]
    Io(#[from] io::Error),
}

/// Most bytes of a label.
pub const MAX_LABEL: usize = 128;

pub struct SnapshotStore {
    root: PathBuf,
    /// Serialises this process's writes, so two snapshots of one principal cannot both fit a
    /// quota only one of them fits. (Replicas sharing the store may each admit one.)
    writing: Mutex<()>,
}

/// A snapshot id: `snap-` and 32 hex digits. Anything else never becomes a path.
fn valid_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// A session id: `s-` and 32 hex digits.
pub fn valid_session_id(id: &str) -> bool {
    id.strip_prefix("s-").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

fn name_dir(name: &str) -> String {
    crate::digest::sha256_hex(name.as_bytes())[..24].to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What to write: the record's fields the store does not fill in itself.
pub struct NewSnapshot<'a> {
    pub principal: &'a str,
    pub profile: &'a str,
    pub session_id: &'a str,
    pub language: Language,
    pub label: Option<String>,
    pub files: &'a [InputFile],
    /// The encoded interpreter image, if the session had one: a file the executor wrote.
    pub image: Option<&'a Path>,
    /// Most bytes that image may hold.
    pub max_image: u64,
}

impl NewSnapshot<'_> {
    /// The size of the executor's image file, refused beyond what its memory limit allows.
    fn image_bytes(&self) -> Result<u64, SnapshotError> {
        let bytes = match self.image {
            Some(p) => fs::symlink_metadata(p)?.len(),
            None => 0,
        };
        if bytes > self.max_image {
            return Err(io::Error::other(format!("the executor's image holds {bytes} bytes, more than the memory limit allows")).into());
        }
        Ok(bytes)
    }
}

impl SnapshotStore {
    pub fn open(root: &Path) -> io::Result<SnapshotStore> {
        crate::home::Home::private_dir(root)?;
        Ok(SnapshotStore { root: root.to_path_buf(), writing: Mutex::new(()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn principal_dir(&self, profile: &str, principal: &str) -> PathBuf {
        self.root.join(name_dir(profile)).join(name_dir(principal))
    }

    /// The snapshots `principal` keeps under `profile`, oldest first, expired ones left out.
    pub fn list(&self, profile: &str, principal: &str) -> Vec<SnapshotMeta> {
        let now = unix_now();
        let mut out: Vec<SnapshotMeta> = records(&self.principal_dir(profile, principal))
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .filter(|m| m.expires > now && m.profile == profile && m.principal == principal)
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Snapshot `id` if `principal` made it under `profile` and it has not expired. A record
    /// that cannot be read is [`SnapshotError::Tampered`].
    pub fn get(&self, profile: &str, principal: &str, id: &str) -> Result<SnapshotMeta, SnapshotError> {
        let unknown = || SnapshotError::Unknown(id.chars().take(80).collect());
        if !valid_id(id) {
            return Err(unknown());
        }
        let dir = self.principal_dir(profile, principal).join(id);
        let text = match fs::read(dir.join("meta.json")) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unknown()),
            Err(e) => return Err(e.into()),
        };
        let meta: SnapshotMeta = serde_json::from_slice(&text)
            .map_err(|e| SnapshotError::Tampered { id: id.to_string(), why: format!("its record does not parse: {e}") })?;
        if meta.id != id || meta.profile != profile || meta.principal != principal {
            return Err(SnapshotError::Tampered { id: id.to_string(), why: "its record names another snapshot or owner".into() });
        }
        if meta.expires <= unix_now() {
            return Err(unknown());
        }
        Ok(meta)
    }

    /// Writes a snapshot, if it fits `limits`: the principal's count and bytes, and the
    /// profile's bytes.
    pub fn write(&self, new: NewSnapshot<'_>, limits: &SnapshotLimits) -> Result<SnapshotMeta, SnapshotError> {
        if limits.per_principal == 0 {
            return Err(SnapshotError::Disabled);
        }
        let image_bytes = new.image_bytes()?;
        let bytes = new.files.iter().map(|f| f.content.len() as u64).sum::<u64>() + image_bytes;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mine = self.list(new.profile, new.principal);
        if mine.len() >= limits.per_principal {
            return Err(SnapshotError::Count(limits.per_principal));
        }
        let needed = mine.iter().map(SnapshotMeta::bytes).sum::<u64>().saturating_add(bytes);
        if needed > limits.bytes_per_principal {
            return Err(SnapshotError::PrincipalBytes { needed, limit: limits.bytes_per_principal });
        }
        if self.profile_bytes(new.profile).saturating_add(bytes) > limits.bytes {
            return Err(SnapshotError::ProfileBytes { limit: limits.bytes });
        }
        let id = format!("snap-{}", uuid::Uuid::new_v4().simple());
        let expires = unix_now().saturating_add(limits.retention.as_secs());
        self.put(&self.principal_dir(new.profile, new.principal), &id, &new, image_bytes, (expires, None))
    }

    /// Writes `new` as `parent/id`, atomically: into a temporary directory beside it, renamed
    /// into place (replacing an older record of the same id).
    fn put(
        &self,
        parent: &Path,
        id: &str,
        new: &NewSnapshot<'_>,
        image_bytes: u64,
        (expires, lifetime_ends): (u64, Option<u64>),
    ) -> Result<SnapshotMeta, SnapshotError> {
        let files: Vec<(String, u64)> = new.files.iter().map(|f| (f.path.clone(), f.content.len() as u64)).collect();
        crate::home::Home::private_dir(parent)?;
        let tmp = parent.join(format!(".tmp-{id}-{}", uuid::Uuid::new_v4().simple()));
        let written = (|| -> Result<SnapshotMeta, SnapshotError> {
            fs::create_dir(&tmp)?;
            let mut data = create_new(&tmp.join("data"))?;
            let mut hash = Sha256::new();
            for f in new.files {
                hash.update(&f.content);
                data.write_all(&f.content)?;
            }
            if let Some(path) = new.image {
                let image = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
                let copied = copy_hashing(&mut image.take(image_bytes), &mut data, &mut hash)?;
                if copied != image_bytes {
                    return Err(io::Error::other("the executor's image changed while it was stored").into());
                }
            }
            // Not synced: a snapshot torn by a machine crash fails its sha256 and is refused, and
            // syncing tens of megabytes would cost more than taking the snapshot.
            drop(data);
            let meta = SnapshotMeta {
                id: id.to_string(),
                principal: new.principal.to_string(),
                profile: new.profile.to_string(),
                session_id: new.session_id.to_string(),
                language: new.language,
                label: new.label.clone(),
                created: unix_now(),
                expires,
                runtime: new.language.spec().cache_key(),
                files,
                image_bytes,
                sha256: hex::encode(hash.finalize()),
                lifetime_ends,
            };
            let mut record = create_new(&tmp.join("meta.json"))?;
            record.write_all(&serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?)?;
            let target = parent.join(id);
            if target.exists() {
                fs::remove_dir_all(&target)?;
            }
            fs::rename(&tmp, &target)?;
            Ok(meta)
        })();
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        written
    }

    /// Where snapshot `meta` lies.
    pub fn snapshot_dir(&self, meta: &SnapshotMeta) -> PathBuf {
        self.principal_dir(&meta.profile, &meta.principal).join(&meta.id)
    }

    fn suspended_dir(&self, profile: &str, principal: &str) -> PathBuf {
        self.root.join("suspended").join(name_dir(profile)).join(name_dir(principal))
    }

    /// Keeps session `new.session_id` as suspended until `expires` (its idle limit) and at most
    /// `lifetime_ends`. No quota: a suspended session still holds its session slot, which bounds
    /// it.
    pub fn suspend(&self, new: NewSnapshot<'_>, expires: SystemTime, lifetime_ends: SystemTime) -> Result<SnapshotMeta, SnapshotError> {
        if !valid_session_id(new.session_id) {
            return Err(io::Error::other("not a session id").into());
        }
        let image_bytes = new.image_bytes()?;
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let parent = self.suspended_dir(new.profile, new.principal);
        self.put(&parent, new.session_id, &new, image_bytes, (secs(expires), Some(secs(lifetime_ends))))
    }

    /// Sessions `principal` has suspended under `profile` (unexpired), and all of the
    /// profile's: what they hold of its session slots.
    pub fn suspended_counts(&self, profile: &str, principal: &str) -> (usize, usize) {
        let now = unix_now();
        let live = |dir: &Path| {
            subdirs(dir)
                .iter()
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(valid_session_id))
                .filter(|p| read_meta(p).is_some_and(|m| m.expires > now))
                .count()
        };
        let mine = live(&self.suspended_dir(profile, principal));
        let all = subdirs(&self.root.join("suspended").join(name_dir(profile))).iter().map(|d| live(d)).sum();
        (mine, all)
    }

    /// Takes suspended session `id` of `principal` under `profile` for this server: `None` if
    /// there is none (or it expired), [`SnapshotError::Claimed`] if another server took it
    /// first.
    pub fn claim(&self, profile: &str, principal: &str, id: &str) -> Result<Option<Claimed>, SnapshotError> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        let parent = self.suspended_dir(profile, principal);
        let dir = parent.join(id);
        if !dir.join("meta.json").exists() {
            return Ok(None);
        }
        let claimed = parent.join(format!(".claimed-{id}-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(&dir, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SnapshotError::Claimed(id.to_string())),
            Err(e) => return Err(e.into()),
        }
        let mut claim = Claimed { dir: claimed, meta: None, done: false };
        let meta = read_meta(&claim.dir).filter(|m| m.id == id && m.profile == profile && m.principal == principal).ok_or_else(|| {
            SnapshotError::Tampered { id: id.to_string(), why: "its record does not parse or names another owner".into() }
        })?;
        if meta.expires <= unix_now() {
            return Ok(None);
        }
        claim.meta = Some(meta);
        Ok(Some(claim))
    }

    /// Reads snapshot `meta` (kept in `dir`): its files into memory (refusing more than `max_files_bytes`) and
    /// copies its image to `image_to`, checking the sha256 of everything read against the
    /// record. On a mismatch nothing is returned and the copy is removed.
    pub fn load(&self, dir: &Path, meta: &SnapshotMeta, max_files_bytes: u64, image_to: &Path) -> Result<Vec<InputFile>, SnapshotError> {
        let tampered = |why: &str| SnapshotError::Tampered { id: meta.id.clone(), why: why.to_string() };
        let path = dir.join("data");
        let mut data = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => tampered("its data is missing"),
            _ => e.into(),
        })?;
        let len = data.metadata()?.len();
        if len != meta.bytes() {
            return Err(tampered(&format!("its data holds {len} bytes, its record says {}", meta.bytes())));
        }
        if meta.files_bytes() > max_files_bytes {
            return Err(io::Error::other(format!(
                "its files hold {} bytes, more than this profile's workspace allows ({max_files_bytes}, limits.workspace_bytes)",
                meta.files_bytes()
            ))
            .into());
        }
        let mut hash = Sha256::new();
        let mut files = Vec::with_capacity(meta.files.len());
        for (name, n) in &meta.files {
            let mut content = Vec::with_capacity(*n as usize);
            (&mut data).take(*n).read_to_end(&mut content)?;
            if content.len() as u64 != *n {
                return Err(tampered("its data is short"));
            }
            hash.update(&content);
            files.push(InputFile { path: name.clone(), content });
        }
        if meta.has_interpreter() {
            let mut out = create_new(image_to)?;
            let copied = copy_hashing(&mut (&mut data).take(meta.image_bytes), &mut out, &mut hash);
            if copied.as_ref().ok() != Some(&meta.image_bytes) {
                let _ = fs::remove_file(image_to);
                return Err(copied.err().map(SnapshotError::Io).unwrap_or_else(|| tampered("its image is short")));
            }
        }
        if hex::encode(hash.finalize()) != meta.sha256 {
            let _ = fs::remove_file(image_to);
            return Err(tampered("its sha256 does not match its record"));
        }
        Ok(files)
    }

    /// Deletes snapshot `id` of `principal` under `profile`.
    pub fn delete(&self, profile: &str, principal: &str, id: &str) -> Result<(), SnapshotError> {
        if !valid_id(id) {
            return Err(SnapshotError::Unknown(id.chars().take(80).collect()));
        }
        let dir = self.principal_dir(profile, principal).join(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SnapshotError::Unknown(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every snapshot whose retention has ended, and what an interrupted write left
    /// (a temporary directory older than an hour); returns the records of the expired ones.
    pub fn expire(&self) -> Vec<SnapshotMeta> {
        let now = unix_now();
        let mut gone = Vec::new();
        let suspended = subdirs(&self.root.join("suspended")).into_iter().flat_map(|p| subdirs(&p));
        for principal in subdirs(&self.root).into_iter().filter(|p| !p.ends_with("suspended")).flat_map(|p| subdirs(&p)).chain(suspended) {
            for (dir, meta) in records(&principal) {
                if let Ok(m) = meta {
                    if m.expires <= now && fs::remove_dir_all(&dir).is_ok() {
                        gone.push(m);
                    }
                }
            }
            for entry in fs::read_dir(&principal).into_iter().flatten().flatten() {
                let stale = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if entry.file_name().to_string_lossy().starts_with(".tmp-") && stale {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        gone
    }

    /// Bytes all snapshots under `profile` take (expired ones not yet removed included).
    fn profile_bytes(&self, profile: &str) -> u64 {
        subdirs(&self.root.join(name_dir(profile))).iter().flat_map(|p| records(p)).filter_map(|(_, m)| m.ok()).map(|m| m.bytes()).sum()
    }
}

/// The snapshot (or suspended session) directories in a principal's directory and their parsed
/// records.
fn records(dir: &Path) -> Vec<(PathBuf, Result<SnapshotMeta, ()>)> {
    subdirs(dir)
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| valid_id(n) || valid_session_id(n)))
        .map(|p| {
            let meta = read_meta(&p).ok_or(());
            (p, meta)
        })
        .collect()
}

fn read_meta(dir: &Path) -> Option<SnapshotMeta> {
    fs::read(dir.join("meta.json")).ok().and_then(|t| serde_json::from_slice(&t).ok())
}

/// A suspended session this server took ([`SnapshotStore::claim`]): removed from the store
/// when dropped, unless [`Claimed::release`]d back.
pub struct Claimed {
    dir: PathBuf,
    meta: Option<SnapshotMeta>,
    done: bool,
}

impl Claimed {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &SnapshotMeta {
        self.meta.as_ref().expect("a claim holds its record")
    }

    /// Puts the session back as suspended (its restore failed for a reason that may pass).
    pub fn release(mut self) {
        if let (Some(parent), Some(m)) = (self.dir.parent(), &self.meta) {
            if fs::rename(&self.dir, parent.join(&m.id)).is_ok() {
                self.done = true;
            }
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

fn create_new(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Copies `from` into `to`, feeding every byte to `hash`; returns the bytes copied.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write, hash: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SnapshotLimits {
        SnapshotLimits { per_principal: 2, bytes_per_principal: 1000, bytes: 1500, retention: Duration::from_secs(60) }
    }

    fn new<'a>(principal: &'a str, files: &'a [InputFile], image: Option<&'a Path>) -> NewSnapshot<'a> {
        NewSnapshot {
            principal,
            profile: "p",
            session_id: "s-1",
            language: Language::Python,
            label: None,
            files,
            image,
            max_image: 1 << 20,
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_belongs_to_its_principal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(&dir.path().join("snaps")).unwrap();
        let files = vec![InputFile { path: "a.txt".into(), content: b"alpha".to_vec() }, InputFile { path: "d/b".into(), content: vec![] }];
        let image = dir.path().join("image.bin");
        fs::write(&image, b"IMAGE").unwrap();
        let meta = store.write(new("alice", &files, Some(&image)), &limits()).unwrap();
        assert_eq!(meta.bytes(), 10);
        assert_eq!(store.list("p", "alice"), vec![meta.clone()]);
        assert!(store.list("p", "bob").is_empty());
        assert!(store.list("q", "alice").is_empty(), "a snapshot belongs to its profile too");
        assert!(matches!(store.get("p", "bob", &meta.id), Err(SnapshotError::Unknown(_))));
        assert!(matches!(store.get("p", "alice", "../../etc"), Err(SnapshotError::Unknown(_))));
        let got = store.get("p", "alice", &meta.id).unwrap();
        let to = dir.path().join("restored.bin");
        let loaded = store.load(&store.snapshot_dir(&got), &got, 100, &to).unwrap();
        assert_eq!(loaded[0].content, b"alpha");
        assert_eq!(loaded[1].path, "d/b");
        assert_eq!(fs::read(&to).unwrap(), b"IMAGE");
        assert!(matches!(store.delete("p", "bob", &meta.id), Err(SnapshotError::Unknown(_))));
        store.delete("p", "alice", &meta.id).unwrap();
        assert!(store.list("p", "alice").is_empty());
    }

    #[test]
    fn an_altered_or_truncated_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let files = vec![InputFile { path: "a.txt".into(), content: b"alpha".to_vec() }];
        let meta = store.write(new("alice", &files, None), &limits()).unwrap();
        let data = store.principal_dir("p", "alice").join(&meta.id).join("data");
        fs::write(&data, b"alphA").unwrap();
        let to = dir.path().join("x");
        assert!(matches!(store.load(&store.snapshot_dir(&meta), &meta, 100, &to), Err(SnapshotError::Tampered { .. })));
        fs::write(&data, b"alph").unwrap();
        assert!(matches!(store.load(&store.snapshot_dir(&meta), &meta, 100, &to), Err(SnapshotError::Tampered { .. })));
        fs::write(store.principal_dir("p", "alice").join(&meta.id).join("meta.json"), b"{").unwrap();
        assert!(matches!(store.get("p", "alice", &meta.id), Err(SnapshotError::Tampered { .. })));
    }

    #[test]
    fn quotas_hold_per_principal_and_per_profile_and_retention_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let big = vec![InputFile { path: "a".into(), content: vec![0; 600] }];
        let small = vec![InputFile { path: "a".into(), content: vec![0; 10] }];
        store.write(new("alice", &big, None), &limits()).unwrap();
        assert!(matches!(store.write(new("alice", &big, None), &limits()), Err(SnapshotError::PrincipalBytes { .. })));
        store.write(new("alice", &small, None), &limits()).unwrap();
        assert!(matches!(store.write(new("alice", &small, None), &limits()), Err(SnapshotError::Count(2))));
        store.write(new("bob", &big, None), &limits()).unwrap();
        assert!(matches!(store.write(new("carol", &big, None), &limits()), Err(SnapshotError::ProfileBytes { .. })));
        let off = SnapshotLimits { per_principal: 0, ..limits() };
        assert!(matches!(store.write(new("carol", &small, None), &off), Err(SnapshotError::Disabled)));
        let gone = SnapshotLimits { retention: Duration::ZERO, ..limits() };
        let m = store.write(new("dave", &small, None), &gone).unwrap();
        assert!(store.list("p", "dave").is_empty(), "an expired snapshot is not listed");
        assert!(matches!(store.get("p", "dave", &m.id), Err(SnapshotError::Unknown(_))));
        let expired = store.expire();
        assert_eq!(expired.iter().map(|m| m.principal.as_str()).collect::<Vec<_>>(), ["dave"]);
        assert_eq!(store.list("p", "alice").len(), 2);
    }
}
