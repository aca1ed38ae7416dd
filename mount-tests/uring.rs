//! FUSE over io_uring: the ring serves requests on every CPU's queue, a long request
//! does not stall its queue, shutdown paths end the daemon, and without the kernel's
//! offer `auto` falls back to /dev/fuse while `on` refuses to mount.
//!
//! Each test sets `fuse.enable_uring` for its own mount only ([`EnableUring`] puts back
//! what it found), so they run in every pass of the mount tests.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// A fastfs served over io_uring (`uring=on`), mounted while the kernel offers it.
fn ring_mount(options: &[&str]) -> Mounted {
    let _enabled = EnableUring::set(true);
    let mut all = vec!["uring=on"];
    all.extend_from_slice(options);
    let m = Mounted::with_options(&all);
    assert_eq!(m.stats()["transport.io_uring"], 1, "{}", m.log_text());
    m
}

/// Requests each io_uring queue served so far, by queue.
fn ring_requests(m: &Mounted) -> Vec<u64> {
    let stats = m.stats();
    (0..)
        .map_while(|q| {
            stats
                .get(&format!("transport.ring.queue{q}.requests"))
                .copied()
        })
        .collect()
}

fn possible_cpus() -> usize {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    fastfs::transport::ring::possible_cpus(&text).expect("a CPU list")
}

fn online_cpus() -> Vec<usize> {
    let mut set = Vec::new();
    for cpu in 0..possible_cpus() {
        let online = fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/online"))
            .map_or(cpu == 0, |v| v.trim() == "1");
        if online {
            set.push(cpu);
        }
    }
    set
}

#[test]
fn the_ring_serves_every_cpus_requests() {
    let m = ring_mount(&[]);
    let queues = ring_requests(&m);
    assert_eq!(queues.len(), possible_cpus(), "one queue per possible CPU");
    let before = m.stats();
    // Work issued from each CPU lands on that CPU's queue.
    for cpu in online_cpus() {
        sh(&format!(
            "cd {mnt} && taskset -c {cpu} bash -c 'mkdir d{cpu} && for i in $(seq 50); do echo $i > d{cpu}/f$i; done \
             && ls -l d{cpu} >/dev/null && cp d{cpu}/f1 d{cpu}/copy && rm d{cpu}/f2'",
            mnt = m.mnt.display()
        ));
        let served = ring_requests(&m);
        assert!(
            served[cpu] > queues[cpu] + 100,
            "queue {cpu} served {} requests for work issued on CPU {cpu}: {served:?}",
            served[cpu] - queues[cpu]
        );
    }
    let after = m.stats();
    // Everything but FORGET (and INTERRUPT, which nothing here sends) went over the ring.
    let delta = |name: &str| after[name] - before[name];
    let dev_fuse = delta("transport.dev_fuse.requests");
    let forgets = delta("requests.forget") + delta("requests.batch_forget");
    assert!(
        dev_fuse <= forgets,
        "{dev_fuse} requests over /dev/fuse, {forgets} of them FORGET"
    );
    // The copy was offloaded and the files opened as over /dev/fuse.
    assert!(after["copy_file_range.calls"] > before["copy_file_range.calls"]);
    if passthrough_mode() == "on" {
        assert!(after["passthrough.opens"] > before["passthrough.opens"]);
    }
    for cpu in online_cpus() {
        assert_eq!(fs::read(m.b(&format!("d{cpu}/copy"))).unwrap(), b"1\n");
        assert!(!m.b(&format!("d{cpu}/f2")).exists());
    }
}

