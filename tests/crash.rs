//! SIGKILL and crash points during put: nothing half-visible, re-put works.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Env};

/// Every named step of a put, in order.
use imgstore_store::hold::PUT_STEPS as STEPS;

/// Checks that the store is usable: the earlier image is intact and the
/// interrupted ref is either absent or complete.
fn check_after_crash(env: &Env, old: &[u8], new: &[u8]) {
    assert!(env.get("lab/app:old") == old, "previous image damaged");
    let out = env
        .cmd()
        .args(["get", "lab/app:new", "-o", "-"])
        .output()
        .unwrap();
    if out.status.success() {
        assert!(out.stdout == new, "a visible image has the wrong bytes");
    } else {
        assert_eq!(common::code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn crash_at_every_put_step() {
    let env = Env::new();
    let old = common::image(2 << 20, 1);
    let new = common::edit(&old, 4, 2);
    let (fo, fnew) = (env.file("old.img", &old), env.file("new.img", &new));
    env.put("lab/app:old", &fo);
    for step in STEPS {
        let out = env
            .cmd()
            .env("IMGSTORE_TEST_CRASH", step)
            .args(["put", "lab/app:new"])
            .arg(&fnew)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: the crash point did not fire");
        check_after_crash(&env, &old, &new);
        let visible = env
            .cmd()
            .args(["get", "lab/app:new", "-o", "-"])
            .output()
            .unwrap()
            .status
            .success();
        assert_eq!(visible, *step == "put-after-ref", "{step}: ref visibility");
        // Re-running the put succeeds and the image is right.
        env.put("lab/app:new", &fnew);
        assert!(env.get("lab/app:new") == new, "{step}: re-put");
        env.cmd().args(["rm", "lab/app:new"]).assert().success();
    }
}

#[test]
fn sigkill_at_random_moments() {
    let env = Env::new();
    let old = common::image(1 << 20, 3);
    env.put("lab/app:old", &env.file("old.img", &old));
    let new = common::image(24 << 20, 4);
    let fnew = env.file("new.img", &new);
    let bin = assert_cmd::cargo::cargo_bin("imgstore");
    // Deterministic spread of kill times across the put.
    for (i, ms) in [5u64, 30, 80, 150, 300, 600].into_iter().enumerate() {
        let mut child = Command::new(&bin)
            .env("IMGSTORE_STORE", env.store())
            .env("IMGSTORE_INDEX_DIR", env.path("index-a"))
            .args(["put", "lab/app:new"])
            .arg(&fnew)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        check_after_crash(&env, &old, &new);
        if i % 2 == 1 {
            let _ = env.cmd().args(["rm", "lab/app:new"]).output();
        }
    }
    env.put("lab/app:new", &fnew);
    assert!(env.get("lab/app:new") == new);
}

#[test]
fn input_that_changes_during_put_is_refused() {
    let env = Env::new();
    let data = common::image(3 << 20, 5);
    let f = env.file("growing.img", &data);
    let child = common::spawn_held(
        &env,
        "put-after-lookup",
        &["put", "lab/app:new", f.to_str().unwrap()],
        &[],
    );
    // A writer appends while the put is still working on the file.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"more bytes")
        .unwrap();
    common::release(&env, "put-after-lookup");
    let out = child.wait_with_output().unwrap();
    assert_eq!(common::code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed while it was being read"));
    assert!(
        common::list_files(&env.store().join("refs")).is_empty(),
        "a ref was published"
    );
}

#[test]
fn put_paused_past_its_lease_gives_up() {
    let env = Env::new();
    let f = env.file("x.img", &common::image(1 << 20, 6));
    let child = common::spawn_held(
        &env,
        "put-after-manifest",
        &["put", "lab/app:new", f.to_str().unwrap()],
        &[("IMGSTORE_LEASE_SECS", "2")],
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    common::release(&env, "put-after-manifest");
    std::thread::sleep(Duration::from_secs(4));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(common::code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lease expired"));
    assert!(
        common::list_files(&env.store().join("refs")).is_empty(),
        "a ref was published"
    );
    // Run again without the pause: it succeeds.
    env.put("lab/app:new", &f);
}
