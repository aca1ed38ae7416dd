//! Who acts: system calls made on a caller's behalf run with the caller's credentials.
//!
//! The daemon runs as root, but nothing it does for a request may need more rights than
//! the caller has natively. So every call that creates, allocates, changes or opens a
//! backing object runs with the caller's uid, gid and supplementary groups, and the
//! backing filesystem itself decides permission, ownership, set-gid and ACL inheritance,
//! quota and the root reserve, exactly as it would for the caller.
//!
//! The switch is per thread: the raw `setresuid`/`setresgid`/`setgroups` system calls
//! change only the calling thread (the C library's wrappers change every thread), and
//! only the effective ids change; the saved uid stays the daemon's, so the thread can
//! always become the daemon again. While the effective uid is not 0 the kernel clears the
//! thread's effective capabilities, so no CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID or
//! CAP_SYS_RESOURCE lends the caller root's rights.
//!
//! Switching is lazy. Each credential-changing call costs about 2 µs here (a switch and
//! its undo, 6 calls, measured 12 µs: half a FUSE round trip), so a thread keeps the
//! identity it last took until a request needs another. The rule that makes this safe:
//! every call made on a caller's behalf is preceded by [`Credentials::act_as`], every
//! call that needs the daemon's own rights by [`Credentials::as_daemon`]; calls that
//! check no credentials (on open descriptors: read, fstat, getdents, fsync, close, ...)
//! need neither. A thread left with a caller's identity can only have fewer rights than
//! the daemon, never the caller's next request more than that caller has.
//!
//! Supplementary groups: FUSE requests carry only uid, gid and pid. The groups are read
//! from `/proc/PID/status` of the requesting thread (only if its filesystem ids still
//! match the request) and cached for [`STATUS_TTL`]. They can be stale by that long, and
//! are empty when the pid is not visible (another pid namespace) or gone; the kernel has
//! already checked permissions with the real groups (`default_permissions`), so a stale
//! or missing group can only refuse what native would allow, except where a group is
//! named to deny (a mode like 0604 or a deny ACL entry), which the kernel's own check
//! enforces before the request reaches the daemon.
//!
//! A caller with the daemon's uid (root) acts with the daemon's capabilities: a request
//! does not say which capabilities its caller has, but the kernel has already checked
//! them (`default_permissions`) before sending it.
//!
//! With `-o idmap` (FUSE_ALLOW_IDMAP) the kernel withholds the caller's ids from every
//! request but those that create an object, which carry the owner-to-be as an idmapped
//! mount maps it; the others carry uid and gid -1. The kernel has checked permission
//! (in the idmapped view), so those run as the [`Role::Agent`]: an unprivileged uid
//! with only the capabilities that let it do what was checked (no CAP_SYS_RESOURCE, so
//! no root reserve or quota override; no CAP_SYS_ADMIN, but for the privileged xattrs
//! the kernel checked, see `crate::xattr`). A creator whose `/proc` status does not name
//! the carried ids (it came through an idmapped mount) creates as those ids with no
//! groups and only CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_MKNOD, whose checks the
//! kernel made on the parent; it never opens an existing file with them. Writes for
//! either run with no capability but CAP_FSETID where the kernel did not ask to drop
//! set-id bits (see [`Credentials::act_as_writer`]). `crate::idmap` keeps all of this
//! to what the kernel checked against attributes it holds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::sys;

/// Who made a request, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The requesting thread, in the daemon's pid namespace; 0 when not known (e.g. a
    /// write-back of dirty pages).
    pub pid: u32,
}

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_MKNOD: u32 = 27;
const CAP_SYS_ADMIN: u32 = 21;

/// The uid and gid the agent acts with (see [`Role::Agent`]): the kernel's overflow ids,
/// owners of nothing an operator would reserve blocks for.
pub const AGENT_ID: u32 = 65534;

/// What the agent may do on its own: exactly what the kernel has already checked for
/// the caller (search, read and write by mode and ACL; ownership for chmod, times and
/// chown; keeping set-gid on chmod).
const AGENT_CAPS: u64 = (1 << CAP_CHOWN)
    | (1 << CAP_DAC_OVERRIDE)
    | (1 << CAP_DAC_READ_SEARCH)
    | (1 << CAP_FOWNER)
    | (1 << CAP_FSETID);

/// What a creator seen through an idmapped mount may do: create where the kernel found
/// the parent writable in its view.
const MAPPED_CREATOR_CAPS: u64 =
    (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_MKNOD);

