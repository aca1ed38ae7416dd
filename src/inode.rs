//! The inode table: FUSE node ids to backing objects.
//!
//! # Identity
//! An object on the backing root's mount is kept as its file handle (`name_to_handle_at`),
//! not as an open descriptor. A handle names one object for its whole life (it carries
//! the inode's generation, so a reused inode number is another handle), and needs no
//! descriptor: an `O_PATH` descriptor comes from the bounded [`FdCache`] or is reopened
//! from the handle (`open_by_handle_at` on a descriptor of the root). So any number of
//! known inodes costs no descriptors, and the kernel is never asked to forget anything.
//!
//! Where handles cannot be used (the daemon lacks CAP_DAC_READ_SEARCH, as rootless; the
//! backing filesystem cannot make handles; the object is on another mount under
//! BACKING), the inode holds its `O_PATH` descriptor while the kernel knows it, keyed by
//! (mount, device, inode number): the held descriptor keeps the number from being
//! reused. Those descriptors have a budget; see [`InodeTable::descriptor_pressure`].
//!
//! # Node ids
//! Node ids come from a counter and are never reused, so a node id never names two
//! objects, whatever the backing filesystem does with inode numbers. The root is 1. The
//! inode number replies report ([`Inode::ino`]) is the backing `st_ino` for objects on
//! the root's device and a stable synthetic number for other devices (whose numbers
//! would collide with the root device's).
//!
//! # Lookup-count contract
//! Each reply that hands an inode to the kernel (lookup, mknod, mkdir, symlink, link,
//! create, and readdirplus entries other than `.` and `..`) counts one lookup through
//! [`InodeTable::remember`] or [`InodeTable::add_lookup`], made before the reply is sent.
//! FORGET subtracts its count through [`InodeTable::forget`]; at zero the inode leaves the
//! table (and the descriptor cache), and its descriptor, if it holds one, closes once the
//! last in-flight request drops its `Arc`. The root is never removed. An inode kept as a
//! handle is remembered after that as forgotten ("ghost"), with its node id: a file
//! handle made through the mount carries the node id, and the kernel asks the daemon to
//! resolve it again (FUSE_EXPORT_SUPPORT); a later lookup of the object by name gets the
//! same node id back.
//!
//! A node can be *retired* ([`InodeTable::retire`], `-o idmap` only): it keeps its
//! lookups and stays in the table until the kernel forgets it, but no lookup returns it
//! any more, and its object gets a new node id at its next lookup (so one object can
//! have two node ids for a while). A retired node is not remembered as a ghost.
//!
//! # Locking
//! The table's mutex and the descriptor cache's mutex are never held together, across a
//! system call, or across a reply; descriptors are closed after the locks are released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::sys;

/// A FUSE node id.
pub type NodeId = u64;

/// The node id FUSE reserves for the root.
pub const ROOT_ID: NodeId = 1;

/// Synthetic inode numbers (for objects on other devices) have the top bit set.
const SYNTHETIC_INO_BASE: u64 = 1 << 63;

/// A backing file handle: its type and bytes (up to 20 inline, which covers ext4, XFS
/// and btrfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    handle_type: i32,
    bytes: HandleBytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HandleBytes {
    Inline { len: u8, bytes: [u8; 20] },
    Boxed(Box<[u8]>),
}

impl FileHandle {
    pub fn new(handle_type: i32, bytes: &[u8]) -> Self {
        let bytes = if bytes.len() <= 20 {
            let mut inline = [0u8; 20];
            inline[..bytes.len()].copy_from_slice(bytes);
            HandleBytes::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            HandleBytes::Boxed(bytes.into())
        };
        FileHandle { handle_type, bytes }
    }

    pub fn handle_type(&self) -> i32 {
        self.handle_type
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            HandleBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            HandleBytes::Boxed(bytes) => bytes,
        }
    }
}

/// Where an object was found: the identity that decides whether it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// On the root's mount, by file handle.
    Handle(i32, &'a [u8]),
    /// Elsewhere: mount id, device and inode number (held by a descriptor).
    Pinned { mnt: u64, dev: u64, ino: u64 },
}

