//! `-o idmap`: keeping the agent to what the kernel checked.
//!
//! With FUSE_ALLOW_IDMAP most requests come without the caller's ids, and the daemon
//! serves them as the agent (see [`crate::creds`]) on the strength of the kernel's
//! permission checks (`default_permissions`). Those checks use the owner, mode and ACL
//! the kernel cached, and a process changing BACKING directly can make them stale: a
//! file chowned to root is still the former owner's to the kernel until it asks again.
//!
//! So the daemon keeps, for each node, the attributes (owner, group, permission and
//! sticky bits, a keyed hash of the access ACL) the kernel may hold, and before the
//! agent acts on a node (or in a directory) it compares them with the backing object as
//! it is now. "May hold" is a set, not one value: the kernel drops the attributes of a
//! LOOKUP, GETATTR or listing reply that races with a local change of the inode (a write
//! bumps `attr_version`; so does another reply), so any such reply sent may or may not
//! be what the kernel holds. Only a SETATTR reply (applied under the inode lock) and a
//! reply that introduces a node id the kernel never held are applied for sure; they make
//! the set that one value.
//!
//! The agent may act if the object now allows at least what every attribute set the
//! kernel may hold allows ([`Fingerprint::allows_no_more_than`]): same owner, group and
//! ACL, no permission bit taken away, no sticky bit added. Then whatever the kernel let
//! through, the backing object as it is lets through natively. A change that only adds
//! permission (`chmod 755` to `775`) is thus taken in stride. Otherwise (an owner
//! changed, a permission taken away) the node is *retired*: the kernel keeps it until it
//! forgets it, but every request on it gets ESTALE, and the next lookup of the object
//! makes a new node id, which the kernel takes with fresh attributes. ESTALE makes the
//! kernel walk the path again with a forced lookup, which meets the new node. What the
//! kernel does not walk again (a working directory, a directory descriptor, the root of
//! a bind mount, a descriptor opened before) keeps getting ESTALE: failing closed is the
//! price of a restriction made behind the kernel's back. The mount root cannot get
//! another node id; it takes what the backing root is now.
//!
//! Deleting or renaming in a sticky directory also depends on who owns the entry. The
//! kernel is told to trust names in a sticky directory for no time at all, so it looks
//! the entry up just before it checks; the daemon then makes sure the object at that
//! name is a node the kernel holds, under the same rule. The same goes for a directory
//! moved to another parent (the kernel checks write permission on it).

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

impl Fingerprint {
    /// Whether every check that passes on `self` passes on `now` too, for any caller:
    /// same owner, group, type and ACL; every permission bit of `self` in `now`; no
    /// sticky bit in `now` that `self` lacks.
    fn allows_no_more_than(&self, now: &Fingerprint) -> bool {
        let type_bits = libc::S_IFMT;
        self.uid == now.uid
            && self.gid == now.gid
            && self.acl == now.acl
            && self.mode & type_bits == now.mode & type_bits
            && self.mode & 0o777 & !now.mode == 0
            && now.mode & libc::S_ISVTX & !self.mode == 0
    }
}

/// The attribute sets the kernel may hold of a node, at most this many (more: the node
/// is treated as changed and retired at its next check).
const HELD_LIMIT: usize = 8;

/// How sure it is that a reply's attributes reach the kernel's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A SETATTR reply: applied under the inode lock, always.
    Surely,
    /// Any other reply (LOOKUP, GETATTR, CREATE, a listing entry...): applied if the node
    /// is new to the kernel, maybe dropped otherwise. It carries the [`Fs::reply_epoch`]
    /// read when its request arrived: a request that arrived before a SETATTR reply was
    /// recorded was sent before the kernel applied that reply, so whichever of the two
    /// the kernel applies last, it ends with the SETATTR's attributes, and this reply
    /// adds nothing it may hold.
    IfNew(u64),
}

/// What the kernel may hold of a node.
struct Held {
    fingerprints: Vec<Fingerprint>,
    /// The [`Fs::reply_epoch`] of the last SETATTR reply recorded for it.
    surely_at: u64,
}

const SHARDS: usize = 16;

/// The fingerprint last reported to the kernel for each node it holds.
pub(crate) struct Reported {
    shards: [Mutex<HashMap<NodeId, Held>>; SHARDS],
    /// Counts SETATTR replies recorded (see [`Applied::IfNew`]).
    epoch: std::sync::atomic::AtomicU64,
    /// Keys the ACL hash, so that no ACL can be made to hash as another.
    hasher: RandomState,
}

