//! The FUSE wire protocol as the kernel speaks it (`include/uapi/linux/fuse.h`, protocol
//! 7.40+): requests decoded from bytes, replies and notifications encoded to bytes.
//!
//! Both transports use it. A request arrives as three parts: the 40-byte `fuse_in_header`,
//! the operation's fixed-size argument struct, and a variable payload (names, write data,
//! extensions). On `/dev/fuse` they are one buffer, split by [`split_request`]; on the
//! io_uring transport the kernel writes them to three places. A reply is a 16-byte
//! `fuse_out_header` and a body.
//!
//! Every field is read with bounds checks from byte slices (no casts of raw memory), so
//! short, long or garbage input gives [`WireError`], never a panic or an out-of-bounds read.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// Request opcodes.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_getattr_in.getattr_flags`: the `fh` field is valid.
const GETATTR_FH: u32 = 1;
/// `fuse_fsync_in.fsync_flags`: only data.
const FSYNC_FDATASYNC: u32 = 1;
/// `fuse_release_in.release_flags`: unlock flock locks of the lock owner.
pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// `fuse_lk_in.lk_flags`: a BSD `flock` lock, not a POSIX record lock.
pub const LK_FLOCK: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: a write-back of dirty pages from the page cache (sent by
/// a kernel thread, the handle guessed).
pub const WRITE_CACHE: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: the kernel asks to drop set-id bits.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_open_in.open_flags` / `fuse_create_in.open_flags`: drop set-id bits (O_TRUNC).
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fuse_setxattr_in.setxattr_flags`: an access ACL is set by a caller outside the
/// file's group and without CAP_FSETID, so set-gid goes (as `posix_acl_update_mode`).
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// Request extension carrying the caller's supplementary group matching the parent.
const EXT_GROUPS: u32 = 32;
/// `fuse_notify_inval_entry_out.flags`: only mark the entry stale.
pub const EXPIRE_ONLY: u32 = 1 << 0;
/// Notification codes (the `error` field of a notification's out header).
pub const NOTIFY_INVAL_INODE: i32 = 2;
pub const NOTIFY_INVAL_ENTRY: i32 = 3;
pub const NOTIFY_PRUNE: i32 = 9;

/// `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// What is wrong with bytes that do not make a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than a field needs.
    Short,
    /// A name without its terminating NUL.
    Unterminated,
    /// A length field that contradicts the bytes there are.
    BadLength,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireError::Short => "request shorter than its fields",
            WireError::Unterminated => "name without a terminating NUL",
            WireError::BadLength => "request length does not match its contents",
        })
    }
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Bounds-checked reads from a byte slice, in native byte order (the kernel's).
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(WireError::Short);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_ne_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_ne_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_ne_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(drop)
    }

    /// A NUL-terminated name, without the NUL.
    fn name(&mut self) -> Result<&'a OsStr> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Unterminated)?;
        let name = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        Ok(OsStr::from_bytes(name))
    }
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Bytes of the whole request (header, fixed arguments and payload).
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the request extensions at the end of the payload, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let header = InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
            total_extlen: r.u16()?,
        };
        r.skip(2)?;
        Ok(header)
    }
}

/// Size of the fixed argument struct of `opcode` (the part before names and data).
/// `setxattr_ext` says whether FUSE_SETXATTR_EXT was negotiated (16-byte setxattr_in).
pub fn fixed_len(opcode: u32, setxattr_ext: bool) -> usize {
    use opcode::*;
    match opcode {
        FORGET | RENAME | LINK | GETXATTR | LISTXATTR | ACCESS | INTERRUPT | BATCH_FORGET
        | OPENDIR | OPEN | MKDIR | SYNCFS => 8,
        GETATTR | MKNOD | RENAME2 | FSYNC | FSYNCDIR | CREATE | TMPFILE | BMAP => 16,
        SETXATTR if setxattr_ext => 16,
        SETXATTR => 8,
        RELEASE | RELEASEDIR | FLUSH | LSEEK | POLL | STATX => 24,
        FALLOCATE | IOCTL => 32,
        READ | READDIR | READDIRPLUS | WRITE => 40,
        GETLK | SETLK | SETLKW => 48,
        COPY_FILE_RANGE => 56,
        SETATTR => 88,
        INIT => 64,
        _ => 0,
    }
}

/// Splits a request read from `/dev/fuse` into header, fixed arguments and payload.
pub fn split_request(buf: &[u8], setxattr_ext: bool) -> Result<(InHeader, &[u8], &[u8])> {
    let header = InHeader::decode(buf)?;
    let len = header.len as usize;
    if len < IN_HEADER_LEN || len > buf.len() {
        return Err(WireError::BadLength);
    }
    let body = &buf[IN_HEADER_LEN..len];
    let fixed = fixed_len(header.opcode, setxattr_ext).min(body.len());
    let (fixed, payload) = body.split_at(fixed);
    Ok((header, fixed, payload))
}

