//! The command line: mounting, detaching, signals, stats, and every mistake a user can make.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Runs fastfs with `args`; asserts it fails with one line on stderr containing `phrase`
/// and that nothing got mounted at `mnt`.
fn refused(args: &[&str], mnt: &Path, phrase: &str) {
    refused_as(Command::new(FASTFS).args(args), mnt, phrase);
}

fn refused_as(cmd: &mut Command, mnt: &Path, phrase: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert!(
        stderr.contains(phrase),
        "{cmd:?}: expected '{phrase}' in:\n{stderr}"
    );
    assert!(
        stderr.starts_with("fastfs: ") || stderr.starts_with("error: "),
        "unexpected message format: {stderr}"
    );
    assert!(
        !is_mountpoint(mnt),
        "{cmd:?} left {} mounted",
        mnt.display()
    );
}

struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(test_root()).unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        fs::create_dir(dir.path().join("backing")).unwrap();
        fs::create_dir(dir.path().join("backing/inner")).unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        Dirs { dir }
    }
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }
}

#[test]
fn bad_command_lines_fail_with_a_clear_message_and_mount_nothing() {
    let d = Dirs::new();
    let mnt = d.dir.path().join("mnt");
    let (m, b) = (d.p("mnt"), d.p("backing"));
    refused(&[&d.p("missing"), &b], &mnt, "mountpoint");
    refused(&[&m, &d.p("missing")], &mnt, "No such file or directory");
    refused(&[&d.p("file"), &b], &mnt, "is not a directory");
    refused(&[&m, &d.p("file")], &mnt, "is not a directory");
    refused(&[&b, &b], &d.dir.path().join("backing"), "recurse");
    refused(
        &[&d.p("backing/inner"), &b],
        &d.dir.path().join("backing/inner"),
        "inside the backing directory",
    );
    refused(
        &["-o", "bogus", &m, &b],
        &mnt,
        "unknown mount option 'bogus'",
    );
    refused(&["-o", "threads=lots", &m, &b], &mnt, "threads");
    refused(&["-o", "cache", &m, &b], &mnt, "needs a value");
    refused(&["--passthrough", "maybe", &m, &b], &mnt, "passthrough");
    refused(&[&m], &mnt, "required");
    refused(&["--no-such-flag", &m, &b], &mnt, "unexpected argument");
}

#[test]
fn without_dev_fuse_or_permission_the_mount_is_refused() {
    let d = Dirs::new();
    let mnt = d.dir.path().join("mnt");
    // /dev hidden behind an empty tmpfs, in a private mount namespace.
    refused_as(
        Command::new("unshare").args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs none /dev && exec {FASTFS} {} {}",
                d.p("mnt"),
                d.p("backing")
            ),
        ]),
        &mnt,
        "cannot open /dev/fuse",
    );
    // An unprivileged user can not open /dev/fuse (mode 0600 root).
    sh(&format!(
        "chmod 0777 {} {} {}",
        d.dir.path().display(),
        d.p("mnt"),
        d.p("backing")
    ));
    refused_as(
        Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            FASTFS,
            &d.p("mnt"),
            &d.p("backing"),
        ]),
        &mnt,
        "/dev/fuse",
    );
}

#[test]
fn detached_mount_is_live_when_the_command_returns_and_ends_on_umount() {
    let d = Dirs::new();
    fs::write(d.dir.path().join("backing/hello"), b"hi").unwrap();
    // `fastfs m b && cat m/hello` must work: the mount is live when fastfs returns.
    let out = sh(&format!(
        "{FASTFS} -o passthrough={} {m} {b} && cat {m}/hello",
        passthrough_mode(),
        m = d.p("mnt"),
        b = d.p("backing")
    ));
    let guard = Unmount(d.dir.path().join("mnt"));
    assert_eq!(out, "hi");
    let source = sh(&format!(
        "findmnt -n -t fuse.fastfs -o SOURCE {}",
        d.p("mnt")
    ));
    assert_eq!(source.trim(), d.p("backing"));
    let pid = sh(&format!("pgrep -f -n '^{FASTFS} .*{}'", d.p("mnt")));
    sh(&format!("umount {}", d.p("mnt")));
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
    assert!(gone, "daemon {} still running after umount", pid.trim());
    drop(guard);
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for signal in ["TERM", "INT"] {
        let mut m = Mounted::new();
        fs::write(m.m("kept"), b"data").unwrap();
        let status = m.signal_and_wait(signal);
        assert!(status.success(), "SIG{signal}: fastfs exited with {status}");
        assert!(!is_mountpoint(&m.mnt), "SIG{signal} left the mount behind");
        assert_eq!(fs::read(m.b("kept")).unwrap(), b"data");
    }
}

