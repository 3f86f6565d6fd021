//! The workspace quota's ledger: what a workspace's files, directories and links cost on the
//! host, kept up to date at the point of use.
//!
//! Every call that can grow what a guest stores is checked *before* it runs against what the
//! ledger says is stored ([`Quota::admit`]), and the ledger is corrected from the kernel's own
//! `stat` of the touched inode right after it (`observe`). Nothing is walked, so nesting depth,
//! files unlinked while still open, and bytes written between two checks cannot hide anything.
//! The WASI side that calls into this ledger is [`super::fsgate`]; host-side input writes use it
//! too ([`super::workspace::Workspace::write_inputs`]), so inputs piling up across the turns of a
//! session count against the same quota.
//!
//! Cost model, stated so a reviewer can bound the host's disk: every inode (file, directory,
//! symlink) costs one block for itself plus its size rounded up to whole blocks, whether or not
//! the file is sparse (a reader of a sparse file pays for its length). A directory's size is read
//! back from the kernel after each entry added to it, so name blocks are charged as they grow
//! and stay charged until the directory is removed (ext4 never shrinks a directory). An inode
//! stays charged while any guest descriptor holds it open, even after its last name is gone.
//! What is not charged (extent and index blocks of the file system) is bounded by the slack
//! stated in SECURITY.md.
//!
//! The ledger does not own the files: it never touches the file system. It knows inodes by
//! `(dev, ino)` only.

use std::collections::HashMap;

/// Accounting block size: the file system's allocation unit on the hosts we run on.
pub const BLOCK: u64 = 4096;

/// What an inode of `size` bytes is charged: one block for itself, plus its data in whole blocks.
pub fn charge_of(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK).saturating_add(BLOCK)
}

/// An inode, by device and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub dev: u64,
    pub ino: u64,
}

/// What the kernel said about an inode.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub key: Key,
    pub size: u64,
    pub nlink: u64,
    pub dir: bool,
}

impl Seen {
    /// The same facts, for host-side writes, keyed as wasmtime-wasi keys inodes for preview1
    /// guests: device 1 and, as the inode number, std's (unkeyed, so reproducible) hash of the
    /// real `(dev, ino)` pair. Host writes and guest calls then meet on one ledger entry.
    pub fn of_host(meta: &std::fs::Metadata) -> Seen {
        use std::os::unix::fs::MetadataExt;
        Seen::host(meta.dev(), meta.ino(), meta.len(), meta.nlink(), meta.is_dir())
    }

    /// [`Seen::of_host`] from the raw fields.
    pub fn host(dev: u64, ino: u64, size: u64, nlink: u64, dir: bool) -> Seen {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (dev, ino).hash(&mut h);
        Seen { key: Key { dev: 1, ino: h.finish() }, size, nlink, dir }
    }
}

#[derive(Debug)]
struct Node {
    charged: u64,
    nlink: u64,
    /// Guest descriptors open on it.
    open: u32,
    /// `/workspace` or `/tmp` itself: never freed, never counted as a file, and charged only for
    /// what it grew past its size when the workspace was created.
    root_base: Option<u64>,
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub max_bytes: u64,
    pub max_files: u64,
}

/// Bytes and inodes charged to a workspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub bytes: u64,
    pub files: u64,
}

/// The ledger of one workspace (`/workspace` and `/tmp` together). It outlives guests: a session's
/// ledger carries over from turn to turn.
#[derive(Debug)]
pub struct Quota {
    nodes: HashMap<Key, Node>,
    bytes: u64,
    files: u64,
    max_bytes: u64,
    max_files: u64,
    /// Changes refused since the limits were last set (one run).
    refused: u32,
}

impl Quota {
    /// A ledger for a workspace whose roots are `roots`, with no limits yet (set them with
    /// [`Quota::set_limits`] before a run).
    pub fn new(roots: &[Seen]) -> Quota {
        let mut nodes = HashMap::new();
        for r in roots {
            nodes.insert(r.key, Node { charged: 0, nlink: r.nlink, open: 0, root_base: Some(charge_of(r.size)) });
        }
        Quota { nodes, bytes: 0, files: 0, max_bytes: 0, max_files: 0, refused: 0 }
    }

    /// The limits of the run about to start; resets the refusal count.
    pub fn set_limits(&mut self, max_bytes: u64, max_files: u64) {
        self.max_bytes = max_bytes;
        self.max_files = max_files;
        self.refused = 0;
    }

    pub fn charged(&self) -> Charged {
        Charged { bytes: self.bytes, files: self.files }
    }

    /// Changes refused since the limits were last set.
    pub fn refused(&self) -> u32 {
        self.refused
    }

    pub fn limits(&self) -> Refused {
        Refused { max_bytes: self.max_bytes, max_files: self.max_files }
    }

    /// Whether `key` is an inode this ledger charges (or a root).
    pub fn knows(&self, key: Key) -> bool {
        self.nodes.contains_key(&key)
    }

    /// What `key` is charged now (0 if unknown).
    pub fn charge_for(&self, key: Key) -> u64 {
        self.nodes.get(&key).map_or(0, |n| n.charged)
    }

    /// Checks that `bytes` more bytes and `files` more inodes fit, before the change that needs
    /// them is made. A refusal is counted.
    pub fn admit(&mut self, bytes: u64, files: u64) -> Result<(), Refused> {
        let fits = self.bytes.saturating_add(bytes) <= self.max_bytes && self.files.saturating_add(files) <= self.max_files;
        if fits {
            Ok(())
        } else {
            self.refused = self.refused.saturating_add(1);
            Err(self.limits())
        }
    }