/// How an inode reaches its backing object.
#[derive(Debug)]
pub enum Identity {
    /// On the root's mount: reopened from the handle when no descriptor is cached.
    Handle(FileHandle),
    /// Its own `O_PATH | O_NOFOLLOW` descriptor, held while the kernel knows the inode
    /// (boxed: the fallback is rare, and every inode pays for the largest variant).
    Descriptor(Box<Pinned>),
}

/// An object held by a descriptor of its own, and where it was found.
#[derive(Debug)]
pub struct Pinned {
    pub fd: Arc<OwnedFd>,
    pub mnt: u64,
    pub dev: u64,
    pub ino: u64,
}

impl Identity {
    /// The identity of an object held by `fd`.
    pub fn pinned(fd: OwnedFd, mnt: u64, dev: u64, ino: u64) -> Self {
        Identity::Descriptor(Box::new(Pinned {
            fd: Arc::new(fd),
            mnt,
            dev,
            ino,
        }))
    }
}

/// One backing object the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    pub id: NodeId,
    /// `S_IFMT` bits of the backing object; the type of an inode never changes.
    pub kind: libc::mode_t,
    /// The inode number replies report.
    pub ino: u64,
    pub identity: Identity,
}

impl Inode {
    fn key(&self) -> Key<'_> {
        match &self.identity {
            Identity::Handle(h) => Key::Handle(h.handle_type, h.bytes()),
            Identity::Descriptor(p) => Key::Pinned {
                mnt: p.mnt,
                dev: p.dev,
                ino: p.ino,
            },
        }
    }

    /// Whether the inode holds a descriptor of its own (counted against the budget).
    pub fn holds_descriptor(&self) -> bool {
        matches!(self.identity, Identity::Descriptor(_))
    }
}

/// What a lookup found: how to keep it, and what it is.
pub struct Found {
    pub identity: Identity,
    pub st: libc::stat,
}

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
}

struct Tables {
    by_id: HashMap<NodeId, Slot>,
    /// Key hash -> node id; a second inode whose key hashes the same goes to `collided`.
    by_key: HashMap<u64, NodeId>,
    collided: HashMap<u64, Vec<NodeId>>,
    next_id: NodeId,
    /// Inode numbers given to objects on other devices. Never shrunk, so an object keeps
    /// its number after the kernel forgets it.
    synthetic: HashMap<(u64, u64), u64>,
    /// When each descriptor-holding inode was last looked up (a table-wide clock), for
    /// pruning; the count of them is the descriptors they hold.
    recency: HashMap<NodeId, u64>,
    clock: u64,
    /// Inodes kept as handles that the kernel forgot, by node id and by key hash, oldest
    /// first in `ghost_order` (see [`InodeTable::revive`]).
    ghosts: HashMap<NodeId, Arc<Inode>>,
    ghost_by_key: HashMap<u64, NodeId>,
    ghost_order: VecDeque<NodeId>,
    /// Nodes the kernel still holds but no lookup returns any more: their object is
    /// found under a new node id (see [`InodeTable::retire`]).
    retired: HashSet<NodeId>,
}

/// Forgotten inodes remembered for file handles made through the mount (about 150 bytes
/// each); past this the oldest are dropped, and their handles become stale.
const GHOST_LIMIT: usize = 1 << 17;

pub struct InodeTable {
    root: Arc<Inode>,
    root_dev: u64,
    hasher: RandomState,
    tables: Mutex<Tables>,
    /// Signalled when a descriptor-holding inode leaves the table.
    descriptor_released: Condvar,
}

impl InodeTable {
    /// Builds the table around the backing root's `O_PATH` descriptor.
    pub fn new(root_fd: OwnedFd) -> io::Result<Self> {
        let st = sys::statx(root_fd.as_fd(), c"", libc::AT_EMPTY_PATH)?;
        let root = Arc::new(Inode {
            id: ROOT_ID,
            kind: st.st.st_mode & libc::S_IFMT,
            ino: st.st.st_ino,
            identity: Identity::pinned(root_fd, st.mnt_id, st.st.st_dev, st.st.st_ino),
        });
        let hasher = RandomState::new();
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        by_key.insert(hasher.hash_one(root.key()), ROOT_ID);
        by_id.insert(
            ROOT_ID,
            Slot {
                inode: root.clone(),
                lookups: 1,
            },
        );
        Ok(InodeTable {
            root,
            root_dev: st.st.st_dev,
            hasher,
            tables: Mutex::new(Tables {
                by_id,
                by_key,
                collided: HashMap::new(),
                next_id: ROOT_ID + 1,
                synthetic: HashMap::new(),
                recency: HashMap::new(),
                clock: 0,
                ghosts: HashMap::new(),
                ghost_by_key: HashMap::new(),
                ghost_order: VecDeque::new(),
                retired: HashSet::new(),
            }),
            descriptor_released: Condvar::new(),
        })
    }

