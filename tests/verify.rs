//! Fault tests: damage the store or the local index on purpose, then check
//! that `get` names the damage (exit 4, no output), `verify` names every
//! affected image and only those, other images come back intact, and
//! `repair` + a re-put or `index rebuild` restore everything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::{self, Env, Kind};

/// Three unrelated images (no shared chunks), each put alone so each has its
/// own pack. Returns the data and each image's new pack files.
fn three_images(env: &Env) -> Vec<(String, Vec<u8>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    for (i, name) in ["lab/a:v1", "lab/b:v1", "lab/c:v1"].iter().enumerate() {
        let before = common::list_files(&env.store().join("packs"));
        let data = common::random(600_000 + i * 100_000, 100 + i as u64);
        let f = env.file(&format!("in{i}.img"), &data);
        env.put(name, &f);
        let packs = common::list_files(&env.store().join("packs"))
            .into_iter()
            .filter(|p| !before.contains(p))
            .map(|p| env.store().join("packs").join(p))
            .collect();
        out.push((name.to_string(), data, packs));
    }
    out
}

fn image_hex(env: &Env, reference: &str) -> String {
    let out = env.cmd().args(["--json", "inspect", reference]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string()
}

/// `verify` (with extra args) as JSON: (exit code, report).
fn verify(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let out = env.cmd().args(["--json", "verify"]).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (common::code(&out), v)
}

pub(crate) fn damaged_refs(report: &serde_json::Value) -> Vec<String> {
    let mut refs: Vec<String> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            d["refs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
        })
        .collect();
    refs.sort();
    refs
}

/// `get` that must fail with exit 4, mention every needle, and leave no output file.
fn get_fails_corrupt(env: &Env, reference: &str, needles: &[&str]) {
    let target = env.path("damaged-out.img");
    let out = env
        .cmd()
        .args(["get", reference, "-o"])
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 4, "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in {stderr}");
    }
    assert!(!target.exists(), "get of a damaged image wrote output");
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    FlipPackByte,
    TruncatePack,
    MissingPack,
    CorruptManifest,
    CorruptRef,
}

