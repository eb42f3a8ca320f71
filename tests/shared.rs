//! A store shared by a group: users with different umasks all put, get and gc.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common;

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Runs the copied binary as `user` with `umask`.
fn run_as(user: &str, umask: &str, bin: &Path, store: &Path, args: &str) -> std::process::Output {
    let index = store.parent().unwrap().join(format!("index-{user}"));
    let script = format!(
        "umask {umask}; IMGSTORE_STORE={} IMGSTORE_INDEX_DIR={} {} {args}",
        store.display(),
        index.display(),
        bin.display()
    );
    Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", &script])
        .output()
        .unwrap()
}

#[test]
fn two_users_with_umasks_077_and_022_share_a_store() {
    if !is_root() || !sh("command -v runuser >/dev/null && command -v useradd >/dev/null") {
        eprintln!("SKIPPED shared-store test: needs root, runuser and useradd");
        return;
    }
    let group = "imgshare";
    let (a, b) = ("imgshare-a", "imgshare-b");
    sh(&format!("getent group {group} >/dev/null || groupadd {group}"));
    for u in [a, b] {
        sh(&format!(
            "id -u {u} >/dev/null 2>&1 || useradd -M -N -g {group} {u}"
        ));
    }
    // A world-traversable work dir with the binary and inputs in it.
    let dir = tempfile::Builder::new()
        .prefix("imgshare")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("imgstore");
    std::fs::copy(assert_cmd::cargo::cargo_bin("imgstore"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    assert!(sh(&format!("chgrp {group} {}", store.display())));
    // An admin made it: owned by root, the group's, not yet setgid; the
    // first user's `init --shared` must not need to own it when it is
    // already group-writable.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let img_a = common::image(2 << 20, 1);
    let img_b = common::edit(&img_a, 3, 2);
    for (name, data) in [("a.img", &img_a), ("b.img", &img_b)] {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let d = dir.path().display();
    ok(run_as(a, "077", &bin, &store, "init -q --shared"));
    ok(run_as(
        a,
        "077",
        &bin,
        &store,
        &format!("put -q lab/app:a {d}/a.img"),
    ));
    ok(run_as(
        b,
        "022",
        &bin,
        &store,
        &format!("put -q lab/app:b {d}/b.img"),
    ));
    assert!(ok(run_as(b, "022", &bin, &store, "get lab/app:a -o -")) == img_a);
    assert!(ok(run_as(a, "077", &bin, &store, "get lab/app:b -o -")) == img_b);
    ok(run_as(b, "022", &bin, &store, "rm -q lab/app:a"));
    ok(run_as(a, "077", &bin, &store, "gc -q --grace 0s"));
    ok(run_as(b, "022", &bin, &store, "gc -q --grace 0s"));
    assert!(ok(run_as(a, "077", &bin, &store, "get lab/app:b -o -")) == img_b);
    ok(run_as(b, "022", &bin, &store, "verify -q"));
    // Every file group-readable, every directory group-writable and setgid.
    let mut stack = vec![store.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let m = e.metadata().unwrap();
            let mode = m.permissions().mode();
            if m.is_dir() {
                assert!(mode & 0o2070 == 0o2070, "{} is {mode:o}", e.path().display());
                stack.push(e.path());
            } else {
                assert!(mode & 0o040 != 0, "{} is {mode:o}", e.path().display());
            }
        }
    }
}
