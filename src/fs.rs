//! The passthrough operations, as plain methods that return `io::Result`.
//!
//! Every name is resolved relative to its parent's `O_PATH` descriptor with `O_NOFOLLOW`,
//! and names that are not a single path component are refused, so nothing done through
//! the mount reaches outside BACKING and no symlink is ever followed by the daemon.
//! Errors carry the backing call's errno unchanged.

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
use crate::creds::Credentials;
use crate::handle::{Handle, HandleTable};
use crate::inode::{Inode, InodeTable, NodeId, ROOT_ID};
use crate::stats::{STATS_XATTR, Snapshot, Stats};
use crate::sys;

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
}

/// An extended attribute value, or only its size when the caller asked for that.
#[derive(Debug, PartialEq, Eq)]
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// One directory entry as readdir reports it.
pub struct DirEntry<'a> {
    /// The backing `d_ino` (what a native readdir reports).
    pub ino: u64,
    /// The cookie that continues the listing after this entry.
    pub next_offset: u64,
    /// `S_IFMT` bits of the entry.
    pub kind: libc::mode_t,
    pub name: &'a OsStr,
    /// For readdirplus: the looked-up inode (one lookup counted), except for `.` and `..`.
    pub entry: Option<Entry>,
}

/// Flags a backing descriptor is never opened with: creation is done by `create`,
/// `O_APPEND` is applied by the kernel (and `copy_file_range(2)` refuses it), `O_DIRECT`
/// would need aligned daemon buffers, and `O_NOFOLLOW` was already applied by the kernel
/// (on a `/proc/self/fd` path it would open the magic link itself and fail with ELOOP).
const STRIPPED_OPEN_FLAGS: libc::c_int = libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_NOFOLLOW;

