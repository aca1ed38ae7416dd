//! Safe wrappers for the raw Linux calls fastfs makes.
//!
//! This is the only module with `unsafe`. Every wrapper makes one system call, takes
//! `BorrowedFd`/`&CStr`, and returns `io::Result` carrying the call's errno unchanged.
//! Descriptors that come back are `OwnedFd` with `O_CLOEXEC` set.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub mod uring;

/// Turns a `-1` return into the thread's errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A name or path as a C string; an interior NUL is `EINVAL`, as the kernel would say.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `/proc/self/fd/N` path that reopens or names an `O_PATH` descriptor.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Safe wrapper for `openat(2)`; `O_CLOEXEC` is always added.
pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and outlives the call; on success the kernel hands
    // us a new descriptor that nothing else owns.
    let fd = check(unsafe {
        libc::openat(
            dirfd,
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Safe wrapper for `fstatat(2)`. With an empty `name` and `AT_EMPTY_PATH` it stats `dir`.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`, which the kernel fills on success.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `fstat` of any descriptor, `O_PATH` ones included, never following a symlink.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// Safe wrapper for `fstatvfs(3)` (works on `O_PATH` descriptors).
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is valid for writes of one `statvfs`.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// Safe wrapper for `mknodat(2)`.
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// Safe wrapper for `symlinkat(2)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Safe wrapper for `unlinkat(2)`; `flags` is 0 or `AT_REMOVEDIR`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// Safe wrapper for `renameat2(2)`.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and outlive the call.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Safe wrapper for `linkat(2)`. `old_dir` of `None` means `AT_FDCWD`.
pub fn linkat(
    old_dir: Option<BorrowedFd<'_>>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: libc::c_int,
) -> io::Result<()> {
    let old = old_dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: both names are NUL-terminated and outlive the call.
    check(unsafe {
        libc::linkat(
            old,
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Safe wrapper for `readlinkat(2)` on an `O_PATH` descriptor of the link itself.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = check_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// Safe wrapper for `fchownat(2)` on the object `fd` refers to (never following a symlink).
/// `u32::MAX` (-1) leaves an id unchanged, as in chown(2).
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: the empty name is a valid C string; AT_EMPTY_PATH makes the call act on `fd`.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Safe wrapper for `chmod(2)` on a path (used with `/proc/self/fd/N`).
pub fn chmod(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// Safe wrapper for `truncate(2)` on a path (used with `/proc/self/fd/N`).
pub fn truncate(path: &CStr, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::truncate(path.as_ptr(), size) }).map(drop)
}

/// Safe wrapper for `ftruncate(2)`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain call on a borrowed descriptor.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// Safe wrapper for `utimensat(2)` with `AT_EMPTY_PATH` on `fd` (works for symlinks too).
pub fn futimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points to two timespecs as utimensat expects.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Safe wrapper for `faccessat(2)` on a path.
pub fn access(path: &CStr, mask: libc::c_int) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mask, 0) }).map(drop)
}

/// Safe wrapper for `copy_file_range(2)` with explicit offsets (file positions untouched).
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off_in = i64::try_from(off_in).map_err(|_| einval())?;
    let mut off_out = i64::try_from(off_out).map_err(|_| einval())?;
    // SAFETY: the offsets point to live i64s the kernel may update; no buffer is passed.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    })
}

/// Safe wrapper for `posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)`: doubles the
/// readahead window of this open file.
pub fn advise_sequential(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain integer arguments; the descriptor is borrowed for the call.
    match unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Safe wrapper for `fallocate(2)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| einval())?;
    let len = i64::try_from(len).map_err(|_| einval())?;
    // SAFETY: plain call on a borrowed descriptor.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// Safe wrapper for `lseek(2)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain call on a borrowed descriptor.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Safe wrapper for `getdents64(2)`: fills `buf` with raw `linux_dirent64` records.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    check_size(ret as isize)
}

/// Safe wrapper for `getxattr(2)`; an empty `buf` asks for the size.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes (null when empty, as allowed).
    check_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// Safe wrapper for `setxattr(2)`.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// Safe wrapper for `listxattr(2)`; an empty `buf` asks for the size.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Safe wrapper for `removexattr(2)`.
pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Safe wrapper for `fsync(2)` / `fdatasync(2)`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain call on a borrowed descriptor.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// Safe wrapper for `pread(2)`.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| einval())?;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

/// Safe wrapper for `pwrite(2)`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| einval())?;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) })
}