    /// Records what the kernel says an inode in the workspace holds now (after a change, or when
    /// a descriptor is opened on it). Unknown inodes are added.
    pub fn observe(&mut self, seen: Seen) {
        if !self.nodes.contains_key(&seen.key) {
            self.files += 1;
            self.nodes.insert(seen.key, Node { charged: 0, nlink: seen.nlink, open: 0, root_base: None });
        }
        let node = self.nodes.get_mut(&seen.key).expect("inserted above");
        let charge = match node.root_base {
            Some(base) => charge_of(seen.size).saturating_sub(base),
            None => charge_of(seen.size),
        };
        self.bytes = self.bytes - node.charged + charge;
        node.charged = charge;
        node.nlink = seen.nlink;
    }

    /// A guest descriptor was opened on `seen` (already observed or not).
    pub fn opened(&mut self, seen: Seen) {
        self.observe(seen);
        if let Some(n) = self.nodes.get_mut(&seen.key) {
            n.open += 1;
        }
    }

    /// A guest descriptor on `key` was closed. `nlink` is the link count just before the close,
    /// when known.
    pub fn closed(&mut self, key: Key, nlink: Option<u64>) {
        let Some(n) = self.nodes.get_mut(&key) else { return };
        n.open = n.open.saturating_sub(1);
        if let Some(l) = nlink {
            n.nlink = l;
        }
        self.free_if_gone(key);
    }

    /// One name of `key` was removed; `nlink_before` is its link count before.
    pub fn unlinked(&mut self, key: Key, nlink_before: u64) {
        let Some(n) = self.nodes.get_mut(&key) else { return };
        n.nlink = nlink_before.saturating_sub(1);
        self.free_if_gone(key);
    }

    /// A directory was removed. (A directory's link count counts its `.` and its subdirectories'
    /// `..`; once removed it has no name left.)
    pub fn dir_removed(&mut self, key: Key) {
        let Some(n) = self.nodes.get_mut(&key) else { return };
        n.nlink = 0;
        self.free_if_gone(key);
    }

    fn free_if_gone(&mut self, key: Key) {
        let gone = self.nodes.get(&key).is_some_and(|n| n.nlink == 0 && n.open == 0 && n.root_base.is_none());
        if gone {
            let n = self.nodes.remove(&key).expect("checked above");
            self.bytes -= n.charged;
            self.files -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ino: u64, size: u64, nlink: u64) -> Seen {
        Seen { key: Key { dev: 1, ino }, size, nlink, dir: false }
    }

    fn quota(bytes: u64, files: u64) -> Quota {
        let mut q = Quota::new(&[seen(1, 4096, 2)]);
        q.set_limits(bytes, files);
        q
    }

    #[test]
    fn inodes_cost_a_block_plus_their_data_in_blocks() {
        assert_eq!(charge_of(0), 4096);
        assert_eq!(charge_of(1), 8192);
        assert_eq!(charge_of(4096), 8192);
        assert_eq!(charge_of(u64::MAX), u64::MAX);
        let mut q = quota(1 << 20, 10);
        q.observe(seen(2, 10, 1));
        q.observe(seen(2, 5000, 1));
        assert_eq!(q.charged(), Charged { bytes: 4096 + 8192, files: 1 });
        q.observe(seen(2, 0, 1));
        assert_eq!(q.charged(), Charged { bytes: 4096, files: 1 });
    }

    #[test]
    fn roots_are_charged_only_for_growth_and_never_freed() {
        let mut q = quota(1 << 20, 10);
        q.observe(seen(1, 8192, 2));
        assert_eq!(q.charged(), Charged { bytes: 4096, files: 0 });
        q.dir_removed(Key { dev: 1, ino: 1 });
        assert_eq!(q.charged(), Charged { bytes: 4096, files: 0 });
    }

    #[test]
    fn admission_checks_bytes_and_files_and_counts_refusals() {
        let mut q = quota(3 * 4096, 2);
        assert!(q.admit(3 * 4096, 2).is_ok());
        assert!(q.admit(3 * 4096 + 1, 0).is_err());
        assert!(q.admit(0, 3).is_err());
        assert_eq!(q.refused(), 2);
        q.set_limits(3 * 4096, 2);
        assert_eq!(q.refused(), 0);
    }

    #[test]
    fn an_unlinked_file_stays_charged_until_its_last_descriptor_closes() {
        let mut q = quota(1 << 30, 10);
        q.opened(seen(2, 0, 1));
        q.observe(seen(2, 1 << 20, 1));
        q.unlinked(Key { dev: 1, ino: 2 }, 1);
        assert_eq!(q.charged().files, 1, "still open");
        q.observe(seen(2, 2 << 20, 0));
        assert_eq!(q.charged().bytes, charge_of(2 << 20));
        q.closed(Key { dev: 1, ino: 2 }, Some(0));
        assert_eq!(q.charged(), Charged::default());
    }

    #[test]
    fn hard_links_keep_an_inode_until_the_last_name_goes() {
        let mut q = quota(1 << 30, 10);
        q.observe(seen(2, 100, 2));
        q.unlinked(Key { dev: 1, ino: 2 }, 2);
        assert_eq!(q.charged().files, 1);
        q.unlinked(Key { dev: 1, ino: 2 }, 1);
        assert_eq!(q.charged(), Charged::default());
    }
}
