//! `-o idmap`: keeping the agent to what the kernel checked.
//!
//! With FUSE_ALLOW_IDMAP most requests come without the caller's ids, and the daemon
//! serves them as the agent (see [`crate::creds`]) on the strength of the kernel's
//! permission checks (`default_permissions`). Those checks use the owner and mode the
//! kernel cached, and a process changing BACKING directly can make them stale: a file
//! chowned to root is still the former owner's to the kernel until it asks again. So the
//! daemon remembers the owner, group and permission bits it last reported for each node,
//! and before the agent acts on a node (or in a directory) it compares them with the
//! backing object as it is now. A difference means the kernel decided on stale
//! attributes: the daemon tells it so (`NOTIFY_INVAL_INODE`) and answers ESTALE, which
//! makes the kernel look the path up again and check anew (a call on an open descriptor,
//! like `fchmod`, returns ESTALE once).
//!
//! Deleting or renaming in a sticky directory also depends on who owns the entry. The
//! kernel is told to trust names in a sticky directory for no time at all, so it looks
//! the entry up (fresh attributes) just before it checks; the daemon then makes sure the
//! object at that name is still the node it reported, with the owner it reported.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::ffi::CString;
use std::hash::BuildHasher;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use parking_lot::Mutex;

use crate::creds::{Caller, Role};
use crate::fs::{Fs, errno};
use crate::inode::{Key, NodeId, ROOT_ID};
use crate::sys;

/// What permission checks read of a node: owner, group, type, permission and sticky
/// bits, and the access ACL (as a keyed hash). Set-id bits are left out: no check reads
/// them, and writes drop them without the kernel hearing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    uid: u32,
    gid: u32,
    mode: u32,
    acl: u64,
}

/// How a reply's attributes reach the kernel's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Always, or the kernel holds nothing for the node (LOOKUP, GETATTR, SETATTR,
    /// CREATE...: one reply, to one request).
    Whole,
    /// Perhaps not: an entry of a READDIRPLUS reply, which may not fit, or be dropped by
    /// the kernel. Recorded only for a node without a record.
    IfFirst,
}

const SHARDS: usize = 16;

/// The fingerprint last reported to the kernel for each node it holds.
pub(crate) struct Reported {
    shards: [Mutex<HashMap<NodeId, Fingerprint>>; SHARDS],
    /// Keys the ACL hash, so that no ACL can be made to hash as another.
    hasher: RandomState,
}

