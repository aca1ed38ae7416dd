//! Locks that reach the backing files.
//!
//! With FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS the kernel sends every `fcntl` and `flock`
//! lock on a file of the mount to the daemon and keeps none itself. fastfs takes each one
//! on the backing file, so it excludes locks taken directly on BACKING, through another
//! mount, or by another client of a shared backing, and the other way round.
//!
//! A lock belongs to an owner: a process (its descriptor table) for POSIX record locks,
//! an open file for open file description and flock locks. The kernel names it with an
//! opaque `owner` number per request. fastfs keeps one descriptor of the backing file per
//! (inode, owner) and takes the owner's locks on it as open file description locks
//! (`F_OFD_*`) or `flock`: a process's locks through two of its descriptors are then one
//! owner's (they never conflict), and different owners' locks conflict as natively.
//!
//! Locks are released with the owner's descriptor: on FLUSH for that owner (a close by
//! the process: POSIX releases all of its locks on the file at any close), and on
//! RELEASE of an open file for every owner that locked through it (the open file's own
//! OFD and flock locks, whose owner is the open file). Hence a mount that forwards locks
//! never lets the kernel skip FLUSH (FOPEN_NOFLUSH).
//!
//! A blocking request (F_SETLKW, `flock` without LOCK_NB) waits in the serving thread.
//! When the caller is signalled the kernel sends INTERRUPT naming the request; the
//! waiting thread is then woken with [`WAKE_SIGNAL`] (its blocking call fails with
//! EINTR) and the request answered EINTR, which the kernel turns into a restart or EINTR
//! as natively. The signal is sent again until the waiter has seen it: one that lands
//! just before the thread enters the call would otherwise be lost.
//!
//! Lock order: `owners` and `waits` are never held together, nor across a system call
//! (closing a descriptor included: dropped entries are closed after the lock is let go).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::creds::Caller;
use crate::fs::{Fs, errno};
use crate::handle::Handle;
use crate::sys;
use crate::transport::wire::FileLock;

/// The signal that wakes a thread waiting for a lock (a no-op handler without
/// SA_RESTART, installed by [`install_wake_signal`]).
pub fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Makes [`wake_signal`] interrupt a waiting thread's blocking call.
pub fn install_wake_signal() -> io::Result<()> {
    sys::interrupt_on_signal(wake_signal())
}

/// The kernel's OFFSET_MAX: a lock "to the end of the file".
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Threads of one user that may wait for locks at once: each holds a serving thread, so
/// one user cannot tie up every thread of the daemon. More fail with ENOLCK.
const WAITS_PER_USER: usize = 8;

/// Lock waits of all users at once. Each holds a serving thread of its transport (a
/// /dev/fuse thread, or a thread of the caller's CPU queue on the ring), and at most half
/// of either may wait: the rest serve the FLUSH, RELEASE and unlock that end the waits,
/// and everyone else's requests (users with many uids, such as subuid ranges, would
/// otherwise fill a queue). More fail with ENOLCK.
const WAITS_IN_ALL: usize = 32;
const _: () = assert!(
    WAITS_IN_ALL <= crate::transport::devfuse::MAX_THREADS / 2
        && WAITS_IN_ALL <= crate::transport::ring::MAX_THREADS_PER_QUEUE / 2
);

/// How often waiters are looked after: an interrupted one signalled again, callers'
/// pending signals checked.
const WATCH_PERIOD: Duration = Duration::from_millis(50);

/// INTERRUPTs remembered for requests not (yet) waiting: one may arrive, on another
/// thread, before its request does.
const EARLY_INTERRUPTS: usize = 256;

/// A backing object, as locks know it: (device, inode number). Two node ids of one file
/// (reached through a bind mount inside BACKING) share its locks, as natively.
pub type LockKey = (u64, u64);

struct OwnerFile {
    fd: Arc<OwnedFd>,
    uid: u32,
    /// The open files (`fh`) the owner locked through.
    via: Vec<u64>,
}

#[derive(Default)]
struct Owners {
    by_inode: HashMap<LockKey, HashMap<u64, OwnerFile>>,
    per_uid: HashMap<u32, usize>,
}

