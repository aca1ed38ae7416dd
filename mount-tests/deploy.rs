//! Deployment: overlayfs layers on fastfs, container sandboxes, rootless mounts in a user
//! namespace, xattr namespaces and ACLs, and mount(8).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use crate::common::*;

#[test]
fn overlayfs_with_lower_and_upper_on_fastfs() {
    let m = Mounted::new();
    sh(&format!(
        "cd {} && mkdir -p lower/dir lower/keep upper work && echo lower > lower/a && \
         echo x > lower/dir/x && echo k > lower/keep/k && head -c 64M /dev/urandom > lower/big",
        m.backing.display()
    ));
    let big_sum = checksum(&m.b("lower/big"));
    let ov_dir = tempfile::tempdir_in(test_root()).unwrap();
    let ov = ov_dir.path().join("ov");
    fs::create_dir(&ov).unwrap();
    let mounted = sh_output(&format!(
        "mount -t overlay overlay -o lowerdir={m}/lower,upperdir={m}/upper,workdir={m}/work {ov}",
        m = m.mnt.display(),
        ov = ov.display()
    ));
    assert!(
        mounted.status.success(),
        "the kernel refused overlayfs over fastfs: {}\n{}",
        String::from_utf8_lossy(&mounted.stderr),
        sh("dmesg | grep -i overlay | tail -5")
    );
    let _overlay = Unmount(ov.clone());
    sh(&format!(
        "cd {} && echo new > n && rm a && rm -r dir && mkdir dir && echo fresh > dir/y && \
         mv keep kept && echo more >> big",
        ov.display()
    ));
    // What the overlay shows.
    assert_eq!(fs::read(ov.join("n")).unwrap(), b"new\n");
    assert!(!ov.join("a").exists());
    assert!(
        !ov.join("dir/x").exists(),
        "opaque directory shows the lower entry"
    );
    assert_eq!(fs::read(ov.join("dir/y")).unwrap(), b"fresh\n");
    assert_eq!(fs::read(ov.join("kept/k")).unwrap(), b"k\n");
    assert!(!ov.join("keep").exists());
    // What the backing directories hold: a whiteout is a 0/0 character device...
    let whiteout = fs::symlink_metadata(m.b("upper/a")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    // ...an opaque directory carries trusted.overlay.opaque...
    let opaque = sh(&format!(
        "getfattr --only-values -n trusted.overlay.opaque {}",
        m.b("upper/dir").display()
    ));
    assert_eq!(opaque, "y");
    // ...and the large file was copied up whole (overlayfs copies up with splice, so
    // this is read/write traffic, not copy_file_range), the lower layer untouched.
    let upper_big = fs::read(m.b("upper/big")).unwrap();
    assert_eq!(upper_big.len(), (64 << 20) + 5);
    assert_eq!(&upper_big[64 << 20..], b"more\n");
    assert_eq!(checksum(&m.b("lower/big")), big_sum, "lower layer changed");
}

#[test]
fn container_sandbox_uses_the_mount_with_offloaded_copies() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    fs::create_dir(m.b("shared")).unwrap();
    fs::set_permissions(m.b("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    write_random(&m.m("image"), 32);
    let before = m.stats()["copy_file_range.offloaded_bytes"];
    // A sandbox with its own mount namespace, the mount bound in as /srv/data.
    let out = sh(&format!(
        "bwrap --ro-bind / / --tmpfs /srv --bind {mnt} /srv/data --dev /dev --proc /proc --tmpfs /tmp \
           --unshare-pid --unshare-ipc --unshare-uts --die-with-parent \
           bash -c 'cp /srv/data/image /srv/data/copy && stat -c %u /srv/data/copy && \
                    setpriv --reuid=65534 --regid=65534 --clear-groups sh -c \
                      \"touch /srv/data/shared/by-nobody && stat -c %u:%g /srv/data/shared/by-nobody; \
                       cat /srv/data/copy > /dev/null && ! touch /srv/data/denied\"'",
        mnt = m.mnt.display()
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "65534:65534"]);
    assert_eq!(checksum(&m.b("copy")), checksum(&m.b("image")));
    let offloaded = m.stats()["copy_file_range.offloaded_bytes"] - before;
    assert_eq!(
        offloaded,
        32 << 20,
        "the copy inside the sandbox was not offloaded"
    );
    let st = fs::metadata(m.b("shared/by-nobody")).unwrap();
    assert_eq!((st.uid(), st.gid()), (65534, 65534));
    assert!(!m.b("denied").exists());
}

#[test]
fn rootless_mount_in_a_user_namespace() {
    let work = tempfile::tempdir_in(test_root()).unwrap();
    make_traversable(work.path());
    let fuse = user_fuse_node(work.path());
    let (mnt, backing) = (work.path().join("mnt"), work.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    sh(&format!(
        "chown 65534:65534 {} {}",
        mnt.display(),
        backing.display()
    ));
    sh(&format!(
        "head -c 8M /dev/urandom > {b}/src && chown 65534:65534 {b}/src",
        b = backing.display()
    ));
    // Everything happens inside one private user + mount namespace; the mount dies with it.
    let script = format!(
        r#"set -e
        mount --bind {fuse} /dev/fuse
        if out=$({fastfs} -o passthrough=on {mnt} {backing} 2>&1); then
            echo "passthrough on mounted"
        else
            case "$out" in *passthrough*) echo "passthrough=on refused" ;; esac
        fi
        {fastfs} {mnt} {backing}
        findmnt -n -o FSTYPE {mnt}
        cp {mnt}/src {mnt}/copy
        cmp {mnt}/src {mnt}/copy && echo "copy identical"
        {fastfs} stats {mnt} | grep -E '^(copy_file_range.offloaded_bytes|passthrough.opens) '
        umount {mnt}
        echo unmounted"#,
        fuse = fuse.display(),
        fastfs = FASTFS,
        mnt = mnt.display(),
        backing = backing.display()
    );
    let out = sh_output(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups unshare -Urm bash -c '{}'",
        script.replace('\'', "'\\''")
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rootless run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "passthrough=on refused",
            "fuse.fastfs",
            "copy identical",
            "copy_file_range.offloaded_bytes 8388608",
            // Kernel passthrough needs CAP_SYS_ADMIN in the initial namespace.
            "passthrough.opens 0",
            "unmounted"
        ]
    );
    let copy = fs::metadata(backing.join("copy")).unwrap();
    assert_eq!((copy.uid(), copy.gid()), (65534, 65534));
}

#[test]
fn security_capabilities_survive_cp_preserve_all_and_acls_are_enforced() {
    let m = Mounted::with_options(&["allow_other"]);
    make_traversable(&m.mnt);
    let mnt = m.mnt.display().to_string();
    sh(&format!(
        "cp /bin/true {mnt}/tool && setcap cap_net_raw+ep {mnt}/tool && cp --preserve=all {mnt}/tool {mnt}/tool2"
    ));
    let caps = sh(&format!("getcap {}", m.b("tool2").display()));
    assert!(caps.contains("cap_net_raw=ep"), "{caps}");
    // ACLs set through the mount are stored in BACKING...
    sh(&format!(
        "echo secret > {mnt}/acl-file && chmod 0644 {mnt}/acl-file && setfacl -m u:65534:--- {mnt}/acl-file && \
         echo open > {mnt}/acl-open && chmod 0600 {mnt}/acl-open && setfacl -m u:65534:r {mnt}/acl-open && \
         mkdir {mnt}/acl-dir && setfacl -d -m u:65534:rwx {mnt}/acl-dir && touch {mnt}/acl-dir/inherits"
    ));
    let stored = sh(&format!("getfacl -n -p {}", m.b("acl-file").display()));
    assert!(stored.contains("user:65534:---"), "{stored}");
    let inherited = sh(&format!(
        "getfacl -n -p {}",
        m.b("acl-dir/inherits").display()
    ));
    assert!(
        inherited.contains("user:65534:rwx"),
        "default ACL not inherited: {inherited}"
    );
    // ...and enforced: the ACL denies what the mode allows, and allows what it denies.
    let nobody = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .output()
            .unwrap()
    };
    let denied = nobody(&format!("cat {mnt}/acl-file"));
    assert!(
        !denied.status.success(),
        "ACL entry u:65534:--- was not enforced"
    );
    let allowed = nobody(&format!("cat {mnt}/acl-open"));
    assert_eq!(
        String::from_utf8_lossy(&allowed.stdout),
        "open\n",
        "{allowed:?}"
    );
}

