//! The passthrough operations, as plain methods that return `io::Result`.
//!
//! Every name is resolved relative to its parent's `O_PATH` descriptor with `O_NOFOLLOW`,
//! and names that are not a single path component are refused, so nothing done through
//! the mount reaches outside BACKING and no symlink is ever followed by the daemon.
//! Errors carry the backing call's errno unchanged.
//!
//! A method first finds the descriptors it needs ([`Fs::path_fd`], which may reopen an
//! inode from its file handle with the daemon's rights), then acts as the caller
//! ([`crate::creds`]) for the calls it makes on the caller's behalf.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::copy;
pub use crate::creds::Caller;
use crate::creds::{Credentials, Role};
use crate::handle::{Handle, HandleTable};
use crate::inode::{FdCache, FileHandle, Found, Identity, Inode, InodeTable, Key, NodeId, ROOT_ID};
use crate::locks::Locks;
use crate::stats::{Snapshot, Stats};
use crate::sys;

pub use crate::dir::DirEntry;
pub use crate::xattr::Xattr;

/// An inode handed to the kernel together with its attributes.
#[derive(Debug)]
pub struct Entry {
    pub inode: Arc<Inode>,
    pub st: libc::stat,
}

/// A timestamp in a setattr request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    /// Seconds since the epoch (negative before it) and nanoseconds (0..1e9) to add.
    At {
        sec: i64,
        nsec: u32,
    },
}

/// The attribute changes of one setattr request; `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The kernel asks to drop set-user-id, set-group-id and file capabilities, as a
    /// write by the caller or `chown(f, -1, -1)` does natively (FUSE_HANDLE_KILLPRIV_V2).
    pub kill_privileges: bool,
    /// The kernel, knowing the caller, asks that a truncate or chown drop set-id bits
    /// (FATTR_KILL_SUIDGID).
    pub kill_suidgid: bool,
}

/// Flags a backing descriptor is never opened with: creation is done by `create`,
/// `O_APPEND` is applied by the kernel (and `copy_file_range(2)` refuses it), `O_DIRECT`
/// would need aligned daemon buffers, and `O_NOFOLLOW` was already applied by the kernel
/// (on a `/proc/self/fd` path it would open the magic link itself and fail with ELOOP).
pub(crate) const STRIPPED_OPEN_FLAGS: libc::c_int = libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_NOFOLLOW;

/// How the filesystem keeps inodes and how many descriptors it may use for them.
#[derive(Debug, Clone, Copy)]
pub struct FsOptions {
    /// The daemon's `RLIMIT_NOFILE`.
    pub fd_limit: u64,
    /// Keep inodes on the root's mount as file handles where the kernel allows it.
    pub file_handles: bool,
    /// Take the mount's locks on the backing files (`-o locks=backing`).
    pub forward_locks: bool,
    /// Which reads leave the backing files' access times alone.
    pub atime: Atime,
    /// Requests may come without the caller's ids (`-o idmap`, see [`crate::creds`]).
    pub idmap: bool,
}

/// The mount's `noatime` and `nodiratime`, applied to the backing files: they are opened
/// with `O_NOATIME`, so neither the daemon's reads nor kernel passthrough I/O through
/// them update the access time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Atime {
    pub noatime: bool,
    pub nodiratime: bool,
}

impl Atime {
    pub fn of_mount_flags(flags: u64) -> Self {
        Atime {
            noatime: flags & libc::MS_NOATIME != 0,
            nodiratime: flags & libc::MS_NODIRATIME != 0,
        }
    }

    fn keeps_backing_atime(self, directory: bool) -> bool {
        self.noatime || (directory && self.nodiratime)
    }
}

impl FsOptions {
    /// Descriptors kept free of inodes: open files, directories being listed, the
    /// session itself.
    fn reserve(&self) -> u64 {
        (self.fd_limit / 8).max(1024).min(self.fd_limit / 2)
    }

    /// `O_PATH` descriptors cached for inodes kept as handles.
    fn cache_capacity(&self) -> usize {
        (self.fd_limit / 4).clamp(64, 8192) as usize
    }

    /// Open files one user (other than the daemon's own) may hold through the mount.
    fn handles_per_user(&self) -> usize {
        (self.fd_limit / 4).max(256) as usize
    }

    /// Descriptors one user's lock owners may hold (see [`crate::locks`]).
    fn lock_owners_per_user(&self) -> usize {
        (self.fd_limit / 8).max(128) as usize
    }

    /// Inodes that may hold a descriptor of their own before the daemon asks the kernel
    /// to prune unused ones.
    fn descriptor_budget(&self) -> usize {
        (self
            .fd_limit
            .saturating_sub(self.reserve())
            .saturating_sub(self.cache_capacity() as u64))
        .max(64) as usize
    }
}

pub struct Fs {
    pub(crate) inodes: InodeTable,
    /// `O_PATH` descriptors of inodes kept as handles.
    pub(crate) fds: FdCache,
    /// A descriptor (not `O_PATH`) of the root's mount, for `open_by_handle_at`; `None`
    /// when inodes are kept by descriptor.
    mount_fd: Option<OwnedFd>,
    /// The mount the backing root is on.
    pub(crate) root_mnt: u64,
    /// `(mount, device, inode number)` of the backing root.
    pub(crate) root_ident: (u64, u64, u64),
    /// The backing root's device, if it is a local disk or memory filesystem (on which a
    /// close needs no flush request: nothing is written back or reported at close).
    local_root_dev: Option<u64>,
    pub(crate) handles: HandleTable,
    pub stats: Stats,
    /// Who the daemon is, and how it acts as a caller.
    pub(crate) creds: Credentials,
    /// CREATEs answered with ESTALE, which the kernel retries once.
    stale_creates: StaleCreates,
    descriptor_budget: usize,
    /// Woken when descriptor-holding inodes pass the budget.
    prune_wanted: (Mutex<bool>, Condvar),
    /// Descriptor-holding inodes whose last name is gone but whose FORGET has not arrived
    /// yet: their descriptor still pins the blocks.
    orphans: Mutex<HashSet<NodeId>>,
    orphans_released: Condvar,
    /// Tells the kernel that its cached attributes of a node are stale (set by the
    /// transport, which writes the notification).
    invalidate: std::sync::OnceLock<Box<dyn Fn(NodeId) + Send + Sync>>,
    pub(crate) locks: Locks,
    atime: Atime,
    /// With `-o idmap`: what the kernel may hold of each node (see [`crate::idmap`]).
    pub(crate) reported: Option<crate::idmap::Reported>,
}

/// How long an allocation that failed with ENOSPC waits for orphans to be released.
const ORPHAN_WAIT: Duration = Duration::from_millis(200);

/// How long a lookup waits for pruning when inodes hold all the descriptors allowed.
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(1);

pub(crate) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A name from a request as a C string: exactly one path component.
pub(crate) fn component(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(errno(libc::EINVAL));
    }
    sys::cstr(name)
}

fn timespec(time: Option<SetTime>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match time {
        None => (0, libc::UTIME_OMIT),
        Some(SetTime::Now) => (0, libc::UTIME_NOW),
        Some(SetTime::At { sec, nsec }) => (sec, i64::from(nsec)),
    };
    libc::timespec { tv_sec, tv_nsec }
}