impl Reported {
    pub(crate) fn new() -> Self {
        Reported {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    /// The fingerprint of the object of `fd`, whose `stat` is `st`.
    fn fingerprint(&self, fd: &OwnedFd, st: &libc::stat) -> Fingerprint {
        Fingerprint {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & (libc::S_IFMT | libc::S_ISVTX | 0o777),
            acl: self.hasher.hash_one(access_acl(fd)),
        }
    }

    fn shard(&self, id: NodeId) -> &Mutex<HashMap<NodeId, Fingerprint>> {
        &self.shards[id as usize % SHARDS]
    }

    fn get(&self, id: NodeId) -> Option<Fingerprint> {
        self.shard(id).lock().get(&id).copied()
    }
}

/// The access ACL of the object of `fd` (`None` without one, or where it cannot be read).
fn access_acl(fd: &OwnedFd) -> Option<Vec<u8>> {
    let path = sys::proc_fd_path(fd.as_fd());
    let name = c"system.posix_acl_access";
    let mut buf = vec![0u8; 256];
    loop {
        match sys::getxattr(&path, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Some(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 16 => {
                buf.resize(buf.len() * 16, 0);
            }
            Err(_) => return None,
        }
    }
}

impl Fs {
    /// Records the attributes of node `id` (its `stat`, `st`) that a reply is about to
    /// give the kernel.
    pub fn note_reported(&self, id: NodeId, st: &libc::stat, applied: Applied) {
        let Some(reported) = &self.reported else {
            return;
        };
        let Ok(fd) = self.path_fd_of(id) else {
            return;
        };
        let fingerprint = reported.fingerprint(&fd, st);
        let mut shard = reported.shard(id).lock();
        if applied == Applied::Whole || !shard.contains_key(&id) {
            shard.insert(id, fingerprint);
        }
    }

    /// Drops the record of a node the kernel forgot, or whose reply did not reach it
    /// (the kernel may hold older attributes: the next check finds no record and makes
    /// it look again).
    pub fn forget_reported(&self, id: NodeId) {
        if let Some(reported) = &self.reported {
            reported.shard(id).lock().remove(&id);
        }
    }

    /// Whether names in directory `id` must be looked up again at every use: it is
    /// sticky (or was never reported, and may be).
    pub fn names_need_fresh_lookup(&self, id: NodeId) -> bool {
        self.reported
            .as_ref()
            .is_some_and(|reported| reported.get(id).is_none_or(|f| f.mode & libc::S_ISVTX != 0))
    }

    /// Before the agent (or a mapped creator) acts on node `id` (`fd` its descriptor):
    /// ESTALE, and the kernel told, if the node's owner or mode is not what the kernel
    /// was last told.
    pub(crate) fn check_as_seen(
        &self,
        caller: &Caller,
        id: NodeId,
        fd: &OwnedFd,
    ) -> io::Result<()> {
        let Some(reported) = &self.reported else {
            return Ok(());
        };
        if self.creds.role(caller) == Role::Caller {
            return Ok(());
        }
        let now = reported.fingerprint(fd, &sys::fstat(fd.as_fd())?);
        if reported.get(id) != Some(now) {
            return Err(self.stale(id));
        }
        Ok(())
    }

    /// Before the agent removes or renames `name` in directory `parent` (already checked
    /// with [`Self::check_as_seen`]): in a sticky directory, ESTALE unless the object
    /// there is a node the kernel holds, with the owner and mode it was told.
    pub(crate) fn check_entry_as_seen(
        &self,
        caller: &Caller,
        parent: NodeId,
        parent_fd: &OwnedFd,
        name: &CString,
    ) -> io::Result<()> {
        let Some(reported) = &self.reported else {
            return Ok(());
        };
        if self.creds.role(caller) == Role::Caller || !self.names_need_fresh_lookup(parent) {
            return Ok(());
        }
        let st = match sys::statx(parent_fd.as_fd(), name, 0) {
            Ok(st) => st,
            // Nothing there: the call itself reports it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let id = self.node_of(parent_fd, name, &st)?;
        let fingerprint = |id| {
            let fd = self.path_fd_of(id).ok()?;
            Some(reported.fingerprint(&fd, &st.st))
        };
        match id {
            Some(id) if reported.get(id).is_some() && reported.get(id) == fingerprint(id) => Ok(()),
            Some(id) => Err(self.stale(id)),
            None => Err(self.stale(parent)),
        }
    }

    /// The node the kernel holds for the object `st` at `name` in `dir`, if any.
    fn node_of(
        &self,
        dir: &OwnedFd,
        name: &CString,
        st: &sys::StatMount,
    ) -> io::Result<Option<NodeId>> {
        if crate::fs::ident(st) == self.root_ident {
            return Ok(Some(ROOT_ID));
        }
        if let Some(id) = self.fds.pinned(crate::fs::ident(st)) {
            return Ok(Some(id));
        }
        if self.uses_file_handles() && st.mnt_id == self.root_mnt {
            let (handle_type, bytes) = sys::name_to_handle_at(dir.as_fd(), name, 0)?;
            return Ok(self.inodes.known(Key::Handle(handle_type, &bytes)));
        }
        Ok(self.inodes.known(Key::Pinned {
            mnt: st.mnt_id,
            dev: st.st.st_dev,
            ino: st.st.st_ino,
        }))
    }

    /// The kernel's attributes of `id` are stale: it is told so, and the request gets
    /// ESTALE.
    fn stale(&self, id: NodeId) -> io::Error {
        self.stats.count(&self.stats.idmap_stale, 1);
        self.invalidate_attributes(id);
        errno(libc::ESTALE)
    }
}
