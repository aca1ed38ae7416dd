//! How requests arrive and replies leave.
//!
//! [`wire`] decodes the kernel's request bytes and encodes replies; [`Dispatcher`] turns a
//! decoded request into a call of a plain [`Fs`] method and its result into a reply;
//! [`devfuse`] reads requests from `/dev/fuse` threads. Nothing here decides filesystem
//! behaviour, except what only the kernel protocol knows: cache lifetimes, open flags
//! for the kernel, and kernel passthrough.

pub mod devfuse;
pub mod ring;
pub mod wire;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Cache;
use crate::creds::Caller;
use crate::fs::{DirEntry, Entry, Fs, SetAttr, SetTime, Xattr};
use crate::handle::Handle;
use crate::idmap::Applied;
use crate::passthrough::{Passthrough, PassthroughOpen};
use wire::{Attr, DirentBuf, EntryOut, Op, OpenOut, Reply, Request, StatfsOut, fattr, fopen};

/// What the daemon asks of the kernel at INIT.
pub struct InitRequest {
    pub cache: Cache,
    pub passthrough: bool,
    /// Whether to serve over io_uring where the kernel offers it.
    pub uring: bool,
    /// Whether fcntl and flock locks come to the daemon (see [`crate::locks`]).
    pub locks: bool,
    /// Whether to allow idmapped mounts of this one (FUSE_ALLOW_IDMAP).
    pub idmap: bool,
}

/// How the io_uring transport came out of INIT.
pub enum RingSetup {
    NotWanted,
    /// The kernel did not offer FUSE_OVER_IO_URING (`fuse.enable_uring` is off, or the
    /// kernel is older than 6.14).
    NotOffered,
    /// Offered, but the rings could not be created (the flag was not accepted).
    Failed(io::Error),
    /// Accepted: the rings must now be registered, or the mount hangs.
    Ready(ring::Prepared),
}

/// What INIT settled.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub passthrough: bool,
    /// setxattr requests carry the 16-byte `fuse_setxattr_in`.
    pub setxattr_ext: bool,
    pub max_write: u32,
    /// FUSE_ALLOW_IDMAP was accepted.
    pub idmap: bool,
}

/// The longest the kernel trusts a directory's attributes (see [`Dispatcher::attr_ttl`]),
/// and with `-o idmap` any name or attribute (see [`Dispatcher::ttl`]).
const DIRECTORY_ATTR_TTL: Duration = Duration::from_secs(1);

/// The most a request may carry: `/proc/sys/fs/fuse/max_pages_limit` (256 pages).
pub const MAX_WRITE: u32 = 1 << 20;

/// Bytes of the buffer a request is read into: `max_write` of data, or a setxattr of the
/// largest value (64 KiB) with its name, plus headers.
pub fn request_buffer(max_write: u32) -> usize {
    (max_write as usize).max(64 << 10) + 8192
}

/// fuser answers the kernel's INIT (it "keeps the mount and INIT"); fastfs serves every
/// request after it.
struct Handshake {
    wanted: InitRequest,
    negotiated: Arc<std::sync::OnceLock<Negotiated>>,
    /// The connection's descriptor, for the rings.
    dev: OwnedFd,
    rings: Arc<parking_lot::Mutex<Option<RingSetup>>>,
}

impl Handshake {
    /// Creates the rings before the INIT reply accepts io_uring: once accepted, a queue
    /// without a ring would hang every request (see [`ring`]).
    fn set_up_rings(&self, config: &mut fuser::KernelConfig, max_write: u32) -> RingSetup {
        if !self.wanted.uring {
            return RingSetup::NotWanted;
        }
        if !config
            .capabilities()
            .contains(fuser::InitFlags::FUSE_OVER_IO_URING)
        {
            return RingSetup::NotOffered;
        }
        match ring::prepare(&self.dev, request_buffer(max_write)) {
            Ok(prepared) => match config.add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING) {
                Ok(()) => RingSetup::Ready(prepared),
                Err(_) => RingSetup::NotOffered,
            },
            Err(e) => RingSetup::Failed(e),
        }
    }
}

