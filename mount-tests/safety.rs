//! Safety: permissions and ownership for other users, no escape from BACKING, hostile or
//! failing backing directories, and faults of the daemon itself.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// A mount other users may use: the test tree is world-traversable.
fn shared_mount() -> Mounted {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    m
}

#[test]
fn other_users_meet_the_backing_permissions_and_own_what_they_create() {
    let m = shared_mount();
    let mnt = m.mnt.display().to_string();
    sh(&format!(
        "cd {mnt} && echo secret > private && chmod 0600 private && mkdir rootdir && \
         mkdir shared && chmod 1777 shared && echo mine > shared/roots && chmod 0666 shared/roots && \
         mkdir sgid && chgrp 4242 sgid && chmod 2777 sgid"
    ));
    nobody_denied(&format!("cat {mnt}/private"), "Permission denied");
    nobody_denied(&format!("touch {mnt}/rootdir/x"), "Permission denied");
    nobody_denied(&format!("touch {mnt}/new-in-root"), "Permission denied");
    nobody_ok(&format!(
        "cd {mnt}/shared && echo hi > f && mkdir d && ln -s f l && mkfifo p && \
         chmod 0640 f && test \"$(stat -c %u:%g f)\" = 65534:65534"
    ));
    for name in ["f", "d", "l", "p"] {
        let st = fs::symlink_metadata(m.b(&format!("shared/{name}"))).unwrap();
        assert_eq!(
            (st.uid(), st.gid()),
            (65534, 65534),
            "owner of {name} in BACKING"
        );
    }
    assert_eq!(fs::metadata(m.b("shared/f")).unwrap().mode() & 0o777, 0o640);
    // Sticky directory: nobody may not remove or rename root's file there.
    nobody_denied(
        &format!("rm -f {mnt}/shared/roots"),
        "Operation not permitted",
    );
    nobody_denied(
        &format!("mv {mnt}/shared/roots {mnt}/shared/x"),
        "Operation not permitted",
    );
    // ...but may write it (0666).
    nobody_ok(&format!("echo more >> {mnt}/shared/roots"));
    // chmod/chown follow the kernel's rules: own files yes, others' no, no giveaways.
    nobody_denied(
        &format!("chmod 0777 {mnt}/shared/roots"),
        "Operation not permitted",
    );
    nobody_denied(
        &format!("chown 0 {mnt}/shared/f"),
        "Operation not permitted",
    );
    nobody_ok(&format!("chmod 0600 {mnt}/shared/f"));
    // New objects in a setgid directory take the directory's group.
    nobody_ok(&format!("touch {mnt}/sgid/g && mkdir {mnt}/sgid/sub"));
    assert_eq!(fs::metadata(m.b("sgid/g")).unwrap().gid(), 4242);
    let sub = fs::metadata(m.b("sgid/sub")).unwrap();
    assert_eq!((sub.uid(), sub.gid()), (65534, 4242));
    assert!(
        sub.mode() & libc::S_ISGID != 0,
        "setgid not inherited by a subdirectory"
    );
}

#[test]
fn a_write_by_another_user_clears_set_user_id() {
    let m = shared_mount();
    let f = m.m("suid").display().to_string();
    sh(&format!("echo x > {f} && chmod 4777 {f}"));
    nobody_ok(&format!("echo y >> {f}"));
    assert_eq!(fs::metadata(m.b("suid")).unwrap().mode() & 0o7777, 0o777);
    sh(&format!("chmod 4777 {f} && echo z >> {f}"));
    assert_eq!(
        fs::metadata(m.b("suid")).unwrap().mode() & 0o7777,
        0o4777,
        "root's write must keep set-user-id, as natively"
    );
    nobody_ok(&format!("truncate -s 0 {f}"));
    assert_eq!(fs::metadata(m.b("suid")).unwrap().mode() & 0o7777, 0o777);
}

