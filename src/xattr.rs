//! Extended attributes (ACLs among them), and the virtual attribute `fastfs stats` reads.
//!
//! Attributes are read, listed and changed as the caller: the backing filesystem decides
//! who sees `trusted.*` and who may set `user.*` or ACLs (and a new access ACL drops
//! set-gid for a caller outside the group, as natively).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::creds::Caller;
use crate::fs::{Fs, errno};
use crate::inode::{NodeId, ROOT_ID};
use crate::stats::STATS_XATTR;
use crate::sys;

/// An extended attribute value, or only its size when the caller asked for that.
#[derive(Debug, PartialEq, Eq)]
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// A value for a getxattr-style reply: the size when `size` is 0, `ERANGE` when too small.
fn sized(data: Vec<u8>, size: u32) -> io::Result<Xattr> {
    if size == 0 {
        Ok(Xattr::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(errno(libc::ERANGE))
    } else {
        Ok(Xattr::Data(data))
    }
}

/// Reads a value or list with `read` into a buffer of `size` bytes (0: the size only).
fn read_sized(size: u32, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<Xattr> {
    if size == 0 {
        return Ok(Xattr::Size(read(&mut [])? as u32));
    }
    let mut buf = vec![0u8; size as usize];
    let n = read(&mut buf)?;
    buf.truncate(n);
    Ok(Xattr::Data(buf))
}

/// Whether `name` is the access ACL, which the kernel checks permission with (and whose
/// change changes the mode).
fn is_access_acl(name: &OsStr) -> bool {
    name.as_bytes() == b"system.posix_acl_access"
}

fn is_stats_xattr(id: NodeId, name: &OsStr) -> bool {
    id == ROOT_ID && name.as_bytes() == STATS_XATTR.as_bytes()
}

/// Whether only a capable caller may read or change attribute `name`: `trusted.*`
/// (CAP_SYS_ADMIN) and `security.*` (CAP_SYS_ADMIN, or CAP_SETFCAP for file
/// capabilities), which the kernel checks for the caller before the request is sent.
fn is_privileged_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"trusted.") || name.starts_with(b"security.")
}

impl Fs {
    /// Acts for `caller` on attribute `name`. The agent (`-o idmap`) lacks the
    /// capabilities privileged names need; the kernel checked them for the caller, so
    /// the daemon uses its own. (Listing acts as the agent: `trusted.*` names are not
    /// listed through an idmap-enabled mount, even for root.)
    fn act_on_xattr(&self, caller: &Caller, name: &OsStr) -> io::Result<crate::creds::Acting> {
        if is_privileged_name(name) && self.creds.role(caller) == crate::creds::Role::Agent {
            self.creds.as_daemon()
        } else {
            self.creds.act_as(caller)
        }
    }

    pub fn getxattr(
        &self,
        id: NodeId,
        name: &OsStr,
        size: u32,
        caller: &Caller,
    ) -> io::Result<Xattr> {
        if is_stats_xattr(id, name) {
            return sized(self.snapshot().render().into_bytes(), size);
        }
        let fd = self.path_fd_of(id)?;
        self.check_as_seen(caller, id, &fd)?;
        let _as = self.act_on_xattr(caller, name)?;
        let name = sys::cstr(name)?;
        let path = sys::proc_fd_path(std::os::fd::AsFd::as_fd(&*fd));
        read_sized(size, |buf| sys::getxattr(&path, &name, buf))
    }

    pub fn listxattr(&self, id: NodeId, size: u32, caller: &Caller) -> io::Result<Xattr> {
        let fd = self.path_fd_of(id)?;
        self.check_as_seen(caller, id, &fd)?;
        let _as = self.creds.act_as(caller)?;
        let path = sys::proc_fd_path(std::os::fd::AsFd::as_fd(&*fd));
        read_sized(size, |buf| sys::listxattr(&path, buf))
    }

    pub fn setxattr(
        &self,
        id: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        kill_sgid: bool,
        caller: &Caller,
    ) -> io::Result<()> {
        if is_stats_xattr(id, name) {
            return Err(errno(libc::EPERM));
        }
        let fd = self.path_fd_of(id)?;
        self.check_as_seen(caller, id, &fd)?;
        let _as = self.act_on_xattr(caller, name)?;
        let path = sys::proc_fd_path(std::os::fd::AsFd::as_fd(&*fd));
        sys::setxattr(&path, &sys::cstr(name)?, value, flags)?;
        // The agent keeps set-gid (CAP_FSETID); the kernel, knowing the caller, said
        // whether a native ACL change would drop it.
        if kill_sgid && is_access_acl(name) && self.creds.role(caller) == crate::creds::Role::Agent
        {
            drop(_as);
            let _daemon = self.creds.as_daemon()?;
            let mode = sys::fstat(std::os::fd::AsFd::as_fd(&*fd))?.st_mode;
            if mode & libc::S_ISGID != 0 {
                sys::chmod(&path, mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        if is_access_acl(name) {
            self.note_changed(id, &fd);
        }
        Ok(())
    }

    /// Removes attribute `name` as the caller, except `security.capability`: the kernel
    /// removes it itself, with no right needed, when a file with capabilities is written
    /// (its killpriv step becomes this request), and a caller's own removal has already
    /// been checked by the kernel (CAP_SETFCAP), so the daemon removes it.
    pub fn removexattr(&self, id: NodeId, name: &OsStr, caller: &Caller) -> io::Result<()> {
        if is_stats_xattr(id, name) {
            return Err(errno(libc::EPERM));
        }
        let fd = self.path_fd_of(id)?;
        self.check_as_seen(caller, id, &fd)?;
        let _as = if name.as_bytes() == b"security.capability" {
            self.creds.as_daemon()?
        } else {
            self.act_on_xattr(caller, name)?
        };
        let path = sys::proc_fd_path(std::os::fd::AsFd::as_fd(&*fd));
        sys::removexattr(&path, &sys::cstr(name)?)?;
        if is_access_acl(name) {
            self.note_changed(id, &fd);
        }
        Ok(())
    }
}