#[test]
fn an_unprivileged_user_is_served_as_themselves_over_the_ring() {
    let m = ring_mount(&["allow_other"]);
    make_traversable(&m.mnt);
    fs::create_dir(m.m("shared")).unwrap();
    sh(&format!("chmod 1777 {}", m.m("shared").display()));
    fs::write(m.m("root-only"), b"secret").unwrap();
    sh(&format!("chmod 600 {}", m.m("root-only").display()));
    nobody_ok(&format!(
        "cd {} && echo mine > shared/n && cp shared/n shared/n2 && ls -l shared >/dev/null",
        m.mnt.display()
    ));
    assert_eq!(fs::metadata(m.b("shared/n2")).unwrap().uid(), 65534);
    nobody_denied(
        &format!("cat {}", m.m("root-only").display()),
        "Permission denied",
    );
    nobody_denied(
        &format!("echo x > {}", m.m("root-only").display()),
        "Permission denied",
    );
    assert_eq!(fs::read(m.b("root-only")).unwrap(), b"secret");
    assert!(ring_requests(&m).iter().sum::<u64>() > 0);
}

#[test]
fn a_long_request_does_not_stall_its_cpus_queue() {
    // cache=never: every stat and listing below reaches the daemon. The copy crosses to
    // a tmpfs, so the daemon copies the data itself: one long request per chunk.
    let m = ring_mount(&["cache=never"]);
    fs::create_dir(m.b("tmp")).unwrap();
    let _tmpfs = Tmpfs::on(&m.b("tmp"));
    write_random(&m.m("big"), 384);
    fs::create_dir(m.m("dir")).unwrap();
    // The copy and this thread both run on CPU 0: their requests share queue 0.
    fastfs::sys::pin_thread_to_cpu(0).unwrap();
    let before = ring_requests(&m)[0];
    let mut cp = Command::new("taskset")
        .args(["-c", "0", "cp"])
        .arg(m.m("big"))
        .arg(m.m("tmp/big"))
        .spawn()
        .unwrap();
    let served_during_copy = served_while_running(&mut cp, &m.m("dir"));
    assert_eq!(checksum(&m.b("big")), checksum(&m.b("tmp/big")));
    assert!(served_during_copy > 0, "no ls/stat completed while cp ran");
    assert!(ring_requests(&m)[0] > before + u64::from(served_during_copy));
    assert!(
        m.stats()["requests.max_in_flight"] >= 2,
        "requests were never served concurrently"
    );
}

#[test]
fn auto_uses_dev_fuse_when_the_kernel_does_not_offer_the_ring() {
    let m = {
        let _disabled = EnableUring::set(false);
        Mounted::with_options(&["uring=auto"])
    };
    fs::write(m.m("f"), b"data").unwrap();
    assert_eq!(fs::read(m.m("f")).unwrap(), b"data");
    let stats = m.stats();
    assert_eq!(stats["transport.io_uring"], 0);
    assert!(ring_requests(&m).is_empty());
    assert!(stats["transport.dev_fuse.requests"] > 0);
}

#[test]
fn uring_on_refuses_to_mount_when_the_kernel_does_not_offer_the_ring() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (mnt, backing) = (dir.path().join("mnt"), dir.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    let _disabled = EnableUring::set(false);
    for args in [vec!["-o", "uring=on"], vec!["--uring", "on"]] {
        let out = Command::new(FASTFS)
            .args(&args)
            .arg(&mnt)
            .arg(&backing)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} mounted");
        assert!(
            stderr.starts_with("fastfs: ") && stderr.contains("fuse.enable_uring"),
            "{stderr}"
        );
        assert!(!is_mountpoint(&mnt));
    }
}