#[test]
fn root_keeps_its_rights_on_threads_that_served_another_user() {
    // Every serving thread acts as some caller and keeps that identity until the next
    // request: a root request that lands on a thread that last served nobody must still
    // be root's, with root's capabilities (the CI found chown refused this way).
    let m = shared_mount();
    let mnt = m.mnt.display().to_string();
    sh(&format!("mkdir {mnt}/pub && chmod 1777 {mnt}/pub"));
    for round in 0..40 {
        nobody_ok(&format!(
            "touch {mnt}/pub/n{round} && stat {mnt}/pub/n{round} {mnt}/pub >/dev/null"
        ));
        sh(&format!(
            "chown 100:100 {mnt}/pub/n{round} && touch {mnt}/r{round} && \
             chmod 4755 {mnt}/r{round} && echo x >> {mnt}/r{round}"
        ));
        let st = fs::metadata(m.b(&format!("pub/n{round}"))).unwrap();
        assert_eq!(
            (st.uid(), st.gid()),
            (100, 100),
            "root's chown, round {round}"
        );
        let st = fs::metadata(m.b(&format!("r{round}"))).unwrap();
        assert_eq!(
            st.mode() & 0o7777,
            0o4755,
            "root's write kept set-user-id, round {round}"
        );
    }
}

