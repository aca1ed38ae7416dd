//! A fastfs mount behaves like a native mount where administrators and programs look:
//! generic mount flags, atime, remount and dev/suid through mount(8) and fstab, set-gid
//! on ACL changes, and a daemon that keeps nothing of the shell that started it. Each is
//! compared with the same steps on the native filesystem.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// 2001-01-01 00:00:00 UTC.
const OLD_ATIME: i64 = 978_307_200;

/// Sets `path`'s atime to 2001, reads it as root and as nobody (through a second file
/// nobody may read but not own), and returns the atimes the two files end with.
fn atimes_after_reading(dir: &Path) -> (i64, i64) {
    let own = dir.join("own");
    let theirs = dir.join("theirs");
    for f in [&own, &theirs] {
        fs::write(f, b"data\n").unwrap();
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        sh(&format!("touch -a -d 2001-01-01T00:00:00Z {}", f.display()));
    }
    sh(&format!("cat {} >/dev/null", own.display()));
    nobody_ok(&format!("cat {} >/dev/null", theirs.display()));
    (
        fs::metadata(&own).unwrap().atime(),
        fs::metadata(&theirs).unwrap().atime(),
    )
}

#[test]
fn noatime_keeps_access_times_on_backing_as_a_native_noatime_mount() {
    let m = Mounted::with_options(&["noatime", "allow_other"]);
    make_traversable(&m.mnt);
    // The native twin: a bind mount of a directory on the same filesystem, noatime.
    let native = m.native_dir("native");
    let bound = m.native_dir("bound");
    sh(&format!(
        "mount --bind {n} {b} && mount -o remount,bind,noatime {b}",
        n = native.display(),
        b = bound.display()
    ));
    let _unbind = Unmount(bound.clone());
    make_traversable(&bound);
    assert_eq!(atimes_after_reading(&bound), (OLD_ATIME, OLD_ATIME));
    assert_eq!(atimes_after_reading(&m.mnt), (OLD_ATIME, OLD_ATIME));
    // On BACKING too, whoever read it.
    assert_eq!(fs::metadata(m.b("own")).unwrap().atime(), OLD_ATIME);
    assert_eq!(fs::metadata(m.b("theirs")).unwrap().atime(), OLD_ATIME);
    // Without noatime, a read updates it (relatime: the atime is older than the mtime).
    let plain = Mounted::with_options(&["allow_other"]);
    make_traversable(&plain.mnt);
    let (own, theirs) = atimes_after_reading(&plain.mnt);
    assert!(own > OLD_ATIME && theirs > OLD_ATIME, "{own} {theirs}");
}

#[test]
fn generic_mount_flags_are_accepted_and_take_effect() {
    let m = Mounted::with_options(&[
        "nodiratime,strictatime,lazytime,sync,dirsync,nosymfollow,diratime,nodiratime",
    ]);
    let options = sh(&format!(
        "findmnt -n -o VFS-OPTIONS,FS-OPTIONS {}",
        m.mnt.display()
    ));
    for flag in ["nodiratime", "nosymfollow", "nosuid", "nodev"] {
        assert!(options.contains(flag), "{flag} missing: {options}");
    }
    assert!(!options.contains("relatime"), "strictatime: {options}");
    // nosymfollow: a symlink in the mount is not followed, as natively.
    fs::write(m.b("target"), b"x").unwrap();
    std::os::unix::fs::symlink("target", m.b("link")).unwrap();
    assert_eq!(errno_of(fs::read(m.m("link"))), libc::ELOOP);
    assert_eq!(fs::read_link(m.m("link")).unwrap(), Path::new("target"));
    // sync: every write reaches the disk before write(2) returns (the superblock says so).
    let st = sh(&format!("stat -f -c %T {}", m.mnt.display()));
    assert!(st.contains("fuse"), "{st}");
    let flags = fastfs::sys::statvfs(&std::ffi::CString::new(m.mnt.to_str().unwrap()).unwrap())
        .unwrap()
        .f_flag;
    assert!(
        flags & libc::ST_SYNCHRONOUS != 0,
        "sync not set: {flags:#x}"
    );
}

