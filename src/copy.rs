//! The copy engine behind FUSE `COPY_FILE_RANGE`.
//!
//! A copy is first offered to `copy_file_range(2)` on the backing descriptors, so the
//! backing filesystem can reflink (XFS, btrfs), copy in the kernel (ext4) or copy on the
//! server (NFS). Where it cannot (descriptors on two filesystems, or a filesystem without
//! support), the daemon copies through a large buffer. Either way explicit offsets are
//! used (no shared file position is touched) and short counts are returned as they are:
//! the caller's `copy_file_range` loop asks again for the rest.

use std::cell::RefCell;
use std::io;
use std::os::fd::BorrowedFd;

use crate::stats::Stats;
use crate::sys;

/// The most one request may copy: the FUSE reply carries a `u32`.
pub const MAX_COPY_PER_REQUEST: u64 = u32::MAX as u64;

/// The most the buffered fallback copies for one request before returning a short count,
/// so one request never holds a thread for minutes.
const MAX_FALLBACK_PER_REQUEST: u64 = 64 << 20;

/// Buffer size of the fallback copy.
const FALLBACK_BUFFER: usize = 1 << 20;

/// Errors of `copy_file_range(2)` that mean "cannot offload this", not "the copy failed".
fn must_fall_back(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

/// Copies up to `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`.
/// Returns the number of bytes copied: 0 at the end of `src`, possibly short otherwise.
pub fn copy_range(
    stats: &Stats,
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> io::Result<u64> {
    stats.count(&stats.copy_calls, 1);
    let len = len.min(MAX_COPY_PER_REQUEST);
    // cp advises its source as sequential, but on the FUSE file; the copy reads the
    // daemon's own descriptor, whose readahead would otherwise stay at the default.
    // (A cold 1 GiB copy_file_range on ext4 here: median 0.70 s without, 0.59 s with.)
    if let Err(err) = sys::advise_sequential(src) {
        log::debug!("posix_fadvise(SEQUENTIAL) on a copy source: {err}");
    }
    match sys::copy_file_range(src, src_offset, dst, dst_offset, len as usize) {
        Ok(n) => {
            stats.count(&stats.copy_offloaded_bytes, n as u64);
            Ok(n as u64)
        }
        Err(err) if must_fall_back(&err) => {
            log::debug!("copy_file_range cannot offload ({err}); copying in the daemon");
            let n = buffered_copy(src, src_offset, dst, dst_offset, len)?;
            stats.count(&stats.copy_fallback_bytes, n);
            Ok(n)
        }
        Err(err) => Err(err),
    }
}

thread_local! {
    static FALLBACK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Copies with `pread`/`pwrite` through a 1 MiB buffer. Stops early at the end of `src`,
/// after [`MAX_FALLBACK_PER_REQUEST`] bytes, or on an error after some bytes were copied
/// (those are reported; the caller's next call sees the error).
fn buffered_copy(
    src: BorrowedFd<'_>,
    mut src_offset: u64,
    dst: BorrowedFd<'_>,
    mut dst_offset: u64,
    len: u64,
) -> io::Result<u64> {
    let limit = len.min(MAX_FALLBACK_PER_REQUEST);
    FALLBACK_BUF.with_borrow_mut(|buf| {
        buf.resize(FALLBACK_BUFFER, 0);
        let mut copied = 0u64;
        while copied < limit {
            let want = (limit - copied).min(buf.len() as u64) as usize;
            let step = sys::pread(src, &mut buf[..want], src_offset).and_then(|got| {
                let mut written = 0;
                while written < got {
                    let n = sys::pwrite(dst, &buf[written..got], dst_offset + written as u64)?;
                    if n == 0 {
                        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                    }
                    written += n;
                }
                Ok(got)
            });
            match step {
                Ok(0) => break,
                Ok(n) => {
                    copied += n as u64;
                    src_offset += n as u64;
                    dst_offset += n as u64;
                }
                Err(err) if copied == 0 => return Err(err),
                Err(_) => break,
            }
        }
        Ok(copied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn file_with(dir: &std::path::Path, name: &str, data: &[u8]) -> File {
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(data).unwrap();
        File::options().read(true).write(true).open(path).unwrap()
    }

    #[test]
    fn offloaded_copy_counts_offloaded_bytes_and_honours_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let src = file_with(dir.path(), "src", &data);
        let dst = file_with(dir.path(), "dst", b"");
        let stats = Stats::default();
        let n = copy_range(&stats, src.as_fd(), 10, dst.as_fd(), 5, 50_000).unwrap();
        assert_eq!(n, 50_000);
        let out = std::fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(&out[5..], &data[10..50_010]);
        assert_eq!(stats.snapshot().copy_offloaded_bytes, 50_000);
        assert_eq!(stats.snapshot().copy_fallback_bytes, 0);
    }

    #[test]
    fn copy_past_the_end_returns_zero() {
        let dir = tempfile::tempdir().unwrap();
        let src = file_with(dir.path(), "src", b"abc");
        let dst = file_with(dir.path(), "dst", b"");
        let stats = Stats::default();
        assert_eq!(
            copy_range(&stats, src.as_fd(), 3, dst.as_fd(), 0, 10).unwrap(),
            0
        );
    }

    #[test]
    fn buffered_copy_copies_exactly_and_stops_at_end_of_source() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let src = file_with(dir.path(), "src", &data);
        let dst = file_with(dir.path(), "dst", b"");
        let n = buffered_copy(src.as_fd(), 1, dst.as_fd(), 0, 10_000_000).unwrap();
        assert_eq!(n, data.len() as u64 - 1);
        assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), &data[1..]);
    }

    #[test]
    fn real_errors_are_not_hidden_by_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let src = file_with(dir.path(), "src", b"abc");
        let read_only_dst = {
            file_with(dir.path(), "dst", b"");
            File::open(dir.path().join("dst")).unwrap()
        };
        let stats = Stats::default();
        let err = copy_range(&stats, src.as_fd(), 0, read_only_dst.as_fd(), 0, 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