/// `close(dup(fd))`: lets the backing filesystem see a close (NFS flushes on it) while
/// the handle stays open.
pub fn flush_by_dup_close(fd: BorrowedFd<'_>) -> io::Result<()> {
    fd.try_clone_to_owned().map(drop)
}

/// Safe wrapper for `umask(2)`.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// Raises `RLIMIT_NOFILE` to `wanted` (soft and hard) if privileged, else the soft limit
/// to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit(wanted: u64) -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `lim` is valid for writes of one rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded.
    let current = unsafe { lim.assume_init() };
    let raised = libc::rlimit {
        rlim_cur: wanted.max(current.rlim_max),
        rlim_max: wanted.max(current.rlim_max),
    };
    // SAFETY: `raised` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    let soft = libc::rlimit {
        rlim_cur: current.rlim_max,
        ..current
    };
    // SAFETY: `soft` is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) })?;
    Ok(soft.rlim_cur)
}

/// Safe wrapper for `fstatfs(2)` (works on `O_PATH` descriptors).
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is valid for writes of one statfs.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for `statfs(2)`.
pub fn statfs(path: &CStr) -> io::Result<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated; `st` is valid for writes of one statfs.
    check(unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for `statvfs(3)`.
pub fn statvfs(path: &CStr) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated; `st` is valid for writes of one statvfs.
    check(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for `mount(2)`.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: u64,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: all strings are NUL-terminated and outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags as libc::c_ulong,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Safe wrapper for `umount2(2)`.
pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// Effective user and group ids of the daemon.
pub fn effective_ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid and getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Blocks `signals` in the calling thread; threads spawned later inherit the mask, so
/// only a thread that waits for them with [`wait_signal`] sees them.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises `set`; sigaddset only takes valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &sig in signals {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Safe wrapper for `sigwait(3)`: waits for one of `signals` (which must be blocked).
pub fn wait_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is valid for a write.
    let ret = unsafe { libc::sigwait(&set, &mut sig) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(sig)
}

/// The result of [`fork`] as seen by each process.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// Safe wrapper for `fork(2)`.
///
/// Callers must be single-threaded at this point (fastfs forks before it starts any
/// thread), so the child inherits no lock held by another thread.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees that no other thread exists, so the child's copy of
    // the address space is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// Safe wrapper for `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain call without arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Safe wrapper for `dup2(2)`: makes `target` (e.g. 0, 1, 2) refer to what `fd` refers to.
pub fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only replaces `target`, a standard descriptor we do not hold elsewhere.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Safe wrapper for `pipe2(2)` with `O_CLOEXEC`: returns (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is valid for two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors that nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Safe wrapper for `waitpid(2)`: the exit status of `pid`, or 128+signal.
pub fn wait_child(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: `status` is valid for a write.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Ok(128 + libc::WTERMSIG(status))
    }
}

/// Writes a message to syslog with the given priority.
pub fn syslog(priority: libc::c_int, msg: &str) {
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: the format string is a literal "%s" and `msg` is NUL-terminated.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) }
}

/// Sets the identity syslog messages carry.
pub fn openlog(ident: &'static CStr) {
    // SAFETY: `ident` is 'static, as openlog keeps the pointer.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) }
}

/// An all-zero `stat`.
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: `stat` is plain data for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Safe wrapper for the raw `setresuid(2)` system call, which (unlike the C library's
/// wrapper, which changes every thread of the process) changes only the calling thread's
/// ids. `u32::MAX` (-1) leaves an id unchanged.
pub fn set_thread_resuid(ruid: u32, euid: u32, suid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, ruid, euid, suid) };
    check(ret as libc::c_int).map(drop)
}

/// Safe wrapper for the raw `setresgid(2)` system call: the calling thread only.
pub fn set_thread_resgid(rgid: u32, egid: u32, sgid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, rgid, egid, sgid) };
    check(ret as libc::c_int).map(drop)
}

/// Safe wrapper for the raw `setgroups(2)` system call: the calling thread only.
pub fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is valid for reads of `groups.len()` gids.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    check(ret as libc::c_int).map(drop)
}

