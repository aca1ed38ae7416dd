//! The FUSE adapter: decode a request, call the plain method in [`crate::fs`], reply.
//!
//! Nothing here decides filesystem behaviour, except what only the kernel protocol knows:
//! cache lifetimes, open flags for the kernel, and kernel passthrough registration.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::config::Cache;
use crate::fs::{Caller, Entry, Fs, SetAttr, SetTime, Xattr};
use crate::handle::Handle;
use crate::stats::Op;

/// The most a request may carry: `/proc/sys/fs/fuse/max_pages_limit` (256 pages).
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseFs {
    pub fs: Arc<Fs>,
    cache: Cache,
    /// Whether opens register the backing file for kernel passthrough. Cleared when the
    /// kernel refuses (e.g. without CAP_SYS_ADMIN), so later opens stop trying.
    passthrough: Arc<AtomicBool>,
}

fn errno(err: io::Error) -> Errno {
    // The daemon never tells the kernel ENOSYS for an operation it implements: for
    // copy_file_range that would disable the operation for the whole mount.
    match err.raw_os_error() {
        Some(libc::ENOSYS) => Errno::EOPNOTSUPP,
        _ => Errno::from(err),
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Attributes of node `id` as the kernel wants them; `st_ino` becomes the node id.
pub fn attr(id: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// The request's timestamp. fuser 0.18 decodes a time before the epoch, `(sec, nsec)`
/// with `sec < 0` and `nsec` to add, as `UNIX_EPOCH - (|sec| + nsec)`; undo that.
fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(before) => SetTime::At {
                sec: -(before.duration().as_secs() as i64),
                nsec: before.duration().subsec_nanos(),
            },
        },
    })
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, cache: Cache, passthrough: Arc<AtomicBool>) -> Self {
        FuseFs {
            fs,
            cache,
            passthrough,
        }
    }

    fn reply_entry(&self, result: io::Result<Entry>, reply: ReplyEntry) {
        match result {
            Ok(e) => reply.entry(&self.cache.ttl(), &attr(e.inode.id, &e.st), Generation(0)),
            Err(err) => reply.error(errno(err)),
        }
    }

    /// Open flags for the kernel: whether it may skip FLUSH at close, and (when the
    /// daemon serves the I/O itself) whether it keeps the page cache of earlier opens.
    /// KEEP_CACHE is never combined with passthrough (the open then fails with EIO).
    fn open_flags(&self, handle: &Handle, passthrough: Option<&Passthrough>) -> FopenFlags {
        let mut flags = FopenFlags::empty();
        if self.fs.close_needs_no_flush(&handle.inode) {
            flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        match passthrough {
            None if self.cache.keep_page_cache() => flags |= FopenFlags::FOPEN_KEEP_CACHE,
            Some(p) if p.reads_and_writes_in_daemon => flags |= FopenFlags::FOPEN_DIRECT_IO,
            _ => {}
        }
        flags
    }

    /// How an open of `handle` by `caller` with `open_flags` uses kernel passthrough,
    /// registering the inode's backing file with `register` if this is its first
    /// passthrough open.
    ///
    /// The backing file is registered as the caller: the kernel keeps the registering
    /// thread's credentials for every write through it, so the caller's writes meet the
    /// backing filesystem's root reserve, quota and set-id rules as natively. The kernel
    /// allows one backing file per inode; an open for writing by another identity while
    /// it lives keeps it (mmap goes through it, and a page fault runs as the faulting
    /// process) but has its reads and writes served by the daemon, as that caller
    /// (FOPEN_DIRECT_IO overrides passthrough for read and write).
    fn passthrough(
        &self,
        handle: &Handle,
        caller: &Caller,
        open_flags: i32,
        register: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Passthrough> {
        if handle.inode.kind != libc::S_IFREG || !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let (id, registrant) = match handle.inode.open_state.shared_backing() {
            Some(shared) => shared,
            None => match self.fs.as_registrant(caller, register) {
                Ok(fresh) => handle
                    .inode
                    .open_state
                    .install_backing(fresh, (caller.uid, caller.gid)),
                Err(err) => {
                    if err.raw_os_error() == Some(libc::EPERM) {
                        log::warn!("kernel refused passthrough ({err}); serving I/O in the daemon");
                        self.passthrough.store(false, Ordering::Relaxed);
                    } else {
                        log::debug!("no passthrough for inode {}: {err}", handle.inode.id);
                    }
                    return None;
                }
            },
        };
        handle.attach_backing(id.clone());
        self.fs.stats.count(&self.fs.stats.passthrough_opens, 1);
        let writes = open_flags & libc::O_ACCMODE != libc::O_RDONLY;
        Some(Passthrough {
            id,
            reads_and_writes_in_daemon: writes && registrant != (caller.uid, caller.gid),
        })
    }
}

/// How an open file uses kernel passthrough.
struct Passthrough {
    id: Arc<BackingId>,
    /// Reads and writes go to the daemon (FOPEN_DIRECT_IO); only mmap uses the backing.
    reads_and_writes_in_daemon: bool,
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // Writes and truncates run as the caller, so the backing filesystem drops
            // set-id bits as natively; the kernel asks (an empty SETATTR) only where it
            // cannot tell, and stops sending GETXATTR security.capability before every
            // single write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // The kernel caches and enforces POSIX ACLs (default_permissions is always on).
            InitFlags::FUSE_POSIX_ACL,
            // Modes arrive without the umask, and the daemon creates with the caller's
            // umask: a default ACL of the parent then replaces the umask, as natively.
            InitFlags::FUSE_DONT_MASK,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks {cap:?}");
            }
        }
        if self.cache == Cache::Auto {
            let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        }
        if self.passthrough.load(Ordering::Relaxed) {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                // Depth 1: the backing files must not be on a stacked filesystem, and
                // fastfs itself can be a layer under overlayfs.
                && config.set_max_stack_depth(1).is_ok();
            if !granted {
                log::info!("kernel has no FUSE passthrough; serving I/O in the daemon");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _request = self.fs.stats.request(Op::Lookup);
        match self.fs.lookup(parent.0, name, &caller(req)) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) && !self.cache.ttl().is_zero() => {
                // A negative entry (node id 0): the kernel remembers the name is absent.
                let none = attr(0, &crate::sys::zeroed_stat());
                reply.entry(&self.cache.ttl(), &none, Generation(0));
            }
            result => self.reply_entry(result, reply),
        }
    }

    // BATCH_FORGET: fuser's default calls this for each node (its ForgetOne is private).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        drop(self.fs.stats.request(Op::Forget));
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _request = self.fs.stats.request(Op::Getattr);
        match self.fs.getattr(ino.0) {
            Ok(st) => reply.attr(&self.cache.ttl(), &attr(ino.0, &st)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _request = self.fs.stats.request(Op::Setattr);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            kill_privileges: false,
        };
        // The kernel sends a SETATTR that changes nothing only to drop privileges
        // (FATTR_KILL_SUIDGID, which fuser does not pass on, or file_remove_privs).
        let change = SetAttr {
            kill_privileges: change == SetAttr::default(),
            ..change
        };
        match self
            .fs
            .setattr(ino.0, fh.map(|f| f.0), change, &caller(req))
        {
            Ok(st) => reply.attr(&self.cache.ttl(), &attr(ino.0, &st)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _request = self.fs.stats.request(Op::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _request = self.fs.stats.request(Op::Mknod);
        self.reply_entry(
            self.fs
                .mknod(parent.0, name, mode, umask, rdev, &caller(req)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _request = self.fs.stats.request(Op::Mkdir);
        self.reply_entry(
            self.fs.mkdir(parent.0, name, mode, umask, &caller(req)),
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.fs.stats.request(Op::Unlink);
        reply_empty(self.fs.unlink(parent.0, name, &caller(req)), reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.fs.stats.request(Op::Rmdir);
        reply_empty(self.fs.rmdir(parent.0, name, &caller(req)), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _request = self.fs.stats.request(Op::Symlink);
        let result = self
            .fs
            .symlink(parent.0, link_name, target.as_os_str(), &caller(req));
        self.reply_entry(result, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Rename);
        reply_empty(
            self.fs.rename(
                parent.0,
                name,
                newparent.0,
                newname,
                flags.bits(),
                &caller(req),
            ),
            reply,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _request = self.fs.stats.request(Op::Link);
        self.reply_entry(
            self.fs.link(ino.0, newparent.0, newname, &caller(req)),
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.fs.stats.request(Op::Open);
        let caller = caller(req);
        match self.fs.open(ino.0, flags.0, &caller) {
            Ok((fh, handle)) => {
                let register = || reply.open_backing(handle.fd());
                match self.passthrough(&handle, &caller, flags.0, register) {
                    Some(p) => reply.opened_passthrough(
                        FileHandle(fh),
                        self.open_flags(&handle, Some(&p)),
                        &p.id,
                    ),
                    None => reply.opened(FileHandle(fh), self.open_flags(&handle, None)),
                }
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _request = self.fs.stats.request(Op::Read);
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _request = self.fs.stats.request(Op::Write);
        match self.fs.write(fh.0, offset, data, &caller(req)) {
            Ok(n) => reply.written(n as u32),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Flush);
        reply_empty(self.fs.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Release);
        reply_empty(self.fs.release(fh.0), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Fsync);
        reply_empty(self.fs.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.fs.stats.request(Op::Opendir);
        match self.fs.opendir(ino.0, &caller(req)) {
            Ok((fh, _)) => {
                let flags = if self.cache.keep_page_cache() {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags)
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _request = self.fs.stats.request(Op::Readdir);
        let result = self.fs.readdir(fh.0, offset, false, &mut |e| {
            !reply.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), e.name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _request = self.fs.stats.request(Op::Readdirplus);
        let ttl = self.cache.ttl();
        let result = self.fs.readdir(fh.0, offset, true, &mut |e| {
            let full = match &e.entry {
                Some(entry) => reply.add(
                    INodeNo(entry.inode.id),
                    e.next_offset,
                    e.name,
                    &ttl,
                    &attr(entry.inode.id, &entry.st),
                    Generation(0),
                ),
                // `.` and `..`: the kernel neither uses nor counts their attributes.
                None => {
                    let mut st = crate::sys::zeroed_stat();
                    st.st_mode = e.kind;
                    let ino = INodeNo(e.ino);
                    reply.add(
                        ino,
                        e.next_offset,
                        e.name,
                        &Duration::ZERO,
                        &attr(e.ino, &st),
                        Generation(0),
                    )
                }
            };
            !full
        });
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Releasedir);
        reply_empty(self.fs.release(fh.0), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Fsyncdir);
        reply_empty(self.fs.fsync(fh.0, datasync), reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _request = self.fs.stats.request(Op::Statfs);
        match self.fs.statfs(ino.0) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Setxattr);
        reply_empty(
            self.fs.setxattr(ino.0, name, value, flags, &caller(req)),
            reply,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _request = self.fs.stats.request(Op::Getxattr);
        reply_xattr(self.fs.getxattr(ino.0, name, size, &caller(req)), reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _request = self.fs.stats.request(Op::Listxattr);
        reply_xattr(self.fs.listxattr(ino.0, size, &caller(req)), reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.fs.stats.request(Op::Removexattr);
        reply_empty(self.fs.removexattr(ino.0, name, &caller(req)), reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _request = self.fs.stats.request(Op::Access);
        reply_empty(self.fs.access(ino.0, mask.bits(), &caller(req)), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _request = self.fs.stats.request(Op::Create);
        let caller = caller(req);
        match self.fs.create(parent.0, name, mode, umask, flags, &caller) {
            Ok((entry, fh, handle)) => {
                let ttl = self.cache.ttl();
                let attr = attr(entry.inode.id, &entry.st);
                let register = || reply.open_backing(handle.fd());
                match self.passthrough(&handle, &caller, flags, register) {
                    Some(p) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        self.open_flags(&handle, Some(&p)),
                        &p.id,
                    ),
                    None => reply.created(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        self.open_flags(&handle, None),
                    ),
                }
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _request = self.fs.stats.request(Op::Fallocate);
        reply_empty(
            self.fs.fallocate(fh.0, offset, length, mode, &caller(req)),
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _request = self.fs.stats.request(Op::Lseek);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _request = self.fs.stats.request(Op::CopyFileRange);
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, &caller(req))
        {
            // copy_range never copies more than a u32 holds.
            Ok(n) => reply.written(n as u32),
            Err(err) => reply.error(errno(err)),
        }
    }
}

fn reply_empty(result: io::Result<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(err) => reply.error(errno(err)),
    }
}

fn reply_xattr(result: io::Result<Xattr>, reply: ReplyXattr) {
    match result {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(data)) => reply.data(&data),
        Err(err) => reply.error(errno(err)),
    }
}
