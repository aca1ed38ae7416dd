//! Kernel passthrough: backing files registered with the kernel, so that reads, writes
//! and mmap of an open file go from the kernel to the backing file without the daemon.
//!
//! The kernel allows one backing file per inode at a time and keeps the credentials of
//! the thread that registered it for every write made through it; [`Passthrough::open`]
//! decides from that how each open uses it (see there).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::creds::Caller;
use crate::fs::Fs;
use crate::handle::Handle;
use crate::sys;

/// Kernel passthrough for one connection.
pub struct Passthrough {
    /// A `/dev/fuse` descriptor of the connection, for the backing-file ioctls.
    dev: Arc<OwnedFd>,
    /// Cleared when the kernel refuses (no CAP_SYS_ADMIN in the initial namespace), so
    /// later opens stop trying.
    enabled: AtomicBool,
    /// Backing ids to unregister, for the closer thread.
    closer: mpsc::Sender<u32>,
}

/// A registered backing file; unregistered when the last handle using it drops it.
///
/// Unregistering needs CAP_SYS_ADMIN, and the last handle may be dropped by any thread,
/// acting as any caller (a request still in flight when the file was released), so it is
/// done by a thread of its own that always has the daemon's rights.
#[derive(Debug)]
pub struct BackingFile {
    id: u32,
    closer: mpsc::Sender<u32>,
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        // Fails only once the connection is shut down (the closer has ended).
        let _ = self.closer.send(self.id);
    }
}

/// How one open file uses kernel passthrough.
pub struct PassthroughOpen {
    pub backing: Arc<BackingFile>,
    /// Reads and writes go to the daemon (FOPEN_DIRECT_IO); only mmap uses the backing.
    pub reads_and_writes_in_daemon: bool,
}

impl PassthroughOpen {
    pub fn backing_id(&self) -> u32 {
        self.backing.id
    }
}

/// A regular file among the first entries of the directory `root`, opened read-only.
fn any_regular_file(root: std::os::fd::BorrowedFd<'_>) -> Option<OwnedFd> {
    let path = sys::proc_fd_path(root);
    let listing = std::fs::read_dir(std::ffi::OsStr::from_bytes(path.as_bytes())).ok()?;
    listing
        .take(1000)
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .find_map(|e| {
            let name = sys::cstr(&e.file_name()).ok()?;
            sys::openat(
                Some(root),
                &name,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )
            .ok()
        })
}

