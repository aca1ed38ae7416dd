//! The inode table: FUSE node ids to backing objects.
//!
//! Every inode the kernel knows holds an `O_PATH` descriptor of its backing object, never a
//! path, so renames (in the mount or directly in BACKING) cannot make it point at the wrong
//! file. Inodes are keyed by the backing `(st_dev, st_ino)`; hard links share one inode.
//!
//! # Node ids
//! A node id is also the `st_ino` the mount shows, so it must be stable while the mount
//! lives. A file on the device of the backing root gets its own backing `st_ino` (so
//! `stat` in the mount and in BACKING agree); the root is always 1; anything else (a file
//! on another filesystem mounted under BACKING, or a backing inode numbered 1 or with the
//! top bit set) gets a synthetic id from a map that is never shrunk, so it too stays the
//! same after the kernel forgets it. A backing inode number cannot be reused while we hold
//! an `O_PATH` descriptor of it, so an id never names two live objects at once.
//!
//! # Lookup-count contract
//! Each reply that hands an inode to the kernel (lookup, mknod, mkdir, symlink, link,
//! create, and readdirplus entries other than `.` and `..`) counts one lookup through
//! [`InodeTable::remember`] or [`InodeTable::add_lookup`], made before the reply is sent.
//! FORGET subtracts its count through [`InodeTable::forget`]; at zero the inode leaves the
//! table and its descriptor closes once the last in-flight request drops its `Arc`. The
//! root is never removed.
//!
//! # Descriptor pressure
//! Every inode costs a descriptor, and the kernel keeps inodes as long as memory allows.
//! When the table grows past a high watermark (a share of `RLIMIT_NOFILE`), the least
//! recently looked-up inodes, files before directories (dropping a directory's dentry
//! drops its whole cached subtree), are offered to an evictor thread as `(parent, name)`
//! hints; it asks the kernel to drop those dentries (FUSE `NOTIFY_INVAL_ENTRY`), and the
//! kernel answers with FORGET for the inodes nothing else uses. The hint is only the last name
//! an inode was looked up under; it is never used to reach a file.
//!
//! # Locking
//! One mutex guards the table. It is never held across a system call or a reply: callers
//! open and stat outside it, and descriptors are closed after it is released.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::sys;

/// A FUSE node id (and the `st_ino` the mount reports).
pub type NodeId = u64;

/// The node id FUSE reserves for the root.
pub const ROOT_ID: NodeId = 1;

/// Synthetic ids have the top bit set, so they never collide with a real `st_ino` we pass on.
const SYNTHETIC_BASE: NodeId = 1 << 63;

/// A backing object's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackingKey {
    pub dev: u64,
    pub ino: u64,
}

impl BackingKey {
    pub fn of(st: &libc::stat) -> Self {
        BackingKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// One backing object the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    pub id: NodeId,
    pub key: BackingKey,
    /// `S_IFMT` bits of the backing object; the type of an inode never changes.
    pub kind: libc::mode_t,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing object.
    fd: OwnedFd,
    /// Shared state of open handles (kernel passthrough backing id).
    pub open_state: crate::handle::InodeOpenState,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
    /// When the inode was last looked up (a table-wide counter).
    last_lookup: u64,
    /// The directory and name of the last lookup: where to ask the kernel to let go.
    hint: Option<(NodeId, Box<OsStr>)>,
}

impl Slot {
    fn eviction_hint(&self) -> Option<EvictionHint> {
        self.hint.as_ref().map(|(parent, name)| EvictionHint {
            parent: *parent,
            name: name.to_os_string(),
        })
    }
}

struct Tables {
    by_id: HashMap<NodeId, Slot>,
    /// Ids handed out for objects that cannot use their own `st_ino`. Never shrunk.
    synthetic: HashMap<BackingKey, NodeId>,
    next_synthetic: NodeId,
    /// Lookups in order, `(id, last_lookup)`; an entry is stale when the slot has moved
    /// on. Compacted when it outgrows the table.
    recency: VecDeque<(NodeId, u64)>,
    clock: u64,
}

/// A dentry the evictor asks the kernel to drop.
pub struct EvictionHint {
    pub parent: NodeId,
    pub name: OsString,
}

pub struct InodeTable {
    root_key: BackingKey,
    tables: Mutex<Tables>,
    /// Inode count above which the evictor is woken, and down to which it evicts.
    high_watermark: usize,
    low_watermark: usize,
    pressure: Condvar,
}

impl InodeTable {
    /// Builds the table around the backing root's `O_PATH` descriptor; `max_inodes` is
    /// how many descriptors the table may use before it asks the kernel to forget some.
    pub fn new(root_fd: OwnedFd, max_inodes: usize) -> io::Result<Self> {
        let st = sys::fstat(root_fd.as_fd())?;
        let key = BackingKey::of(&st);
        let root = Arc::new(Inode {
            id: ROOT_ID,
            key,
            kind: st.st_mode & libc::S_IFMT,
            fd: root_fd,
            open_state: Default::default(),
        });
        let mut by_id = HashMap::new();
        by_id.insert(
            ROOT_ID,
            Slot {
                inode: root,
                lookups: 1,
                last_lookup: 0,
                hint: None,
            },
        );
        Ok(InodeTable {
            root_key: key,
            tables: Mutex::new(Tables {
                by_id,
                synthetic: HashMap::new(),
                next_synthetic: SYNTHETIC_BASE,
                recency: VecDeque::new(),
                clock: 0,
            }),
            high_watermark: max_inodes,
            low_watermark: max_inodes * 3 / 4,
            pressure: Condvar::new(),
        })
    }

