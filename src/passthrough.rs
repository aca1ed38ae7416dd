//! Kernel passthrough: backing files registered with the kernel, so that reads, writes
//! and mmap of an open file go from the kernel to the backing file without the daemon.
//!
//! The kernel allows one backing file per inode at a time and keeps the credentials of
//! the thread that registered it for every write made through it; [`Passthrough::open`]
//! decides from that how each open uses it (see there).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
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

    /// Asks the kernel whether it will register backing files: with passthrough allowed
    /// it answers EISDIR for a directory, without it (no CAP_SYS_ADMIN) EPERM.
    pub fn probe(&self, directory: std::os::fd::BorrowedFd<'_>) {
        if !self.enabled() {
            return;
        }
        match sys::fuse_backing_open(self.dev.as_fd(), directory) {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => {
                log::info!("kernel passthrough unavailable: {e}");
                self.disable();
            }
            Ok(id) => {
                log::warn!("kernel registered a directory as backing file (id {id})");
                let _ = sys::fuse_backing_close(self.dev.as_fd(), id);
            }
        }
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
        let (backing, registrant) = match state.shared_backing() {
            Some(shared) => shared,
            None => {
                let registered = fs.as_registrant(caller, || {
                    let id = sys::fuse_backing_open(self.dev.as_fd(), handle.fd())?;
                    let fresh = BackingFile {
                        id,
                        closer: self.closer.clone(),
                    };
                    Ok(state.install_backing(fresh, (caller.uid, caller.gid)))
                });
                match registered {
                    Ok(installed) => installed,
                    Err(err) => {
                        if err.raw_os_error() == Some(libc::EPERM) {
                            log::warn!(
                                "kernel refused passthrough ({err}); serving I/O in the daemon"
                            );
                            self.disable();
                        } else {
                            log::debug!("no passthrough for inode {}: {err}", handle.inode.id);
                        }
                        return None;
                    }
                }
            }
        };
        handle.attach_backing(backing.clone());
        fs.stats.count(&fs.stats.passthrough_opens, 1);
        let writes = open_flags & libc::O_ACCMODE != libc::O_RDONLY;
        Some(PassthroughOpen {
            backing,
            reads_and_writes_in_daemon: writes && registrant != (caller.uid, caller.gid),
        })
    }
}