impl Owners {
    fn remove_where(
        &mut self,
        inode: LockKey,
        mut drop_it: impl FnMut(u64, &OwnerFile) -> bool,
    ) -> Vec<Arc<OwnedFd>> {
        let Some(owners) = self.by_inode.get_mut(&inode) else {
            return Vec::new();
        };
        let doomed: Vec<u64> = owners
            .iter()
            .filter(|(owner, file)| drop_it(**owner, file))
            .map(|(owner, _)| *owner)
            .collect();
        let mut closed = Vec::with_capacity(doomed.len());
        for owner in doomed {
            if let Some(file) = owners.remove(&owner) {
                if let Some(n) = self.per_uid.get_mut(&file.uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_uid.remove(&file.uid);
                    }
                }
                closed.push(file.fd);
            }
        }
        if owners.is_empty() {
            self.by_inode.remove(&inode);
        }
        closed
    }
}

struct Waiter {
    tid: libc::pid_t,
    uid: u32,
    /// The thread that made the request (whose pending signals are watched).
    caller_pid: u32,
    interrupted: bool,
}

#[derive(Default)]
struct Waits {
    by_unique: HashMap<u64, Waiter>,
    early: VecDeque<u64>,
    resender: bool,
}

/// The lock state of a mount (see the module documentation).
pub struct Locks {
    /// Whether locks are forwarded at all (`-o locks=backing`).
    pub forwarded: bool,
    owners: Mutex<Owners>,
    /// Owner descriptors one user may hold.
    owners_per_user: usize,
    waits: Arc<(Mutex<Waits>, Condvar)>,
}

impl Locks {
    pub fn new(forwarded: bool, owners_per_user: usize) -> Self {
        Locks {
            forwarded,
            owners: Mutex::new(Owners::default()),
            owners_per_user,
            waits: Arc::new((Mutex::new(Waits::default()), Condvar::new())),
        }
    }

    /// The owner's descriptor of `inode`, if it has one; records `fh` as a way it locks.
    fn existing(&self, inode: LockKey, owner: u64, fh: u64) -> Option<Arc<OwnedFd>> {
        let mut owners = self.owners.lock();
        let file = owners.by_inode.get_mut(&inode)?.get_mut(&owner)?;
        if !file.via.contains(&fh) {
            file.via.push(fh);
        }
        Some(file.fd.clone())
    }

    /// Installs `fd` as the owner's descriptor unless another thread did first (then
    /// that one is returned, and `fd` closed by the caller). ENOLCK past the per-user
    /// limit.
    fn install(
        &self,
        inode: LockKey,
        owner: u64,
        fh: u64,
        uid: u32,
        fd: OwnedFd,
    ) -> io::Result<Arc<OwnedFd>> {
        let mut owners = self.owners.lock();
        if let Some(file) = owners
            .by_inode
            .get_mut(&inode)
            .and_then(|o| o.get_mut(&owner))
        {
            if !file.via.contains(&fh) {
                file.via.push(fh);
            }
            return Ok(file.fd.clone());
        }
        let count = owners.per_uid.entry(uid).or_default();
        if *count >= self.owners_per_user {
            return Err(errno(libc::ENOLCK));
        }
        *count += 1;
        let fd = Arc::new(fd);
        owners.by_inode.entry(inode).or_default().insert(
            owner,
            OwnerFile {
                fd: fd.clone(),
                uid,
                via: vec![fh],
            },
        );
        Ok(fd)
    }

    /// Whether no owner holds a descriptor (nothing to drop at a close).
    fn is_empty(&self) -> bool {
        self.owners.lock().by_inode.is_empty()
    }

    /// Whether `fd` is still the owner's descriptor of `inode`.
    fn is_current(&self, inode: LockKey, owner: u64, fd: &Arc<OwnedFd>) -> bool {
        self.owners
            .lock()
            .by_inode
            .get(&inode)
            .and_then(|owners| owners.get(&owner))
            .is_some_and(|file| Arc::ptr_eq(&file.fd, fd))
    }

    /// Drops the POSIX locks of `owner` on `inode` (a close by that process).
    pub fn flush(&self, inode: LockKey, owner: u64) {
        let closed = self.owners.lock().remove_where(inode, |o, _| o == owner);
        drop(closed);
    }

