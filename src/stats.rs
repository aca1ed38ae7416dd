//! Live counters of a mount, read with `fastfs stats MOUNTPOINT`.
//!
//! The daemon answers `getxattr(MOUNTPOINT, "user.fastfs.stats")` on the mount root with
//! the text of [`Snapshot::render`]: one `name value` line per counter. The attribute is
//! not listed by `listxattr`, so copies of the tree never carry it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The virtual extended attribute on the mount root that carries the counters.
pub const STATS_XATTR: &str = "user.fastfs.stats";

/// The FUSE operations `fastfs stats` counts, by opcode, with the names it shows.
pub const OPERATIONS: [(u32, &str); 37] = {
    use crate::transport::wire::opcode::*;
    [
        (LOOKUP, "lookup"),
        (GETATTR, "getattr"),
        (SETATTR, "setattr"),
        (READLINK, "readlink"),
        (MKNOD, "mknod"),
        (MKDIR, "mkdir"),
        (UNLINK, "unlink"),
        (RMDIR, "rmdir"),
        (SYMLINK, "symlink"),
        (RENAME, "rename"),
        (LINK, "link"),
        (OPEN, "open"),
        (READ, "read"),
        (WRITE, "write"),
        (FLUSH, "flush"),
        (RELEASE, "release"),
        (FSYNC, "fsync"),
        (OPENDIR, "opendir"),
        (READDIR, "readdir"),
        (READDIRPLUS, "readdirplus"),
        (RELEASEDIR, "releasedir"),
        (FSYNCDIR, "fsyncdir"),
        (STATFS, "statfs"),
        (SETXATTR, "setxattr"),
        (GETXATTR, "getxattr"),
        (LISTXATTR, "listxattr"),
        (REMOVEXATTR, "removexattr"),
        (ACCESS, "access"),
        (CREATE, "create"),
        (FALLOCATE, "fallocate"),
        (LSEEK, "lseek"),
        (COPY_FILE_RANGE, "copy_file_range"),
        (FORGET, "forget"),
        (BATCH_FORGET, "batch_forget"),
        (GETLK, "getlk"),
        (SETLK, "setlk"),
        (INTERRUPT, "interrupt"),
    ]
};

/// Opcodes are small numbers; counters are kept for all below this.
const OPCODE_LIMIT: usize = 64;

#[derive(Debug, Default)]
pub struct Stats {
    pub copy_calls: AtomicU64,
    pub copy_offloaded_bytes: AtomicU64,
    pub copy_fallback_bytes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub passthrough_opens: AtomicU64,
    /// CREATE requests for a name that existed in BACKING (the kernel believed it absent).
    pub create_found_existing: AtomicU64,
    /// Requests answered ESTALE because the kernel had checked permission on attributes
    /// that changed in BACKING since (`-o idmap`, see [`crate::idmap`]).
    pub idmap_stale: AtomicU64,
    /// Nodes given up because the kernel may hold other attributes of them than the
    /// daemon knows (`-o idmap`).
    pub idmap_retired: AtomicU64,
    pub requests: AtomicU64,
    /// Requests by opcode.
    by_op: OpCounters,
    /// Requests being served right now, and the most there ever were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Requests read from `/dev/fuse`.
    pub dev_fuse_requests: AtomicU64,
    /// 1 while the connection is served over io_uring.
    pub io_uring: AtomicU64,
    /// Requests served by each io_uring queue (one per possible CPU), once there are rings.
    ring_requests: OnceLock<Box<[AtomicU64]>>,
}

#[derive(Debug)]
struct OpCounters([AtomicU64; OPCODE_LIMIT]);