    /// The backing identity of the root.
    pub fn root_key(&self) -> BackingKey {
        self.root_key
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

    /// Counts one lookup of the object `fd` refers to (stat result `st`), found under
    /// `found_as` = (directory, name), adding it to the table if new. When the object is
    /// already known, `fd` is closed (after the lock is released) and the existing inode
    /// returned.
    pub fn remember(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        found_as: Option<(NodeId, &OsStr)>,
    ) -> Arc<Inode> {
        let key = BackingKey::of(st);
        let mut spare = None;
        let (inode, crowded) = {
            let mut t = self.tables.lock();
            let id = self.id_for(&mut t, key);
            if let std::collections::hash_map::Entry::Vacant(vacant) = t.by_id.entry(id) {
                vacant.insert(Slot {
                    inode: Arc::new(Inode {
                        id,
                        key,
                        kind: st.st_mode & libc::S_IFMT,
                        fd,
                        open_state: Default::default(),
                    }),
                    lookups: 0,
                    last_lookup: 0,
                    hint: None,
                });
            } else {
                spare = Some(fd);
            }
            let inode = Self::count_held(&mut t, id, found_as);
            (inode, t.by_id.len() > self.high_watermark)
        };
        if crowded {
            self.pressure.notify_one();
        }
        drop(spare);
        inode
    }

    /// Counts one lookup of the object with stat `st` if the table holds it already (found
    /// under `found_as`), without a descriptor of it: an `O_PATH` descriptor we hold keeps
    /// its inode number from being reused, so the key names the same object. `None` if
    /// the object is not in the table.
    pub fn remember_held(
        &self,
        st: &libc::stat,
        found_as: Option<(NodeId, &OsStr)>,
    ) -> Option<Arc<Inode>> {
        let key = BackingKey::of(st);
        let mut t = self.tables.lock();
        let id = self.assigned_id(&t, key)?;
        if t.by_id.get(&id).is_none_or(|slot| slot.inode.key != key) {
            return None;
        }
        Some(Self::count_held(&mut t, id, found_as))
    }

    /// Whether the table probably holds the backing inode `ino` of the root's device (a
    /// hint: `d_ino` of a mount point names the covered directory).
    pub fn probably_holds(&self, ino: u64) -> bool {
        let key = BackingKey {
            dev: self.root_key.dev,
            ino,
        };
        let t = self.tables.lock();
        self.assigned_id(&t, key)
            .is_some_and(|id| t.by_id.contains_key(&id))
    }

    /// Counts a lookup of the inode `id`, which is in the table, and notes its recency.
    fn count_held(t: &mut Tables, id: NodeId, found_as: Option<(NodeId, &OsStr)>) -> Arc<Inode> {
        t.clock += 1;
        let now = t.clock;
        let slot = t.by_id.get_mut(&id).expect("caller checked the slot");
        slot.lookups += 1;
        slot.last_lookup = now;
        if let Some((parent, name)) = found_as
            && slot
                .hint
                .as_ref()
                .is_none_or(|(p, n)| *p != parent || **n != *name)
        {
            slot.hint = Some((parent, name.into()));
        }
        let inode = slot.inode.clone();
        if id != ROOT_ID {
            t.recency.push_back((id, now));
        }
        if t.recency.len() > t.by_id.len() + t.by_id.len() / 2 + 1024 {
            compact_recency(t);
        }
        inode
    }

    /// Blocks until the table is over its high watermark, then returns the least recently
    /// looked-up inodes (as dentries), files first, whose eviction brings it down to the
    /// low watermark.
    pub fn wait_for_eviction_candidates(&self) -> Vec<EvictionHint> {
        let mut t = self.tables.lock();
        while t.by_id.len() <= self.high_watermark {
            self.pressure.wait(&mut t);
        }
        let mut wanted = t.by_id.len() - self.low_watermark;
        let mut hints = Vec::with_capacity(wanted);
        // Dropping a directory's dentry drops every cached dentry below it, and a
        // directory looks old even while its files are in use (path walks do not look
        // it up again): directories go only when files alone cannot make room.
        let mut directories = Vec::new();
        while wanted > 0 {
            let Some((id, tick)) = t.recency.pop_front() else {
                break;
            };
            let Some(slot) = t.by_id.get(&id) else {
                continue;
            };
            if slot.last_lookup != tick {
                continue;
            }
            if slot.inode.kind == libc::S_IFDIR {
                directories.push((id, tick));
            } else if let Some(hint) = slot.eviction_hint() {
                hints.push(hint);
                wanted -= 1;
            }
        }
        let (taken, kept) = directories.split_at(wanted.min(directories.len()));
        for (id, _) in taken {
            if let Some(hint) = t.by_id.get(id).and_then(Slot::eviction_hint) {
                hints.push(hint);
            }
        }
        // Directories not needed keep their place at the front of the queue.
        for entry in kept.iter().rev() {
            t.recency.push_front(*entry);
        }
        hints
    }

    /// Counts one more lookup of an inode the kernel already holds (e.g. after `link`).
    pub fn add_lookup(&self, inode: &Arc<Inode>) {
        let mut t = self.tables.lock();
        match t.by_id.get_mut(&inode.id) {
            Some(slot) => slot.lookups += 1,
            // Forgotten in between: put it back, the caller holds the only other reference.
            None => {
                t.by_id.insert(
                    inode.id,
                    Slot {
                        inode: inode.clone(),
                        lookups: 1,
                        last_lookup: 0,
                        hint: None,
                    },
                );
            }
        }
    }

    /// Subtracts `count` lookups; at zero the inode leaves the table (and `true` is
    /// returned).
    pub fn forget(&self, id: NodeId, count: u64) -> bool {
        if id == ROOT_ID {
            return false;
        }
        let removed = {
            let mut t = self.tables.lock();
            match t.by_id.get_mut(&id) {
                Some(slot) if slot.lookups > count => {
                    slot.lookups -= count;
                    None
                }
                Some(_) => t.by_id.remove(&id),
                None => None,
            }
        };
        // The descriptor closes here, outside the lock, unless a request still uses it.
        removed.is_some()
    }

    /// The id the object `st` has in this table, if the kernel holds it.
    pub fn known_id(&self, st: &libc::stat) -> Option<NodeId> {
        let key = BackingKey::of(st);
        let t = self.tables.lock();
        let id = self.assigned_id(&t, key)?;
        t.by_id
            .get(&id)
            .filter(|slot| slot.inode.key == key)
            .map(|_| id)
    }

    /// Number of inodes in the table (the root included).
    pub fn count(&self) -> usize {
        self.tables.lock().by_id.len()
    }

    /// The id `key` has, if it has one already (derived, or synthetic and recorded).
    fn assigned_id(&self, t: &Tables, key: BackingKey) -> Option<NodeId> {
        if key == self.root_key {
            return Some(ROOT_ID);
        }
        if key.dev == self.root_key.dev && key.ino != ROOT_ID && key.ino < SYNTHETIC_BASE {
            return Some(key.ino);
        }
        t.synthetic.get(&key).copied()
    }

    fn id_for(&self, t: &mut Tables, key: BackingKey) -> NodeId {
        if let Some(id) = self.assigned_id(t, key) {
            return id;
        }
        let id = t.next_synthetic;
        t.next_synthetic += 1;
        t.synthetic.insert(key, id);
        id
    }
}

/// Drops stale recency entries, keeping the order of the live ones.
fn compact_recency(t: &mut Tables) {
    let by_id = &t.by_id;
    t.recency
        .retain(|(id, tick)| by_id.get(id).is_some_and(|slot| slot.last_lookup == *tick));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn open_path(path: &std::path::Path) -> (OwnedFd, libc::stat) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sys::openat(None, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        let st = sys::fstat(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn files_get_their_backing_inode_number_and_hard_links_share_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let table = InodeTable::new(open_path(dir.path()).0, 1000).unwrap();

        let (fd_a, st_a) = open_path(&dir.path().join("a"));
        let (fd_b, st_b) = open_path(&dir.path().join("b"));
        let a = table.remember(fd_a, &st_a, Some((ROOT_ID, OsStr::new("a"))));
        let b = table.remember(fd_b, &st_b, Some((ROOT_ID, OsStr::new("b"))));
        assert_eq!(a.id, st_a.st_ino);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(table.count(), 2);
    }

    #[test]
    fn forget_drops_the_inode_only_when_every_lookup_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let table = InodeTable::new(open_path(dir.path()).0, 1000).unwrap();
        for _ in 0..3 {
            let (fd, st) = open_path(&dir.path().join("a"));
            table.remember(fd, &st, Some((ROOT_ID, OsStr::new("a"))));
        }
        let id = open_path(&dir.path().join("a")).1.st_ino;
        table.forget(id, 2);
        assert!(table.get(id).is_ok());
        table.forget(id, 1);
        assert_eq!(
            table.get(id).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        table.forget(ROOT_ID, 100);
        assert!(table.get(ROOT_ID).is_ok());
    }

    #[test]
    fn a_held_object_is_counted_without_a_descriptor_and_an_unknown_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::write(dir.path().join("b"), b"x").unwrap();
        let table = InodeTable::new(open_path(dir.path()).0, 1000).unwrap();
        let (fd, st) = open_path(&dir.path().join("a"));
        let a = table.remember(fd, &st, Some((ROOT_ID, OsStr::new("a"))));
        assert!(table.probably_holds(st.st_ino));

        let again = table.remember_held(&st, Some((ROOT_ID, OsStr::new("a"))));
        assert!(Arc::ptr_eq(&a, &again.unwrap()));
        table.forget(a.id, 1);
        assert!(table.get(a.id).is_ok(), "the second lookup was not counted");
        table.forget(a.id, 1);
        assert!(table.get(a.id).is_err());

        let (_, st_b) = open_path(&dir.path().join("b"));
        assert!(!table.probably_holds(st_b.st_ino));
        assert!(table.remember_held(&st_b, None).is_none());
        assert_eq!(table.count(), 1);
    }

    #[test]
    fn root_is_one_and_foreign_keys_get_stable_synthetic_ids() {
        let dir = tempfile::tempdir().unwrap();
        let table = InodeTable::new(open_path(dir.path()).0, 1000).unwrap();
        let mut t = table.tables.lock();
        let foreign = BackingKey {
            dev: table.root_key.dev + 1,
            ino: 5,
        };
        let id = table.id_for(&mut t, foreign);
        assert!(id >= SYNTHETIC_BASE);
        assert_eq!(table.id_for(&mut t, foreign), id);
        assert_eq!(table.id_for(&mut t, table.root_key), ROOT_ID);
        let one = BackingKey {
            dev: table.root_key.dev,
            ino: 1,
        };
        assert!(table.id_for(&mut t, one) >= SYNTHETIC_BASE);
    }

    #[test]
    fn pressure_yields_the_least_recently_looked_up_names() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let table = InodeTable::new(open_path(dir.path()).0, 8).unwrap();
        for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9] {
            let name = format!("f{i}");
            let (fd, st) = open_path(&dir.path().join(&name));
            table.remember(fd, &st, Some((ROOT_ID, OsStr::new(&name))));
        }
        // 11 inodes (root included) > 8: evict down to 6, oldest first; f0 was looked up
        // again, so it is not among the oldest.
        let names: Vec<_> = table
            .wait_for_eviction_candidates()
            .into_iter()
            .map(|h| h.name.into_string().unwrap())
            .collect();
        assert_eq!(names, ["f1", "f2", "f3", "f4", "f5"]);
    }