#[test]
fn mount_8_remounts_read_only_and_back_keeping_the_other_flags() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (mnt, backing) = (dir.path().join("mnt"), dir.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    let _helper = MountHelper::install();
    sh(&format!(
        "mount -t fuse.fastfs {} {} -o noatime,passthrough={}",
        backing.display(),
        mnt.display(),
        passthrough_mode()
    ));
    let _guard = Unmount(mnt.clone());
    fs::write(mnt.join("f"), b"before").unwrap();
    sh(&format!("mount -o remount,ro {}", mnt.display()));
    assert_eq!(errno_of(fs::write(mnt.join("f"), b"x")), libc::EROFS);
    assert_eq!(errno_of(fs::write(mnt.join("g"), b"x")), libc::EROFS);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"before");
    let options = sh(&format!("findmnt -n -o OPTIONS {}", mnt.display()));
    for flag in ["ro", "nosuid", "nodev", "noatime"] {
        assert!(
            options.split(',').any(|o| o == flag),
            "{flag} after remount,ro: {options}"
        );
    }
    sh(&format!("mount -o remount,rw {}", mnt.display()));
    fs::write(mnt.join("f"), b"after").unwrap();
    assert_eq!(fs::read(backing.join("f")).unwrap(), b"after");
    let options = sh(&format!("findmnt -n -o OPTIONS {}", mnt.display()));
    assert!(
        options.starts_with("rw,") && options.contains("noatime"),
        "{options}"
    );
    // Asked of something that is not fastfs, the helper refuses.
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = sh_output(&format!(
        "{FASTFS} -o remount,ro {} {}",
        plain.display(),
        backing.display()
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a fastfs mount"));
}

#[test]
fn dev_and_suid_through_mount_8_and_fstab() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (mnt, backing) = (dir.path().join("mnt"), dir.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    make_traversable(&mnt);
    sh(&format!(
        "mknod {b}/null c 1 3 && chmod 666 {b}/null && cp /usr/bin/id {b}/id && chmod 4755 {b}/id",
        b = backing.display()
    ));
    let _helper = MountHelper::install();
    // mount(8) drops dev and suid before calling the helper (they are its defaults), so
    // the fstab line says allow_dev,allow_suid.
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} fuse.fastfs allow_other,allow_dev,allow_suid,passthrough={} 0 0\n",
            backing.display(),
            mnt.display(),
            passthrough_mode()
        ),
    )
    .unwrap();
    sh(&format!(
        "mount --fstab {} {}",
        fstab.display(),
        mnt.display()
    ));
    let _guard = Unmount(mnt.clone());
    let options = sh(&format!("findmnt -n -o OPTIONS {}", mnt.display()));
    assert!(
        !options.contains("nodev") && !options.contains("nosuid"),
        "{options}"
    );
    fs::write(mnt.join("null"), b"into the device").unwrap();
    let euid = nobody_ok(&format!("{} -u", mnt.join("id").display()));
    assert_eq!(euid.trim(), "0", "the set-uid bit did not apply");
    sh(&format!("umount {}", mnt.display()));
    // The defaults: no devices, no set-uid.
    sh(&format!(
        "mount -t fuse.fastfs {} {} -o allow_other",
        backing.display(),
        mnt.display()
    ));
    assert_eq!(errno_of(fs::write(mnt.join("null"), b"x")), libc::EACCES);
    let euid = nobody_ok(&format!("{} -u", mnt.join("id").display()));
    assert_eq!(euid.trim(), "65534");
}

/// Modes after ACL changes by an owner (uid 100, gid 101) who is not in the file's
/// group: `f` and `d` as the issue tells it (the owner does `chmod 2777`, then
/// `setfacl -m u::rwx,g::rwx,o::rwx`), and `g` and `e` where root set 2750 and the owner
/// then grants others rwx by ACL (a real ACL change, which drops set-gid natively).
fn modes_after_owner_sets_acls(dir: &Path) -> Vec<u32> {
    let owner = |script: &str| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=100",
                "--regid=101",
                "--clear-groups",
                "bash",
                "-ec",
            ])
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    let names = ["f", "d", "g", "e"];
    for (i, name) in names.iter().enumerate() {
        let p = dir.join(name);
        if i % 2 == 0 {
            fs::write(&p, b"").unwrap();
        } else {
            fs::create_dir(&p).unwrap();
        }
        sh(&format!("chown 100:0 {}", p.display()));
        if i < 2 {
            owner(&format!(
                "chmod 2777 {p} && setfacl -m u::rwx,g::rwx,o::rwx {p}",
                p = p.display()
            ));
        } else {
            sh(&format!("chmod 2750 {}", p.display()));
            owner(&format!("setfacl -m o::rwx {}", p.display()));
        }
    }
    names
        .iter()
        .map(|n| fs::metadata(dir.join(n)).unwrap().mode() & 0o7777)
        .collect()
}

#[test]
fn an_owner_outside_the_group_changing_acls_drops_set_gid_as_natively() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    let native = m.native_dir("native");
    make_traversable(&native);
    let expected = modes_after_owner_sets_acls(&native);
    assert!(
        expected.iter().all(|mode| mode & 0o2000 == 0),
        "native kept set-gid: {expected:?}"
    );
    assert_eq!(modes_after_owner_sets_acls(&m.mnt), expected);
}

#[test]
fn the_detached_daemon_keeps_neither_the_callers_directory_nor_its_descriptors() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (mnt, backing) = (dir.path().join("mnt"), dir.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    let held = dir.path().join("held-by-the-shell");
    sh(&format!(
        "cd {d} && exec 9>{held} && {FASTFS} mnt backing",
        d = dir.path().display(),
        held = held.display()
    ));
    let _guard = Unmount(mnt.clone());
    let pid = sh(&format!("pgrep -f -n '^{FASTFS} mnt backing'"));
    let pid = pid.trim();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, held, "the daemon kept the shell's descriptor 9");
    }
}

