//! Open file and directory handles: the `fh` the kernel passes back maps to an `Arc<Handle>`.
//!
//! A handle owns a real (non-`O_PATH`) descriptor of the backing object, opened without
//! `O_APPEND` (the kernel computes append offsets itself, and `copy_file_range(2)` refuses
//! an `O_APPEND` descriptor). The handle table's mutex is never held across a system call;
//! it is independent of the inode table's (neither is taken while holding the other).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, MutexGuard};

use crate::creds::Caller;
use crate::inode::{Inode, NodeId};
use crate::passthrough::BackingFile;

/// Who registered a backing file: `(uid, gid)`.
pub type Registrant = (u32, u32);

/// Per-inode state shared by its open handles.
#[derive(Debug, Default)]
pub struct InodeOpenState {
    /// The kernel passthrough backing id, while any handle of the inode uses it, and the
    /// `(uid, gid)` it was registered as. The kernel wants one backing id per inode;
    /// handles keep it alive with their `Arc`.
    backing: Mutex<Option<(Weak<BackingFile>, Registrant)>>,
}

impl InodeOpenState {
    /// The backing id another open handle of this inode registered, if it is still
    /// open, and who registered it.
    pub fn shared_backing(&self) -> Option<(Arc<BackingFile>, Registrant)> {
        let slot = self.backing.lock();
        let (id, registrant) = slot.as_ref()?;
        Some((id.upgrade()?, *registrant))
    }

    /// Makes `fresh` (registered as `registrant`) the inode's backing id, unless another
    /// thread registered one first: then that one is returned and `fresh` is closed
    /// (outside the lock).
    pub fn install_backing(
        &self,
        fresh: BackingFile,
        registrant: Registrant,
    ) -> (Arc<BackingFile>, Registrant) {
        let mut spare = None;
        let installed = {
            let mut slot = self.backing.lock();
            match slot
                .as_ref()
                .and_then(|(id, by)| Some((id.upgrade()?, *by)))
            {
                Some(existing) => {
                    spare = Some(fresh);
                    existing
                }
                None => {
                    let id = Arc::new(fresh);
                    *slot = Some((Arc::downgrade(&id), registrant));
                    (id, registrant)
                }
            }
        };
        drop(spare);
        installed
    }
}

/// One open file or directory.
#[derive(Debug)]
pub struct Handle {
    pub inode: Arc<Inode>,
    /// Who opened it: whose writes the kernel's write-back of dirty pages makes.
    pub opener: Caller,
    /// The uid whose share of handles it counts against (see `Credentials::account_uid`).
    account: u32,
    /// State shared by every open handle of the inode.
    pub open_state: Arc<InodeOpenState>,
    file: OwnedFd,
    /// Serialises seek + getdents on a directory descriptor.
    dir_position: Mutex<()>,
    /// The inode's shared passthrough backing id (possibly registered through another
    /// handle's descriptor), kept alive while this handle is open.
    backing: OnceLock<Arc<BackingFile>>,
    /// Opened for writing with kernel passthrough: writes through a shared mapping reach
    /// the backing file without the kernel updating the times it caches.
    writes_by_passthrough: std::sync::atomic::AtomicBool,
}

impl Handle {
    fn new(
        inode: Arc<Inode>,
        opener: Caller,
        account: u32,
        open_state: Arc<InodeOpenState>,
        file: OwnedFd,
    ) -> Self {
        Handle {
            inode,
            opener,
            account,
            open_state,
            file,
            dir_position: Mutex::new(()),
            backing: OnceLock::new(),
            writes_by_passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn lock_dir_position(&self) -> MutexGuard<'_, ()> {
        self.dir_position.lock()
    }

    /// Keeps `id` alive for as long as this handle is open; `writable`: the handle was
    /// opened for writing.
    pub fn attach_backing(&self, id: Arc<BackingFile>, writable: bool) {
        let _ = self.backing.set(id);
        self.writes_by_passthrough
            .store(writable, Ordering::Relaxed);
    }

    /// Whether writes through this handle may reach the backing file behind the kernel's
    /// cached attributes (mmap writes with kernel passthrough).
    pub fn writes_by_passthrough(&self) -> bool {
        self.writes_by_passthrough.load(Ordering::Relaxed)
    }
}

/// The table of open handles. Handle numbers are never reused while the mount lives.
///
/// Every open handle holds a descriptor of the daemon's, and all users share the
/// daemon's descriptor limit: a user other than the daemon's own may hold at most
/// `per_user` handles, so that no one user can exhaust it for everyone else.
pub struct HandleTable {
    next: AtomicU64,
    open: Mutex<Open>,
    daemon_uid: u32,
    per_user: usize,
}

#[derive(Default)]
struct Open {
    handles: HashMap<u64, Arc<Handle>>,
    /// Per-inode state of inodes with open handles (only those: known inodes need none).
    states: HashMap<NodeId, Weak<InodeOpenState>>,
    /// Open handles by opener's uid (other than the daemon's).
    by_user: HashMap<u32, usize>,
}

impl HandleTable {
    pub fn new(daemon_uid: u32, per_user: usize) -> Self {
        HandleTable {
            next: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
            daemon_uid,
            per_user,
        }
    }

    /// Registers an open `file` of `inode` by `opener`, counted against uid `account`;
    /// returns its handle number and the handle. ENFILE when `account` holds as many
    /// handles as one user may.
    pub fn insert(
        &self,
        inode: Arc<Inode>,
        opener: Caller,
        account: u32,
        file: OwnedFd,
    ) -> std::io::Result<(u64, Arc<Handle>)> {
        let mut open = self.open.lock();
        if account != self.daemon_uid {
            let held = open.by_user.entry(account).or_default();
            if *held >= self.per_user {
                drop(open);
                log::warn!(
                    "uid {} holds {} open files through the mount; refusing more",
                    account,
                    self.per_user
                );
                return Err(std::io::Error::from_raw_os_error(libc::ENFILE));
            }
            *held += 1;
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let state = match open.states.get(&inode.id).and_then(Weak::upgrade) {
            Some(state) => state,
            None => {
                let state = Arc::new(InodeOpenState::default());
                open.states.insert(inode.id, Arc::downgrade(&state));
                state
            }
        };
        let handle = Arc::new(Handle::new(inode, opener, account, state, file));
        open.handles.insert(fh, handle.clone());
        Ok((fh, handle))
    }

    /// The handle for `fh`, or `EBADF`.
    pub fn get(&self, fh: u64) -> std::io::Result<Arc<Handle>> {
        self.open
            .lock()
            .handles
            .get(&fh)
            .cloned()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Removes `fh`; its descriptor closes when the last in-flight request drops it.
    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        let mut open = self.open.lock();
        let handle = open.handles.remove(&fh)?;
        if let Some(held) = open.by_user.get_mut(&handle.account) {
            *held -= 1;
            if *held == 0 {
                open.by_user.remove(&handle.account);
            }
        }
        // The last handle object of its inode: the state goes with it.
        if Arc::strong_count(&handle.open_state) == 1 {
            open.states.remove(&handle.inode.id);
        }
        Some(handle)
    }

    pub fn count(&self) -> usize {
        self.open.lock().handles.len()
    }
}
