//! Live counters of a mount, read with `fastfs stats MOUNTPOINT`.
//!
//! The daemon answers `getxattr(MOUNTPOINT, "user.fastfs.stats")` on the mount root with
//! the text of [`Snapshot::render`]: one `name value` line per counter. The attribute is
//! not listed by `listxattr`, so copies of the tree never carry it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The virtual extended attribute on the mount root that carries the counters.
pub const STATS_XATTR: &str = "user.fastfs.stats";

/// The FUSE operations, for per-operation request counts.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
    Forget,
}

impl Op {
    pub const COUNT: usize = 33;
    pub const NAMES: [&'static str; Op::COUNT] = [
        "lookup",
        "getattr",
        "setattr",
        "readlink",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "symlink",
        "rename",
        "link",
        "open",
        "read",
        "write",
        "flush",
        "release",
        "fsync",
        "opendir",
        "readdir",
        "readdirplus",
        "releasedir",
        "fsyncdir",
        "statfs",
        "setxattr",
        "getxattr",
        "listxattr",
        "removexattr",
        "access",
        "create",
        "fallocate",
        "lseek",
        "copy_file_range",
        "forget",
    ];
}

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
    pub requests: AtomicU64,
    /// Requests by operation, indexed by `Op as usize`.
    by_op: OpCounters,
    /// Requests being served right now, and the most there ever were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

#[derive(Debug)]
struct OpCounters([AtomicU64; Op::COUNT]);

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
    pub requests: u64,
    pub max_in_flight: u64,
    /// Requests by operation, in the order of [`Op::NAMES`].
    pub by_op: Vec<u64>,
    pub inodes: u64,
    pub open_handles: u64,
    /// Identity changes of serving threads (see `creds`).
    pub credential_switches: u64,
}

impl Stats {
    pub fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a request; it stays in flight while the returned guard lives.
    pub fn request(&self, op: Op) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.by_op.0[op as usize].fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
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
            requests: get(&self.requests),
            max_in_flight: get(&self.max_in_flight),
            by_op: self.by_op.0.iter().map(get).collect(),
            inodes: 0,
            open_handles: 0,
            credential_switches: 0,
        }
    }
}

impl Snapshot {
    /// `name value` lines, in a fixed order.
    pub fn render(&self) -> String {
        let by_op = Op::NAMES
            .iter()
            .zip(&self.by_op)
            .map(|(name, n)| format!("requests.{name} {n}\n"));
        [
            ("copy_file_range.calls", self.copy_calls),
            ("copy_file_range.offloaded_bytes", self.copy_offloaded_bytes),
            ("copy_file_range.fallback_bytes", self.copy_fallback_bytes),
            ("read.bytes", self.read_bytes),
            ("write.bytes", self.write_bytes),
            ("passthrough.opens", self.passthrough_opens),
            ("create.found_existing", self.create_found_existing),
            ("requests", self.requests),
            ("requests.max_in_flight", self.max_in_flight),
            ("inodes", self.inodes),
            ("open_handles", self.open_handles),
            ("credential_switches", self.credential_switches),
        ]
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
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
