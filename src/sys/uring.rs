//! Safe wrapper for one FUSE-over-io_uring entry: an io_uring of its own (128-byte
//! submission entries) with one registered entry of a kernel FUSE queue.
//!
//! The kernel ABI (`include/uapi/linux/fuse.h`): `IORING_OP_URING_CMD` on the
//! `/dev/fuse` descriptor, command `FUSE_IO_URING_CMD_REGISTER` (1) or
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (2), with `struct fuse_uring_cmd_req` (flags,
//! commit_id, qid) in the 80-byte command area. REGISTER hands the kernel two buffers
//! (an iovec pair, `len` = 2): a 288-byte header (`fuse_in_header`/`fuse_out_header` at
//! 0, the operation's fixed arguments at 128, `fuse_uring_ent_in_out` at 256) and a
//! payload. A completion with result 0 means a request was written to both; the reply is
//! written to the same buffers and committed, which also fetches the next request.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Bytes of `struct fuse_uring_req_header`.
pub const HEADER_LEN: usize = 288;
/// Where the operation's fixed arguments are in the header buffer.
const OP_IN_AT: usize = 128;
/// Where `fuse_uring_ent_in_out` is, and its `commit_id` and `payload_sz` fields.
const RING_ENT_AT: usize = 256;
const COMMIT_ID_AT: usize = RING_ENT_AT + 8;
const PAYLOAD_SZ_AT: usize = RING_ENT_AT + 16;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// The iovec pair REGISTER hands the kernel, naming an entry's two buffers.
struct Iovecs(&'static [libc::iovec; 2]);

// SAFETY: the iovecs are written once, before the entry exists, and only read after
// (by the kernel at REGISTER); the pointers in them are never dereferenced by fastfs.
unsafe impl Send for Iovecs {}
// SAFETY: as above: shared access never writes.
unsafe impl Sync for Iovecs {}

/// One entry of kernel FUSE queue `qid`, with its own io_uring.
pub struct RingEntry {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: Arc<OwnedFd>,
    qid: u16,
    /// The buffers the kernel writes requests into and reads replies from. They are
    /// never freed: the kernel may still hold them while the ring is being torn down
    /// (its cancellation runs asynchronously), so they live as long as the process.
    header: &'static mut [u8],
    payload: &'static mut [u8],
    iov: Iovecs,
    /// The command submitted last, for [`Self::resubmit`].
    last: Option<squeue::Entry128>,
}

impl RingEntry {
    /// A ring for one entry of queue `qid` on the connection of `dev`, with a payload
    /// buffer of `payload_len` bytes (at least the connection's `max_write`).
    pub fn new(dev: Arc<OwnedFd>, qid: u16, payload_len: usize) -> io::Result<Self> {
        // Plain flags: SINGLE_ISSUER/DEFER_TASKRUN and COOP_TASKRUN measured no faster
        // here (GETATTR round trip 9-11 µs either way), and a registered ring fd neither.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
        let header: &'static mut [u8] = Box::leak(vec![0u8; HEADER_LEN].into_boxed_slice());
        let payload: &'static mut [u8] = Box::leak(vec![0u8; payload_len].into_boxed_slice());
        let iov = Iovecs(Box::leak(Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ])));
        Ok(RingEntry {
            ring,
            dev,
            qid,
            header,
            payload,
            iov,
            last: None,
        })
    }

    fn command(&self, op: u32, commit_id: u64, with_buffers: bool) -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 pad[6]; }
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut builder = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), op).cmd(cmd);
        if with_buffers {
            builder = builder.addr(Some(self.iov.0.as_ptr() as u64));
        }
        let mut entry = builder.build();
        if with_buffers {
            // The builder has no setter for the SQE's `len` (byte 24 of the 128-byte
            // entry): REGISTER needs 2, the number of iovecs.
            // SAFETY: Entry128 is #[repr(C)] (a 64-byte io_uring_sqe, then 64 bytes of
            // command), so bytes 24..28 are the sqe's u32 `len`; the write stays inside.
            unsafe {
                let sqe = (&mut entry as *mut squeue::Entry128).cast::<u8>();
                sqe.add(24).cast::<u32>().write_unaligned(2);
            }
        }
        entry.user_data(u64::from(self.qid))
    }

    fn push(&mut self, entry: squeue::Entry128) -> io::Result<()> {
        // SAFETY: the entry points at `iov` and the buffers it names, all 'static, and at
        // nothing else; the ring has room (one command in flight at a time, 2 slots).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.last = Some(entry);
        Ok(())
    }

    /// Submits the last command again (after the kernel answered it with -EAGAIN or
    /// -EINTR, which leave everything as it was) and waits as [`Self::register`] does.
    pub fn resubmit(&mut self) -> io::Result<i32> {
        let entry = self
            .last
            .clone()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.push(entry)?;
        self.complete()
    }

    /// Waits for the entry's completion: 0 when a request was delivered, else the
    /// negative errno the kernel completed the command with (-ENOTCONN or
    /// -ECONNABORTED once the connection is gone, -EAGAIN before INIT was answered).
    fn complete(&mut self) -> io::Result<i32> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = self.ring.completion().next() {
                return Ok(cqe.result());
            }
        }
    }

    /// Registers the entry and waits for its first request: `Ok(0)` when one was
    /// delivered, `Ok(-errno)` when the kernel refused or ended the command, `Err` when
    /// the ring itself failed.
    pub fn register(&mut self) -> io::Result<i32> {
        let entry = self.command(CMD_REGISTER, 0, true);
        self.push(entry)?;
        self.complete()
    }

    /// The delivered request: the in/out header area, the operation area, and the
    /// payload as long as the kernel says it wrote (never beyond the buffer).
    pub fn request(&self) -> RingRequest<'_> {
        let payload_len = u32::from_ne_bytes(
            self.header[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        RingRequest {
            in_out: &self.header[..OP_IN_AT],
            op_in: &self.header[OP_IN_AT..RING_ENT_AT],
            payload: &self.payload[..payload_len.min(self.payload.len())],
        }
    }

    /// Commits the reply (`out_header`, then `body` into the payload) to the request
    /// delivered last and waits for the next, in one system call (see
    /// [`Self::register`] for the result). A body longer than the payload buffer is
    /// EINVAL, and nothing is committed.
    pub fn commit_and_fetch(&mut self, out_header: &[u8], body: &[u8]) -> io::Result<i32> {
        if body.len() > self.payload.len() || out_header.len() > OP_IN_AT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let commit_id = u64::from_ne_bytes(
            self.header[COMMIT_ID_AT..COMMIT_ID_AT + 8]
                .try_into()
                .expect("8 bytes"),
        );
        self.header[..out_header.len()].copy_from_slice(out_header);
        self.payload[..body.len()].copy_from_slice(body);
        self.header[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4]
            .copy_from_slice(&(body.len() as u32).to_ne_bytes());
        let entry = self.command(CMD_COMMIT_AND_FETCH, commit_id, false);
        self.push(entry)?;
        self.complete()
    }
}

/// The parts of a request delivered into a [`RingEntry`].
pub struct RingRequest<'a> {
    /// `fuse_in_header` and unused bytes (128).
    pub in_out: &'a [u8],
    /// The operation's fixed arguments and, after them, stale bytes (128).
    pub op_in: &'a [u8],
    /// Names, data and request extensions.
    pub payload: &'a [u8],
}
