//! SIGKILL and crash points during put: nothing half-visible, re-put works.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Env, Kind};

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

fn crash_at_every_put_step(kind: Kind) {
    let env = Env::on(kind);
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

fn sigkill_at_random_moments(kind: Kind) {
    let env = Env::on(kind);
    let old = common::image(1 << 20, 3);
    env.put("lab/app:old", &env.file("old.img", &old));
    let new = common::image(24 << 20, 4);
    let fnew = env.file("new.img", &new);
    // Deterministic spread of kill times across the put.
    for (i, ms) in [5u64, 30, 80, 150, 300, 600].into_iter().enumerate() {
        let mut child = env
            .process("a")
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

/// Holds a put of an 8 MiB file after it read its first block (of four),
/// lets `change` alter the file, and expects the put to refuse it and
/// publish nothing.
fn change_while_reading(change: impl FnOnce(&std::path::Path)) {
    let env = Env::new();
    let data = common::image(8 << 20, 5);
    let f = env.file("changing.img", &data);
    let child = common::spawn_held(
        &env,
        "put-reading",
        &["put", "lab/app:new", f.to_str().unwrap()],
        &[],
    );
    change(&f);
    common::release(&env, "put-reading");
    let out = child.wait_with_output().unwrap();
    assert_eq!(common::code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed while it was being read"));
    assert!(
        common::list_files(&env.store().join("refs")).is_empty(),
        "a ref was published"
    );
}

#[test]
fn input_appended_to_while_the_put_reads_it_is_refused() {
    change_while_reading(|f| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(f)
            .unwrap()
            .write_all(b"more bytes")
            .unwrap();
    });
}

/// Bytes rewritten in place, the size kept, both where the put has read
/// and where it has not, and the mtime set back as `rsync --inplace -t`
/// does (or as a write in the same tick of the kernel's file clock leaves
/// it): only the ctime shows the change.
#[test]
fn input_rewritten_in_place_while_the_put_reads_it_is_refused() {
    change_while_reading(|f| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        for at in [4096u64, 6 << 20] {
            file.write_all_at(&[0xa5; 4096], at).unwrap();
        }
        file.set_modified(mtime).unwrap();
        assert_eq!(file.metadata().unwrap().modified().unwrap(), mtime);
    });
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

/// What a crash can leave of an index that was being created is derived
/// data holding nothing: the next command creates it again and goes on.
/// (Before, it failed with "CURRENT is missing" or "has no store id" until
/// someone ran `imgstore index rebuild`.)
#[test]
fn a_half_created_index_is_created_again() {
    let env = Env::new();
    let data = common::image(3 << 20, 7);
    let f = env.file("x.img", &data);
    let db = env.path("index-a").join("db");

    // Killed while RocksDB created the database: no CURRENT yet.
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("LOG"), b"RocksDB version: 11.8.1\n").unwrap();
    std::fs::write(db.join("LOCK"), b"").unwrap();
    std::fs::write(db.join("IDENTITY"), b"8a3c1f40-0e7b-4b55-9c1e-2f7d1a9e6b21\n").unwrap();
    std::fs::write(db.join("MANIFEST-000001"), [0u8; 64]).unwrap();
    std::fs::write(db.join("000003.log"), b"").unwrap();
    let out = env
        .cmd()
        .env("IMGSTORE_LOG", "info")
        .args(["put", "lab/app:v1"])
        .arg(&f)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("half-created"), "{stderr}");
    assert!(env.get("lab/app:v1") == data);

    // Killed after the database was created, before its first write.
    std::fs::remove_dir_all(env.path("index-a")).unwrap();
    let out = env
        .cmd()
        .env("IMGSTORE_TEST_CRASH", "index-created")
        .args(["get", "lab/app:v1", "-o", "-"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the crash point did not fire");
    assert!(db.join("CURRENT").exists());
    assert!(env.get("lab/app:v1") == data);
    env.put("lab/app:v2", &env.file("y.img", &common::edit(&data, 3, 8)));

    // An index that holds entries and lost its CURRENT is damage, not a
    // half-created index: it stays an error that names the rebuild.
    std::fs::remove_file(db.join("CURRENT")).unwrap();
    let out = env.cmd().args(["get", "lab/app:v1", "-o", "-"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 1, "{stderr}");
    assert!(stderr.contains("imgstore index rebuild"), "{stderr}");
}

crate::on_both_backends!(crash_at_every_put_step, sigkill_at_random_moments,);
