//! Mount options and their validation.
//!
//! Everything a user can get wrong is checked here, before anything is mounted, and
//! reported as one line naming the culprit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A user-facing error: one line, no backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

macro_rules! bail {
    ($($arg:tt)*) => { return Err(Error(format!($($arg)*))) };
}

/// Whether reads and writes go straight from the kernel to the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Use kernel passthrough when the kernel and our privileges allow it.
    Auto,
    /// Refuse to mount without kernel passthrough.
    On,
    /// Serve every read and write in the daemon.
    Off,
}

/// Whether a filesystem of this `statfs` type may be changed by others than this machine's
/// kernel: network and cluster filesystems, and FUSE (which includes virtiofs and every
/// distributed filesystem's FUSE client).
pub fn is_shared_filesystem(f_type: i64) -> bool {
    const SHARED: [i64; 15] = [
        0x6969,      // NFS
        0x517B,      // SMB (smbfs)
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2/3
        0x00C3_6400, // Ceph kernel client
        0x6573_5546, // FUSE (JuiceFS, ceph-fuse, sshfs, virtiofs, another fastfs...)
        0x0102_1997, // 9p
        0x5346_414F, // AFS
        0x6B41_4653, // kAFS
        0x7375_7245, // Coda
        0x7461_636F, // OCFS2
        0x0116_1970, // GFS2
        0x0BD0_0BD0, // Lustre
        0x4750_4653, // GPFS
        0x2003_0528, // OrangeFS
    ];
    SHARED.contains(&f_type)
}

/// Whether requests come over io_uring (FUSE_OVER_IO_URING) rather than `/dev/fuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uring {
    /// Use io_uring when the kernel offers it and the rings can be set up.
    Auto,
    /// Refuse to mount without io_uring.
    On,
    /// Always `/dev/fuse`.
    Off,
}

/// How long the kernel may trust what it learnt about names, attributes and file data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Only the mount changes BACKING: names, attributes and page cache are kept for a day.
    Always,
    /// Others may change BACKING: everything is re-checked after one second, and file
    /// data when a file is opened.
    Auto,
    /// Nothing is cached: every access asks the daemon (and so sees BACKING at once).
    Never,
}

impl Cache {
    /// The option value that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            Cache::Always => "always",
            Cache::Auto => "auto",
            Cache::Never => "never",
        }
    }

    /// Time-to-live of names, negative names and attributes.
    pub fn ttl(self) -> Duration {
        match self {
            Cache::Always => Duration::from_secs(86_400),
            Cache::Auto => Duration::from_secs(1),
            Cache::Never => Duration::ZERO,
        }
    }

    /// Whether an open keeps the page cache of earlier opens.
    pub fn keep_page_cache(self) -> bool {
        self == Cache::Always
    }
}

/// Options given with `-o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Other users may use the mount. Permissions are checked either way: by the kernel
    /// (`default_permissions` and POSIX ACLs, always on) and by the backing filesystem,
    /// since the daemon acts as the caller.
    pub allow_other: bool,
    pub threads: usize,
    pub passthrough: Passthrough,
    pub uring: Uring,
    pub cache: Cache,
    /// Whether `cache=` was given (otherwise a shared backing gets `cache=auto`).
    pub cache_given: bool,
    /// Kernel mount flags (`MS_*`): `nosuid` and `nodev` unless `suid`/`dev` is given,
    /// and whatever generic flags the options name (see [`FLAG_OPTIONS`]).
    pub flags: u64,
    /// `remount`: change the flags of the fastfs already mounted at the mountpoint (what
    /// mount(8) asks of the helper for `mount -o remount,...`).
    pub remount: bool,
    /// The flags the options named, set and cleared (in order): what a remount changes.
    pub flags_named: (u64, u64),
    /// Keep inodes as file handles where the kernel allows it (`file_handles=auto`, the
    /// default), or always by descriptor (`file_handles=off`).
    pub file_handles: bool,
    /// Take fcntl and flock locks on the backing files (`locks=backing`, the default), or
    /// keep them in the kernel, among users of this mount only (`locks=local`).
    pub forward_locks: bool,
    /// Let the mount be bound through an idmapped mount (`idmap`, FUSE_ALLOW_IDMAP): the
    /// kernel then withholds the caller's ids from most requests (see `crate::creds`).
    pub idmap: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            threads: 4,
            passthrough: Passthrough::Auto,
            uring: Uring::Auto,
            cache: Cache::Always,
            cache_given: false,
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            remount: false,
            flags_named: (0, 0),
            file_handles: true,
            forward_locks: true,
            idmap: false,
        }
    }
}

