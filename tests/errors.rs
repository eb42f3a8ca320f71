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

/// A bug that panics in a compression job (on a pool thread) ends the put
/// with an error, not an abort of the process, and publishes nothing.
#[test]
fn a_panic_in_a_compression_job_is_an_error_of_the_put() {
    let env = Env::new();
    let img = env.file("img", &common::text(4 << 20, 9));
    let out = env
        .cmd()
        .env("IMGSTORE_TEST_PANIC", "put-encode")
        .args(["put", "lab/app:v1"])
        .arg(&img)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A bug, not the user's input: exit 1, never 2.
    assert_eq!(common::code(&out), 1, "{stderr}");
    assert!(
        stderr.contains("imgstore: internal error: in the put: a compression job panicked"),
        "{stderr}"
    );
    assert!(common::list_files(&env.store().join("refs")).is_empty());
    env.put("lab/app:v1", &img);
}

/// A bug that panics in a get's read (on its pool, carried to its fetch
/// thread) ends the get with an error, not an abort or a panic of the
/// process, and leaves no file, neither the output nor a temporary one.
#[test]
fn a_panic_in_a_read_is_an_error_of_the_get() {
    let env = Env::new();
    let data = common::text(4 << 20, 9);
    let img = env.file("img", &data);
    env.put("lab/app:v1", &img);
    let outdir = env.dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = env
        .cmd()
        .env("IMGSTORE_TEST_PANIC", "get-fetch")
        .args(["get", "lab/app:v1", "-o"])
        .arg(outdir.join("x.img"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(
            "imgstore: internal error: in the get: the get's reads panicked: test panic point get-fetch"
        ),
        "{stderr}"
    );
    assert!(common::list_files(&outdir).is_empty());
    assert!(env.get("lab/app:v1") == data);
}

/// Whether this runs as root and has the tools to run a command as another
/// user under a process limit.
fn can_limit_another_user() -> bool {
    nix_is_root()
        && std::process::Command::new("sh")
            .args([
                "-c",
                "command -v runuser && command -v useradd && command -v prlimit",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The binary run as another user (RLIMIT_NPROC counts every thread of the
/// user; root ignores it) under a process limit, on a store in a directory
/// that user can write, with an image of 16 MiB put in it as `lab/app:ref`.
/// One test at a time: the user's threads count against every process of
/// that user, so two tests at once would take each other's room.
struct Limited {
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    store: std::path::PathBuf,
    img: std::path::PathBuf,
    data: Vec<u8>,
}

impl Limited {
    const USER: &'static str = "imgstore-nproc";

    /// None where this cannot run (not root, or tools missing).
    fn new() -> Option<Limited> {
        use std::os::unix::fs::PermissionsExt;
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        if !can_limit_another_user() {
            eprintln!("SKIPPED process limit test: needs root, runuser, useradd and prlimit");
            return None;
        }
        let one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("id -u {0} >/dev/null 2>&1 || useradd -M -N {0}", Limited::USER),
            ])
            .status();
        let dir = tempfile::Builder::new()
            .prefix("imgnproc")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let bin = dir.path().join("imgstore");
        std::fs::copy(assert_cmd::cargo::cargo_bin("imgstore"), &bin).unwrap();
        let data = common::image(16 << 20, 11);
        let img = dir.path().join("x.img");
        std::fs::write(&img, &data).unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = dir.path().join("store");
        let limited = Limited {
            _one_at_a_time: one_at_a_time,
            dir,
            bin,
            store,
            img,
            data,
        };
        limited.ok(limited.run(None, "index", "init -q"), "init");
        limited.ok(
            limited.run(
                None,
                "index",
                &format!("put -q lab/app:ref {}", limited.img.display()),
            ),
            "put",
        );
        Some(limited)
    }

    /// `args` as the user, under `limit` (None: none), with its own index
    /// `index`; None if it did not end within a minute (then it is killed).
    fn run(&self, limit: Option<u32>, index: &str, args: &str) -> Option<std::process::Output> {
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        let pidfile = self.dir.path().join("pid");
        let _ = std::fs::remove_file(&pidfile);
        let prlimit = limit.map_or(String::new(), |n| format!("prlimit --nproc={n}:{n} --"));
        let script = format!(
            "echo $$ > {pid}; exec {prlimit} {bin} --store {store} --index-dir {dir}/{index} {args}",
            pid = pidfile.display(),
            bin = self.bin.display(),
            store = self.store.display(),
            dir = self.dir.path().display(),
        );
        let mut child = Command::new("runuser")
            .args(["-u", Limited::USER, "--", "sh", "-c", &script])
            // Pools as large as on a two-core host, whatever this one has.
            .env("RAYON_NUM_THREADS", "2")
            .env("IMGSTORE_TEST_PACKS_PER_SEGMENT", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(child.wait_with_output().unwrap())
    }

    fn ok(&self, out: Option<std::process::Output>, what: &str) {
        let out = out.unwrap_or_else(|| panic!("{what}: hung"));
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `reference` got to a file without a limit: the output is read only
    /// once the command ended.
    fn got(&self, index: &str, reference: &str) -> Vec<u8> {
        let out = self.dir.path().join("got.img");
        let _ = std::fs::remove_file(&out);
        self.ok(
            self.run(None, index, &format!("get -q {reference} -o {}", out.display())),
            &format!("{index}: get {reference}"),
        );
        std::fs::read(&out).unwrap()
    }

    /// A command refused under `--nproc={n}`: a one-line error and a hint
    /// that names the limit, exit 5 (busy), never a panic or an abort.
    fn refused_cleanly(out: &std::process::Output, n: u32) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 2 && lines[0].starts_with("imgstore: ") && lines[1].starts_with("hint: "),
            "--nproc={n}: not a one-line error and a hint: {stderr}"
        );
        assert!(lines[1].contains("ulimit -u"), "--nproc={n}: {stderr}");
        assert_eq!(common::code(out), 5, "--nproc={n}: {stderr}");
    }
}

/// A busy login node's `ulimit -u`: under each limit from 1 to 16 a put
/// ends in success or in a one-line error with a hint that names the
/// limit, within a minute, never in an abort, a panic or a hang; and the
/// index it used, fresh each time, works afterwards.
/// Before, 2 aborted in RocksDB ("Rust cannot catch foreign exceptions")
/// and left the index without CURRENT, 8 panicked, 4 hung.
#[test]
fn a_put_under_any_process_limit_succeeds_or_fails_cleanly() {
    let Some(env) = Limited::new() else { return };
    let (mut succeeded, mut refused) = (0, 0);
    for n in 1..=16 {
        let index = format!("index-{n}");
        let out = env
            .run(
                Some(n),
                &index,
                &format!("put -q lab/app:v{n} {}", env.img.display()),
            )
            .unwrap_or_else(|| panic!("--nproc={n}: the put hung"));
        if out.status.success() {
            succeeded += 1;
        } else {
            refused += 1;
            Limited::refused_cleanly(&out, n);
        }
        // The same index works without the limit, and the store is whole.
        assert!(
            env.got(&index, "lab/app:ref") == env.data,
            "--nproc={n}: get gave other bytes"
        );
        if out.status.success() {
            let stored = env.got(&index, &format!("lab/app:v{n}"));
            assert!(stored == env.data, "--nproc={n}: the put stored other bytes");
        }
    }
    assert!(
        succeeded > 0 && refused > 0,
        "{succeeded} succeeded, {refused} refused"
    );
}

/// The same for a get to a file, with a fresh index each time (so RocksDB
/// creates one under the limit too): success with the image's bytes, or a
/// one-line error naming the limit and no file, neither the output nor a
/// temporary one. Before, the get started its threads with `expect` and
/// ran its reads on rayon's global pool, so a thread that could not start
/// was a panic (`threads can be spawned`, or rayon's "The global thread
/// pool has not been initialized"), exit 101.
#[test]
fn a_get_under_any_process_limit_succeeds_or_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = Limited::new() else { return };
    let (mut succeeded, mut refused) = (0, 0);
    for n in 1..=16 {
        let index = format!("get-index-{n}");
        let outdir = env.dir.path().join(format!("out-{n}"));
        std::fs::create_dir(&outdir).unwrap();
        std::fs::set_permissions(&outdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let target = outdir.join("x.img");
        let out = env
            .run(
                Some(n),
                &index,
                &format!("get -q lab/app:ref -o {}", target.display()),
            )
            .unwrap_or_else(|| panic!("--nproc={n}: the get hung"));
        if out.status.success() {
            succeeded += 1;
            assert!(
                std::fs::read(&target).unwrap() == env.data,
                "--nproc={n}: other bytes"
            );
        } else {
            refused += 1;
            Limited::refused_cleanly(&out, n);
            let left = common::list_files(&outdir);
            assert!(left.is_empty(), "--nproc={n}: left {left:?}");
        }
        // The same index works without the limit.
        assert!(
            env.got(&index, "lab/app:ref") == env.data,
            "--nproc={n}: get gave other bytes"
        );
    }
    eprintln!("get under --nproc=1..16: {succeeded} succeeded, {refused} refused cleanly");
    assert!(
        succeeded > 0 && refused > 0,
        "{succeeded} succeeded, {refused} refused"
    );
}
