//! completions, man page, help, demo.

use crate::common::{self, Env};

#[test]
fn completions_and_man_page() {
    let env = Env::uninit();
    env.cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicates::str::contains("imgstore"));
    env.cmd()
        .arg("man")
        .assert()
        .success()
        .stdout(predicates::str::contains(".TH imgstore"));
    env.cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicates::str::contains("Exit codes"));
}

#[test]
fn demo_runs_end_to_end() {
    let env = Env::uninit();
    env.cmd()
        .args(["demo", "--size", "12MiB", "--dir"])
        .arg(env.path("demo"))
        .assert()
        .success()
        .stdout(predicates::str::contains("byte-identical"));
}

/// The benchmark script stays runnable: a tiny two-commit history, cp and
/// imgstore only (the real runs are in docs/PERFORMANCE.md).
#[test]
fn bench_compare_smoke() {
    let have = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("python3") || !std::path::Path::new("/usr/bin/time").exists() {
        eprintln!("SKIPPED bench smoke: needs python3 and GNU time (/usr/bin/time)");
        return;
    }
    let env = Env::uninit();
    let c0 = crate::common::random(2 << 20, 1);
    let mut c1 = c0[..1 << 20].to_vec();
    c1.extend(crate::common::random(300_000, 2));
    let (f0, f1) = (env.file("c00.sqfs", &c0), env.file("c01.sqfs", &c1));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/compare.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--imgstore")
        .arg(assert_cmd::cargo::cargo_bin("imgstore"))
        .args(["--tools", "cp,imgstore", "--work"])
        .arg(env.path("work"))
        .arg("--json")
        .arg(env.path("run.json"))
        .args([&f0, &f1])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| imgstore |"), "{stdout}");
    assert!(stdout.matches("identical").count() >= 4, "{stdout}");
    assert!(!stdout.contains("differ"), "{stdout}");
    // The targets, read back from the run's raw figures.
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--targets")
        .arg(env.path("run.json"))
        .output()
        .unwrap();
    let targets = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        targets.contains("| run.json | squashfs |") && targets.contains("known put ×cp median"),
        "{targets}"
    );
}

/// A reader that goes away (`imgstore ls | head`) ends the command quietly
/// with exit 0: no panic, no error line.
#[test]
fn closed_stdout_is_not_a_panic() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a", &crate::common::image(100_000, 1)));
    let bin = assert_cmd::cargo::cargo_bin("imgstore");
    for args in ["ls", "--json ls", "stats", "du --by tag", "log"] {
        // The reader (`:`) has exited long before imgstore writes.
        let script = format!(
            "{{ sleep 0.3; '{}' {args}; echo \"rc=$?\" >&2; }} | :",
            bin.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("IMGSTORE_STORE", env.store())
            .env("IMGSTORE_INDEX_DIR", env.path("index-a"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim_end().ends_with("rc=0"), "{args}: {err}");
        assert!(!err.contains("panicked"), "{args}: {err}");
    }
}

/// A log captured to a file or pipe is plain text: no colour escapes.
#[test]
fn captured_log_has_no_colour_codes() {
    let env = Env::new();
    let a = env.file("a.img", &crate::common::image(1 << 20, 40));
    let b = env.file("b.img", &crate::common::image(1 << 20, 41));
    env.put("t/a:v", &a);
    // This put catches the index up on the first one's segment: a debug event.
    let out = env
        .cmd()
        .env("IMGSTORE_LOG", "imgstore_store=debug")
        .args(["put", "t/b:v"])
        .arg(&b)
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    let log = String::from_utf8_lossy(&out);
    assert!(log.contains("index caught up"), "no debug event logged: {log}");
    assert!(!log.contains('\x1b'), "colour escapes in a captured log: {log:?}");
}

#[test]
fn demo_replaces_only_a_store_it_made() {
    let env = Env::new();
    let dir = env.path("demo");
    let demo = || {
        env.cmd()
            .args(["demo", "--size", "2MiB", "--dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    // A real store where demo would put its own: refused, nothing removed.
    std::fs::create_dir_all(&dir).unwrap();
    let real = dir.join("store");
    env.cmd()
        .env("IMGSTORE_STORE", &real)
        .arg("init")
        .assert()
        .success();
    let files = common::list_files(&real);
    let out = demo();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 2, "{stderr}");
    assert!(
        stderr.contains("did not make it") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(common::list_files(&real), files);
    // A store an earlier demo made is replaced.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(demo().status.success());
    let out = demo();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