/// `(mount, device, inode number)` of a `statx` result.
pub(crate) fn ident(st: &sys::StatMount) -> (u64, u64, u64) {
    (st.mnt_id, st.st.st_dev, st.st.st_ino)
}

/// A descriptor of the root's mount that reopens handles, if file handles work here: the
/// daemon has CAP_DAC_READ_SEARCH and the backing filesystem exports handles. The error
/// says why not.
fn handle_mount(root: &OwnedFd) -> io::Result<OwnedFd> {
    // open_by_handle_at refuses an O_PATH mount descriptor.
    let mount = sys::openat(
        None,
        &sys::proc_fd_path(root.as_fd()),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let (handle_type, bytes) = sys::name_to_handle_at(root.as_fd(), c"", libc::AT_EMPTY_PATH)?;
    let reopened = sys::open_by_handle_at(mount.as_fd(), handle_type, &bytes, libc::O_PATH)?;
    let (a, b) = (sys::fstat(root.as_fd())?, sys::fstat(reopened.as_fd())?);
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        return Err(io::Error::other(
            "a handle of the root reopened another object",
        ));
    }
    Ok(mount)
}

impl Fs {
    /// A filesystem over the directory `root` (an `O_PATH` descriptor of it).
    pub fn new(root: OwnedFd, options: FsOptions) -> io::Result<Self> {
        let root_st = sys::statx(root.as_fd(), c"", libc::AT_EMPTY_PATH)?;
        let local_root_dev =
            is_local_disk_fs(&sys::fstatfs(root.as_fd())?).then_some(root_st.st.st_dev);
        let mount_fd = if options.file_handles {
            match handle_mount(&root) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    log::info!(
                        "inodes are kept by descriptor (no file handles here: {e}); \
                         at most {} at once",
                        options.descriptor_budget()
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Fs {
            inodes: InodeTable::new(root)?,
            fds: FdCache::new(options.cache_capacity()),
            mount_fd,
            root_mnt: root_st.mnt_id,
            root_ident: ident(&root_st),
            local_root_dev,
            handles: HandleTable::new(sys::effective_ids().0, options.handles_per_user()),
            stats: Stats::default(),
            creds: Credentials::of_daemon(options.idmap)?,
            stale_creates: StaleCreates::default(),
            descriptor_budget: options.descriptor_budget(),
            prune_wanted: (Mutex::new(false), Condvar::new()),
            orphans: Mutex::new(HashSet::new()),
            orphans_released: Condvar::new(),
            invalidate: std::sync::OnceLock::new(),
            locks: Locks::new(options.forward_locks, options.lock_owners_per_user()),
            atime: options.atime,
            reported: options.idmap.then(crate::idmap::Reported::new),
        })
    }

    /// Runs `f` with the daemon's own rights; the thread goes on with the identity it had.
    pub fn with_daemon_rights<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.creds.briefly_as_daemon(f)
    }

    /// Installs how the kernel is told that its cached attributes of a node are stale.
    pub fn set_attribute_invalidator(&self, invalidate: Box<dyn Fn(NodeId) + Send + Sync>) {
        let _ = self.invalidate.set(invalidate);
    }

    pub(crate) fn invalidate_attributes(&self, id: NodeId) {
        if let Some(invalidate) = self.invalidate.get() {
            invalidate(id);
        }
    }

    /// Whether inodes on the root's mount are kept as file handles.
    pub fn uses_file_handles(&self) -> bool {
        self.mount_fd.is_some()
    }

    /// Whether a close of `inode` may skip the FLUSH request. Network filesystems write
    /// back and report errors at close, so only files on the backing root's own local
    /// filesystem qualify, and only where locks are not forwarded.
    pub fn close_needs_no_flush(&self, inode: &Inode) -> bool {
        // FLUSH is how the kernel says a process closed the file, which releases its
        // POSIX locks.
        if self.locks.forwarded {
            return false;
        }
        let dev = match &inode.identity {
            Identity::Handle(_) => self.inodes.root_dev(),
            Identity::Descriptor(p) => p.dev,
        };
        self.local_root_dev == Some(dev)
    }

    /// Runs `register` (the kernel passthrough registration of a backing file) as
    /// `caller`: writes through that backing file run with the registering thread's
    /// credentials.
    pub fn as_registrant<T>(
        &self,
        caller: &Caller,
        register: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let _as = self.creds.act_as_registrant(caller)?;
        register()
    }

    /// Who a write by `caller` runs as, for sharing one passthrough backing file: the
    /// caller's ids, or (u32::MAX, u32::MAX) for the agent, which writes for every
    /// caller without ids alike (see [`Credentials::act_as_writer`]).
    pub fn writer_identity(&self, caller: &Caller) -> (u32, u32) {
        match self.creds.role(caller) {
            Role::Caller => (caller.uid, caller.gid),
            Role::Agent | Role::MappedCreator => (u32::MAX, u32::MAX),
        }
    }

    /// Whether requests may come without the caller's ids (`-o idmap`).
    pub fn idmap(&self) -> bool {
        self.creds.idmap()
    }

    pub fn inode(&self, id: NodeId) -> io::Result<Arc<Inode>> {
        self.inodes.get(id)
    }

    pub fn snapshot(&self) -> Snapshot {
        let (inodes, descriptors) = self.inodes.count_inodes();
        let (hits, misses, cached) = self.fds.counters();
        Snapshot {
            inodes: inodes as u64,
            inodes_with_descriptor: descriptors as u64,
            file_handles: u64::from(self.uses_file_handles()),
            fd_cache_hits: hits,
            fd_cache_misses: misses,
            fd_cache_entries: cached as u64,
            open_handles: self.handles.count() as u64,
            credential_switches: self.creds.switches(),
            lock_owner_files: self.locks.owner_files() as u64,
            ..self.stats.snapshot()
        }
    }