#[test]
fn after_sigterm_open_files_are_served_until_the_last_is_closed() {
    let mut m = Mounted::new();
    fs::write(m.m("f"), b"still here").unwrap();
    let open = fs::File::open(m.m("f")).unwrap();
    sh(&format!("kill -TERM {}", m.pid()));
    // The mount leaves the namespace at once; the daemon serves the open file on.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!is_mountpoint(&m.mnt), "SIGTERM left the mount in place");
    assert!(
        m.wait_for_exit(Duration::from_secs(4)).is_none(),
        "the daemon exited while a file was open"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &open, &mut text).unwrap();
    assert_eq!(text, "still here");
    drop(open);
    let status = m
        .wait_for_exit(Duration::from_secs(10))
        .expect("the daemon exits once the last file is closed");
    assert!(status.success(), "{status}\n{}", m.log_text());
}

/// Writes `f` in `dir` through a shared mapping after setting its times to 2001, and
/// returns (mtime, ctime) as `stat` shows them after the writer is done.
fn times_after_a_mapped_write(dir: &Path) -> (i64, i64) {
    let f = dir.join("mapped");
    sh(&format!(
        "xfs_io -f -c 'pwrite 0 4k' {f} >/dev/null && touch -d 2001-01-01T00:00:00Z {f} && \
         stat -c %Y {f} >/dev/null && xfs_io -c 'mmap 0 4k' -c 'mwrite 0 4k' {f}",
        f = f.display()
    ));
    // stat(1), not std's metadata: that asks statx for the birth time too, which makes
    // the kernel fetch fresh attributes and would hide stale cached ones.
    let times = sh(&format!("stat -c '%Y %Z' {}", f.display()));
    let mut times = times.split_whitespace().map(|t| t.parse::<i64>().unwrap());
    (times.next().unwrap(), times.next().unwrap())
}

#[test]
fn writes_through_a_shared_mapping_move_mtime_and_ctime_as_natively() {
    for options in [&[][..], &["cache=auto"][..]] {
        let m = Mounted::with_options(options);
        let native = times_after_a_mapped_write(&m.native_dir("native"));
        assert!(native.0 > OLD_ATIME, "native mtime did not move");
        let (mtime, ctime) = times_after_a_mapped_write(&m.mnt);
        assert!(
            mtime > OLD_ATIME && ctime >= mtime,
            "{options:?}: stat through the mount says mtime {mtime}, ctime {ctime}"
        );
        let backing = fs::metadata(m.b("mapped")).unwrap();
        assert_eq!(
            (mtime, ctime),
            (backing.mtime(), backing.ctime()),
            "{options:?}"
        );
    }
}

/// Makes file handles of `dir/f` and `dir/d` (with `dir/d/inner`), drops the kernel's
/// caches, and opens them again by handle: returns what `f` then reads and what `d`
/// lists, or the errno.
fn open_by_handle_after_drop_caches(
    dir: &Path,
) -> (Result<Vec<u8>, i32>, Result<Vec<String>, i32>) {
    use std::os::fd::AsFd;
    fs::write(dir.join("f"), b"by handle").unwrap();
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/inner"), b"").unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let dir_fd = fastfs::sys::openat(None, &c(dir), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let (f_type, f_handle) = fastfs::sys::name_to_handle_at(dir_fd.as_fd(), c"f", 0).unwrap();
    let (d_type, d_handle) = fastfs::sys::name_to_handle_at(dir_fd.as_fd(), c"d", 0).unwrap();
    drop_caches();
    let file = fastfs::sys::open_by_handle_at(dir_fd.as_fd(), f_type, &f_handle, libc::O_RDONLY)
        .map(fs::File::from)
        .map(|mut f| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).unwrap();
            data
        })
        .map_err(|e| e.raw_os_error().unwrap());
    let listing = fastfs::sys::open_by_handle_at(
        dir_fd.as_fd(),
        d_type,
        &d_handle,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map(|fd| {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let mut names: Vec<String> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    })
    .map_err(|e| e.raw_os_error().unwrap());
    (file, listing)
}

#[test]
fn file_handles_made_through_the_mount_open_after_the_kernel_drops_the_inodes() {
    let m = Mounted::new();
    let native = open_by_handle_after_drop_caches(&m.native_dir("native"));
    assert_eq!(
        native,
        (Ok(b"by handle".to_vec()), Ok(vec!["inner".to_string()]))
    );
    let before = m.stats()["inodes"];
    let through = open_by_handle_after_drop_caches(&m.mnt);
    assert_eq!(through, native);
    assert!(
        m.stats()["requests.forget"] + m.stats()["requests.batch_forget"] > 0,
        "the kernel forgot nothing: the test did not test revival (inodes {before})"
    );
    // A deleted file's handle is stale, as natively.
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    use std::os::fd::AsFd;
    let dir_fd =
        fastfs::sys::openat(None, &c(&m.mnt), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    fs::write(m.m("doomed"), b"").unwrap();
    let (t, h) = fastfs::sys::name_to_handle_at(dir_fd.as_fd(), c"doomed", 0).unwrap();
    fs::remove_file(m.b("doomed")).unwrap();
    drop_caches();
    let stale = fastfs::sys::open_by_handle_at(dir_fd.as_fd(), t, &h, libc::O_RDONLY);
    assert_eq!(
        stale.map(drop).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ESTALE))
    );
}
