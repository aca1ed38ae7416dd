//! Inodes without a descriptor budget: walks of trees far larger than the daemon's
//! descriptor limit find every file, and nothing the kernel uses (bind mounts on the
//! mount, open files, working directories) is ever disturbed; a reused inode number is
//! never confused with the file that had it; deleted files free their space at once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const FILES: usize = 100_000;

/// A fresh ext4 with `FILES` empty files in 100 directories under `many/`, and a
/// directory `mp` and a file `fmp` to bind mounts on.
fn tree() -> LoopFs {
    let fs = LoopFs::new("mkfs.ext4 -q -F -O ^has_journal -N 150000", "1G");
    sh(&format!(
        "cd {} && mkdir many mp && touch fmp && for d in $(seq 100); do mkdir many/d$d; \
         (cd many/d$d && seq -f f%g 1000 | xargs touch); done",
        fs.path.display()
    ));
    fs
}

/// One round of walks over `dir`: `find` (stating every file), `ls -lR`, and a `stat`
/// of every file from 4 processes at once. Each must see every file, with no error.
fn walk_every_way(dir: &Path) {
    let d = dir.display();
    for (what, script) in [
        ("find", format!("find {d} -type f -printf '%s\\n' | wc -l")),
        ("ls -lR", format!("ls -lR {d} | grep -c '^-'")),
        (
            "parallel stat",
            format!("find {d} -type f -print0 | xargs -0 -P4 -n2500 stat -c %i | wc -l"),
        ),
    ] {
        let out = sh_output(&script);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{what}: {stderr}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            FILES.to_string(),
            "{what} did not see every file"
        );
    }
}

/// A process that sleeps, killed when dropped (a failing test leaves none behind).
struct Sleeper(Child);