#[test]
fn mount_8_and_umount_8_work() {
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (mnt, backing) = (dir.path().join("mnt"), dir.path().join("backing"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&backing).unwrap();
    fs::write(backing.join("f"), b"via mount(8)").unwrap();
    let _helper = MountHelper::install();
    sh(&format!(
        "mount -t fuse.fastfs {} {} -o rw,noatime,passthrough={}",
        backing.display(),
        mnt.display(),
        passthrough_mode()
    ));
    let _guard = Unmount(mnt.clone());
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"via mount(8)");
    let line = sh(&format!(
        "findmnt -n -o SOURCE,FSTYPE,OPTIONS {}",
        mnt.display()
    ));
    assert!(
        line.starts_with(&format!("{} fuse.fastfs", backing.display())),
        "{line}"
    );
    assert!(line.contains("noatime"), "{line}");
    sh(&format!("umount {}", mnt.display()));
    assert!(!is_mountpoint(&mnt));
}

#[test]
fn fastfs_over_fastfs_reports_that_passthrough_cannot_stack() {
    // The inner mount uses kernel passthrough, which makes it a stacked filesystem.
    let inner = Mounted::with_options(&["passthrough=on"]);
    fs::write(inner.m("f"), b"through two mounts").unwrap();
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(FASTFS)
        .args(["-o", "passthrough=on"])
        .arg(&mnt)
        .arg(&inner.mnt)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mounted = is_mountpoint(&mnt);
    if mounted {
        unmount(&mnt);
    }
    assert!(
        !out.status.success() && !mounted,
        "passthrough=on mounted over a stacked backing"
    );
    assert!(stderr.contains("stacked filesystem"), "{stderr}");

    let outer = Mounted::over(&inner.mnt, &["passthrough=auto"]);
    for _ in 0..3 {
        assert_eq!(fs::read(outer.m("f")).unwrap(), b"through two mounts");
    }
    fs::write(outer.m("g"), b"written").unwrap();
    assert_eq!(fs::read(inner.b("g")).unwrap(), b"written");
    assert_eq!(outer.stats()["passthrough.opens"], 0);
    let log = outer.log_text();
    assert_eq!(
        log.matches("reads and writes go through the daemon")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("Too many levels"), "{log}");
    assert!(log.contains("passthrough off"), "{log}");

    // A FUSE backing may change under the mount: names and sizes are re-checked after
    // a second (cache=auto), not trusted for a day.
    assert!(log.contains("cache=auto"), "{log}");
    assert_eq!(fs::metadata(outer.m("f")).unwrap().len(), 18);
    assert!(!outer.m("new").exists());
    fs::write(inner.m("f"), b"changed behind the outer mount").unwrap();
    fs::write(inner.m("new"), b"").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(fs::metadata(outer.m("f")).unwrap().len(), 30);
    assert!(outer.m("new").exists());
    assert_eq!(
        fs::read(outer.m("f")).unwrap(),
        b"changed behind the outer mount"
    );
}
