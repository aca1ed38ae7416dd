//! Fixtures for tests that really mount: a fastfs over a fresh backing directory, loop
//! filesystems and tmpfs submounts. Every fixture unmounts in `Drop`, so a failing test
//! leaves nothing mounted. A fixture that cannot mount panics and says why: mount tests
//! never skip themselves.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const FASTFS: &str = env!("CARGO_BIN_EXE_fastfs");

/// The passthrough mode the mount tests run under (`FASTFS_TEST_PASSTHROUGH`, default auto).
pub fn passthrough_mode() -> String {
    std::env::var("FASTFS_TEST_PASSTHROUGH").unwrap_or_else(|_| "auto".into())
}

/// The io_uring mode the mount tests run under (`FASTFS_TEST_URING`, default: fastfs's
/// own default).
pub fn uring_mode() -> Option<String> {
    std::env::var("FASTFS_TEST_URING").ok()
}

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Mounts start under a read lock of this; a test that changes `fuse.enable_uring`
/// holds it for writing while its own mount starts, so no other mount's INIT sees the
/// temporary value.
static KERNEL_SETTINGS: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// Whether this thread holds [`KERNEL_SETTINGS`] for writing.
    static CHANGING_SETTINGS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `fuse.enable_uring` set to `value` while the guard lives, with no other mount
/// starting meanwhile; the value found is put back on drop (also when the test fails).
pub struct EnableUring {
    found: String,
    _lock: std::sync::RwLockWriteGuard<'static, ()>,
}

impl EnableUring {
    pub fn set(value: bool) -> Self {
        // Polled rather than waited for: a waiting writer would hold up every mount
        // starting meanwhile (while the quick bench holds a read lock, for a while).
        let lock = loop {
            match KERNEL_SETTINGS.try_write() {
                Ok(lock) => break lock,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
            }
        };
        let found = fs::read_to_string(ENABLE_URING).unwrap_or_else(|e| {
            panic!("{ENABLE_URING}: {e}: this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)")
        });
        fs::write(ENABLE_URING, if value { "Y" } else { "N" })
            .unwrap_or_else(|e| panic!("cannot write {ENABLE_URING}: {e}"));
        CHANGING_SETTINGS.with(|c| c.set(true));
        EnableUring {
            found: found.trim().to_string(),
            _lock: lock,
        }
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        CHANGING_SETTINGS.with(|c| c.set(false));
        if let Err(e) = fs::write(ENABLE_URING, &self.found) {
            eprintln!("cannot restore {ENABLE_URING} to {}: {e}", self.found);
        }
    }
}

/// Keeps every test from changing kernel settings (`fuse.enable_uring`) while it lives.
pub fn kernel_settings_unchanged() -> std::sync::RwLockReadGuard<'static, ()> {
    KERNEL_SETTINGS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a shell command; panics with its output unless it succeeds. Returns stdout.
pub fn sh(script: &str) -> String {
    let out = sh_output(script);
    assert!(
        out.status.success(),
        "command failed ({}): {script}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_output(script: &str) -> Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("bash runs")
}

/// Whether `path` is a mountpoint of type `fstype` (in this mount namespace).
pub fn mounted_as(path: &Path, fstype: &str) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_str().expect("utf-8 path");
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4) == Some(&want) && fields.get(sep + 1) == Some(&fstype)
    })
}

pub fn is_mountpoint(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_str().expect("utf-8 path");
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(want))
}