/// Bytes of the in/out header area and of the operation area of a FUSE-over-io_uring
/// entry's header buffer (`FUSE_URING_IN_OUT_HEADER_SZ`, `FUSE_URING_OP_IN_OUT_SZ`).
pub const RING_IN_OUT_LEN: usize = 128;
pub const RING_OP_IN_LEN: usize = 128;

/// Splits a request delivered into an io_uring entry: `in_out` holds `fuse_in_header`,
/// `op_in` the operation's fixed arguments (the kernel's first argument, whatever its
/// size), `payload` the rest (names, data, extensions), already cut to the length the
/// kernel reported. The header's `len` still counts all three, which tells how much of
/// `op_in` the kernel wrote (the rest holds stale bytes of an earlier request).
pub fn split_ring_request<'a>(
    in_out: &[u8],
    op_in: &'a [u8],
    payload: &'a [u8],
    setxattr_ext: bool,
) -> Result<(InHeader, &'a [u8], &'a [u8])> {
    let header = InHeader::decode(in_out)?;
    let written = (header.len as usize)
        .checked_sub(IN_HEADER_LEN + payload.len())
        .filter(|&n| n <= RING_OP_IN_LEN.min(op_in.len()))
        .ok_or(WireError::BadLength)?;
    let fixed = written.min(fixed_len(header.opcode, setxattr_ext));
    Ok((header, &op_in[..fixed], payload))
}

/// A POSIX or flock lock as FUSE describes it (`fuse_file_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLock {
    pub start: u64,
    /// Inclusive; `i64::MAX` (the kernel's OFFSET_MAX) for "to the end".
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: u32,
    pub pid: u32,
}