    /// Drops the locks of every owner that locked `inode` through the open file `fh`,
    /// which is being released.
    pub fn release(&self, inode: LockKey, fh: u64) {
        let closed = self
            .owners
            .lock()
            .remove_where(inode, |_, file| file.via.contains(&fh));
        drop(closed);
    }

    /// Owner descriptors held now (for tests and stats).
    pub fn owner_files(&self) -> usize {
        self.owners.lock().per_uid.values().sum()
    }

    /// The kernel's INTERRUPT of request `unique`: a lock wait for it ends with EINTR.
    pub fn interrupt(&self, unique: u64) {
        let (waits, resend) = &*self.waits;
        let mut w = waits.lock();
        match w.by_unique.get_mut(&unique) {
            Some(waiter) => {
                waiter.interrupted = true;
                let _ = sys::tgkill(waiter.tid, wake_signal());
                resend.notify_one();
            }
            None => {
                if w.early.len() >= EARLY_INTERRUPTS {
                    w.early.pop_front();
                }
                w.early.push_back(unique);
            }
        }
    }

    /// The thread that watches waiters: it signals an interrupted one again until it has
    /// seen it (a signal that lands just before the waiter enters its blocking call is
    /// lost), and it ends the wait of a caller with a signal pending that the kernel did
    /// not tell the daemon about. Over io_uring the kernel sends INTERRUPT only for a
    /// request a ring thread has already picked up (dev_uring.c lacks the check
    /// fuse_dev_do_read makes when it hands out a request already interrupted): a signal
    /// in between would leave the caller waiting, unkillable, until the lock is granted.
    fn start_watcher(&self) {
        let waits = self.waits.clone();
        let started = std::thread::Builder::new()
            .name("fastfs-lock-wake".into())
            .spawn(move || {
                let (waits, wake) = &*waits;
                let mut w = waits.lock();
                loop {
                    if w.by_unique.is_empty() {
                        wake.wait(&mut w);
                        continue;
                    }
                    // tgkill under the lock: a waiter deregisters under it before its
                    // thread can exit, so the thread id is still that waiter's.
                    for waiter in w.by_unique.values().filter(|x| x.interrupted) {
                        let _ = sys::tgkill(waiter.tid, wake_signal());
                    }
                    let watched: Vec<(u64, u32)> = w
                        .by_unique
                        .iter()
                        .filter(|(_, x)| !x.interrupted)
                        .map(|(unique, x)| (*unique, x.caller_pid))
                        .collect();
                    // /proc is read with the lock let go.
                    let signalled: Vec<u64> = parking_lot::MutexGuard::unlocked(&mut w, || {
                        watched
                            .into_iter()
                            .filter(|(_, pid)| signal_pending(*pid))
                            .map(|(unique, _)| unique)
                            .collect()
                    });
                    for unique in signalled {
                        if let Some(waiter) = w.by_unique.get_mut(&unique) {
                            waiter.interrupted = true;
                            let _ = sys::tgkill(waiter.tid, wake_signal());
                        }
                    }
                    wake.wait_for(&mut w, WATCH_PERIOD);
                }
            });
        if let Err(e) = started {
            log::error!("cannot start the lock wake-up thread: {e}");
        }
    }

