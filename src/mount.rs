//! Mounting, serving and unmounting one fastfs.
//!
//! fastfs mounts with mount(2) itself (as root) so the mount is typed `fuse.fastfs` and
//! names BACKING as its source; fuser then serves the `/dev/fuse` descriptor on several
//! threads. The mount is removed on every way out: a guard unmounts on error, a signal
//! thread unmounts on SIGINT/SIGTERM/SIGHUP, and an external `umount` ends the session.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Cache, Config, Error, Passthrough, Uring};
use crate::fs::{Fs, FsOptions};
use crate::passthrough::Passthrough as KernelPassthrough;
use crate::transport::{self, Dispatcher, InitRequest, RingSetup, devfuse, ring, wire};
use crate::{describe_io_error, sys};

const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How long open files may keep a lazily unmounted session alive after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Unmounts `target`; if files are still open there, detaches it lazily instead.
pub fn unmount(target: &CStr) -> io::Result<()> {
    match sys::umount2(target, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => sys::umount2(target, libc::MNT_DETACH),
        other => other,
    }
}

/// Unmounts on drop unless the session ended by being unmounted.
struct MountGuard {
    target: CString,
    armed: bool,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = unmount(&self.target)
        {
            log::error!("cannot unmount {:?}: {e}", self.target);
        }
    }
}

fn mount_data(config: &Config, dev_fd: i32, root_mode: u32) -> String {
    let (uid, gid) = sys::effective_ids();
    let mut data = format!("fd={dev_fd},rootmode={root_mode:o},user_id={uid},group_id={gid}");
    if config.options.allow_other {
        data.push_str(",allow_other");
    }
    // The kernel checks every caller's permissions and ACLs (with the caller's own
    // capabilities, which a request does not carry to the daemon).
    data.push_str(",default_permissions");
    data
}

fn mount_flags(config: &Config) -> u64 {
    let o = &config.options;
    let mut flags = 0;
    for (set, flag) in [
        (o.read_only, libc::MS_RDONLY),
        (!o.suid, libc::MS_NOSUID),
        (!o.dev, libc::MS_NODEV),
        (o.noexec, libc::MS_NOEXEC),
        (o.noatime, libc::MS_NOATIME),
    ] {
        if set {
            flags |= flag;
        }
    }
    flags
}

fn cstring(path: &std::path::Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error(format!("path {} contains a NUL byte", path.display())))
}