/// Options mount(8) and fstab add that mean nothing to fastfs itself.
const IGNORED_OPTIONS: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
];

/// The generic mount flags every filesystem takes: option, flags it sets, flags it
/// clears. `allow_dev` and `allow_suid` are `dev` and `suid` under names mount(8) passes
/// on to the helper (it drops `dev`, `suid` and `exec` as defaults, so an fstab line
/// could not say them).
pub const FLAG_OPTIONS: &[(&str, u64, u64)] = &[
    ("ro", libc::MS_RDONLY, 0),
    ("rw", 0, libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID, 0),
    ("suid", 0, libc::MS_NOSUID),
    ("allow_suid", 0, libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV, 0),
    ("dev", 0, libc::MS_NODEV),
    ("allow_dev", 0, libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC, 0),
    ("exec", 0, libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME, 0),
    ("atime", 0, libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME, 0),
    ("diratime", 0, libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME, libc::MS_STRICTATIME),
    ("norelatime", 0, libc::MS_RELATIME),
    ("strictatime", libc::MS_STRICTATIME, libc::MS_RELATIME),
    ("nostrictatime", 0, libc::MS_STRICTATIME),
    ("lazytime", libc::MS_LAZYTIME, 0),
    ("nolazytime", 0, libc::MS_LAZYTIME),
    ("sync", libc::MS_SYNCHRONOUS, 0),
    ("async", 0, libc::MS_SYNCHRONOUS),
    ("dirsync", libc::MS_DIRSYNC, 0),
    ("nosymfollow", libc::MS_NOSYMFOLLOW, 0),
    ("symfollow", 0, libc::MS_NOSYMFOLLOW),
];

fn flag_option(name: &str) -> Option<(u64, u64)> {
    FLAG_OPTIONS
        .iter()
        .find(|(option, _, _)| *option == name)
        .map(|&(_, set, clear)| (set, clear))
}

impl MountOptions {
    /// Parses comma-separated option lists (each `-o` argument is one list).
    pub fn parse<S: AsRef<str>>(lists: &[S]) -> Result<Self, Error> {
        let mut o = MountOptions::default();
        for opt in lists.iter().flat_map(|l| l.as_ref().split(',')) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("", None) => {}
                (k, None) if flag_option(k).is_some() => {
                    let (set, clear) = flag_option(k).expect("checked");
                    o.flags = (o.flags & !clear) | set;
                    let (named_set, named_clear) = o.flags_named;
                    o.flags_named = ((named_set & !clear) | set, (named_clear & !set) | clear);
                }
                ("remount", None) => o.remount = true,
                ("allow_other", None) => o.allow_other = true,
                ("idmap", None) => o.idmap = true,
                // Always on: the kernel checks permissions and ACLs for every caller.
                ("default_permissions" | "acl", None) => {}
                ("noacl", None) => bail!(
                    "option 'noacl' is not supported: fastfs always enforces POSIX ACLs \
                     (without them the kernel would let users past deny entries)"
                ),
                ("threads", Some(v)) => {
                    o.threads = match v.parse::<usize>() {
                        Ok(n) if (1..=64).contains(&n) => n,
                        _ => bail!("invalid value '{v}' for option threads: expected 1 to 64"),
                    }
                }
                ("passthrough", Some(v)) => o.passthrough = parse_passthrough(v)?,
                ("uring", Some(v)) => o.uring = parse_uring(v)?,
                ("file_handles", Some(v)) => {
                    o.file_handles = match v {
                        "auto" => true,
                        "off" => false,
                        _ => bail!(
                            "invalid value '{v}' for option file_handles: expected auto or off"
                        ),
                    }
                }
                ("locks", Some(v)) => {
                    o.forward_locks = match v {
                        "backing" => true,
                        "local" => false,
                        _ => {
                            bail!("invalid value '{v}' for option locks: expected backing or local")
                        }
                    }
                }
                ("cache", Some(v)) => {
                    o.cache_given = true;
                    o.cache = match v {
                        "always" => Cache::Always,
                        "auto" => Cache::Auto,
                        "never" => Cache::Never,
                        _ => bail!(
                            "invalid value '{v}' for option cache: expected always, auto or never"
                        ),
                    }
                }
                (k, None) if IGNORED_OPTIONS.contains(&k) || k.starts_with("x-") => {}
                (k, _) if k.starts_with("x-") || k == "fsname" || k == "subtype" => {}
                // The kernel's own options of a FUSE mount, which mount(8) hands back to
                // the helper with a remount: they are set by fastfs, not by the user.
                ("user_id" | "group_id" | "rootmode" | "fd" | "max_read" | "blksize", Some(_)) => {}
                (k, Some(_))
                    if flag_option(k).is_some()
                        || matches!(
                            k,
                            "allow_other"
                                | "default_permissions"
                                | "acl"
                                | "noacl"
                                | "remount"
                                | "idmap"
                        ) =>
                {
                    bail!("option '{key}' takes no value")
                }
                (
                    "threads" | "passthrough" | "uring" | "cache" | "file_handles" | "locks",
                    None,
                ) => {
                    bail!("option '{key}' needs a value ({key}=...)")
                }
                _ => bail!("unknown mount option '{opt}'"),
            }
        }
        Ok(o)
    }
}