/// The supplementary groups of the calling thread (`getgroups(2)`).
pub fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a size of 0 only asks for the count.
    let n = check(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups = vec![0; n as usize];
    // SAFETY: `groups` is valid for writes of `n` gids.
    let n = check(unsafe { libc::getgroups(n, groups.as_mut_ptr()) })?;
    groups.truncate(n as usize);
    Ok(groups)
}

/// Gives the calling thread its own umask and working directory (`unshare(CLONE_FS)`),
/// so a umask set for one request does not apply to requests on other threads.
pub fn unshare_fs_attributes() -> io::Result<()> {
    // SAFETY: plain call; CLONE_FS only copies the thread's fs_struct.
    check(unsafe { libc::unshare(libc::CLONE_FS) }).map(drop)
}

/// Safe wrapper for `faccessat(2)` with `AT_EACCESS` on the object `fd` refers to: checks
/// with the effective ids (the thread's switched credentials), not the real ones.
pub fn access_as_effective(fd: BorrowedFd<'_>, mask: libc::c_int) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mask, libc::AT_EACCESS) })
        .map(drop)
}

/// A thread's capability sets, as `capget(2)` reports them (bit `n` = capability `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Safe wrapper for `capget(2)` of the calling thread.
pub fn thread_capabilities() -> io::Result<Capabilities> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and the two-element `data` are what capget expects for version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(ret as libc::c_int)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(Capabilities {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Sets the calling thread's effective capabilities to `effective` (which must be within
/// its permitted set; `capset(2)` acts on the calling thread only). After a switch of
/// the effective uid away from 0 the effective set is empty while the permitted set,
/// kept by the saved uid 0, still holds every capability the daemon has.
pub fn set_effective_capabilities(effective: u64) -> io::Result<()> {
    let now = thread_capabilities()?;
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |v: u64, i: usize| (v >> (32 * i)) as u32;
    let data: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: word(effective, i),
        permitted: word(now.permitted, i),
        inheritable: word(now.inheritable, i),
    });
    // SAFETY: `header` and the two-element `data` are what capset expects for version 3;
    // capset only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret as libc::c_int).map(drop)
}

/// The FUSE device ioctls: `_IOC(direction, 229, nr, size)`, direction 1 = write
/// (the kernel reads the argument), 2 = read.
const fn fuse_dev_ioctl(direction: u64, nr: u64, size: u64) -> u64 {
    (direction << 30) | (size << 16) | (229 << 8) | nr
}

/// Safe wrapper for `ioctl(FUSE_DEV_IOC_CLONE)`: a new `/dev/fuse` descriptor attached to
/// the connection of `session`, with its own queue of requests being served.
pub fn clone_fuse_device(session: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = openat(None, c"/dev/fuse", libc::O_RDWR, 0)?;
    let session_fd = session.as_raw_fd() as u32;
    // SAFETY: the argument is a pointer to a u32 that outlives the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            fuse_dev_ioctl(2, 0, 4) as libc::c_ulong,
            &session_fd,
        )
    };
    check(ret)?;
    Ok(fd)
}

/// Safe wrapper for `ioctl(FUSE_DEV_IOC_BACKING_OPEN)`: registers `file` as a kernel
/// passthrough backing file of the connection of `dev`; returns its backing id. The
/// kernel records the calling thread's credentials for I/O through it.
pub fn fuse_backing_open(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    #[repr(C)]
    struct BackingMap {
        fd: i32,
        flags: u32,
        padding: u64,
    }
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: the argument points to a fuse_backing_map that outlives the call.
    let ret = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            fuse_dev_ioctl(1, 1, std::mem::size_of::<BackingMap>() as u64) as libc::c_ulong,
            &map,
        )
    };
    check(ret).map(|id| id as u32)
}

/// Safe wrapper for `ioctl(FUSE_DEV_IOC_BACKING_CLOSE)`.
pub fn fuse_backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: the argument points to a u32 that outlives the call.
    let ret = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            fuse_dev_ioctl(1, 2, 4) as libc::c_ulong,
            &id,
        )
    };
    check(ret).map(drop)
}

/// Safe wrapper for `read(2)`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Safe wrapper for `writev(2)` of `parts`, in order, as one write.
pub fn writev(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: every iovec points into a slice that outlives the call; writev only reads.
    check_size(unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) })
}

