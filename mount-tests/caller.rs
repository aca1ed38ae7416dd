//! Acting as the caller: nothing done through the mount needs more rights than the caller
//! has natively. Each test acts as an unprivileged user (or as root without capabilities,
//! as containers run) and compares with a native directory on the same filesystem.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// The system's Python, which every user may run (a pyenv shim under /root is not).
const PYTHON: &str = "/usr/bin/python3";

/// A mount other users may use, world-traversable, with a 1777 directory `pub`.
fn shared_mount(options: &[&str]) -> Mounted {
    let mut opts = vec!["allow_other"];
    opts.extend_from_slice(options);
    let m = Mounted::with_options(&opts);
    make_traversable(&m.mnt);
    fs::create_dir(m.b("pub")).unwrap();
    fs::set_permissions(m.b("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
    m
}

/// A native twin of `pub`: a 1777 directory on the backing's filesystem.
fn native_pub(m: &Mounted) -> std::path::PathBuf {
    let dir = m.native_dir("native");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

fn mode_owner_size(path: &Path) -> (u32, u32, u32, u64) {
    let st = fs::metadata(path).unwrap();
    (st.mode() & 0o7777, st.uid(), st.gid(), st.len())
}

#[test]
fn a_cached_negative_entry_never_hands_over_a_file_made_in_backing() {
    let m = shared_mount(&[]);
    let pub_m = m.m("pub").display().to_string();
    // The kernel learns (and caches for a day) that pub/secret does not exist...
    nobody_denied(&format!("cat {pub_m}/secret"), "No such file");
    // ...then root writes it directly in BACKING.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.b("pub/secret"))
        .unwrap()
        .write_all(b"root's data\n")
        .unwrap();
    let before = mode_owner_size(&m.b("pub/secret"));
    // The kernel sends CREATE for what it thinks is a new name; the daemon must not
    // take over the existing file.
    nobody_denied(&format!(": >> {pub_m}/secret"), "Permission denied");
    nobody_denied(&format!(": > {pub_m}/secret"), "Permission denied");
    nobody_denied(&format!("cat {pub_m}/secret"), "Permission denied");
    assert_eq!(mode_owner_size(&m.b("pub/secret")), before);
    assert_eq!(fs::read(m.b("pub/secret")).unwrap(), b"root's data\n");
    // The first CREATE met the file and sent the kernel back to look it up; the others
    // found it in the kernel's cache.
    assert!(m.stats()["create.found_existing"] >= 1, "{:?}", m.stats());
    // A file nobody may open is opened, not replaced (O_CREAT without O_EXCL).
    nobody_denied(&format!("cat {pub_m}/open"), "No such file");
    fs::write(m.b("pub/open"), b"anyone's\n").unwrap();
    fs::set_permissions(m.b("pub/open"), fs::Permissions::from_mode(0o666)).unwrap();
    let open_before = mode_owner_size(&m.b("pub/open"));
    nobody_ok(&format!("echo more >> {pub_m}/open"));
    assert_eq!(fs::read(m.b("pub/open")).unwrap(), b"anyone's\nmore\n");
    assert_eq!(mode_owner_size(&m.b("pub/open")).1, open_before.1);
}

/// A native creator of 0600 files races an unprivileged `open(O_RDWR|O_CREAT)` loop
/// through a mount that caches nothing: the kernel looks the name up (absent), the
/// creator makes it, then the CREATE arrives. Not one of root's files may change hands.
#[test]
fn racing_a_native_creator_never_takes_over_its_files() {
    let m = shared_mount(&["cache=never"]);
    let target = m.b("pub/f");
    let deadline = Instant::now() + Duration::from_secs(10);
    let attacker = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
        ])
        .arg(format!(
            r#"
import os, sys, time
path = "{path}"
deadline = time.monotonic() + 10
opened = taken = denied = other = 0
while time.monotonic() < deadline:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        denied += 1
        continue
    except OSError as e:
        # An error open(O_CREAT) never gives natively (ENOENT, ESTALE).
        other += 1
        print(e, file=sys.stderr)
        continue
    opened += 1
    if os.pread(fd, 16, 0).startswith(b"root-secret"):
        taken += 1
    os.close(fd)
print(opened, taken, denied, other)
"#,
            path = m.m("pub/f").display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut root_files = 0u64;
    let mut lost = Vec::new();
    while Instant::now() < deadline {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
        {
            Ok(mut f) => {
                f.write_all(b"root-secret").unwrap();
                let st = f.metadata().unwrap();
                if (st.uid(), st.mode() & 0o7777) != (0, 0o600) {
                    lost.push((st.uid(), st.mode() & 0o7777));
                }
                root_files += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => panic!("native create: {e}"),
        }
        let _ = fs::remove_file(&target);
    }
    let out = attacker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (opened, taken, denied, other) = (counts[0], counts[1], counts[2], counts[3]);
    let raced = m.stats()["create.found_existing"];
    eprintln!(
        "root created {root_files}; nobody opened {opened}, read root's {taken}, was denied \
         {denied}, got another error {other}; CREATEs that met an existing file: {raced}"
    );
    assert_eq!(taken, 0, "nobody read root's 0600 data");
    assert_eq!(
        other,
        0,
        "errors open(O_CREAT) never gives natively: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lost.is_empty(), "root's files changed hands: {lost:?}");
    assert!(
        root_files > 100 && denied > 100,
        "the two sides did not contend: root {root_files}, nobody {opened}/{denied}"
    );
    assert!(raced > 0, "the CREATE race was never hit");
}

/// Bytes an unprivileged `dd` writes to `path` before ENOSPC (its stderr must say so).
pub(crate) fn bytes_until_enospc(path: &Path) -> u64 {
    bytes_until_enospc_as(path, "")
}

/// [`bytes_until_enospc`] run under `wrapper` (e.g. `unshare -Ur`: nobody as the root of
/// a user namespace of its own, with every capability there and none outside).
pub(crate) fn bytes_until_enospc_as(path: &Path, wrapper: &str) -> u64 {
    let out = as_nobody(&format!(
        "{wrapper} dd if=/dev/zero of={} bs=64k 2>&1 >/dev/null; stat -c %s {}",
        path.display(),
        path.display()
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No space left on device"), "{text}");
    text.lines().last().unwrap().trim().parse().unwrap()
}

/// Free bytes of the filesystem at `path` (including the root reserve).
pub(crate) fn free_bytes(path: &Path) -> u64 {
    let out = sh(&format!("stat -f -c '%f %S' {}", path.display()));
    let (blocks, size) = out.trim().split_once(' ').unwrap();
    blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
}

/// Waits until the filesystem at `path` has `bytes` free again (a file deleted through
/// the mount frees its blocks when the kernel's FORGET arrives).
fn wait_for_free_space(path: &Path, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_bytes(path) < bytes {
        assert!(
            Instant::now() < deadline,
            "only {} of {bytes} bytes came back",
            free_bytes(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unprivileged_user_meets_the_root_reserve_as_natively() {
    meets_the_root_reserve_as_natively(&[]);
}

/// Writes of every kind by nobody (and by root of a user namespace of its own) through a
/// fastfs mounted with `options` stop at the root reserve, as natively.
pub(crate) fn meets_the_root_reserve_as_natively(options: &[&str]) {
    // Half of this filesystem is reserved for root.
    let small = LoopFs::new("mkfs.ext4 -q -F -m 50 -O ^has_journal", "64M");
    for dir in ["native", "data"] {
        fs::create_dir(small.path.join(dir)).unwrap();
        std::os::unix::fs::chown(small.path.join(dir), Some(65534), Some(65534)).unwrap();
    }
    make_traversable(&small.path.join("native"));
    let empty = free_bytes(&small.path);
    let native = bytes_until_enospc(&small.path.join("native/fill"));
    fs::remove_file(small.path.join("native/fill")).unwrap();
    let mut opts = vec!["allow_other"];
    opts.extend_from_slice(options);
    let m = Mounted::over(&small.path, &opts);
    make_traversable(&m.mnt);
    let through = bytes_until_enospc(&m.m("data/fill"));
    eprintln!("nobody wrote {native} bytes natively, {through} through fastfs");
    assert!(
        native.abs_diff(through) <= 1 << 20,
        "natively {native} bytes, through fastfs {through}"
    );
    // The root of a user namespace of nobody's has CAP_SYS_RESOURCE there only: not over
    // the reserve of the daemon's namespace.
    fs::remove_file(m.m("data/fill")).unwrap();
    wait_for_free_space(&small.path, empty - (1 << 20));
    let in_userns = bytes_until_enospc_as(&m.m("data/fill"), "unshare -Ur");
    assert!(
        native.abs_diff(in_userns) <= 1 << 20,
        "natively {native} bytes, through fastfs as a user namespace's root {in_userns}"
    );
    // So are writes to a file root holds open (with kernel passthrough, root's open
    // registered the backing file first, with root's credentials).
    fs::remove_file(m.m("data/fill")).unwrap();
    wait_for_free_space(&small.path, empty - (1 << 20));
    fs::write(m.m("data/shared"), b"").unwrap();
    fs::set_permissions(m.m("data/shared"), fs::Permissions::from_mode(0o666)).unwrap();
    let held_by_root = fs::OpenOptions::new()
        .append(true)
        .open(m.m("data/shared"))
        .unwrap();
    let shared = bytes_until_enospc(&m.m("data/shared"));
    drop(held_by_root);
    assert!(
        native.abs_diff(shared) <= 1 << 20,
        "natively {native} bytes, to a file root holds open {shared}"
    );
    // So are dirty pages of a shared mapping, which the kernel writes back from a thread
    // of its own (no caller's credentials on those writes).
    fs::remove_file(m.m("data/shared")).unwrap();
    wait_for_free_space(&small.path, empty - (1 << 20));
    let _ = as_nobody(&format!(
        "{PYTHON} -c \"import mmap, os\nfd = os.open('{f}', os.O_RDWR | os.O_CREAT, 0o644)\n\
         os.ftruncate(fd, 40 << 20)\nm = mmap.mmap(fd, 40 << 20)\n\
         for i in range(0, 40 << 20, 4096): m[i] = 1\nos.sync()\"",
        f = m.m("data/mapped").display()
    ));
    sh("sync");
    let allocated = fs::metadata(m.b("data/mapped")).unwrap().blocks() * 512;
    assert!(
        allocated <= native + (1 << 20),
        "a shared mapping allocated {allocated} bytes; natively the reserve stops at {native}"
    );
    // Preallocation and copies are charged to the caller too.
    fs::remove_file(m.m("data/mapped")).unwrap();
    wait_for_free_space(&small.path, empty - (1 << 20));
    let fallocated = as_nobody(&format!("fallocate -l 40M {}", m.m("data/big").display()));
    assert!(
        String::from_utf8_lossy(&fallocated.stderr).contains("No space left on device"),
        "{fallocated:?}"
    );
    let _ = fs::remove_file(m.m("data/big"));
    wait_for_free_space(&small.path, empty - (1 << 20));
    nobody_ok(&format!(
        "head -c 16M /dev/zero > {d}/src && ! cp {d}/src {d}/dst 2>/tmp/fastfs-cp-err.$$; \
         grep -q 'No space' /tmp/fastfs-cp-err.$$; s=$?; rm -f /tmp/fastfs-cp-err.$$; exit $s",
        d = m.m("data").display()
    ));
}

/// Runs `script` as root with every capability dropped (as a container's root runs).
fn as_root_without_capabilities(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            "bash",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

/// Without `allow_other` only root uses the mount, but root may run without
/// capabilities (as a container's root does): the kernel must still check permissions.
#[test]
fn root_without_capabilities_gets_no_more_than_natively() {
    let m = Mounted::new();
    let native = m.native_dir("native");
    let mut outcomes = Vec::new();
    for dir in [m.mnt.clone(), native] {
        let d = dir.display();
        sh(&format!(
            "echo private > {d}/mine && chmod 600 {d}/mine && mkdir {d}/sub && chmod 700 {d}/sub \
             && chown 65534:65534 {d}/mine {d}/sub"
        ));
        let tried: Vec<bool> = [
            format!("cat {d}/mine"),
            format!("echo x >> {d}/mine"),
            format!("chown 0 {d}/mine"),
            format!("chmod 666 {d}/mine"),
            format!("touch {d}/sub/x"),
            format!("ls {d}/sub"),
            format!("setfattr -n user.x -v 1 {d}/mine"),
            format!("mknod {d}/dev c 1 3"),
            // chown(f, -1, -1) of another user's file (natively only for its owner or
            // with CAP_FOWNER once set-id bits would be dropped; here: a plain file).
            format!("{PYTHON} -c \"import os; os.chmod('{d}/mine', 0o600)\""),
        ]
        .iter()
        .map(|script| as_root_without_capabilities(script).status.success())
        .collect();
        outcomes.push(tried);
        assert_eq!(mode_owner_size(&dir.join("mine")), (0o600, 65534, 65534, 8));
    }
    assert_eq!(outcomes[0], outcomes[1], "through fastfs vs native");
    assert!(
        outcomes[1].iter().all(|ok| !ok),
        "natively refused: {:?}",
        outcomes[1]
    );
}

#[test]
fn deny_acl_entries_are_enforced_for_files_and_directories() {
    let m = shared_mount(&[]);
    let mnt = m.mnt.display().to_string();
    sh(&format!(
        "cd {b} && echo data > f && chmod 644 f && setfacl -m u:65534:--- f && \
         mkdir d && echo inner > d/f && chmod 644 d/f && setfacl -m u:65534:--- d",
        b = m.backing.display()
    ));
    // The kernel caches d/f's dentry for root first.
    assert_eq!(fs::read(m.m("d/f")).unwrap(), b"inner\n");
    nobody_denied(&format!("cat {mnt}/f"), "Permission denied");
    nobody_denied(&format!("cat {mnt}/d/f"), "Permission denied");
    // Natively the same.
    nobody_denied(
        &format!("cat {}/f", m.backing.display()),
        "Permission denied",
    );
    // A mount that would leave ACLs to the backing alone is refused.
    let (_tmp, backing) = scratch_backing();
    let refused = Command::new(FASTFS)
        .args(["-o", "allow_other,noacl"])
        .arg(&m.mnt)
        .arg(&backing)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("always enforces POSIX ACLs"),
        "{refused:?}"
    );
}

#[test]
fn a_native_chmod_takes_effect_at_the_next_open_in_every_cache_mode() {
    for cache in ["cache=always", "cache=auto", "cache=never"] {
        let m = shared_mount(&[cache]);
        fs::write(m.b("doc"), b"shared\n").unwrap();
        fs::set_permissions(m.b("doc"), fs::Permissions::from_mode(0o644)).unwrap();
        let doc = m.m("doc").display().to_string();
        assert_eq!(nobody_ok(&format!("cat {doc}")), "shared\n", "{cache}");
        fs::set_permissions(m.b("doc"), fs::Permissions::from_mode(0o600)).unwrap();
        nobody_denied(&format!("cat {doc}"), "Permission denied");
        fs::set_permissions(m.b("doc"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(nobody_ok(&format!("cat {doc}")), "shared\n", "{cache}");
    }
}

/// The root of a user namespace of nobody's holds every capability there, none outside:
/// through the mount it gets nothing beyond nobody's rights on the daemon's files (the
/// daemon must not take its capability set as its own), here a file made root's 0600
/// behind the kernel's cached attributes.
#[test]
fn a_user_namespace_root_gains_nothing_from_its_namespace_capabilities() {
    let m = shared_mount(&["cache=always"]);
    fs::write(m.b("doc"), b"shared\n").unwrap();
    fs::set_permissions(m.b("doc"), fs::Permissions::from_mode(0o644)).unwrap();
    let doc = m.m("doc").display().to_string();
    assert_eq!(nobody_ok(&format!("unshare -Ur cat {doc}")), "shared\n");
    fs::set_permissions(m.b("doc"), fs::Permissions::from_mode(0o600)).unwrap();
    nobody_denied(&format!("unshare -Ur cat {doc}"), "Permission denied");
    nobody_denied(
        &format!("unshare -Ur sh -c 'echo x >> {doc}'"),
        "Permission denied",
    );
    assert_eq!(fs::read(m.b("doc")).unwrap(), b"shared\n");
}

/// Root without CAP_FSETID drops set-id bits when it truncates, natively; without
/// CAP_FOWNER it may not chown(f, -1, -1) another user's set-id file.
#[test]
fn root_without_capabilities_drops_and_keeps_set_id_bits_as_natively() {
    let m = Mounted::new();
    let native = m.native_dir("native");
    let mut modes = Vec::new();
    for dir in [m.mnt.clone(), native] {
        let d = dir.display();
        sh(&format!(
            "cd {d} && for f in t o; do echo data > $f && chmod 6755 $f; done && \
             echo data > theirs && chown 1234:1234 theirs && chmod 6755 theirs"
        ));
        let ran: Vec<bool> = [
            format!("truncate -s 2 {d}/t"),
            format!(
                "{PYTHON} -c \"import os; os.close(os.open('{d}/o', os.O_WRONLY | os.O_TRUNC))\""
            ),
            format!("{PYTHON} -c \"import os; os.chown('{d}/theirs', -1, -1)\""),
        ]
        .iter()
        .map(|script| as_root_without_capabilities(script).status.success())
        .collect();
        let after = sh(&format!("stat -c %a {d}/t {d}/o {d}/theirs"));
        modes.push((ran, after));
    }
    assert_eq!(modes[0], modes[1], "through fastfs vs native");
    assert_eq!(modes[1].1, "755\n755\n6755\n");
}

/// A CREATE for a name the kernel believes absent must not open another user's file
/// for a root that lacks the rights to: the kernel skips its own check on a created file.
#[test]
fn root_without_capabilities_cannot_open_a_file_behind_a_cached_negative_entry() {
    let m = shared_mount(&[]);
    let victim = m.m("pub/victim");
    let out = as_root_without_capabilities(&format!("stat {}", victim.display()));
    assert!(!out.status.success());
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.b("pub/victim"))
        .unwrap()
        .write_all(b"uid 1234's data\n")
        .unwrap();
    std::os::unix::fs::chown(m.b("pub/victim"), Some(1234), Some(1234)).unwrap();
    for target in [victim.clone(), m.b("pub/victim")] {
        let out = as_root_without_capabilities(&format!(
            "{PYTHON} -c \"import os; fd = os.open('{}', os.O_RDWR | os.O_CREAT); os.pwrite(fd, b'OWNED', 0)\"",
            target.display()
        ));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}: {out:?}",
            target.display()
        );
    }
    assert_eq!(fs::read(m.b("pub/victim")).unwrap(), b"uid 1234's data\n");
}

/// The kernel checks search permission on each directory of a path against its cached
/// attributes, and only the last directory reaches the daemon: a directory's attributes
/// are re-checked after at most a second, so a chmod made directly in BACKING closes the
/// paths below it in every cache mode.
#[test]
fn a_native_chmod_of_a_directory_closes_the_paths_below_it() {
    let m = shared_mount(&[]);
    sh(&format!(
        "cd {} && mkdir -p dir/sub/deeper && echo data > dir/sub/f && chmod 666 dir/sub/f && \
         echo deep > dir/sub/deeper/g",
        m.backing.display()
    ));
    let f = m.m("dir/sub/f").display().to_string();
    assert_eq!(nobody_ok(&format!("cat {f}")), "data\n");
    fs::set_permissions(m.b("dir"), fs::Permissions::from_mode(0o700)).unwrap();
    // Past a directory attribute's lifetime.
    std::thread::sleep(Duration::from_millis(1100));
    nobody_denied(&format!("cat {f}"), "Permission denied");
    nobody_denied(&format!("echo w >> {f}"), "Permission denied");
    nobody_denied(
        &format!("cat {}", m.m("dir/sub/deeper/g").display()),
        "Permission denied",
    );
}

/// Runs `setup` as root and then `script` as nobody in the mount's `pub` and in a native
/// 1777 twin; returns both outputs of `script` (stdout), which the caller compares.
fn in_both(m: &Mounted, setup: &str, script: &str) -> (String, String) {
    let native = native_pub(m);
    let mut outputs = Vec::new();
    for dir in [m.m("pub"), native] {
        let d = dir.display();
        sh(&format!("cd {d} && {setup}"));
        outputs.push(nobody_ok(&format!("cd {d} && {script}")));
    }
    (outputs.remove(0), outputs.remove(0))
}

#[test]
fn chown_without_change_by_root_drops_set_id_bits_and_updates_ctime() {
    let m = shared_mount(&[]);
    let native = native_pub(&m);
    let mut results = Vec::new();
    for dir in [m.m("pub"), native] {
        let f = dir.join("f");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
        let ctime = fs::metadata(&f).unwrap().ctime_nsec();
        std::thread::sleep(Duration::from_millis(20));
        // chown(f, -1, -1), as `chown : f` does.
        std::os::unix::fs::chown(&f, None, None).unwrap();
        let st = fs::metadata(&f).unwrap();
        results.push((st.mode() & 0o7777, st.ctime_nsec() != ctime));
    }
    assert_eq!(results[0], results[1], "through fastfs vs native");
    assert_eq!(results[1], (0o755, true));
}

#[test]
fn set_gid_without_group_execute_is_dropped_for_writers_outside_the_group() {
    let m = shared_mount(&[]);
    // Root's 2666 files: nobody (not in group root) writes one and truncates the other.
    let (through, native) = in_both(
        &m,
        "rm -f w t; echo x > w; echo x > t; chmod 2666 w t",
        "echo y >> w && truncate -s 0 t && stat -c %a w t",
    );
    assert_eq!(through, native);
    assert_eq!(native, "666\n666\n");
}

#[test]
fn owner_outside_the_group_loses_set_gid_on_chgrp() {
    let m = shared_mount(&[]);
    let (through, native) = in_both(
        &m,
        "rm -f g; echo x > g; chown 65534:0 g; chmod 2644 g",
        "chgrp 65534 g && stat -c %a g",
    );
    assert_eq!(through, native);
    assert_eq!(native.trim(), "644");
}

#[test]
fn a_default_acl_replaces_the_umask_as_natively() {
    let m = shared_mount(&[]);
    let (through, native) = in_both(
        &m,
        "rm -rf acl; mkdir acl; chmod 777 acl; setfacl -d -m u::rwx,g::rwx,o::r-x acl",
        "umask 022 && touch acl/f && mkdir acl/d && stat -c %a acl/f acl/d && \
         umask 077 && touch plain && stat -c %a plain",
    );
    assert_eq!(through, native);
    assert_eq!(native, "664\n775\n600\n");
}

#[test]
fn objects_an_ordinary_user_creates_are_born_with_equal_times() {
    let m = shared_mount(&[]);
    let script = "for i in $(seq 20); do touch f$i; mkdir d$i; done; \
         stat -c '%y %z' f* d* | awk '$1\" \"$2 != $4\" \"$5' | wc -l";
    let (through, native) = in_both(&m, "true", script);
    assert_eq!(native.trim(), "0");
    assert_eq!(
        through.trim(),
        "0",
        "objects whose ctime differs from mtime"
    );
    let owners = sh(&format!(
        "stat -c %u:%g {}/f1 {}/d1",
        m.b("pub").display(),
        m.b("pub").display()
    ));
    assert_eq!(owners, "65534:65534\n65534:65534\n");
}

/// `d_ino` of each entry of directory `dir`, `.` and `..` included.
fn listed_inodes(dir: &Path) -> std::collections::HashMap<String, u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut out = std::collections::HashMap::new();
    // SAFETY: opendir/readdir/closedir on a valid path; each dirent is read before the
    // next readdir call.
    unsafe {
        let handle = libc::opendir(path.as_ptr());
        assert!(!handle.is_null(), "opendir {}", dir.display());
        loop {
            let entry = libc::readdir64(handle);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            out.insert(name.to_string_lossy().into_owned(), (*entry).d_ino);
        }
        libc::closedir(handle);
    }
    out
}

#[test]
fn readdir_reports_the_root_as_stat_does() {
    let m = Mounted::new();
    fs::create_dir(m.b("sub")).unwrap();
    let root_ino = fs::metadata(&m.mnt).unwrap().ino();
    assert_eq!(root_ino, fs::metadata(&m.backing).unwrap().ino());
    assert_eq!(listed_inodes(&m.mnt)["."], root_ino);
    let sub = listed_inodes(&m.m("sub"));
    assert_eq!(sub[".."], root_ino);
    assert_eq!(sub["."], fs::metadata(m.m("sub")).unwrap().ino());
}

#[test]
fn times_before_the_epoch_are_stored_exactly() {
    let m = Mounted::new();
    let native = m.native_dir("native");
    let mut stored = Vec::new();
    for dir in [m.mnt.clone(), native] {
        let f = dir.join("old");
        fs::write(&f, b"").unwrap();
        stored.push(sh(&format!(
            "touch -m -d '1969-12-31 23:59:58.25 UTC' {f} && TZ=UTC stat -c %y {f}",
            f = f.display()
        )));
    }
    assert_eq!(stored[0], stored[1]);
    assert_eq!(stored[1], "1969-12-31 23:59:58.250000000 +0000\n");
}

/// The kernel's request to drop privileges after another user's write, raced against the
/// owner's chmod: the drop never brings back access the owner just took away.
#[test]
fn dropping_set_id_bits_never_undoes_a_concurrent_chmod() {
    let m = shared_mount(&[]);
    let f = m.b("pub/f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4777)).unwrap();
    let mut droppers: Vec<_> = (0..4)
        .map(|_| {
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    PYTHON,
                    "-c",
                ])
                .arg(format!(
                    "import os, time\nend = time.monotonic() + 5\n\
                     while time.monotonic() < end:\n    try: os.chown('{}', -1, -1)\n    \
                     except OSError: pass",
                    m.m("pub/f").display()
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut rounds, mut undone) = (0, 0);
    while Instant::now() < deadline {
        fs::set_permissions(&f, fs::Permissions::from_mode(0o4777)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        if fs::metadata(&f).unwrap().mode() & 0o777 != 0o600 {
            undone += 1;
        }
        rounds += 1;
    }
    for d in &mut droppers {
        d.wait().unwrap();
    }
    assert!(rounds > 100, "only {rounds} rounds");
    assert_eq!(undone, 0, "{undone} of {rounds} chmods undone");
}

/// A write to a file with file capabilities drops them, natively, for anyone who may
/// write it (the kernel removes `security.capability` itself, no right needed).
#[test]
fn writing_a_file_with_capabilities_drops_them_as_natively() {
    let m = shared_mount(&[]);
    let native = native_pub(&m);
    let mut results = Vec::new();
    for dir in [m.m("pub"), native] {
        let f = dir.join("tool");
        fs::copy("/bin/true", &f).unwrap();
        sh(&format!(
            "chown 65534:65534 {f} && setcap cap_net_raw+ep {f}",
            f = f.display()
        ));
        let wrote = as_nobody(&format!("echo >> {}", f.display()))
            .status
            .success();
        let caps = sh(&format!("getcap {}", f.display()));
        results.push((wrote, caps.contains("cap_net_raw")));
    }
    assert_eq!(results[0], results[1], "through fastfs vs native");
    assert_eq!(results[1], (true, false));
}

/// An append-only file (`chattr +a`) takes appends and refuses other writes.
#[test]
fn an_append_only_file_takes_appends_as_natively() {
    let m = Mounted::new();
    let native = m.native_dir("native");
    let mut results = Vec::new();
    for (dir, real) in [(m.mnt.clone(), m.backing.clone()), (native.clone(), native)] {
        let f = dir.join("log");
        fs::write(&f, b"a\n").unwrap();
        sh(&format!("chattr +a {}", real.join("log").display()));
        let appended = sh_output(&format!("echo b >> {}", f.display()))
            .status
            .success();
        let overwritten = sh_output(&format!("echo c > {}", f.display()))
            .status
            .success();
        sh(&format!("chattr -a {}", real.join("log").display()));
        results.push((appended, overwritten, fs::read(&f).unwrap()));
    }
    assert_eq!(results[0], results[1], "through fastfs vs native");
    assert_eq!(results[1], (true, false, b"a\nb\n".to_vec()));
}
