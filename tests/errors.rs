//! Bad input and damaged stores: one-line errors and documented exit codes.

use std::process::Output;

use crate::common::{self, Env};

/// Runs and expects failure with `code`, a one-line `imgstore:` error
/// containing `needle`, a hint line, and no panic.
fn fails(cmd: &mut assert_cmd::Command, code: i32, needle: &str) -> Output {
    let out = cmd.assert().failure().get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), code, "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("imgstore: ") || first.starts_with("error: "),
        "{stderr}"
    );
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    out
}

/// A put keeps the manifest it builds in a temporary file: where none can
/// be made, it fails before publishing anything and says what to set.
#[test]
fn unusable_tmpdir_is_named_with_what_to_do() {
    let env = Env::new();
    let img = env.file("img", &common::random(100_000, 5));
    fails(
        env.cmd()
            .env("TMPDIR", env.path("no-such-dir"))
            .args(["put", "lab/app:v1"])
            .arg(&img),
        1,
        "set TMPDIR to a writable directory",
    );
    assert!(common::list_files(&env.store().join("refs")).is_empty());
    env.put("lab/app:v1", &img);
}

#[test]
fn bad_input_files() {
    let env = Env::new();
    fails(
        env.cmd().args(["put", "lab/app:v1", "/nonexistent/image.sif"]),
        3,
        "not found",
    );
    fails(
        env.cmd().args(["put", "lab/app:v1"]).arg(env.dir.path()),
        2,
        "is a directory",
    );
    // Nothing was published.
    assert!(common::list_files(&env.store().join("refs")).is_empty());
}

#[test]
fn bad_names_are_rejected_before_the_store_is_touched() {
    let env = Env::uninit();
    let f = env.file("x.img", b"data");
    let long_tag = format!("lab/app:{}", "t".repeat(200));
    for name in [
        "../x:t",
        "lab/app",
        "lab/app:",
        "Lab/App:v1",
        &long_tag,
        "lab/app:t/../../x",
        "/etc:x",
    ] {
        // No store exists: a name error must come first.
        fails(env.cmd().args(["put", name]).arg(&f), 2, "invalid name");
    }
    assert!(!env.store().exists());
}

#[test]
fn unknown_refs_and_ids() {
    let env = Env::new();
    fails(
        env.cmd().args(["get", "lab/none:v1", "-o", "-"]),
        3,
        "ref lab/none:v1 not found",
    );
    fails(
        env.cmd().args(["get", "blake3:abcdef12", "-o", "-"]),
        3,
        "not found",
    );
    fails(env.cmd().args(["inspect", "lab/none:v1"]), 3, "not found");
    fails(env.cmd().args(["rm", "lab/none:v1"]), 3, "not found");
    fails(
        env.cmd().args(["get", "blake3:xyz", "-o", "-"]),
        2,
        "invalid name",
    );
}

#[test]
fn missing_store_and_no_store_given() {
    let env = Env::uninit();
    fails(env.cmd().arg("ls"), 3, "is not an imgstore store");
    let mut c = assert_cmd::Command::cargo_bin("imgstore").unwrap();
    c.env_remove("IMGSTORE_STORE").arg("ls");
    fails(&mut c, 2, "no store given");
}

#[test]
fn init_refuses_non_empty_directories_and_existing_stores() {
    let env = Env::new();
    fails(env.cmd().arg("init"), 2, "already an imgstore store");
    let other = env.path("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.txt"), b"keep me").unwrap();
    fails(env.cmd().arg("init").arg(&other), 2, "not empty");
    assert_eq!(std::fs::read(other.join("precious.txt")).unwrap(), b"keep me");
    fails(
        env.cmd()
            .args(["init", "--chunk-size", "3000"])
            .arg(env.path("new")),
        2,
        "power of two",
    );
}

#[test]
fn newer_store_format_is_refused_and_nothing_is_written() {
    let env = Env::new();
    let f = env.file("x.img", &common::image(100_000, 1));
    env.put("lab/app:v1", &f);
    let config = env.store().join("config");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["version"] = 99.into();
    std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let before = common::list_files(&env.store());
    fails(env.cmd().args(["put", "lab/app:v2"]).arg(&f), 7, "version 99");
    fails(env.cmd().args(["get", "lab/app:v1", "-o", "-"]), 7, "newer");
    fails(env.cmd().arg("ls"), 7, "upgrade imgstore");
    assert_eq!(common::list_files(&env.store()), before);
}

