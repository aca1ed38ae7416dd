//! rsync, the copy tool that never knows it is on FUSE, round-trips a tree exactly.

use crate::common::*;

/// A tree with nested directories, symlinks, hard links, xattrs, a sparse file, unusual
/// modes and old times.
fn make_tree(root: &str) {
    sh(&format!(
        r#"mkdir -p {root} && cd {root}
        mkdir -p a/b/c d/e
        for i in $(seq 1 200); do echo "file $i" > a/b/c/f$i; done
        head -c 3M /dev/urandom > a/big
        ln a/big d/big-hardlink
        ln -s ../a/b/c/f1 d/rel-link
        ln -s /etc/passwd d/abs-link
        truncate -s 64M d/sparse && printf tail >> d/sparse
        printf x | dd of=d/sparse bs=1 seek=1000000 conv=notrunc status=none
        chmod 0751 a/b; chmod 0600 a/b/c/f2; chmod 4755 a/b/c/f3; chmod 1777 d/e
        setfattr -n user.note -v "kept" a/b/c/f4
        setfattr -n user.dirnote -v "dir" a/b
        mkfifo d/fifo
        # rsync skips setting a time that equals the destination's to the second, so
        # give everything a time in the past, as real trees have.
        find . -exec touch -h -d '2020-05-06 07:08:09.123456789' {{}} +
        touch -h -d '2001-01-01 00:00:00' d/rel-link
        touch -d '1999-12-31 23:59:59' a/b/c/f5 d/e"#
    ));
}

fn assert_same_tree(a: &str, b: &str) {
    // diff calls two fifos "different"; the listing below compares their type.
    sh(&format!("diff -r --no-dereference -x fifo {a} {b}"));
    let listing = |p: &str| {
        sh(&format!(
            "cd {p} && find . -printf '%p %y %m %s %T@ %l %n\\n' | sort && getfattr -R -d -m user. . 2>/dev/null | sort"
        ))
    };
    assert_eq!(listing(a), listing(b));
}

#[test]
fn rsync_into_and_within_the_mount_is_exact_and_idempotent() {
    let m = Mounted::new();
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let src = work.path().join("src").display().to_string();
    make_tree(&src);
    let into = m.m("copy").display().to_string();
    let within = m.m("copy2").display().to_string();

    sh(&format!("rsync -aHXS {src}/ {into}/"));
    assert_same_tree(&src, &into);
    assert_same_tree(&src, &m.b("copy").display().to_string());
    let big = sh(&format!("stat -c %i {into}/a/big {into}/d/big-hardlink"));
    let inos: Vec<&str> = big.lines().collect();
    assert_eq!(inos[0], inos[1], "hard link lost");
    let sparse_blocks: u64 = sh(&format!("stat -c %b {into}/d/sparse"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        sparse_blocks < 1024,
        "sparse file filled: {sparse_blocks} blocks"
    );

    let again = sh(&format!("rsync -aHXS -i {src}/ {into}/"));
    assert_eq!(again, "", "a second rsync transferred something");

    sh(&format!("rsync -aHXS {into}/ {within}/"));
    assert_same_tree(&src, &within);
    let again = sh(&format!("rsync -aHXS -i {into}/ {within}/"));
    assert_eq!(
        again, "",
        "a second rsync within the mount transferred something"
    );
}