/// `fuse_setattr_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// An operation and its arguments; names and data borrow from the request buffers.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        /// `(nodeid, nlookup)` pairs.
        nodes: Vec<(u64, u64)>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        new_dir: u64,
        name: &'a OsStr,
        new_name: &'a OsStr,
        flags: u32,
    },
    Link {
        old_node: u64,
        new_name: &'a OsStr,
    },
    Open {
        flags: i32,
        open_flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release {
        fh: u64,
        flags: i32,
        release_flags: u32,
        lock_owner: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
        setxattr_flags: u32,
    },
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush {
        fh: u64,
        lock_owner: u64,
    },
    Opendir {
        flags: i32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir {
        fh: u64,
        datasync: bool,
    },
    Getlk {
        fh: u64,
        owner: u64,
        lock: FileLock,
        lk_flags: u32,
    },
    Setlk {
        fh: u64,
        owner: u64,
        lock: FileLock,
        lk_flags: u32,
        /// SETLKW: wait for the lock.
        sleep: bool,
    },
    Access {
        mask: u32,
    },
    Create {
        name: &'a OsStr,
        flags: i32,
        mode: u32,
        umask: u32,
        open_flags: u32,
    },
    Interrupt {
        unique: u64,
    },
    Ioctl {
        fh: u64,
        cmd: u32,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    CopyFileRange {
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        flags: u64,
    },
    Syncfs,
    Destroy,
    /// An operation fastfs does not implement (answered ENOSYS, which the kernel
    /// remembers per operation).
    Unknown(u32),
}

/// A request: its header, operation and extensions.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: InHeader,
    pub op: Op<'a>,
    /// A supplementary group of the caller, sent with creations when it is the parent
    /// directory's group (FUSE_CREATE_SUPP_GROUP).
    pub supplementary_group: Option<u32>,
}

impl<'a> Request<'a> {
    /// Decodes a request from its three parts.
    pub fn decode(header: InHeader, fixed: &'a [u8], payload: &'a [u8]) -> Result<Self> {
        let ext_len = usize::from(header.total_extlen) * 8;
        if ext_len > payload.len() {
            return Err(WireError::BadLength);
        }
        let (payload, extensions) = payload.split_at(payload.len() - ext_len);
        let op = decode_op(header.opcode, fixed, payload)?;
        Ok(Request {
            header,
            op,
            supplementary_group: supplementary_group(extensions)?,
        })
    }
}

/// The group of a FUSE_EXT_GROUPS extension, if there is one.
fn supplementary_group(mut extensions: &[u8]) -> Result<Option<u32>> {
    while !extensions.is_empty() {
        let mut r = Reader::new(extensions);
        let size = r.u32()? as usize;
        let kind = r.u32()?;
        if size < 8 || size > extensions.len() {
            return Err(WireError::BadLength);
        }
        if kind == EXT_GROUPS {
            let mut r = Reader::new(&extensions[8..size]);
            let count = r.u32()?;
            return if count >= 1 {
                Ok(Some(r.u32()?))
            } else {
                Ok(None)
            };
        }
        extensions = &extensions[size..];
    }
    Ok(None)
}

fn lock(r: &mut Reader<'_>) -> Result<FileLock> {
    Ok(FileLock {
        start: r.u64()?,
        end: r.u64()?,
        typ: r.u32()?,
        pid: r.u32()?,
    })
}

fn decode_op<'a>(opcode: u32, fixed: &'a [u8], payload: &'a [u8]) -> Result<Op<'a>> {
    use opcode::*;
    let mut f = Reader::new(fixed);
    let mut p = Reader::new(payload);
    Ok(match opcode {
        LOOKUP => Op::Lookup { name: p.name()? },
        FORGET => Op::Forget { nlookup: f.u64()? },
        BATCH_FORGET => {
            let count = f.u32()? as usize;
            if count > payload.len() / 16 {
                return Err(WireError::BadLength);
            }
            let nodes = (0..count)
                .map(|_| Ok((p.u64()?, p.u64()?)))
                .collect::<Result<_>>()?;
            Op::BatchForget { nodes }
        }
        GETATTR => {
            let flags = f.u32()?;
            f.skip(4)?;
            let fh = f.u64()?;
            Op::Getattr {
                fh: (flags & GETATTR_FH != 0).then_some(fh),
            }
        }
        SETATTR => {
            let valid = f.u32()?;
            f.skip(4)?;
            let (fh, size, lock_owner) = (f.u64()?, f.u64()?, f.u64()?);
            let (atime, mtime, ctime) = (f.u64()? as i64, f.u64()? as i64, f.u64()? as i64);
            let (atimensec, mtimensec, ctimensec) = (f.u32()?, f.u32()?, f.u32()?);
            let mode = f.u32()?;
            f.skip(4)?;
            let (uid, gid) = (f.u32()?, f.u32()?);
            Op::Setattr(SetattrIn {
                valid,
                fh,
                size,
                lock_owner,
                atime: (atime, atimensec),
                mtime: (mtime, mtimensec),
                ctime: (ctime, ctimensec),
                mode,
                uid,
                gid,
            })
        }
        READLINK => Op::Readlink,
        SYMLINK => Op::Symlink {
            name: p.name()?,
            target: p.name()?,
        },
        MKNOD => {
            let (mode, rdev, umask) = (f.u32()?, f.u32()?, f.u32()?);
            Op::Mknod {
                name: p.name()?,
                mode,
                rdev,
                umask,
            }
        }
        MKDIR => {
            let (mode, umask) = (f.u32()?, f.u32()?);
            Op::Mkdir {
                name: p.name()?,
                mode,
                umask,
            }
        }
        UNLINK => Op::Unlink { name: p.name()? },
        RMDIR => Op::Rmdir { name: p.name()? },
        RENAME | RENAME2 => {
            let new_dir = f.u64()?;
            let flags = if opcode == RENAME2 { f.u32()? } else { 0 };
            Op::Rename {
                new_dir,
                name: p.name()?,
                new_name: p.name()?,
                flags,
            }
        }
        LINK => Op::Link {
            old_node: f.u64()?,
            new_name: p.name()?,
        },
        OPEN => Op::Open {
            flags: f.u32()? as i32,
            open_flags: f.u32()?,
        },
        OPENDIR => Op::Opendir {
            flags: f.u32()? as i32,
        },
        READ | READDIR | READDIRPLUS => {
            let (fh, offset, size) = (f.u64()?, f.u64()?, f.u32()?);
            if opcode == READ {
                Op::Read { fh, offset, size }
            } else {
                Op::Readdir {
                    fh,
                    offset,
                    size,
                    plus: opcode == READDIRPLUS,
                }
            }
        }
        WRITE => {
            let (fh, offset, size, write_flags) = (f.u64()?, f.u64()?, f.u32()?, f.u32()?);
            Op::Write {
                fh,
                offset,
                write_flags,
                data: p.take(size as usize)?,
            }
        }
        STATFS => Op::Statfs,
        RELEASE | RELEASEDIR => {
            let (fh, flags, release_flags, lock_owner) =
                (f.u64()?, f.u32()? as i32, f.u32()?, f.u64()?);
            if opcode == RELEASE {
                Op::Release {
                    fh,
                    flags,
                    release_flags,
                    lock_owner,
                }
            } else {
                Op::Releasedir { fh }
            }
        }
        FSYNC | FSYNCDIR => {
            let (fh, fsync_flags) = (f.u64()?, f.u32()?);
            let datasync = fsync_flags & FSYNC_FDATASYNC != 0;
            if opcode == FSYNC {
                Op::Fsync { fh, datasync }
            } else {
                Op::Fsyncdir { fh, datasync }
            }
        }
        SETXATTR => {
            let (size, flags) = (f.u32()?, f.u32()? as i32);
            let setxattr_flags = if fixed.len() >= 16 { f.u32()? } else { 0 };
            Op::Setxattr {
                name: p.name()?,
                value: p.take(size as usize)?,
                flags,
                setxattr_flags,
            }
        }
        GETXATTR => {
            let size = f.u32()?;
            Op::Getxattr {
                name: p.name()?,
                size,
            }
        }
        LISTXATTR => Op::Listxattr { size: f.u32()? },
        REMOVEXATTR => Op::Removexattr { name: p.name()? },
        FLUSH => {
            let fh = f.u64()?;
            f.skip(8)?;
            Op::Flush {
                fh,
                lock_owner: f.u64()?,
            }
        }
        GETLK | SETLK | SETLKW => {
            let (fh, owner, lock, lk_flags) = (f.u64()?, f.u64()?, lock(&mut f)?, f.u32()?);
            if opcode == GETLK {
                Op::Getlk {
                    fh,
                    owner,
                    lock,
                    lk_flags,
                }
            } else {
                Op::Setlk {
                    fh,
                    owner,
                    lock,
                    lk_flags,
                    sleep: opcode == SETLKW,
                }
            }
        }
        ACCESS => Op::Access { mask: f.u32()? },
        CREATE => {
            let (flags, mode, umask, open_flags) = (f.u32()? as i32, f.u32()?, f.u32()?, f.u32()?);
            Op::Create {
                name: p.name()?,
                flags,
                mode,
                umask,
                open_flags,
            }
        }
        INTERRUPT => Op::Interrupt { unique: f.u64()? },
        IOCTL => {
            let fh = f.u64()?;
            f.skip(4)?;
            Op::Ioctl { fh, cmd: f.u32()? }
        }
        FALLOCATE => {
            let (fh, offset, length, mode) = (f.u64()?, f.u64()?, f.u64()?, f.u32()?);
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            }
        }
        LSEEK => {
            let (fh, offset, whence) = (f.u64()?, f.u64()?, f.u32()?);
            Op::Lseek { fh, offset, whence }
        }
        COPY_FILE_RANGE => {
            let (fh_in, offset_in) = (f.u64()?, f.u64()?);
            f.skip(8)?; // nodeid_out: the handle says it all
            let (fh_out, offset_out, len, flags) = (f.u64()?, f.u64()?, f.u64()?, f.u64()?);
            Op::CopyFileRange {
                fh_in,
                offset_in,
                fh_out,
                offset_out,
                len,
                flags,
            }
        }
        SYNCFS => Op::Syncfs,
        DESTROY => Op::Destroy,
        other => Op::Unknown(other),
    })
}