/// How the daemon acts for a caller (see the module text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// As the caller itself: its ids, groups and capabilities.
    Caller,
    /// A request without ids (`-o idmap`): as the agent.
    Agent,
    /// A creation through an idmapped mount: as the carried ids, without groups.
    MappedCreator,
}

impl Caller {
    /// Whether the kernel withheld the caller's ids (FUSE_INVALID_UIDGID).
    pub fn is_unknown(&self) -> bool {
        self.uid == u32::MAX || self.gid == u32::MAX
    }
}

/// How long groups and capabilities read from `/proc` are trusted.
pub const STATUS_TTL: Duration = Duration::from_secs(1);

/// Bound on cached statuses (the cache is emptied when it is reached).
const STATUS_CACHE_LIMIT: usize = 4096;

/// The ids and capabilities a thread acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    uid: u32,
    gid: u32,
    groups: Arc<[libc::gid_t]>,
    /// Effective capabilities (bit n = capability n).
    caps: u64,
}

thread_local! {
    /// The identity this thread has now; `None` when unknown (a thread that never
    /// switched, or a switch that failed half way).
    static CURRENT: RefCell<Option<Identity>> = const { RefCell::new(None) };
    /// Whether this thread has its own umask (see [`sys::unshare_fs_attributes`]).
    static OWN_UMASK: Cell<bool> = const { Cell::new(false) };
}

/// The daemon's own identity, and the cache of what callers' `/proc` status says.
pub struct Credentials {
    daemon: Identity,
    /// Whether requests may come without ids (`-o idmap`).
    idmap: bool,
    /// The daemon's user namespace (the inode number of `/proc/self/ns/user`).
    user_ns: Option<u64>,
    cache: Mutex<HashMap<Caller, CachedStatus>>,
    /// Real uids of requesting threads (for requests without ids), by pid, with when
    /// they were read.
    accounts: Mutex<HashMap<u32, (Instant, u32)>>,
    /// Identity changes made by serving threads.
    switches: AtomicU64,
}

struct CachedStatus {
    read_at: Instant,
    /// `None`: the status could not be read (see [`Credentials::act_as`]).
    ids: Option<StatusIds>,
}

/// What a caller's `/proc/PID/status` says beyond the request's uid and gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusIds {
    pub groups: Arc<[libc::gid_t]>,
    /// Effective capabilities.
    pub caps: u64,
}

/// Proof that the calling thread has the identity a call needs; hold it across the call.
#[must_use = "the identity holds only for calls made while this is alive"]
pub struct Acting {
    /// For a backing registration: the effective capabilities to go back to when
    /// dropped (CAP_SYS_ADMIN was raised on top of them).
    lower_to: Option<u64>,
}

impl Drop for Acting {
    fn drop(&mut self) {
        if let Some(caps) = self.lower_to
            && let Err(e) = sys::set_effective_capabilities(caps)
        {
            fatal(e);
        }
    }
}

/// The calling thread's effective ids, groups and capabilities, as the kernel has them.
fn thread_identity() -> Option<Identity> {
    let (uid, gid) = sys::effective_ids();
    Some(Identity {
        uid,
        gid,
        groups: sys::thread_groups().ok()?.into(),
        caps: sys::thread_capabilities().ok()?.effective,
    })
}

/// A thread whose identity is unknown and cannot be made the daemon's again must not
/// serve anything.
fn fatal(e: io::Error) -> ! {
    log::error!("cannot restore the daemon's credentials: {e}");
    std::process::abort();
}

impl Credentials {
    /// The credentials of the calling thread (the daemon's).
    pub fn of_daemon(idmap: bool) -> io::Result<Self> {
        let (uid, gid) = sys::effective_ids();
        Ok(Credentials {
            idmap,
            daemon: Identity {
                uid,
                gid,
                groups: sys::thread_groups()?.into(),
                // The daemon may raise anything it is permitted.
                caps: sys::thread_capabilities()?.permitted,
            },
            user_ns: user_namespace("self"),
            cache: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
            switches: AtomicU64::new(0),
        })
    }

    /// Whether requests may come without ids (`-o idmap`).
    pub fn idmap(&self) -> bool {
        self.idmap
    }

    /// How many times serving threads changed identity.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// How the daemon acts for `caller`.
    pub fn role(&self, caller: &Caller) -> Role {
        if !self.idmap {
            Role::Caller
        } else if caller.is_unknown() {
            Role::Agent
        } else if self.status(caller).is_some() {
            Role::Caller
        } else {
            Role::MappedCreator
        }
    }