impl Passthrough {
    /// Passthrough over the connection of `dev`, on if `wanted` (and the kernel agrees).
    /// Starts the thread that unregisters backing files; call it from a thread with the
    /// daemon's own identity (it inherits it).
    pub fn new(dev: OwnedFd, wanted: bool) -> io::Result<Self> {
        let dev = Arc::new(dev);
        let (closer, closing) = mpsc::channel::<u32>();
        let closer_dev = dev.clone();
        std::thread::Builder::new()
            .name("fastfs-backing".into())
            .spawn(move || {
                for id in closing {
                    if let Err(e) = sys::fuse_backing_close(closer_dev.as_fd(), id) {
                        log::error!("cannot unregister backing file {id}: {e}");
                    }
                }
            })?;
        Ok(Passthrough {
            dev,
            enabled: AtomicBool::new(wanted),
            closer,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Asks the kernel whether it will register backing files from BACKING, and says
    /// why not. Without CAP_SYS_ADMIN it refuses anything (EPERM). A backing that is
    /// itself stacked (a FUSE mount with passthrough, overlayfs) is one level too deep for
    /// a filesystem that must stay usable under overlayfs (ELOOP); the kernel only checks
    /// that on a regular file, so the probe registers an unnamed temporary file in the
    /// backing root, or else a regular file found there (with neither, it cannot tell,
    /// and the first open finds out).
    /// Returns the reason passthrough is off, if it is.
    pub fn probe(&self, root: std::os::fd::BorrowedFd<'_>) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let refused = |e: io::Error| match e.raw_os_error() {
            Some(libc::ELOOP) => Some(
                "BACKING is itself on a stacked filesystem (a FUSE mount with passthrough, or \
                 overlayfs), and kernel passthrough allows one level of stacking"
                    .to_string(),
            ),
            Some(libc::EPERM) => Some(format!(
                "the kernel refuses FUSE passthrough here ({e}; it needs CAP_SYS_ADMIN in the \
                 initial user namespace)"
            )),
            _ => Some(format!("the kernel refuses FUSE passthrough here ({e})")),
        };
        let reason = match sys::fuse_backing_open(self.dev.as_fd(), root) {
            // Registration is possible in principle: try a regular file.
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                match sys::open_tmpfile(root)
                    .ok()
                    .or_else(|| any_regular_file(root))
                {
                    Some(file) => match sys::fuse_backing_open(self.dev.as_fd(), file.as_fd()) {
                        Ok(id) => {
                            let _ = sys::fuse_backing_close(self.dev.as_fd(), id);
                            None
                        }
                        Err(e) => refused(e),
                    },
                    None => {
                        log::debug!("no regular file in BACKING's root to probe passthrough");
                        None
                    }
                }
            }
            Err(e) => refused(e),
            Ok(id) => {
                log::warn!("kernel registered a directory as backing file (id {id})");
                let _ = sys::fuse_backing_close(self.dev.as_fd(), id);
                None
            }
        };
        if reason.is_some() {
            self.disable();
        }
        reason
    }

    /// How an open of `handle` by `caller` with `open_flags` uses kernel passthrough, if
    /// at all; registers the inode's backing file if this is its first passthrough open.
    ///
    /// The backing file is registered as the caller: the kernel keeps the registering
    /// thread's credentials for every write through it, so the caller's writes meet the
    /// backing filesystem's root reserve, quota and set-id rules as natively. The kernel
    /// allows one backing file per inode; an open for writing by another identity while
    /// it lives keeps it (mmap goes through it, and a page fault runs as the faulting
    /// process) but has its reads and writes served by the daemon, as that caller
    /// (FOPEN_DIRECT_IO overrides passthrough for read and write).
    pub fn open(
        &self,
        fs: &Fs,
        handle: &Handle,
        caller: &Caller,
        open_flags: i32,
    ) -> Option<PassthroughOpen> {
        if handle.inode.kind != libc::S_IFREG || !self.enabled() {
            return None;
        }
        let state = &handle.open_state;
        let writer = fs.writer_identity(caller);
        let (backing, registrant) = match state.shared_backing() {
            Some(shared) => shared,
            None => {
                let registered = fs.as_registrant(caller, || {
                    let id = sys::fuse_backing_open(self.dev.as_fd(), handle.fd())?;
                    let fresh = BackingFile {
                        id,
                        closer: self.closer.clone(),
                    };
                    Ok(state.install_backing(fresh, writer))
                });
                match registered {
                    Ok(installed) => installed,
                    Err(err) => {
                        if matches!(err.raw_os_error(), Some(libc::EPERM | libc::ELOOP)) {
                            // Said once: the next opens do not try.
                            if self.enabled.swap(false, Ordering::Relaxed) {
                                log::warn!(
                                    "kernel refused passthrough ({err}); serving I/O in the daemon"
                                );
                            }
                        } else {
                            log::debug!("no passthrough for inode {}: {err}", handle.inode.id);
                        }
                        return None;
                    }
                }
            }
        };
        let writes = open_flags & libc::O_ACCMODE != libc::O_RDONLY;
        handle.attach_backing(backing.clone(), writes);
        fs.stats.count(&fs.stats.passthrough_opens, 1);
        Some(PassthroughOpen {
            backing,
            reads_and_writes_in_daemon: writes && registrant != writer,
        })
    }
}