impl Sleeper {
    fn run(script: String) -> Self {
        Sleeper(
            Command::new("bash")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process holding `file` open on descriptor 3, and one whose working directory is
/// `dir`; waits until both are in place.
fn holders(file: &Path, dir: &Path) -> (Sleeper, Sleeper, String, String) {
    let open = Sleeper::run(format!("exec 3<{} && exec sleep 600", file.display()));
    let cwd = Sleeper::run(format!("cd {} && exec sleep 600", dir.display()));
    let (open_link, cwd_link) = (
        format!("/proc/{}/fd/3", open.id()),
        format!("/proc/{}/cwd", cwd.id()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(link(&open_link) == file.display().to_string()
        && link(&cwd_link) == dir.display().to_string())
    {
        assert!(Instant::now() < deadline, "the holders did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (open, cwd, open_link, cwd_link)
}

/// Where a `/proc` magic link points ("" while it does not exist).
fn link(path: &str) -> String {
    fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn walks_of_100k_files_under_a_small_descriptor_limit_disturb_nothing() {
    let backing = tree();
    let m = Mounted::over_under(
        &["prlimit", "--nofile=2048:2048"],
        &backing.path,
        &["allow_other"],
    );
    let outside = tempfile::tempdir_in(test_root()).unwrap();
    fs::write(outside.path().join("file"), b"bound file\n").unwrap();
    sh(&format!(
        "mount --bind {o} {mp} && mount --bind {o}/file {fmp}",
        o = outside.path().display(),
        mp = m.m("mp").display(),
        fmp = m.m("fmp").display()
    ));
    let _binds = (Unmount(m.m("fmp")), Unmount(m.m("mp")));
    let (_open, _cwd, open_link, cwd_link) = holders(&m.m("many/d1/f1"), &m.m("many/d5"));
    for round in 1..=3 {
        walk_every_way(&m.m("many"));
        let held = fd_count(m.pid());
        assert!(
            held < 2048,
            "round {round}: the daemon holds {held} descriptors"
        );
    }
    let mounts = sh(&format!("findmnt -R -n -o TARGET {}", m.mnt.display()));
    assert!(
        mounts.contains(&format!("{}\n", m.m("mp").display()))
            && mounts.contains(&format!("{}\n", m.m("fmp").display())),
        "bind mounts lost: {mounts}"
    );
    assert_eq!(fs::read(m.m("fmp")).unwrap(), b"bound file\n");
    assert_eq!(link(&open_link), m.m("many/d1/f1").display().to_string());
    assert_eq!(link(&cwd_link), m.m("many/d5").display().to_string());
}

/// The same walks in the rootless fallback: an unprivileged user mounts fastfs in a user
/// namespace, where `open_by_handle_at` is refused, so inodes hold descriptors and the
/// daemon asks the kernel to prune the unused ones as the walks go.
#[test]
fn the_rootless_fallback_walks_as_far_without_disturbing_anything() {
    let backing = tree();
    let work = tempfile::tempdir_in(test_root()).unwrap();
    make_traversable(work.path());
    let fuse = user_fuse_node(work.path());
    let (mnt, outside) = (work.path().join("mnt"), work.path().join("outside"));
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("file"), b"bound file\n").unwrap();
    let log_path = work.path().join("log");
    fs::write(&log_path, b"").unwrap();
    sh(&format!(
        "chown -R 65534:65534 {} {} {} {} && chmod 755 {}",
        backing.path.display(),
        mnt.display(),
        outside.display(),
        log_path.display(),
        backing.path.display()
    ));
    // One round (three in the test above): every round of this one costs ~30 s, most of
    // it the kernel pruning and looking up again what no descriptor may hold.
    let walks: String = (1..=1)
        .map(|round| {
            format!(
                "echo round {round} \
                   $(find many -type f -printf '%s\\n' | wc -l) \
                   $(ls -lR many | grep -c '^-') \
                   $(find many -type f -print0 | xargs -0 -P4 -n2500 stat -c %i | wc -l) \
                   $(ls /proc/$daemon/fd | wc -l)\n"
            )
        })
        .collect();
    let script = format!(
        r#"set -e
        mount --bind {fuse} /dev/fuse
        prlimit --nofile=2048:2048 {fastfs} -f -o passthrough=auto {mnt} {backing} 2>{log} &
        daemon=$!
        for i in $(seq 200); do {fastfs} stats {mnt} >/dev/null 2>&1 && break; sleep 0.05; done
        {fastfs} stats {mnt} | grep -E '^identity.file_handles '
        mount --bind {outside} {mnt}/mp
        mount --bind {outside}/file {mnt}/fmp
        exec 3<{mnt}/many/d1/f1
        (cd {mnt}/many/d5 && exec sleep 600) &
        sleeper=$!
        cd {mnt}
        {walks}
        cd /
        findmnt -R -n -l -o TARGET {mnt} | sort
        readlink /proc/$$/fd/3
        readlink /proc/$sleeper/cwd
        cat {mnt}/fmp
        kill $sleeper
        exec 3<&-
        umount {mnt}/fmp {mnt}/mp
        umount {mnt}
        wait $daemon
        echo unmounted"#,
        fuse = fuse.display(),
        fastfs = FASTFS,
        mnt = mnt.display(),
        backing = backing.path.display(),
        outside = outside.display(),
        log = log_path.display(),
    );
    let out = sh_output(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups unshare -Urm bash -c '{}'",
        script.replace('\'', "'\\''")
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        out.status.success(),
        "rootless run failed:\n{stdout}\n{}\nlog:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("identity.file_handles 0"));
    for round in 1..=1 {
        let line = lines.next().unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[..2], ["round", &round.to_string()], "{line}");
        let files = FILES.to_string();
        assert_eq!(&fields[2..5], [&files, &files, &files], "{line}");
        let held: usize = fields[5].parse().unwrap();
        assert!(held < 2048, "{line}: the daemon holds {held} descriptors");
    }
    let m = mnt.display();
    assert_eq!(
        lines.by_ref().take(5).collect::<Vec<_>>(),
        [
            m.to_string(),
            format!("{m}/fmp"),
            format!("{m}/mp"),
            format!("{m}/many/d1/f1"),
            format!("{m}/many/d5"),
        ]
    );
    assert_eq!(lines.next(), Some("bound file"));
    assert_eq!(lines.next(), Some("unmounted"));
    assert!(!log.contains("panicked"), "{log}");
}

/// A file deleted while a process holds it open stays that process's file; once nothing
/// holds it, the backing filesystem hands its inode number to a new file, and the name
/// the kernel still caches for the old one never leads to the new one.
#[test]
fn a_reused_inode_number_is_never_taken_for_the_file_that_had_it() {
    // With a journal: ext4 without one avoids handing out an inode number deleted in the
    // last minute while its inode table block is cached (recently_deleted()), which under
    // load kept the number from coming back within the test's 20 s.
    let small = LoopFs::new("mkfs.ext4 -q -F", "64M");
    let m = Mounted::over(&small.path, &["cache=always"]);
    fs::write(m.b("old"), b"old content\n").unwrap();
    let mut held = fs::File::open(m.m("old")).unwrap();
    let old_ino = fs::metadata(m.m("old")).unwrap().ino();
    assert_eq!(old_ino, fs::metadata(m.b("old")).unwrap().ino());
    fs::remove_file(m.b("old")).unwrap();
    let mut kept = String::new();
    std::io::Read::read_to_string(&mut held, &mut kept).unwrap();
    assert_eq!(kept, "old content\n", "the open file lost its data");
    assert_eq!(held.metadata().unwrap().ino(), old_ino);
    drop(held);
    // Create files in BACKING until one gets the old number (once the daemon's cached
    // descriptor of the deleted file is gone, ext4 hands it out again).
    let deadline = Instant::now() + Duration::from_secs(20);
    let reused = loop {
        assert!(
            Instant::now() < deadline,
            "inode {old_ino} was never reused"
        );
        let candidate = m.b("new");
        fs::write(&candidate, b"new content\n").unwrap();
        if fs::metadata(&candidate).unwrap().ino() == old_ino {
            break "new";
        }
        fs::remove_file(&candidate).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    };
    // The kernel still holds the old name (cache=always): it is looked up again and
    // found gone; it never opens the new file.
    let through_old = fs::read(m.m("old"));
    assert_eq!(
        errno_of(through_old),
        libc::ENOENT,
        "the old name led somewhere"
    );
    assert_eq!(fs::read(m.m(reused)).unwrap(), b"new content\n");
    assert_eq!(fs::metadata(m.m(reused)).unwrap().ino(), old_ino);
}

/// A deleted file's space is free at once: nothing in the daemon keeps its blocks.
#[test]
fn space_is_free_as_soon_as_a_file_is_deleted() {
    let small = LoopFs::new("mkfs.ext4 -q -F -O ^has_journal", "64M");
    let m = Mounted::over(&small.path, &[]);
    write_random(&m.m("big"), 40);
    write_random(&m.m("src"), 15);
    let sum = checksum(&m.m("src"));
    let cp = |dst: &str| {
        sh_output(&format!(
            "cp {} {}",
            m.m("src").display(),
            m.m(dst).display()
        ))
    };
    let full = cp("dst");
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("No space left on device"),
        "{full:?}"
    );
    fs::remove_file(m.m("dst")).unwrap();
    fs::remove_file(m.m("big")).unwrap();
    let copied = cp("dst");
    assert!(copied.status.success(), "{copied:?}");
    assert_eq!(checksum(&m.m("dst")), sum);
}