pub fn parse_passthrough(v: &str) -> Result<Passthrough, Error> {
    match v {
        "auto" => Ok(Passthrough::Auto),
        "on" => Ok(Passthrough::On),
        "off" => Ok(Passthrough::Off),
        _ => bail!("invalid value '{v}' for passthrough: expected auto, on or off"),
    }
}

pub fn parse_uring(v: &str) -> Result<Uring, Error> {
    match v {
        "auto" => Ok(Uring::Auto),
        "on" => Ok(Uring::On),
        "off" => Ok(Uring::Off),
        _ => bail!("invalid value '{v}' for uring: expected auto, on or off"),
    }
}

/// A checked request to mount `backing` at `mountpoint`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Canonical (absolute, no symlinks) path of the mountpoint.
    pub mountpoint: PathBuf,
    /// Canonical path of the backing directory.
    pub backing: PathBuf,
    pub options: MountOptions,
}

fn existing_dir(what: &str, path: &Path) -> Result<PathBuf, Error> {
    let canonical = path.canonicalize().map_err(|e| {
        Error(format!(
            "{what} {}: {}",
            path.display(),
            crate::describe_io_error(&e)
        ))
    })?;
    if !canonical.is_dir() {
        bail!("{what} {} is not a directory", path.display());
    }
    Ok(canonical)
}

/// Whether `path` is the mountpoint of a FUSE filesystem whose daemon died
/// ("Transport endpoint is not connected", or "Software caused connection abort"). statfs always asks the daemon; stat may be
/// answered from the kernel's attribute cache even after the daemon is gone.
pub fn is_stale_fuse_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // ECONNABORTED: an aborted connection, or one whose io_uring queues are being torn
    // down as the daemon dies.
    matches!(
        crate::sys::statfs(&c),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
    )
}

/// The mountpoint, canonical. A mountpoint left behind by a killed FUSE daemon cannot be
/// resolved itself; its parent can, and [`crate::mount::serve`] detaches the dead mount.
fn mountpoint_dir(path: &Path) -> Result<PathBuf, Error> {
    if is_stale_fuse_mount(path)
        && let (Some(parent), Some(name)) = (path.parent(), path.file_name())
    {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        return Ok(existing_dir("mountpoint", parent)?.join(name));
    }
    existing_dir("mountpoint", path)
}

