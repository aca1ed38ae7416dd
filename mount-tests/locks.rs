//! Locks reach the backing files: a lock taken through the mount excludes one taken
//! directly on BACKING or through a second mount, and the other way round, for flock,
//! POSIX record locks and open file description locks, with each kind's own semantics.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Takes locks the way programs do, in a process of its own. `python3 LOCKER PATH KIND`
/// opens PATH read-write, takes an exclusive lock of KIND (flock, posix, ofd) without
/// waiting, prints "locked" or "busy", then waits for stdin to close (or exits at once
/// when busy). KIND "posix2" takes the lock through a first descriptor, opens a second
/// one, locks again through it (one process never conflicts with itself), prints
/// "locked", and closes the second when stdin gets a line, printing "closed".
const LOCKER: &str = r#"
import fcntl, os, struct, sys
path, kind = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
def take(fd, kind):
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif kind in ("posix", "posix2"):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
try:
    take(fd, kind)
except OSError:
    print("busy", flush=True)
    sys.exit(1)
if kind == "posix2":
    second = os.open(path, os.O_RDWR)
    take(second, kind)
    print("locked", flush=True)
    sys.stdin.readline()
    os.close(second)
    print("closed", flush=True)
else:
    print("locked", flush=True)
sys.stdin.read()
"#;

struct Holder {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    /// Starts a locker on `path`; panics unless it got the lock.
    fn lock(path: &Path, kind: &str) -> Self {
        let mut holder = Self::start(path, kind);
        assert_eq!(holder.line(), "locked", "{kind} lock on {}", path.display());
        holder
    }

    fn start(path: &Path, kind: &str) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", LOCKER])
            .arg(path)
            .arg(kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Holder { child, out }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn send_line(&mut self) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }

    /// Ends the locker by closing its stdin (it exits and closes its descriptors).
    fn release(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Whether a fresh process gets an exclusive `kind` lock on `path` without waiting.
fn can_lock(path: &Path, kind: &str) -> bool {
    let mut probe = Holder::start(path, kind);
    let got = probe.line();
    drop(probe.child.stdin.take());
    let _ = probe.child.wait();
    match got.as_str() {
        "locked" => true,
        "busy" => false,
        other => panic!("locker said {other:?}"),
    }
}

/// `can_lock`, retried for a moment: a release through the mount reaches the backing
/// when the kernel's RELEASE does, which is sent in the background after close.
fn can_lock_soon(path: &Path, kind: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if can_lock(path, kind) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_kind_of_lock_excludes_the_backing_and_the_backing_excludes_it() {
    let m = Mounted::new();
    for kind in ["flock", "posix", "ofd"] {
        let name = format!("{kind}-file");
        fs::write(m.b(&name), b"data").unwrap();
        // Through the mount, then directly on BACKING.
        let holder = Holder::lock(&m.m(&name), kind);
        assert!(!can_lock(&m.b(&name), kind), "{kind}: BACKING got the lock");
        assert!(
            !can_lock(&m.m(&name), kind),
            "{kind}: a second locker got it"
        );
        holder.release();
        assert!(can_lock_soon(&m.b(&name), kind), "{kind}: not released");
        // Directly on BACKING, then through the mount.
        let holder = Holder::lock(&m.b(&name), kind);
        assert!(
            !can_lock(&m.m(&name), kind),
            "{kind}: the mount got the lock"
        );
        holder.release();
        assert!(can_lock_soon(&m.m(&name), kind));
    }
    assert_eq!(
        m.stats()["locks.owner_files"],
        0,
        "owner descriptors left behind"
    );
}

#[test]
fn locks_exclude_each_other_across_two_mounts_of_one_backing() {
    let first = Mounted::new();
    let second = Mounted::over(&first.backing, &[]);
    fs::write(first.b("shared"), b"").unwrap();
    for kind in ["flock", "posix", "ofd"] {
        let holder = Holder::lock(&first.m("shared"), kind);
        assert!(
            !can_lock(&second.m("shared"), kind),
            "{kind} through both mounts"
        );
        holder.release();
        assert!(can_lock_soon(&second.m("shared"), kind));
    }
}

#[test]
fn posix_locks_belong_to_the_process_and_go_with_any_close() {
    let m = Mounted::new();
    fs::write(m.b("f"), b"").unwrap();
    // Two descriptors of one process never conflict; closing either releases the locks.
    let mut holder = Holder::lock(&m.m("f"), "posix2");
    assert!(!can_lock(&m.b("f"), "posix"));
    holder.send_line();
    assert_eq!(holder.line(), "closed");
    assert!(
        can_lock_soon(&m.b("f"), "posix"),
        "closing one descriptor kept the process's lock"
    );
    holder.release();
}

#[test]
fn a_killed_holder_releases_its_locks() {
    let m = Mounted::new();
    fs::write(m.b("f"), b"").unwrap();
    for kind in ["flock", "posix", "ofd"] {
        let holder = Holder::lock(&m.m("f"), kind);
        assert!(!can_lock(&m.b("f"), kind));
        holder.kill();
        assert!(can_lock_soon(&m.b("f"), kind), "{kind} survived kill -9");
    }
}

#[test]
fn a_waiting_lock_is_granted_when_the_holder_lets_go() {
    let m = Mounted::new();
    fs::write(m.b("f"), b"").unwrap();
    let holder = Holder::lock(&m.b("f"), "posix");
    let waiter = std::thread::spawn({
        let path = m.m("f");
        move || {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut lock = whole_file(libc::F_WRLCK);
            fastfs::sys::fcntl_lock(file.as_fd(), libc::F_SETLKW, &mut lock).unwrap();
            // Held through the mount now: BACKING is excluded.
            file
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "F_SETLKW did not wait");
    holder.release();
    let file = waiter.join().unwrap();
    assert!(!can_lock(&m.b("f"), "posix"));
    drop(file);
    assert!(can_lock_soon(&m.b("f"), "posix"));
}

fn whole_file(typ: i32) -> libc::flock {
    libc::flock {
        l_type: typ as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[test]
fn a_signal_ends_a_waiting_setlkw_with_eintr_and_nothing_is_left_locked() {
    let m = Mounted::new();
    fs::write(m.b("f"), b"").unwrap();
    let holder = Holder::lock(&m.b("f"), "posix");
    // SIGUSR1 with a handler that does not restart calls: F_SETLKW must fail with EINTR.
    fastfs::sys::interrupt_on_signal(libc::SIGUSR1).unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn({
        let path = m.m("f");
        move || {
            tid_tx.send(fastfs::sys::gettid()).unwrap();
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut lock = whole_file(libc::F_WRLCK);
            let started = Instant::now();
            let result = fastfs::sys::fcntl_lock(file.as_fd(), libc::F_SETLKW, &mut lock);
            (result.map_err(|e| e.raw_os_error()), started.elapsed())
        }
    });
    let tid = tid_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fastfs::sys::tgkill(tid, libc::SIGUSR1).unwrap();
    let (result, waited) = waiter.join().unwrap();
    assert_eq!(result, Err(Some(libc::EINTR)), "after {waited:?}");
    // The daemon gave up its wait: once the holder lets go, the lock is free (the
    // interrupted request did not take it behind the caller's back).
    holder.release();
    assert!(can_lock_soon(&m.b("f"), "posix"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(can_lock(&m.b("f"), "posix"));
    // The mount still serves.
    assert_eq!(fs::read(m.m("f")).unwrap(), b"");
}

#[test]
fn sqlite_writers_through_the_mount_and_on_backing_keep_the_database_intact() {
    // cache=never: SQLite decides from whether its journal exists, which a process on
    // BACKING changes behind the kernel's name cache (with cache=auto a name is trusted
    // for a second, and SQLite then fails with "disk I/O error", measured).
    let m = Mounted::with_options(&["cache=never"]);
    let writer = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60)
db.execute("create table if not exists t (who text, n integer)")
db.commit()
for i in range(300):
    with db:
        db.execute("insert into t values (?, ?)", (sys.argv[2], i))
        db.execute("update t set n = n + 0 where who = ?", (sys.argv[2],))
db.close()
"#;
    sh(&format!(
        "/usr/bin/python3 -c 'import sqlite3; sqlite3.connect(\"{}\").execute(\"create table t (who text, n integer)\")'",
        m.b("db.sqlite").display()
    ));
    let spawn = |path: &Path, who: &str| {
        Command::new("/usr/bin/python3")
            .args(["-c", writer])
            .arg(path)
            .arg(who)
            .spawn()
            .unwrap()
    };
    let mut writers = vec![
        spawn(&m.m("db.sqlite"), "mount-1"),
        spawn(&m.b("db.sqlite"), "backing-1"),
        spawn(&m.m("db.sqlite"), "mount-2"),
        spawn(&m.b("db.sqlite"), "backing-2"),
    ];
    for w in &mut writers {
        assert!(w.wait().unwrap().success());
    }
    let check = sh(&format!(
        "/usr/bin/python3 -c 'import sqlite3; db = sqlite3.connect(\"{}\"); \
         print(db.execute(\"pragma integrity_check\").fetchone()[0], db.execute(\"select count(*) from t\").fetchone()[0])'",
        m.b("db.sqlite").display()
    ));
    assert_eq!(check.trim(), "ok 1200");
}

#[test]
fn an_ordinary_user_locks_through_the_mount_as_on_backing() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    fs::write(m.b("theirs"), b"").unwrap();
    sh(&format!("chown 65534:65534 {}", m.b("theirs").display()));
    fs::write(m.b("root-only"), b"").unwrap();
    sh(&format!("chmod 600 {}", m.b("root-only").display()));
    // A lock root holds on BACKING excludes nobody's through the mount, and the other way.
    let holder = Holder::lock(&m.b("theirs"), "flock");
    let busy = as_nobody(&format!("flock -n {} true", m.m("theirs").display()));
    assert!(!busy.status.success(), "nobody got a lock root holds");
    holder.release();
    let mut held =
        spawn_flock_as_nobody(&[m.m("theirs").as_os_str(), "sleep".as_ref(), "2".as_ref()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !can_lock(&m.b("theirs"), "flock"),
        "nobody's lock did not reach BACKING"
    );
    assert!(held.wait().unwrap().success());
    // A file nobody cannot open cannot be locked either.
    nobody_denied(
        &format!("flock -n {} true", m.m("root-only").display()),
        "Permission denied",
    );
}

#[test]
fn locks_local_keeps_them_among_users_of_the_mount() {
    let m = Mounted::with_options(&["locks=local"]);
    fs::write(m.b("f"), b"").unwrap();
    let holder = Holder::lock(&m.m("f"), "flock");
    assert!(!can_lock(&m.m("f"), "flock"));
    assert!(can_lock(&m.b("f"), "flock"), "locks=local reached BACKING");
    holder.release();
}

#[test]
fn a_read_only_locker_never_makes_the_file_open_for_writing() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    sh(&format!(
        "cp /usr/bin/true {p} && chmod 755 {p}",
        p = m.b("prog").display()
    ));
    // nobody holds a shared flock through a read-only open of root's program; root
    // still runs it from BACKING (a write-open would make that "Text file busy").
    let mut held = spawn_flock_as_nobody(&[
        "-s".as_ref(),
        m.m("prog").as_os_str(),
        "sleep".as_ref(),
        "2".as_ref(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !can_lock(&m.b("prog"), "flock"),
        "the lock did not reach BACKING"
    );
    sh(&m.b("prog").display().to_string());
    assert!(held.wait().unwrap().success());
}

#[test]
fn a_lock_needs_only_the_open_file_as_natively() {
    // Permission taken away after the open does not stop its owner from locking the file
    // through that open, natively or through the mount.
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    let native = m.native_dir("native");
    for dir in [m.m("pub"), native.join("pub")] {
        let dir = dir.display();
        sh(&format!("mkdir {dir} && chmod 1777 {dir}"));
        nobody_ok(&format!(
            "cd {dir} && : > f && exec 3<f 4>>f && chmod 000 f && \
             flock -n -s 3 && flock -n -u 3 && flock -n -x 4"
        ));
    }
}

#[test]
fn waits_for_held_locks_are_capped_per_user_and_free_locks_are_always_taken() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    for f in ["held", "free"] {
        fs::write(m.b(f), b"").unwrap();
        sh(&format!("chmod 666 {}", m.b(f).display()));
    }
    let holder = Holder::lock(&m.b("held"), "flock");
    let mut waiters: Vec<Child> = (0..8)
        .map(|_| spawn_flock_as_nobody(&[m.m("held").as_os_str(), "true".as_ref()]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A ninth wait of the same user is refused; a free lock is still taken at once.
    nobody_denied(
        &format!("flock {} true", m.m("held").display()),
        "No locks available",
    );
    nobody_ok(&format!("flock {} true", m.m("free").display()));
    holder.release();
    for w in &mut waiters {
        assert!(w.wait().unwrap().success());
    }
}

#[test]
fn many_users_waiting_for_one_lock_never_take_every_serving_thread() {
    // Nine users wait eight times each for a held lock, all from CPU 0 (over io_uring,
    // all in that CPU's queue). At most 32 wait, the others get ENOLCK, and the requests
    // that end the waits (the holder's close, each winner's close) and everyone else's
    // keep being served.
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    fs::write(m.b("held"), b"").unwrap();
    sh(&format!("chmod 666 {}", m.b("held").display()));
    let holder = Holder::lock(&m.b("held"), "flock");
    let waiter = r#"
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX)
except OSError as e:
    print("refused" if e.errno == errno.ENOLCK else e.strerror, flush=True)
    sys.exit(0)
os.close(fd)
print("locked", flush=True)
"#;
    let mut waiters: Vec<Child> = (1001..=1009)
        .flat_map(|uid| std::iter::repeat_n(uid, 8))
        .map(|uid| {
            Command::new("taskset")
                .args(["-c", "0", "setpriv"])
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    waiter,
                ])
                .arg(m.m("held"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // (72 Python starts on one CPU take a few seconds.)
    std::thread::sleep(Duration::from_secs(6));
    // Everyone else is still served, from the same CPU.
    let mut other = Command::new("taskset")
        .args(["-c", "0", "touch"])
        .arg(m.m("other"))
        .spawn()
        .unwrap();
    let served = wait_exit(&mut other, Duration::from_secs(20)).is_some_and(|s| s.success());
    if !served {
        for w in waiters.iter_mut().chain([&mut other]) {
            let _ = w.kill();
            let _ = w.wait();
        }
        panic!("a request of another user was not served while users waited for a lock");
    }
    holder.release();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut outcomes: Vec<String> = Vec::new();
    for w in &mut waiters {
        let done = wait_exit(w, deadline.saturating_duration_since(Instant::now()));
        let _ = w.kill();
        let _ = w.wait();
        let mut out = String::new();
        std::io::Read::read_to_string(w.stdout.as_mut().unwrap(), &mut out).unwrap();
        outcomes.push(if done.is_some() {
            out.trim().to_string()
        } else {
            "stuck".into()
        });
    }
    let count = |what: &str| outcomes.iter().filter(|o| *o == what).count();
    assert_eq!(count("stuck"), 0, "{outcomes:?}");
    assert_eq!(count("locked") + count("refused"), 72, "{outcomes:?}");
    assert!(
        count("locked") <= 32 && count("refused") >= 40,
        "{outcomes:?}"
    );
}

/// A thread waits in F_SETLKW while the main thread is in vfork (where only SIGKILL
/// reaches it) and a signal with an SA_RESTART handler is sent to the process: the
/// kernel leaves it pending for the main thread, and the waiting thread goes on waiting,
/// natively and through the mount (waking it would hand it errno 512, ERESTARTSYS).
const WAIT_BESIDE_VFORK: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int fd;
static void handler(int sig) { (void)sig; }

static void *waiter(void *unused) {
    (void)unused;
    struct flock lock = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    int r = fcntl(fd, F_SETLKW, &lock);
    printf("%s\n", r == 0 ? "granted" : strerror(errno));
    fflush(stdout);
    return NULL;
}

int main(int argc, char **argv) {
    struct sigaction sa = { .sa_handler = handler, .sa_flags = SA_RESTART };
    sigaction(SIGUSR1, &sa, NULL);
    fd = open(argv[1], O_RDWR);
    if (fd < 0) { perror(argv[1]); return 1; }
    pthread_t thread;
    pthread_create(&thread, NULL, waiter, NULL);
    if (vfork() == 0) {
        sleep(4);
        _exit(0);
    }
    pthread_join(thread, NULL);
    return 0;
}
"#;

#[test]
fn a_signal_for_another_thread_leaves_a_lock_wait_alone() {
    let m = Mounted::new();
    let program = m.native_dir("program").join("wait-beside-vfork");
    fs::write(program.with_extension("c"), WAIT_BESIDE_VFORK).unwrap();
    sh(&format!("gcc -pthread -o {0} {0}.c", program.display()));
    fs::write(m.b("f"), b"").unwrap();
    for path in [m.b("f"), m.m("f")] {
        let holder = Holder::lock(&m.b("f"), "posix");
        let mut waiting = Command::new(&program)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        sh(&format!("kill -USR1 {}", waiting.id()));
        // Longer than the daemon's 50 ms watch of waiting callers' signals.
        std::thread::sleep(Duration::from_millis(800));
        holder.release();
        let done = wait_exit(&mut waiting, Duration::from_secs(20));
        let _ = waiting.kill();
        let mut out = String::new();
        std::io::Read::read_to_string(waiting.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(done.is_some(), "{}: the waiter never ended", path.display());
        assert_eq!(out.trim(), "granted", "{}", path.display());
    }
}

#[test]
fn one_file_reached_through_a_bind_mount_in_backing_has_one_set_of_locks() {
    let m = Mounted::new();
    fs::create_dir(m.b("dir")).unwrap();
    fs::create_dir(m.b("bound")).unwrap();
    fs::write(m.b("dir/f"), b"").unwrap();
    sh(&format!(
        "mount --bind {} {}",
        m.b("dir").display(),
        m.b("bound").display()
    ));
    let _unbind = Unmount(m.b("bound"));
    // One process, two paths to one file: its POSIX locks never conflict with each
    // other, and other processes see them through either path.
    let script = format!(
        "import fcntl, os\n\
         a = os.open('{a}', os.O_RDWR)\nb = os.open('{b}', os.O_RDWR)\n\
         fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
         fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('both')",
        a = m.m("dir/f").display(),
        b = m.m("bound/f").display()
    );
    let out = sh(&format!("/usr/bin/python3 -c \"{script}\""));
    assert_eq!(out.trim(), "both");
}