fn each_fault_is_named_and_other_images_come_back(kind: Kind) {
    let started = Instant::now();
    let mut faults = 0;
    let mut checked = 0;
    for fault in [
        Fault::FlipPackByte,
        Fault::TruncatePack,
        Fault::MissingPack,
        Fault::CorruptManifest,
        Fault::CorruptRef,
    ] {
        let env = Env::on(kind);
        let images = three_images(&env);
        let (victim, _, packs) = &images[1];
        let hex = image_hex(&env, victim);
        let pack = &packs[0];
        let pack_key = pack.strip_prefix(env.store()).unwrap().display().to_string();
        let needles: Vec<String> = match fault {
            Fault::FlipPackByte => {
                flip(pack, 5000);
                vec![pack_key.clone(), "offset".into(), "chunk".into()]
            }
            Fault::TruncatePack => {
                let len = std::fs::metadata(pack).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
                f.set_len(len / 2).unwrap();
                vec![pack_key.clone()]
            }
            Fault::MissingPack => {
                std::fs::remove_file(pack).unwrap();
                vec![pack_key.clone(), "missing".into()]
            }
            Fault::CorruptManifest => {
                flip(&env.store().join("manifests").join(&hex[..2]).join(&hex), 80);
                vec!["corrupt manifest".into()]
            }
            Fault::CorruptRef => {
                std::fs::write(env.store().join("refs/lab/b/@v1"), b"{\"format\": ").unwrap();
                vec!["corrupt ref lab/b:v1".into()]
            }
        };
        faults += 1;
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        get_fails_corrupt(&env, victim, &needles);
        // Structure alone finds all but a flipped data byte; --read-data finds all.
        let args: &[&str] = match fault {
            Fault::FlipPackByte => &["--read-data"],
            _ => &[],
        };
        let (code, report) = verify(&env, args);
        assert_eq!(code, 4, "{fault:?}: {report}");
        assert_eq!(damaged_refs(&report), vec![victim.clone()], "{fault:?}: {report}");
        for (name, data, _) in &images {
            checked += 1;
            if name != victim {
                assert!(env.get(name) == *data, "{fault:?}: {name} changed");
            }
        }
    }
    eprintln!(
        "fault figures ({kind:?}): {faults} faults injected, {checked} images checked, 0 corrupt reads returned, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn corrupt_config_is_named_by_get_and_verify(kind: Kind) {
    let env = Env::on(kind);
    let images = three_images(&env);
    std::fs::write(env.store().join("config"), b"{\"format\": \"imgstore\", \"vers").unwrap();
    get_fails_corrupt(&env, &images[0].0, &["corrupt config"]);
    let out = env.cmd().arg("verify").output().unwrap();
    assert_eq!(common::code(&out), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt config"));
    // Every image is named as affected, from the refs alone.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, _, _) in &images {
        assert!(stdout.contains(name.as_str()), "{name} not named: {stdout}");
    }
    let out = env.cmd().args(["--json", "verify"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["damaged_refs"].as_array().unwrap().len(), images.len());
}

fn repair_quarantines_and_a_re_put_restores_the_image(kind: Kind) {
    let env = Env::on(kind);
    let images = three_images(&env);
    let (victim, data, packs) = &images[1];
    flip(&packs[0], 5000);
    // Dry run changes nothing.
    let before = common::list_files(&env.store());
    let out = env.cmd().args(["repair", "--dry-run"]).output().unwrap();
    assert_eq!(common::code(&out), 4);
    assert_eq!(common::list_files(&env.store()), before);

    let out = env.cmd().args(["--json", "repair"]).output().unwrap();
    assert_eq!(common::code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &r["quarantined"][0];
    assert_eq!(q["affected_refs"], serde_json::json!([victim]));
    assert!(q["salvaged_chunks"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(q["lost_chunks"].as_array().unwrap().len(), 1, "{r}");
    assert!(!packs[0].exists(), "pack still in packs/");
    let hex = packs[0].file_name().unwrap().to_string_lossy().to_string();
    let qdir = env.store().join("quarantine");
    assert!(qdir.join(format!("{hex}.pack")).exists() && qdir.join(format!("{hex}.json")).exists());

    // Still damaged (one chunk lost) until the image is put again.
    let (code, report) = verify(&env, &[]);
    assert_eq!(code, 4);
    assert_eq!(damaged_refs(&report), vec![victim.clone()]);
    let f = env.file("again.img", data);
    env.put("lab/b:again", &f);
    let (code, report) = verify(&env, &["--read-data"]);
    assert_eq!(code, 0, "{report}");
    for (name, data, _) in &images {
        assert!(env.get(name) == *data, "{name}");
    }
    // Another host's index, built before the repair, catches up the same way.
    assert!(env
        .cmd_host("b")
        .args(["get", victim, "-o", "-"])
        .output()
        .unwrap()
        .status
        .success());
}

/// A directory store only: object storage has no symlinks.
#[test]
fn symlinks_and_stray_files_are_reported_not_followed() {
    let env = Env::new();
    let images = three_images(&env);
    let outside = env.file("secret.txt", b"not store data");
    let shard = env.store().join("packs/ab");
    std::fs::create_dir_all(&shard).unwrap();
    std::os::unix::fs::symlink(&outside, shard.join("ab".repeat(32))).unwrap();
    std::os::unix::fs::symlink(env.dir.path(), env.store().join("refs/lab/evil")).unwrap();
    std::fs::write(env.store().join("notes.txt"), b"stray").unwrap();
    let (code, report) = verify(&env, &["--read-data"]);
    assert_eq!(code, 4);
    let problems = report["problems"].as_array().unwrap();
    let has = |kind: &str, key: &str| problems.iter().any(|p| p["kind"] == kind && p["key"] == key);
    assert!(
        has("symlink", &format!("packs/ab/{}", "ab".repeat(32))),
        "{report}"
    );
    assert!(has("symlink", "refs/lab/evil"), "{report}");
    assert!(has("stray", "notes.txt"), "{report}");
    assert!(damaged_refs(&report).is_empty(), "{report}");
    for (name, data, _) in &images {
        assert!(env.get(name) == *data);
    }
}

fn subsets_cover_every_pack_once_and_time_limit_resumes(kind: Kind) {
    let env = Env::on(kind);
    for i in 0..6u64 {
        let f = env.file("x.img", &common::random(200_000, 300 + i));
        env.put(&format!("lab/s:v{i}"), &f);
    }
    let (_, full) = verify(&env, &[]);
    let packs = full["packs"].as_u64().unwrap();
    let mut read = 0;
    for n in 0..3 {
        let (code, r) = verify(&env, &["--read-data", "--subset", &format!("{n}/3")]);
        assert_eq!(code, 0);
        read += r["packs_read"].as_u64().unwrap();
    }
    assert_eq!(read, packs);
    let (code, r) = verify(&env, &["--read-data", "--max-duration", "0s"]);
    assert_eq!(code, 0);
    assert_eq!(r["packs_left"].as_u64().unwrap(), packs);
    let out = env
        .cmd()
        .args(["verify", "--read-data", "--subset", "3/3"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 2);
}

fn damaged_index_is_an_error_and_rebuild_restores_every_image(kind: Kind) {
    let env = Env::on(kind);
    let images = three_images(&env);
    let idx = env.dir.path().join("index-a");
    let db = idx.join("db");
    let backup = env.path("db-backup");
    copy_dir(&db, &backup);
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 4] = [
        ("garbled CURRENT", |db| {
            std::fs::write(db.join("CURRENT"), b"garbage\n").unwrap()
        }),
        ("missing CURRENT", |db| {
            std::fs::remove_file(db.join("CURRENT")).unwrap()
        }),
        ("truncated MANIFEST", |db| {
            for f in files_with(db, "MANIFEST-") {
                std::fs::write(&f, &std::fs::read(&f).unwrap()[..20]).unwrap();
            }
        }),
        ("flipped .sst bytes", |db| {
            for f in files_with(db, ".sst") {
                let len = std::fs::metadata(&f).unwrap().len() as usize;
                flip(&f, len / 2);
            }
        }),
    ];
    for (what, damage) in damages {
        std::fs::remove_dir_all(&db).unwrap();
        copy_dir(&backup, &db);
        damage(&db);
        let out = env.cmd().args(["get", &images[0].0, "-o", "-"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(common::code(&out), 1, "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: output written");
        assert!(stderr.contains("imgstore index rebuild"), "{what}: {stderr}");
        env.cmd().args(["index", "rebuild"]).assert().success();
        for (name, data, _) in &images {
            assert!(env.get(name) == *data, "{what}: {name}");
        }
    }
    // A deleted index is how a new host starts: rebuilt from segments.
    std::fs::remove_dir_all(&idx).unwrap();
    for (name, data, _) in &images {
        assert!(env.get(name) == *data, "deleted index: {name}");
    }
}

fn files_with(dir: &Path, pat: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(pat))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A flipped byte inside a group frame: get names the pack and the chunk
/// and writes nothing, verify --read-data names the image, repair loses
/// only members of that group and salvages the rest, and a re-put restores
/// the image.
fn a_flipped_byte_in_a_group_frame_is_named_and_repaired(kind: Kind) {
    use imgstore_store::codec::Codec;
    let env = Env::on(kind);
    let keep = common::text(2 << 20, 31);
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    let data = common::text(4 << 20, 32);
    let before = common::list_files(&env.store().join("packs"));
    env.put("lab/app:v1", &env.file("app.img", &data));
    let (path, _, entries) = common::packs(&env.store())
        .into_iter()
        .find(|(p, _, _)| !before.iter().any(|b| p.ends_with(b)))
        .expect("the put wrote a pack");
    let members_of = |at: u64| entries.iter().filter(|e| e.offset == at).count();
    let group = *entries
        .iter()
        .filter(|e| e.codec == Codec::ZstdGroup)
        .max_by_key(|e| members_of(e.offset))
        .expect("text is stored in groups");
    let members = members_of(group.offset);
    assert!(members > 1);
    flip(
        &path,
        group.offset as usize + imgstore_store::pack::FRAME_HEADER_LEN + group.stored_len as usize / 2,
    );
    let key = path.strip_prefix(env.store()).unwrap().display().to_string();
    get_fails_corrupt(&env, "lab/app:v1", &[&key, "chunk"]);
    let streamed = env.cmd().args(["get", "lab/app:v1", "-o", "-"]).output().unwrap();
    assert_eq!(common::code(&streamed), 4);
    assert!(streamed.stdout.len() < data.len(), "a stream stops at the damage");
    let (code, report) = verify(&env, &["--read-data"]);
    assert_eq!(code, 4, "{report}");
    assert_eq!(damaged_refs(&report), vec!["lab/app:v1".to_string()]);
    assert!(env.get("lab/keep:v1") == keep);

    let out = env.cmd().args(["--json", "repair"]).output().unwrap();
    assert_eq!(common::code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &r["quarantined"][0];
    // Members that still decode to their ids (zstd may decode a flipped
    // frame to other bytes from the flip on) are salvaged one by one.
    let lost = q["lost_chunks"].as_array().unwrap().len();
    assert!(lost >= 1 && lost <= members, "{lost} of {members}: {r}");
    assert_eq!(
        q["salvaged_chunks"].as_u64().unwrap() as usize,
        entries.len() - lost,
        "{r}"
    );
    env.put("lab/app:again", &env.file("again.img", &data));
    let (code, report) = verify(&env, &["--read-data"]);
    assert_eq!(code, 0, "{report}");
    assert!(env.get("lab/app:v1") == data);
    assert!(env.get("lab/keep:v1") == keep);
}

/// A directory store only: on object storage a key where a "directory"
/// should be lists like any other.
#[test]
fn verify_of_a_corrupt_config_fails_when_the_refs_cannot_be_listed() {
    let env = Env::new();
    three_images(&env);
    std::fs::write(env.store().join("config"), b"{\"format\": \"imgstore\", \"vers").unwrap();
    // A plain file where refs/ keeps name directories: listing fails there.
    std::fs::write(env.store().join("refs/lab/stray"), b"").unwrap();
    let out = env.cmd().args(["--json", "verify"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(common::code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("corrupt config") && stderr.contains("refs/lab/stray"),
        "{stderr}"
    );
    // No document claims that no image is affected.
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

// Each on a directory and on S3 (s3s-fs keeps objects as files, so the
// same damage reaches them).
crate::on_both_backends!(
    each_fault_is_named_and_other_images_come_back,
    corrupt_config_is_named_by_get_and_verify,
    repair_quarantines_and_a_re_put_restores_the_image,
    subsets_cover_every_pack_once_and_time_limit_resumes,
    damaged_index_is_an_error_and_rebuild_restores_every_image,
    a_flipped_byte_in_a_group_frame_is_named_and_repaired,
);