#[test]
fn umount_and_sigterm_end_a_ring_daemon_even_with_a_request_in_flight() {
    let mut m = ring_mount(&[]);
    fs::write(m.m("f"), b"x").unwrap();
    let threads = fs::read_dir(format!("/proc/{}/task", m.pid()))
        .unwrap()
        .count();
    assert!(
        threads >= 2 * possible_cpus(),
        "{threads} threads for {} queues",
        possible_cpus()
    );
    let status = m.unmount_and_wait();
    assert!(status.success(), "{status}\n{}", m.log_text());

    let mut m = ring_mount(&[]);
    fs::create_dir(m.b("tmp")).unwrap();
    let _tmpfs = Tmpfs::on(&m.b("tmp"));
    write_random(&m.m("big"), 256);
    let mut cp = spawn_cp(&m.m("big"), &m.m("tmp/big"));
    std::thread::sleep(Duration::from_millis(50));
    let status = m.signal_and_wait("TERM");
    assert!(status.success(), "{status}\n{}", m.log_text());
    let _ = cp.wait();
    assert!(!is_mountpoint(&m.mnt), "SIGTERM left the mount behind");
}

#[test]
fn kill_9_of_a_ring_daemon_and_a_remount_over_the_ring() {
    let mut m = ring_mount(&[]);
    fs::write(m.m("kept"), b"data").unwrap();
    let status = m.signal_and_wait("KILL");
    assert!(!status.success());
    // ENOTCONN once the kernel has torn the rings down; before that ECONNABORTED, or
    // ECANCELED for a request handed to the ring of a thread already dead
    // (dev_uring.c: fuse_uring_send_in_task with IO_URING_F_TASK_DEAD).
    let dead = errno_of(fs::read_dir(&m.mnt));
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&dead),
        "errno {dead} from the dead mount"
    );
    let again = {
        let _enabled = EnableUring::set(true);
        Mounted::over_at(&m.mnt, &m.backing, &["uring=on"])
    };
    assert_eq!(fs::read(again.m("kept")).unwrap(), b"data");
    assert_eq!(again.stats()["transport.io_uring"], 1);
    assert!(ring_requests(&again).iter().sum::<u64>() > 0);
}

/// A signal that reaches a process waiting for a lock before a ring thread has picked up
/// its request is never told to the daemon by the kernel (no INTERRUPT): the daemon must
/// notice it (or the process would wait, unkillable, until the lock is granted).
#[test]
fn signals_end_lock_waits_over_the_ring() {
    let m = ring_mount(&[]);
    fs::write(m.b("f"), b"").unwrap();
    // The holder itself holds the lock (not a child of it), so killing it frees it.
    let mut holder = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import fcntl, os, sys, time\n\
             fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(300)",
        ])
        .arg(m.b("f"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    // Each waiter asks for the lock 1,000 times, each time with a timer that first fires
    // 1-2,000 µs in (so signals also land before the request is picked up) and then
    // every millisecond; its handler raises, so each signal ends one wait with EINTR.
    // (An Alarm may land anywhere, also in the cleanup, so every statement that runs
    // with the handler installed is inside a `try`.)
    let waiter = r#"
import fcntl, os, random, signal, sys
class Alarm(Exception): pass
def alarm(*_): raise Alarm()
signal.signal(signal.SIGALRM, alarm)
fd = os.open(sys.argv[1], os.O_RDONLY)
def attempt():
    signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 2e-3), 1e-3)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sys.exit("granted a lock another process holds")
attempts = 0
while True:
    try:
        if attempts == 1000:
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            break
        attempts += 1
        attempt()
    except Alarm:
        pass
"#;
    let mut waiters: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new("/usr/bin/python3")
                .args(["-c", waiter])
                .arg(m.m("f"))
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let finished: Vec<_> = waiters
        .iter_mut()
        .map(|w| {
            wait_exit(
                w,
                deadline.saturating_duration_since(std::time::Instant::now()),
            )
        })
        .collect();
    holder.kill().unwrap();
    holder.wait().unwrap();
    for w in &mut waiters {
        let _ = w.kill();
        let _ = w.wait();
    }
    let stuck = finished.iter().filter(|f| f.is_none()).count();
    assert_eq!(
        stuck, 0,
        "{stuck} of 8 lock waiters never saw their signals end"
    );
    for status in finished.into_iter().flatten() {
        assert!(status.success(), "a waiter failed: {status}");
    }
}
