//! The `/dev/fuse` transport: threads that each read requests from their own clone of
//! the connection's device descriptor (`FUSE_DEV_IOC_CLONE`), serve them with the
//! [`Dispatcher`], and write the replies back.
//!
//! Every thread blocks in `read(2)` until the kernel has a request, so a long request (a
//! 1 GiB copy, an fsync) holds one thread while the others keep serving. When every
//! thread is busy (a request blocked for long: a lease being broken, a slow network
//! backing), one more is started, up to [`MAX_THREADS`]: no user's blocked requests stall
//! everyone else's.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::Dispatcher;
use super::wire::{self, OUT_HEADER_LEN};
use crate::sys;

/// The most request threads a connection gets, however many requests block.
pub const MAX_THREADS: usize = 64;

/// The request threads of one connection.
struct Pool {
    dispatcher: Arc<Dispatcher>,
    session: OwnedFd,
    buffer: usize,
    setxattr_ext: bool,
    /// Threads started, and threads serving a request right now.
    threads: AtomicUsize,
    busy: AtomicUsize,
    started: Mutex<Vec<JoinHandle<io::Result<()>>>>,
}

/// Serves the connection of `session` on `threads` threads (more while all are busy)
/// until it goes away (ENODEV: unmounted); `buffer` bytes each, enough for the largest
/// request (`max_write` of data or a 64 KiB attribute value, plus headers).
pub fn serve(
    dispatcher: Arc<Dispatcher>,
    session: &OwnedFd,
    threads: usize,
    buffer: usize,
    setxattr_ext: bool,
) -> io::Result<()> {
    let pool = Arc::new(Pool {
        dispatcher,
        session: session.try_clone()?,
        buffer,
        setxattr_ext,
        threads: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        started: Mutex::new(Vec::new()),
    });
    for _ in 0..threads {
        pool.start_thread()?;
    }
    let mut result = Ok(());
    // Threads started while others are joined are joined too. (The lock must not be held
    // while joining: a thread starting another takes it.)
    loop {
        let next = pool.started.lock().pop();
        let Some(thread) = next else {
            break;
        };
        let outcome = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a request thread panicked")));
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

impl Pool {
    fn start_thread(self: &Arc<Self>) -> io::Result<()> {
        let fd = sys::clone_fuse_device(self.session.as_fd())?;
        let i = self.threads.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fastfs-fuse-{i}"))
            .spawn(move || pool.serve_thread(&fd))?;
        self.started.lock().push(thread);
        Ok(())
    }

    /// Starts one more thread if every thread is busy (and the pool may grow). The
    /// thread is started with the daemon's rights: opening `/dev/fuse` needs them, and a
    /// thread begins with the credentials of the one that starts it.
    fn grow_if_all_busy(self: &Arc<Self>, busy: usize) {
        let threads = self.threads.load(Ordering::Relaxed);
        if busy >= threads
            && threads < MAX_THREADS
            && let Err(e) = self
                .dispatcher
                .fs
                .with_daemon_rights(|| self.start_thread())
        {
            log::warn!("cannot start another request thread: {e}");
        }
    }

    fn serve_thread(self: &Arc<Self>, fd: &OwnedFd) -> io::Result<()> {
        let mut buf = vec![0u8; self.buffer];
        let mut body = Vec::with_capacity(4096);
        loop {
            let n = match sys::read(fd.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    // ENOENT: the request was interrupted before it could be read.
                    Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                    // The mount is gone.
                    Some(libc::ENODEV) => return Ok(()),
                    _ => return Err(e),
                },
            };
            let busy = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
            self.grow_if_all_busy(busy);
            let done = self.serve_request(fd, &buf[..n], &mut body);
            self.busy.fetch_sub(1, Ordering::Relaxed);
            if done {
                return Ok(());
            }
        }
    }

    /// Serves one request read from `fd`; `true` once the connection is gone.
    fn serve_request(&self, fd: &OwnedFd, request: &[u8], body: &mut Vec<u8>) -> bool {
        self.dispatcher
            .fs
            .stats
            .count(&self.dispatcher.fs.stats.dev_fuse_requests, 1);
        let parts = wire::split_request(request, self.setxattr_ext);
        let Some((unique, reply)) = self.dispatcher.serve(parts, request) else {
            return false;
        };
        let Some(reply) = reply else {
            return false;
        };
        body.clear();
        let mut header = [0u8; OUT_HEADER_LEN];
        let encoded = wire::encode_reply(unique, &reply, &mut header, body);
        match sys::writev(fd.as_fd(), &[&header, encoded]) {
            Ok(_) => false,
            // The request was interrupted and is gone: take back what the reply gave.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.dispatcher.undelivered(&reply);
                false
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => true,
            Err(e) => {
                log::error!("cannot reply to request {unique}: {e}");
                false
            }
        }
    }
}