    pub fn root(&self) -> &Arc<Inode> {
        &self.root
    }

    /// The device of the backing root.
    pub fn root_dev(&self) -> u64 {
        self.root_dev
    }

    /// The root's own descriptor (it always holds one).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        match &self.root.identity {
            Identity::Descriptor(p) => p.fd.as_fd(),
            Identity::Handle(_) => unreachable!("the root holds its descriptor"),
        }
    }

    /// The inode for `id`, or `ESTALE` if the kernel refers to one it already forgot.
    pub fn get(&self, id: NodeId) -> io::Result<Arc<Inode>> {
        self.tables
            .lock()
            .by_id
            .get(&id)
            .map(|slot| slot.inode.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// The node id of the object with `key`, if the kernel holds it.
    fn find(&self, t: &Tables, key: Key<'_>) -> Option<NodeId> {
        let hash = self.hasher.hash_one(key);
        let matches = |id: &NodeId| t.by_id.get(id).is_some_and(|s| s.inode.key() == key);
        match t.by_key.get(&hash) {
            Some(id) if matches(id) => Some(*id),
            _ => t
                .collided
                .get(&hash)?
                .iter()
                .copied()
                .find(|id| matches(id)),
        }
    }

    /// The node id of the object `key`, if the table holds it (no lookup is counted).
    pub fn known(&self, key: Key<'_>) -> Option<NodeId> {
        self.find(&self.tables.lock(), key)
    }

    /// Counts one lookup of node `id` if the table holds it (and it is not retired).
    pub fn add_lookup_of(&self, id: NodeId) -> Option<Arc<Inode>> {
        let mut t = self.tables.lock();
        (t.by_id.contains_key(&id) && !t.retired.contains(&id)).then(|| Self::count(&mut t, id))
    }

    /// Retires node `id`: the kernel keeps it until it forgets it, but lookups of its
    /// object from now on make a new node (`-o idmap`: the kernel may hold attributes of
    /// it that the daemon cannot know; a new node id makes the kernel start afresh).
    /// Returns whether it was held and not retired yet.
    pub fn retire(&self, id: NodeId) -> bool {
        if id == ROOT_ID {
            return false;
        }
        let mut t = self.tables.lock();
        let Some(slot) = t.by_id.get(&id) else {
            return false;
        };
        let hash = self.hasher.hash_one(slot.inode.key());
        if !t.retired.insert(id) {
            return false;
        }
        Self::unindex(&mut t, id, hash);
        true
    }

    /// Whether node `id` was retired (see [`Self::retire`]).
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.tables.lock().retired.contains(&id)
    }

    /// Takes node `id` out of the key index (it stays in `by_id`).
    fn unindex(t: &mut Tables, id: NodeId, hash: u64) {
        if t.by_key.get(&hash) == Some(&id) {
            t.by_key.remove(&hash);
            if let Some(others) = t.collided.get_mut(&hash) {
                let promoted = others.pop().expect("no empty lists are kept");
                if others.is_empty() {
                    t.collided.remove(&hash);
                }
                t.by_key.insert(hash, promoted);
            }
        } else if let Some(others) = t.collided.get_mut(&hash) {
            others.retain(|other| *other != id);
            if others.is_empty() {
                t.collided.remove(&hash);
            }
        }
    }

    /// Counts one lookup of the object `key` if the table holds it.
    pub fn remember_known(&self, key: Key<'_>) -> Option<Arc<Inode>> {
        let mut t = self.tables.lock();
        let id = self.find(&t, key)?;
        Some(Self::count(&mut t, id))
    }

    /// Counts one lookup of the object `found` describes, adding it if new. When it is
    /// already known, `found`'s descriptor (if any) is closed after the lock is released.
    pub fn remember(&self, found: Found) -> Arc<Inode> {
        let Found { identity, st } = found;
        let mut t = self.tables.lock();
        let ino = self.reported_ino(&mut t, &st);
        let fresh = Inode {
            id: 0,
            kind: st.st_mode & libc::S_IFMT,
            ino,
            identity,
        };
        if let Some(id) = self.find(&t, fresh.key()) {
            let inode = Self::count(&mut t, id);
            drop(t);
            drop(fresh);
            return inode;
        }
        let hash = self.hasher.hash_one(fresh.key());
        // An object the kernel forgot gets its node id back, so that a file handle made
        // through the mount and the name lead to one node.
        let ghost = t
            .ghost_by_key
            .get(&hash)
            .and_then(|id| t.ghosts.get(id))
            .filter(|ghost| ghost.key() == fresh.key())
            .cloned();
        let inode = match ghost {
            Some(ghost) => {
                Self::unghost(&mut t, ghost.id, hash);
                ghost
            }
            None => {
                let id = t.next_id;
                t.next_id += 1;
                Arc::new(Inode { id, ..fresh })
            }
        };
        let id = inode.id;
        if let std::collections::hash_map::Entry::Vacant(slot) = t.by_key.entry(hash) {
            slot.insert(id);
        } else {
            t.collided.entry(hash).or_default().push(id);
        }
        t.by_id.insert(
            id,
            Slot {
                inode: inode.clone(),
                lookups: 0,
            },
        );
        Self::count(&mut t, id)
    }

    /// Counts a lookup of `id`, which is in the table.
    fn count(t: &mut Tables, id: NodeId) -> Arc<Inode> {
        let slot = t.by_id.get_mut(&id).expect("caller checked the slot");
        slot.lookups += 1;
        let inode = slot.inode.clone();
        if inode.holds_descriptor() && id != ROOT_ID {
            t.clock += 1;
            let now = t.clock;
            t.recency.insert(id, now);
        }
        inode
    }

    /// The inode number replies report for an object with `st`.
    fn reported_ino(&self, t: &mut Tables, st: &libc::stat) -> u64 {
        if st.st_dev == self.root_dev && st.st_ino < SYNTHETIC_INO_BASE {
            return st.st_ino;
        }
        let next = SYNTHETIC_INO_BASE + t.synthetic.len() as u64;
        *t.synthetic.entry((st.st_dev, st.st_ino)).or_insert(next)
    }

    /// Counts one more lookup of an inode the kernel already holds (e.g. after `link`).
    pub fn add_lookup(&self, inode: &Arc<Inode>) {
        let mut t = self.tables.lock();
        if t.by_id.contains_key(&inode.id) {
            Self::count(&mut t, inode.id);
            return;
        }
        // Forgotten in between: put it back (its node id is still its own).
        let hash = self.hasher.hash_one(inode.key());
        Self::unghost(&mut t, inode.id, hash);
        match t.by_key.get(&hash) {
            None => {
                t.by_key.insert(hash, inode.id);
            }
            Some(_) => t.collided.entry(hash).or_default().push(inode.id),
        }
        t.by_id.insert(
            inode.id,
            Slot {
                inode: inode.clone(),
                lookups: 0,
            },
        );
        Self::count(&mut t, inode.id);
    }

    /// Subtracts `count` lookups; at zero the inode leaves the table and is returned (the
    /// caller drops it outside any lock).
    pub fn forget(&self, id: NodeId, count: u64) -> Option<Arc<Inode>> {
        if id == ROOT_ID {
            return None;
        }
        let mut t = self.tables.lock();
        let slot = t.by_id.get_mut(&id)?;
        if slot.lookups > count {
            slot.lookups -= count;
            return None;
        }
        let slot = t.by_id.remove(&id)?;
        let hash = self.hasher.hash_one(slot.inode.key());
        let retired = t.retired.remove(&id);
        if !retired {
            Self::unindex(&mut t, id, hash);
        }
        if t.recency.remove(&id).is_some() {
            self.descriptor_released.notify_all();
        }
        // A retired node is not revived: its object has a node of its own.
        if !retired && matches!(slot.inode.identity, Identity::Handle(_)) {
            t.ghosts.insert(id, slot.inode.clone());
            t.ghost_by_key.insert(hash, id);
            t.ghost_order.push_back(id);
            while t.ghosts.len() > GHOST_LIMIT {
                let Some(oldest) = t.ghost_order.pop_front() else {
                    break;
                };
                if let Some(gone) = t.ghosts.remove(&oldest) {
                    let gone_hash = self.hasher.hash_one(gone.key());
                    if t.ghost_by_key.get(&gone_hash) == Some(&oldest) {
                        t.ghost_by_key.remove(&gone_hash);
                    }
                }
            }
        }
        Some(slot.inode)
    }

    fn unghost(t: &mut Tables, id: NodeId, hash: u64) {
        t.ghosts.remove(&id);
        if t.ghost_by_key.get(&hash) == Some(&id) {
            t.ghost_by_key.remove(&hash);
        }
        // Its place in `ghost_order` is skipped when it comes up.
        if t.ghost_order.len() > 2 * GHOST_LIMIT {
            let ghosts = &t.ghosts;
            t.ghost_order.retain(|id| ghosts.contains_key(id));
        }
    }

    /// The inode the kernel forgot under node id `id`, taken back out of the forgotten
    /// ones (not yet counted: [`Self::add_lookup`] puts it back in the table). The kernel
    /// asks for it (a LOOKUP of "." in `id`) when a file handle made through the mount
    /// is opened after it dropped the inode (`open_by_handle_at`, an NFS export).
    pub fn revive(&self, id: NodeId) -> Option<Arc<Inode>> {
        let mut t = self.tables.lock();
        let ghost = t.ghosts.get(&id)?.clone();
        let hash = self.hasher.hash_one(ghost.key());
        Self::unghost(&mut t, id, hash);
        Some(ghost)
    }

    /// Number of inodes in the table (the root included), and how many of them hold a
    /// descriptor of their own.
    pub fn count_inodes(&self) -> (usize, usize) {
        let t = self.tables.lock();
        (t.by_id.len(), t.recency.len())
    }

    /// Descriptor-holding inodes now, for the budget.
    pub fn descriptor_pressure(&self) -> usize {
        self.tables.lock().recency.len()
    }

    /// Waits up to `limit` until fewer than `budget` inodes hold descriptors; returns
    /// whether they do.
    pub fn wait_for_descriptors(&self, budget: usize, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut t = self.tables.lock();
        while t.recency.len() >= budget {
            if self
                .descriptor_released
                .wait_until(&mut t, deadline)
                .timed_out()
            {
                return t.recency.len() < budget;
            }
        }
        true
    }

    /// The `n` descriptor-holding inodes least recently looked up, files before
    /// directories (a directory is in use while the kernel holds any of its entries).
    pub fn least_recent_descriptors(&self, n: usize) -> Vec<NodeId> {
        let t = self.tables.lock();
        let mut candidates: Vec<(bool, u64, NodeId)> = t
            .recency
            .iter()
            .filter_map(|(id, tick)| {
                let slot = t.by_id.get(id)?;
                Some((slot.inode.kind == libc::S_IFDIR, *tick, *id))
            })
            .collect();
        drop(t);
        let n = n.min(candidates.len());
        if n == 0 {
            return Vec::new();
        }
        candidates.select_nth_unstable(n - 1);
        candidates.truncate(n);
        candidates.sort_unstable();
        candidates.into_iter().map(|(_, _, id)| id).collect()
    }
}