#[test]
fn nothing_escapes_the_backing_directory() {
    let m = Mounted::new();
    std::os::unix::fs::symlink("/etc", m.b("etc-link")).unwrap();
    std::os::unix::fs::symlink("../..", m.b("up-link")).unwrap();
    // Links are returned as links.
    assert_eq!(fs::read_link(m.m("etc-link")).unwrap(), Path::new("/etc"));
    assert!(
        fs::symlink_metadata(m.m("up-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Opening a link without following it is refused, as natively: the daemon is never
    // asked to open what the link points to.
    let nofollow = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.m("etc-link"));
    assert_eq!(errno_of(nofollow), libc::ELOOP);
    // The mount root's parent is the mountpoint's parent, never BACKING's.
    let parent = fs::metadata(m.m("..")).unwrap().ino();
    assert_eq!(parent, fs::metadata(m.mnt.parent().unwrap()).unwrap().ino());
    // Names with '/' or ".." in a crafted request are refused: see the unit tests of
    // src/fs.rs, which call the same methods the FUSE adapter does.
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_followed() {
    let m = Mounted::new();
    fs::create_dir(m.b("d")).unwrap();
    fs::write(m.b("d/file"), b"inside").unwrap();
    // The kernel now holds the inode of directory d (cache=always keeps the dentry).
    assert_eq!(fs::read(m.m("d/file")).unwrap(), b"inside");
    let outside = tempfile::tempdir_in(test_root()).unwrap();
    fs::write(outside.path().join("file"), b"OUTSIDE").unwrap();
    fs::rename(m.b("d"), m.b("d.moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), m.b("d")).unwrap();
    // Opening d/file goes through the directory's O_PATH descriptor, not a path.
    assert_eq!(fs::read(m.m("d/file")).unwrap(), b"inside");
    fs::write(m.m("d/new"), b"n").unwrap();
    assert!(m.b("d.moved/new").exists());
    assert!(!outside.path().join("new").exists());
}

#[test]
fn long_names_and_deep_paths_work_up_to_the_limits() {
    let m = Mounted::new();
    let name = "n".repeat(255);
    fs::write(m.m(&name), b"x").unwrap();
    assert_eq!(fs::read(m.b(&name)).unwrap(), b"x");
    assert_eq!(
        errno_of(fs::write(m.m(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    // A path of about 4000 bytes, built one level at a time.
    let component = "d".repeat(200);
    let depth = 20;
    let out = sh(&format!(
        "cd {} && for i in $(seq {depth}); do mkdir {component} && cd {component}; done && \
         echo deep > f && pwd | wc -c && cat f",
        m.mnt.display()
    ));
    let mut lines = out.lines();
    let path_len: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(path_len > 4000, "path only {path_len} bytes");
    assert_eq!(lines.next(), Some("deep"));
}

#[test]
fn backing_removed_while_mounted_gives_errors_and_unmounts_cleanly() {
    let (_parent, backing) = scratch_backing();
    fs::write(backing.join("f"), b"x").unwrap();
    let mut m = Mounted::over(&backing, &["cache=never"]);
    fs::remove_dir_all(&backing).unwrap();
    assert_eq!(errno_of(fs::metadata(m.m("f"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(m.m("g"), b"")), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(m.m("d"))), libc::ENOENT);
    assert!(fs::read_dir(&m.mnt).unwrap().next().is_none());
    // The daemon is still there and answers.
    assert!(m.stats()["requests"] > 0);
    assert!(m.unmount_and_wait().success());
}

#[test]
fn backing_lazily_unmounted_while_mounted_keeps_serving_and_unmounts_cleanly() {
    let (_tmp, backing) = scratch_backing();
    let tmpfs = Tmpfs::on(&backing);
    fs::write(backing.join("f"), b"kept").unwrap();
    let mut m = Mounted::over(&backing, &["cache=never"]);
    sh(&format!("umount -l {}", backing.display()));
    // The daemon holds the detached filesystem open: its files stay reachable.
    assert_eq!(fs::read(m.m("f")).unwrap(), b"kept");
    fs::write(m.m("g"), b"new").unwrap();
    assert!(m.unmount_and_wait().success());
    drop(tmpfs);
}

#[test]
fn read_only_backing_passes_erofs_through() {
    let (_tmp, backing) = scratch_backing();
    fs::write(backing.join("f"), b"x").unwrap();
    sh(&format!(
        "mount --bind {b} {b} && mount -o remount,bind,ro {b}",
        b = backing.display()
    ));
    let _ro = Unmount(backing.clone());
    let m = Mounted::over(&backing, &[]);
    assert_writes_refused(&m, "f", b"x");
}

#[test]
fn enospc_is_reported_and_space_comes_back() {
    let small = LoopFs::new("mkfs.ext4 -q -F -O ^has_journal", "64M");
    let m = Mounted::over(&small.path, &[]);
    write_random(&m.m("src"), 20);
    let src_sum = checksum(&m.m("src"));
    // Fill the rest: a write gets ENOSPC.
    let dd = sh_output(&format!(
        "dd if=/dev/zero of={} bs=1M count=64 conv=fsync",
        m.m("fill").display()
    ));
    assert!(!dd.status.success());
    assert!(
        String::from_utf8_lossy(&dd.stderr).contains("No space left on device"),
        "{dd:?}"
    );
    // So does a copy inside the mount.
    let cp = sh_output(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("dst").display()
    ));
    assert!(!cp.status.success(), "cp into a full filesystem succeeded");
    assert!(
        String::from_utf8_lossy(&cp.stderr).contains("No space left on device"),
        "{cp:?}"
    );
    assert_eq!(checksum(&m.m("src")), src_sum);
    assert!(m.stats()["requests"] > 0, "daemon gone");
    // Space is usable again once something is deleted.
    fs::remove_file(m.m("dst")).ok();
    fs::remove_file(m.m("fill")).unwrap();
    sh(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("dst").display()
    ));
    assert_eq!(checksum(&m.m("dst")), src_sum);
}

#[test]
fn umount_during_a_copy_leaves_the_source_intact() {
    let mut m = Mounted::new();
    fs::create_dir(m.b("tmp")).unwrap();
    let tmpfs = Tmpfs::on(&m.b("tmp"));
    write_random(&m.m("src"), 256);
    let sum = checksum(&m.b("src"));
    let mut cp = spawn_cp(&m.m("src"), &m.m("tmp/dst"));
    std::thread::sleep(Duration::from_millis(50));
    sh(&format!("umount -l {}", m.mnt.display()));
    cp.wait().unwrap();
    let status = m
        .wait_for_exit(Duration::from_secs(15))
        .expect("fastfs exits after its mount is gone");
    assert!(
        status.success(),
        "daemon exit after umount during copy: {status}\n{}",
        m.log_text()
    );
    assert_eq!(checksum(&m.b("src")), sum);
    drop(tmpfs);
}

#[test]
fn kill_9_mid_copy_keeps_the_source_and_synced_data_and_remount_works() {
    let (_tmp, backing) = scratch_backing();
    fs::create_dir(backing.join("tmp")).unwrap();
    let tmpfs = Tmpfs::on(&backing.join("tmp"));
    let mut m = Mounted::over(&backing, &[]);
    write_random(&m.m("src"), 256);
    let sum = checksum(&m.b("src"));
    fs::write(m.m("synced"), b"durable").unwrap();
    fs::File::open(m.m("synced")).unwrap().sync_all().unwrap();
    let mut cp = spawn_cp(&m.m("src"), &m.m("tmp/dst"));
    std::thread::sleep(Duration::from_millis(50));
    let status = m.signal_and_wait("KILL");
    assert!(!status.success());
    let _ = cp.wait();
    assert_eq!(checksum(&backing.join("src")), sum);
    assert_eq!(fs::read(backing.join("synced")).unwrap(), b"durable");
    // The dead mount answers ENOTCONN (ECONNABORTED for a moment, while the kernel tears
    // down io_uring queues); a new fastfs on the same mountpoint detaches it.
    let dead = errno_of(fs::read_dir(&m.mnt));
    assert!(
        dead == libc::ENOTCONN || dead == libc::ECONNABORTED,
        "errno {dead} from the dead mount"
    );
    let again = Mounted::over_at(&m.mnt, &backing, &[]);
    let through_new_mount = fs::read(again.m("synced"));
    assert!(
        matches!(&through_new_mount, Ok(data) if data == b"durable"),
        "{through_new_mount:?} through the new mount; backing has {:?}; mounts:\n{}\nlog:\n{}",
        fs::read_dir(&backing).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()),
        sh(&format!(
            "grep '{}' /proc/self/mountinfo || true",
            m.mnt.display()
        )),
        again.log_text()
    );
    assert!(
        again.log_text().contains("dead FUSE mount"),
        "{}",
        again.log_text()
    );
    drop(again);
    drop(m);
    drop(tmpfs);
}

const PYTHON: &str = "/usr/bin/python3";

/// Starts `script` (Python) as nobody with piped stdin and stdout.
fn nobody_python(script: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            script,
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads one line of `child`'s stdout.
fn line_of(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// A user holding leases on its own files in BACKING blocks every open of them through
/// the mount until it lets go; other users' requests are still served meanwhile.
#[test]
fn requests_blocked_by_one_user_do_not_stall_the_others() {
    let m = shared_mount();
    fs::create_dir(m.b("leased")).unwrap();
    std::os::unix::fs::chown(m.b("leased"), Some(65534), Some(65534)).unwrap();
    fs::write(m.b("other"), b"still served\n").unwrap();
    let blocked = 8;
    let mut holder = nobody_python(
        "import fcntl, os, signal, sys\n\
         signal.signal(signal.SIGIO, signal.SIG_IGN)\n\
         fds = []\n\
         for i in range(int(sys.argv[2])):\n\
         \x20   fd = os.open(f'{sys.argv[1]}/l{i}', os.O_RDONLY | os.O_CREAT, 0o666)\n\
         \x20   fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)\n\
         \x20   fds.append(fd)\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n",
        &[m.b("leased").to_str().unwrap(), &blocked.to_string()],
    );
    assert_eq!(line_of(&mut holder), "ready");
    // Each open waits in the daemon for the lease holder, holding a request thread.
    let mut openers: Vec<_> = (0..blocked)
        .map(|i| {
            nobody_python(
                "import os, sys\nos.close(os.open(sys.argv[1], os.O_WRONLY))\n",
                &[m.m(&format!("leased/l{i}")).to_str().unwrap()],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let listed = sh(&format!(
        "ls {} && cat {}",
        m.mnt.display(),
        m.m("other").display()
    ));
    assert!(listed.contains("still served"), "{listed}");
    let still_blocked = openers
        .iter_mut()
        .map(|o| o.try_wait().unwrap())
        .filter(Option::is_none)
        .count();
    assert_eq!(
        still_blocked, blocked,
        "the openers were not blocked while root was served"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
    for mut opener in openers {
        assert!(opener.wait().unwrap().success());
    }
}

/// Every open file costs the daemon a descriptor, from one limit all users share: one user
/// may hold a quarter of it, so root can still work when that user has taken its all.
#[test]
fn one_user_cannot_take_every_descriptor_of_the_daemon() {
    one_user_cannot_take_every_descriptor(&[]);
}

/// With `-o idmap` requests carry no uid: each counts against the real uid of the
/// process that sent it.
#[test]
fn one_user_of_an_idmap_enabled_mount_cannot_take_every_descriptor() {
    one_user_cannot_take_every_descriptor(&["idmap"]);
}

fn one_user_cannot_take_every_descriptor(options: &[&str]) {
    let mut opts = vec!["allow_other"];
    opts.extend_from_slice(options);
    let m = Mounted::under(&["prlimit", "--nofile=2048:2048"], &opts);
    make_traversable(&m.mnt);
    fs::write(m.b("f"), b"x").unwrap();
    fs::write(m.b("g"), b"root's\n").unwrap();
    let mut hoarder = nobody_python(
        "import errno, os, resource, sys\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
         fds = []\n\
         try:\n\
         \x20   while True: fds.append(os.open(sys.argv[1], os.O_RDONLY))\n\
         except OSError as e:\n\
         \x20   print(len(fds), errno.errorcode[e.errno], flush=True)\n\
         sys.stdin.read()\n",
        &[m.m("f").to_str().unwrap()],
    );
    let report = line_of(&mut hoarder);
    let (held, error) = report.split_once(' ').unwrap();
    let held: usize = held.parse().unwrap();
    assert_eq!(error, "ENFILE", "{report}");
    assert_eq!(held, 512, "a quarter of the daemon's 2048 descriptors");
    assert_eq!(fs::read(m.m("g")).unwrap(), b"root's\n");
    let other_user = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
        .arg(m.m("g"))
        .output()
        .unwrap();
    assert_eq!(other_user.stdout, b"root's\n", "{other_user:?}");
    drop(hoarder.stdin.take());
    hoarder.wait().unwrap();
}

/// Kernel passthrough backing files are unregistered whichever thread drops the last
/// handle: none stays behind holding a deleted file's blocks.
#[test]
fn backing_files_of_closed_handles_never_pin_deleted_files() {
    let small = LoopFs::new("mkfs.ext4 -q -F -O ^has_journal", "64M");
    let m = Mounted::over(&small.path, &["allow_other"]);
    make_traversable(&m.mnt);
    let empty = free_bytes(&small.path);
    write_random(&m.m("big"), 15);
    fs::set_permissions(m.m("big"), fs::Permissions::from_mode(0o644)).unwrap();
    let mut churn = nobody_python(
        "import os, sys, threading\n\
         def churn():\n\
         \x20   for _ in range(300):\n\
         \x20       a = os.open(sys.argv[1], os.O_RDONLY); b = os.open(sys.argv[1], os.O_RDONLY)\n\
         \x20       os.close(a); os.close(b)\n\
         ts = [threading.Thread(target=churn) for _ in range(4)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print('done', flush=True)\n",
        &[m.m("big").to_str().unwrap()],
    );
    assert_eq!(line_of(&mut churn), "done");
    churn.wait().unwrap();
    fs::remove_file(m.m("big")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while free_bytes(&small.path) + (1 << 20) < empty {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted file's blocks stay in use:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !m.log_text().contains("cannot unregister"),
        "{}",
        m.log_text()
    );
}

/// Free bytes of the filesystem at `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = sh(&format!("stat -f -c '%f %S' {}", path.display()));
    let (blocks, size) = out.trim().split_once(' ').unwrap();
    blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
}