/// Safe wrapper for `syncfs(2)`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain call on a borrowed descriptor.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// `stat` of an object and the id of the mount it was reached through.
#[derive(Clone, Copy)]
pub struct StatMount {
    pub st: libc::stat,
    /// The unique 64-bit mount id (Linux 6.8+), else the reusable 32-bit one.
    pub mnt_id: u64,
}

/// Safe wrapper for `statx(2)` of `name` in `dir` (or of `dir` itself with an empty name
/// and `AT_EMPTY_PATH`), never following a symlink; returns `stat`'s fields and the
/// mount id.
pub fn statx(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<StatMount> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE;
    // SAFETY: `stx` is valid for writes of one statx; `name` is NUL-terminated.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
            mask,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded (and the buffer was zeroed to begin with).
    let x = unsafe { stx.assume_init() };
    let mut st = zeroed_stat();
    st.st_dev = libc::makedev(x.stx_dev_major, x.stx_dev_minor);
    st.st_ino = x.stx_ino;
    st.st_mode = libc::mode_t::from(x.stx_mode);
    st.st_nlink = libc::nlink_t::from(x.stx_nlink);
    st.st_uid = x.stx_uid;
    st.st_gid = x.stx_gid;
    st.st_rdev = libc::makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st.st_size = x.stx_size as libc::off_t;
    st.st_blksize = x.stx_blksize as libc::blksize_t;
    st.st_blocks = x.stx_blocks as libc::blkcnt_t;
    st.st_atime = x.stx_atime.tv_sec;
    st.st_atime_nsec = i64::from(x.stx_atime.tv_nsec);
    st.st_mtime = x.stx_mtime.tv_sec;
    st.st_mtime_nsec = i64::from(x.stx_mtime.tv_nsec);
    st.st_ctime = x.stx_ctime.tv_sec;
    st.st_ctime_nsec = i64::from(x.stx_ctime.tv_nsec);
    Ok(StatMount {
        st,
        mnt_id: x.stx_mnt_id,
    })
}

/// The most bytes a file handle can have (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_BYTES: usize = 128;

/// Safe wrapper for `name_to_handle_at(2)` of `name` in `dir` (or of `dir` with an empty
/// name and `AT_EMPTY_PATH`), never following a symlink: the handle's type and bytes.
pub fn name_to_handle_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
) -> io::Result<(i32, Vec<u8>)> {
    let mut buf = [0u8; 8 + MAX_HANDLE_BYTES];
    buf[..4].copy_from_slice(&(MAX_HANDLE_BYTES as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a struct file_handle with room for MAX_HANDLE_SZ bytes, its
    // handle_bytes field saying so; `mount_id` is valid for a write.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            flags,
        )
    };
    check(ret as libc::c_int)?;
    let len =
        (u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize).min(MAX_HANDLE_BYTES);
    let handle_type = i32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
    Ok((handle_type, buf[8..8 + len].to_vec()))
}

/// Safe wrapper for `open_by_handle_at(2)` on the mount of `mount` (a descriptor that
/// is not `O_PATH`). Needs CAP_DAC_READ_SEARCH; ESTALE once the object is gone.
pub fn open_by_handle_at(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_BYTES {
        return Err(einval());
    }
    let mut buf = [0u8; 8 + MAX_HANDLE_BYTES];
    buf[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&handle_type.to_ne_bytes());
    buf[8..8 + handle.len()].copy_from_slice(handle);
    // SAFETY: `buf` is a complete struct file_handle; on success the kernel returns a
    // new descriptor nobody else owns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_ptr(),
            flags | libc::O_CLOEXEC,
        )
    };
    let fd = check(fd as libc::c_int)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Safe wrapper for `sched_setaffinity(2)` of the calling thread: it runs on `cpu` only.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain bits, valid when zeroed; CPU_SET writes inside it (the
    // index was checked above); pid 0 is the calling thread, and the set outlives the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))
        .map(drop)
    }
}

/// An unnamed temporary file in `dir` (`O_TMPFILE`, read-write, mode 0600): gone when
/// closed.
pub fn open_tmpfile(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat(Some(dir), c".", libc::O_TMPFILE | libc::O_RDWR, 0o600)
}