#[test]
fn corrupt_config_is_named() {
    let env = Env::new();
    std::fs::write(env.store().join("config"), b"{ not json").unwrap();
    fails(env.cmd().arg("ls"), 4, "corrupt config");
}

/// Flips one byte in every pack's data region.
fn damage_packs(env: &Env) {
    for f in common::list_files(&env.store().join("packs")) {
        let p = env.store().join("packs").join(f);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[200] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }
}

#[test]
fn corrupt_chunk_fails_get_and_writes_no_output() {
    let env = Env::new();
    let f = env.file("x.img", &common::random(1 << 20, 2));
    env.put("lab/app:v1", &f);
    damage_packs(&env);
    let target = env.path("out.img");
    let out = fails(
        env.cmd().args(["get", "lab/app:v1", "-o"]).arg(&target),
        4,
        "corrupt pack packs/",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chunk") && stderr.contains("offset"), "{stderr}");
    assert!(!target.exists(), "a partial output file was left");
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("imgstore-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary output left behind");
    // To a stream, each chunk is checked before it goes out.
    let out = fails(
        env.cmd().args(["get", "lab/app:v1", "-o", "-"]),
        4,
        "corrupt pack packs/",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hash mismatch") || stderr.contains("zstd"),
        "{stderr}"
    );
}

#[test]
fn corrupt_manifest_is_named() {
    let env = Env::new();
    let f = env.file("x.img", &common::image(300_000, 3));
    let r = env.put("lab/app:v1", &f);
    let hex = r["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string();
    let m = env.store().join("manifests").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&m).unwrap();
    bytes[70] ^= 1;
    std::fs::write(&m, bytes).unwrap();
    fails(
        env.cmd().args(["get", "lab/app:v1", "-o", "-"]),
        4,
        "corrupt manifest",
    );
}

#[test]
fn get_into_missing_directory_fails_cleanly() {
    let env = Env::new();
    let f = env.file("x.img", b"hello");
    env.put("lab/app:v1", &f);
    fails(
        env.cmd()
            .args(["get", "lab/app:v1", "-o", "/nonexistent-dir/out.img"]),
        1,
        "/nonexistent-dir",
    );
}

/// Disk full: the store on a small tmpfs (needs root, as CI runs).
#[test]
fn full_disk_fails_cleanly_and_store_stays_usable() {
    if !nix_is_root() {
        eprintln!("SKIPPED full_disk test: needs root to mount a tmpfs");
        return;
    }
    let env = Env::uninit();
    let mnt = env.path("small");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let store = mnt.join("store");
    let cmd = || {
        let mut c = env.cmd();
        c.env("IMGSTORE_STORE", &store);
        c
    };
    cmd().arg("init").assert().success();
    let small = env.file("small.img", &common::random(1 << 20, 4));
    let big = env.file("big.img", &common::random(6 << 20, 5));
    cmd()
        .args(["put", "lab/app:small"])
        .arg(&small)
        .assert()
        .success();
    // Fill the filesystem, then try a put that cannot fit.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 16 << 20]);
    let out = cmd()
        .args(["put", "lab/app:big"])
        .arg(&big)
        .assert()
        .failure()
        .get_output()
        .clone();
    assert_eq!(common::code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no space left"));
    // Nothing half-visible; the earlier image is intact.
    cmd().args(["get", "lab/app:big", "-o", "-"]).assert().failure();
    let got = cmd()
        .args(["get", "lab/app:small", "-o", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == std::fs::read(&small).unwrap());
    // Get into a full filesystem leaves no partial output.
    let target = mnt.join("out.img");
    let out = cmd()
        .args(["get", "lab/app:small", "-o"])
        .arg(&target)
        .assert()
        .failure()
        .get_output()
        .clone();
    assert_eq!(common::code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!target.exists());
    // After space is freed, the same put succeeds.
    std::fs::remove_file(&filler).unwrap();
    cmd().args(["put", "lab/app:big"]).arg(&big).assert().success();
    let got = cmd()
        .args(["get", "lab/app:big", "-o", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == std::fs::read(&big).unwrap());
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
