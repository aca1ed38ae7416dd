//! Directory listing: `readdir` and `readdirplus` over `getdents64(2)`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use crate::fs::{Entry, Fs};
use crate::sys;

/// One directory entry as readdir reports it.
pub struct DirEntry<'a> {
    /// The backing `d_ino` (what a native readdir reports).
    pub ino: u64,
    /// The cookie that continues the listing after this entry.
    pub next_offset: u64,
    /// `S_IFMT` bits of the entry.
    pub kind: libc::mode_t,
    pub name: &'a OsStr,
    /// For readdirplus: the looked-up inode (one lookup counted), except for `.` and `..`
    /// and for entries listed without attributes.
    pub entry: Option<Entry>,
}

impl Fs {
    /// Lists the directory of handle `fh` from `offset` (0, or a `next_offset` returned
    /// before). `sink` takes entries until it returns `false` (reply buffer full); an entry
    /// it refuses is not consumed, and with `plus` its counted lookup is returned.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> io::Result<()> {
        let handle = self.handles.get(fh)?;
        let dir_fd = self.path_fd(&handle.inode)?;
        // The caller opened the directory (with its read permission); the entries'
        // attributes are looked up with the daemon's rights, so that a caller who may read
        // but not search the directory still gets its names, as natively. The kernel
        // checks search permission before it lets anyone use one.
        let _daemon = self.creds.as_daemon()?;
        let _position = handle.lock_dir_position();
        sys::lseek(handle.fd(), offset as i64, libc::SEEK_SET)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let len = sys::getdents64(handle.fd(), &mut buf)?;
            if len == 0 {
                return Ok(());
            }
            for raw in RawDirents::new(&buf[..len]) {
                let name = OsStr::from_bytes(raw.name);
                let dot = raw.name == b"." || raw.name == b"..";
                let mut kind = dtype_to_mode(raw.d_type);
                let entry = if plus && !dot {
                    match self.lookup_listed(&dir_fd, &sys::cstr(name)?) {
                        Ok(e) => e,
                        // Gone since getdents: skip it, as a later readdir would.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                if kind == 0 {
                    kind = match &entry {
                        Some(e) => e.st.st_mode & libc::S_IFMT,
                        None => sys::fstatat(
                            dir_fd.as_fd(),
                            &sys::cstr(name)?,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_or(libc::S_IFREG, |st| st.st_mode & libc::S_IFMT),
                    };
                }
                let counted = entry.as_ref().map(|e| e.inode.id);
                let accepted = sink(DirEntry {
                    ino: raw.d_ino,
                    next_offset: raw.d_off,
                    kind,
                    name,
                    entry,
                });
                if !accepted {
                    if let Some(id) = counted {
                        self.forget(id, 1);
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn dtype_to_mode(d_type: u8) -> libc::mode_t {
    match d_type {
        libc::DT_REG => libc::S_IFREG,
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => 0,
    }
}

/// One `linux_dirent64` record.
#[derive(Debug, PartialEq, Eq)]
pub struct RawDirent<'a> {
    pub d_ino: u64,
    pub d_off: u64,
    pub d_type: u8,
    pub name: &'a [u8],
}

/// Iterates the records `getdents64(2)` wrote into a buffer. A record that does not fit
/// (a length field smaller than a header or past the end, a name without its NUL) ends
/// the iteration: the kernel never writes one, and nothing is read outside the buffer.
pub struct RawDirents<'a> {
    buf: &'a [u8],
}

impl<'a> RawDirents<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        RawDirents { buf }
    }
}

impl<'a> Iterator for RawDirents<'a> {
    type Item = RawDirent<'a>;

    fn next(&mut self) -> Option<RawDirent<'a>> {
        // Layout: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, NUL-terminated name.
        const NAME_AT: usize = 19;
        if self.buf.len() < NAME_AT {
            return None;
        }
        let d_ino = u64::from_ne_bytes(self.buf[0..8].try_into().ok()?);
        let d_off = u64::from_ne_bytes(self.buf[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(self.buf[16..18].try_into().ok()?) as usize;
        if reclen < NAME_AT || reclen > self.buf.len() {
            return None;
        }
        let d_type = self.buf[18];
        let name_field = &self.buf[NAME_AT..reclen];
        let name_len = name_field.iter().position(|&b| b == 0)?;
        let record = RawDirent {
            d_ino,
            d_off,
            d_type,
            name: &name_field[..name_len],
        };
        self.buf = &self.buf[reclen..];
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(buf: &mut Vec<u8>, ino: u64, name: &str) {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        buf.extend_from_slice(&ino.to_ne_bytes());
        buf.extend_from_slice(&(ino * 10).to_ne_bytes());
        buf.extend_from_slice(&(reclen as u16).to_ne_bytes());
        buf.push(libc::DT_REG);
        buf.extend_from_slice(name.as_bytes());
        buf.resize(buf.len() + reclen - 19 - name.len(), 0);
    }

    #[test]
    fn dirent_parser_reads_records() {
        let mut buf = Vec::new();
        record(&mut buf, 7, "a");
        record(&mut buf, 9, "longer-name");
        let got: Vec<_> = RawDirents::new(&buf)
            .map(|d| {
                (
                    d.d_ino,
                    d.d_off,
                    String::from_utf8_lossy(d.name).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(7, 70, "a".into()), (9, 90, "longer-name".into())]
        );
    }

    proptest! {
        #[test]
        fn garbage_dirents_end_the_listing_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut consumed = 0usize;
            for d in RawDirents::new(&bytes) {
                consumed += 19 + d.name.len();
                prop_assert!(consumed <= bytes.len());
            }
        }

        #[test]
        fn truncated_buffers_yield_only_whole_records(
            names in proptest::collection::vec("[a-z]{1,40}", 1..20),
            cut in 0usize..1000,
        ) {
            let mut buf = Vec::new();
            for (i, name) in names.iter().enumerate() {
                record(&mut buf, i as u64 + 1, name);
            }
            let cut = cut.min(buf.len());
            let got: Vec<_> = RawDirents::new(&buf[..cut]).collect();
            prop_assert!(got.len() <= names.len());
            for (d, name) in got.iter().zip(&names) {
                prop_assert_eq!(d.name, name.as_bytes());
            }
        }
    }
}