    #[test]
    fn pressure_spares_directories_while_files_can_go() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["d0", "d1"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        for i in 0..6 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let table = InodeTable::new(open_path(dir.path()).0, 7).unwrap();
        let remember = |name: &str| {
            let (fd, st) = open_path(&dir.path().join(name));
            table.remember(fd, &st, Some((ROOT_ID, OsStr::new(name))));
        };
        for name in ["d0", "d1", "f0", "f1", "f2", "f3", "f4", "f5"] {
            remember(name);
        }
        // 9 inodes > 7: evict down to 5. The directories are oldest but stay.
        let names = |hints: Vec<EvictionHint>| -> Vec<String> {
            hints
                .into_iter()
                .map(|h| h.name.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            names(table.wait_for_eviction_candidates()),
            ["f0", "f1", "f2", "f3"]
        );
        // When files alone cannot make room, directories go too, oldest first.
        let small = InodeTable::new(open_path(dir.path()).0, 3).unwrap();
        for name in ["d0", "d1", "f0", "f1"] {
            let (fd, st) = open_path(&dir.path().join(name));
            small.remember(fd, &st, Some((ROOT_ID, OsStr::new(name))));
        }
        // 5 inodes > 3: evict down to 2.
        assert_eq!(
            names(small.wait_for_eviction_candidates()),
            ["f0", "f1", "d0"]
        );
    }
}