#[test]
fn external_umount_ends_the_daemon() {
    let mut m = Mounted::new();
    let status = m.unmount_and_wait();
    assert!(status.success(), "{status}");
}

#[test]
fn stats_refuses_a_directory_that_is_not_fastfs() {
    let d = Dirs::new();
    let out = Command::new(FASTFS)
        .args(["stats", &d.p("mnt")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the root of a fastfs mount"));
}

#[test]
fn help_and_version_work() {
    let help = sh(&format!("{FASTFS} --help"));
    assert!(help.contains("MOUNTPOINT") && help.contains("BACKING") && help.contains("stats"));
    let version = sh(&format!("{FASTFS} --version"));
    assert!(version.starts_with("fastfs "), "{version}");
}

#[test]
fn read_only_mount_refuses_writes_with_erofs() {
    let m = Mounted::with_options(&["ro"]);
    fs::write(m.b("existing"), b"x").unwrap();
    assert_writes_refused(&m, "existing", b"x");
}

#[test]
fn bench_quick_mode_prints_a_full_table() {
    // The bench drops caches between steps.
    let _caches = page_cache_lock();
    // It mounts a fastfs over io_uring when fuse.enable_uring is on (the io_uring pass):
    // no test may change that meanwhile.
    let _settings = kernel_settings_unchanged();
    let ring = fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y");
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let out = dir.path().join("bench.md");
    let run = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .args([
            "--fastfs-opts",
            &format!("passthrough={}", passthrough_mode()),
        ])
        .env("FASTFS_BIN", FASTFS)
        .env("FASTFS_BENCH_KEEP_URING", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "scripts/bench --quick failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let table = fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| workload"))
        .collect();
    for workload in [
        "cp 32 MiB (ext4)",
        "cp 32 MiB (XFS, reflink)",
        "read 32 MiB cold",
        "read 32 MiB warm",
        "write 32 MiB + fsync",
        "fio 4k randread",
        "rsync -a tree",
        "create 1000 files",
        "stat 1000 files",
        "unlink 1000 files",
        "find tree",
        "ls -lR tree",
        "walk 2000 files",
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains(workload))
            .unwrap_or_else(|| panic!("no row for {workload}:\n{table}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        // The workload, then seconds and ratios of each system.
        let systems = if ring { 5 } else { 4 };
        assert_eq!(cells.len(), 1 + systems + (systems - 1), "{row}");
        for cell in &cells[1..] {
            let v: f64 = cell
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {row}"));
            assert!(v > 0.0, "{row}");
        }
    }
    assert!(
        table.contains("Daemon RSS after the walk of 2000 files: fastfs "),
        "{table}"
    );
    assert!(
        table.contains("inodes known: ") && table.contains(" bytes each;"),
        "{table}"
    );
    assert!(
        table.contains("fastfs descriptor cache on the metadata rows"),
        "{table}"
    );
    let round_trip = table
        .lines()
        .find(|l| l.starts_with("Round trip"))
        .unwrap_or_else(|| panic!("no round trip line:\n{table}"));
    assert!(round_trip.contains(" fastfs ") && round_trip.contains(" bindfs "));
    assert_eq!(round_trip.contains(" fastfs-ring "), ring, "{round_trip}");
    assert!(table.contains("- create 1000 files: "), "{table}");
    let leftovers = sh("findmnt -rn -o TARGET | grep -c fastfs-bench || true");
    assert_eq!(leftovers.trim(), "0", "bench left mounts behind");
}
