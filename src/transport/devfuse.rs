//! The `/dev/fuse` transport: threads that each read requests from their own clone of
//! the connection's device descriptor (`FUSE_DEV_IOC_CLONE`), serve them with the
//! [`Dispatcher`], and write the replies back.
//!
//! Every thread blocks in `read(2)` until the kernel has a request, so a long request (a
//! 1 GiB copy, an fsync) holds one thread while the others keep serving.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::Dispatcher;
use super::wire::{self, OUT_HEADER_LEN, Reply, Request, opcode};
use crate::sys;

/// Serves the connection of `session` on `threads` threads until it goes away (ENODEV:
/// unmounted); `buffer` bytes each, enough for the largest request (`max_write` of data
/// or a 64 KiB attribute value, plus headers).
pub fn serve(
    dispatcher: Arc<Dispatcher>,
    session: BorrowedFd<'_>,
    threads: usize,
    buffer: usize,
    setxattr_ext: bool,
) -> io::Result<()> {
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let fd = sys::clone_fuse_device(session)?;
        let dispatcher = dispatcher.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("fastfs-fuse-{i}"))
                .spawn(move || serve_thread(&fd, &dispatcher, buffer, setxattr_ext))?,
        );
    }
    let mut result = Ok(());
    for worker in workers {
        let outcome = worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a request thread panicked")));
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

fn serve_thread(
    fd: &OwnedFd,
    dispatcher: &Dispatcher,
    buffer: usize,
    setxattr_ext: bool,
) -> io::Result<()> {
    let mut buf = vec![0u8; buffer];
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
        let (unique, reply) = match wire::split_request(&buf[..n], setxattr_ext)
            .and_then(|(header, fixed, payload)| Request::decode(header, fixed, payload))
        {
            Ok(request) => (request.header.unique, dispatcher.handle(&request)),
            Err(err) => match wire::InHeader::decode(&buf[..n]) {
                Ok(header) => {
                    log::error!(
                        "request {} (opcode {}): {err}",
                        header.unique,
                        header.opcode
                    );
                    let needs_reply = !matches!(
                        header.opcode,
                        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
                    );
                    (
                        header.unique,
                        needs_reply.then_some(Reply::Error(libc::EIO)),
                    )
                }
                Err(_) => {
                    log::error!("undecodable request of {n} bytes: {err}");
                    continue;
                }
            },
        };
        let Some(reply) = reply else {
            continue;
        };
        body.clear();
        let mut header = [0u8; OUT_HEADER_LEN];
        let encoded = wire::encode_reply(unique, &reply, &mut header, &mut body);
        match sys::writev(fd.as_fd(), &[&header, encoded]) {
            Ok(_) => {}
            // The request was interrupted and is gone: take back what the reply gave.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => dispatcher.undelivered(&reply),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => log::error!("cannot reply to request {unique}: {e}"),
        }
    }
}
