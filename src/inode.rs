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
//! # Locking
//! One mutex guards the table. It is never held across a system call or a reply: callers
//! open and stat outside it, and descriptors are closed after it is released.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;

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

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
}

struct Tables {
    by_id: HashMap<NodeId, Slot>,
    /// Ids handed out for objects that cannot use their own `st_ino`. Never shrunk.
    synthetic: HashMap<BackingKey, NodeId>,
    next_synthetic: NodeId,
}

pub struct InodeTable {
    root_key: BackingKey,
    tables: Mutex<Tables>,
}

impl InodeTable {
    /// Builds the table around the backing root's `O_PATH` descriptor.
    pub fn new(root_fd: OwnedFd) -> io::Result<Self> {
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
            },
        );
        Ok(InodeTable {
            root_key: key,
            tables: Mutex::new(Tables {
                by_id,
                synthetic: HashMap::new(),
                next_synthetic: SYNTHETIC_BASE,
            }),
        })
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

    pub fn root(&self) -> Arc<Inode> {
        self.get(ROOT_ID).expect("the root inode is never removed")
    }

    /// Counts one lookup of the object `fd` refers to (stat result `st`), adding it to the
    /// table if new. When the object is already known, `fd` is closed (after the lock is
    /// released) and the existing inode is returned.
    pub fn remember(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let key = BackingKey::of(st);
        let mut spare = None;
        let inode = {
            let mut t = self.tables.lock();
            let id = self.id_for(&mut t, key);
            match t.by_id.get_mut(&id) {
                Some(slot) => {
                    slot.lookups += 1;
                    spare = Some(fd);
                    slot.inode.clone()
                }
                None => {
                    let inode = Arc::new(Inode {
                        id,
                        key,
                        kind: st.st_mode & libc::S_IFMT,
                        fd,
                        open_state: Default::default(),
                    });
                    t.by_id.insert(
                        id,
                        Slot {
                            inode: inode.clone(),
                            lookups: 1,
                        },
                    );
                    inode
                }
            }
        };
        drop(spare);
        inode
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
                    },
                );
            }
        }
    }

    /// Subtracts `count` lookups; at zero the inode leaves the table.
    pub fn forget(&self, id: NodeId, count: u64) {
        if id == ROOT_ID {
            return;
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
        drop(removed);
    }

    /// Number of inodes in the table (the root included).
    pub fn count(&self) -> usize {
        self.tables.lock().by_id.len()
    }

    fn id_for(&self, t: &mut Tables, key: BackingKey) -> NodeId {
        if key == self.root_key {
            return ROOT_ID;
        }
        if key.dev == self.root_key.dev && key.ino != ROOT_ID && key.ino < SYNTHETIC_BASE {
            return key.ino;
        }
        if let Some(&id) = t.synthetic.get(&key) {
            return id;
        }
        let id = t.next_synthetic;
        t.next_synthetic += 1;
        t.synthetic.insert(key, id);
        id
    }
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
        let table = InodeTable::new(open_path(dir.path()).0).unwrap();

        let (fd_a, st_a) = open_path(&dir.path().join("a"));
        let (fd_b, st_b) = open_path(&dir.path().join("b"));
        let a = table.remember(fd_a, &st_a);
        let b = table.remember(fd_b, &st_b);
        assert_eq!(a.id, st_a.st_ino);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(table.count(), 2);
    }

    #[test]
    fn forget_drops_the_inode_only_when_every_lookup_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let table = InodeTable::new(open_path(dir.path()).0).unwrap();
        for _ in 0..3 {
            let (fd, st) = open_path(&dir.path().join("a"));
            table.remember(fd, &st);
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
    fn root_is_one_and_foreign_keys_get_stable_synthetic_ids() {
        let dir = tempfile::tempdir().unwrap();
        let table = InodeTable::new(open_path(dir.path()).0).unwrap();
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
}