impl fuser::Filesystem for Handshake {
    fn init(&mut self, _req: &fuser::Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        use fuser::InitFlags as F;
        let offered = config.capabilities();
        let mut wanted = vec![
            F::FUSE_DO_READDIRPLUS,
            F::FUSE_READDIRPLUS_AUTO,
            F::FUSE_ATOMIC_O_TRUNC,
            F::FUSE_PARALLEL_DIROPS,
            F::FUSE_CACHE_SYMLINKS,
            // Writes and truncates run as the caller, so the backing filesystem drops
            // set-id bits as natively; the kernel asks (an empty SETATTR) only where it
            // cannot tell, and stops sending GETXATTR security.capability before every
            // single write.
            F::FUSE_HANDLE_KILLPRIV_V2,
            // The kernel caches and enforces POSIX ACLs (default_permissions is always on).
            F::FUSE_POSIX_ACL,
            // Modes arrive without the umask, and the daemon creates with the caller's
            // umask: a default ACL of the parent then replaces the umask, as natively.
            F::FUSE_DONT_MASK,
            F::FUSE_SETXATTR_EXT,
            // File handles made through the mount (name_to_handle_at, an NFS export)
            // still open after the kernel dropped the inode: it asks for "." of the
            // node id they carry (see inode::InodeTable::revive).
            F::FUSE_EXPORT_SUPPORT,
        ];
        match self.wanted.cache {
            Cache::Auto => wanted.push(F::FUSE_AUTO_INVAL_DATA),
            // Files are opened for direct I/O; shared mmap must still work.
            Cache::Never => wanted.push(F::FUSE_DIRECT_IO_ALLOW_MMAP),
            Cache::Always => {}
        }
        if self.wanted.locks {
            wanted.extend([F::FUSE_POSIX_LOCKS, F::FUSE_FLOCK_LOCKS]);
        }
        let idmap = self.wanted.idmap && config.add_capabilities(F::FUSE_ALLOW_IDMAP).is_ok();
        for cap in wanted {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks {cap:?}");
            }
        }
        let passthrough = self.wanted.passthrough
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            // Depth 1: the backing files must not be on a stacked filesystem, and fastfs
            // itself can be a layer under overlayfs.
            && config.set_max_stack_depth(1).is_ok();
        if self.wanted.passthrough && !passthrough {
            log::info!("kernel has no FUSE passthrough; serving I/O in the daemon");
        }
        let max_write = match config.set_max_write(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(max) => {
                let _ = config.set_max_write(max);
                max
            }
        };
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        *self.rings.lock() = Some(self.set_up_rings(config, max_write));
        let _ = self.negotiated.set(Negotiated {
            passthrough,
            setxattr_ext: offered.contains(F::FUSE_SETXATTR_EXT),
            max_write,
            idmap,
        });
        Ok(())
    }
}

/// Answers the kernel's INIT on `dev` (a `/dev/fuse` descriptor just mounted); returns
/// the connection's descriptor, what was settled, and the io_uring setup.
pub fn handshake(
    dev: OwnedFd,
    wanted: InitRequest,
) -> io::Result<(OwnedFd, Negotiated, RingSetup)> {
    let negotiated = Arc::new(std::sync::OnceLock::new());
    let rings = Arc::new(parking_lot::Mutex::new(None));
    let handshake = Handshake {
        wanted,
        negotiated: negotiated.clone(),
        dev: dev.try_clone()?,
        rings: rings.clone(),
    };
    let session = fuser::Session::from_fd(
        handshake,
        dev,
        fuser::SessionACL::All,
        fuser::Config::default(),
    )?;
    // The session is not run: fastfs reads the connection itself from here on.
    let fd = session.as_fd().try_clone_to_owned()?;
    let negotiated = negotiated
        .get()
        .copied()
        .ok_or_else(|| io::Error::other("INIT finished without settling its terms"))?;
    let rings = rings.lock().take().unwrap_or(RingSetup::NotWanted);
    Ok((fd, negotiated, rings))
}

/// Serves decoded requests with one [`Fs`]; shared by every transport thread.
pub struct Dispatcher {
    pub fs: Arc<Fs>,
    cache: Cache,
    pub passthrough: Arc<Passthrough>,
}

/// The errno of an `io::Error`, for a reply. The daemon never tells the kernel ENOSYS for
/// an operation it implements: for copy_file_range that would disable the operation for
/// the whole mount.
fn errno(err: io::Error) -> i32 {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => libc::EOPNOTSUPP,
        Some(code) => code,
        None => libc::EIO,
    }
}

