//! `-o idmap`: a fastfs mount bound through an idmapped mount, as a user-namespaced pod
//! or container gets its volume, behaves as an idmapped bind of a native directory on
//! the same filesystem; and the ordinary users of an idmap-enabled mount, whose requests
//! reach the daemon without their ids, gain nothing over native.
//!
//! The idmap is the one a container runtime gives: ids 0-65535 on disk are 100000-165535
//! to the processes that use the idmapped view.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// First host id of the idmap; disk id `n` is host id `MAP_BASE + n` in the view.
const MAP_BASE: u32 = 100_000;

/// A user namespace with ids 0-65535 mapped to 100000-165535, held by a sleeping
/// process; its root is "container root".
struct UserNs {
    holder: Child,
}

impl UserNs {
    fn new() -> Self {
        let holder = Command::new("unshare")
            .args(["--user", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare starts");
        let pid = holder.id();
        let own = fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Wait until unshare has entered its namespace (before that, its maps are ours).
        while fs::read_link(format!("/proc/{pid}/ns/user")).ok().as_ref() == Some(&own) {
            assert!(
                Instant::now() < deadline,
                "unshare --user did not make a namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let map = format!("0 {MAP_BASE} 65536\n");
        fs::write(format!("/proc/{pid}/uid_map"), &map).expect("write uid_map");
        fs::write(format!("/proc/{pid}/gid_map"), &map).expect("write gid_map");
        UserNs { holder }
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }
}

impl Drop for UserNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// An idmapped bind of `source` at `target`, unmounted on drop.
struct IdmappedBind {
    target: PathBuf,
}

impl IdmappedBind {
    fn new(source: &Path, target: &Path, ns: &UserNs) -> Result<Self, String> {
        fs::create_dir_all(target).unwrap();
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let userns = fs::File::open(format!("/proc/{}/ns/user", ns.pid())).unwrap();
        let tree = fastfs::sys::open_tree_clone(&cstr(source))
            .map_err(|e| format!("open_tree {}: {e}", source.display()))?;
        fastfs::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd()).map_err(|e| {
            format!(
                "mount_setattr(MOUNT_ATTR_IDMAP) of {}: {e}",
                source.display()
            )
        })?;
        fastfs::sys::move_mount_to(tree.as_fd(), &cstr(target))
            .map_err(|e| format!("move_mount to {}: {e}", target.display()))?;
        Ok(IdmappedBind {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for IdmappedBind {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}

/// Who runs a step.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// A plain user with these host ids and no groups.
    Host(u32),
    /// Root of the user namespace (host uid 100000, with its namespace's capabilities).
    NsRoot,
    /// A host user kept CAP_MKNOD (as a privileged container's device setup would).
    WithMknod(u32),
}

/// Runs `script` in `dir` as `who`; returns what a user would see: the exit status, the
/// output and the error messages (paths are relative to `dir`, so both views print the
/// same).
fn run(who: Who, dir: &Path, ns: &UserNs, script: &str) -> String {
    let mut command = match who {
        Who::Host(id) => as_user(id, "sh"),
        Who::WithMknod(id) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={id}"),
                &format!("--regid={id}"),
                "--clear-groups",
                "--inh-caps=+mknod",
                "--ambient-caps=+mknod",
                "sh",
            ]);
            c
        }
        Who::NsRoot => {
            let mut c = Command::new("nsenter");
            c.args(["--user", "--target", &ns.pid().to_string(), "sh"]);
            c
        }
    };
    let out = command
        .args(["-c", script])
        .current_dir(dir)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{who:?} `{script}` -> {}\n{}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The same starting tree in a backing directory: a sticky `pub`, directories and files
/// of disk users 0 and 1000, a set-gid directory.
fn populate(backing: &Path) {
    sh(&format!(
        "cd {} && mkdir -m 1777 pub && mkdir c1000 sgid && chown 1000:1000 c1000 sgid \
         && chmod 0755 c1000 && chmod 2775 sgid && echo root > rootfile \
         && chmod 0644 rootfile && echo s > secret && chown 1000:1000 secret \
         && chmod 0600 secret && echo g > sg && chown 1000:2000 sg && chmod 2775 sg \
         && chmod 0755 .",
        backing.display()
    ));
}

/// Every object under `backing`: name, owner, mode and type, as on disk.
fn tree(backing: &Path) -> String {
    sh(&format!(
        "cd {} && find . -mindepth 1 -printf '%P %U:%G %m %y %s\\n' | sort",
        backing.display()
    ))
}

/// Steps a container's users would take in its volume: creating, changing their own
/// files, and every kind of trying what is not theirs.
fn container_steps() -> Vec<(Who, &'static str)> {
    let u1000 = Who::Host(MAP_BASE + 1000);
    let u2000 = Who::Host(MAP_BASE + 2000);
    let unmapped = Who::Host(65534);
    vec![
        (
            u1000,
            "mkdir c1000/d && touch c1000/d/f && ln -s f c1000/d/l && mkfifo c1000/d/p",
        ),
        (
            u1000,
            "echo hi > c1000/d/w && chmod 0640 c1000/d/f && stat -c '%u:%g %a' c1000/d/f",
        ),
        (
            u1000,
            "mkdir sgid/s && touch sgid/s/f sgid/f && stat -c '%u:%g %a' sgid/s sgid/f",
        ),
        (u2000, "cat secret"),
        (u2000, "touch c1000/x"),
        (u2000, "chmod 0777 c1000/d/f"),
        (u2000, "echo x >> rootfile"),
        (u1000, "chown 102000 c1000/d/f"),
        (
            u1000,
            "chown 101000:101000 c1000/d/w && stat -c '%u:%g' c1000/d/w",
        ),
        (u2000, "touch pub/a2000 && echo data > pub/b2000"),
        (u1000, "rm -f pub/a2000"),
        (u1000, "mv pub/b2000 c1000/stolen"),
        (
            u1000,
            "echo mine > pub/a1000 && ln pub/a1000 c1000/link && mv c1000/link c1000/moved",
        ),
        (u2000, "ln secret pub/hardlink"),
        (
            u1000,
            "setfattr -n user.k -v 1 c1000/d/f && getfattr -n user.k --only-values c1000/d/f",
        ),
        (u2000, "setfattr -n user.k -v 2 c1000/d/f"),
        (
            u1000,
            "setfacl -m u:2000:r sg && stat -c %a sg && getfacl -cn sg",
        ),
        (
            u1000,
            "touch -d @1000000000 c1000/d/f && stat -c %Y c1000/d/f",
        ),
        (u2000, "touch -d @1000000000 c1000/d/w"),
        (
            Who::NsRoot,
            "touch c1000/byroot && mkdir rootdir && cat secret >/dev/null",
        ),
        (
            Who::NsRoot,
            "chown 1000:1000 rootdir && chmod 4755 c1000/d/w && stat -c '%u:%g %a' rootdir c1000/d/w",
        ),
        (Who::NsRoot, "chown 70000 rootdir"),
        (u1000, "echo more >> c1000/d/w && stat -c %a c1000/d/w"),
        (Who::NsRoot, "mknod c1000/null c 1 3"),
        (
            Who::WithMknod(MAP_BASE + 1000),
            "mknod c1000/null c 1 3 && mknod c1000/loop b 7 0 && stat -c '%u:%g %t,%T %F' c1000/null c1000/loop",
        ),
        (Who::WithMknod(MAP_BASE + 2000), "mknod c1000/null2 c 1 3"),
        (Who::NsRoot, "rm -f pub/a1000 && rm -rf c1000/d"),
        (unmapped, "touch pub/unmapped"),
        (Who::Host(0), "mkdir hostroot"),
        (
            Who::Host(0),
            "cat secret > /dev/null && ls -n c1000 | wc -l",
        ),
        (
            Who::Host(0),
            "setfattr -n trusted.t -v 1 rootfile && getfattr -n trusted.t --only-values rootfile",
        ),
        (
            u2000,
            "setfattr -n trusted.t -v 2 rootfile; getfattr -n trusted.t rootfile",
        ),
        (
            Who::Host(0),
            "setcap cap_net_raw+ep rootfile && getcap rootfile",
        ),
        (u1000, "setcap cap_net_raw+ep sgid/f"),
        (
            u2000,
            "getcap rootfile; setfattr -x security.capability rootfile",
        ),
        (u1000, "ls -ln . | awk '{print $1, $3, $4, $NF}'"),
    ]
}

/// Runs `steps` in both views and in their backing directories; panics at the first
/// step whose outcome differs, and if the trees differ at the end.
fn same_as_native(
    steps: &[(Who, &'static str)],
    ns: &UserNs,
    (view, backing): (&Path, &Path),
    (native_view, native_backing): (&Path, &Path),
) {
    for &(who, script) in steps {
        let through_fastfs = run(who, view, ns, script);
        let native = run(who, native_view, ns, script);
        assert_eq!(through_fastfs, native, "a step differs from native");
        assert_eq!(
            tree(backing),
            tree(native_backing),
            "after {who:?} `{script}`"
        );
    }
}

fn idmap_mount() -> Mounted {
    let m = Mounted::with_options(&["allow_other", "idmap"]);
    make_traversable(&m.mnt);
    m
}

#[test]
fn an_idmapped_bind_of_fastfs_behaves_as_one_of_a_native_directory() {
    let m = idmap_mount();
    let native = m.native_dir("native");
    populate(&m.backing);
    populate(&native);
    let ns = UserNs::new();
    let views = tempfile::tempdir_in(test_root()).unwrap();
    let view = IdmappedBind::new(&m.mnt, &views.path().join("fastfs"), &ns)
        .unwrap_or_else(|e| panic!("an idmapped bind of fastfs -o idmap is refused: {e}"));
    let native_view = IdmappedBind::new(&native, &views.path().join("native"), &ns)
        .unwrap_or_else(|e| panic!("an idmapped bind of a native directory: {e}"));
    same_as_native(
        &container_steps(),
        &ns,
        (&view.target, &m.backing),
        (&native_view.target, &native),
    );
}

#[test]
fn without_the_option_an_idmapped_bind_is_refused() {
    let m = Mounted::with_options(&["allow_other"]);
    let ns = UserNs::new();
    let views = tempfile::tempdir_in(test_root()).unwrap();
    let err = IdmappedBind::new(&m.mnt, &views.path().join("view"), &ns)
        .err()
        .expect("an idmapped bind of a mount without -o idmap must be refused");
    assert!(err.contains("Invalid argument"), "{err}");
}

/// The mount itself, not idmapped: its users' requests come without their ids, and the
/// daemon serves them with rights of its own. Every step a hostile user takes must end
/// as natively.
#[test]
fn ordinary_users_of_an_idmap_enabled_mount_gain_nothing() {
    let m = idmap_mount();
    let native = m.native_dir("native");
    for dir in [&m.backing, &native] {
        populate(dir);
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    make_traversable(&native);
    let ns = UserNs::new();
    // The same steps, by host users 1000 and 2000 (no idmap: disk ids are host ids).
    let steps: Vec<(Who, &'static str)> = container_steps()
        .into_iter()
        .filter_map(|(who, script)| match who {
            Who::Host(id) if id > MAP_BASE => Some((Who::Host(id - MAP_BASE), script)),
            Who::Host(id) => Some((Who::Host(id), script)),
            Who::WithMknod(id) => Some((Who::WithMknod(id.checked_sub(MAP_BASE)?), script)),
            Who::NsRoot => None,
        })
        .collect();
    same_as_native(&steps, &ns, (&m.mnt, &m.backing), (&native, &native));
}

/// Runs `script` with `$V` the directory users work in and `$B` the backing directory
/// root changes directly, and `N` running a command as nobody; returns its output.
fn race_script(view: &Path, backing: &Path, script: &str) -> String {
    sh(&format!(
        "set +e +o pipefail; V={} B={}; N() {{ setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"; }}\n{script}",
        view.display(),
        backing.display()
    ))
}

/// `program` run as host user `uid` (and group `uid`, no other groups).
fn as_user(uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg(program);
    command
}

/// Starts `command`, which says "ready" once it has set up and then waits for a line on
/// its stdin; runs `meanwhile` then, lets it go on, and returns the rest of its output.
fn when_ready(mut command: Command, meanwhile: impl FnOnce()) -> String {
    use std::io::{BufRead, Read, Write};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{command:?}");
    meanwhile();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    child.wait().unwrap();
    rest
}

/// The kernel checks permission on the owner and mode it cached (for up to a second
/// with `-o idmap`), and the agent acts on what it checked: a chown or chmod made in
/// BACKING must count at once, as it does natively.
#[test]
fn a_change_made_in_backing_counts_at_once_not_when_the_cache_expires() {
    let m = idmap_mount();
    let native = m.native_dir("native");
    make_traversable(&native);
    // `w` is writable by all (names in it are trusted for a second), `pub` is sticky
    // (names in it are looked up at every use).
    for dir in [&m.backing, &native] {
        fs::create_dir(dir.join("pub")).unwrap();
        fs::set_permissions(dir.join("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::create_dir(dir.join("w")).unwrap();
        fs::set_permissions(dir.join("w"), fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Each round: nobody makes something its own and looks at it (the kernel caches its
    // attributes), root takes it over in BACKING, nobody tries at once.
    let script = r#"
        for i in 1 2 3 4 5; do
          N touch $V/w/f$i; N stat -c %u $V/w/f$i >/dev/null
          chown 0:0 $B/w/f$i
          N chmod 0666 $V/w/f$i 2>/dev/null; echo "chmod of a file chowned away: $?"
          N setfattr -n user.k -v 1 $V/w/f$i 2>/dev/null; echo "setfattr on it: $?"
          N touch -d @1 $V/w/f$i 2>/dev/null; echo "utimes on it: $?"

          N mkdir $V/w/d$i; N touch $V/w/d$i/x; N stat $V/w/d$i/x >/dev/null
          chown 0:0 $B/w/d$i
          N rm -f $V/w/d$i/x 2>/dev/null; echo "unlink in a directory chowned away: $?"
          N touch $V/w/d$i/y 2>/dev/null; echo "create there: $?"
          N mv $V/w/d$i/x $V/w/moved$i 2>/dev/null; echo "rename out of it: $?"

          echo public > $B/w/r$i; chmod 0644 $B/w/r$i; N cat $V/w/r$i >/dev/null
          chmod 0600 $B/w/r$i; echo secret > $B/w/r$i
          N cat $V/w/r$i 2>/dev/null; echo "read of a file made private: $?"
          N mkdir $V/w/m$i $V/w/to$i; N stat $V/w/m$i >/dev/null; chown 0:0 $B/w/m$i
          N mv $V/w/m$i $V/w/to$i/ 2>/dev/null; echo "move of a directory chowned away: $?"
          echo shared > $B/w/a$i; chmod 0660 $B/w/a$i; setfacl -m u:65534:rw $B/w/a$i
          N cat $V/w/a$i >/dev/null
          setfacl -x u:65534 $B/w/a$i; setfacl -m u:2000:rw $B/w/a$i; echo secret > $B/w/a$i
          N cat $V/w/a$i 2>/dev/null; echo "read after its ACL entry was taken away: $?"
          N sh -c "echo pwned >> $V/w/a$i" 2>/dev/null; echo "append after that: $?"
          N ls $V/w/d$i >/dev/null; chmod 0700 $B/w/d$i
          N ls $V/w/d$i 2>/dev/null; echo "list of a directory made private: $?"

          N sh -c "echo mine > $V/pub/s$i"; N stat $V/pub/s$i >/dev/null
          rm $B/pub/s$i; echo root > $B/pub/s$i
          N rm -f $V/pub/s$i 2>/dev/null; echo "unlink in a sticky directory of root's file put at a name of nobody's: $?"
        done
        find $B/pub $B/w | sort | xargs stat -c '%n %u %a %s' | sed "s|$B||"
    "#;
    let through_fastfs = race_script(&m.mnt, &m.backing, script);
    let natively = race_script(&native, &native, script);
    assert_eq!(through_fastfs, natively);
    assert!(m.stats()["idmap.stale"] > 0, "{through_fastfs}");
}

/// A call on a descriptor opened before the change cannot be looked up again: it gets
/// ESTALE, never the change it is no longer entitled to. A truncate through it needs no
/// permission (the file is open for writing) and works, as natively.
#[test]
fn an_fchmod_after_a_chown_in_backing_is_refused() {
    let m = idmap_mount();
    fs::create_dir(m.b("pub")).unwrap();
    fs::set_permissions(m.b("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(m.b("w")).unwrap();
    fs::set_permissions(m.b("w"), fs::Permissions::from_mode(0o777)).unwrap();
    let file = m.m("w/f");
    let mut nobody = as_user(65534, "/usr/bin/python3");
    nobody
        .arg("-c")
        .arg(
            "import os, sys\n\
             fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)\n\
             os.fstat(fd)\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             try:\n    os.fchmod(fd, 0o6777); print('changed')\n\
             except OSError as e: print(e.strerror)\n\
             os.ftruncate(fd, 1); print('truncated')\n",
        )
        .arg(&file);
    let rest = when_ready(nobody, || {
        sh(&format!(
            "chown 0:0 {0} && chmod 0755 {0}",
            m.b("w/f").display()
        ));
    });
    assert_eq!(rest, "Stale file handle\ntruncated\n");
    assert_eq!(
        sh(&format!("stat -c '%u %a' {}", m.b("w/f").display())),
        "0 755\n"
    );
}

/// The agent acts as no one the root reserve is kept for (and without CAP_SYS_RESOURCE).
#[test]
fn users_of_an_idmap_enabled_mount_meet_the_root_reserve_as_natively() {
    crate::caller::meets_the_root_reserve_as_natively(&["idmap"]);
}

/// Container root creates as disk uid 0 through the idmapped view, which is the uid
/// ext4 keeps its reserve for; natively it is host uid 100000 and meets the reserve.
#[test]
fn container_root_meets_the_root_reserve_as_natively() {
    let small = LoopFs::new("mkfs.ext4 -q -F -m 50 -O ^has_journal", "64M");
    for dir in ["native", "data"] {
        fs::create_dir(small.path.join(dir)).unwrap();
    }
    let m = Mounted::over(&small.path, &["allow_other", "idmap"]);
    let ns = UserNs::new();
    let views = tempfile::tempdir_in(test_root()).unwrap();
    let view = IdmappedBind::new(&m.m("data"), &views.path().join("fastfs"), &ns).unwrap();
    let native_view = IdmappedBind::new(
        &small.path.join("native"),
        &views.path().join("native"),
        &ns,
    )
    .unwrap();
    let fill = |dir: &Path| -> u64 {
        let out = run(
            Who::NsRoot,
            dir,
            &ns,
            "dd if=/dev/zero of=fill bs=64k 2>&1 >/dev/null | grep -c 'No space'; stat -c '%u %s' fill",
        );
        let last = out.lines().last().unwrap().to_string();
        assert!(out.contains("\n1\n"), "no ENOSPC: {out}");
        let (owner, size) = last.split_once(' ').unwrap();
        assert_eq!(owner, "0", "container root's file is disk uid 0's: {out}");
        size.parse().unwrap()
    };
    // Long symlinks, directories and directories grown by long names take blocks: on a
    // filesystem full but for the reserve, as many as natively (a few, in what the data
    // left over).
    let mkdirs = |dir: &Path| -> u32 {
        let out = run(
            Who::NsRoot,
            dir,
            &ns,
            "t=$(printf '%080d' 0); n=0; while [ $n -lt 2000 ] && ln -s $t l$n 2>/dev/null; \
             do n=$((n+1)); done; m=$n; while [ $n -lt 4000 ] && mkdir d$n 2>/dev/null; \
             do n=$((n+1)); done; while [ $n -lt 6000 ] && (: > $(printf 'f%0240d' $n)) \
             2>/dev/null; do n=$((n+1)); done; echo $m $n",
        );
        let counts = out.lines().nth(1).unwrap().to_string();
        let (links, all) = counts.split_once(' ').unwrap();
        let (links, all): (u32, u32) = (links.parse().unwrap(), all.parse().unwrap());
        assert!(links < 2000 && all < 6000, "no ENOSPC: {out}");
        all
    };
    let natively = fill(&native_view.target);
    let dirs_natively = mkdirs(&native_view.target);
    sh(&format!("rm -rf {}/native/*", small.path.display()));
    let through = fill(&view.target);
    let dirs_through = mkdirs(&view.target);
    assert!(
        natively.abs_diff(through) <= 1 << 20,
        "container root wrote {natively} bytes natively, {through} through fastfs"
    );
    assert!(
        dirs_natively.abs_diff(dirs_through) <= 16,
        "container root made {dirs_natively} directories and long symlinks natively, \
         {dirs_through} through fastfs"
    );
}

/// The kernel may never see the attributes of an entry of a directory listing: the
/// entry may not fit the reply. A listing made to end just before a node whose owner
/// changed in BACKING must not make the daemon take the new owner as what the kernel
/// checked against.
#[test]
fn an_entry_that_did_not_fit_a_listing_is_not_taken_as_seen() {
    let m = idmap_mount();
    sh(&format!(
        "cd {} && mkdir -m 755 rd && for i in $(seq 100 199); do echo x > rd/f$i; done",
        m.backing.display()
    ));
    // The victim: the 51st entry in the directory's own order, nobody's and private.
    let victim = sh(&format!(
        "ls -f {} | grep '^f' | sed -n 51p",
        m.b("rd").display()
    ))
    .trim()
    .to_string();
    let victim_b = m.b(&format!("rd/{victim}"));
    sh(&format!(
        "echo mine > {0} && chown 65534:65534 {0} && chmod 600 {0}",
        victim_b.display()
    ));
    let mut nobody = as_user(65534, "/usr/bin/python3");
    nobody
        .args(["-c", LISTING_ATTACK])
        .arg(m.m("rd"))
        .arg(&victim);
    let rest = when_ready(nobody, || {
        sh(&format!(
            "chown 0:0 {0} && echo 'root secret' > {0}",
            victim_b.display()
        ));
    });
    assert!(
        rest.contains("listed 25 entries"),
        "the listing did not end before the victim: {rest}"
    );
    assert!(rest.contains("read: Permission denied"), "{rest}");
    assert!(rest.contains("chmod: Operation not permitted"), "{rest}");
    assert_eq!(
        sh(&format!("stat -c '%u %a' {}", victim_b.display())),
        "0 600\n"
    );
}

/// Lists `argv[1]` up to `argv[2]`, looks at it (the kernel caches its attributes), then
/// after "go" on stdin lists again from 26 entries before it with a 4096-byte buffer
/// (25 entries of READDIRPLUS fit, the victim's does not) and uses the victim at once.
const LISTING_ATTACK: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
d, victim = sys.argv[1], sys.argv[2]
def getdents(fd, size):
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(217, fd, buf, size)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    out, p, raw = [], 0, buf.raw[:n]
    while p < n:
        _, off, reclen, _ = struct.unpack_from("<QqHB", raw, p)
        out.append((raw[p + 19:p + reclen].split(b"\0")[0].decode(), off))
        p += reclen
    return out
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
ents = []
while True:
    batch = getdents(fd, 4096)
    if not batch:
        break
    ents += batch
    if victim in [n for n, _ in batch]:
        break
os.close(fd)
idx = [n for n, _ in ents].index(victim)
path = os.path.join(d, victim)
os.stat(path)
print("ready", flush=True)
sys.stdin.readline()
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
try:
    os.stat(os.path.join(d, "no-such-name"))
except OSError:
    pass
os.lseek(fd, ents[idx - 26][1], 0)
print("listed", len(getdents(fd, 4096)), "entries")
try:
    print("read:", open(path).read().strip())
except OSError as e:
    print("read:", e.strerror)
try:
    os.chmod(path, 0o4777)
    print("chmod: done")
except OSError as e:
    print("chmod:", e.strerror)
"#;

/// Holds `argv[1]` open for writing with four threads writing to it (each write makes
/// the kernel drop the attributes of a reply that races with it), says "ready", and on a
/// line from stdin forces attribute refreshes until the file shows uid 0; then tries to
/// read it and make it set-uid, and says how that went.
const REFRESH_RACE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile int stop;
static int out;

static void *writer(void *arg) {
    (void)arg;
    while (!stop) pwrite(out, "x", 1, 65536);
    return NULL;
}

int main(int argc, char **argv) {
    const char *path = argv[1];
    pthread_t threads[4];
    char line[8], data[32] = {0};
    struct statx sx;
    int seen_root = 0, fd, chmodded;
    out = open(path, O_WRONLY);
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, writer, NULL);
    struct stat st;
    stat(path, &st);
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int i = 0; i < 2000 && !seen_root; i++)
        if (statx(AT_FDCWD, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &sx) == 0)
            seen_root = sx.stx_uid == 0;
    fd = open(path, O_RDONLY);
    if (fd >= 0) read(fd, data, 11);
    else strcpy(data, strerror(errno));
    chmodded = chmod(path, 04777) == 0;
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    printf("seen root %d read %s chmod %s\n", seen_root, data, chmodded ? "done" : "refused");
    return 0;
}
"#;

/// The kernel drops the attributes of a reply that races with a write to the same file
/// (`attr_version`). A user writing to its file while root takes it over in BACKING
/// races the kernel's refreshes, so that the kernel keeps the old owner while it has
/// been sent the new one; the daemon must not take the new one as what the kernel holds.
#[test]
fn a_refresh_the_kernel_drops_cannot_be_used_to_keep_an_old_owner() {
    let m = idmap_mount();
    fs::create_dir(m.b("w")).unwrap();
    fs::set_permissions(m.b("w"), fs::Permissions::from_mode(0o777)).unwrap();
    let tools = tempfile::tempdir_in(test_root()).unwrap();
    let program = tools.path().join("race");
    fs::write(program.with_extension("c"), REFRESH_RACE).unwrap();
    sh(&format!(
        "gcc -pthread -o {0} {0}.c && chmod 755 {1} {0}",
        program.display(),
        tools.path().display()
    ));
    let mut results = Vec::new();
    for round in 0..10 {
        let file = m.b(&format!("w/f{round}"));
        sh(&format!(
            "echo mine > {0} && chown 65534:65534 {0} && chmod 600 {0}",
            file.display()
        ));
        let mut nobody = as_user(65534, &program);
        nobody.arg(m.m(&format!("w/f{round}")));
        let line = when_ready(nobody, || {
            sh(&format!(
                "chown 0:0 {0} && chmod 600 {0} && echo 'root secret' | dd of={0} conv=notrunc status=none",
                file.display()
            ));
        });
        results.push(format!(
            "{}; backing {}",
            line.trim(),
            sh(&format!("stat -c '%u %a' {}", file.display())).trim()
        ));
    }
    let report = results.join("\n");
    assert!(
        report.contains("seen root 1"),
        "the new owner was never seen:\n{report}"
    );
    assert!(!report.contains("root secret"), "{report}");
    assert!(!report.contains("chmod done"), "{report}");
    assert!(
        results.iter().all(|r| r.ends_with("backing 0 600")),
        "{report}"
    );
}

/// An ACL set through the mount changes the mode and ACL the daemon compares with; the
/// owner's next calls on its open file go on as natively.
#[test]
fn an_owner_changes_its_open_file_after_setting_an_acl_as_natively() {
    let m = idmap_mount();
    let native = m.native_dir("native");
    make_traversable(&native);
    let script = "import os, subprocess, sys\n\
        f = os.path.join(sys.argv[1], 'f')\n\
        fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o640)\n\
        subprocess.run(['setfacl', '-m', 'u:2000:r', f], check=True)\n\
        for name, call in [('fchmod', lambda: os.fchmod(fd, 0o600)),\n\
                           ('futimens', lambda: os.utime(fd, (1, 1))),\n\
                           ('ftruncate', lambda: os.ftruncate(fd, 3)),\n\
                           ('fsetxattr', lambda: os.setxattr(fd, 'user.k', b'v'))]:\n\
        \x20   try:\n\
        \x20       call(); print(name, 'ok')\n\
        \x20   except OSError as e:\n\
        \x20       print(name, e.strerror)\n";
    for dir in [&m.backing, &native] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run = |dir: &Path| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(script)
            .arg(dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let natively = run(&native);
    assert_eq!(run(&m.mnt), natively);
    assert!(natively.contains("fchmod ok"), "{natively}");
}

/// A change in BACKING that only adds permission is taken in stride: a working
/// directory, the root of an idmapped bind and an open directory keep working. (A
/// change that takes permission away or changes an owner retires the node, and those
/// then get ESTALE: see README.)
#[test]
fn a_permission_added_in_backing_leaves_working_directories_and_binds_alone() {
    let m = idmap_mount();
    sh(&format!(
        "cd {} && mkdir -p vol/sub && echo data > vol/sub/f && chown -R 1000:1000 vol \
         && chmod 755 vol vol/sub && chmod 644 vol/sub/f",
        m.backing.display()
    ));
    let ns = UserNs::new();
    let views = tempfile::tempdir_in(test_root()).unwrap();
    let view = IdmappedBind::new(&m.m("vol/sub"), &views.path().join("sub"), &ns).unwrap();
    let in_view = |script: &str| run(Who::Host(MAP_BASE + 1000), &view.target, &ns, script);
    let in_mount = |script: &str| run(Who::Host(1000), &m.m("vol/sub"), &ns, script);
    assert!(in_view("cat f").contains("-> 0"));
    // A shell whose working directory is the directory, across the change.
    let mut shell = as_user(1000, "sh");
    shell
        .args([
            "-c",
            "cat f >/dev/null && echo ready && read go && cat f && touch g2 && echo done",
        ])
        .current_dir(m.m("vol/sub"));
    let rest = when_ready(shell, || {
        sh(&format!(
            "chmod 775 {0}/vol/sub && chmod 664 {0}/vol/sub/f && chmod 777 {0}/vol",
            m.backing.display()
        ));
    });
    assert!(rest.ends_with("done\n"), "{rest}");
    for result in [
        in_view("cat f && touch g && ls"),
        in_mount("cat f && touch h && ls"),
    ] {
        assert!(result.contains("-> 0"), "{result}");
    }
    assert_eq!(m.stats()["idmap.retired"], 0);
}

/// The owner changing its directory's mode through the mount, while attribute
/// refreshes race with it, retires nothing: a user whose working directory it is goes
/// on undisturbed.
#[test]
fn an_owner_toggling_a_mode_through_the_mount_disturbs_no_one() {
    let m = idmap_mount();
    sh(&format!(
        "cd {} && mkdir d && echo x > d/f && chown -R 1000:1000 d && chmod 755 d",
        m.backing.display()
    ));
    let d = m.m("d");
    let script = format!(
        "for t in 1 2 3; do (for i in $(seq 300); do stat --cached=never -c %a {d} >/dev/null; done) & done; \
         for i in $(seq 300); do chmod 755 {d}; chmod 775 {d}; done; wait",
        d = d.display()
    );
    let toggled = run(Who::Host(1000), &m.mnt, &UserNs::new(), &script);
    assert!(toggled.contains("-> 0"), "{toggled}");
    let other = run(Who::Host(2000), &d, &UserNs::new(), "cat f && ls");
    assert!(other.contains("-> 0"), "{other}");
    assert_eq!(m.stats()["idmap.retired"], 0);
}

/// A creation through an idmapped view runs with CAP_DAC_OVERRIDE (the kernel checked
/// the parent). When the name turns out to exist (the kernel had cached it as absent,
/// and it was made in BACKING since), that right must not open the file: the creator
/// gets what it gets natively.
#[test]
fn a_create_through_an_idmapped_view_never_opens_a_file_it_did_not_make() {
    let m = idmap_mount();
    let native = m.native_dir("native");
    let ns = UserNs::new();
    let views = tempfile::tempdir_in(test_root()).unwrap();
    for dir in [&m.backing, &native] {
        fs::create_dir(dir.join("pub")).unwrap();
        fs::set_permissions(dir.join("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let view = IdmappedBind::new(&m.mnt, &views.path().join("fastfs"), &ns).unwrap();
    let native_view = IdmappedBind::new(&native, &views.path().join("native"), &ns).unwrap();
    let attempt = |dir: &Path, backing: &Path| -> String {
        let mut seen = String::new();
        for who in [Who::Host(MAP_BASE + 1000), Who::NsRoot] {
            // The name is absent (and cached as absent) ...
            seen += &run(who, dir, &ns, "cat pub/s");
            // ... until a user outside the idmap makes a private file there in BACKING.
            sh(&format!(
                "printf theirs > {0}/pub/s && chown 70000:70000 {0}/pub/s && chmod 600 {0}/pub/s",
                backing.display()
            ));
            seen += &run(who, dir, &ns, "(: >> pub/s); (: > pub/s); cat pub/s");
            seen += &sh(&format!("cat {}/pub/s; rm {0}/pub/s", backing.display()));
        }
        seen
    };
    let through_fastfs = attempt(&view.target, &m.backing);
    let natively = attempt(&native_view.target, &native);
    assert_eq!(through_fastfs, natively);
    assert_eq!(
        natively.matches("Permission denied").count(),
        6,
        "{natively}"
    );
    assert_eq!(natively.matches("theirs").count(), 2, "{natively}");
}