    /// Runs `call` (a blocking lock call) for request `unique` of user `uid` until it
    /// ends other than by EINTR, or is interrupted by the kernel (then EINTR).
    fn wait_for(
        &self,
        unique: u64,
        caller: &Caller,
        mut call: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let (waits, wake) = &*self.waits;
        let uid = caller.uid;
        {
            let mut w = waits.lock();
            if !w.resender {
                w.resender = true;
                self.start_watcher();
            }
            if let Some(i) = w.early.iter().position(|&u| u == unique) {
                w.early.remove(i);
                return Err(errno(libc::EINTR));
            }
            if w.by_unique.len() >= WAITS_IN_ALL
                || w.by_unique.values().filter(|x| x.uid == uid).count() >= WAITS_PER_USER
            {
                return Err(errno(libc::ENOLCK));
            }
            w.by_unique.insert(
                unique,
                Waiter {
                    tid: sys::gettid(),
                    uid,
                    caller_pid: caller.pid,
                    interrupted: false,
                },
            );
            wake.notify_one();
        }
        let result = loop {
            match call() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if waits
                        .lock()
                        .by_unique
                        .get(&unique)
                        .is_some_and(|x| x.interrupted)
                    {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        waits.lock().by_unique.remove(&unique);
        result
    }
}

/// Whether a signal is pending that the kernel would deliver to thread `tid` (a FUSE
/// request's pid is the calling thread): one sent to the thread itself (SigPnd, where
/// SIGKILL also lands), or one sent to its process that the thread does not block while
/// every other thread of the process blocks it (otherwise the kernel hands it to another
/// thread and this one waits on, as natively). Ending a wait with EINTR for a thread
/// that has no signal to handle would give its program errno 512 (the kernel turns a
/// lock's EINTR into ERESTARTSYS).
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let own_pending = status_mask(&status, "SigPnd:") & !status_mask(&status, "SigBlk:");
    if own_pending != 0 {
        return true;
    }
    let shared = status_mask(&status, "ShdPnd:") & !status_mask(&status, "SigBlk:");
    if shared == 0 {
        return false;
    }
    let Some(process) = status_field(&status, "Tgid:") else {
        return false;
    };
    let Ok(threads) = std::fs::read_dir(format!("/proc/{process}/task")) else {
        return false;
    };
    let mut blocked_by_all_others = shared;
    for thread in threads.flatten() {
        if thread.file_name().to_str() == Some(&tid.to_string()) {
            continue;
        }
        let Ok(other) = std::fs::read_to_string(thread.path().join("status")) else {
            continue;
        };
        blocked_by_all_others &= status_mask(&other, "SigBlk:");
    }
    blocked_by_all_others != 0
}

/// A field of a `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

/// A signal mask of a `/proc/PID/status` text (hexadecimal); 0 where absent.
fn status_mask(status: &str, name: &str) -> u64 {
    status_field(status, name)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// A FUSE lock range as `struct flock` (whence SEEK_SET, pid 0 as OFD calls require).
pub fn to_flock(lock: &FileLock) -> io::Result<libc::flock> {
    if lock.start > OFFSET_MAX || lock.end < lock.start {
        return Err(errno(libc::EINVAL));
    }
    let len = if lock.end >= OFFSET_MAX {
        0
    } else {
        (lock.end - lock.start + 1) as i64
    };
    let typ = match lock.typ as i32 {
        t @ (libc::F_RDLCK | libc::F_WRLCK | libc::F_UNLCK) => t as libc::c_short,
        _ => return Err(errno(libc::EINVAL)),
    };
    Ok(libc::flock {
        l_type: typ,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: lock.start as i64,
        l_len: len,
        l_pid: 0,
    })
}

/// The answer to a GETLK for `asked`: the conflicting lock `found` reports, or F_UNLCK.
/// A holder's pid is one of the backing's (or -1 for an open file description lock),
/// meaningless in the caller's view: 0, as the kernel shows a holder it cannot name.
pub fn from_flock(asked: &FileLock, found: &libc::flock) -> FileLock {
    if i32::from(found.l_type) == libc::F_UNLCK {
        return FileLock {
            typ: libc::F_UNLCK as u32,
            ..*asked
        };
    }
    let start = found.l_start.max(0) as u64;
    let end = if found.l_len <= 0 {
        OFFSET_MAX
    } else {
        start.saturating_add(found.l_len as u64 - 1).min(OFFSET_MAX)
    };
    FileLock {
        start,
        end,
        typ: found.l_type as u32,
        pid: 0,
    }
}

fn flock_operation(lock: &FileLock, wait: bool) -> io::Result<libc::c_int> {
    let op = match lock.typ as i32 {
        libc::F_RDLCK => libc::LOCK_SH,
        libc::F_WRLCK => libc::LOCK_EX,
        libc::F_UNLCK => libc::LOCK_UN,
        _ => return Err(errno(libc::EINVAL)),
    };
    Ok(if wait { op } else { op | libc::LOCK_NB })
}

impl Fs {
    /// The backing object of an open file, as locks know it (its own device: a btrfs
    /// subvolume has one of its own, with inode numbers that repeat other subvolumes').
    fn lock_key(handle: &Handle) -> io::Result<LockKey> {
        let st = sys::fstat(handle.fd())?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Drops the POSIX locks `owner` holds on the handle's file: a close by that process.
    pub(crate) fn drop_posix_locks(&self, handle: &Handle, owner: u64) {
        if self.locks.is_empty() {
            return;
        }
        if let Ok(key) = Self::lock_key(handle) {
            self.locks.flush(key, owner);
        }
    }

    /// Drops the locks of every owner that locked through handle `fh`, being released.
    pub(crate) fn drop_open_file_locks(&self, handle: &Handle, fh: u64) {
        if self.locks.is_empty() {
            return;
        }
        if let Ok(key) = Self::lock_key(handle) {
            self.locks.release(key, fh);
        }
    }

    /// The owner's descriptor of the handle's file, opened the first time the owner locks
    /// it, with the access mode of the locker's own open file (a lock never opens a file
    /// for writing that its locker opened read-only: that would break read leases, make
    /// programs ETXTBSY and fire IN_CLOSE_WRITE). An owner that locks through a
    /// read-only and then a read-write descriptor of one file cannot take a write lock
    /// (EBADF), where natively it could.
    fn owner_file(
        &self,
        handle: &Handle,
        key: LockKey,
        fh: u64,
        owner: u64,
        caller: &Caller,
    ) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.locks.existing(key, owner, fh) {
            return Ok(fd);
        }
        let fd = if handle.inode.kind == libc::S_IFREG {
            // The daemon's rights add nothing here: the locker holds the file open with
            // this access mode already (and a permission revoked since must not make
            // its lock fail, as natively it would not).
            let mode = sys::status_flags(handle.fd())? & libc::O_ACCMODE;
            let path_fd = self.path_fd(&handle.inode)?;
            self.with_daemon_rights(|| {
                self.reopen(&path_fd, mode | libc::O_NONBLOCK | libc::O_NOATIME)
                    .or_else(|_| self.reopen(&path_fd, mode | libc::O_NONBLOCK))
            })?
        } else {
            // A device, FIFO or socket is never reopened (opening one can have effects);
            // its locks belong to the open file they are taken through.
            sys::dup_cloexec(handle.fd())?
        };
        self.locks.install(key, owner, fh, caller.uid, fd)
    }

    /// F_GETLK: the first lock that would conflict with `lock` for `owner`, or F_UNLCK.
    pub fn getlk(&self, fh: u64, owner: u64, lock: FileLock) -> io::Result<FileLock> {
        let handle = self.handles.get(fh)?;
        // The owner's own locks never conflict with it: ask on its descriptor. Without
        // one, the handle's descriptor holds no lock of anyone's.
        let own = self.locks.existing(Self::lock_key(&handle)?, owner, fh);
        let fd: BorrowedFd<'_> = match &own {
            Some(fd) => fd.as_fd(),
            None => handle.fd(),
        };
        let mut query = to_flock(&lock)?;
        if i32::from(query.l_type) == libc::F_UNLCK {
            return Err(errno(libc::EINVAL));
        }
        sys::fcntl_lock(fd, libc::F_OFD_GETLK, &mut query)?;
        Ok(from_flock(&lock, &query))
    }

    /// F_SETLK / F_SETLKW (`wait`: the request's unique, for INTERRUPT), or flock(2)
    /// (`flock`). Conflicts fail with EAGAIN, as natively.
    pub fn setlk(
        &self,
        fh: u64,
        owner: u64,
        lock: FileLock,
        flock: bool,
        wait: Option<u64>,
        caller: &Caller,
    ) -> io::Result<()> {
        // Locks act with no identity of the caller's; its uid only counts its share.
        let caller = &Caller {
            uid: self.creds.account_uid(caller),
            ..*caller
        };
        let handle = self.handles.get(fh)?;
        let key = Self::lock_key(&handle)?;
        let unlock = lock.typ as i32 == libc::F_UNLCK;
        let fd = match self.locks.existing(key, owner, fh) {
            Some(fd) => fd,
            // Nothing to unlock for an owner that never locked here.
            None if unlock => return Ok(()),
            None => self.owner_file(&handle, key, fh, owner, caller)?,
        };
        let call = |wait: bool| -> io::Result<()> {
            if flock {
                sys::flock(fd.as_fd(), flock_operation(&lock, wait)?)
            } else {
                let mut range = to_flock(&lock)?;
                let cmd = if wait {
                    libc::F_OFD_SETLKW
                } else {
                    libc::F_OFD_SETLK
                };
                sys::fcntl_lock(fd.as_fd(), cmd, &mut range)
            }
        };
        // Without waiting first: a lock that is free is taken at once, and only one that
        // is held makes the request wait (and count as one of its user's waits).
        let result = match (call(false), wait) {
            (Err(e), Some(unique)) if !unlock && e.raw_os_error() == Some(libc::EAGAIN) => {
                self.locks.wait_for(unique, caller, || call(true))
            }
            (result, _) => result,
        };
        // The owner closed the file meanwhile (a FLUSH dropped its descriptor, which
        // closes with this last reference and takes the lock along): natively the lock
        // call then fails with EBADF rather than leave a lock nobody holds.
        if result.is_ok() && !unlock && !self.locks.is_current(key, owner, &fd) {
            return Err(errno(libc::EBADF));
        }
        result
    }

    /// The kernel's INTERRUPT of request `unique`.
    pub fn interrupt(&self, unique: u64) {
        self.locks.interrupt(unique);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lock(start: u64, end: u64, typ: i32) -> FileLock {
        FileLock {
            start,
            end,
            typ: typ as u32,
            pid: 0,
        }
    }

    #[test]
    fn ranges_convert_both_ways() {
        let whole = to_flock(&lock(0, OFFSET_MAX, libc::F_WRLCK)).unwrap();
        assert_eq!((whole.l_start, whole.l_len, whole.l_pid), (0, 0, 0));
        let some = to_flock(&lock(10, 19, libc::F_RDLCK)).unwrap();
        assert_eq!((some.l_start, some.l_len), (10, 10));
        assert_eq!(
            from_flock(&lock(0, 5, libc::F_WRLCK), &some),
            lock(10, 19, libc::F_RDLCK)
        );
        assert_eq!(
            from_flock(&lock(0, 5, libc::F_WRLCK), &whole),
            lock(0, OFFSET_MAX, libc::F_WRLCK)
        );
        let free = libc::flock {
            l_type: libc::F_UNLCK as i16,
            ..some
        };
        assert_eq!(
            from_flock(&lock(3, 5, libc::F_WRLCK), &free),
            lock(3, 5, libc::F_UNLCK)
        );
        assert!(to_flock(&lock(5, 4, libc::F_WRLCK)).is_err());
        assert!(to_flock(&lock(OFFSET_MAX + 1, u64::MAX, libc::F_WRLCK)).is_err());
        assert!(to_flock(&lock(0, 1, 7)).is_err());
    }

    proptest! {
        #[test]
        fn any_status_text_gives_masks_without_panic(text in "\\PC*", mask in any::<u64>()) {
            let _ = status_mask(&text, "SigPnd:");
            let _ = status_field(&text, "Tgid:");
            let status = format!("Name:\tx\n{text}\nSigBlk:\t{mask:016x}\n");
            // The first SigBlk line is the one read: a generated one may come first.
            if !text.contains("SigBlk:") {
                prop_assert_eq!(status_mask(&status, "SigBlk:"), mask);
            }
        }

        #[test]
        fn any_range_converts_or_is_refused(start in any::<u64>(), end in any::<u64>(), typ in 0i32..4) {
            let asked = lock(start, end, typ);
            if let Ok(fl) = to_flock(&asked) {
                prop_assert!(fl.l_start >= 0 && fl.l_len >= 0);
                let back = from_flock(&asked, &fl);
                if typ != libc::F_UNLCK {
                    prop_assert_eq!(back.start, start);
                    prop_assert_eq!(back.end, end.min(OFFSET_MAX));
                }
            }
        }
    }
}
