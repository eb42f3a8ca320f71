//! Lock files: `export` ties a folder to an image; `get --lock` fetches
//! exactly that image after its tags, prune, gc, a copy and an index
//! rebuild; run.sh fetches, checks and runs it (a stub apptainer records
//! what it is asked).

use std::path::{Path, PathBuf};

use imgstore_store::sif;

use crate::common::{self, Env, Kind};

const DEFFILE: &[u8] = b"Bootstrap: docker\nFrom: nvidia/cuda:12.4\n%post\n  pip install numpy==2.1\n";

/// A small SIF with a deffile and labels.
fn sif_image(seed: u64) -> Vec<u8> {
    sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", DEFFILE),
        (sif::DATA_LABELS, "", br#"{"commit":"3f2c1e"}"#),
        (sif::DATA_PARTITION, "", &common::image(2 << 20, seed)),
    ])
}

/// `export lab/app:v1` into the env's folder `exp`, which it returns.
fn export(env: &Env) -> PathBuf {
    export_to(env, "exp")
}

/// `export lab/app:v1` into the env's folder `name`, which it returns.
fn export_to(env: &Env, name: &str) -> PathBuf {
    let exp = env.path(name);
    env.cmd()
        .args(["export", "lab/app:v1"])
        .arg(&exp)
        .assert()
        .success();
    exp
}