/// Mounts `config` and serves it until it is unmounted. `on_ready` runs once the mount
/// is live (the kernel's INIT answered), before requests are served.
pub fn serve(config: &Config, on_ready: impl FnOnce()) -> Result<(), Error> {
    // Threads spawned from here on inherit the mask: only the signal thread sees them.
    sys::block_signals(&SHUTDOWN_SIGNALS)
        .map_err(|e| Error(format!("cannot block signals: {e}")))?;
    // Every inode the kernel holds costs one O_PATH descriptor: allow as many as the
    // kernel does (fs.nr_open), not the usual hard limit of a few thousand.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let fd_limit = match sys::raise_nofile_limit(nr_open) {
        Ok(limit) => {
            log::debug!("RLIMIT_NOFILE raised to {limit}");
            limit
        }
        Err(e) => {
            log::warn!("cannot raise RLIMIT_NOFILE: {e}");
            1024
        }
    };
    // Each creation applies the caller's umask itself (see creds::act_as_creator).
    sys::set_umask(0);
    crate::locks::install_wake_signal()
        .map_err(|e| Error(format!("cannot install the lock wake-up signal: {e}")))?;

    if config.options.uring == Uring::On && !uring_enabled_in_kernel() {
        return Err(uring_refused());
    }
    let backing = cstring(&config.backing)?;
    let target = cstring(&config.mountpoint)?;
    if crate::config::is_stale_fuse_mount(&config.mountpoint) {
        log::warn!(
            "{} is a dead FUSE mount (its daemon was killed); detaching it",
            config.mountpoint.display()
        );
        sys::umount2(&target, libc::MNT_DETACH).map_err(|e| {
            Error(format!(
                "cannot detach the dead mount at {}: {}",
                config.mountpoint.display(),
                describe_io_error(&e)
            ))
        })?;
    }
    let root = sys::openat(None, &backing, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| {
        Error(format!(
            "backing directory {}: {}",
            config.backing.display(),
            describe_io_error(&e)
        ))
    })?;
    let root_mode = sys::fstat(root.as_fd())
        .map_err(|e| Error(format!("backing directory: {e}")))?
        .st_mode;
    // Over a filesystem that others change too, the kernel must not trust names and
    // attributes for a day: unless told otherwise, re-check them after a second.
    let mut cache = config.options.cache;
    if !config.options.cache_given
        && let Ok(st) = sys::fstatfs(root.as_fd())
        && crate::config::is_shared_filesystem(st.f_type)
    {
        log::info!(
            "{} is on a network or FUSE filesystem (type {:#x}): cache=auto",
            config.backing.display(),
            st.f_type
        );
        cache = Cache::Auto;
    }
    let fs = Arc::new(
        Fs::new(
            root,
            FsOptions {
                fd_limit,
                file_handles: config.options.file_handles,
                forward_locks: config.options.forward_locks,
            },
        )
        .map_err(|e| Error(format!("backing directory: {e}")))?,
    );

    let dev = sys::openat(None, c"/dev/fuse", libc::O_RDWR, 0).map_err(|e| {
        Error(format!(
            "cannot open /dev/fuse: {} (fastfs needs the fuse module and root)",
            describe_io_error(&e)
        ))
    })?;
    let data = CString::new(mount_data(
        config,
        std::os::fd::AsRawFd::as_raw_fd(&dev),
        root_mode,
    ))
    .expect("mount data has no NUL");
    sys::mount(
        &backing,
        &target,
        c"fuse.fastfs",
        mount_flags(config),
        &data,
    )
    .map_err(|e| {
        Error(format!(
            "cannot mount {}: {}",
            config.mountpoint.display(),
            describe_io_error(&e)
        ))
    })?;
    let mut guard = MountGuard {
        target: target.clone(),
        armed: true,
    };
    let mount_id = mount_id_at(&config.mountpoint);

    let wanted = InitRequest {
        cache,
        passthrough: config.options.passthrough != Passthrough::Off,
        uring: config.options.uring != Uring::Off,
        locks: config.options.forward_locks,
    };
    let (session, negotiated, rings) = transport::handshake(dev, wanted)
        .map_err(|e| Error(format!("FUSE handshake with the kernel failed: {e}")))?;
    let rings = match rings {
        RingSetup::Ready(prepared) => Some(prepared),
        RingSetup::NotOffered if config.options.uring == Uring::On => {
            return Err(uring_refused());
        }
        RingSetup::Failed(e) if config.options.uring == Uring::On => {
            return Err(Error(format!(
                "uring=on, but the io_uring rings cannot be set up: {}",
                describe_io_error(&e)
            )));
        }
        RingSetup::Failed(e) => {
            log::warn!("cannot set up io_uring rings ({e}); serving over /dev/fuse");
            None
        }
        RingSetup::NotOffered | RingSetup::NotWanted => None,
    };
    let dup = |what: &str| {
        session
            .try_clone()
            .map_err(|e| Error(format!("cannot duplicate /dev/fuse for {what}: {e}")))
    };
    let passthrough = Arc::new(
        KernelPassthrough::new(dup("passthrough")?, negotiated.passthrough)
            .map_err(|e| Error(format!("cannot start the passthrough thread: {e}")))?,
    );
    let passthrough_refused = passthrough.probe(fs.inodes.root_fd());
    let notifications = dup("notifications")?;
    fs.set_attribute_invalidator(Box::new(move |node| {
        // ENOENT: the kernel does not hold the node (any more); nothing is stale.
        let _ = sys::writev(notifications.as_fd(), &[&wire::inval_attributes(node)]);
    }));
    spawn_upkeep(fs.clone(), dup("notifications")?)?;
    match (&passthrough_refused, config.options.passthrough) {
        (Some(reason), Passthrough::On) => {
            return Err(Error(format!("passthrough=on, but {reason}")));
        }
        (None, Passthrough::On) if !passthrough.enabled() => {
            return Err(Error(
                "passthrough=on, but the kernel refuses FUSE passthrough here \
                 (it needs Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH and CAP_SYS_ADMIN)"
                    .into(),
            ));
        }
        (Some(reason), _) => log::warn!("{reason}: reads and writes go through the daemon"),
        (None, _) => {}
    }
    log::info!(
        "mounted {} at {} (cache={}, passthrough {}, io_uring {})",
        config.backing.display(),
        config.mountpoint.display(),
        cache.name(),
        if passthrough.enabled() { "on" } else { "off" },
        if rings.is_some() { "on" } else { "off" }
    );
    let dispatcher = Arc::new(Dispatcher::new(fs.clone(), cache, passthrough));

    // With rings, /dev/fuse carries only FORGET, INTERRUPT and what comes before the
    // rings are ready: two threads (more while they are busy) are plenty.
    let devfuse_threads = match rings {
        Some(_) => config.options.threads.min(2),
        None => config.options.threads,
    };
    let rings = rings
        .map(|prepared| ring::serve(dispatcher.clone(), prepared, negotiated.setxattr_ext))
        .transpose()
        .map_err(|e| Error(format!("cannot start the io_uring threads: {e}")))?;
    spawn_signal_thread(target)?;
    on_ready();
    let result = devfuse::serve(
        dispatcher,
        &session,
        devfuse_threads,
        transport::request_buffer(negotiated.max_write),
        negotiated.setxattr_ext,
    );
    // The connection is gone: the ring threads end (or have ended) too.
    if let Some(rings) = rings {
        rings.join();
    }
    // The session ends when the mount goes away (ENODEV); then there is nothing to undo.
    // A read that fails while a lazily unmounted connection is torn down is not a failure
    // of the mount either: once the mount has left the namespace, the user asked for it.
    let result = match result {
        Err(e) if mount_id.is_some_and(|id| !mount_present(id)) => {
            log::warn!("session ended after the mount was removed: {e}");
            Ok(())
        }
        other => other,
    };
    guard.armed = result.is_err();
    result.map_err(|e| Error(format!("serving the mount failed: {e}")))
}