pub struct Fs {
    /// The backing root's device, if it is a local disk or memory filesystem (on which a
    /// close needs no flush request: nothing is written back or reported at close).
    local_root_dev: Option<u64>,
    inodes: InodeTable,
    handles: HandleTable,
    pub stats: Stats,
    /// Who the daemon is, and how it acts as a caller.
    creds: Credentials,
    /// CREATEs answered with ESTALE, which the kernel retries once.
    stale_creates: StaleCreates,
    /// Inodes unlinked through the mount whose last name is gone but whose FORGET has not
    /// arrived yet: our `O_PATH` descriptor still pins their blocks.
    orphans: Mutex<HashSet<NodeId>>,
    orphans_released: Condvar,
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

/// How long an allocation that failed with ENOSPC waits for orphans to be released.
const ORPHAN_WAIT: Duration = Duration::from_millis(200);

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A name from a request as a C string: exactly one path component.
fn component(name: &OsStr) -> io::Result<CString> {
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

impl Fs {
    /// A filesystem over the directory `root` (an `O_PATH` descriptor of it) that keeps
    /// at most about `max_inodes` inodes (descriptors) before asking the kernel to forget.
    pub fn new(root: OwnedFd, max_inodes: usize) -> io::Result<Self> {
        let root_st = sys::fstat(root.as_fd())?;
        let local_root_dev =
            is_local_disk_fs(&sys::fstatfs(root.as_fd())?).then_some(root_st.st_dev);
        Ok(Fs {
            local_root_dev,
            inodes: InodeTable::new(root, max_inodes)?,
            handles: HandleTable::default(),
            stats: Stats::default(),
            creds: Credentials::of_daemon()?,
            stale_creates: StaleCreates::default(),
            orphans: Mutex::new(HashSet::new()),
            orphans_released: Condvar::new(),
        })
    }

    /// Whether a close of `inode` may skip the FLUSH request. Network filesystems write
    /// back and report errors at close, so only files on the backing root's own local
    /// filesystem qualify.
    pub fn close_needs_no_flush(&self, inode: &Inode) -> bool {
        self.local_root_dev == Some(inode.key.dev)
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

    pub fn inode(&self, id: NodeId) -> io::Result<Arc<Inode>> {
        self.inodes.get(id)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            inodes: self.inodes.count() as u64,
            open_handles: self.handles.count() as u64,
            credential_switches: self.creds.switches(),
            ..self.stats.snapshot()
        }
    }

    /// Opens `name` in `parent` as `O_PATH` without following it, and counts a lookup.
    /// (Run as the caller, the open needs the caller's search permission on `parent`.)
    fn lookup_component(&self, parent: &Inode, name: &CString) -> io::Result<Entry> {
        let fd = sys::openat(Some(parent.fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.remember(fd, Some((parent.id, OsStr::from_bytes(name.as_bytes()))))
    }

    /// [`Self::lookup_component`] for a directory entry with inode number `d_ino`: one the
    /// table already holds (listing a directory whose files were looked up or created
    /// through the mount) costs a single `fstatat`, and no new descriptor.
    fn lookup_listed(&self, dir: &Inode, name: &CString, d_ino: u64) -> io::Result<Entry> {
        if self.inodes.probably_holds(d_ino) {
            let st = sys::fstatat(dir.fd(), name, libc::AT_SYMLINK_NOFOLLOW)?;
            let found_as = Some((dir.id, OsStr::from_bytes(name.as_bytes())));
            if let Some(inode) = self.inodes.remember_held(&st, found_as) {
                return Ok(Entry { inode, st });
            }
        }
        self.lookup_component(dir, name)
    }

    fn remember(&self, fd: OwnedFd, found_as: Option<(NodeId, &OsStr)>) -> io::Result<Entry> {
        let st = sys::fstat(fd.as_fd())?;
        let inode = self.inodes.remember(fd, &st, found_as);
        Ok(Entry { inode, st })
    }

    /// Blocks until the inode table needs relief; see [`InodeTable`].
    pub fn wait_for_eviction_candidates(&self) -> Vec<crate::inode::EvictionHint> {
        self.inodes.wait_for_eviction_candidates()
    }

    pub fn lookup(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<Entry> {
        let parent = self.inodes.get(parent)?;
        let _as = self.creds.act_as(caller)?;
        match name.as_bytes() {
            b"." => self.add_lookup(parent),
            // The root's parent is outside BACKING: the mount root is its own parent.
            b".." if parent.id == ROOT_ID => self.add_lookup(parent),
            b".." => {
                let fd = sys::openat(Some(parent.fd()), c"..", libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                // No eviction hint: ".." is not a name the directory's parent knows.
                self.remember(fd, None)
            }
            _ => self.lookup_component(&parent, &component(name)?),
        }
    }

    fn add_lookup(&self, inode: Arc<Inode>) -> io::Result<Entry> {
        let st = sys::fstat(inode.fd())?;
        self.inodes.add_lookup(&inode);
        Ok(Entry { inode, st })
    }

    pub fn forget(&self, id: NodeId, count: u64) {
        if self.inodes.forget(id, count) && self.orphans.lock().remove(&id) {
            self.orphans_released.notify_all();
        }
    }

    /// Runs an operation that allocates space; on ENOSPC, when files deleted through the
    /// mount still await their FORGET (the kernel sends it just after the unlink reply),
    /// waits briefly for their space and tries once more. Natively, unlink frees at once.
    fn allocating<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let mut orphans = self.orphans.lock();
                if orphans.is_empty() {
                    return Err(e);
                }
                let deadline = std::time::Instant::now() + ORPHAN_WAIT;
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

    pub fn getattr(&self, id: NodeId) -> io::Result<libc::stat> {
        sys::fstat(self.inodes.get(id)?.fd())
    }

    pub fn setattr(
        &self,
        id: NodeId,
        fh: Option<u64>,
        change: SetAttr,
        caller: &Caller,
    ) -> io::Result<libc::stat> {
        let inode = self.inodes.get(id)?;
        let handle = fh.map(|fh| self.handles.get(fh)).transpose()?;
        if change.kill_privileges {
            self.kill_privileges(&inode, caller)?;
        }
        // As the caller, the backing filesystem applies its own rules: only the owner
        // may chmod or set times, chgrp only to the owner's groups, set-gid is dropped by
        // a chmod from outside the group, truncation needs write access and drops set-id
        // bits for the unprivileged.
        let _as = self.creds.act_as(caller)?;
        if let Some(mode) = change.mode {
            sys::chmod(&sys::proc_fd_path(inode.fd()), mode & 0o7777)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            sys::fchown_fd(
                inode.fd(),
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(size) = change.size {
            match &handle {
                Some(h) => sys::ftruncate(h.fd(), size)?,
                None => sys::truncate(&sys::proc_fd_path(inode.fd()), size)?,
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::futimens_fd(
                inode.fd(),
                &[timespec(change.atime), timespec(change.mtime)],
            )?;
        }
        sys::fstat(inode.fd())
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
    fn kill_privileges(&self, inode: &Inode, caller: &Caller) -> io::Result<()> {
        let as_caller = {
            let _as = self.creds.act_as(caller)?;
            match sys::fchown_fd(inode.fd(), u32::MAX, u32::MAX) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    Some(sys::access_as_effective(inode.fd(), libc::W_OK).map_err(|_| e))
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
        // (setattr_should_drop_suidgid): set-uid always, set-gid with group execute or
        // when the writer is outside the file's group.
        let in_group = |gid| self.creds.in_group(caller, gid);
        let _daemon = self.creds.as_daemon()?;
        let st = sys::fstat(inode.fd())?;
        let mut mode = st.st_mode & 0o7777;
        mode &= !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 || !in_group(st.st_gid) {
            mode &= !libc::S_ISGID;
        }
        if inode.kind == libc::S_IFREG && mode != st.st_mode & 0o7777 {
            sys::chmod(&sys::proc_fd_path(inode.fd()), mode)?;
        }
        match sys::removexattr(&sys::proc_fd_path(inode.fd()), c"security.capability") {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e),
            _ => Ok(()),
        }
    }

    pub fn readlink(&self, id: NodeId) -> io::Result<Vec<u8>> {
        sys::readlink_fd(self.inodes.get(id)?.fd())
    }

    /// Counts a lookup of the `name` just created in `parent` (by the caller, who owns it).
    fn created(&self, parent: &Inode, name: &CString) -> io::Result<Entry> {
        self.lookup_component(parent, name)
    }

    pub fn mkdir(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        sys::mkdirat(parent.fd(), &name, mode)?;
        self.created(&parent, &name)
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
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        sys::mknodat(parent.fd(), &name, mode, libc::dev_t::from(rdev))?;
        self.created(&parent, &name)
    }

    pub fn symlink(
        &self,
        parent: NodeId,
        name: &OsStr,
        target: &OsStr,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        let _as = self.creds.act_as(caller)?;
        sys::symlinkat(&sys::cstr(target)?, parent.fd(), &name)?;
        self.created(&parent, &name)
    }

    pub fn link(
        &self,
        id: NodeId,
        new_parent: NodeId,
        new_name: &OsStr,
        caller: &Caller,
    ) -> io::Result<Entry> {
        let inode = self.inodes.get(id)?;
        let new_parent = self.inodes.get(new_parent)?;
        let new_name = component(new_name)?;
        let _as = self.creds.act_as(caller)?;
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through /proc (where
        // the kernel applies protected_hardlinks to the caller, as natively).
        let linked = sys::linkat(
            Some(inode.fd()),
            c"",
            new_parent.fd(),
            &new_name,
            libc::AT_EMPTY_PATH,
        );
        match linked {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
                sys::linkat(
                    None,
                    &sys::proc_fd_path(inode.fd()),
                    new_parent.fd(),
                    &new_name,
                    libc::AT_SYMLINK_FOLLOW,
                )?;
            }
            other => other?,
        }
        self.add_lookup(inode)
    }

    pub fn unlink(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        let _as = self.creds.act_as(caller)?;
        let doomed = sys::fstatat(parent.fd(), &name, libc::AT_SYMLINK_NOFOLLOW).ok();
        sys::unlinkat(parent.fd(), &name, 0)?;
        if let Some(st) = doomed.filter(|st| st.st_nlink == 1)
            && let Some(id) = self.inodes.known_id(&st)
        {
            self.orphans.lock().insert(id);
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        let parent = self.inodes.get(parent)?;
        let _as = self.creds.act_as(caller)?;
        sys::unlinkat(parent.fd(), &component(name)?, libc::AT_REMOVEDIR)
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
        let parent = self.inodes.get(parent)?;
        let new_parent = self.inodes.get(new_parent)?;
        let _as = self.creds.act_as(caller)?;
        sys::renameat2(
            parent.fd(),
            &component(name)?,
            new_parent.fd(),
            &component(new_name)?,
            flags,
        )
    }

    /// Reopens the object of `inode` with real access through `/proc/self/fd`. The magic
    /// link leads to that very object (so no `O_NOFOLLOW`, which would open the link).
    fn reopen(&self, inode: &Inode, flags: libc::c_int) -> io::Result<OwnedFd> {
        sys::openat(
            None,
            &sys::proc_fd_path(inode.fd()),
            flags & !STRIPPED_OPEN_FLAGS,
            0,
        )
    }

    /// Opens `id` for the caller: the backing filesystem checks the caller's permission
    /// against the file as it is now, whatever the kernel's cached attributes say.
    pub fn open(&self, id: NodeId, flags: i32, caller: &Caller) -> io::Result<(u64, Arc<Handle>)> {
        let inode = self.inodes.get(id)?;
        if inode.kind == libc::S_IFLNK {
            return Err(errno(libc::ELOOP));
        }
        let fd = {
            let _as = self.creds.act_as(caller)?;
            self.reopen(&inode, flags)?
        };
        Ok(self.handles.insert(Handle::new(inode, fd)))
    }

    pub fn opendir(&self, id: NodeId, caller: &Caller) -> io::Result<(u64, Arc<Handle>)> {
        let inode = self.inodes.get(id)?;
        let fd = {
            let _as = self.creds.act_as(caller)?;
            self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY)?
        };
        Ok(self.handles.insert(Handle::new(inode, fd)))
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
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        let _as = self.creds.act_as_creator(caller, umask)?;
        let create_flags = (flags & !STRIPPED_OPEN_FLAGS) | libc::O_CREAT | libc::O_EXCL;
        let mut vanished = 0;
        let (fd, path_fd) = loop {
            match sys::openat(
                Some(parent.fd()),
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
                    match self.open_existing(&parent, &name, flags) {
                        Ok(opened) => break opened,
                        // Gone again: create it after all.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && vanished < 3 => {
                            vanished += 1
                        }
                        Err(e) if self.stale_creates.retried(parent.id, &name, caller.pid) => {
                            return Err(e);
                        }
                        Err(_) => return Err(errno(libc::ESTALE)),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let found_as = (parent.id, OsStr::from_bytes(name.as_bytes()));
        let entry = self.remember(path_fd, Some(found_as))?;
        let (fh, handle) = self.handles.insert(Handle::new(entry.inode.clone(), fd));
        Ok((entry, fh, handle))
    }

    /// Opens the regular file at `name` with `flags`, with the thread's (the caller's)
    /// credentials; anything but a regular file is EEXIST. Returns the open and the
    /// `O_PATH` descriptors.
    fn open_existing(
        &self,
        parent: &Inode,
        name: &CString,
        flags: i32,
    ) -> io::Result<(OwnedFd, OwnedFd)> {
        let path_fd = sys::openat(Some(parent.fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        if sys::fstat(path_fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EEXIST));
        }
        let fd = sys::openat(
            None,
            &sys::proc_fd_path(path_fd.as_fd()),
            flags & !STRIPPED_OPEN_FLAGS,
            0,
        )?;
        Ok((fd, path_fd))
    }

    /// Closes handle `fh`. The last handle of an inode may hold its kernel passthrough
    /// backing id, whose unregistration needs the daemon's CAP_SYS_ADMIN.
    pub fn release(&self, fh: u64) -> io::Result<()> {
        let _daemon = self.creds.as_daemon()?;
        drop(self.handles.remove(fh));
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

    /// Writes `data` as the caller: the backing filesystem charges the space to the
    /// caller's reserve and quota and drops set-id bits as for the caller's own write.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], caller: &Caller) -> io::Result<usize> {
        let handle = self.handles.get(fh)?;
        let _as = self.creds.act_as(caller)?;
        let n = self.allocating(|| sys::pwrite(handle.fd(), data, offset))?;
        self.stats.count(&self.stats.write_bytes, n as u64);
        Ok(n)
    }

    pub fn flush(&self, fh: u64) -> io::Result<()> {
        sys::flush_by_dup_close(self.handles.get(fh)?.fd())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        sys::fsync(self.handles.get(fh)?.fd(), datasync)
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
        let _as = self.creds.act_as(caller)?;
        self.allocating(|| sys::fallocate(handle.fd(), mode, offset, len))
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
        let _as = self.creds.act_as(caller)?;
        self.allocating(|| {
            copy::copy_range(&self.stats, src.fd(), offset_in, dst.fd(), offset_out, len)
        })
    }

    /// Lists the directory of handle `fh` from `offset` (0, or a `next_offset` returned
    /// before). `sink` takes entries until it returns `false` (reply buffer full); an entry
    /// it refuses is not consumed, and with `plus` its counted lookup is returned.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> io::Result<()> {
        let handle = self.handles.get(fh)?;
        let dir = handle.inode.clone();
        // The caller opened the directory (with its read permission); the entries'
        // attributes are looked up with the daemon's rights, so that a caller who may read
        // but not search the directory still gets its names, as natively. The kernel
        // checks search permission before it lets anyone use one.
        let _daemon = self.creds.as_daemon()?;
        let _position = handle.lock_dir_position();
        sys::lseek(handle.fd(), offset as i64, libc::SEEK_SET)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let len = sys::getdents64(handle.fd(), &mut buf)?;
            if len == 0 {
                return Ok(());
            }
            for raw in RawDirents::new(&buf[..len]) {
                let name = OsStr::from_bytes(raw.name);
                let dot = raw.name == b"." || raw.name == b"..";
                // `.` and `..` that name the backing root are the mount root, node 1, as
                // `stat` says (the root's own `..` leads outside: the root is its parent).
                let names_root = dir.key.dev == self.inodes.root_key().dev
                    && (raw.d_ino == self.inodes.root_key().ino || (dir.id == ROOT_ID && dot));
                let d_ino = if dot && names_root {
                    ROOT_ID
                } else {
                    raw.d_ino
                };
                let mut kind = dtype_to_mode(raw.d_type);
                let entry = if plus && !dot {
                    match self.lookup_listed(&dir, &sys::cstr(name)?, raw.d_ino) {
                        Ok(e) => Some(e),
                        // Gone since getdents: skip it, as a later readdir would.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                if kind == 0 {
                    kind = match &entry {
                        Some(e) => e.st.st_mode & libc::S_IFMT,
                        None => {
                            sys::fstatat(handle.fd(), &sys::cstr(name)?, libc::AT_SYMLINK_NOFOLLOW)
                                .map_or(libc::S_IFREG, |st| st.st_mode & libc::S_IFMT)
                        }
                    };
                }
                let counted = entry.as_ref().map(|e| e.inode.id);
                let accepted = sink(DirEntry {
                    ino: d_ino,
                    next_offset: raw.d_off,
                    kind,
                    name,
                    entry,
                });
                if !accepted {
                    if let Some(id) = counted {
                        self.inodes.forget(id, 1);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Writes back the backing filesystem (`sync` in the mount).
    pub fn syncfs(&self) -> io::Result<()> {
        let root = self.inodes.get(ROOT_ID)?;
        let _daemon = self.creds.as_daemon()?;
        // syncfs(2) refuses O_PATH descriptors.
        let dir = self.reopen(&root, libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::syncfs(dir.as_fd())
    }

    pub fn statfs(&self, id: NodeId) -> io::Result<libc::statvfs> {
        sys::fstatvfs(self.inodes.get(id)?.fd())
    }

    pub fn access(&self, id: NodeId, mask: i32, caller: &Caller) -> io::Result<()> {
        let inode = self.inodes.get(id)?;
        let _as = self.creds.act_as(caller)?;
        sys::access_as_effective(inode.fd(), mask)
    }

    fn is_stats_xattr(id: NodeId, name: &OsStr) -> bool {
        id == ROOT_ID && name.as_bytes() == STATS_XATTR.as_bytes()
    }

    /// Extended attributes are read, listed and changed as the caller: the backing
    /// filesystem decides who sees `trusted.*` and who may set `user.*` or ACLs (and a
    /// new access ACL drops set-gid for a caller outside the group, as natively).
    pub fn getxattr(
        &self,
        id: NodeId,
        name: &OsStr,
        size: u32,
        caller: &Caller,
    ) -> io::Result<Xattr> {
        if Self::is_stats_xattr(id, name) {
            return sized(self.snapshot().render().into_bytes(), size);
        }
        let inode = self.inodes.get(id)?;
        let _as = self.creds.act_as(caller)?;
        let path = sys::proc_fd_path(inode.fd());
        let name = sys::cstr(name)?;
        if size == 0 {
            return Ok(Xattr::Size(sys::getxattr(&path, &name, &mut [])? as u32));
        }
        let mut buf = vec![0u8; size as usize];
        let n = sys::getxattr(&path, &name, &mut buf)?;
        buf.truncate(n);
        Ok(Xattr::Data(buf))
    }

    pub fn listxattr(&self, id: NodeId, size: u32, caller: &Caller) -> io::Result<Xattr> {
        let inode = self.inodes.get(id)?;
        let _as = self.creds.act_as(caller)?;
        let path = sys::proc_fd_path(inode.fd());
        if size == 0 {
            return Ok(Xattr::Size(sys::listxattr(&path, &mut [])? as u32));
        }
        let mut buf = vec![0u8; size as usize];
        let n = sys::listxattr(&path, &mut buf)?;
        buf.truncate(n);
        Ok(Xattr::Data(buf))
    }

    pub fn setxattr(
        &self,
        id: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: &Caller,
    ) -> io::Result<()> {
        if Self::is_stats_xattr(id, name) {
            return Err(errno(libc::EPERM));
        }
        let inode = self.inodes.get(id)?;
        let _as = self.creds.act_as(caller)?;
        sys::setxattr(
            &sys::proc_fd_path(inode.fd()),
            &sys::cstr(name)?,
            value,
            flags,
        )
    }

    pub fn removexattr(&self, id: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        if Self::is_stats_xattr(id, name) {
            return Err(errno(libc::EPERM));
        }
        let inode = self.inodes.get(id)?;
        let _as = self.creds.act_as(caller)?;
        sys::removexattr(&sys::proc_fd_path(inode.fd()), &sys::cstr(name)?)
    }
}

/// A value for a getxattr-style reply: the size when `size` is 0, `ERANGE` when too small.
fn sized(data: Vec<u8>, size: u32) -> io::Result<Xattr> {
    if size == 0 {
        Ok(Xattr::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(errno(libc::ERANGE))
    } else {
        Ok(Xattr::Data(data))
    }
}

/// ext4, XFS, btrfs, tmpfs, f2fs: local filesystems where close(2) writes nothing back.
fn is_local_disk_fs(st: &libc::statfs) -> bool {
    const LOCAL: [libc::__fsword_t; 5] =
        [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010];
    LOCAL.contains(&st.f_type)
}

fn dtype_to_mode(d_type: u8) -> libc::mode_t {
    match d_type {
        libc::DT_REG => libc::S_IFREG,
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => 0,
    }
}

/// One `linux_dirent64` record.
struct RawDirent<'a> {
    d_ino: u64,
    d_off: u64,
    d_type: u8,
    name: &'a [u8],
}

/// Iterates the records `getdents64(2)` wrote into a buffer.
struct RawDirents<'a> {
    buf: &'a [u8],
}

impl<'a> RawDirents<'a> {
    fn new(buf: &'a [u8]) -> Self {
        RawDirents { buf }
    }
}

impl<'a> Iterator for RawDirents<'a> {
    type Item = RawDirent<'a>;

    fn next(&mut self) -> Option<RawDirent<'a>> {
        // Layout: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, NUL-terminated name.
        const NAME_AT: usize = 19;
        if self.buf.len() < NAME_AT {
            return None;
        }
        let d_ino = u64::from_ne_bytes(self.buf[0..8].try_into().ok()?);
        let d_off = u64::from_ne_bytes(self.buf[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(self.buf[16..18].try_into().ok()?) as usize;
        if reclen < NAME_AT || reclen > self.buf.len() {
            return None;
        }
        let d_type = self.buf[18];
        let name_field = &self.buf[NAME_AT..reclen];
        let name_len = name_field.iter().position(|&b| b == 0)?;
        let record = RawDirent {
            d_ino,
            d_off,
            d_type,
            name: &name_field[..name_len],
        };
        self.buf = &self.buf[reclen..];
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ME: &Caller = &Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    fn fs_over(dir: &Path) -> Fs {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let root = sys::openat(None, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        Fs::new(root, 1 << 20).unwrap()
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
            err_of(fs.open(link.inode.id, libc::O_RDONLY, ME)),
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
        assert_eq!(fs.write(fh, 0, b"hello", ME).unwrap(), 5);
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
        let (fh, _) = fs.open(id, libc::O_RDONLY, ME).unwrap();
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
            err_of(fs.setxattr(ROOT_ID, os(STATS_XATTR), b"1", 0, ME)),
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

    #[test]
    fn dirent_parser_reads_records() {
        let mut buf = Vec::new();
        for (ino, name) in [(7u64, "a"), (9, "longer-name")] {
            let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
            buf.extend_from_slice(&ino.to_ne_bytes());
            buf.extend_from_slice(&(ino * 10).to_ne_bytes());
            buf.extend_from_slice(&(reclen as u16).to_ne_bytes());
            buf.push(libc::DT_REG);
            buf.extend_from_slice(name.as_bytes());
            buf.resize(buf.len() + reclen - 19 - name.len(), 0);
        }
        let got: Vec<_> = RawDirents::new(&buf)
            .map(|d| {
                (
                    d.d_ino,
                    d.d_off,
                    String::from_utf8_lossy(d.name).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(7, 70, "a".into()), (9, 90, "longer-name".into())]
        );
    }
}
