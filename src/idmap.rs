//! `-o idmap`: keeping the agent to what the kernel checked.
//!
//! With FUSE_ALLOW_IDMAP most requests come without the caller's ids, and the daemon
//! serves them as the agent (see [`crate::creds`]) on the strength of the kernel's
//! permission checks (`default_permissions`). Those checks use the owner, mode and ACL
//! the kernel cached, and a process changing BACKING directly can make them stale: a
//! file chowned to root is still the former owner's to the kernel until it asks again.
//!
//! So the daemon keeps, for each node, a record of the owner, group, permission bits and
//! access ACL the kernel holds, and before the agent acts on a node (or in a directory)
//! it compares the record with the backing object as it is now. The record must be
//! what the kernel holds, not merely what it was sent: the kernel drops the attributes
//! of a LOOKUP, GETATTR or listing reply that races with a local change of the inode (a
//! write bumps `attr_version`), and a listing entry may not fit its reply. Only two
//! kinds of reply are always applied: a SETATTR reply (under the inode lock), and any
//! reply that introduces a node id the kernel has never held (a new inode takes its
//! attributes whole). So a record is set by those, and by nothing else:
//!
//! - A reply for a recorded node that shows other attributes than the record (the object
//!   changed behind the kernel's back) *retires* the node: the kernel keeps it until it
//!   forgets it, but every request on it gets ESTALE, and the next lookup of the object
//!   makes a new node id, which the kernel takes with fresh attributes. ESTALE makes the
//!   kernel walk the path again with a forced lookup, which meets the new node; a call on
//!   a descriptor opened before the change (`fchmod`, `fsetxattr`) keeps getting ESTALE.
//! - A check that finds the backing object different from the record retires the node
//!   the same way.
//! - A reply that cannot be delivered retires its node.
//!
//! Deleting or renaming in a sticky directory also depends on who owns the entry. The
//! kernel is told to trust names in a sticky directory for no time at all, so it looks
//! the entry up just before it checks; the daemon then makes sure the object at that
//! name is a node the kernel holds, with the attributes recorded. The same goes for a
//! directory moved to another parent (the kernel checks write permission on it).

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

/// How sure it is that a reply's attributes reach the kernel's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A SETATTR reply: applied under the inode lock, always.
    Surely,
    /// Any other reply (LOOKUP, GETATTR, CREATE, a listing entry...): applied if the node
    /// is new to the kernel, maybe dropped otherwise.
    IfNew,
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
    /// give the kernel (see the module text).
    pub fn note_reported(&self, id: NodeId, st: &libc::stat, applied: Applied) {
        let Some(reported) = &self.reported else {
            return;
        };
        let Ok(fd) = self.path_fd_of(id) else {
            return;
        };
        let fingerprint = reported.fingerprint(&fd, st);
        let mut shard = reported.shard(id).lock();
        match shard.get(&id) {
            Some(known) if *known == fingerprint => {}
            // The root cannot have another node id: it takes what it is sent.
            Some(_) if applied == Applied::IfNew && id != ROOT_ID => {
                drop(shard);
                self.retire(id);
            }
            _ => {
                shard.insert(id, fingerprint);
            }
        }
    }

    /// Records what an agent's own change of node `id` made of it, where the kernel
    /// learns the change without a reply that carries attributes (an ACL set: it forgets
    /// its cached ACL and attributes and asks again).
    pub(crate) fn note_changed(&self, id: NodeId, fd: &OwnedFd) {
        let Some(reported) = &self.reported else {
            return;
        };
        if self.inodes.is_retired(id) {
            return;
        }
        if let Ok(st) = sys::fstat(fd.as_fd()) {
            let fingerprint = reported.fingerprint(fd, &st);
            reported.shard(id).lock().insert(id, fingerprint);
        }
    }

    /// Drops the record of a node the kernel forgot.
    pub(crate) fn forget_reported(&self, id: NodeId) {
        if let Some(reported) = &self.reported {
            reported.shard(id).lock().remove(&id);
        }
    }

    /// A reply about node `id` could not be delivered: what the kernel holds of it is
    /// unknown from now on.
    pub fn undelivered_reply(&self, id: NodeId) {
        if self.reported.is_some() {
            self.retire(id);
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
    /// ESTALE if the node is retired, or if its owner, mode or ACL is not what the kernel
    /// holds (the node is retired then).
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
        if self.inodes.is_retired(id) || reported.get(id) != Some(now) {
            return Err(self.stale(id));
        }
        Ok(())
    }

    /// Before the agent removes, renames or moves `name` in directory `parent` (already
    /// checked with [`Self::check_as_seen`]): in a sticky directory, or when `moving` it
    /// to another directory, ESTALE unless the object there is a node the kernel holds,
    /// with the attributes recorded.
    pub(crate) fn check_entry_as_seen(
        &self,
        caller: &Caller,
        parent: NodeId,
        parent_fd: &OwnedFd,
        name: &CString,
        moving: bool,
    ) -> io::Result<()> {
        let Some(reported) = &self.reported else {
            return Ok(());
        };
        if self.creds.role(caller) == Role::Caller
            || !(moving || self.names_need_fresh_lookup(parent))
        {
            return Ok(());
        }
        let st = match sys::statx(parent_fd.as_fd(), name, 0) {
            Ok(st) => st,
            // Nothing there: the call itself reports it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Only a directory's own permission counts for a move.
        if !self.names_need_fresh_lookup(parent) && st.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        let Some(id) = self.node_of(parent_fd, name, &st)? else {
            // Not a node the kernel holds: its entry for the name is stale.
            self.stats.count(&self.stats.idmap_stale, 1);
            return Err(errno(libc::ESTALE));
        };
        let fd = self.path_fd_of(id)?;
        if self.inodes.is_retired(id) || reported.get(id) != Some(reported.fingerprint(&fd, &st.st))
        {
            return Err(self.stale(id));
        }
        Ok(())
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
        if let Some(id) = self.fds.pinned(crate::fs::ident(st))
            && !self.inodes.is_retired(id)
        {
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

    /// Retires node `id` (see the module text).
    fn retire(&self, id: NodeId) {
        if self.inodes.retire(id) {
            self.stats.count(&self.stats.idmap_retired, 1);
            // Its cached descriptor would lead lookups of the object back to it.
            self.fds.remove(id);
        }
    }

    /// What the kernel holds of `id` is stale or unknown: the node is retired, the kernel
    /// told, and the request gets ESTALE.
    fn stale(&self, id: NodeId) -> io::Error {
        self.stats.count(&self.stats.idmap_stale, 1);
        self.retire(id);
        self.invalidate_attributes(id);
        errno(libc::ESTALE)
    }
}