/// Whether the kernel offers FUSE over io_uring to new mounts (`fuse.enable_uring`).
fn uring_enabled_in_kernel() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
}

fn uring_refused() -> Error {
    Error(
        "uring=on, but the kernel does not offer FUSE over io_uring: it needs Linux 6.14+ \
         with CONFIG_FUSE_IO_URING and fuse.enable_uring set \
         (echo Y > /sys/module/fuse/parameters/enable_uring)"
            .into(),
    )
}

/// Unescapes a path field of /proc/self/mountinfo (`\040` for space, and so on).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // The kernel escapes a byte as three octal digits, so the first is 0-3.
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `(mount id, mount point)` of every mount in this namespace.
fn mounts() -> Vec<(u64, Vec<u8>)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let mount_point = fields.nth(3)?;
            Some((id, unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// The id of the topmost mount at `path` (the one just made there).
fn mount_id_at(path: &std::path::Path) -> Option<u64> {
    let path = path.as_os_str().as_bytes();
    mounts()
        .into_iter()
        .rev()
        .find(|(_, point)| point == path)
        .map(|(id, _)| id)
}

fn mount_present(id: u64) -> bool {
    mounts().iter().any(|(other, _)| *other == id)
}

/// How often upkeep runs when nothing asks for it.
const UPKEEP_PERIOD: Duration = Duration::from_secs(2);

/// Upkeep ([`Fs::upkeep`]) on a thread of its own. Where inodes hold descriptors (no file
/// handles), it keeps them within their budget: asks the kernel to prune the least
/// recently used (FUSE_NOTIFY_PRUNE drops only dentries nothing uses: no open file,
/// working directory or mount is ever affected), and the kernel answers with FORGET. A
/// notification may wait for locks a request being served holds, hence the own thread.
fn spawn_upkeep(fs: Arc<Fs>, dev: OwnedFd) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("fastfs-upkeep".into())
        .spawn(move || {
            loop {
                let nodes = fs.upkeep(UPKEEP_PERIOD);
                if nodes.is_empty() {
                    continue;
                }
                log::debug!("asking the kernel to prune {} inodes", nodes.len());
                for batch in nodes.chunks(256) {
                    if let Err(e) = sys::writev(dev.as_fd(), &[&wire::prune(batch)]) {
                        if e.raw_os_error() == Some(libc::ENODEV) {
                            return;
                        }
                        log::warn!("the kernel refused to prune inodes: {e}");
                    }
                }
                // Let the FORGETs arrive before measuring again.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .map(drop)
        .map_err(|e| Error(format!("cannot start the upkeep thread: {e}")))
}

fn spawn_signal_thread(target: CString) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("fastfs-signals".into())
        .spawn(move || {
            let sig = match sys::wait_signal(&SHUTDOWN_SIGNALS) {
                Ok(sig) => sig,
                Err(e) => {
                    log::error!("waiting for signals failed: {e}");
                    return;
                }
            };
            log::info!("signal {sig}: unmounting {target:?}");
            if let Err(e) = unmount(&target) {
                log::error!("cannot unmount {target:?}: {e}");
            }
            // A lazily detached mount lives on while files are open; do not wait forever.
            std::thread::sleep(SHUTDOWN_GRACE);
            log::warn!("files still open after unmount; exiting");
            std::process::exit(0);
        })
        .map(drop)
        .map_err(|e| Error(format!("cannot start the signal thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b\134c"), b"/mnt/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain\09"), b"/plain\\09");
        assert_eq!(unescape_mountinfo(r"/not\777"), b"/not\\777");
    }

    #[test]
    fn the_root_mount_is_found() {
        let id = mount_id_at(std::path::Path::new("/")).expect("/ is a mount point");
        assert!(mount_present(id));
    }
}
