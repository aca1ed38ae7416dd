//! Each operation behaves through the mount as it does on the backing filesystem,
//! errors included.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use fastfs::sys;

use crate::common::*;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let root = sys::openat(None, c"/", libc::O_PATH, 0)?;
    sys::renameat2(root.as_fd(), &c(from), root.as_fd(), &c(to), flags)
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let dir = sys::openat(None, &c(path.parent().unwrap()), libc::O_PATH, 0)?;
    let name = CString::new(path.file_name().unwrap().as_bytes()).unwrap();
    sys::mknodat(dir.as_fd(), &name, libc::S_IFIFO | 0o644, 0)
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    sys::setxattr(&c(path), &CString::new(name).unwrap(), value, flags)
}

fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = sys::getxattr(&c(path), &CString::new(name).unwrap(), &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

type Op = fn(&Path) -> io::Result<()>;

fn setup_tree(d: &Path) {
    fs::create_dir(d.join("dir")).unwrap();
    fs::write(d.join("dir/inner"), b"x").unwrap();
    fs::create_dir(d.join("empty")).unwrap();
    fs::write(d.join("file"), b"data").unwrap();
    fs::write(d.join("other"), b"other").unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    setxattr(&d.join("file"), "user.present", b"1", 0).unwrap();
}

/// (name, operation, expected errno). Every case starts from `setup_tree`.
const CASES: &[(&str, Op, i32)] = &[
    (
        "mkdir existing",
        |d| fs::create_dir(d.join("dir")),
        libc::EEXIST,
    ),
    (
        "mkdir under a file",
        |d| fs::create_dir(d.join("file/x")),
        libc::ENOTDIR,
    ),
    (
        "rmdir non-empty",
        |d| fs::remove_dir(d.join("dir")),
        libc::ENOTEMPTY,
    ),
    (
        "rmdir a file",
        |d| fs::remove_dir(d.join("file")),
        libc::ENOTDIR,
    ),
    (
        "rmdir missing",
        |d| fs::remove_dir(d.join("nope")),
        libc::ENOENT,
    ),
    (
        "unlink a directory",
        |d| fs::remove_file(d.join("dir")),
        libc::EISDIR,
    ),
    (
        "unlink missing",
        |d| fs::remove_file(d.join("nope")),
        libc::ENOENT,
    ),
    (
        "open missing",
        |d| File::open(d.join("nope")).map(drop),
        libc::ENOENT,
    ),
    (
        "stat below a file",
        |d| fs::metadata(d.join("file/x")).map(drop),
        libc::ENOTDIR,
    ),
    (
        "open a directory for writing",
        |d| OpenOptions::new().write(true).open(d.join("dir")).map(drop),
        libc::EISDIR,
    ),
    (
        "create exclusive existing",
        |d| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("file"))
                .map(drop)
        },
        libc::EEXIST,
    ),
    (
        "rename dir onto file",
        |d| fs::rename(d.join("dir"), d.join("file")),
        libc::ENOTDIR,
    ),
    (
        "rename file onto dir",
        |d| fs::rename(d.join("file"), d.join("empty")),
        libc::EISDIR,
    ),
    (
        "rename dir onto non-empty dir",
        |d| fs::rename(d.join("empty"), d.join("dir")),
        libc::ENOTEMPTY,
    ),
    (
        "rename dir into itself",
        |d| fs::rename(d.join("dir"), d.join("dir/sub")),
        libc::EINVAL,
    ),
    (
        "rename missing",
        |d| fs::rename(d.join("nope"), d.join("x")),
        libc::ENOENT,
    ),
    (
        "rename noreplace onto existing",
        |d| rename2(&d.join("file"), &d.join("other"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    ),
    (
        "rename noreplace to a new name",
        |d| rename2(&d.join("file"), &d.join("new"), libc::RENAME_NOREPLACE),
        0,
    ),
    (
        "rename exchange",
        |d| {
            rename2(&d.join("file"), &d.join("other"), libc::RENAME_EXCHANGE)?;
            assert_eq!(fs::read(d.join("file"))?, b"other");
            assert_eq!(fs::read(d.join("other"))?, b"data");
            Ok(())
        },
        0,
    ),
    (
        "rename exchange with missing",
        |d| rename2(&d.join("file"), &d.join("nope"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
    ),
    (
        "hard link to a directory",
        |d| fs::hard_link(d.join("dir"), d.join("dirlink")),
        libc::EPERM,
    ),
    (
        "hard link onto existing",
        |d| fs::hard_link(d.join("file"), d.join("other")),
        libc::EEXIST,
    ),
    (
        "symlink onto existing",
        |d| std::os::unix::fs::symlink("x", d.join("file")),
        libc::EEXIST,
    ),
    (
        "readlink of a file",
        |d| fs::read_link(d.join("file")).map(drop),
        libc::EINVAL,
    ),
    ("mkfifo existing", |d| mkfifo(&d.join("file")), libc::EEXIST),
    ("mkfifo new", |d| mkfifo(&d.join("pipe")), 0),
    (
        "truncate a directory",
        |d| {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(d.join("dir"))
                .map(drop)
        },
        libc::EISDIR,
    ),
    (
        "name too long",
        |d| fs::write(d.join("n".repeat(256)), b"").map(drop),
        libc::ENAMETOOLONG,
    ),
    (
        "setxattr create existing",
        |d| setxattr(&d.join("file"), "user.present", b"2", libc::XATTR_CREATE),
        libc::EEXIST,
    ),
    (
        "setxattr replace missing",
        |d| setxattr(&d.join("file"), "user.absent", b"2", libc::XATTR_REPLACE),
        libc::ENODATA,
    ),
    (
        "getxattr missing",
        |d| getxattr(&d.join("file"), "user.absent").map(drop),
        libc::ENODATA,
    ),
    (
        "access X_OK of a file without execute bits",
        |d| sys::access(&c(&d.join("file")), libc::X_OK),
        libc::EACCES,
    ),
    (
        "access R_OK|W_OK",
        |d| sys::access(&c(&d.join("file")), libc::R_OK | libc::W_OK),
        0,
    ),
    (
        "removexattr missing",
        |d| sys::removexattr(&c(&d.join("file")), c"user.absent"),
        libc::ENODATA,
    ),
];

#[test]
fn every_operation_fails_or_succeeds_exactly_as_on_the_backing_filesystem() {
    let m = Mounted::with_options(&["cache=never"]);
    let reference = tempfile::tempdir_in(test_root()).unwrap();
    let mut mismatches = Vec::new();
    for (i, (name, op, expected)) in CASES.iter().enumerate() {
        let in_mount = m.m(&format!("case{i}"));
        let native = reference.path().join(format!("case{i}"));
        fs::create_dir(&in_mount).unwrap();
        fs::create_dir(&native).unwrap();
        setup_tree(&in_mount);
        setup_tree(&native);
        let got_native = errno_of(op(&native));
        let got_mount = errno_of(op(&in_mount));
        if got_native != *expected || got_mount != *expected {
            mismatches.push(format!(
                "{name}: expected {expected}, native {got_native}, through fastfs {got_mount}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn rename_across_filesystems_under_backing_is_exdev() {
    let m = Mounted::new();
    fs::create_dir(m.b("sub")).unwrap();
    let _tmpfs = Tmpfs::on(&m.b("sub"));
    fs::write(m.m("file"), b"x").unwrap();
    assert_eq!(
        errno_of(fs::rename(m.m("file"), m.m("sub/file"))),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::hard_link(m.m("file"), m.m("sub/file"))),
        libc::EXDEV
    );
}

#[test]
fn an_unlinked_open_file_stays_readable_and_writable() {
    let m = Mounted::new();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.m("doomed"))
        .unwrap();
    f.write_all(b"before").unwrap();
    fs::remove_file(m.m("doomed")).unwrap();
    assert!(!m.b("doomed").exists());
    f.write_all(b" after").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    assert_eq!(text, "before after");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
}

#[test]
fn hard_links_share_one_stable_inode_number() {
    let m = Mounted::new();
    fs::write(m.m("a"), b"x").unwrap();
    fs::hard_link(m.m("a"), m.m("b")).unwrap();
    let a = fs::metadata(m.m("a")).unwrap();
    let b = fs::metadata(m.m("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(a.ino(), fs::metadata(m.b("a")).unwrap().ino());
    // Make the kernel forget every inode, then look again: same number.
    drop_caches();
    assert_eq!(fs::metadata(m.m("b")).unwrap().ino(), a.ino());
    fs::write(m.m("b"), b"through b").unwrap();
    assert_eq!(fs::read(m.m("a")).unwrap(), b"through b");
}

#[test]
fn open_flags_append_trunc_and_excl_are_honoured() {
    let m = Mounted::new();
    fs::write(m.m("f"), b"one").unwrap();
    let mut f = OpenOptions::new().append(true).open(m.m("f")).unwrap();
    f.write_all(b"two").unwrap();
    drop(f);
    sh(&format!("echo three >> {}", m.m("f").display()));
    assert_eq!(fs::read(m.b("f")).unwrap(), b"onetwothree\n");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("f"))
        .unwrap();
    assert_eq!(fs::metadata(m.b("f")).unwrap().len(), 0);
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.m("new"))
        .unwrap();
    drop(created);
    assert_eq!(
        fs::metadata(m.b("new")).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn setattr_changes_mode_owner_size_and_times_like_native() {
    let m = Mounted::new();
    fs::write(m.m("f"), b"0123456789").unwrap();
    let f = m.m("f").display().to_string();
    sh(&format!(
        "chmod 4751 {f} && chown 1234:5678 {f} && truncate -s 3 {f}"
    ));
    let st = fs::metadata(m.b("f")).unwrap();
    assert_eq!(
        st.mode() & 0o7777,
        0o751,
        "chown by root clears set-uid, as natively"
    );
    assert_eq!((st.uid(), st.gid(), st.len()), (1234, 5678, 3));
    // mtime only (atime left alone: UTIME_OMIT), then atime to now.
    sh(&format!(
        "touch -a -d '2001-02-03 04:05:06' {f} && touch -m -d '2011-02-03 04:05:06.123456789' {f}"
    ));
    let st = fs::metadata(m.b("f")).unwrap();
    assert_eq!(st.atime(), 981173106);
    assert_eq!((st.mtime(), st.mtime_nsec()), (1296705906, 123456789));
    sh(&format!("touch -a {f}"));
    let st2 = fs::metadata(m.b("f")).unwrap();
    assert!(st2.atime() > 1_600_000_000);
    assert_eq!(st2.mtime(), 1296705906);
    // What the mount reports agrees with the backing file.
    let via_mount = sh(&format!("stat -c '%a %u %g %s %X %Y' {f}"));
    let native = sh(&format!(
        "stat -c '%a %u %g %s %X %Y' {}",
        m.b("f").display()
    ));
    assert_eq!(via_mount, native);
}

#[test]
fn special_files_symlinks_and_directories_are_created_in_backing() {
    let m = Mounted::new();
    sh(&format!(
        "cd {} && mkfifo fifo && mknod null c 1 3 && ln -s 'some/target' sym && mkdir -p a/b/c",
        m.mnt.display()
    ));
    let _sock = std::os::unix::net::UnixListener::bind(m.m("sock")).unwrap();
    assert!(
        fs::symlink_metadata(m.b("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(m.b("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(
        fs::symlink_metadata(m.b("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(fs::read_link(m.m("sym")).unwrap(), Path::new("some/target"));
    assert_eq!(fs::read_link(m.b("sym")).unwrap(), Path::new("some/target"));
    assert!(m.b("a/b/c").is_dir());
    assert_eq!(
        sh(&format!("stat -c '%F' {}", m.m("sock").display())).trim(),
        "socket"
    );
}

#[test]
fn fallocate_preallocates_keeps_size_and_punches_holes() {
    let m = Mounted::new();
    let f = m.m("f").display().to_string();
    sh(&format!("fallocate -l 1M {f}"));
    assert_eq!(fs::metadata(m.b("f")).unwrap().len(), 1 << 20);
    sh(&format!("fallocate -n -o 0 -l 4M {f}"));
    let st = fs::metadata(m.b("f")).unwrap();
    assert_eq!(st.len(), 1 << 20, "keep-size changed the size");
    assert!(st.blocks() * 512 >= 4 << 20, "keep-size did not allocate");
    sh(&format!(
        "head -c 1M /dev/urandom | dd of={f} conv=notrunc status=none && fallocate -p -o 0 -l 512K {f}"
    ));
    let mut head = vec![0u8; 512 << 10];
    File::open(m.m("f")).unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0), "punched range is not zero");
    assert_eq!(checksum(&m.m("f")), checksum(&m.b("f")));
}

#[test]
fn xattrs_round_trip_and_statfs_matches_backing() {
    let m = Mounted::new();
    fs::write(m.m("f"), b"").unwrap();
    let f = m.m("f").display().to_string();
    sh(&format!(
        "setfattr -n user.color -v blue {f} && setfattr -n trusted.overlay.opaque -v y {f}"
    ));
    assert_eq!(getxattr(&m.b("f"), "user.color").unwrap(), b"blue");
    assert_eq!(getxattr(&m.b("f"), "trusted.overlay.opaque").unwrap(), b"y");
    let listed = sh(&format!("getfattr -d -m - {f}"));
    assert!(listed.contains("user.color=\"blue\""), "{listed}");
    sh(&format!("setfattr -x user.color {f}"));
    assert_eq!(errno_of(getxattr(&m.b("f"), "user.color")), libc::ENODATA);
    // The stats attribute is never listed, so copies of the mount root do not carry it.
    let root_list = sh(&format!("getfattr -d -m - {}", m.mnt.display()));
    assert!(!root_list.contains("fastfs"), "{root_list}");
    let fmt = "stat -f -c '%b %S %l'";
    assert_eq!(
        sh(&format!("{fmt} {}", m.mnt.display())),
        sh(&format!("{fmt} {}", m.backing.display()))
    );
}

#[test]
fn large_directories_list_exactly_the_backing_entries() {
    let m = Mounted::new();
    sh(&format!(
        "cd {} && seq -f 'entry-with-a-longish-name-%05g' 3000 | xargs touch && mkdir sub",
        m.backing.display()
    ));
    let listing = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&m.mnt), listing(&m.backing));
    assert_eq!(listing(&m.mnt).len(), 3001);
    let ls = sh(&format!("ls -l {} | wc -l", m.mnt.display()));
    assert_eq!(ls.trim(), "3002");
    let finds = sh(&format!("find {} | wc -l", m.mnt.display()));
    assert_eq!(finds.trim(), "3002");
}

#[test]
fn fsync_and_fsyncdir_succeed() {
    let m = Mounted::new();
    fs::write(m.m("f"), b"x").unwrap();
    File::open(m.m("f")).unwrap().sync_all().unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.m("f"))
        .unwrap()
        .sync_data()
        .unwrap();
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    sh(&format!("sync {}", m.mnt.display()));
}

#[test]
fn changes_made_directly_in_backing_are_seen_with_cache_never() {
    let m = Mounted::with_options(&["cache=never"]);
    fs::write(m.b("a"), b"original").unwrap();
    let ino = fs::metadata(m.m("a")).unwrap().ino();
    let mut held = File::open(m.m("a")).unwrap();
    fs::rename(m.b("a"), m.b("b")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.m("a"))), libc::ENOENT);
    assert_eq!(fs::metadata(m.m("b")).unwrap().ino(), ino);
    // A new file at the old name is a different file, not the inode the kernel holds.
    fs::write(m.b("a"), b"impostor").unwrap();
    assert_eq!(fs::read(m.m("a")).unwrap(), b"impostor");
    assert_eq!(fs::read(m.m("b")).unwrap(), b"original");
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "original");
    fs::remove_file(m.b("b")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.m("b"))), libc::ENOENT);
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["a"]);
}

#[test]
fn renames_through_the_mount_keep_inodes_on_their_files() {
    let m = Mounted::new();
    fs::create_dir_all(m.m("d1/sub")).unwrap();
    fs::write(m.m("d1/sub/f"), b"payload").unwrap();
    let ino = fs::metadata(m.m("d1/sub/f")).unwrap().ino();
    fs::rename(m.m("d1"), m.m("d2")).unwrap();
    fs::write(m.b("d1-new"), b"").unwrap();
    assert_eq!(fs::metadata(m.m("d2/sub/f")).unwrap().ino(), ino);
    assert_eq!(fs::read(m.m("d2/sub/f")).unwrap(), b"payload");
    assert_eq!(errno_of(fs::metadata(m.m("d1/sub/f"))), libc::ENOENT);
    assert_eq!(fs::read(m.b("d2/sub/f")).unwrap(), b"payload");
}
