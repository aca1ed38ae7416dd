//! Load: a bounded multi-worker stress run checked against a model, and an fsx-style
//! random operation sequence on one file checked against an in-memory copy.
//! Seeds are printed so a failure can be replayed (`FASTFS_SEED=...`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastfs::sys;

use crate::common::*;

/// xorshift64*: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let tag = self.next();
        (0..len)
            .map(|i| (tag.rotate_left(i as u32 % 64) as u8) ^ (i as u8))
            .collect()
    }
}

/// The number in the environment variable `name`, if it is set and parses.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn seed() -> u64 {
    let seed = env_number("FASTFS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("seed {seed} (replay with FASTFS_SEED={seed})");
    seed
}

/// One worker's view of its directory: names point at inodes, inodes hold content.
#[derive(Default)]
struct Model {
    names: HashMap<String, usize>,
    contents: Vec<Vec<u8>>,
    dirs: HashSet<String>,
}

impl Model {
    fn pick(&self, rng: &mut Rng) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        let mut names: Vec<&String> = self.names.keys().collect();
        names.sort();
        Some(names[rng.below(names.len() as u64) as usize].clone())
    }
}

fn stress_worker(dir: PathBuf, seed: u64, deadline: Instant) -> Result<u64, String> {
    fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut ops = 0u64;
    let p = |n: &str| dir.join(n);
    let ctx = |op: &str, e: std::io::Error| format!("{} op {op}: {e}", dir.display());
    while Instant::now() < deadline {
        ops += 1;
        let fresh = format!("f{}", rng.below(24));
        match rng.below(9) {
            0 | 1 => {
                // (Over)write a file in place, as `cat > f` does.
                let size = rng.below(96 << 10) as usize;
                let data = rng.bytes(size);
                fs::write(p(&fresh), &data).map_err(|e| ctx("write", e))?;
                let ino = match model.names.get(&fresh) {
                    Some(&i) => i,
                    None => {
                        model.contents.push(Vec::new());
                        let i = model.contents.len() - 1;
                        model.names.insert(fresh.clone(), i);
                        i
                    }
                };
                model.contents[ino] = data;
            }
            2 => {
                if let Some(src) = model.pick(&mut rng)
                    && model.names.get(&fresh) != model.names.get(&src)
                {
                    // std::fs::copy uses copy_file_range: the FUSE COPY_FILE_RANGE path.
                    // (Copying a file onto itself, or onto another of its links, would
                    // truncate it first; cp refuses that, so this test does not do it.)
                    fs::copy(p(&src), p(&fresh)).map_err(|e| ctx("copy", e))?;
                    let data = model.contents[model.names[&src]].clone();
                    match model.names.get(&fresh) {
                        Some(&i) => model.contents[i] = data,
                        None => {
                            model.contents.push(data);
                            model.names.insert(fresh, model.contents.len() - 1);
                        }
                    }
                }
            }
            3 => {
                if let Some(src) = model.pick(&mut rng)
                    && src != fresh
                {
                    fs::rename(p(&src), p(&fresh)).map_err(|e| ctx("rename", e))?;
                    // Renaming one hard link onto another of the same file does nothing.
                    if model.names.get(&fresh) != model.names.get(&src) {
                        let ino = model.names.remove(&src).unwrap();
                        model.names.insert(fresh, ino);
                    }
                }
            }
            4 => {
                if let Some(src) = model.pick(&mut rng)
                    && !model.names.contains_key(&fresh)
                {
                    fs::hard_link(p(&src), p(&fresh)).map_err(|e| ctx("link", e))?;
                    let ino = model.names[&src];
                    model.names.insert(fresh, ino);
                }
            }
            5 => {
                if let Some(victim) = model.pick(&mut rng) {
                    fs::remove_file(p(&victim)).map_err(|e| ctx("unlink", e))?;
                    model.names.remove(&victim);
                }
            }
            6 => {
                if let Some(f) = model.pick(&mut rng) {
                    let len = rng.below(128 << 10);
                    OpenOptions::new()
                        .write(true)
                        .open(p(&f))
                        .and_then(|file| file.set_len(len))
                        .map_err(|e| ctx("truncate", e))?;
                    model.contents[model.names[&f]].resize(len as usize, 0);
                }
            }
            7 => {
                if let Some(f) = model.pick(&mut rng) {
                    let size = rng.below(8192) as usize;
                    let data = rng.bytes(size);
                    OpenOptions::new()
                        .append(true)
                        .open(p(&f))
                        .and_then(|mut file| file.write_all(&data))
                        .map_err(|e| ctx("append", e))?;
                    model.contents[model.names[&f]].extend_from_slice(&data);
                }
            }
            _ => {
                // Directory churn.
                let d = format!("d{}", rng.below(4));
                if model.dirs.remove(&d) {
                    fs::remove_dir_all(p(&d)).map_err(|e| ctx("rmdir", e))?;
                } else {
                    fs::create_dir(p(&d)).map_err(|e| ctx("mkdir", e))?;
                    fs::write(p(&d).join("inner"), b"x").map_err(|e| ctx("mkdir", e))?;
                    model.dirs.insert(d);
                }
            }
        }
    }
    // Verify: exactly the modelled names, with the modelled content.
    let mut listed: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = model
        .names
        .keys()
        .chain(model.dirs.iter())
        .cloned()
        .collect();
    expected.sort();
    if listed != expected {
        return Err(format!(
            "{}: listed {listed:?}, expected {expected:?}",
            dir.display()
        ));
    }
    for (name, &ino) in &model.names {
        let got = fs::read(p(name)).map_err(|e| e.to_string())?;
        if got != model.contents[ino] {
            return Err(format!(
                "{}/{name}: content mismatch ({} bytes, expected {})",
                dir.display(),
                got.len(),
                model.contents[ino].len()
            ));
        }
    }
    Ok(ops)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn eight_workers_of_mixed_operations_match_their_model() {
    let secs: u64 = env_number("FASTFS_STRESS_SECS").unwrap_or(30);
    let m = Mounted::new();
    let seed = seed();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let dir = m.m(&format!("w{i}"));
            std::thread::spawn(move || stress_worker(dir, seed + i, deadline))
        })
        .collect();
    let (mut max_rss, mut max_fds) = (0, 0);
    while Instant::now() < deadline {
        max_rss = max_rss.max(rss_kib(m.pid()));
        max_fds = max_fds.max(
            fs::read_dir(format!("/proc/{}/fd", m.pid()))
                .unwrap()
                .count(),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut total = 0;
    let mut failures = Vec::new();
    for w in workers {
        match w.join().unwrap() {
            Ok(ops) => total += ops,
            Err(e) => failures.push(e),
        }
    }
    println!("{total} operations; daemon peak RSS {max_rss} KiB, peak descriptors {max_fds}");
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
    assert!(total > 1000, "only {total} operations in {secs} s");
    assert!(max_rss < 200 << 10, "daemon RSS reached {max_rss} KiB");
    assert!(max_fds < 2000, "daemon held {max_fds} descriptors");
    let stats = m.stats();
    assert!(stats["copy_file_range.calls"] > 0, "{stats:?}");
}

/// A shared, writable mapping of a file range, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> Mapping {
        use std::os::fd::AsRawFd;
        // SAFETY: mapping a file we hold open, shared, for `len` bytes (len > 0); the
        // result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives; this test is the
        // only writer of the file while the mapping is in use.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; msync first so the data reaches
        // the file before the next operation reads it through another path.
        unsafe {
            libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC);
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[test]
fn random_file_operations_match_an_in_memory_model() {
    let ops: usize = env_number("FASTFS_FSX_OPS").unwrap_or(4000);
    let m = Mounted::new();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let path = m.m("fsx");
    let source_path = m.m("fsx-source");
    let source_data = rng.bytes(1 << 20);
    fs::write(&source_path, &source_data).unwrap();
    let source = File::open(&source_path).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    const MAX: u64 = 4 << 20;
    let mut log: Vec<String> = Vec::new();
    for n in 0..ops {
        let off = rng.below(MAX);
        let len = rng.below(256 << 10) + 1;
        let op = rng.below(10);
        let desc = match op {
            0 | 1 => {
                let data = rng.bytes(len as usize);
                file.write_all_at(&data, off).unwrap();
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
                format!("write {off} {len}")
            }
            2 | 3 => {
                let mut buf = vec![0u8; len as usize];
                let mut got = 0;
                while got < buf.len() {
                    let n = file.read_at(&mut buf[got..], off + got as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let expect_end = (off as usize + len as usize).min(model.len());
                let expected = if off as usize >= model.len() {
                    &[][..]
                } else {
                    &model[off as usize..expect_end]
                };
                assert!(
                    &buf[..got] == expected,
                    "seed {seed} op {n} read {off} {len}: mismatch; last ops:\n{}",
                    log.join("\n")
                );
                format!("read {off} {len}")
            }
            4 => {
                let size = rng.below(MAX);
                file.set_len(size).unwrap();
                model.resize(size as usize, 0);
                format!("truncate {size}")
            }
            5 => {
                // Punch a hole inside the file: zeros, size unchanged.
                if model.is_empty() {
                    continue;
                }
                let start = rng.below(model.len() as u64);
                let l = len.min(model.len() as u64 - start);
                sys::fallocate(
                    file.as_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start,
                    l,
                )
                .unwrap();
                model[start as usize..(start + l) as usize].fill(0);
                format!("punch {start} {l}")
            }
            6 => {
                // Preallocate, sometimes past the end with KEEP_SIZE (size unchanged).
                let keep = rng.below(2) == 0;
                let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                sys::fallocate(file.as_fd(), mode, off, len).unwrap();
                if !keep && model.len() < (off + len) as usize {
                    model.resize((off + len) as usize, 0);
                }
                format!("fallocate keep={keep} {off} {len}")
            }
            7 | 8 => {
                // copy_file_range from the source file through the mount.
                let src_off = rng.below(source_data.len() as u64);
                let want = len.min(source_data.len() as u64 - src_off);
                let mut done = 0u64;
                while done < want {
                    let n = sys::copy_file_range(
                        source.as_fd(),
                        src_off + done,
                        file.as_fd(),
                        off + done,
                        (want - done) as usize,
                    )
                    .unwrap() as u64;
                    assert!(n > 0, "copy_file_range returned 0 inside the source");
                    done += n;
                }
                let end = (off + want) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end]
                    .copy_from_slice(&source_data[src_off as usize..(src_off + want) as usize]);
                format!("copy_file_range src {src_off} -> {off} {want}")
            }
            _ => {
                // mmap: write a range through a shared mapping, then read one back.
                if model.len() < 4096 {
                    continue;
                }
                let mut map = Mapping::new(&file, model.len());
                let start = rng.below(model.len() as u64) as usize;
                let l = (len as usize).min(model.len() - start);
                let data = rng.bytes(l);
                map.bytes()[start..start + l].copy_from_slice(&data);
                model[start..start + l].copy_from_slice(&data);
                let probe = rng.below(model.len() as u64) as usize;
                assert_eq!(
                    map.bytes()[probe],
                    model[probe],
                    "seed {seed} op {n}: mmap read"
                );
                format!("mmap write {start} {l}")
            }
        };
        log.push(desc);
        if log.len() > 20 {
            log.remove(0);
        }
        if n % 500 == 499 {
            assert_eq!(
                file.metadata().unwrap().len(),
                model.len() as u64,
                "seed {seed} op {n}"
            );
        }
    }
    drop(file);
    let on_disk = fs::read(m.b("fsx")).unwrap();
    assert!(
        on_disk == model,
        "seed {seed}: final content differs from the model"
    );
}