fn reply_of<T>(result: io::Result<T>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match result {
        Ok(value) => ok(value),
        Err(err) => Reply::Error(errno(err)),
    }
}

fn set_time(valid: u32, now_bit: u32, set_bit: u32, (sec, nsec): (i64, u32)) -> Option<SetTime> {
    if valid & now_bit != 0 {
        Some(SetTime::Now)
    } else if valid & set_bit != 0 {
        Some(SetTime::At { sec, nsec })
    } else {
        None
    }
}

impl Dispatcher {
    pub fn new(fs: Arc<Fs>, cache: Cache, passthrough: Arc<Passthrough>) -> Self {
        Dispatcher {
            fs,
            cache,
            passthrough,
        }
    }

    /// How long the kernel may trust a name or attributes. With `-o idmap` the daemon
    /// acts with rights of its own on the strength of the kernel's permission checks,
    /// which use what it cached: a change made directly in BACKING (a chmod, a chown, a
    /// file replaced) must reach those checks within a second.
    fn ttl(&self) -> Duration {
        if self.fs.idmap() {
            self.cache.ttl().min(DIRECTORY_ATTR_TTL)
        } else {
            self.cache.ttl()
        }
    }

    /// The entry of a name in directory `parent`. With `-o idmap`, a name in a sticky
    /// directory is trusted for no time (see [`crate::idmap`]).
    fn entry_out(&self, parent: u64, entry: &Entry) -> EntryOut {
        let entry_valid = if self.fs.names_need_fresh_lookup(parent) {
            Duration::ZERO
        } else {
            self.ttl()
        };
        EntryOut {
            nodeid: entry.inode.id,
            generation: 0,
            entry_valid,
            attr_valid: self.attr_ttl(entry),
            attr: attr(entry),
        }
    }

    /// An ATTR reply; `applied`: whether the kernel surely takes it (SETATTR).
    fn attr_reply(&self, result: io::Result<Entry>, applied: Applied) -> Reply {
        reply_of(result, |e| {
            self.fs.note_reported(e.inode.id, &e.st, applied);
            Reply::Attr {
                valid: self.attr_ttl(&e),
                attr: attr(&e),
            }
        })
    }