/// `fuse_attr`: attributes the kernel caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// The inode number `stat` reports (not the node id).
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    /// The attributes of a backing `stat`, its inode number included.
    pub fn of(st: &libc::stat) -> Self {
        Attr {
            ino: st.st_ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: linux_encode_dev(st.st_rdev),
            blksize: st.st_blksize as u32,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.ino, self.size, self.blocks] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for (sec, _) in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&sec.to_ne_bytes());
        }
        for (_, nsec) in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&nsec.to_ne_bytes());
        }
        for v in [
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.rdev,
            self.blksize,
            0, // flags
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

/// A `dev_t` in the kernel's 32-bit `new_encode_dev` form, which FUSE carries.
fn linux_encode_dev(dev: libc::dev_t) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// `fuse_entry_out`: a node handed to the kernel with its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryOut {
    /// 0 for a negative entry (the name does not exist) or, in READDIRPLUS, an entry
    /// without attributes.
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: Duration,
    pub attr_valid: Duration,
    pub attr: Attr,
}

impl EntryOut {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nodeid.to_ne_bytes());
        out.extend_from_slice(&self.generation.to_ne_bytes());
        out.extend_from_slice(&self.entry_valid.as_secs().to_ne_bytes());
        out.extend_from_slice(&self.attr_valid.as_secs().to_ne_bytes());
        out.extend_from_slice(&self.entry_valid.subsec_nanos().to_ne_bytes());
        out.extend_from_slice(&self.attr_valid.subsec_nanos().to_ne_bytes());
        self.attr.encode(out);
    }
}

/// `fuse_open_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: u32,
}

impl OpenOut {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fh.to_ne_bytes());
        out.extend_from_slice(&self.open_flags.to_ne_bytes());
        out.extend_from_slice(&self.backing_id.to_ne_bytes());
    }
}

