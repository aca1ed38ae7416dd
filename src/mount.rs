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

    if config.options.idmap && sys::effective_ids().0 != 0 {
        return Err(Error(
            "option idmap needs fastfs to run as root: only requests that create carry \
             the caller's ids, and the others are served with rights the daemon lends"
                .into(),
        ));
    }
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
    let root = backing_root(&backing, config.options.flags).map_err(|e| {
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
                atime: crate::fs::Atime::of_mount_flags(config.options.flags),
                idmap: config.options.idmap,
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
        config.options.flags,
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
        idmap: config.options.idmap,
    };
    let (session, negotiated, rings) = transport::handshake(dev, wanted)
        .map_err(|e| Error(format!("FUSE handshake with the kernel failed: {e}")))?;
    if config.options.idmap && !negotiated.idmap {
        return Err(Error(
            "option idmap: the kernel does not allow idmapped FUSE mounts \
             (FUSE_ALLOW_IDMAP needs Linux 6.12)"
                .into(),
        ));
    }
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

/// BACKING's root, opened as `O_PATH`. When the mount asks for its own atime rule
/// (`noatime`, `nodiratime`, `strictatime`), the root is that of a private, detached
/// copy of BACKING's mount tree carrying the rule: every backing file is reached through
/// it, so the backing filesystem applies the rule to every access, including kernel
/// passthrough reads (whose backing files are opened with the reader's flags, not the
/// daemon's). Where no copy can be made (no CAP_SYS_ADMIN over BACKING's mount), the
/// daemon's own opens still use `O_NOATIME` (see `fs::Atime`).
fn backing_root(backing: &CStr, flags: u64) -> io::Result<OwnedFd> {
    let atime_rule = flags & (libc::MS_NOATIME | libc::MS_NODIRATIME | libc::MS_STRICTATIME);
    if atime_rule != 0 {
        let mut set = 0;
        if flags & libc::MS_NOATIME != 0 {
            set |= libc::MOUNT_ATTR_NOATIME;
        } else if flags & libc::MS_STRICTATIME != 0 {
            set |= libc::MOUNT_ATTR_STRICTATIME;
        }
        if flags & libc::MS_NODIRATIME != 0 {
            set |= libc::MOUNT_ATTR_NODIRATIME;
        }
        // Without NOATIME or STRICTATIME, the copy keeps relatime (MOUNT_ATTR_RELATIME
        // is 0 within the atime field).
        let cleared = libc::MOUNT_ATTR__ATIME | libc::MOUNT_ATTR_NODIRATIME;
        match sys::open_tree_clone(backing)
            .and_then(|tree| sys::mount_setattr(tree.as_fd(), set, cleared).map(|()| tree))
        {
            Ok(tree) => return Ok(tree),
            Err(e) => log::warn!(
                "cannot give BACKING the mount's atime rule ({e}): only the daemon's own \
                 reads follow it, not kernel passthrough"
            ),
        }
    }
    sys::openat(None, backing, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// The per-mount flags `statvfs` reports (`ST_*`), as `mount(2)` flags.
fn flags_of(st: &libc::statvfs) -> u64 {
    // Not in the libc crate: statvfs.h's ST_NOSYMFOLLOW (Linux 5.10).
    const ST_NOSYMFOLLOW: u64 = 0x2000;
    const ST_TO_MS: [(u64, u64); 9] = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (ST_NOSYMFOLLOW, libc::MS_NOSYMFOLLOW),
    ];
    let flags = st.f_flag;
    ST_TO_MS
        .iter()
        .filter(|(st_flag, _)| flags & st_flag != 0)
        .fold(0, |acc, (_, ms)| acc | ms)
}

/// `mount -o remount,...`: changes the flags the options name on the fastfs mounted at
/// the mountpoint and keeps the others (mount(2) with MS_REMOUNT replaces every
/// per-mount flag, so the current ones are read first).
pub fn remount(config: &Config) -> Result<(), Error> {
    let target = cstring(&config.mountpoint)?;
    let fastfs_here = mounts_with_type()
        .into_iter()
        .rev()
        .find(|(point, _)| point.as_slice() == config.mountpoint.as_os_str().as_bytes())
        .is_some_and(|(_, fstype)| fstype == "fuse.fastfs");
    if !fastfs_here {
        return Err(Error(format!(
            "remount: {} is not a fastfs mount",
            config.mountpoint.display()
        )));
    }
    let current =
        sys::statvfs(&target).map_err(|e| Error(format!("remount: {}", describe_io_error(&e))))?;
    let (set, clear) = config.options.flags_named;
    let flags = (flags_of(&current) & !clear) | set;
    sys::mount(
        &cstring(&config.backing)?,
        &target,
        c"fuse.fastfs",
        libc::MS_REMOUNT | flags,
        c"",
    )
    .map_err(|e| {
        Error(format!(
            "cannot remount {}: {}",
            config.mountpoint.display(),
            describe_io_error(&e)
        ))
    })
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

/// `(mount point, filesystem type)` of every mount in this namespace, in mount order.
fn mounts_with_type() -> Vec<(Vec<u8>, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let point = line.split(' ').nth(4)?;
            // After the optional fields, " - " separates the filesystem type.
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            Some((unescape_mountinfo(point), fstype.to_string()))
        })
        .collect()
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
            let wait = || match sys::wait_signal(&SHUTDOWN_SIGNALS) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    log::error!("waiting for signals failed: {e}");
                    None
                }
            };
            let Some(sig) = wait() else { return };
            log::info!("signal {sig}: unmounting {target:?}");
            if let Err(e) = unmount(&target) {
                log::error!("cannot unmount {target:?}: {e}");
            }
            // Unmounted lazily while files are open: the mount is gone from the namespace
            // but serves them until the last is closed, when the kernel ends the
            // connection and the request threads return. A second signal ends it now.
            let Some(sig) = wait() else { return };
            log::warn!("signal {sig} again: exiting while files are still open");
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