impl Config {
    pub fn new(mountpoint: &Path, backing: &Path, options: MountOptions) -> Result<Self, Error> {
        let mount_canon = mountpoint_dir(mountpoint)?;
        let backing_canon = existing_dir("backing directory", backing)?;
        if mount_canon == backing_canon {
            bail!(
                "mountpoint {} is the backing directory itself: the mount would recurse into itself",
                mountpoint.display()
            );
        }
        if mount_canon.starts_with(&backing_canon) {
            bail!(
                "mountpoint {} is inside the backing directory {}: the mount would recurse into itself",
                mountpoint.display(),
                backing.display()
            );
        }
        Ok(Config {
            mountpoint: mount_canon,
            backing: backing_canon,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(lists: &[&str]) -> String {
        MountOptions::parse(lists).unwrap_err().0
    }

    #[test]
    fn known_options_parse_and_allow_other_implies_default_permissions() {
        let o = MountOptions::parse(&["ro,allow_other", "threads=8,cache=never"]).unwrap();
        assert!(o.flags & libc::MS_RDONLY != 0 && o.allow_other);
        assert_eq!(
            MountOptions::parse(&["acl,default_permissions"]).unwrap(),
            MountOptions::default()
        );
        assert_eq!(o.threads, 8);
        assert!(!o.idmap && MountOptions::parse(&["idmap"]).unwrap().idmap);
        assert_eq!(o.cache, Cache::Never);
        assert_eq!(o.uring, Uring::Auto);
        assert_eq!(MountOptions::parse(&["uring=on"]).unwrap().uring, Uring::On);
        assert_eq!(
            MountOptions::parse(&["uring=off"]).unwrap().uring,
            Uring::Off
        );
        assert_eq!(
            MountOptions::parse(&["passthrough=off"])
                .unwrap()
                .passthrough,
            Passthrough::Off
        );
        assert_eq!(
            MountOptions::parse(&["defaults,nofail,x-systemd.automount"]).unwrap(),
            MountOptions::default()
        );
    }

    #[test]
    fn generic_mount_flags_set_and_clear_their_bits() {
        let flags = |list: &str| MountOptions::parse(&[list]).unwrap().flags;
        let defaults = libc::MS_NOSUID | libc::MS_NODEV;
        assert_eq!(flags(""), defaults);
        assert_eq!(flags("suid,dev"), 0);
        assert_eq!(flags("allow_suid,allow_dev"), 0);
        assert_eq!(flags("ro,rw"), defaults);
        assert_eq!(
            flags("noatime,nodiratime,lazytime,sync,dirsync,nosymfollow,noexec"),
            defaults
                | libc::MS_NOATIME
                | libc::MS_NODIRATIME
                | libc::MS_LAZYTIME
                | libc::MS_SYNCHRONOUS
                | libc::MS_DIRSYNC
                | libc::MS_NOSYMFOLLOW
                | libc::MS_NOEXEC
        );
        assert_eq!(flags("strictatime,relatime"), defaults | libc::MS_RELATIME);
        assert_eq!(
            flags("relatime,strictatime"),
            defaults | libc::MS_STRICTATIME
        );
        assert_eq!(flags("noatime,atime,sync,async,exec"), defaults);
        let remount = MountOptions::parse(&["remount,ro,nosymfollow,rw"]).unwrap();
        assert!(remount.remount);
        assert_eq!(remount.flags_named, (libc::MS_NOSYMFOLLOW, libc::MS_RDONLY));
        assert!(err(&["nodiratime=1"]).contains("takes no value"));
    }

    #[test]
    fn bad_options_are_named_in_the_error() {
        assert_eq!(err(&["bogus"]), "unknown mount option 'bogus'");
        assert!(err(&["threads=0"]).contains("threads"));
        assert!(err(&["threads"]).contains("needs a value"));
        assert!(err(&["ro=1"]).contains("takes no value"));
        assert!(err(&["idmap=yes"]).contains("takes no value"));
        assert!(err(&["cache=sometimes"]).contains("cache"));
        assert_eq!(
            err(&["uring=yes"]),
            "invalid value 'yes' for uring: expected auto, on or off"
        );
        assert!(err(&["uring"]).contains("needs a value"));
        assert!(err(&["allow_other,noacl"]).contains("always enforces POSIX ACLs"));
    }

    #[test]
    fn mountpoint_inside_or_equal_to_backing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let o = MountOptions::default();
        assert!(
            Config::new(&inner, dir.path(), o.clone())
                .unwrap_err()
                .0
                .contains("inside the backing")
        );
        assert!(
            Config::new(dir.path(), dir.path(), o.clone())
                .unwrap_err()
                .0
                .contains("backing directory itself")
        );
        // A symlink to the backing directory is the backing directory.
        let link = dir.path().with_extension("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let refused = Config::new(&link, dir.path(), o.clone());
        std::fs::remove_file(&link).unwrap();
        assert!(refused.is_err());
    }

    #[test]
    fn missing_and_non_directory_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let o = MountOptions::default();
        let missing = Config::new(&mnt, &dir.path().join("nope"), o.clone())
            .unwrap_err()
            .0;
        assert!(missing.contains("No such file or directory"), "{missing}");
        assert!(
            Config::new(&file, &mnt, o)
                .unwrap_err()
                .0
                .contains("is not a directory")
        );
    }
}