/// `fuse_kstatfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The body of a reply (the out header is added by [`encode_reply`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success without a body.
    Empty,
    /// Failure with a positive errno.
    Error(i32),
    Entry(EntryOut),
    Attr {
        valid: Duration,
        attr: Attr,
    },
    Open(OpenOut),
    Create(EntryOut, OpenOut),
    Written(u32),
    Statfs(StatfsOut),
    /// Read data, a symlink target, an attribute value or list, an encoded directory.
    Data(Vec<u8>),
    /// `fuse_getxattr_out`: the size of a value or list, when asked with size 0.
    XattrSize(u32),
    Lseek(u64),
    Lock(FileLock),
}

/// Encodes `reply` to request `unique`: the out header into `header`, the body appended
/// to `body` (which the caller clears), or found in the reply itself. Returns the body.
pub fn encode_reply<'a>(
    unique: u64,
    reply: &'a Reply,
    header: &mut [u8; OUT_HEADER_LEN],
    body: &'a mut Vec<u8>,
) -> &'a [u8] {
    let error = match reply {
        Reply::Error(errno) => -errno,
        _ => 0,
    };
    match reply {
        Reply::Empty | Reply::Error(_) => {}
        Reply::Entry(entry) => entry.encode(body),
        Reply::Attr { valid, attr } => {
            body.extend_from_slice(&valid.as_secs().to_ne_bytes());
            body.extend_from_slice(&valid.subsec_nanos().to_ne_bytes());
            body.extend_from_slice(&0u32.to_ne_bytes());
            attr.encode(body);
        }
        Reply::Open(open) => open.encode(body),
        Reply::Create(entry, open) => {
            entry.encode(body);
            open.encode(body);
        }
        Reply::Written(n) | Reply::XattrSize(n) => {
            body.extend_from_slice(&n.to_ne_bytes());
            body.extend_from_slice(&0u32.to_ne_bytes());
        }
        Reply::Statfs(s) => {
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                body.extend_from_slice(&v.to_ne_bytes());
            }
            for v in [s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0] {
                body.extend_from_slice(&v.to_ne_bytes());
            }
        }
        Reply::Lseek(offset) => body.extend_from_slice(&offset.to_ne_bytes()),
        Reply::Lock(lk) => {
            body.extend_from_slice(&lk.start.to_ne_bytes());
            body.extend_from_slice(&lk.end.to_ne_bytes());
            body.extend_from_slice(&lk.typ.to_ne_bytes());
            body.extend_from_slice(&lk.pid.to_ne_bytes());
        }
        Reply::Data(_) => {}
    }
    let body: &[u8] = match reply {
        Reply::Data(data) => data,
        _ => body,
    };
    let len = (OUT_HEADER_LEN + body.len()) as u32;
    header[0..4].copy_from_slice(&len.to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    body
}