/// Unmounts `path`, lazily if it is busy; quiet if it is not mounted.
pub fn unmount(path: &Path) {
    if !is_mountpoint(path) {
        return;
    }
    let ok = Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// A fresh fastfs mount in the foreground, over a backing directory.
pub struct Mounted {
    pub mnt: PathBuf,
    pub backing: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Mounted {
    /// A fastfs over a new, empty backing directory on the root filesystem.
    pub fn new() -> Self {
        Self::with_options(&[])
    }

    pub fn with_options(options: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(test_root()).expect("tempdir");
        let backing = dir.path().join("backing");
        fs::create_dir(&backing).unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Self::start(dir, mnt, backing, options)
    }

    /// A fastfs over an existing directory `backing` (e.g. a loop-mounted filesystem).
    pub fn over(backing: &Path, options: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(test_root()).expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Self::start(dir, mnt, backing.to_path_buf(), options)
    }

    /// A fastfs at an existing mountpoint (e.g. one a killed daemon left behind).
    pub fn over_at(mnt: &Path, backing: &Path, options: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(test_root()).expect("tempdir");
        Self::start(dir, mnt.to_path_buf(), backing.to_path_buf(), options)
    }

    /// A fastfs over a new backing directory, started as `fastfs` under `prefix` (e.g.
    /// `prlimit --nofile=2048:2048`).
    pub fn under(prefix: &[&str], options: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(test_root()).expect("tempdir");
        let backing = dir.path().join("backing");
        fs::create_dir(&backing).unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Self::start_under(prefix, dir, mnt, backing, options)
    }

    /// [`Mounted::over`], with `fastfs` started under `prefix`.
    pub fn over_under(prefix: &[&str], backing: &Path, options: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(test_root()).expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Self::start_under(prefix, dir, mnt, backing.to_path_buf(), options)
    }

    fn start(dir: TempDir, mnt: PathBuf, backing: PathBuf, options: &[&str]) -> Self {
        Self::start_under(&[], dir, mnt, backing, options)
    }

    fn start_under(
        prefix: &[&str],
        dir: TempDir,
        mnt: PathBuf,
        backing: PathBuf,
        options: &[&str],
    ) -> Self {
        let log = dir.path().join("fastfs.log");
        let mut opts = vec![format!("passthrough={}", passthrough_mode())];
        if let Some(mode) = uring_mode() {
            opts.push(format!("uring={mode}"));
        }
        opts.extend(options.iter().map(|s| s.to_string()));
        // A test changing fuse.enable_uring holds the lock itself.
        let settings = (!CHANGING_SETTINGS.with(|c| c.get())).then(kernel_settings_unchanged);
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(FASTFS);
                c
            }
            None => Command::new(FASTFS),
        };
        let child = command
            .arg("-f")
            .arg("-v")
            .arg("-o")
            .arg(opts.join(","))
            .arg(&mnt)
            .arg(&backing)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("fastfs starts");
        let mut m = Mounted {
            mnt,
            backing,
            child: Some(child),
            log,
            _dir: dir,
        };
        m.wait_mounted();
        drop(settings);
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Only a live fastfs root answers the stats attribute: a dead mount left at the
        // same place says ENOTCONN, and the plain directory under it has no such attribute
        // (so a check cannot pass in the moment between detaching the one and mounting
        // the other).
        while !(mounted_as(&self.mnt, "fuse.fastfs") && fastfs::read_stats(&self.mnt).is_ok()) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "fastfs exited ({status}) before mounting {}:\n{}",
                    self.mnt.display(),
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "fastfs did not mount {} within 20 s:\n{}",
                self.mnt.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A fresh directory `name` beside BACKING's temporary home, on the same filesystem as
    /// a backing made by [`Mounted::new`]: the native twin a test compares with.
    pub fn native_dir(&self, name: &str) -> PathBuf {
        let dir = self._dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        dir
    }

    /// A path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The same path inside the backing directory.
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// The counters `fastfs stats` prints.
    pub fn stats(&self) -> HashMap<String, u64> {
        let out = Command::new(FASTFS)
            .arg("stats")
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fastfs stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').expect("name value");
                (k.to_string(), v.parse().expect("number"))
            })
            .collect()
    }

    /// Sends `signal` to the daemon and returns its exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        sh(&format!("kill -{signal} {pid}"));
        wait_exit(self.child.as_mut().unwrap(), Duration::from_secs(10))
            .unwrap_or_else(|| panic!("fastfs did not exit after {signal}"))
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(self.child.as_mut().unwrap(), limit)
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status.
    pub fn unmount_and_wait(&mut self) -> std::process::ExitStatus {
        sh(&format!("umount {}", self.mnt.display()));
        wait_exit(self.child.as_mut().unwrap(), Duration::from_secs(10))
            .expect("fastfs exits after umount")
    }
}

/// Serializes tests that drop the kernel's caches with those that need its caches kept:
/// `echo 2 > /proc/sys/vm/drop_caches` makes the kernel forget the inodes of every mount,
/// including another test's.
pub fn page_cache_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes the kernel forget every unused inode and dentry (under [`page_cache_lock`]).
pub fn drop_caches() {
    let _caches = page_cache_lock();
    sh("sync; echo 2 > /proc/sys/vm/drop_caches");
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount(&self.mnt);
        if let Some(mut child) = self.child.take()
            && wait_exit(&mut child, Duration::from_secs(10)).is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A panic in a session thread ends the daemon quietly once its mount is gone;
        // every test that mounts checks the log for one (unless it is failing already).
        let log = self.log_text();
        if !std::thread::panicking() && log.contains("panicked") {
            panic!("the fastfs daemon panicked:\n{log}");
        }
    }
}

/// Opens `path` and the two directories above it to every user (mode 0755), so an
/// unprivileged user can reach a mount or directory the tests made.
pub fn make_traversable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for dir in path.ancestors().take(3) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Starts `cp SRC DST` in the background (for faults injected during a copy).
pub fn spawn_cp(src: &Path, dst: &Path) -> Child {
    Command::new("cp")
        .arg(src)
        .arg(dst)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Lists and stats `dir` over and over while `busy` runs; returns how many rounds
/// completed before it ended (after it succeeded).
pub fn served_while_running(busy: &mut Child, dir: &Path) -> u32 {
    let mut served = 0;
    while busy.try_wait().unwrap().is_none() {
        fs::read_dir(dir).unwrap().for_each(drop);
        fs::symlink_metadata(dir).unwrap();
        if busy.try_wait().unwrap().is_none() {
            served += 1;
        }
    }
    assert!(busy.wait().unwrap().success());
    served
}

/// Where tests put their directories: on the root filesystem (ext4 here), not a tmpfs.
pub fn test_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mount-tests");
    fs::create_dir_all(&root).unwrap();
    root
}

