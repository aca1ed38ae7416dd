//! fastfs: a FUSE passthrough filesystem whose copies are offloaded to the kernel.
//!
//! `fastfs MOUNTPOINT BACKING` mounts the directory BACKING at MOUNTPOINT. Every operation
//! is passed to the backing files; a FUSE `COPY_FILE_RANGE` becomes `copy_file_range(2)` on
//! the backing descriptors (a reflink on XFS/btrfs, an in-kernel copy on ext4), with a
//! buffered fallback where the backing cannot offload.
//!
//! Data flows one way: kernel request -> [`transport`] (a `/dev/fuse` thread reads it,
//! [`transport::wire`] decodes it, the dispatcher calls [`fs`]) -> [`fs`] (plain methods
//! returning `io::Result`) -> [`inode`] / [`handle`] / [`copy`] / [`creds`] -> [`sys`] (the
//! only `unsafe`) -> kernel; the reply goes back the same way. fuser answers the kernel's
//! INIT; fastfs decodes and answers everything after it.
//!
//! Invariants:
//! - Inodes hold `O_PATH` descriptors, never paths; names are resolved relative to the
//!   parent's descriptor with `O_NOFOLLOW`, one component at a time, so nothing escapes
//!   BACKING and the daemon never follows a symlink.
//! - Only open handles hold readable/writable descriptors.
//! - Every system call made on a caller's behalf runs with the caller's uid, gid and
//!   groups on the serving thread ([`creds`]); nothing is done with root's rights that
//!   the caller could not do natively.
//! - Locks: the inode table and the handle table each have one mutex; neither is held
//!   while taking the other, across a system call, or across a reply.
//! - The errno of a backing call reaches the kernel unchanged, except that ENOSYS is
//!   never sent (the kernel would stop sending that operation for the whole mount).

pub mod config;
pub mod copy;
pub mod creds;
pub mod dir;
pub mod fs;
pub mod handle;
pub mod idmap;
pub mod inode;
pub mod locks;
pub mod logger;
pub mod mount;
pub mod passthrough;
pub mod stats;
pub mod sys;
pub mod transport;
pub mod xattr;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use config::{Config, Error, MountOptions};

/// Closes every descriptor above stderr that this process inherited (a daemon keeps
/// only what it opens itself).
pub fn close_inherited_descriptors() {
    if let Err(e) = sys::close_inherited() {
        eprintln!("fastfs: cannot close inherited descriptors: {e}");
    }
}

/// An I/O error's message without the "(os error N)" suffix.
pub fn describe_io_error(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Mounts `config` and serves it. In the foreground this returns when the mount goes
/// away. Otherwise it returns as soon as the mount is live, leaving a detached daemon
/// to serve it; errors before that point are returned here, so the caller can report them.
pub fn run(config: &Config, foreground: bool) -> Result<(), Error> {
    if config.options.remount {
        return mount::remount(config);
    }
    // The paths are absolute by now: the daemon keeps no directory of its caller's busy.
    sys::chdir_root().map_err(|e| Error(format!("cannot change to /: {e}")))?;
    if foreground {
        return mount::serve(config, || {});
    }
    let (mut report_rx, report_tx) = sys::pipe()
        .map(|(r, w)| (std::fs::File::from(r), std::fs::File::from(w)))
        .map_err(|e| Error(format!("cannot create a pipe: {e}")))?;
    // fastfs has started no thread yet, as fork requires.
    match sys::fork().map_err(|e| Error(format!("cannot fork the daemon: {e}")))? {
        sys::Forked::Parent { child } => {
            drop(report_tx);
            let mut report = String::new();
            let _ = report_rx.read_to_string(&mut report);
            if report == "ready" {
                return Ok(());
            }
            if !report.is_empty() {
                return Err(Error(report));
            }
            let status = sys::wait_child(child).unwrap_or(-1);
            Err(Error(format!(
                "the daemon exited before mounting (status {status})"
            )))
        }
        sys::Forked::Child => {
            drop(report_rx);
            let _ = sys::setsid();
            let mut report_tx = Some(report_tx);
            let result = mount::serve(config, || {
                if let Some(mut tx) = report_tx.take() {
                    let _ = tx.write_all(b"ready");
                }
                detach_stdio();
            });
            let Err(e) = result else {
                std::process::exit(0);
            };
            match report_tx.take() {
                // Not mounted yet: the parent prints the error.
                Some(mut tx) => {
                    let _ = tx.write_all(e.0.as_bytes());
                }
                // Detached already: only the log can tell.
                None => log::error!("{e}"),
            }
            std::process::exit(1);
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null once the daemon has detached.
fn detach_stdio() {
    if let Ok(null) = sys::openat(None, c"/dev/null", libc::O_RDWR, 0) {
        for target in 0..3 {
            let _ = sys::dup2(std::os::fd::AsFd::as_fd(&null), target);
        }
    }
}

/// The live counters of the fastfs mounted at `mountpoint`, as `name value` lines.
pub fn read_stats(mountpoint: &Path) -> Result<String, Error> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error("path contains a NUL byte".into()))?;
    let name = CString::new(stats::STATS_XATTR).expect("no NUL");
    let mut buf = vec![0u8; 64 * 1024];
    match sys::getxattr(&path, &name, &mut buf) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Err(Error(
            format!("{} is not the root of a fastfs mount", mountpoint.display()),
        )),
        Err(e) => Err(Error(format!(
            "{}: {}",
            mountpoint.display(),
            describe_io_error(&e)
        ))),
    }
}