impl Reported {
    pub(crate) fn new() -> Self {
        Reported {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            epoch: std::sync::atomic::AtomicU64::new(0),
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

    fn shard(&self, id: NodeId) -> &Mutex<HashMap<NodeId, Held>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Whether the object, with fingerprint `now`, allows no less than anything the
    /// kernel may hold of node `id` (false if nothing is known of it).
    fn covers(&self, id: NodeId, now: &Fingerprint) -> bool {
        self.shard(id).lock().get(&id).is_some_and(|held| {
            let held = &held.fingerprints;
            !held.is_empty()
                && held.len() <= HELD_LIMIT
                && held.iter().all(|h| h.allows_no_more_than(now))
        })
    }

    /// Makes `fingerprint` the one thing the kernel holds of `id`.
    fn set(&self, id: NodeId, fingerprint: Fingerprint) {
        let mut shard = self.shard(id).lock();
        let surely_at = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        shard.insert(
            id,
            Held {
                fingerprints: vec![fingerprint],
                surely_at,
            },
        );
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
        let arrived_at = match applied {
            Applied::Surely => return reported.set(id, fingerprint),
            Applied::IfNew(epoch) => epoch,
        };
        let mut shard = reported.shard(id).lock();
        // Room for the one set nearly every node ever has (a default `Vec` would make
        // room for four at the first push: 70 more bytes per node).
        let held = shard.entry(id).or_insert_with(|| Held {
            fingerprints: Vec::with_capacity(1),
            surely_at: 0,
        });
        if held.surely_at > arrived_at {
            return;
        }
        if !held.fingerprints.contains(&fingerprint) && held.fingerprints.len() <= HELD_LIMIT {
            held.fingerprints.push(fingerprint);
        }
    }

    /// Records what an agent's own change of node `id` made of it, where the kernel
    /// learns the change without a reply that carries attributes (an ACL set: it forgets
    /// its cached ACL and asks again; the mode bits that change with it are the ACL's
    /// mask, which the kernel then takes from the ACL).
    pub(crate) fn note_changed(&self, id: NodeId, fd: &OwnedFd) {
        let Some(reported) = &self.reported else {
            return;
        };
        if let Ok(st) = sys::fstat(fd.as_fd()) {
            reported.set(id, reported.fingerprint(fd, &st));
        }
    }

    /// The epoch a request arriving now carries (see [`Applied::IfNew`]).
    pub fn reply_epoch(&self) -> u64 {
        self.reported.as_ref().map_or(0, |reported| {
            reported.epoch.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// The kernel dropped an inode of node `id` (FORGET): a reply still on its way may
    /// build a new one from attributes older than the last SETATTR, so such replies
    /// count again.
    pub(crate) fn kernel_dropped_an_inode(&self, id: NodeId) {
        if let Some(reported) = &self.reported
            && let Some(held) = reported.shard(id).lock().get_mut(&id)
        {
            held.surely_at = 0;
        }
    }

    /// Drops the record of a node the kernel forgot.
    pub(crate) fn forget_reported(&self, id: NodeId) {
        if let Some(reported) = &self.reported {
            reported.shard(id).lock().remove(&id);
        }
    }

    /// Whether names in directory `id` must be looked up again at every use: it is
    /// sticky (or was never reported, and may be).
    pub fn names_need_fresh_lookup(&self, id: NodeId) -> bool {
        self.reported.as_ref().is_some_and(|reported| {
            reported.shard(id).lock().get(&id).is_none_or(|held| {
                held.fingerprints.is_empty()
                    || held
                        .fingerprints
                        .iter()
                        .any(|f| f.mode & libc::S_ISVTX != 0)
            })
        })
    }

    /// Before the agent (or a mapped creator) acts on node `id` (`fd` its descriptor):
    /// ESTALE if the node is retired, or if the object allows less than something the
    /// kernel may hold of it (the node is retired then).
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
        if self.inodes.is_retired(id) {
            return Err(self.stale(id));
        }
        if !reported.covers(id, &now) {
            if id == ROOT_ID {
                // Cannot be retired: it is told to look again, and takes the root as it is.
                reported.set(id, now);
            }
            return Err(self.stale(id));
        }
        Ok(())
    }

    /// Before the agent removes, renames or moves `name` in directory `parent` (already
    /// checked with [`Self::check_as_seen`]): in a sticky directory, or when `moving` it
    /// to another directory, ESTALE unless the object there is a node the kernel holds,
    /// allowing no less than the kernel may hold of it.
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
        let sticky = self.names_need_fresh_lookup(parent);
        if self.creds.role(caller) == Role::Caller || !(moving || sticky) {
            return Ok(());
        }
        let st = match sys::statx(parent_fd.as_fd(), name, 0) {
            Ok(st) => st,
            // Nothing there: the call itself reports it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Only a directory's own permission counts for a move.
        if !sticky && st.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        let Some(id) = self.node_of(parent_fd, name, &st)? else {
            // Not a node the kernel holds: its entry for the name is stale.
            self.stats.count(&self.stats.idmap_stale, 1);
            return Err(errno(libc::ESTALE));
        };
        let fd = self.path_fd_of(id)?;
        let now = reported.fingerprint(&fd, &st.st);
        if self.inodes.is_retired(id) || !reported.covers(id, &now) {
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