    /// An `O_PATH` descriptor of `inode`: its own, a cached one, or one reopened from its
    /// file handle (which needs the daemon's CAP_DAC_READ_SEARCH; the thread goes on with
    /// the identity it had). ESTALE when the object no longer exists.
    pub fn path_fd(&self, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        let handle = match &inode.identity {
            Identity::Descriptor(p) => return Ok(p.fd.clone()),
            Identity::Handle(handle) => handle,
        };
        if let Some(fd) = self.fds.get(inode.id) {
            return Ok(fd);
        }
        let mount = self.mount_fd.as_ref().ok_or_else(|| errno(libc::ESTALE))?;
        let fd = self.creds.briefly_as_daemon(|| {
            sys::open_by_handle_at(
                mount.as_fd(),
                handle.handle_type(),
                handle.bytes(),
                libc::O_PATH,
            )
        })?;
        let st = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH)?;
        let fd = Arc::new(fd);
        self.fds.insert(inode.id, fd.clone(), ident(&st));
        Ok(fd)
    }

    /// [`Self::path_fd`] of node `id`.
    pub fn path_fd_of(&self, id: NodeId) -> io::Result<Arc<OwnedFd>> {
        let inode = self.inodes.get(id)?;
        self.path_fd(&inode)
    }

    /// Waits, if inodes hold all the descriptors allowed, for the kernel to let go of some
    /// (see [`Self::wait_for_pruning`]): a lookup never runs the daemon out of descriptors
    /// and into EMFILE for its caller.
    fn make_room_for_a_descriptor(&self) {
        if self.inodes.descriptor_pressure() < self.descriptor_budget {
            return;
        }
        self.want_pruning();
        if !self
            .inodes
            .wait_for_descriptors(self.descriptor_budget, DESCRIPTOR_WAIT)
        {
            log::debug!("descriptor budget still full after waiting; going on");
        }
    }

    fn want_pruning(&self) {
        let (wanted, wake) = &self.prune_wanted;
        *wanted.lock() = true;
        wake.notify_one();
    }

    /// Upkeep, run by a thread of its own: waits up to `period` for inodes to hold more
    /// descriptors than the budget allows, and returns the least recently used of them
    /// (files first), node ids to ask the kernel to prune (none where inodes are kept as
    /// handles). Each time, also drops cached descriptors of files deleted directly in
    /// BACKING, so that they do not keep their blocks.
    pub fn upkeep(&self, period: Duration) -> Vec<NodeId> {
        let (wanted, wake) = &self.prune_wanted;
        {
            let mut flag = wanted.lock();
            if !*flag && self.inodes.descriptor_pressure() <= self.descriptor_budget {
                wake.wait_for(&mut flag, period);
            }
            *flag = false;
        }
        self.fds
            .drop_unlinked(|fd| sys::fstat(fd.as_fd()).is_ok_and(|st| st.st_nlink == 0));
        let held = self.inodes.descriptor_pressure();
        let high = self.descriptor_budget - self.descriptor_budget / 8;
        if held > high {
            self.inodes
                .least_recent_descriptors(held - self.descriptor_budget / 2)
        } else {
            Vec::new()
        }
    }

    /// Opens `name` in `parent` as `O_PATH` without following it, and counts a lookup.
    /// (Run as the caller, the open needs the caller's search permission on `parent`.)
    pub(crate) fn lookup_component(&self, parent: &OwnedFd, name: &CString) -> io::Result<Entry> {
        self.make_room_for_a_descriptor();
        let fd = sys::openat(
            Some(parent.as_fd()),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )?;
        self.remember_opened(fd)
    }

    /// Counts a lookup of the object `fd` (an `O_PATH` descriptor) refers to.
    fn remember_opened(&self, fd: OwnedFd) -> io::Result<Entry> {
        let st = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH)?;
        // The backing root reached by a name ("..", a path the kernel reconnects) is the
        // root node: under another node id its own ".." would lead out of BACKING.
        if ident(&st) == self.root_ident {
            drop(fd);
            return self.add_lookup(self.inodes.root().clone());
        }
        // An object whose descriptor is cached is known by its numbers alone.
        if let Some(id) = self.fds.pinned(ident(&st))
            && let Some(inode) = self.inodes.add_lookup_of(id)
        {
            return Ok(Entry { inode, st: st.st });
        }
        if self.uses_file_handles() && st.mnt_id == self.root_mnt {
            match sys::name_to_handle_at(fd.as_fd(), c"", libc::AT_EMPTY_PATH) {
                Ok((handle_type, bytes)) => {
                    let inode = self.inodes.remember(Found {
                        identity: Identity::Handle(FileHandle::new(handle_type, &bytes)),
                        st: st.st,
                    });
                    self.fds.insert(inode.id, Arc::new(fd), ident(&st));
                    return Ok(Entry { inode, st: st.st });
                }
                Err(e) => log::debug!("no file handle ({e}); keeping the descriptor"),
            }
        }
        let inode = self.inodes.remember(Found {
            identity: Identity::pinned(fd, st.mnt_id, st.st.st_dev, st.st.st_ino),
            st: st.st,
        });
        Ok(Entry { inode, st: st.st })
    }

    /// [`Self::lookup_component`] for an entry of a directory being listed: a known or
    /// handle-kept object costs `statx` (and `name_to_handle_at`), no descriptor.
    /// `Ok(None)`: the entry goes without attributes (inodes hold every descriptor allowed),
    /// and the kernel looks it up when it needs it.
    pub(crate) fn lookup_listed(&self, dir: &OwnedFd, name: &CString) -> io::Result<Option<Entry>> {
        let st = sys::statx(dir.as_fd(), name, 0)?;
        if let Some(id) = self.fds.pinned(ident(&st))
            && let Some(inode) = self.inodes.add_lookup_of(id)
        {
            return Ok(Some(Entry { inode, st: st.st }));
        }
        if self.uses_file_handles() && st.mnt_id == self.root_mnt {
            let (handle_type, bytes) = sys::name_to_handle_at(dir.as_fd(), name, 0)?;
            let inode = self.inodes.remember(Found {
                identity: Identity::Handle(FileHandle::new(handle_type, &bytes)),
                st: st.st,
            });
            return Ok(Some(Entry { inode, st: st.st }));
        }
        let key = Key::Pinned {
            mnt: st.mnt_id,
            dev: st.st.st_dev,
            ino: st.st.st_ino,
        };
        if let Some(inode) = self.inodes.remember_known(key) {
            return Ok(Some(Entry { inode, st: st.st }));
        }
        if self.inodes.descriptor_pressure() >= self.descriptor_budget {
            self.want_pruning();
            return Ok(None);
        }
        self.lookup_component(dir, name).map(Some)
    }

    pub fn lookup(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<Entry> {
        let parent = match self.inodes.get(parent) {
            // "." of a node the kernel forgot: a file handle made through the mount is
            // being opened (FUSE_EXPORT_SUPPORT). The object is reopened from its backing
            // handle by `add_lookup` (ESTALE if it no longer exists).
            Err(e) if name.as_bytes() == b"." => self.inodes.revive(parent).ok_or(e)?,
            other => other?,
        };
        let parent_fd = self.path_fd(&parent)?;
        if name.as_bytes() != b"." {
            self.check_as_seen(caller, parent.id, &parent_fd)?;
        }
        let _as = self.creds.act_as(caller)?;
        match name.as_bytes() {
            b"." => self.add_lookup(parent),
            // The root's parent is outside BACKING: the mount root is its own parent.
            b".." if parent.id == ROOT_ID => self.add_lookup(parent),
            b".." => {
                self.make_room_for_a_descriptor();
                let fd = sys::openat(
                    Some(parent_fd.as_fd()),
                    c"..",
                    libc::O_PATH | libc::O_NOFOLLOW,
                    0,
                )?;
                self.remember_opened(fd)
            }
            _ => self.lookup_component(&parent_fd, &component(name)?),
        }
    }

    fn add_lookup(&self, inode: Arc<Inode>) -> io::Result<Entry> {
        let st = sys::fstat(self.path_fd(&inode)?.as_fd())?;
        self.inodes.add_lookup(&inode);
        Ok(Entry { inode, st })
    }

    pub fn forget(&self, id: NodeId, count: u64) {
        self.kernel_dropped_an_inode(id);
        if let Some(inode) = self.inodes.forget(id, count) {
            self.fds.remove(id);
            self.forget_reported(id);
            if self.orphans.lock().remove(&id) {
                self.orphans_released.notify_all();
            }
            drop(inode);
        }
    }

    /// Runs an operation that allocates space; on ENOSPC, when files deleted through the
    /// mount are still held by an inode's own descriptor until their FORGET (the kernel
    /// sends it just after the unlink reply), waits briefly for their space and tries
    /// once more. Inodes kept as handles hold nothing, so their space is free at once.
    fn allocating<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let mut orphans = self.orphans.lock();
                if orphans.is_empty() {
                    return Err(e);
                }
                let deadline = Instant::now() + ORPHAN_WAIT;
                while !orphans.is_empty() {
                    if self
                        .orphans_released
                        .wait_until(&mut orphans, deadline)
                        .timed_out()
                    {
                        break;
                    }
                }
                drop(orphans);
                op()
            }
            other => other,
        }
    }

    /// Attributes of `id`; through the open file `fh` when the kernel names one (a file
    /// unlinked while open has no other way to it).
    pub fn getattr(&self, id: NodeId, fh: Option<u64>) -> io::Result<Entry> {
        let inode = self.inodes.get(id)?;
        let st = match fh.and_then(|fh| self.handles.get(fh).ok()) {
            Some(handle) => sys::fstat(handle.fd())?,
            None => sys::fstat(self.path_fd(&inode)?.as_fd())?,
        };
        Ok(Entry { inode, st })
    }

    pub fn setattr(
        &self,
        id: NodeId,
        fh: Option<u64>,
        change: SetAttr,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let inode = self.inodes.get(id)?;
        let handle = fh.map(|fh| self.handles.get(fh)).transpose()?;
        let fd = self.path_fd(&inode)?;
        // A truncate through an open file (`ftruncate`) needs no permission but the
        // file's being open for writing.
        let only_truncates_an_open_file = handle.is_some()
            && change.size.is_some()
            && change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.atime.is_none()
            && change.mtime.is_none();
        if !only_truncates_an_open_file {
            self.check_as_seen(caller, id, &fd)?;
        }
        let role = self.creds.role(caller);
        if change.kill_privileges {
            self.kill_privileges(&inode, &fd, caller)?;
        }
        // As the caller, the backing filesystem applies its own rules: only the owner
        // may chmod or set times, chgrp only to the owner's groups, set-gid is dropped by
        // a chmod from outside the group, truncation needs write access and drops set-id
        // bits for the unprivileged.
        let _as = self.creds.act_as(caller)?;
        if let Some(mode) = change.mode {
            sys::chmod(&sys::proc_fd_path(fd.as_fd()), mode & 0o7777)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            sys::fchown_fd(
                fd.as_fd(),
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(size) = change.size {
            match &handle {
                Some(h) => sys::ftruncate(h.fd(), size)?,
                None => sys::truncate(&sys::proc_fd_path(fd.as_fd()), size)?,
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::futimens_fd(
                fd.as_fd(),
                &[timespec(change.atime), timespec(change.mtime)],
            )?;
        }
        // The agent keeps set-id bits (CAP_FSETID, for a chmod the kernel checked); the
        // kernel, which knows the caller, said whether this truncate or chown drops them.
        if role != Role::Caller
            && change.kill_suidgid
            && (change.size.is_some() || change.uid.is_some() || change.gid.is_some())
        {
            drop(_as);
            self.drop_set_id_bits(&fd)?;
        }
        let st = sys::fstat(fd.as_fd())?;
        Ok(Entry { inode, st })
    }

    /// Drops set-user-id, set-group-id and file capabilities of `inode` for `caller`, as
    /// the kernel asks after the caller's write (through kernel passthrough, the backing
    /// write itself runs with the credentials of the handle that registered it) and on
    /// `chown(f, -1, -1)`.
    ///
    /// `chown(f, -1, -1)` as the caller does exactly that natively, for the owner and for
    /// root. Anyone may send this request (`chown(f, -1, -1)` of another user's set-uid
    /// file reaches the daemon as the same empty SETATTR), so when the caller is not the
    /// owner the daemon drops the bits itself only if the caller may write the file:
    /// natively its next write would drop them anyway.
    fn kill_privileges(&self, inode: &Inode, fd: &OwnedFd, caller: &Caller) -> io::Result<()> {
        // Without the caller's ids (`-o idmap`) neither the kernel nor the daemon can tell
        // an owner's chown(f, -1, -1) from anyone's: it changes nothing. Every write of
        // data by the agent runs without CAP_FSETID (or drops the bits as the kernel
        // asks), so no write keeps them.
        if self.creds.role(caller) != Role::Caller {
            return Ok(());
        }
        let as_caller = {
            let _as = self.creds.act_as(caller)?;
            match sys::fchown_fd(fd.as_fd(), u32::MAX, u32::MAX) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    Some(sys::access_as_effective(fd.as_fd(), libc::W_OK).map_err(|_| e))
                }
                other => {
                    other?;
                    None
                }
            }
        };
        let Some(may_write) = as_caller else {
            return Ok(());
        };
        may_write?;
        // A writer who is not the owner: what a write of theirs drops natively
        // (setattr_should_drop_suidgid). chown(f, -1, -1) by the daemon drops set-uid,
        // set-gid with group execute, and file capabilities, computed by the kernel from
        // the mode as it is (a chmod racing with it is not undone).
        let in_group = |gid| self.creds.in_group(caller, gid);
        let _daemon = self.creds.as_daemon()?;
        sys::fchown_fd(fd.as_fd(), u32::MAX, u32::MAX)?;
        // Set-gid without group execute goes too for a writer outside the file's group;
        // the daemon, in every group, keeps it. This one case reads and rewrites the mode.
        let st = sys::fstat(fd.as_fd())?;
        let mode = st.st_mode & 0o7777;
        if inode.kind == libc::S_IFREG
            && mode & libc::S_ISGID != 0
            && mode & libc::S_IXGRP == 0
            && !in_group(st.st_gid)
        {
            sys::chmod(&sys::proc_fd_path(fd.as_fd()), mode & !libc::S_ISGID)?;
        }
        Ok(())
    }

    /// Drops set-user-id, set-group-id (with group execute) and file capabilities of the
    /// object of `fd`, as `chown(f, -1, -1)` by the daemon does.
    fn drop_set_id_bits(&self, fd: &OwnedFd) -> io::Result<()> {
        let _daemon = self.creds.as_daemon()?;
        sys::fchown_fd(fd.as_fd(), u32::MAX, u32::MAX)
    }

    pub fn readlink(&self, id: NodeId) -> io::Result<Vec<u8>> {
        sys::readlink_fd(self.path_fd_of(id)?.as_fd())
    }

    pub fn mkdir(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let parent_fd = self.path_fd_of(parent)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        let name = component(name)?;
        self.refuse_the_reserve_to_a_mapped_creator(caller, &parent_fd)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        sys::mkdirat(parent_fd.as_fd(), &name, mode)?;
        self.lookup_component(&parent_fd, &name)
    }

    /// A mapped creator acts as the ids on disk, and disk uid 0 (container root) is the
    /// uid ext4 keeps its root reserve for; natively it is a host uid that is not. A new
    /// directory, a long symlink and a directory grown for a new name take blocks, so
    /// nothing is created by a mapped creator once only the reserve is left (what an
    /// unprivileged `statfs` calls no blocks available). Natively a name that fits the
    /// directory's blocks could still be made then; here it is ENOSPC.
    fn refuse_the_reserve_to_a_mapped_creator(
        &self,
        caller: &Caller,
        parent_fd: &OwnedFd,
    ) -> io::Result<()> {
        if self.creds.role(caller) == Role::MappedCreator
            && sys::fstatvfs(parent_fd.as_fd())?.f_bavail == 0
        {
            return Err(errno(libc::ENOSPC));
        }
        Ok(())
    }

    pub fn mknod(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let parent_fd = self.path_fd_of(parent)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        let name = component(name)?;
        self.refuse_the_reserve_to_a_mapped_creator(caller, &parent_fd)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        sys::mknodat(parent_fd.as_fd(), &name, mode, libc::dev_t::from(rdev))?;
        self.lookup_component(&parent_fd, &name)
    }

    pub fn symlink(
        &self,
        parent: NodeId,
        name: &OsStr,
        target: &OsStr,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let parent_fd = self.path_fd_of(parent)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        let name = component(name)?;
        self.refuse_the_reserve_to_a_mapped_creator(caller, &parent_fd)?;
        let _as = self.creds.act_as(caller)?;
        sys::symlinkat(&sys::cstr(target)?, parent_fd.as_fd(), &name)?;
        self.lookup_component(&parent_fd, &name)
    }

    pub fn link(
        &self,
        id: NodeId,
        new_parent: NodeId,
        new_name: &OsStr,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let inode = self.inodes.get(id)?;
        let fd = self.path_fd(&inode)?;
        let parent_fd = self.path_fd_of(new_parent)?;
        self.check_as_seen(caller, id, &fd)?;
        self.check_as_seen(caller, new_parent, &parent_fd)?;
        let new_name = component(new_name)?;
        let _as = self.creds.act_as(caller)?;
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through /proc (where
        // the kernel applies protected_hardlinks to the caller, as natively).
        let linked = sys::linkat(
            Some(fd.as_fd()),
            c"",
            parent_fd.as_fd(),
            &new_name,
            libc::AT_EMPTY_PATH,
        );
        match linked {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
                sys::linkat(
                    None,
                    &sys::proc_fd_path(fd.as_fd()),
                    parent_fd.as_fd(),
                    &new_name,
                    libc::AT_SYMLINK_FOLLOW,
                )?;
            }
            other => other?,
        }
        self.add_lookup(inode)
    }

    /// Forgets the cached descriptor of the object at `name` in `dir` if `before` (its
    /// `statx` just before an unlink or a rename over it) was its last name: a cached
    /// descriptor must not keep a deleted file's blocks. An inode that holds its own
    /// descriptor keeps them until its FORGET; it is recorded as an orphan.
    fn last_name_gone(&self, before: Option<sys::StatMount>) {
        let Some(st) = before.filter(|st| st.st.st_nlink == 1) else {
            return;
        };
        self.fds.remove_object(ident(&st));
        let key = Key::Pinned {
            mnt: st.mnt_id,
            dev: st.st.st_dev,
            ino: st.st.st_ino,
        };
        if let Some(id) = self.inodes.known(key) {
            self.orphans.lock().insert(id);
        }
    }

    pub fn unlink(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        let parent_fd = self.path_fd_of(parent)?;
        let name = component(name)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        self.check_entry_as_seen(caller, parent, &parent_fd, &name, false)?;
        let _as = self.creds.act_as(caller)?;
        let before = sys::statx(parent_fd.as_fd(), &name, 0).ok();
        sys::unlinkat(parent_fd.as_fd(), &name, 0)?;
        self.last_name_gone(before);
        Ok(())
    }

    pub fn rmdir(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        let parent_fd = self.path_fd_of(parent)?;
        let name = component(name)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        self.check_entry_as_seen(caller, parent, &parent_fd, &name, false)?;
        let _as = self.creds.act_as(caller)?;
        sys::unlinkat(parent_fd.as_fd(), &name, libc::AT_REMOVEDIR)
    }

    /// `renameat2(2)` with the request's flags (NOREPLACE, EXCHANGE, WHITEOUT) unchanged.
    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: u32,
        caller: &Caller,
    ) -> io::Result<()> {
        let parent_fd = self.path_fd_of(parent)?;
        let new_parent_fd = self.path_fd_of(new_parent)?;
        let (name, new_name) = (component(name)?, component(new_name)?);
        self.check_as_seen(caller, parent, &parent_fd)?;
        self.check_as_seen(caller, new_parent, &new_parent_fd)?;
        // A directory moved to another parent is checked for write permission too.
        let moving = parent != new_parent;
        self.check_entry_as_seen(caller, parent, &parent_fd, &name, moving)?;
        let exchanging = moving && flags & libc::RENAME_EXCHANGE != 0;
        self.check_entry_as_seen(caller, new_parent, &new_parent_fd, &new_name, exchanging)?;
        let _as = self.creds.act_as(caller)?;
        let replaced = if flags & libc::RENAME_EXCHANGE == 0 {
            sys::statx(new_parent_fd.as_fd(), &new_name, 0)
                .ok()
                .filter(|st| st.st.st_mode & libc::S_IFMT != libc::S_IFDIR)
        } else {
            None
        };
        sys::renameat2(
            parent_fd.as_fd(),
            &name,
            new_parent_fd.as_fd(),
            &new_name,
            flags,
        )?;
        self.last_name_gone(replaced);
        Ok(())
    }

    /// Reopens the object of `fd` (an `O_PATH` descriptor) with real access through
    /// `/proc/self/fd`. The magic link leads to that very object (so no `O_NOFOLLOW`,
    /// which would open the link).
    ///
    /// `O_APPEND` is left out (see [`STRIPPED_OPEN_FLAGS`]) unless the file is
    /// append-only (`chattr +a`), which refuses any other open for writing.
    pub(crate) fn reopen(&self, fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
        let path = sys::proc_fd_path(fd.as_fd());
        let directory = flags & libc::O_DIRECTORY != 0;
        if !self.atime.keeps_backing_atime(directory) {
            return self.reopen_path(&path, flags);
        }
        match self.reopen_path(&path, flags | libc::O_NOATIME) {
            // O_NOATIME needs ownership or CAP_FOWNER: a caller who does not own the
            // file opens it (with the permission check that is theirs), and the daemon
            // then sets O_NOATIME on that open file, as a noatime mount does for anyone.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let fd = self.reopen_path(&path, flags)?;
                self.with_daemon_rights(|| sys::set_noatime(fd.as_fd()))?;
                Ok(fd)
            }
            other => other,
        }
    }

    fn reopen_path(&self, path: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
        match sys::openat(None, path, flags & !STRIPPED_OPEN_FLAGS, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && flags & libc::O_APPEND != 0 => {
                sys::openat(
                    None,
                    path,
                    (flags & !STRIPPED_OPEN_FLAGS) | libc::O_APPEND,
                    0,
                )
            }
            other => other,
        }
    }

    /// Opens `id` for the caller: the backing filesystem checks the caller's permission
    /// against the file as it is now, whatever the kernel's cached attributes say.
    /// `kill_suidgid`: the kernel asks that an `O_TRUNC` drop set-id bits.
    pub fn open(
        &self,
        id: NodeId,
        flags: i32,
        kill_suidgid: bool,
        caller: &Caller,
    ) -> io::Result<(u64, Arc<Handle>)> {
        let inode = self.inodes.get(id)?;
        if inode.kind == libc::S_IFLNK {
            return Err(errno(libc::ELOOP));
        }
        let path_fd = self.path_fd(&inode)?;
        self.check_as_seen(caller, id, &path_fd)?;
        let before = (flags & libc::O_TRUNC != 0)
            .then(|| sys::fstat(path_fd.as_fd()))
            .transpose()?;
        let fd = {
            let _as = self.creds.act_as(caller)?;
            self.reopen(&path_fd, flags)?
        };
        if before.is_some() && kill_suidgid && self.creds.role(caller) != Role::Caller {
            self.drop_set_id_bits(&path_fd)?;
        }
        // Truncation may have dropped set-id bits, which the kernel, having cached the
        // mode, would not know.
        if let Some(before) = before
            && sys::fstat(fd.as_fd())?.st_mode != before.st_mode
        {
            self.invalidate_attributes(inode.id);
        }
        self.insert_handle(inode, caller, fd)
    }

    fn insert_handle(
        &self,
        inode: Arc<Inode>,
        caller: &Caller,
        fd: OwnedFd,
    ) -> io::Result<(u64, Arc<Handle>)> {
        let account = self.creds.account_uid(caller);
        self.handles.insert(inode, *caller, account, fd)
    }

    pub fn opendir(&self, id: NodeId, caller: &Caller) -> io::Result<(u64, Arc<Handle>)> {
        let inode = self.inodes.get(id)?;
        let path_fd = self.path_fd(&inode)?;
        self.check_as_seen(caller, id, &path_fd)?;
        let fd = {
            let _as = self.creds.act_as(caller)?;
            self.reopen(&path_fd, libc::O_RDONLY | libc::O_DIRECTORY)?
        };
        self.insert_handle(inode, caller, fd)
    }

    /// Creates `name` as the caller and opens it. The backing create always uses
    /// `O_EXCL`, so the daemon never mistakes an object someone else put at `name` for
    /// one the caller created.
    ///
    /// When the name exists and the caller did not ask for `O_EXCL`, the kernel believed
    /// it absent (a cached negative entry, or a race with a process working on BACKING
    /// directly). A regular file the caller may open is opened, as `open(O_CREAT)`
    /// natively does. Otherwise ESTALE sends the kernel to look the name up again and
    /// open what it finds as natively (with its own permission check, following a
    /// symlink, refusing a directory), leaving no stale negative entry behind; when that
    /// retry meets the same refusal, the refusal is the answer.
    pub fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: &Caller,
    ) -> io::Result<(Entry, u64, Arc<Handle>)> {
        let parent_fd = self.path_fd_of(parent)?;
        self.check_as_seen(caller, parent, &parent_fd)?;
        let name = component(name)?;
        self.refuse_the_reserve_to_a_mapped_creator(caller, &parent_fd)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        let mut create_flags = (flags & !STRIPPED_OPEN_FLAGS) | libc::O_CREAT | libc::O_EXCL;
        // The creator owns the new file, so O_NOATIME is always allowed on it.
        if self.atime.noatime {
            create_flags |= libc::O_NOATIME;
        }
        let mut vanished = 0;
        let (fd, path_fd) = loop {
            match sys::openat(
                Some(parent_fd.as_fd()),
                &name,
                create_flags | libc::O_NOFOLLOW,
                mode,
            ) {
                // The O_PATH descriptor comes from the open file itself, so a concurrent
                // rename of `name` cannot make the inode differ from the handle.
                Ok(fd) => {
                    let path_fd =
                        sys::openat(None, &sys::proc_fd_path(fd.as_fd()), libc::O_PATH, 0)?;
                    break (fd, path_fd);
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    self.stats.count(&self.stats.create_found_existing, 1);
                    // Only a caller acting as itself opens what it did not create: a
                    // mapped creator's capabilities were checked for creating alone.
                    let existing = if self.creds.role(caller) == Role::Caller {
                        self.open_existing(&parent_fd, &name, flags)
                    } else {
                        Err(errno(libc::EACCES))
                    };
                    match existing {
                        Ok(opened) => break opened,
                        // Gone again: create it after all.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && vanished < 3 => {
                            vanished += 1
                        }
                        Err(e) if self.stale_creates.retried(parent, &name, caller.pid) => {
                            return Err(e);
                        }
                        Err(_) => return Err(errno(libc::ESTALE)),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let entry = self.remember_opened(path_fd)?;
        let (fh, handle) = match self.insert_handle(entry.inode.clone(), caller, fd) {
            Ok(opened) => opened,
            Err(e) => {
                // The kernel will never hear of this inode: give its lookup back.
                self.forget(entry.inode.id, 1);
                return Err(e);
            }
        };
        Ok((entry, fh, handle))
    }

    /// Opens the regular file at `name` with `flags`, with the thread's (the caller's)
    /// credentials; anything but a regular file is EEXIST. Returns the open and the
    /// `O_PATH` descriptors.
    fn open_existing(
        &self,
        parent_fd: &OwnedFd,
        name: &CString,
        flags: i32,
    ) -> io::Result<(OwnedFd, OwnedFd)> {
        let path_fd = sys::openat(
            Some(parent_fd.as_fd()),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )?;
        if sys::fstat(path_fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EEXIST));
        }
        let fd = self.reopen(&path_fd, flags)?;
        Ok((fd, path_fd))
    }

    /// Closes handle `fh` (its descriptor closes when the last request using it ends).
    pub fn release(&self, fh: u64) -> io::Result<()> {
        if let Some(handle) = self.handles.remove(fh) {
            self.drop_open_file_locks(&handle, fh);
            self.refresh_times_after_mapped_writes(&handle);
        }
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let handle = self.handles.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::pread(handle.fd(), &mut buf, offset)?;
        buf.truncate(n);
        self.stats.count(&self.stats.read_bytes, n as u64);
        Ok(buf)
    }

    /// Writes `data` as the writer: the backing filesystem charges the space to its
    /// reserve and quota and drops set-id bits as for its own write. A write-back of
    /// dirty pages (`writer` None) comes from a kernel thread with no credentials of the
    /// writer's: it is made as whoever opened the handle.
    ///
    /// `kill_suidgid`: the kernel asks that this write drop set-id bits (for the agent,
    /// which otherwise keeps them; a caller acting as itself drops them natively).
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        writer: Option<&Caller>,
        kill_suidgid: bool,
    ) -> io::Result<usize> {
        let handle = self.handles.get(fh)?;
        let writer = writer.unwrap_or(&handle.opener);
        let _as = self.creds.act_as_writer(writer, !kill_suidgid)?;
        let n = self.dropping_set_id_bits(&handle, writer, || {
            self.allocating(|| sys::pwrite(handle.fd(), data, offset))
        })?;
        self.stats.count(&self.stats.write_bytes, n as u64);
        Ok(n)
    }

    /// A close by the process `lock_owner`: its POSIX locks on the file go, and the
    /// backing file sees a close too (an NFS backing writes back and reports errors).
    pub fn flush(&self, fh: u64, lock_owner: u64) -> io::Result<()> {
        let handle = self.handles.get(fh)?;
        self.drop_posix_locks(&handle, lock_owner);
        self.refresh_times_after_mapped_writes(&handle);
        sys::flush_by_dup_close(handle.fd())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let handle = self.handles.get(fh)?;
        self.refresh_times_after_mapped_writes(&handle);
        sys::fsync(handle.fd(), datasync)
    }

    /// A write through a shared mapping of a passthrough file changes the backing file's
    /// mtime and ctime (and size), but the kernel keeps the attributes it cached for the
    /// FUSE inode: at close, msync/fsync and release of a file opened for writing, it is
    /// told they are stale. (A write(2) through passthrough updates them itself.)
    fn refresh_times_after_mapped_writes(&self, handle: &Handle) {
        if handle.writes_by_passthrough() {
            self.invalidate_attributes(handle.inode.id);
        }
    }

    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        caller: &Caller,
    ) -> io::Result<()> {
        let handle = self.handles.get(fh)?;
        let _as = self.creds.act_as_writer(caller, false)?;
        self.dropping_set_id_bits(&handle, caller, || {
            self.allocating(|| sys::fallocate(handle.fd(), mode, offset, len))
        })
    }

    /// Runs `write`, a change of the data of `handle`'s file that the agent (`-o idmap`)
    /// makes for `writer` without CAP_FSETID: the backing filesystem drops set-id bits
    /// then, which the kernel, having cached the mode, does not know (it asked the
    /// daemon to drop them itself with an empty SETATTR, which the agent cannot honour:
    /// anyone's `chown(f, -1, -1)` sends the same). It is told.
    fn dropping_set_id_bits<T>(
        &self,
        handle: &Handle,
        writer: &Caller,
        write: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let set_id = libc::S_ISUID | libc::S_ISGID;
        let had_set_id = self.creds.role(writer) != Role::Caller
            && sys::fstat(handle.fd()).is_ok_and(|st| st.st_mode & set_id != 0);
        let result = write();
        if had_set_id {
            self.invalidate_attributes(handle.inode.id);
        }
        result
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        sys::lseek(self.handles.get(fh)?.fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        caller: &Caller,
    ) -> io::Result<u64> {
        let src = self.handles.get(fh_in)?;
        let dst = self.handles.get(fh_out)?;
        let _as = self.creds.act_as_writer(caller, false)?;
        self.dropping_set_id_bits(&dst, caller, || {
            self.allocating(|| {
                copy::copy_range(&self.stats, src.fd(), offset_in, dst.fd(), offset_out, len)
            })
        })
    }

    /// Writes back the backing filesystem (`sync` in the mount).
    pub fn syncfs(&self) -> io::Result<()> {
        let _daemon = self.creds.as_daemon()?;
        // syncfs(2) refuses O_PATH descriptors.
        let dir = sys::openat(
            None,
            &sys::proc_fd_path(self.inodes.root_fd()),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        sys::syncfs(dir.as_fd())
    }

    pub fn statfs(&self, id: NodeId) -> io::Result<libc::statvfs> {
        sys::fstatvfs(self.path_fd_of(id)?.as_fd())
    }

    pub fn access(&self, id: NodeId, mask: i32, caller: &Caller) -> io::Result<()> {
        let fd = self.path_fd_of(id)?;
        let _as = self.creds.act_as(caller)?;
        sys::access_as_effective(fd.as_fd(), mask)
    }
}

/// CREATE requests answered with ESTALE (an existing name the caller may not open), so
/// that the kernel's retry of the same open is recognised and answered with the refusal.
#[derive(Default)]
struct StaleCreates(Mutex<HashMap<(NodeId, CString, u32), Instant>>);

impl StaleCreates {
    /// How long the kernel's retry may take to arrive.
    const WINDOW: Duration = Duration::from_secs(1);

    /// Whether `name` in `parent` was answered ESTALE for thread `pid` just before (the
    /// record is consumed); if not, records it.
    fn retried(&self, parent: NodeId, name: &CString, pid: u32) -> bool {
        let now = Instant::now();
        let mut recent = self.0.lock();
        if recent
            .remove(&(parent, name.clone(), pid))
            .is_some_and(|at| now.duration_since(at) < Self::WINDOW)
        {
            return true;
        }
        if recent.len() >= 1024 {
            recent.retain(|_, at| now.duration_since(*at) < Self::WINDOW);
        }
        recent.insert((parent, name.clone(), pid), now);
        false
    }
}

/// ext4, XFS, btrfs, tmpfs, f2fs: local filesystems where close(2) writes nothing back.
fn is_local_disk_fs(st: &libc::statfs) -> bool {
    const LOCAL: [libc::__fsword_t; 5] =
        [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010];
    LOCAL.contains(&st.f_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::STATS_XATTR;
    use crate::xattr::Xattr;
    use std::path::Path;

    const ME: &Caller = &Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    fn fs_over(dir: &Path) -> Fs {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let root = sys::openat(None, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let fs = Fs::new(
            root,
            FsOptions {
                fd_limit: 1 << 16,
                file_handles: true,
                forward_locks: true,
                atime: Atime::default(),
                idmap: false,
            },
        )
        .unwrap();
        assert!(
            fs.uses_file_handles(),
            "the tests run as root on a local disk"
        );
        fs
    }

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn err_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    fn names(fs: &Fs, dir: NodeId, plus: bool) -> Vec<String> {
        let (fh, _) = fs.opendir(dir, ME).unwrap();
        let mut out = Vec::new();
        fs.readdir(fh, 0, plus, &mut |e| {
            out.push(e.name.to_string_lossy().into_owned());
            true
        })
        .unwrap();
        fs.release(fh).unwrap();
        out.sort();
        out
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_over(dir.path());
        assert_eq!(
            err_of(fs.mkdir(ROOT_ID, os("a/b"), 0o755, 0, ME)),
            libc::EINVAL
        );
        assert_eq!(err_of(fs.unlink(ROOT_ID, os(".."), ME)), libc::EINVAL);
        assert_eq!(
            err_of(fs.rename(ROOT_ID, os(".."), ROOT_ID, os("x"), 0, ME)),
            libc::EINVAL
        );
        assert_eq!(err_of(fs.lookup(ROOT_ID, os("../etc"), ME)), libc::EINVAL);
    }

    #[test]
    fn dotdot_of_the_root_is_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_over(dir.path());
        assert_eq!(fs.lookup(ROOT_ID, os(".."), ME).unwrap().inode.id, ROOT_ID);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("escape")).unwrap();
        let fs = fs_over(dir.path());
        let link = fs.lookup(ROOT_ID, os("escape"), ME).unwrap();
        assert_eq!(link.st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(fs.readlink(link.inode.id).unwrap(), b"/etc");
        // A lookup below the link is a lookup in a non-directory.
        assert_eq!(
            err_of(fs.lookup(link.inode.id, os("passwd"), ME)),
            libc::ENOTDIR
        );
        assert_eq!(
            err_of(fs.open(link.inode.id, libc::O_RDONLY, false, ME)),
            libc::ELOOP
        );
        // An existing name that is not a regular file goes back to the kernel (ESTALE:
        // look it up again), which follows the link itself, inside the mount.
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("escape"), 0o644, 0, libc::O_WRONLY, ME)),
            libc::ESTALE
        );
    }

    #[test]
    fn create_write_read_and_errors_match_the_backing() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_over(dir.path());
        let (entry, fh, _) = fs
            .create(ROOT_ID, os("f"), 0o640, 0, libc::O_RDWR | libc::O_EXCL, ME)
            .unwrap();
        assert_eq!(entry.st.st_mode & 0o777, 0o640);
        assert_eq!(fs.write(fh, 0, b"hello", Some(ME), false).unwrap(), 5);
        assert_eq!(fs.read(fh, 1, 10).unwrap(), b"ello");
        fs.release(fh).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("f"), 0o640, 0, libc::O_RDWR | libc::O_EXCL, ME)),
            libc::EEXIST
        );
        assert_eq!(err_of(fs.lookup(ROOT_ID, os("missing"), ME)), libc::ENOENT);
        assert_eq!(err_of(fs.rmdir(ROOT_ID, os("f"), ME)), libc::ENOTDIR);
        fs.mkdir(ROOT_ID, os("d"), 0o755, 0, ME).unwrap();
        assert_eq!(err_of(fs.unlink(ROOT_ID, os("d"), ME)), libc::EISDIR);
        assert_eq!(
            err_of(fs.mkdir(ROOT_ID, os("d"), 0o755, 0, ME)),
            libc::EEXIST
        );
        std::fs::write(dir.path().join("d/x"), b"").unwrap();
        assert_eq!(err_of(fs.rmdir(ROOT_ID, os("d"), ME)), libc::ENOTEMPTY);
    }

    #[test]
    fn create_of_an_existing_name_opens_it_or_asks_for_a_fresh_lookup() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"theirs").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(4321), Some(4321)).unwrap();
        let fs = fs_over(dir.path());
        let nobody = &Caller {
            uid: 65534,
            gid: 65534,
            pid: 7,
        };
        // Not the caller's to open: the kernel is sent to look again, and its retry
        // gets the refusal itself.
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("f"), 0o666, 0, libc::O_RDWR, nobody)),
            libc::ESTALE
        );
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("f"), 0o666, 0, libc::O_RDWR, nobody)),
            libc::EACCES
        );
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("f"), 0o666, 0, libc::O_RDWR | libc::O_EXCL, ME)),
            libc::EEXIST
        );
        // One the caller may open is opened, and nothing else about it changes.
        let (entry, fh, _) = fs
            .create(ROOT_ID, os("f"), 0o666, 0, libc::O_RDONLY, ME)
            .unwrap();
        assert_eq!(fs.read(fh, 0, 100).unwrap(), b"theirs");
        let st = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (st.uid(), st.gid(), st.mode() & 0o7777),
            (4321, 4321, 0o600)
        );
        assert_eq!(entry.st.st_ino, st.ino());
        // A symlink is left for the kernel to follow.
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        assert_eq!(
            err_of(fs.create(ROOT_ID, os("l"), 0o666, 0, libc::O_RDONLY, ME)),
            libc::ESTALE
        );
    }

    #[test]
    fn an_inode_follows_its_file_across_a_rename_made_in_the_backing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), b"content").unwrap();
        let fs = fs_over(dir.path());
        let id = fs.lookup(ROOT_ID, os("old"), ME).unwrap().inode.id;
        std::fs::rename(dir.path().join("old"), dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("old"), b"impostor").unwrap();
        let (fh, _) = fs.open(id, libc::O_RDONLY, false, ME).unwrap();
        assert_eq!(fs.read(fh, 0, 100).unwrap(), b"content");
    }

    #[test]
    fn readdir_and_readdirplus_list_every_entry_and_count_lookups() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..500 {
            std::fs::write(
                dir.path().join(format!("file-with-a-long-name-{i:04}")),
                b"",
            )
            .unwrap();
        }
        let fs = fs_over(dir.path());
        let plain = names(&fs, ROOT_ID, false);
        assert_eq!(plain.len(), 502);
        assert_eq!(names(&fs, ROOT_ID, true), plain);
        // readdirplus counted one lookup for each of the 500 files.
        assert_eq!(fs.snapshot().inodes, 501);
    }

    #[test]
    fn readdir_resumes_at_the_offset_of_the_last_accepted_entry() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let fs = fs_over(dir.path());
        let (fh, _) = fs.opendir(ROOT_ID, ME).unwrap();
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let mut batch = 0;
            fs.readdir(fh, offset, true, &mut |e| {
                if batch == 7 {
                    return false;
                }
                batch += 1;
                offset = e.next_offset;
                seen.push(e.name.to_string_lossy().into_owned());
                true
            })
            .unwrap();
            if batch == 0 {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 52);
        // Refused entries returned their lookups: only the 50 accepted files remain.
        assert_eq!(fs.snapshot().inodes, 51);
    }

    #[test]
    fn setattr_truncates_chmods_and_sets_times() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
        let fs = fs_over(dir.path());
        let id = fs.lookup(ROOT_ID, os("f"), ME).unwrap().inode.id;

        let st = fs
            .setattr(
                id,
                None,
                SetAttr {
                    mode: Some(0o600),
                    size: Some(3),
                    mtime: Some(SetTime::At {
                        sec: 1_000_000_000,
                        nsec: 5,
                    }),
                    ..Default::default()
                },
                ME,
            )
            .unwrap();
        let st = st.st;
        assert_eq!(st.st_size, 3);
        assert_eq!(st.st_mode & 0o7777, 0o600);
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_000_000_000, 5));
    }

    #[test]
    fn the_stats_attribute_is_read_only_and_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_over(dir.path());
        let Xattr::Data(text) = fs.getxattr(ROOT_ID, os(STATS_XATTR), 4096, ME).unwrap() else {
            panic!("expected data");
        };
        assert!(
            String::from_utf8(text)
                .unwrap()
                .contains("copy_file_range.calls 0")
        );
        assert_eq!(
            err_of(fs.setxattr(ROOT_ID, os(STATS_XATTR), b"1", 0, false, ME)),
            libc::EPERM
        );
        if let Ok(Xattr::Data(list)) = fs.listxattr(ROOT_ID, 4096, ME) {
            assert!(
                !list
                    .windows(STATS_XATTR.len())
                    .any(|w| w == STATS_XATTR.as_bytes())
            );
        }
    }
}