/// A filesystem image loop-mounted on a fresh directory, removed on drop.
pub struct LoopFs {
    pub path: PathBuf,
    _dir: TempDir,
}

impl LoopFs {
    /// `mkfs` is e.g. "mkfs.xfs -q" or "mkfs.ext4 -q"; `size` as truncate(1) takes it.
    pub fn new(mkfs: &str, size: &str) -> Self {
        let dir = tempfile::tempdir_in(test_root()).unwrap();
        let image = dir.path().join("image");
        let path = dir.path().join("fs");
        fs::create_dir(&path).unwrap();
        sh(&format!(
            "truncate -s {size} {img} && {mkfs} {img} >/dev/null && mount -o loop {img} {mnt}",
            img = image.display(),
            mnt = path.display()
        ));
        LoopFs { path, _dir: dir }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// Unmounts a path on drop (for mounts a test makes itself).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// The mount(8) helper `/sbin/mount.fuse.fastfs`, installed for one test at a time and
/// removed afterwards.
pub struct MountHelper {
    path: PathBuf,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl MountHelper {
    pub fn install() -> Self {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = PathBuf::from("/sbin/mount.fuse.fastfs");
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(FASTFS, &path).unwrap();
        MountHelper {
            path,
            _one_at_a_time: guard,
        }
    }
}

impl Drop for MountHelper {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A tmpfs mounted on `path` (which must exist), unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn on(path: &Path) -> Self {
        sh(&format!(
            "mount -t tmpfs -o size=512m tmpfs {}",
            path.display()
        ));
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// sha256 of a file.
pub fn checksum(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
}

/// Writes `mib` MiB of random data to `path`.
pub fn write_random(path: &Path, mib: usize) {
    sh(&format!(
        "head -c {}M /dev/urandom > '{}'",
        mib,
        path.display()
    ));
}

/// A fresh directory `b` to use as BACKING, in a temporary directory that owns it.
pub fn scratch_backing() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let backing = tmp.path().join("b");
    fs::create_dir(&backing).unwrap();
    (tmp, backing)
}

/// Asserts the copy counters of `m`: bytes copied by the backing filesystem and by the
/// daemon's buffered fallback.
pub fn assert_copied(m: &Mounted, offloaded: u64, fallback: u64) {
    let stats = m.stats();
    assert_eq!(
        stats["copy_file_range.offloaded_bytes"], offloaded,
        "{stats:?}"
    );
    assert_eq!(
        stats["copy_file_range.fallback_bytes"], fallback,
        "{stats:?}"
    );
}

/// Asserts that the mount refuses every kind of write with EROFS and that `existing`
/// (a file in it) still reads `content`.
pub fn assert_writes_refused(m: &Mounted, existing: &str, content: &[u8]) {
    assert_eq!(errno_of(fs::write(m.m("new"), b"")), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(m.m(existing))), libc::EROFS);
    for options in [
        fs::OpenOptions::new().write(true).clone(),
        fs::OpenOptions::new().append(true).clone(),
    ] {
        assert_eq!(errno_of(options.open(m.m(existing))), libc::EROFS);
    }
    assert_eq!(fs::read(m.m(existing)).unwrap(), content);
}

pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// Runs a shell script as the unprivileged user 65534 (nobody:nogroup, no other groups).
pub fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts `flock ARGS...` as nobody (as [`as_nobody`] runs a script) without waiting.
pub fn spawn_flock_as_nobody(args: &[&std::ffi::OsStr]) -> Child {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "flock"])
        .args(args)
        .spawn()
        .unwrap()
}

/// Runs `script` as nobody and returns its stdout; panics unless it succeeds.
pub fn nobody_ok(script: &str) -> String {
    let out = as_nobody(script);
    assert!(
        out.status.success(),
        "as nobody, expected success: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` as nobody; panics unless it fails with `message` on stderr.
pub fn nobody_denied(script: &str, message: &str) {
    let out = as_nobody(script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "as nobody, expected failure: {script}"
    );
    assert!(
        stderr.contains(message),
        "{script}: expected '{message}' in: {stderr}"
    );
}

/// A /dev/fuse node nobody may open, for a user namespace to bind over its /dev/fuse
/// (this machine's /dev/fuse is 0600; distributions ship it 0666).
pub fn user_fuse_node(dir: &Path) -> PathBuf {
    let node = dir.join("fuse");
    sh(&format!("mknod -m 0666 {} c 10 229", node.display()));
    node
}