    /// Makes the calling thread act as `caller` (if it does not already): its uid, gid,
    /// supplementary groups and effective capabilities (within the daemon's own), as
    /// `/proc/PID/status` of the requesting thread gives them. When that cannot be read
    /// (the pid is in no namespace the daemon sees, or gone) the caller has no
    /// supplementary groups, and no capabilities unless its uid is the daemon's, which
    /// then acts with the daemon's. With `-o idmap`, see [`Role`].
    pub fn act_as(&self, caller: &Caller) -> io::Result<Acting> {
        self.become_(self.identity_for(caller, self.role(caller)))?;
        Ok(Acting { lower_to: None })
    }

    fn identity_for(&self, caller: &Caller, role: Role) -> Identity {
        match role {
            Role::Agent => self.agent(AGENT_CAPS),
            Role::MappedCreator => Identity {
                uid: caller.uid,
                gid: caller.gid,
                groups: Arc::from([]),
                caps: MAPPED_CREATOR_CAPS & self.daemon.caps,
            },
            Role::Caller => {
                let (groups, caps) = match self.status(caller) {
                    Some(ids) => (ids.groups, ids.caps & self.daemon.caps),
                    None if caller.uid == self.daemon.uid => {
                        (self.daemon.groups.clone(), self.daemon.caps)
                    }
                    None => (Arc::from([]), 0),
                };
                Identity {
                    uid: caller.uid,
                    gid: caller.gid,
                    groups,
                    caps,
                }
            }
        }
    }

    fn agent(&self, caps: u64) -> Identity {
        Identity {
            uid: AGENT_ID,
            gid: AGENT_ID,
            groups: Arc::from([]),
            caps: caps & self.daemon.caps,
        }
    }

    /// [`Self::act_as`] for a write of data (write, fallocate, copy_file_range), whose
    /// permission was settled when the file was opened. What the identity still decides
    /// is the root reserve, quota and whether set-id bits survive the write. A caller
    /// acts as itself; the agent and a mapped creator act as the agent with no
    /// capability, keeping set-id bits only with CAP_FSETID when the kernel, which knows
    /// the caller, did not ask to drop them (`keep_set_id`).
    pub fn act_as_writer(&self, caller: &Caller, keep_set_id: bool) -> io::Result<Acting> {
        match self.role(caller) {
            Role::Caller => self.act_as(caller),
            Role::Agent | Role::MappedCreator => {
                let caps = if keep_set_id { 1 << CAP_FSETID } else { 0 };
                self.become_(self.agent(caps))?;
                Ok(Acting { lower_to: None })
            }
        }
    }

    /// The uid whose share of handles and locks a request counts against: the caller's,
    /// or for a request without ids the real uid of the requesting process (all such
    /// requests would otherwise share one share).
    pub fn account_uid(&self, caller: &Caller) -> u32 {
        if !caller.is_unknown() || caller.pid == 0 {
            return caller.uid;
        }
        let now = Instant::now();
        if let Some(&(read_at, uid)) = self.accounts.lock().get(&caller.pid)
            && now.duration_since(read_at) < STATUS_TTL
        {
            return uid;
        }
        let uid = std::fs::read(format!("/proc/{}/status", caller.pid))
            .ok()
            .and_then(|status| real_uid_from_status(&status))
            .unwrap_or(u32::MAX);
        let mut accounts = self.accounts.lock();
        if accounts.len() >= STATUS_CACHE_LIMIT {
            accounts.clear();
        }
        accounts.insert(caller.pid, (now, uid));
        uid
    }

    /// Makes the calling thread the daemon itself, for calls that need its rights.
    pub fn as_daemon(&self) -> io::Result<Acting> {
        self.become_(self.daemon.clone())?;
        Ok(Acting { lower_to: None })
    }