/// Encodes a notification: `code` in the header's error field, unique 0.
pub fn encode_notification(code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OUT_HEADER_LEN + body.len());
    out.extend_from_slice(&((OUT_HEADER_LEN + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&code.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

/// `FUSE_NOTIFY_INVAL_INODE` of `node`'s attributes only (offset -1: no page is dropped).
pub fn inval_attributes(node: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&node.to_ne_bytes());
    body.extend_from_slice(&(-1i64).to_ne_bytes());
    body.extend_from_slice(&0i64.to_ne_bytes());
    encode_notification(NOTIFY_INVAL_INODE, &body)
}

/// `FUSE_NOTIFY_INVAL_ENTRY` for `name` in `parent`; with `expire_only` the kernel only
/// marks the entry stale (it is looked up again at next use, and nothing is detached).
pub fn inval_entry(parent: u64, name: &OsStr, expire_only: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + name.len() + 1);
    body.extend_from_slice(&parent.to_ne_bytes());
    body.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    body.extend_from_slice(&(if expire_only { EXPIRE_ONLY } else { 0 }).to_ne_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    encode_notification(NOTIFY_INVAL_ENTRY, &body)
}

/// `FUSE_NOTIFY_PRUNE` (protocol 7.45): asks the kernel to drop the dentries of `nodes`
/// that nothing uses (no open file, working directory or mount holds them), so that it
/// sends FORGET for their inodes. Dentries in use are left alone.
pub fn prune(nodes: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + 8 * nodes.len());
    body.extend_from_slice(&(nodes.len() as u32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u64.to_ne_bytes());
    for node in nodes {
        body.extend_from_slice(&node.to_ne_bytes());
    }
    encode_notification(NOTIFY_PRUNE, &body)
}

/// Bytes of a `fuse_dirent` header and of a `fuse_direntplus` header.
const DIRENT_LEN: usize = 24;
const DIRENTPLUS_LEN: usize = 128 + DIRENT_LEN;

/// A READDIR or READDIRPLUS reply being filled, at most `limit` bytes.
pub struct DirentBuf {
    bytes: Vec<u8>,
    limit: usize,
}

impl DirentBuf {
    pub fn new(limit: u32) -> Self {
        DirentBuf {
            bytes: Vec::with_capacity(limit as usize),
            limit: limit as usize,
        }
    }

    /// Adds a `fuse_dirent`; `false` (nothing added) when it does not fit.
    pub fn push(&mut self, ino: u64, next_offset: u64, kind: u32, name: &[u8]) -> bool {
        self.push_inner(None, ino, next_offset, kind, name)
    }

    /// Adds a `fuse_direntplus`; `false` (nothing added) when it does not fit.
    pub fn push_plus(
        &mut self,
        entry: &EntryOut,
        ino: u64,
        next_offset: u64,
        kind: u32,
        name: &[u8],
    ) -> bool {
        self.push_inner(Some(entry), ino, next_offset, kind, name)
    }

    fn push_inner(
        &mut self,
        entry: Option<&EntryOut>,
        ino: u64,
        next_offset: u64,
        kind: u32,
        name: &[u8],
    ) -> bool {
        let header = if entry.is_some() {
            DIRENTPLUS_LEN
        } else {
            DIRENT_LEN
        };
        let len = (header + name.len()).next_multiple_of(8);
        if self.bytes.len() + len > self.limit {
            return false;
        }
        if let Some(entry) = entry {
            entry.encode(&mut self.bytes);
        }
        self.bytes.extend_from_slice(&ino.to_ne_bytes());
        self.bytes.extend_from_slice(&next_offset.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(name.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(name);
        self.bytes
            .resize(self.bytes.len() + len - header - name.len(), 0);
        true
    }

    pub fn into_reply(self) -> Reply {
        Reply::Data(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_bytes(opcode: u32, len: u32, total_extlen: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&opcode.to_ne_bytes());
        h.extend_from_slice(&7u64.to_ne_bytes()); // unique
        h.extend_from_slice(&1u64.to_ne_bytes()); // nodeid
        h.extend_from_slice(&1000u32.to_ne_bytes());
        h.extend_from_slice(&100u32.to_ne_bytes());
        h.extend_from_slice(&42u32.to_ne_bytes());
        h.extend_from_slice(&total_extlen.to_ne_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    }

    fn request(opcode: u32, fixed: &[u8], payload: &[u8]) -> Vec<u8> {
        let len = (IN_HEADER_LEN + fixed.len() + payload.len()) as u32;
        let mut buf = header_bytes(opcode, len, 0);
        buf.extend_from_slice(fixed);
        buf.extend_from_slice(payload);
        buf
    }

    fn decode(buf: &[u8]) -> Result<Request<'_>> {
        let (h, fixed, payload) = split_request(buf, true)?;
        Request::decode(h, fixed, payload)
    }

    #[test]
    fn ring_requests_use_only_what_the_kernel_wrote_of_the_operation_area() {
        // LOOKUP has no fixed arguments: stale bytes in the operation area are ignored.
        let payload = b"name\0";
        let in_out = header_bytes(opcode::LOOKUP, (IN_HEADER_LEN + payload.len()) as u32, 0);
        let stale = [0xffu8; RING_OP_IN_LEN];
        let (h, fixed, rest) = split_ring_request(&in_out, &stale, payload, true).unwrap();
        assert!(fixed.is_empty());
        let req = Request::decode(h, fixed, rest).unwrap();
        assert_eq!(
            req.op,
            Op::Lookup {
                name: OsStr::new("name")
            }
        );
        // MKDIR: fuse_mkdir_in (mode, umask) in the operation area, the name in the payload.
        let mut op_in = stale;
        op_in[..4].copy_from_slice(&0o755u32.to_ne_bytes());
        op_in[4..8].copy_from_slice(&0o022u32.to_ne_bytes());
        let in_out = header_bytes(opcode::MKDIR, (IN_HEADER_LEN + 8 + payload.len()) as u32, 0);
        let (h, fixed, rest) = split_ring_request(&in_out, &op_in, payload, true).unwrap();
        let req = Request::decode(h, fixed, rest).unwrap();
        assert_eq!(
            req.op,
            Op::Mkdir {
                name: OsStr::new("name"),
                mode: 0o755,
                umask: 0o022
            }
        );
        // A length that cannot hold the payload, or claims more than the area, is refused.
        let short = header_bytes(opcode::LOOKUP, IN_HEADER_LEN as u32, 0);
        assert!(split_ring_request(&short, &stale, payload, true).is_err());
        let long = header_bytes(
            opcode::LOOKUP,
            (IN_HEADER_LEN + 129 + payload.len()) as u32,
            0,
        );
        assert!(split_ring_request(&long, &stale, payload, true).is_err());
    }

    #[test]
    fn lookup_rename_and_write_decode_their_arguments() {
        let buf = request(opcode::LOOKUP, &[], b"name\0");
        let req = decode(&buf).unwrap();
        assert_eq!(req.header.uid, 1000);
        assert_eq!(req.header.pid, 42);
        assert_eq!(
            req.op,
            Op::Lookup {
                name: "name".as_ref()
            }
        );

        let mut fixed = 9u64.to_ne_bytes().to_vec();
        fixed.extend_from_slice(&1u32.to_ne_bytes());
        fixed.extend_from_slice(&0u32.to_ne_bytes());
        let buf = request(opcode::RENAME2, &fixed, b"a\0b\0");
        assert_eq!(
            decode(&buf).unwrap().op,
            Op::Rename {
                new_dir: 9,
                name: "a".as_ref(),
                new_name: "b".as_ref(),
                flags: 1
            }
        );

        let mut fixed = Vec::new();
        for v in [3u64, 4096] {
            fixed.extend_from_slice(&v.to_ne_bytes());
        }
        fixed.extend_from_slice(&5u32.to_ne_bytes());
        fixed.extend_from_slice(&WRITE_KILL_SUIDGID.to_ne_bytes());
        fixed.resize(40, 0);
        let buf = request(opcode::WRITE, &fixed, b"hello");
        assert_eq!(
            decode(&buf).unwrap().op,
            Op::Write {
                fh: 3,
                offset: 4096,
                write_flags: WRITE_KILL_SUIDGID,
                data: b"hello"
            }
        );
        // A write that claims more data than there is.
        let buf = request(opcode::WRITE, &fixed, b"hell");
        assert_eq!(decode(&buf), Err(WireError::Short));
    }

    #[test]
    fn setattr_keeps_negative_times_and_the_kill_flag() {
        let mut fixed = Vec::new();
        fixed.extend_from_slice(&(fattr::MTIME | fattr::KILL_SUIDGID).to_ne_bytes());
        fixed.extend_from_slice(&[0; 4]);
        for v in [0u64, 0, 0, 0, (-2i64) as u64, 0] {
            fixed.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [0u32, 250_000_000, 0, 0, 0, 0, 0, 0] {
            fixed.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(fixed.len(), 88);
        let buf = request(opcode::SETATTR, &fixed, &[]);
        let Op::Setattr(s) = decode(&buf).unwrap().op else {
            panic!("not a setattr");
        };
        assert_eq!(s.valid, fattr::MTIME | fattr::KILL_SUIDGID);
        assert_eq!(s.mtime, (-2, 250_000_000));
    }

    #[test]
    fn the_supplementary_group_extension_is_found_after_the_name() {
        let mut fixed = Vec::new();
        for v in [libc::O_RDWR as u32, 0o644, 0o022, 0] {
            fixed.extend_from_slice(&v.to_ne_bytes());
        }
        let mut payload = b"new\0".to_vec();
        let mut ext = Vec::new();
        ext.extend_from_slice(&16u32.to_ne_bytes()); // size
        ext.extend_from_slice(&EXT_GROUPS.to_ne_bytes());
        ext.extend_from_slice(&1u32.to_ne_bytes()); // nr_groups
        ext.extend_from_slice(&4242u32.to_ne_bytes());
        payload.extend_from_slice(&ext);
        let len = (IN_HEADER_LEN + fixed.len() + payload.len()) as u32;
        let mut buf = header_bytes(opcode::CREATE, len, 2);
        buf.extend_from_slice(&fixed);
        buf.extend_from_slice(&payload);
        let req = decode(&buf).unwrap();
        assert_eq!(req.supplementary_group, Some(4242));
        assert!(
            matches!(req.op, Op::Create { name, mode: 0o644, umask: 0o022, .. } if name == "new")
        );
    }

    #[test]
    fn replies_carry_length_error_and_unique() {
        let mut header = [0u8; OUT_HEADER_LEN];
        let mut body = Vec::new();
        let out = encode_reply(9, &Reply::Error(libc::ENOENT), &mut header, &mut body);
        assert!(out.is_empty());
        assert_eq!(u32::from_ne_bytes(header[0..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_ne_bytes(header[4..8].try_into().unwrap()),
            -libc::ENOENT
        );
        assert_eq!(u64::from_ne_bytes(header[8..16].try_into().unwrap()), 9);
        // Fixed-size bodies are exactly the kernel's struct sizes (the io_uring
        // transport rejects any other size).
        let entry = EntryOut {
            nodeid: 5,
            generation: 1,
            entry_valid: Duration::from_secs(1),
            attr_valid: Duration::from_secs(1),
            attr: Attr::default(),
        };
        let open = OpenOut {
            fh: 1,
            open_flags: 0,
            backing_id: 0,
        };
        let sizes = [
            (Reply::Entry(entry), 128),
            (Reply::Create(entry, open), 144),
            (
                Reply::Attr {
                    valid: Duration::ZERO,
                    attr: Attr::default(),
                },
                104,
            ),
            (Reply::Open(open), 16),
            (Reply::Written(3), 8),
            (
                Reply::Statfs(StatfsOut {
                    blocks: 0,
                    bfree: 0,
                    bavail: 0,
                    files: 0,
                    ffree: 0,
                    bsize: 0,
                    namelen: 0,
                    frsize: 0,
                }),
                80,
            ),
            (Reply::Lseek(1), 8),
            (
                Reply::Lock(FileLock {
                    start: 0,
                    end: 0,
                    typ: 0,
                    pid: 0,
                }),
                24,
            ),
        ];
        for (reply, size) in sizes {
            let mut body = Vec::new();
            assert_eq!(
                encode_reply(1, &reply, &mut header, &mut body).len(),
                size,
                "{reply:?}"
            );
            assert_eq!(
                u32::from_ne_bytes(header[0..4].try_into().unwrap()) as usize,
                16 + size
            );
        }
    }

    #[test]
    fn dirents_are_padded_to_8_bytes_and_stop_at_the_limit() {
        let mut buf = DirentBuf::new(72);
        assert!(buf.push(7, 1, libc::DT_REG as u32, b"a"));
        assert!(buf.push(8, 2, libc::DT_DIR as u32, b"bcdefghij"));
        assert!(!buf.push(9, 3, libc::DT_REG as u32, b"c"));
        let Reply::Data(bytes) = buf.into_reply() else {
            panic!()
        };
        assert_eq!(bytes.len(), 32 + 40);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((h, fixed, payload)) = split_request(&bytes, true) {
                let _ = Request::decode(h, fixed, payload);
            }
        }

        #[test]
        fn any_opcode_with_arbitrary_arguments_decodes_without_panic(
            opcode in 0u32..64,
            extlen in 0u16..4,
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let len = (IN_HEADER_LEN + body.len()) as u32;
            let mut buf = header_bytes(opcode, len, extlen);
            buf.extend_from_slice(&body);
            if let Ok((h, fixed, payload)) = split_request(&buf, true) {
                let _ = Request::decode(h, fixed, payload);
            }
            // The io_uring transport hands the parts over separately, of any size.
            let h = InHeader::decode(&buf).unwrap();
            let cut = body.len() / 2;
            let _ = Request::decode(h, &body[..cut], &body[cut..]);
        }

        #[test]
        fn arbitrary_ring_buffers_decode_without_panic(
            in_out in proptest::collection::vec(any::<u8>(), 0..160),
            op_in in proptest::collection::vec(any::<u8>(), 0..160),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok((h, fixed, payload)) = split_ring_request(&in_out, &op_in, &payload, true) {
                prop_assert!(fixed.len() <= RING_OP_IN_LEN);
                let _ = Request::decode(h, fixed, payload);
            }
        }

        #[test]
        fn ring_requests_of_any_opcode_decode_without_panic(
            opcode in 0u32..64,
            extlen in 0u16..4,
            op_len in 0usize..=128,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let len = (IN_HEADER_LEN + op_len + payload.len()) as u32;
            let in_out = header_bytes(opcode, len, extlen);
            let op_in = vec![0x5a; RING_OP_IN_LEN];
            let (h, fixed, rest) = split_ring_request(&in_out, &op_in, &payload, false).unwrap();
            prop_assert_eq!(fixed.len(), op_len.min(fixed_len(opcode, false)));
            prop_assert_eq!(rest.len(), payload.len());
            let _ = Request::decode(h, fixed, rest);
        }

        #[test]
        fn lookups_of_any_name_round_trip(name in proptest::collection::vec(1u8..=255, 1..255)) {
            let mut payload = name.clone();
            payload.push(0);
            let buf = request(opcode::LOOKUP, &[], &payload);
            let req = decode(&buf).unwrap();
            prop_assert_eq!(req.op, Op::Lookup { name: OsStr::from_bytes(&name) });
        }

        #[test]
        fn a_length_field_beyond_the_buffer_is_refused(extra in 1u32..1000, cut in 0usize..40) {
            let buf = request(opcode::LOOKUP, &[], b"x\0");
            let mut lying = buf.clone();
            lying[0..4].copy_from_slice(&(buf.len() as u32 + extra).to_ne_bytes());
            prop_assert_eq!(decode(&lying).err(), Some(WireError::BadLength));
            prop_assert!(decode(&buf[..cut]).is_err());
        }
    }
}