    /// How long the kernel may trust these attributes. A directory's are re-checked
    /// after at most a second in every cache mode: the kernel checks search permission on
    /// every directory of a path against them, and only the last one reaches the daemon,
    /// so a `chmod 700` made directly in BACKING must not wait a day to take effect.
    fn attr_ttl(&self, entry: &Entry) -> Duration {
        if entry.st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.ttl().min(DIRECTORY_ATTR_TTL)
        } else {
            self.ttl()
        }
    }

    fn entry(&self, parent: u64, result: io::Result<Entry>, epoch: u64) -> Reply {
        reply_of(result, |e| {
            self.fs
                .note_reported(e.inode.id, &e.st, Applied::IfNew(epoch));
            Reply::Entry(self.entry_out(parent, &e))
        })
    }

    /// Open flags for the kernel: whether it may skip FLUSH at close, and (when the
    /// daemon serves the I/O itself) whether it keeps the page cache of earlier opens.
    /// KEEP_CACHE is never combined with passthrough (the open then fails with EIO).
    fn open_out(&self, fh: u64, handle: &Handle, passthrough: Option<&PassthroughOpen>) -> OpenOut {
        let mut open_flags = 0;
        if self.fs.close_needs_no_flush(&handle.inode) {
            open_flags |= fopen::NOFLUSH;
        }
        match passthrough {
            None if self.cache.keep_page_cache() => open_flags |= fopen::KEEP_CACHE,
            // Nothing cached means no page cache either: every read and write of a file
            // served by the daemon reaches it, so a process changing BACKING directly
            // is seen at once (a database used from both sides stays intact).
            None if self.cache == Cache::Never => open_flags |= fopen::DIRECT_IO,
            None => {}
            Some(p) => {
                open_flags |= fopen::PASSTHROUGH;
                if p.reads_and_writes_in_daemon {
                    open_flags |= fopen::DIRECT_IO;
                }
            }
        }
        OpenOut {
            fh,
            open_flags,
            backing_id: passthrough.map_or(0, PassthroughOpen::backing_id),
        }
    }

    /// Serves a request given as its decoded parts (see [`wire::split_request`] and
    /// [`wire::split_ring_request`]); `raw_header` is where its `fuse_in_header` was, for
    /// the report when the rest cannot be decoded. Returns the request's `unique` and the
    /// reply (`None` for requests without one), or `None` when not even the header can
    /// be read.
    pub fn serve(
        &self,
        parts: wire::Result<(wire::InHeader, &[u8], &[u8])>,
        raw_header: &[u8],
    ) -> Option<(u64, Option<Reply>)> {
        match parts.and_then(|(header, fixed, payload)| Request::decode(header, fixed, payload)) {
            Ok(request) => Some((request.header.unique, self.handle(&request))),
            Err(err) => match wire::InHeader::decode(raw_header) {
                Ok(header) => {
                    log::error!(
                        "request {} (opcode {}): {err}",
                        header.unique,
                        header.opcode
                    );
                    let needs_reply = !matches!(
                        header.opcode,
                        wire::opcode::FORGET | wire::opcode::BATCH_FORGET | wire::opcode::INTERRUPT
                    );
                    Some((
                        header.unique,
                        needs_reply.then_some(Reply::Error(libc::EIO)),
                    ))
                }
                Err(_) => {
                    log::error!("undecodable request: {err}");
                    None
                }
            },
        }
    }

    /// Serves `req`; returns the reply to send, or `None` for requests without one.
    pub fn handle(&self, req: &Request<'_>) -> Option<Reply> {
        let h = &req.header;
        let _request = self.fs.stats.request(h.opcode);
        let caller = Caller {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        let fs = &self.fs;
        let node = h.nodeid;
        // Read before the request is served (see `Applied::IfNew`).
        let epoch = fs.reply_epoch();
        Some(match &req.op {
            Op::Lookup { name } => match fs.lookup(node, name, &caller) {
                // A negative entry (node id 0): the kernel remembers the name is absent.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) && !self.ttl().is_zero() => {
                    Reply::Entry(EntryOut {
                        nodeid: 0,
                        generation: 0,
                        entry_valid: self.ttl(),
                        attr_valid: Duration::ZERO,
                        attr: Attr::default(),
                    })
                }
                result => self.entry(node, result, epoch),
            },
            Op::Forget { nlookup } => {
                fs.forget(node, *nlookup);
                return None;
            }
            Op::BatchForget { nodes } => {
                for &(id, nlookup) in nodes {
                    fs.forget(id, nlookup);
                }
                return None;
            }
            Op::Getattr { fh } => self.attr_reply(fs.getattr(node, *fh), Applied::IfNew(epoch)),
            Op::Setattr(s) => {
                let v = s.valid;
                // Nothing to change but the kernel asking to drop privileges: after a write
                // by the caller (file_remove_privs sends an empty SETATTR) or chown(f, -1,
                // -1). A chown or truncate with the kill flag drops them itself, as the
                // caller, in the backing filesystem.
                let changes =
                    v & !(fattr::FH | fattr::LOCKOWNER | fattr::CTIME | fattr::KILL_SUIDGID);
                let change = SetAttr {
                    mode: (v & fattr::MODE != 0).then_some(s.mode),
                    uid: (v & fattr::UID != 0).then_some(s.uid),
                    gid: (v & fattr::GID != 0).then_some(s.gid),
                    size: (v & fattr::SIZE != 0).then_some(s.size),
                    atime: set_time(v, fattr::ATIME_NOW, fattr::ATIME, s.atime),
                    mtime: set_time(v, fattr::MTIME_NOW, fattr::MTIME, s.mtime),
                    kill_privileges: changes == 0,
                    kill_suidgid: v & fattr::KILL_SUIDGID != 0,
                };
                let fh = (v & fattr::FH != 0).then_some(s.fh);
                self.attr_reply(fs.setattr(node, fh, change, &caller), Applied::Surely)
            }
            Op::Readlink => reply_of(fs.readlink(node), Reply::Data),
            Op::Symlink { name, target } => {
                self.entry(node, fs.symlink(node, name, target, &caller), epoch)
            }
            Op::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => self.entry(
                node,
                fs.mknod(node, name, *mode, *umask, *rdev, &caller),
                epoch,
            ),
            Op::Mkdir { name, mode, umask } => {
                self.entry(node, fs.mkdir(node, name, *mode, *umask, &caller), epoch)
            }
            Op::Unlink { name } => reply_of(fs.unlink(node, name, &caller), |()| Reply::Empty),
            Op::Rmdir { name } => reply_of(fs.rmdir(node, name, &caller), |()| Reply::Empty),
            Op::Rename {
                new_dir,
                name,
                new_name,
                flags,
            } => reply_of(
                fs.rename(node, name, *new_dir, new_name, *flags, &caller),
                |()| Reply::Empty,
            ),
            Op::Link { old_node, new_name } => {
                self.entry(node, fs.link(*old_node, node, new_name, &caller), epoch)
            }
            Op::Open { flags, open_flags } => match fs.open(
                node,
                *flags,
                open_flags & wire::OPEN_KILL_SUIDGID != 0,
                &caller,
            ) {
                Ok((fh, handle)) => {
                    let passthrough = self.passthrough.open(fs, &handle, &caller, *flags);
                    Reply::Open(self.open_out(fh, &handle, passthrough.as_ref()))
                }
                Err(err) => Reply::Error(errno(err)),
            },
            Op::Read { fh, offset, size } => reply_of(fs.read(*fh, *offset, *size), Reply::Data),
            Op::Write {
                fh,
                offset,
                data,
                write_flags,
            } => {
                let writer = (write_flags & wire::WRITE_CACHE == 0).then_some(&caller);
                let kill = write_flags & wire::WRITE_KILL_SUIDGID != 0;
                reply_of(fs.write(*fh, *offset, data, writer, kill), |n| {
                    Reply::Written(n as u32)
                })
            }
            Op::Statfs => reply_of(fs.statfs(node), |s| {
                Reply::Statfs(StatfsOut {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    namelen: s.f_namemax as u32,
                    frsize: s.f_frsize as u32,
                })
            }),
            Op::Release { fh, .. } | Op::Releasedir { fh } => {
                reply_of(fs.release(*fh), |()| Reply::Empty)
            }
            Op::Fsync { fh, datasync } | Op::Fsyncdir { fh, datasync } => {
                reply_of(fs.fsync(*fh, *datasync), |()| Reply::Empty)
            }
            Op::Setxattr {
                name,
                value,
                flags,
                setxattr_flags,
            } => {
                let kill_sgid = setxattr_flags & wire::SETXATTR_ACL_KILL_SGID != 0;
                reply_of(
                    fs.setxattr(node, name, value, *flags, kill_sgid, &caller),
                    |()| Reply::Empty,
                )
            }
            Op::Getxattr { name, size } => xattr_reply(fs.getxattr(node, name, *size, &caller)),
            Op::Listxattr { size } => xattr_reply(fs.listxattr(node, *size, &caller)),
            Op::Removexattr { name } => {
                reply_of(fs.removexattr(node, name, &caller), |()| Reply::Empty)
            }
            Op::Flush { fh, lock_owner } => reply_of(fs.flush(*fh, *lock_owner), |()| Reply::Empty),
            Op::Opendir { .. } => reply_of(fs.opendir(node, &caller), |(fh, _)| {
                let open_flags = if self.cache.keep_page_cache() {
                    fopen::KEEP_CACHE | fopen::CACHE_DIR
                } else {
                    0
                };
                Reply::Open(OpenOut {
                    fh,
                    open_flags,
                    backing_id: 0,
                })
            }),
            Op::Readdir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(node, *fh, *offset, *size, *plus, epoch),
            Op::Access { mask } => {
                reply_of(fs.access(node, *mask as i32, &caller), |()| Reply::Empty)
            }
            Op::Create {
                name,
                flags,
                mode,
                umask,
                ..
            } => match fs.create(node, name, *mode, *umask, *flags, &caller) {
                Ok((entry, fh, handle)) => {
                    let passthrough = self.passthrough.open(fs, &handle, &caller, *flags);
                    fs.note_reported(entry.inode.id, &entry.st, Applied::IfNew(epoch));
                    Reply::Create(
                        self.entry_out(node, &entry),
                        self.open_out(fh, &handle, passthrough.as_ref()),
                    )
                }
                Err(err) => Reply::Error(errno(err)),
            },
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => reply_of(
                fs.fallocate(*fh, *offset, *length, *mode as i32, &caller),
                |()| Reply::Empty,
            ),
            Op::Lseek { fh, offset, whence } => {
                reply_of(fs.lseek(*fh, *offset as i64, *whence as i32), |pos| {
                    Reply::Lseek(pos as u64)
                })
            }
            Op::CopyFileRange { flags, .. } if *flags != 0 => Reply::Error(libc::EINVAL),
            Op::CopyFileRange {
                fh_in,
                offset_in,
                fh_out,
                offset_out,
                len,
                ..
            } => reply_of(
                fs.copy_file_range(*fh_in, *offset_in, *fh_out, *offset_out, *len, &caller),
                // copy_range never copies more than a u32 holds.
                |n| Reply::Written(n as u32),
            ),
            // fastfs forwards no ioctl: "not a typewriter", as for any file without them.
            Op::Ioctl { .. } => Reply::Error(libc::ENOTTY),
            Op::Syncfs => reply_of(fs.syncfs(), |()| Reply::Empty),
            Op::Getlk {
                fh, owner, lock, ..
            } => reply_of(fs.getlk(*fh, *owner, *lock), Reply::Lock),
            Op::Setlk {
                fh,
                owner,
                lock,
                lk_flags,
                sleep,
            } => reply_of(
                fs.setlk(
                    *fh,
                    *owner,
                    *lock,
                    lk_flags & wire::LK_FLOCK != 0,
                    sleep.then_some(h.unique),
                    &caller,
                ),
                |()| Reply::Empty,
            ),
            // Only a request waiting for a lock can be interrupted; the others finish
            // soon. The interrupted request is answered (EINTR), the INTERRUPT never.
            Op::Interrupt { unique } => {
                fs.interrupt(*unique);
                return None;
            }
            Op::Destroy => return None,
            Op::Unknown(_) => Reply::Error(libc::ENOSYS),
        })
    }

    /// A reply that could not be delivered (the request was interrupted and is gone):
    /// what it handed to the kernel is taken back.
    pub fn undelivered(&self, reply: &Reply) {
        match reply {
            Reply::Entry(e) if e.nodeid != 0 => self.fs.forget(e.nodeid, 1),
            Reply::Create(e, open) => {
                let _ = self.fs.release(open.fh);
                self.fs.forget(e.nodeid, 1);
            }
            Reply::Open(open) => {
                let _ = self.fs.release(open.fh);
            }
            _ => {}
        }
    }

    fn readdir(&self, dir: u64, fh: u64, offset: u64, size: u32, plus: bool, epoch: u64) -> Reply {
        let mut out = DirentBuf::new(size);
        let result = self.fs.readdir(fh, offset, plus, &mut |e: DirEntry<'_>| {
            let kind = e.kind >> 12;
            let name = e.name.as_encoded_bytes();
            if !plus {
                return out.push(e.ino, e.next_offset, kind, name);
            }
            let entry = match &e.entry {
                Some(entry) => self.entry_out(dir, entry),
                // `.` and `..`: the kernel neither uses nor counts their attributes.
                None => EntryOut {
                    nodeid: 0,
                    generation: 0,
                    entry_valid: Duration::ZERO,
                    attr_valid: Duration::ZERO,
                    attr: Attr {
                        ino: e.ino,
                        mode: e.kind,
                        ..Attr::default()
                    },
                },
            };
            // The entry's inode number is what `stat` reports for it.
            let ino = if entry.nodeid == 0 {
                e.ino
            } else {
                entry.attr.ino
            };
            let accepted = out.push_plus(&entry, ino, e.next_offset, kind, name);
            if accepted && let Some(listed) = &e.entry {
                self.fs
                    .note_reported(listed.inode.id, &listed.st, Applied::IfNew(epoch));
            }
            accepted
        });
        reply_of(result, |()| out.into_reply())
    }
}

/// The attributes of an entry: the backing `stat`, with the inode number the inode
/// reports (see [`crate::inode`]).
fn attr(entry: &Entry) -> Attr {
    Attr {
        ino: entry.inode.ino,
        ..Attr::of(&entry.st)
    }
}

fn xattr_reply(result: io::Result<Xattr>) -> Reply {
    reply_of(result, |x| match x {
        Xattr::Size(n) => Reply::XattrSize(n),
        Xattr::Data(data) => Reply::Data(data),
    })
}