    /// Runs `f` with the daemon's rights (e.g. `open_by_handle_at`, which needs
    /// CAP_DAC_READ_SEARCH) and gives the thread back the identity it had, so that code
    /// acting as a caller around it goes on as that caller.
    pub fn briefly_as_daemon<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let before = CURRENT.with_borrow(|current| current.clone());
        self.become_(self.daemon.clone())?;
        let result = f();
        match before {
            Some(identity) if identity != self.daemon => self.become_(identity)?,
            _ => {}
        }
        result
    }

    /// [`Self::act_as`], keeping CAP_SYS_ADMIN until the returned value is dropped: for
    /// the kernel passthrough registration of a backing file, which needs it, and which
    /// keeps the registering thread's credentials for every write made through that
    /// backing file. CAP_SYS_ADMIN gives such a write no way past permission, the root
    /// reserve, quota or set-id dropping.
    pub fn act_as_registrant(&self, caller: &Caller) -> io::Result<Acting> {
        // A passthrough write never reaches the daemon, so the kernel cannot ask it to
        // drop set-id bits: the registrant must have no CAP_FSETID unless it is the caller.
        let _acting = self.act_as_writer(caller, false)?;
        let caps = CURRENT.with_borrow(|c| c.as_ref().map_or(0, |c| c.caps));
        let admin = 1 << CAP_SYS_ADMIN;
        if caps & admin != 0 {
            return Ok(Acting { lower_to: None });
        }
        sys::set_effective_capabilities(caps | admin)?;
        Ok(Acting {
            lower_to: Some(caps),
        })
    }

    /// [`Self::act_as`], with `umask` applied to objects the caller creates (the kernel
    /// passes the mode unmasked so that a default ACL of the parent, if any, replaces the
    /// umask, as natively).
    pub fn act_as_creator(&self, caller: &Caller, umask: u32) -> io::Result<Acting> {
        if !OWN_UMASK.get() {
            sys::unshare_fs_attributes()?;
            OWN_UMASK.set(true);
        }
        sys::set_umask(umask & 0o777);
        self.act_as(caller)
    }

    /// Whether `caller` belongs to group `gid`: its primary group or a supplementary one.
    pub fn in_group(&self, caller: &Caller, gid: u32) -> bool {
        caller.gid == gid
            || self
                .status(caller)
                .is_some_and(|ids| ids.groups.contains(&gid))
    }

    /// Gives the calling thread the identity `wanted`, with as few calls as it takes.
    fn become_(&self, wanted: Identity) -> io::Result<()> {
        let current = match CURRENT.with_borrow(|current| current.clone()) {
            Some(known) => Some(known),
            // A thread that never switched has what it was created with; one whose switch
            // failed has what the kernel says (possibly nothing it can name).
            None => thread_identity(),
        };
        if current.as_ref() == Some(&wanted) {
            CURRENT.set(current);
            return Ok(());
        }
        self.switches.fetch_add(1, Ordering::Relaxed);
        CURRENT.set(None);
        // Changing groups, gid or capabilities needs the daemon's capabilities, which a
        // thread acting as someone else may lack; the saved uid always allows going back
        // (an effective uid of 0 again makes the effective set the permitted one).
        match &current {
            Some(c) if c.uid == self.daemon.uid => {
                if c.caps != self.daemon.caps {
                    sys::set_effective_capabilities(self.daemon.caps).unwrap_or_else(|e| fatal(e));
                }
            }
            _ => {
                sys::set_thread_resuid(u32::MAX, self.daemon.uid, u32::MAX)
                    .unwrap_or_else(|e| fatal(e));
                sys::set_effective_capabilities(self.daemon.caps).unwrap_or_else(|e| fatal(e));
            }
        }
        if current.as_ref().is_none_or(|c| c.groups != wanted.groups) {
            sys::set_thread_groups(&wanted.groups)?;
        }
        if current.as_ref().is_none_or(|c| c.gid != wanted.gid) {
            sys::set_thread_resgid(u32::MAX, wanted.gid, u32::MAX)?;
        }
        if wanted.uid != self.daemon.uid {
            // The kernel clears the effective capabilities.
            sys::set_thread_resuid(u32::MAX, wanted.uid, u32::MAX)?;
            if wanted.caps != 0 {
                sys::set_effective_capabilities(wanted.caps)?;
            }
        } else if wanted.caps != self.daemon.caps {
            sys::set_effective_capabilities(wanted.caps)?;
        }
        CURRENT.set(Some(wanted));
        Ok(())
    }

    /// The caller's supplementary groups and capabilities, from the cache or
    /// `/proc/PID/status`.
    fn status(&self, caller: &Caller) -> Option<StatusIds> {
        if caller.pid == 0 {
            return None;
        }
        let now = Instant::now();
        if let Some(hit) = self.cache.lock().get(caller)
            && now.duration_since(hit.read_at) < STATUS_TTL
        {
            return hit.ids.clone();
        }
        let mut ids = std::fs::read(format!("/proc/{}/status", caller.pid))
            .ok()
            .and_then(|status| ids_from_status(&status, caller.uid, caller.gid));
        // Capabilities are relative to the caller's user namespace: the root of a
        // container's namespace has a full set there, which means nothing for files of
        // the daemon's namespace (and must not become the daemon's CAP_DAC_OVERRIDE or
        // CAP_SYS_RESOURCE). The kernel made its own namespace-aware checks already.
        if let Some(found) = ids.as_mut()
            && found.caps != 0
            && self.namespace_of(caller.pid) != self.user_ns
        {
            found.caps = 0;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= STATUS_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(
            *caller,
            CachedStatus {
                read_at: now,
                ids: ids.clone(),
            },
        );
        ids
    }
}