/// Safe wrapper for `fcntl(2)` with a lock command (`F_OFD_SETLK`, `F_OFD_SETLKW`,
/// `F_OFD_GETLK`, `F_SETLK`, ...): `lock` is read, and for a GETLK written back.
pub fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `lock` is a valid, exclusively borrowed struct flock for the whole call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) }).map(drop)
}

/// Safe wrapper for `flock(2)`.
pub fn flock(fd: BorrowedFd<'_>, operation: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::flock(fd.as_raw_fd(), operation) }).map(drop)
}

/// The calling thread's id (`gettid(2)`).
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid cannot fail and takes no arguments.
    unsafe { libc::gettid() }
}

/// Safe wrapper for `tgkill(2)`: sends `signal` to thread `tid` of this process only.
pub fn tgkill(tid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments; the thread group is our own process.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    check(ret as libc::c_int).map(drop)
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Makes `signal` interrupt a blocking system call of the thread it is sent to (which then
/// fails with EINTR) and do nothing else: a no-op handler installed without SA_RESTART.
pub fn interrupt_on_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the sigaction struct is zero-initialised then filled in; the handler is an
    // async-signal-safe function that does nothing; the old action is not wanted.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        check(libc::sigaction(signal, &action, std::ptr::null_mut())).map(drop)
    }
}

/// Safe wrapper for `fcntl(F_DUPFD_CLOEXEC)`: a new descriptor of the same open file.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Closes the descriptors above stderr that this process inherited across exec: those
/// without FD_CLOEXEC. Every descriptor fastfs (and the standard library) opens has
/// FD_CLOEXEC, so none of them is touched.
pub fn close_inherited() -> io::Result<()> {
    let listing = std::fs::read_dir("/proc/self/fd")?;
    let fds: Vec<RawFd> = listing
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD reads the flags of any descriptor number; a number that is not
        // open (the directory listing's own, closed by now) fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            // SAFETY: a descriptor without FD_CLOEXEC was inherited (see above): no
            // OwnedFd or File of this process owns it.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// `chdir("/")`.
pub fn chdir_root() -> io::Result<()> {
    // SAFETY: the path is a NUL-terminated literal.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map(drop)
}

/// Adds `O_NOATIME` to an open file's status flags (`fcntl(F_SETFL)`; needs ownership of
/// the file or CAP_FOWNER at the time of the call).
pub fn set_noatime(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return plain integers.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NOATIME) }).map(drop)
}

/// A detached copy of the mount tree at `path` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`), as an `O_PATH`-like descriptor of its root: the same files, under
/// mount flags of its own. Needs CAP_SYS_ADMIN in the mount's user namespace.
pub fn open_tree_clone(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and outlives the call; on success the kernel hands
    // us a new descriptor that nothing else owns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
        )
    };
    let fd = check(fd as libc::c_int)?;
    // SAFETY: `fd` was just returned by open_tree and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Safe wrapper for `mount_setattr(2)` on the whole tree of `mount` (a descriptor from
/// [`open_tree_clone`]): sets `attr_set` after clearing `attr_clr` (`MOUNT_ATTR_*`).
pub fn mount_setattr(mount: BorrowedFd<'_>, attr_set: u64, attr_clr: u64) -> io::Result<()> {
    set_mount_attr(mount, attr_set, attr_clr, None)
}

/// Makes `mount` (a descriptor from [`open_tree_clone`], not yet attached) an idmapped
/// mount with the ids of the user namespace `userns` (`mount_setattr(MOUNT_ATTR_IDMAP)`).
pub fn mount_setattr_idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    set_mount_attr(mount, libc::MOUNT_ATTR_IDMAP, 0, Some(userns))
}

fn set_mount_attr(
    mount: BorrowedFd<'_>,
    attr_set: u64,
    attr_clr: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    // SAFETY: the path is an empty NUL-terminated literal, `attr` is a valid mount_attr
    // whose size is passed, and both (and `userns`, if any) outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// Attaches the detached mount `mount` at `target` (`move_mount(2)`).
pub fn move_mount_to(mount: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated and outlive the call; the descriptors are
    // open for its length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// The file status flags of an open file (`fcntl(F_GETFL)`: access mode and O_* flags).
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and returns an integer.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}