impl Default for OpCounters {
    fn default() -> Self {
        OpCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Counts one request as in flight until dropped.
pub struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub copy_calls: u64,
    pub copy_offloaded_bytes: u64,
    pub copy_fallback_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub passthrough_opens: u64,
    pub create_found_existing: u64,
    pub idmap_stale: u64,
    pub idmap_retired: u64,
    pub requests: u64,
    pub max_in_flight: u64,
    /// Requests by operation, in the order of [`OPERATIONS`].
    pub by_op: Vec<u64>,
    pub inodes: u64,
    /// Inodes holding a descriptor of their own (not kept as file handles).
    pub inodes_with_descriptor: u64,
    /// 1 when inodes on the backing root's mount are kept as file handles.
    pub file_handles: u64,
    pub fd_cache_hits: u64,
    pub fd_cache_misses: u64,
    pub fd_cache_entries: u64,
    pub open_handles: u64,
    /// Identity changes of serving threads (see `creds`).
    pub credential_switches: u64,
    pub io_uring: u64,
    pub dev_fuse_requests: u64,
    /// Descriptors held for lock owners (see `locks`).
    pub lock_owner_files: u64,
    /// Requests by io_uring queue (empty without rings).
    pub ring_requests: Vec<u64>,
}

impl Stats {
    pub fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a request with `opcode`; it stays in flight while the returned guard lives.
    pub fn request(&self, opcode: u32) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.by_op.0.get(opcode as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Starts counting the requests of `queues` io_uring queues.
    pub fn start_ring_counters(&self, queues: usize) {
        let _ = self
            .ring_requests
            .set((0..queues).map(|_| AtomicU64::new(0)).collect());
    }

    /// Counts a request served by io_uring queue `queue`.
    pub fn count_ring_request(&self, queue: usize) {
        if let Some(counter) = self.ring_requests.get().and_then(|c| c.get(queue)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            copy_calls: get(&self.copy_calls),
            copy_offloaded_bytes: get(&self.copy_offloaded_bytes),
            copy_fallback_bytes: get(&self.copy_fallback_bytes),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            passthrough_opens: get(&self.passthrough_opens),
            create_found_existing: get(&self.create_found_existing),
            idmap_stale: get(&self.idmap_stale),
            idmap_retired: get(&self.idmap_retired),
            requests: get(&self.requests),
            max_in_flight: get(&self.max_in_flight),
            by_op: OPERATIONS
                .iter()
                .map(|&(opcode, _)| get(&self.by_op.0[opcode as usize]))
                .collect(),
            inodes: 0,
            inodes_with_descriptor: 0,
            file_handles: 0,
            fd_cache_hits: 0,
            fd_cache_misses: 0,
            fd_cache_entries: 0,
            open_handles: 0,
            credential_switches: 0,
            io_uring: get(&self.io_uring),
            lock_owner_files: 0,
            dev_fuse_requests: get(&self.dev_fuse_requests),
            ring_requests: self
                .ring_requests
                .get()
                .map(|c| c.iter().map(get).collect())
                .unwrap_or_default(),
        }
    }
}

impl Snapshot {
    /// `name value` lines, in a fixed order.
    pub fn render(&self) -> String {
        let by_op = OPERATIONS
            .iter()
            .map(|(_, name)| name)
            .zip(&self.by_op)
            .map(|(name, n)| format!("requests.{name} {n}\n"));
        let by_queue = self
            .ring_requests
            .iter()
            .enumerate()
            .map(|(queue, n)| format!("transport.ring.queue{queue}.requests {n}\n"));
        [
            ("copy_file_range.calls", self.copy_calls),
            ("copy_file_range.offloaded_bytes", self.copy_offloaded_bytes),
            ("copy_file_range.fallback_bytes", self.copy_fallback_bytes),
            ("read.bytes", self.read_bytes),
            ("write.bytes", self.write_bytes),
            ("passthrough.opens", self.passthrough_opens),
            ("create.found_existing", self.create_found_existing),
            ("idmap.stale", self.idmap_stale),
            ("idmap.retired", self.idmap_retired),
            ("requests", self.requests),
            ("requests.max_in_flight", self.max_in_flight),
            ("inodes", self.inodes),
            ("inodes.with_descriptor", self.inodes_with_descriptor),
            ("identity.file_handles", self.file_handles),
            ("fd_cache.hits", self.fd_cache_hits),
            ("fd_cache.misses", self.fd_cache_misses),
            ("fd_cache.entries", self.fd_cache_entries),
            ("open_handles", self.open_handles),
            ("credential_switches", self.credential_switches),
            ("locks.owner_files", self.lock_owner_files),
            ("transport.io_uring", self.io_uring),
            ("transport.dev_fuse.requests", self.dev_fuse_requests),
        ]
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .chain(by_queue)
        .chain(by_op)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_counter_by_name() {
        let stats = Stats::default();
        stats.count(&stats.copy_offloaded_bytes, 42);
        let text = stats.snapshot().render();
        assert!(text.contains("copy_file_range.offloaded_bytes 42\n"));
        for name in [
            "copy_file_range.calls",
            "copy_file_range.fallback_bytes",
            "read.bytes",
            "write.bytes",
        ] {
            assert!(text.contains(&format!("{name} 0\n")), "{name} missing");
        }
    }
}
