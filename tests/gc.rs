//! Garbage collection on a live store: space comes back, nothing in use is lost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Env, Kind};

fn gc(env: &Env, extra: &[&str]) -> serde_json::Value {
    common::json_of(env.cmd(), &[&["gc", "--grace", "0s"], extra].concat())
}

fn rm_then_gc_frees_exactly_what_the_removed_image_held(kind: Kind) {
    let env = Env::on(kind);
    let keep = common::image(4 << 20, 1);
    let gone = common::random(4 << 20, 2);
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    let r = env.put("lab/gone:v1", &env.file("gone.img", &gone));
    let added = r["added"]["stored_bytes"].as_u64().unwrap();
    let chunks = r["added"]["chunks"].as_u64().unwrap();
    let before = env.pack_bytes();
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();

    let first = gc(&env, &[]);
    assert_eq!(first["packs_deleted"], 0, "{first}");
    assert!(first["packs_condemned"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(env.pack_bytes(), before, "the first run deleted something");
    let second = gc(&env, &[]);
    let freed = before - env.pack_bytes();
    assert_eq!(second["bytes_freed"], freed, "{second}");
    // Pack overhead: 48 B per frame + 56 B per footer entry + 64 B per pack.
    let overhead = chunks * (48 + 56) + 64 * 4;
    assert!(
        freed >= added && freed <= added + overhead,
        "freed {freed}, image held {added}"
    );
    assert!(env.get("lab/keep:v1") == keep);
    // A third run has nothing left to do, and the store verifies clean.
    let third = gc(&env, &[]);
    assert_eq!(third["packs_condemned"], 0, "{third}");
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

fn mostly_garbage_packs_are_repacked(kind: Kind) {
    let env = Env::on(kind);
    let x = common::random(8 << 20, 3);
    let mut y = x[..2 << 20].to_vec();
    y.extend(common::random(6 << 20, 4));
    env.put("lab/x:v1", &env.file("x.img", &x));
    env.put("lab/y:v1", &env.file("y.img", &y));
    env.cmd().args(["rm", "lab/x:v1"]).assert().success();
    let before = env.pack_bytes();
    let first = gc(&env, &[]);
    assert_eq!(first["packs_repacked"], 1, "{first}");
    let second = gc(&env, &[]);
    assert!(second["packs_deleted"].as_u64().unwrap() >= 1, "{second}");
    let after = env.pack_bytes();
    assert!(before - after > 5 << 20, "only {} freed", before - after);
    assert!(env.get("lab/y:v1") == y);
    // A host whose index predates the repack still finds every chunk.
    let got = env
        .cmd_host("z")
        .args(["get", "lab/y:v1", "-o", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == y);
    env.cmd_host("z")
        .args(["verify", "--read-data"])
        .assert()
        .success();
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new();
    env.put("lab/a:v1", &env.file("a.img", &common::random(2 << 20, 5)));
    env.cmd().args(["rm", "lab/a:v1"]).assert().success();
    let files = common::list_files(&env.store());
    let r = gc(&env, &["--dry-run"]);
    assert_eq!(r["dry_run"], true);
    assert!(r["packs_condemned"].as_u64().unwrap() >= 1);
    assert_eq!(common::list_files(&env.store()), files);
}

fn put_holding_a_found_chunk_survives_rm_and_two_gcs(kind: Kind) {
    let env = Env::on(kind);
    let owner = common::random(3 << 20, 6);
    env.put("lab/owner:v1", &env.file("owner.img", &owner));
    // The held put's image is the owner's bytes plus a little: it finds the
    // owner's chunks in the index and will reference them.
    let mut next = owner.clone();
    next.extend(common::random(100_000, 7));
    let f = env.file("next.img", &next);
    let put = common::spawn_held(
        &env,
        "put-after-lookup",
        &["put", "lab/next:v1", f.to_str().unwrap()],
        &[],
    );
    env.cmd().args(["rm", "lab/owner:v1"]).assert().success();
    let g1 = gc(&env, &[]);
    let g2 = gc(&env, &[]);
    assert_eq!(
        g2["packs_deleted"], 0,
        "gc deleted while a put that needs the chunks ran: {g2}"
    );
    assert!(
        g2["waiting"].as_str().unwrap_or("").contains("sessions/put-"),
        "{g1} {g2}"
    );
    common::release(&env, "put-after-lookup");
    let out = put.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.get("lab/next:v1") == next);
    // Later gcs see the new ref and keep everything it needs.
    gc(&env, &[]);
    gc(&env, &[]);
    assert!(env.get("lab/next:v1") == next);
}

#[test]
fn put_after_condemnation_stores_condemned_chunks_anew() {
    let env = Env::new();
    let owner = common::random(3 << 20, 8);
    env.put("lab/owner:v1", &env.file("owner.img", &owner));
    env.cmd().args(["rm", "lab/owner:v1"]).assert().success();
    let g1 = gc(&env, &[]);
    assert!(g1["packs_condemned"].as_u64().unwrap() >= 1);
    // The same bytes come back after condemnation: they must not lean on the
    // condemned pack.
    let r = env.put("lab/again:v1", &env.file("again.img", &owner));
    assert!(r["added"]["raw_bytes"].as_u64().unwrap() >= 3 << 20, "{r}");
    let g2 = gc(&env, &[]);
    assert!(g2["packs_deleted"].as_u64().unwrap() >= 1, "{g2}");
    assert!(env.get("lab/again:v1") == owner);
}

#[test]
fn two_gcs_at_once_one_waits_or_is_busy() {
    let env = Env::new();
    env.put("lab/a:v1", &env.file("a.img", &common::random(1 << 20, 9)));
    let held = common::spawn_held(&env, "gc-locked", &["gc", "--grace", "0s"], &[]);
    let out = env.cmd().args(["gc", "--grace", "0s"]).output().unwrap();
    assert_eq!(common::code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another imgstore gc"));
    let mut waiter = env.cmd().args(["gc", "--grace", "0s", "--wait"]).spawn_helper();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.try_wait().unwrap().is_none(), "--wait did not wait");
    common::release(&env, "gc-locked");
    assert!(held.wait_with_output().unwrap().status.success());
    assert!(waiter.wait().unwrap().success());
}

trait SpawnHelper {
    fn spawn_helper(&mut self) -> std::process::Child;
}

impl SpawnHelper for assert_cmd::Command {
    fn spawn_helper(&mut self) -> std::process::Child {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("imgstore"));
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.args(self.get_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

#[test]
fn gc_paused_past_its_lease_aborts() {
    let env = Env::new();
    env.put("lab/a:v1", &env.file("a.img", &common::random(1 << 20, 10)));
    env.cmd().args(["rm", "lab/a:v1"]).assert().success();
    gc(&env, &[]);
    let held = common::spawn_held(
        &env,
        "gc-after-remark",
        &["gc", "--grace", "0s"],
        &[("IMGSTORE_LEASE_SECS", "2")],
    );
    let pid = held.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    common::release(&env, "gc-after-remark");
    std::thread::sleep(Duration::from_secs(4));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let out = held.wait_with_output().unwrap();
    assert_eq!(common::code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lease expired"));
}

fn get_racing_gc_returns_right_bytes_or_a_retry_error(kind: Kind) {
    let env = Env::on(kind);
    let data = common::random(6 << 20, 11);
    env.put("lab/a:v1", &env.file("a.img", &data));
    let target = env.path("out.img");
    // The get resolves the image, then is paused past its lease while the
    // image is removed and two gcs delete its packs.
    let get = common::spawn_held(
        &env,
        "get-after-open",
        &["get", "lab/a:v1", "-o", target.to_str().unwrap()],
        &[("IMGSTORE_LEASE_SECS", "1")],
    );
    let pid = get.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    common::release(&env, "get-after-open");
    env.cmd().args(["rm", "lab/a:v1"]).assert().success();
    std::thread::sleep(Duration::from_secs(2));
    gc(&env, &[]);
    let g2 = gc(&env, &[]);
    assert!(g2["packs_deleted"].as_u64().unwrap() >= 1, "{g2}");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let out = get.wait_with_output().unwrap();
    if out.status.success() {
        assert!(std::fs::read(&target).unwrap() == data, "wrong bytes returned");
    } else {
        assert_eq!(common::code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("run the get again"));
        assert!(!target.exists(), "partial output left");
    }
}

/// Condemn-phase steps (a gc that finds garbage), then execute-phase steps
/// (a gc that finds a ready plan).
const GC_STEPS: &[(&str, bool)] = &[
    ("gc-locked", false),
    ("gc-after-repack-pack", false),
    ("gc-after-repack-segment", false),
    ("gc-after-plan", false),
    ("gc-after-plan-sessions", false),
    ("gc-after-remark", true),
    ("gc-before-delete", true),
    ("gc-after-delete", true),
];

fn gc_killed_at_every_step_loses_nothing_and_the_next_run_finishes(kind: Kind) {
    for (step, needs_plan) in GC_STEPS {
        let env = Env::on(kind);
        // x is removed; y shares a quarter of x, so x's pack is repacked.
        let x = common::random(8 << 20, 3);
        let mut y = x[..2 << 20].to_vec();
        y.extend(common::random(6 << 20, 4));
        let keep = common::image(1 << 20, 12);
        env.put("lab/x:v1", &env.file("x.img", &x));
        env.put("lab/y:v1", &env.file("y.img", &y));
        env.put("lab/keep:v1", &env.file("keep.img", &keep));
        env.cmd().args(["rm", "lab/x:v1"]).assert().success();
        let before = env.pack_bytes();
        if *needs_plan {
            gc(&env, &[]);
        }
        let out = env
            .cmd()
            .env("IMGSTORE_TEST_CRASH", step)
            .args(["gc", "--grace", "0s"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step} did not fire");
        // Nothing lost, from this host or a new one, and the store verifies.
        assert!(env.get("lab/y:v1") == y, "{step}");
        assert!(env.get("lab/keep:v1") == keep, "{step}");
        let fresh = env
            .cmd_host("n")
            .args(["get", "lab/y:v1", "-o", "-"])
            .assert()
            .success();
        assert!(fresh.get_output().stdout == y, "{step}: new host");
        env.cmd().arg("verify").assert().success();
        // Later runs finish the job: x's space comes back.
        for _ in 0..3 {
            gc(&env, &[]);
        }
        let freed = before.saturating_sub(env.pack_bytes());
        assert!(freed > 5 << 20, "{step}: only {freed} bytes freed");
        assert!(env.get("lab/y:v1") == y, "{step}: after the later runs");
        env.cmd().args(["verify", "--read-data"]).assert().success();
    }
}

/// Several processes put, get and rm in a loop while gc runs with no grace.
/// Counts every get: wrong bytes or a "corrupt" error fail the test.
fn thrash_put_get_rm_with_gc(kind: Kind) {
    let env = Env::on(kind);
    let base = common::image(2 << 20, 14);
    let seconds = 20;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let env = &env;
    let (gets, corrupt, retries, gcs) = std::thread::scope(|s| {
        let gc_thread = s.spawn(move || {
            let mut runs = 0;
            while Instant::now() < stop {
                let out = env
                    .process("gc")
                    .args(["gc", "--grace", "0s", "--wait"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "gc failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        });
        let workers: Vec<_> = (0..3u64)
            .map(|w| {
                let dir = env.dir.path().to_path_buf();
                let base = base.clone();
                s.spawn(move || {
                    let host = format!("w{w}");
                    let run = |args: &[&str]| env.process(&host).args(args).output().unwrap();
                    let (mut gets, mut corrupt, mut retries, mut i) = (0, 0, 0, 0u64);
                    while Instant::now() < stop {
                        let data = common::edit(&base, 2, w * 1000 + i);
                        let file = dir.join(format!("w{w}.img"));
                        std::fs::write(&file, &data).unwrap();
                        let tag = format!("t/w{w}:i{i}");
                        let out = run(&["put", &tag, file.to_str().unwrap()]);
                        assert!(
                            out.status.success(),
                            "put: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        let got = run(&["get", &tag, "-o", "-"]);
                        gets += 1;
                        match common::code(&got) {
                            0 if got.stdout == data => {}
                            0 => corrupt += 1,
                            5 => retries += 1,
                            _ => corrupt += 1,
                        }
                        if i >= 1 {
                            let out = run(&["rm", &format!("t/w{w}:i{}", i - 1)]);
                            assert!(out.status.success());
                        }
                        i += 1;
                    }
                    (gets, corrupt, retries)
                })
            })
            .collect();
        let (mut gets, mut corrupt, mut retries) = (0, 0, 0);
        for w in workers {
            let (g, c, r) = w.join().unwrap();
            gets += g;
            corrupt += c;
            retries += r;
        }
        (gets, corrupt, retries, gc_thread.join().unwrap())
    });
    println!("thrash: {gets} gets, {corrupt} corrupt or wrong, {retries} retry errors, {gcs} gc runs in {seconds}s");
    assert_eq!(corrupt, 0);
    assert!(gets > 3 && gcs > 1, "too little happened: {gets} gets, {gcs} gcs");
}

#[test]
fn prune_keeps_by_rule_and_says_why() {
    let env = Env::new();
    let f = env.file("a.img", &common::image(300_000, 15));
    // Creation times have one-second resolution: space the newest two out.
    for t in ["c1", "c2", "rel-1", "c3", "c4"] {
        if t == "c3" || t == "c4" {
            std::thread::sleep(Duration::from_millis(1100));
        }
        env.put(&format!("lab/app:{t}"), &f);
    }
    env.put("other/x:c1", &f);
    let out = env.cmd().args(["prune", "lab/app"]).output().unwrap();
    assert_eq!(common::code(&out), 2, "prune without a rule must refuse");
    let dry = env
        .cmd()
        .args([
            "--json",
            "prune",
            "lab/app",
            "--keep-last",
            "2",
            "--keep-tag",
            "rel-*",
            "--dry-run",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let dry: serde_json::Value = serde_json::from_slice(&dry).unwrap();
    let removed: Vec<&str> = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["ref"].as_str().unwrap())
        .collect();
    assert_eq!(removed.len(), 2, "{dry}");
    assert_eq!(
        common::list_files(&env.store().join("refs/lab/app")).len(),
        5,
        "dry run removed refs"
    );
    env.cmd()
        .args(["prune", "lab/app", "--keep-last", "2", "--keep-tag", "rel-*"])
        .assert()
        .success()
        .stdout(predicates::str::contains("tag matches"));
    let left = common::list_files(&env.store().join("refs/lab/app"));
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().any(|f| f.contains("rel-1")));
    for r in removed {
        env.cmd().args(["get", r, "-o", "-"]).assert().failure();
    }
    // Other names are untouched.
    env.cmd()
        .args(["get", "other/x:c1", "-o", "-"])
        .assert()
        .success();
}

/// Temporary files below the store, as paths.
fn temporaries(env: &Env) -> Vec<std::path::PathBuf> {
    common::list_files(&env.store())
        .into_iter()
        .filter(|f| f.rsplit('/').next().unwrap().starts_with(".tmp-"))
        .map(|f| env.store().join(f))
        .collect()
}

/// Sets a file's mtime `ago` in the past: how an hour passing looks to gc.
fn age(path: &std::path::Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - ago).unwrap();
}

#[test]
fn gc_removes_what_killed_puts_left_but_not_a_live_puts_files() {
    let env = Env::new();
    let old = common::image(4 << 20, 5);
    env.put("lab/app:v1", &env.file("v1.img", &old));
    let new = common::random(4 << 20, 6);
    let input = env.file("v2.img", &new);
    let args = ["put", "lab/app:v2", input.to_str().unwrap()];

    // A put SIGKILLed with its pack staged leaves it as a temporary file.
    let mut killed = common::spawn_held(&env, "put-after-stage", &args, &[]);
    killed.kill().unwrap();
    killed.wait().unwrap();
    common::release(&env, "put-after-stage");
    let left = temporaries(&env);
    assert_eq!(left.len(), 1, "{left:?}");
    let left = &left[0];
    let bytes = std::fs::metadata(left).unwrap().len();
    assert!(bytes >= 4 << 20, "the staged pack holds the image: {bytes} B");

    // While its session is live, or while it is fresh, it may still be a
    // writer's: kept.
    let fresh = gc(&env, &[]);
    assert_eq!(fresh["temporaries_removed"], 0, "{fresh}");
    for f in common::list_files(&env.store().join("sessions")) {
        age(&env.store().join("sessions").join(f), Duration::from_secs(7200));
    }
    let fresh = gc(&env, &[]);
    assert_eq!(fresh["temporaries_removed"], 0, "{fresh}");
    assert!(left.exists());

    // An hour later...
    age(left, Duration::from_secs(7200));
    // ...while another put is live, its own staged pack as old.
    let live = common::spawn_held(
        &env,
        "put-after-stage",
        &["put", "lab/app:v3", input.to_str().unwrap()],
        &[],
    );
    let live_tmp: Vec<_> = temporaries(&env).into_iter().filter(|t| t != left).collect();
    assert_eq!(live_tmp.len(), 1, "{live_tmp:?}");
    age(&live_tmp[0], Duration::from_secs(7200));

    let dry = gc(&env, &["--dry-run"]);
    assert_eq!(dry["temporaries_removed"], 1, "{dry}");
    assert!(left.exists(), "a dry run removed a file");
    let run = gc(&env, &[]);
    assert_eq!(run["temporaries_removed"], 1, "{run}");
    assert_eq!(run["temporary_bytes_freed"], bytes, "{run}");
    assert!(!left.exists(), "the killed put's pack is still there");
    assert!(live_tmp[0].exists(), "gc removed a live put's pack");

    common::release(&env, "put-after-stage");
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.get("lab/app:v3") == new);
    assert!(temporaries(&env).is_empty(), "{:?}", temporaries(&env));
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

/// A repack copies group frames whole, as they are stored: a group with a
/// live member keeps its dead ones, a group with none goes, and every copy
/// of a chunk stays the same bytes.
#[test]
fn repacks_copy_group_frames_whole() {
    use imgstore_store::codec::Codec;
    let env = Env::new();
    let x = common::text(8 << 20, 21);
    let mut y = x[..(2 << 20) + 100_000].to_vec();
    y.extend(common::text(6 << 20, 22));
    env.put("lab/x:v1", &env.file("x.img", &x));
    let old = common::packs(&env.store());
    assert_eq!(old.len(), 1);
    let old_frames = frames(&old[0].1, &old[0].2);
    let members = old[0].2.iter().filter(|e| e.codec == Codec::ZstdGroup).count();
    assert!(
        old_frames.len() >= 8 && members > old_frames.len(),
        "{} frames",
        old_frames.len()
    );
    env.put("lab/y:v1", &env.file("y.img", &y));
    env.cmd().args(["rm", "lab/x:v1"]).assert().success();
    let before_gc: Vec<_> = common::packs(&env.store())
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    let first = gc(&env, &[]);
    assert_eq!(first["packs_repacked"], 1, "{first}");
    let second = gc(&env, &[]);
    assert!(second["packs_deleted"].as_u64().unwrap() >= 1, "{second}");
    assert!(env.get("lab/y:v1") == y);
    env.cmd().args(["verify", "--read-data"]).assert().success();
    // The repacked frames are x's frames, byte for byte: those that hold
    // y's prefix (the last group of them partly x's own, dead, bytes).
    let now = common::packs(&env.store());
    let repacked: Vec<_> = now.iter().filter(|(p, _, _)| !before_gc.contains(p)).collect();
    assert_eq!(repacked.len(), 1);
    let (_, bytes, entries) = repacked[0];
    let copied = frames(bytes, entries);
    assert!(
        !copied.is_empty() && copied.len() < old_frames.len(),
        "{} of {}",
        copied.len(),
        old_frames.len()
    );
    for f in &copied {
        assert!(
            old_frames.contains(f),
            "a repacked frame differs from its original"
        );
    }
    // The reports still add up to the bytes on disk.
    let s = env.json(&["stats"]);
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(n("stored_bytes"), env.pack_bytes(), "{s}");
    assert_eq!(
        n("stored_bytes"),
        n("live_stored_bytes")
            + n("duplicate_bytes")
            + n("unreferenced_bytes")
            + n("condemned_bytes")
            + n("overhead_bytes"),
        "{s}"
    );
}

/// The bytes (header and stored bytes) of each frame of a pack.
fn frames(pack: &[u8], entries: &[imgstore_store::pack::PackEntry]) -> Vec<Vec<u8>> {
    imgstore_store::pack::frames(entries)
        .map(|f| {
            let at = f[0].offset as usize;
            pack[at..at + imgstore_store::pack::FRAME_HEADER_LEN + f[0].stored_len as usize].to_vec()
        })
        .collect()
}

/// A store with a plan ready to execute: two images removed and condemned
/// (each in its own pack), one kept. Returns the packs/ listing.
fn store_with_a_ready_plan(env: &Env) -> Vec<String> {
    env.put("lab/keep:v1", &env.file("keep.img", &common::random(1 << 20, 30)));
    env.put("lab/a:v1", &env.file("a.img", &common::random(1 << 20, 31)));
    env.put("lab/b:v1", &env.file("b.img", &common::random(1 << 20, 32)));
    env.cmd().args(["rm", "lab/a:v1", "lab/b:v1"]).assert().success();
    let first = gc(env, &[]);
    assert!(first["packs_condemned"].as_u64().unwrap() >= 2, "{first}");
    common::list_files(&env.store().join("packs"))
}

/// `imgstore ARGS` must fail with exit 4 naming `file`.
fn refuses(env: &Env, args: &[&str], file: &str) {
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 4, "{args:?}: {stderr}");
    assert!(stderr.contains(file), "{args:?}: {stderr}");
}

#[test]
fn a_damaged_plan_entry_makes_gc_refuse_and_delete_nothing() {
    let env = Env::new();
    let packs = store_with_a_ready_plan(&env);
    let plan_file = env.store().join("gc/plan");
    let mut plan: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan_file).unwrap()).unwrap();
    plan["packs"][0] = "not-a-pack-id".into();
    std::fs::write(&plan_file, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
    let damaged = std::fs::read(&plan_file).unwrap();

    refuses(&env, &["gc", "--grace", "0s"], "gc/plan");
    refuses(&env, &["gc", "--grace", "0s", "--dry-run"], "gc/plan");
    assert_eq!(common::list_files(&env.store().join("packs")), packs);
    assert!(
        std::fs::read(&plan_file).unwrap() == damaged,
        "the plan was rewritten"
    );
    // The hint's way out is safe: without the plan, gc condemns anew.
    std::fs::remove_file(&plan_file).unwrap();
    assert!(gc(&env, &[])["packs_condemned"].as_u64().unwrap() >= 2);
    gc(&env, &[]);
    assert!(env.get("lab/keep:v1") == common::random(1 << 20, 30));
}

#[test]
fn a_ref_file_name_that_does_not_parse_makes_gc_and_mark_refuse() {
    let env = Env::new();
    let packs = store_with_a_ready_plan(&env);
    let refs = env.store().join("refs/lab/keep");
    std::fs::copy(refs.join("@v1"), refs.join("@bad tag!")).unwrap();

    refuses(&env, &["gc", "--grace", "0s"], "refs/lab/keep/@bad tag!");
    refuses(
        &env,
        &["gc", "--grace", "0s", "--dry-run"],
        "refs/lab/keep/@bad tag!",
    );
    refuses(&env, &["prune", "--keep-last", "1"], "refs/lab/keep/@bad tag!");
    assert_eq!(common::list_files(&env.store().join("packs")), packs);
    assert!(env.store().join("gc/plan").exists());
}

#[test]
fn dry_run_reports_what_the_run_then_does() {
    let env = Env::new();
    let x = common::random(8 << 20, 33);
    let mut y = x[..2 << 20].to_vec();
    y.extend(common::random(6 << 20, 34));
    env.put("lab/x:v1", &env.file("x.img", &x));
    env.put("lab/y:v1", &env.file("y.img", &y));
    env.put("lab/z:v1", &env.file("z.img", &common::random(1 << 20, 35)));
    env.cmd().args(["rm", "lab/x:v1", "lab/z:v1"]).assert().success();
    let fields = [
        "packs_repacked",
        "bytes_repacked",
        "packs_condemned",
        "bytes_condemned",
        "refs",
        "images",
    ];
    let plan = gc(&env, &["--dry-run"]);
    let condemn = &plan["plan"]["condemn"];
    assert_eq!(condemn["repack"].as_array().unwrap().len(), 1, "{plan}");
    assert!(!condemn["garbage"].as_array().unwrap().is_empty(), "{plan}");
    let run = gc(&env, &[]);
    assert_eq!(run["packs_repacked"], 1, "{run}");
    assert!(run.get("plan").is_none(), "{run}");
    for f in fields {
        assert_eq!(plan[f], run[f], "{f}: dry run {plan}, run {run}");
    }
    let plan = gc(&env, &["--dry-run"]);
    let run = gc(&env, &[]);
    assert!(run["packs_deleted"].as_u64().unwrap() >= 2, "{run}");
    for f in ["packs_deleted", "bytes_freed", "packs_rescued"] {
        assert_eq!(plan[f], run[f], "{f}: dry run {plan}, run {run}");
    }
    assert!(env.get("lab/y:v1") == y);
}

/// A pack the listing names but that is gone when gc opens it (deleted
/// since, or a listing that lags a delete, as Garage's did) has nothing
/// left to condemn: gc goes on instead of failing.
fn a_pack_gone_after_the_listing_does_not_stop_gc(kind: Kind) {
    let env = Env::on(kind);
    let keep = common::random(2 << 20, 20);
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    let before: Vec<_> = common::packs(&env.store()).into_iter().map(|p| p.0).collect();
    env.put("lab/gone:v1", &env.file("gone.img", &common::random(2 << 20, 21)));
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();
    let held = common::spawn_held(&env, "gc-after-list", &["--json", "gc", "--grace", "0s"], &[]);
    let mut removed = 0;
    for (path, _, _) in common::packs(&env.store()) {
        if !before.contains(&path) {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 1, "the removed image had no pack of its own");
    common::release(&env, "gc-after-list");
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["packs_condemned"], 0, "{report}");
    assert!(env.get("lab/keep:v1") == keep);
    gc(&env, &[]);
    assert!(env.get("lab/keep:v1") == keep);
}

crate::on_both_backends!(
    rm_then_gc_frees_exactly_what_the_removed_image_held,
    mostly_garbage_packs_are_repacked,
    put_holding_a_found_chunk_survives_rm_and_two_gcs,
    get_racing_gc_returns_right_bytes_or_a_retry_error,
    gc_killed_at_every_step_loses_nothing_and_the_next_run_finishes,
    thrash_put_get_rm_with_gc,
    a_pack_gone_after_the_listing_does_not_stop_gc,
);