impl Credentials {
    /// The user namespace of process `pid`, read with the daemon's rights: opening
    /// `/proc/PID/ns/user` needs ptrace access to the process, which the thread lacks
    /// while it acts as another user (then every root caller would lose its
    /// capabilities).
    fn namespace_of(&self, pid: u32) -> Option<u64> {
        self.briefly_as_daemon(|| Ok(user_namespace(&pid.to_string())))
            .ok()
            .flatten()
    }
}

/// The user namespace of process `pid` ("self" for this one): the inode number of its
/// `/proc/PID/ns/user`.
fn user_namespace(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .ok()
        .map(|m| m.ino())
}

/// The real uid (the first field of `Uid:`) in a `/proc/PID/status` text.
pub fn real_uid_from_status(status: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(status).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The supplementary groups and effective capabilities in a `/proc/PID/status` text, if
/// its filesystem uid and gid (the fourth fields of `Uid:` and `Gid:`) are `uid` and
/// `gid`: the process that made a request may have changed identity, or its pid may have
/// been reused, since.
pub fn ids_from_status(status: &[u8], uid: u32, gid: u32) -> Option<StatusIds> {
    let text = std::str::from_utf8(status).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.split_ascii_whitespace())
    };
    let fs_id = |name: &str| -> Option<u32> { field(name)?.nth(3)?.parse().ok() };
    if fs_id("Uid:")? != uid || fs_id("Gid:")? != gid {
        return None;
    }
    let groups = field("Groups:")?
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<libc::gid_t>>>()
        .filter(|groups| groups.len() <= 65_536)?;
    let caps = u64::from_str_radix(field("CapEff:")?.next()?, 16).ok()?;
    Some(StatusIds {
        groups: groups.into(),
        caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t42\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nFDSize:\t64\n\
        Groups:\t4 24 27 100 \nNStgid:\t42\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000200002\n";

    fn groups(status: &str, uid: u32, gid: u32) -> Option<Vec<u32>> {
        ids_from_status(status.as_bytes(), uid, gid).map(|ids| ids.groups.to_vec())
    }

    #[test]
    fn groups_and_capabilities_are_read_when_the_filesystem_ids_match() {
        assert_eq!(groups(STATUS, 1000, 100), Some(vec![4, 24, 27, 100]));
        let ids = ids_from_status(STATUS.as_bytes(), 1000, 100).unwrap();
        // CAP_DAC_OVERRIDE (1) and CAP_SYS_ADMIN (21).
        assert_eq!(ids.caps, (1 << 1) | (1 << 21));
        let none = STATUS.replace("Groups:\t4 24 27 100 ", "Groups:\t");
        assert_eq!(groups(&none, 1000, 100), Some(vec![]));
    }

    #[test]
    fn the_real_uid_is_the_first_field_of_uid() {
        assert_eq!(real_uid_from_status(STATUS.as_bytes()), Some(1000));
        assert_eq!(real_uid_from_status(b"Uid:\t-1\n"), None);
        assert_eq!(real_uid_from_status(b"Gid:\t5\n"), None);
        assert_eq!(real_uid_from_status(b""), None);
    }

    #[test]
    fn another_identity_or_a_broken_status_gives_no_groups() {
        assert_eq!(groups(STATUS, 1001, 100), None);
        assert_eq!(groups(STATUS, 1000, 0), None);
        let fs_uid_differs = STATUS.replace("1000\t1000\t1000\t1000", "1000\t1000\t1000\t0");
        assert_eq!(groups(&fs_uid_differs, 1000, 100), None);
        let garbled = STATUS.replace("Groups:\t4 24", "Groups:\t4 x24");
        assert_eq!(groups(&garbled, 1000, 100), None);
        let no_caps = STATUS.replace("CapEff:", "CapXXX:");
        assert_eq!(groups(&no_caps, 1000, 100), None);
        assert_eq!(groups("", 0, 0), None);
        assert_eq!(groups("Uid:\t0\n", 0, 0), None);
    }

    #[test]
    fn a_switch_applies_to_this_thread_only_and_is_kept_until_another_is_needed() {
        let creds = Credentials::of_daemon(false).unwrap();
        assert_eq!(sys::effective_ids().0, 0, "the tests run as root");
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
            pid: std::process::id(),
        };
        std::thread::spawn(move || {
            let other_thread = std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                sys::effective_ids()
            });
            {
                let _as = creds.act_as(&nobody).unwrap();
                assert_eq!(sys::effective_ids(), (65534, 65534));
                // The process's /proc status names root, not nobody: no groups.
                assert_eq!(sys::thread_groups().unwrap(), Vec::<u32>::new());
                assert_eq!(other_thread.join().unwrap(), (0, creds.daemon.gid));
            }
            let switches = creds.switches();
            let _again = creds.act_as(&nobody).unwrap();
            assert_eq!(creds.switches(), switches, "no switch to the same identity");
            assert_eq!(sys::effective_ids(), (65534, 65534));
            // A daemon call in between leaves the thread acting as nobody.
            creds
                .briefly_as_daemon(|| {
                    assert_eq!(sys::effective_ids().0, 0);
                    Ok(())
                })
                .unwrap();
            assert_eq!(sys::effective_ids(), (65534, 65534));
            let _root = creds.as_daemon().unwrap();
            assert_eq!(sys::effective_ids(), (0, creds.daemon.gid));
            assert_eq!(&sys::thread_groups().unwrap()[..], &creds.daemon.groups[..]);
            // A registrant keeps CAP_SYS_ADMIN only while it is held, and nothing else.
            let admin = 1u64 << CAP_SYS_ADMIN;
            {
                let _registrant = creds.act_as_registrant(&nobody).unwrap();
                assert_eq!(sys::effective_ids(), (65534, 65534));
                assert_eq!(sys::thread_capabilities().unwrap().effective, admin);
            }
            assert_eq!(sys::effective_ids(), (65534, 65534));
            assert_eq!(sys::thread_capabilities().unwrap().effective, 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn root_without_capabilities_is_acted_as_without_them() {
        let creds = Credentials::of_daemon(false).unwrap();
        let mut capless = std::process::Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all", "sleep", "10"])
            .spawn()
            .unwrap();
        // Wait until setpriv has exec'd sleep with its capabilities dropped.
        let status = format!("/proc/{}/status", capless.id());
        for _ in 0..200 {
            let text = std::fs::read_to_string(&status).unwrap_or_default();
            if text.contains("CapEff:\t0000000000000000") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let root_without_caps = Caller {
            uid: 0,
            gid: 0,
            pid: capless.id(),
        };
        let caps = std::thread::spawn(move || {
            let _as = creds.act_as(&root_without_caps).unwrap();
            (
                sys::effective_ids(),
                sys::thread_capabilities().unwrap().effective,
            )
        })
        .join()
        .unwrap();
        capless.kill().unwrap();
        capless.wait().unwrap();
        assert_eq!(caps, ((0, 0), 0));
    }

    proptest! {
        #[test]
        fn any_status_text_parses_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ids_from_status(&bytes, 0, 0);
        }

        #[test]
        fn any_status_text_gives_a_real_uid_or_none_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            uid in any::<u32>(),
        ) {
            let _ = real_uid_from_status(&bytes);
            let status = format!("Name:\tx\nUid:\t{uid}\t1\t2\t3\nGid:\t0\t0\t0\t0\n");
            prop_assert_eq!(real_uid_from_status(status.as_bytes()), Some(uid));
        }

        #[test]
        fn any_group_list_and_capability_set_round_trip(
            groups in proptest::collection::vec(any::<u32>(), 0..64),
            caps in any::<u64>(),
        ) {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            let status = format!(
                "Uid:\t1\t1\t1\t7\nGid:\t2\t2\t2\t9\nGroups:\t{} \nCapEff:\t{caps:016x}\n",
                list.join(" ")
            );
            let ids = ids_from_status(status.as_bytes(), 7, 9).unwrap();
            prop_assert_eq!(ids.groups.to_vec(), groups);
            prop_assert_eq!(ids.caps, caps);
        }
    }
}