fn get_locked(env: &Env, lock: &Path, out: &Path) -> std::process::Output {
    env.cmd()
        .arg("get")
        .arg("--lock")
        .arg(lock)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn a_lock_gets_the_same_bytes_after_tags_prune_gc_and_rebuild(kind: Kind) {
    let env = Env::on(kind);
    let bytes = sif_image(1);
    env.put("lab/app:v1", &env.file("v1.sif", &bytes));
    env.put("lab/app:v2", &env.file("v2.sif", &sif_image(2)));
    let exp = env.path("exp");
    let r = common::json_of(env.cmd(), &["export", "lab/app:v1", exp.to_str().unwrap()]);
    assert_eq!(r["pinned"], true, "{r}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exp.join("imgstore.lock")).unwrap()).unwrap();
    assert_eq!(lock["image_format"], "sif");
    assert_eq!(lock["size"], bytes.len());
    assert_eq!(lock["labels"]["commit"], "3f2c1e");
    assert_eq!(lock["deffile"], "app.def");
    let sha = {
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(&bytes))
    };
    assert_eq!(lock["sha256"], sha);
    assert_eq!(std::fs::read(exp.join("app.def")).unwrap(), DEFFILE);

    // Every tag removed, pruned, collected: the lock still gets the bytes.
    for t in ["lab/app:v1", "lab/app:v2"] {
        env.cmd().args(["rm", t]).assert().success();
    }
    env.cmd().args(["prune", "--keep-last", "1"]).assert().success();
    for _ in 0..2 {
        env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    }
    let out = env.path("out.sif");
    let o = get_locked(&env, &exp.join("imgstore.lock"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);

    env.cmd().args(["index", "rebuild"]).assert().success();
    std::fs::remove_file(&out).unwrap();
    let o = get_locked(&env, &exp.join("imgstore.lock"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);
}

crate::on_both_backends!(a_lock_gets_the_same_bytes_after_tags_prune_gc_and_rebuild);

#[test]
fn without_store_a_lock_reads_from_the_store_it_names() {
    let env = Env::new();
    let bytes = common::random(1 << 20, 3);
    env.put("lab/app:v1", &env.file("a.img", &bytes));
    let exp = export(&env);
    let out = env.path("out.img");
    let o = env
        .cmd()
        .env_remove("IMGSTORE_STORE")
        .arg("get")
        .arg("--lock")
        .arg(exp.join("imgstore.lock"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);
}

#[test]
fn a_lock_gets_its_image_from_a_copy_of_the_store() {
    let src = Env::new();
    let bytes = sif_image(4);
    src.put("lab/app:v1", &src.file("a.sif", &bytes));
    let exp = export(&src);
    // A second image, pinned with no tag naming it: not copied, and said so.
    src.put("lab/old:v1", &src.file("old.img", &common::random(64 << 10, 12)));
    src.cmd()
        .args(["pin", "lab/old:v1", "--reason", "old"])
        .assert()
        .success();
    src.cmd().args(["rm", "lab/old:v1"]).assert().success();
    let dst = Env::on(Kind::S3);
    let r = common::json_of(dst.cmd(), &["copy", "--from", src.store().to_str().unwrap()]);
    let status: Vec<&str> = r["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    let mut sorted = status.clone();
    sorted.sort();
    assert_eq!(sorted, ["not copied", "pinned"], "{r}");
    // The export's pin came along.
    let pins = dst.json(&["ls", "--pins"]);
    assert_eq!(pins["pins"].as_array().unwrap().len(), 1, "{pins}");
    let out = dst.path("out.sif");
    let o = get_locked(&dst, &exp.join("imgstore.lock"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert!(String::from_utf8_lossy(&o.stderr).contains("the lock was written from store"));
}

/// Writes the exported lock with `edit` applied, returns its path.
fn edited(env: &Env, lock: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(lock).unwrap();
    let path = env.path(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn bad_lock_files_are_one_line_errors_with_their_exit_codes() {
    let env = Env::new();
    let bytes = common::random(256 << 10, 5);
    let id = env.put("lab/app:v1", &env.file("a.img", &bytes))["image"]
        .as_str()
        .unwrap()
        .to_string();
    let exp = export(&env);
    let lock = exp.join("imgstore.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let other = Env::new();
    let cases: Vec<(PathBuf, i32, &str, Option<&Env>)> = vec![
        (
            edited(&env, &lock, "truncated", |t| t[..t.len() / 2].to_string()),
            2,
            "not a valid imgstore lock file",
            None,
        ),
        (
            edited(&env, &lock, "newer", |t| {
                t.replace("\"version\": 1", "\"version\": 9")
            }),
            7,
            "lock file version 9",
            None,
        ),
        (
            edited(&env, &lock, "unknown-id", |t| {
                t.replace(&id[7..20], "0123456789abc")
            }),
            3,
            "locked from store",
            None,
        ),
        (
            edited(&env, &lock, "bad-id", |t| t.replace(&id[7..20], "0123456789xyz")),
            2,
            "not a valid imgstore lock file",
            None,
        ),
        (
            edited(&env, &lock, "size", |t| {
                t.replace(&format!("\"size\": {}", bytes.len()), "\"size\": 5")
            }),
            2,
            "edited or damaged",
            None,
        ),
        (
            edited(&env, &lock, "sha", |t| {
                let at = t.find("sha256:").unwrap() + 7;
                let mut s = t.clone();
                let flipped = if &t[at..at + 1] == "0" { "1" } else { "0" };
                s.replace_range(at..at + 1, flipped);
                s
            }),
            2,
            "edited or damaged",
            None,
        ),
        (lock.clone(), 3, "locked from store", Some(&other)),
        (env.path("missing.lock"), 3, "not found", None),
    ];
    assert!(!text.is_empty());
    for (path, code, says, store) in cases {
        let env = store.unwrap_or(&env);
        let out = env.path("out.img");
        let o = get_locked(env, &path, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(common::code(&o), code, "{}: {err}", path.display());
        assert!(err.contains(says), "{}: {err}", path.display());
        assert!(
            err.lines()
                .filter(|l| !l.starts_with("hint:") && !l.contains("the lock was written from store"))
                .count()
                == 1,
            "{}: {err}",
            path.display()
        );
        assert!(!out.exists(), "{}: an output was written", path.display());
    }
}

#[test]
fn export_refuses_a_full_folder_and_never_overwrites_what_it_did_not_write() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a.sif", &sif_image(6)));
    let exp = env.path("exp");
    std::fs::create_dir(&exp).unwrap();
    std::fs::write(exp.join("notes.txt"), b"mine").unwrap();
    let export = |force: bool| {
        let mut c = env.cmd();
        c.args(["export", "lab/app:v1"]).arg(&exp);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let o = export(false);
    assert_eq!(common::code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert!(!exp.join("imgstore.lock").exists());

    assert!(export(true).status.success());
    assert_eq!(std::fs::read(exp.join("notes.txt")).unwrap(), b"mine");
    // Again over its own, unchanged files: fine.
    assert!(export(true).status.success());

    // A run.sh someone changed is not replaced.
    let run = exp.join("run.sh");
    let mut changed = std::fs::read(&run).unwrap();
    changed.extend_from_slice(b"# my change\n");
    std::fs::write(&run, &changed).unwrap();
    let o = export(true);
    assert_eq!(common::code(&o), 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("run.sh exists and was not written by imgstore export")
    );
    assert_eq!(std::fs::read(&run).unwrap(), changed);

    // Nor a lock file export did not write.
    let other = env.path("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("imgstore.lock"), b"{}").unwrap();
    let o = env
        .cmd()
        .args(["export", "lab/app:v1", "--force"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(common::code(&o), 2);
    assert_eq!(std::fs::read(other.join("imgstore.lock")).unwrap(), b"{}");
}

/// A stub `apptainer` that appends its arguments, one per line, to
/// $APPTAINER_LOG; for `build OUT DEF` it writes OUT, for `pull OUT URL`
/// it copies $STUB_PULL_SOURCE to OUT.
fn stub_apptainer(dir: &Path) -> PathBuf {
    let bin = dir.join("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> \"$APPTAINER_LOG\"\n\
                  printf -- '--\\n' >> \"$APPTAINER_LOG\"\n\
                  if [ \"$1\" = build ]; then echo rebuilt > \"$2\"; fi\n\
                  if [ \"$1\" = pull ]; then cp \"$STUB_PULL_SOURCE\" \"$2\"; fi\n";
    let path = bin.join("apptainer");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn run_sh_fetches_checks_and_runs_the_image_with_quoted_arguments() {
    let env = Env::new();
    let bytes = sif_image(7);
    let id = env.put("lab/app:v1", &env.file("a.sif", &bytes))["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string();
    // A folder name a careless script would split or expand.
    let exp = export_to(&env, "exp $HOME 'q' dir");
    let bin = stub_apptainer(env.dir.path());
    let log = env.path("apptainer.log");
    let cache = env.path("cache");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |imgstore: &Path, store: Option<&str>, rebuild: bool, args: &[&str]| {
        let mut c = std::process::Command::new("sh");
        c.arg(exp.join("run.sh"))
            .args(args)
            .env("PATH", &path)
            .env("APPTAINER_LOG", &log)
            .env("IMGSTORE", imgstore)
            .env("IMGSTORE_IMAGES", &cache)
            .env("IMGSTORE_INDEX_DIR", env.dir.path().join("index-a"))
            .env_remove("IMGSTORE_STORE")
            .stdin(std::process::Stdio::null());
        if let Some(s) = store {
            c.env("IMGSTORE_STORE", s);
        }
        if rebuild {
            c.env("IMGSTORE_REBUILD", "1");
        }
        c.output().unwrap()
    };
    let imgstore = assert_cmd::cargo::cargo_bin("imgstore");
    let o = run(&imgstore, None, false, &["a b", "it's", "$x", ""]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = cache.join(format!("{id}.sif"));
    assert!(std::fs::read(&image).unwrap() == bytes);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, format!("run\n{}\na b\nit's\n$x\n\n--\n", image.display()));

    // Cached: no imgstore needed the second time.
    std::fs::remove_file(&log).unwrap();
    let o = run(Path::new("/bin/false"), None, false, &["again"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&log).unwrap().starts_with("run\n"));

    // Not in the cache, the store out of reach: no rebuild without asking.
    std::fs::remove_file(&image).unwrap();
    std::fs::remove_file(&log).unwrap();
    let o = run(&imgstore, Some("/nonexistent"), false, &["x"]);
    assert_eq!(common::code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("NOT bit-identical") && err.contains("IMGSTORE_REBUILD=1"),
        "{err}"
    );
    assert!(!log.exists(), "apptainer was run");
    // Asked to: builds from the exported deffile, then runs the rebuild.
    let o = run(&imgstore, Some("/nonexistent"), true, &["x"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let logged = std::fs::read_to_string(&log).unwrap();
    let rebuilt = cache.join(format!("rebuilt-{id}.sif"));
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines[0], "build");
    assert_eq!(lines[2], exp.join("app.def").to_str().unwrap());
    assert_eq!(&lines[4..], ["run", rebuilt.to_str().unwrap(), "x", "--"]);
}

#[test]
fn run_sh_pulls_from_the_registry_and_checks_its_sha256() {
    let env = Env::new();
    let bytes = sif_image(8);
    let src = env.file("a.sif", &bytes);
    let wrong = env.file("wrong.sif", &sif_image(9));
    let id = env.put("lab/app:v1", &src)["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string();
    let exp = env.path("exp");
    env.cmd()
        .args([
            "export",
            "lab/app:v1",
            "--registry",
            "oras://reg.lab:5000/lab/app:v1",
        ])
        .arg(&exp)
        .assert()
        .success();
    let bin = stub_apptainer(env.dir.path());
    let log = env.path("apptainer.log");
    let cache = env.path("cache");
    let run = |pulled: &Path| {
        std::process::Command::new("sh")
            .arg(exp.join("run.sh"))
            .arg("go")
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("APPTAINER_LOG", &log)
            .env("STUB_PULL_SOURCE", pulled)
            .env("IMGSTORE", assert_cmd::cargo::cargo_bin("imgstore"))
            .env("IMGSTORE_STORE", "/nonexistent")
            .env("IMGSTORE_IMAGES", &cache)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // The registry hands back other bytes: refused, nothing cached or run.
    let o = run(&wrong);
    assert_eq!(common::code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not the locked sha256:"));
    let image = cache.join(format!("{id}.sif"));
    assert!(!image.exists());
    assert!(!std::fs::read_to_string(&log).unwrap().contains("\nrun\n"));
    // The right bytes: cached and run.
    std::fs::remove_file(&log).unwrap();
    let o = run(&src);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&image).unwrap() == bytes);
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines[0], "pull");
    assert_eq!(lines[2], "oras://reg.lab:5000/lab/app:v1");
    assert_eq!(&lines[4..], ["run", image.to_str().unwrap(), "go", "--"]);
}
