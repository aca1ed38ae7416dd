//! Copies inside the mount are offloaded to the backing filesystem.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use crate::common::*;

#[test]
fn cp_inside_the_mount_is_offloaded_and_identical() {
    let m = Mounted::new();
    write_random(&m.m("src"), 64);
    sh(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("dst").display()
    ));
    assert_eq!(checksum(&m.b("src")), checksum(&m.b("dst")));
    assert_eq!(checksum(&m.m("dst")), checksum(&m.b("src")));
    assert!(m.stats()["copy_file_range.calls"] >= 1);
    assert_copied(&m, 64 << 20, 0);
}

/// cp of 64 MiB inside a fastfs over a fresh `mkfs` loop filesystem: identical, its
/// extents shared with the source, no space used, every byte offloaded.
fn assert_cp_is_a_reflink(mkfs: &str, size: &str) {
    let backing = LoopFs::new(mkfs, size);
    let m = Mounted::over(&backing.path, &[]);
    write_random(&m.m("src"), 64);
    sh("sync");
    let free = || -> u64 {
        let out = sh(&format!("stat -f -c %a {}", backing.path.display()));
        out.trim().parse().unwrap()
    };
    let free_before = free();
    sh(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("dst").display()
    ));
    sh("sync");
    let free_after = free();
    assert_eq!(checksum(&m.m("dst")), checksum(&m.b("src")));
    let extents = sh(&format!("filefrag -v {}", m.b("dst").display()));
    assert!(
        extents.contains("shared"),
        "{mkfs}: the copy's extents are not shared with the source:\n{extents}"
    );
    // 64 MiB of data copied; a reflink allocates (almost) nothing.
    assert!(
        free_before.saturating_sub(free_after) < 1024,
        "{mkfs}: free blocks dropped from {free_before} to {free_after}"
    );
    assert_copied(&m, 64 << 20, 0);
}

#[test]
fn cp_on_xfs_backing_is_a_reflink() {
    assert_cp_is_a_reflink("mkfs.xfs -q -f -m reflink=1", "1G");
}

#[test]
fn cp_on_btrfs_backing_is_a_reflink() {
    assert_cp_is_a_reflink("mkfs.btrfs -q -f", "512M");
}

#[test]
fn copy_between_two_backing_filesystems_falls_back_to_the_daemon() {
    let m = Mounted::new();
    fs::create_dir(m.b("tmp")).unwrap();
    let _tmpfs = Tmpfs::on(&m.b("tmp"));
    write_random(&m.m("src"), 24);
    let out = sh_output(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("tmp/dst").display()
    ));
    assert!(out.status.success(), "cp failed: {out:?}");
    assert_eq!(checksum(&m.b("tmp/dst")), checksum(&m.b("src")));
    assert_copied(&m, 0, 24 << 20);
    // The mount keeps offloading afterwards: the fallback never disabled copy_file_range.
    sh(&format!(
        "cp {} {}",
        m.m("src").display(),
        m.m("again").display()
    ));
    assert_eq!(m.stats()["copy_file_range.offloaded_bytes"], 24 << 20);
}

#[test]
fn sparse_file_keeps_its_holes_when_copied() {
    let m = Mounted::new();
    sh(&format!(
        "truncate -s 256M {f} && printf data | dd of={f} bs=1 seek=100000000 conv=notrunc status=none",
        f = m.m("sparse").display()
    ));
    sh(&format!(
        "cp {} {}",
        m.m("sparse").display(),
        m.m("copy").display()
    ));
    let copy = fs::metadata(m.b("copy")).unwrap();
    assert_eq!(copy.len(), 256 << 20);
    assert!(
        copy.blocks() * 512 < 1 << 20,
        "the copy allocated {} bytes for 4 bytes of data",
        copy.blocks() * 512
    );
    assert_eq!(checksum(&m.m("copy")), checksum(&m.b("sparse")));
    // SEEK_DATA / SEEK_HOLE through the mount find the one data block.
    let file = fs::File::open(m.m("copy")).unwrap();
    let data = fastfs::sys::lseek(file.as_fd(), 0, libc::SEEK_DATA).unwrap();
    let hole = fastfs::sys::lseek(file.as_fd(), data, libc::SEEK_HOLE).unwrap();
    assert!(
        data <= 100_000_000 && hole > 100_000_000,
        "data {data}, hole {hole}"
    );
}

#[test]
fn a_long_copy_does_not_stall_other_requests() {
    // cache=never: every stat and listing below reaches the daemon.
    let m = Mounted::with_options(&["cache=never"]);
    fs::create_dir(m.b("tmp")).unwrap();
    let _tmpfs = Tmpfs::on(&m.b("tmp"));
    write_random(&m.m("big"), 384);
    fs::create_dir(m.m("dir")).unwrap();
    let mut cp = std::process::Command::new("cp")
        .arg(m.m("big"))
        .arg(m.m("tmp/big"))
        .spawn()
        .unwrap();
    let served_during_copy = served_while_running(&mut cp, &m.m("dir"));
    assert!(served_during_copy > 0, "no ls/stat completed while cp ran");
    let stats = m.stats();
    assert!(
        stats["requests.max_in_flight"] >= 2,
        "requests were never served concurrently: {stats:?}"
    );
}