/// A bounded cache of `O_PATH` descriptors of inodes kept as handles, evicted by the CLOCK
/// rule (an entry used since the hand last passed survives one more round).
///
/// A cached descriptor keeps its object from being freed, so its (mount, device, inode
/// number) names that object for as long as it is cached: [`FdCache::pinned`] finds a
/// known inode by those numbers alone, which is what makes a lookup of a cached object
/// cost no more than a `stat`.
pub struct FdCache {
    capacity: usize,
    inner: Mutex<Clock>,
}

#[derive(Default)]
struct Clock {
    slots: Vec<CacheSlot>,
    index: HashMap<NodeId, usize>,
    by_ino: HashMap<(u64, u64, u64), NodeId>,
    hand: usize,
    hits: u64,
    misses: u64,
}

struct CacheSlot {
    id: NodeId,
    fd: Arc<OwnedFd>,
    ident: (u64, u64, u64),
    referenced: bool,
}

impl FdCache {
    pub fn new(capacity: usize) -> Self {
        FdCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Clock::default()),
        }
    }

    /// The cached descriptor of `id` (a hit), if there is one; a miss is counted.
    pub fn get(&self, id: NodeId) -> Option<Arc<OwnedFd>> {
        let mut c = self.inner.lock();
        match c.index.get(&id).copied() {
            Some(i) => {
                c.hits += 1;
                c.slots[i].referenced = true;
                Some(c.slots[i].fd.clone())
            }
            None => {
                c.misses += 1;
                None
            }
        }
    }

    /// The inode whose cached descriptor has (mount, device, inode number) `ident`.
    pub fn pinned(&self, ident: (u64, u64, u64)) -> Option<NodeId> {
        let mut c = self.inner.lock();
        let id = *c.by_ino.get(&ident)?;
        c.hits += 1;
        let i = c.index[&id];
        c.slots[i].referenced = true;
        Some(id)
    }

    /// Caches `fd` (of an object with `ident`) for `id`, evicting another entry if full.
    pub fn insert(&self, id: NodeId, fd: Arc<OwnedFd>, ident: (u64, u64, u64)) {
        let evicted;
        {
            let mut c = self.inner.lock();
            if c.index.contains_key(&id) {
                return;
            }
            let slot = CacheSlot {
                id,
                fd,
                ident,
                referenced: true,
            };
            if c.slots.len() < self.capacity {
                c.slots.push(slot);
                let i = c.slots.len() - 1;
                c.index.insert(id, i);
                c.by_ino.insert(ident, id);
                return;
            }
            let victim = loop {
                let hand = c.hand;
                c.hand = (hand + 1) % c.slots.len();
                if std::mem::take(&mut c.slots[hand].referenced) {
                    continue;
                }
                break hand;
            };
            let old = std::mem::replace(&mut c.slots[victim], slot);
            c.index.remove(&old.id);
            if c.by_ino.get(&old.ident) == Some(&old.id) {
                c.by_ino.remove(&old.ident);
            }
            c.index.insert(id, victim);
            c.by_ino.insert(ident, id);
            evicted = old;
        }
        // The descriptor closes here, outside the lock.
        drop(evicted);
    }

    /// Drops the cached descriptor of `id`, if any.
    pub fn remove(&self, id: NodeId) {
        let removed = {
            let mut c = self.inner.lock();
            let Some(i) = c.index.remove(&id) else {
                return;
            };
            let old = c.slots.swap_remove(i);
            if c.by_ino.get(&old.ident) == Some(&id) {
                c.by_ino.remove(&old.ident);
            }
            if i < c.slots.len() {
                let moved = c.slots[i].id;
                c.index.insert(moved, i);
            }
            if c.hand >= c.slots.len() {
                c.hand = 0;
            }
            old
        };
        drop(removed);
    }

    /// Drops the cached descriptor of the object with `ident` (its last name is gone: the
    /// cache must not keep its blocks).
    pub fn remove_object(&self, ident: (u64, u64, u64)) {
        let id = self.inner.lock().by_ino.get(&ident).copied();
        if let Some(id) = id {
            self.remove(id);
        }
    }

    /// Drops cached descriptors of objects that have no name left (deleted directly in
    /// BACKING, where the daemon does not see it happen): the cache must not keep their
    /// blocks. `unlinked` is asked about each cached descriptor, outside the lock. One
    /// used since the last call gets a second chance (its mark is cleared): a lookup has
    /// just handed the kernel that object, and an open of it that follows at once must
    /// find it, deleted or not, as a native open of a just-resolved name does.
    pub fn drop_unlinked(&self, unlinked: impl Fn(&OwnedFd) -> bool) -> usize {
        let cached: Vec<(NodeId, Arc<OwnedFd>)> = {
            let mut c = self.inner.lock();
            c.slots
                .iter_mut()
                .filter_map(|s| {
                    let recent = std::mem::replace(&mut s.referenced, false);
                    (!recent).then(|| (s.id, s.fd.clone()))
                })
                .collect()
        };
        let gone: Vec<NodeId> = cached
            .iter()
            .filter(|(_, fd)| unlinked(fd))
            .map(|(id, _)| *id)
            .collect();
        drop(cached);
        for id in &gone {
            self.remove(*id);
        }
        gone.len()
    }

    /// `(hits, misses, cached)`.
    pub fn counters(&self) -> (u64, u64, usize) {
        let c = self.inner.lock();
        (c.hits, c.misses, c.slots.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn an_inode_takes_56_bytes() {
        // Every inode the kernel knows costs this in an Arc (72 bytes, an 80-byte malloc
        // chunk), plus its two table entries: 192 bytes of RSS each at a million inodes.
        assert_eq!(std::mem::size_of::<Inode>(), 56);
    }

    fn open_path(path: &std::path::Path) -> (OwnedFd, sys::StatMount) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sys::openat(None, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        let st = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH).unwrap();
        (fd, st)
    }

    fn by_handle(path: &std::path::Path) -> Found {
        let (fd, st) = open_path(path);
        let (ty, bytes) = sys::name_to_handle_at(fd.as_fd(), c"", libc::AT_EMPTY_PATH).unwrap();
        Found {
            identity: Identity::Handle(FileHandle::new(ty, &bytes)),
            st: st.st,
        }
    }

    fn by_descriptor(path: &std::path::Path) -> Found {
        let (fd, st) = open_path(path);
        Found {
            identity: Identity::pinned(fd, st.mnt_id, st.st.st_dev, st.st.st_ino),
            st: st.st,
        }
    }

    fn table(dir: &std::path::Path) -> InodeTable {
        InodeTable::new(open_path(dir).0).unwrap()
    }

    #[test]
    fn a_forgotten_handle_inode_keeps_its_node_id_for_revival_and_relookup() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let t = table(dir.path());
        let a = t.remember(by_handle(&dir.path().join("a")));
        let b = t.remember(by_handle(&dir.path().join("b")));
        assert!(t.forget(a.id, 1).is_some() && t.forget(b.id, 1).is_some());
        assert_eq!(t.get(a.id).unwrap_err().raw_os_error(), Some(libc::ESTALE));
        // Looked up by name again: the same node id.
        assert_eq!(t.remember(by_handle(&dir.path().join("a"))).id, a.id);
        assert!(t.revive(a.id).is_none(), "a is known again, not a ghost");
        // Asked for by node id (an exported file handle): the ghost comes back once.
        let revived = t.revive(b.id).expect("b is remembered");
        assert_eq!((revived.id, revived.ino), (b.id, b.ino));
        assert!(t.revive(b.id).is_none());
        t.add_lookup(&revived);
        assert!(t.get(b.id).is_ok());
        // Descriptor-held inodes cannot be reopened once forgotten: no ghost.
        let d_path = dir.path().join("d");
        std::fs::write(&d_path, b"").unwrap();
        let d = t.remember(by_descriptor(&d_path));
        t.forget(d.id, 1);
        assert!(t.revive(d.id).is_none());
    }

    #[test]
    fn a_retired_node_stays_until_forgotten_while_its_object_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"x").unwrap();
        let t = table(dir.path());
        let old = t.remember(by_handle(&path));
        assert!(t.retire(old.id) && !t.retire(old.id) && !t.retire(ROOT_ID));
        assert!(t.is_retired(old.id) && t.get(old.id).is_ok());
        assert!(
            t.add_lookup_of(old.id).is_none(),
            "no lookup returns a retired node"
        );
        let new = t.remember(by_handle(&path));
        assert_ne!(new.id, old.id);
        assert_eq!(t.remember(by_handle(&path)).id, new.id);
        // Forgetting the retired node leaves the new one alone, and leaves no ghost.
        assert!(t.forget(old.id, 1).is_some());
        assert!(!t.is_retired(old.id) && t.revive(old.id).is_none());
        assert_eq!(t.remember(by_handle(&path)).id, new.id);
        assert_eq!(t.count_inodes(), (2, 0));
    }

    #[test]
    fn hard_links_share_a_node_and_node_ids_report_the_backing_inode_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let t = table(dir.path());
        let a = t.remember(by_handle(&dir.path().join("a")));
        let b = t.remember(by_handle(&dir.path().join("b")));
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, ROOT_ID);
        assert_eq!(a.ino, open_path(&dir.path().join("a")).1.st.st_ino);
        assert_eq!(t.count_inodes(), (2, 0));
    }

    #[test]
    fn a_reused_inode_number_is_a_new_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        let t = table(dir.path());
        let old = t.remember(by_handle(&path));
        // Delete and recreate until the backing filesystem hands the number out again
        // (ext4 does within a few tries, unless other processes take the free inode).
        let mut reused = None;
        for _ in 0..20_000 {
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"new").unwrap();
            if open_path(&path).1.st.st_ino == old.ino {
                reused = Some(t.remember(by_handle(&path)));
                break;
            }
        }
        let new = reused.expect("the backing filesystem reused the inode number");
        assert_eq!(new.ino, old.ino);
        assert_ne!(new.id, old.id, "two objects under one node id");
    }

    #[test]
    fn forget_drops_the_inode_only_when_every_lookup_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let t = table(dir.path());
        let mut id = 0;
        for _ in 0..3 {
            id = t.remember(by_descriptor(&dir.path().join("a"))).id;
        }
        assert_eq!(t.count_inodes(), (2, 1));
        assert!(t.forget(id, 2).is_none());
        assert!(t.get(id).is_ok());
        assert!(t.forget(id, 1).is_some());
        assert_eq!(t.get(id).unwrap_err().raw_os_error(), Some(libc::ESTALE));
        assert_eq!(t.count_inodes(), (1, 0));
        assert!(t.forget(ROOT_ID, 100).is_none());
        assert!(t.get(ROOT_ID).is_ok());
    }

    #[test]
    fn keys_that_hash_alike_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let t = table(dir.path());
        let a = t.remember(by_handle(&dir.path().join("a")));
        let b = t.remember(by_handle(&dir.path().join("b")));
        // As a real collision would: b's hash now leads to a, and b is in the list.
        {
            let mut tables = t.tables.lock();
            let hash_of_b = t.hasher.hash_one(b.key());
            tables.by_key.insert(hash_of_b, a.id);
            tables.collided.entry(hash_of_b).or_default().push(b.id);
        }
        let again = t.remember_known(b.key()).unwrap();
        assert!(Arc::ptr_eq(&again, &b));
        let c = t.remember(by_handle(&dir.path().join("c")));
        assert!(!Arc::ptr_eq(&c, &a) && !Arc::ptr_eq(&c, &b));
    }

    #[test]
    fn least_recent_descriptors_come_files_first_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        for i in 0..4 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let t = table(dir.path());
        let d = t.remember(by_descriptor(&dir.path().join("d"))).id;
        let ids: Vec<_> = (0..4)
            .map(|i| {
                t.remember(by_descriptor(&dir.path().join(format!("f{i}"))))
                    .id
            })
            .collect();
        t.remember(by_descriptor(&dir.path().join("f0")));
        assert_eq!(t.least_recent_descriptors(3), [ids[1], ids[2], ids[3]]);
        assert_eq!(
            t.least_recent_descriptors(10),
            [ids[1], ids[2], ids[3], ids[0], d]
        );
    }

    #[test]
    fn the_descriptor_cache_evicts_the_unused_and_finds_pinned_objects() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FdCache::new(2);
        let entry = |i: u64| {
            let (fd, _) = open_path(dir.path());
            (i, Arc::new(fd), (1, 2, i))
        };
        for i in 10..12 {
            let (id, fd, ident) = entry(i);
            cache.insert(id, fd, ident);
        }
        assert!(cache.get(10).is_some());
        assert_eq!(cache.pinned((1, 2, 11)), Some(11));
        // Both were used since insertion: the clock clears them and takes the first.
        let (id, fd, ident) = entry(12);
        cache.insert(id, fd, ident);
        assert_eq!(cache.counters().2, 2);
        assert!(cache.get(12).is_some());
        assert_eq!(
            [10, 11].iter().filter(|i| cache.get(**i).is_some()).count(),
            1
        );
        cache.remove_object((1, 2, 12));
        assert!(cache.get(12).is_none());
        assert_eq!(cache.pinned((1, 2, 12)), None);
    }
}
