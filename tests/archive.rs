//! The archive tier on file systems made by the real mksquashfs: archived
//! images come back byte for byte (as files, streams, after gc), blocks
//! zlib does not give back stay as stored, images that are not gzip
//! squashfs stay in the byte tier with a reason, the policy keeps the
//! newest hot, and an archive killed at any step loses nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use imgstore_store::sif;

use crate::common::{self, Env, Kind};

/// A fresh env from `make`, or `None` (the test skips, saying why)
/// without mksquashfs.
fn env_with_mksquashfs(make: impl FnOnce() -> Env) -> Option<Env> {
    if Command::new("mksquashfs").arg("-version").output().is_err() {
        println!("skipped: mksquashfs not installed (Debian squashfs-tools)");
        return None;
    }
    Some(make())
}

/// A tree with every kind of block: big files (data blocks), small ones
/// and tails (fragments), a duplicate, a sparse file, empty files, random
/// bytes (stored raw), a symlink and, where the file system takes them,
/// xattrs. `version` 2 inserts bytes in the middle of a big file (every
/// later block of it shifts) and edits a small one.
fn tree(env: &Env, name: &str, version: u32) -> PathBuf {
    let t = env.path(name);
    std::fs::create_dir_all(t.join("lib")).unwrap();
    let mut big = common::image(3 << 20, 11);
    if version == 2 {
        let at = big.len() / 3;
        big.splice(
            at..at,
            b"a new function in the middle of the library".iter().copied(),
        );
    }
    std::fs::write(t.join("lib/libbig.so"), &big).unwrap();
    std::fs::write(t.join("lib/libbig-copy.so"), common::image(3 << 20, 11)).unwrap();
    for i in 0..20u64 {
        let n = [700usize, 9000, 150_000, 400_000][i as usize % 4];
        let seed = if version == 2 && i == 5 { 500 } else { 100 + i };
        std::fs::write(t.join(format!("f{i}.py")), common::image(n, seed)).unwrap();
    }
    let mut sparse = vec![0u8; 1 << 20];
    sparse[..1000].copy_from_slice(&common::image(1000, 7));
    std::fs::write(t.join("sparse.bin"), &sparse).unwrap();
    std::fs::write(t.join("rand.bin"), common::random(300_000, 9)).unwrap();
    std::fs::write(t.join("empty1"), b"").unwrap();
    std::fs::write(t.join("lib/empty2"), b"").unwrap();
    std::os::unix::fs::symlink("f1.py", t.join("link")).unwrap();
    // Best effort: not every test file system takes user xattrs.
    let _ = Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'user.mime', b'text/x-python')",
        ])
        .arg(t.join("f2.py"))
        .output();
    t
}

/// `mksquashfs TREE OUT -comp gzip ARGS`.
fn squash(env: &Env, tree: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = env.path(name);
    let st = Command::new("mksquashfs")
        .arg(tree)
        .arg(&out)
        .args(["-noappend", "-quiet", "-mkfs-time", "1700000000"])
        .args(args)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    out
}

/// [`tree`] `version` as a gzip squashfs, `v{version}.sqfs`.
fn gzip_fs(env: &Env, version: u32) -> PathBuf {
    let t = tree(env, &format!("t{version}"), version);
    squash(env, &t, &format!("v{version}.sqfs"), &["-comp", "gzip"])
}

/// The squashfs as a SIF's partition, behind a deffile object.
fn sif_of(env: &Env, fs: &Path, name: &str) -> PathBuf {
    let image = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", b"Bootstrap: docker\nFrom: alpine\n"),
        (sif::DATA_PARTITION, "", &std::fs::read(fs).unwrap()),
    ]);
    env.file(name, &image)
}

fn archive(env: &Env, args: &[&str]) -> serde_json::Value {
    env.json(&[&["archive"], args].concat())
}

/// `verify --read-data` finds nothing wrong.
fn assert_clean(env: &Env, context: &str) {
    let v = env.json(&["verify", "--read-data"]);
    assert!(
        v["problems"].as_array().unwrap().is_empty() && v["damaged"].as_array().unwrap().is_empty(),
        "{context}: {v}"
    );
}

fn gc_twice(env: &Env) -> u64 {
    let mut freed = 0;
    for _ in 0..2 {
        freed += env.json(&["gc", "--grace", "0s"])["bytes_freed"]
            .as_u64()
            .unwrap();
    }
    freed
}

fn archived_images_come_back_byte_for_byte_after_gc(kind: Kind) {
    let Some(env) = env_with_mksquashfs(|| Env::on(kind)) else {
        return;
    };
    let v1 = sif_of(&env, &gzip_fs(&env, 1), "v1.sif");
    let v2 = gzip_fs(&env, 2);
    env.put("lab/fs:v1", &v1);
    env.put("lab/fs:v2", &v2);

    // v2 stays hot: v1's blocks it holds as they are stay as they are.
    let r = archive(&env, &["lab/fs:v1"]);
    let one = &r["images"][0];
    assert_eq!(one["tier"], "archive", "{r}");
    assert!(one["inflated_blocks"].as_u64().unwrap() > 0, "{r}");
    assert!(one["shared_blocks"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(one["other_blocks"], 0, "{r}");
    assert!(
        one["raw_blocks"].as_u64().unwrap() > 0,
        "random bytes are stored raw: {r}"
    );
    assert!(
        one["stream_size"].as_u64().unwrap() > one["size"].as_u64().unwrap(),
        "{r}"
    );
    let (before, after) = (
        r["live_stored_bytes_before"].as_u64().unwrap(),
        r["live_stored_bytes_after"].as_u64().unwrap(),
    );
    assert!(before > 0 && after > 0 && after != before, "{r}");
    let again = archive(&env, &["lab/fs:v1"]);
    assert_eq!(again["images"][0]["already"], true, "{again}");

    let want = std::fs::read(&v1).unwrap();
    assert!(env.get("lab/fs:v1") == want, "archived get differs");
    let got = env.json(&["get", "lab/fs:v1", "-o", env.path("o.sif").to_str().unwrap()]);
    assert_eq!(got["archived"], true, "{got}");
    let inspect = env.json(&["inspect", "lab/fs:v1"]);
    assert_eq!(inspect["tier"], "archive", "{inspect}");
    assert_eq!(env.json(&["inspect", "lab/fs:v2"])["tier"], "bytes");
    let ls = env.json(&["ls"]);
    let tiers: Vec<&str> = ls["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tier"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["archive", "bytes"], "{ls}");
    let out = env.cmd().arg("ls").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("TIER"));
    let h = env.json(&["history", "lab/fs"]);
    let tiers: Vec<&str> = h["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tier"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["archive", "bytes"], "{h}");

    // The byte tier's chunks only v1 used are garbage now; after gc the
    // image still comes back, also as a stream, and the store checks out.
    let s = env.json(&["stats"]);
    assert!(s["unreferenced_bytes"].as_u64().unwrap() > 0, "{s}");
    gc_twice(&env);
    assert!(env.get("lab/fs:v1") == want, "archived get after gc differs");
    let out = env.cmd().args(["get", "lab/fs:v1", "-o", "-"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == want, "archived get to stdout differs");
    assert!(env.get("lab/fs:v2") == std::fs::read(&v2).unwrap());
    assert_clean(&env, "after gc");
    // The stats view follows the image into its new tier.
    let s = env.json(&["stats"]);
    assert_eq!(s["archived_images"], 1, "{s}");

    // Without v2, nothing but v1's archive holds anything: gc frees v2's
    // and v1's byte-tier chunks, and v1 still comes back.
    env.cmd().args(["rm", "lab/fs:v2"]).assert().success();
    assert!(gc_twice(&env) > 0, "nothing was freed");
    assert!(
        env.get("lab/fs:v1") == want,
        "archived get after the last gc differs"
    );
    assert_clean(&env, "after the last gc");
}

crate::on_both_backends!(archived_images_come_back_byte_for_byte_after_gc);

/// Blocks zlib -9 does not give back (here: damaged ones, and a whole
/// file system made at gzip level 1) stay as stored and still round-trip.
#[test]
fn blocks_zlib_does_not_give_back_stay_as_stored() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let t = tree(&env, "t", 1);
    let fs = squash(&env, &t, "v1.sqfs", &["-comp", "gzip"]);
    // Bytes flipped inside the first compressed data block (right after the
    // 96-byte superblock): it no longer inflates to what deflates back.
    let mut bytes = std::fs::read(&fs).unwrap();
    for b in &mut bytes[200..208] {
        *b ^= 0x5a;
    }
    let damaged = env.file("damaged.sqfs", &bytes);
    env.put("lab/d:v1", &damaged);
    let r = archive(&env, &["lab/d:v1"]);
    let one = &r["images"][0];
    assert_eq!(one["tier"], "archive", "{r}");
    assert!(one["other_blocks"].as_u64().unwrap() >= 1, "{r}");
    gc_twice(&env);
    assert!(env.get("lab/d:v1") == bytes);

    let low = squash(
        &env,
        &t,
        "low.sqfs",
        &["-comp", "gzip", "-Xcompression-level", "1"],
    );
    env.put("lab/low:v1", &low);
    let r = archive(&env, &["lab/low:v1"]);
    let one = &r["images"][0];
    assert_eq!(one["tier"], "bytes", "{r}");
    assert!(one["reason"].as_str().unwrap().contains("zlib -9"), "{r}");
    assert!(env.get("lab/low:v1") == std::fs::read(&low).unwrap());
}

#[test]
fn images_that_are_not_gzip_squashfs_stay_with_a_reason() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let t = tree(&env, "t", 1);
    env.put("lab/xz:v1", &squash(&env, &t, "xz.sqfs", &["-comp", "xz"]));
    env.put("lab/raw:v1", &env.file("raw.img", &common::image(2 << 20, 3)));
    let r = archive(&env, &["lab/xz:v1", "lab/raw:v1"]);
    let (xz, raw) = (&r["images"][0], &r["images"][1]);
    assert_eq!(xz["tier"], "bytes", "{r}");
    assert!(xz["reason"].as_str().unwrap().contains("xz"), "{r}");
    assert_eq!(raw["tier"], "bytes", "{r}");
    assert!(raw["reason"].as_str().unwrap().contains("no squashfs"), "{r}");
    let out = env.cmd().args(["archive", "lab/raw:v1"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stays in the byte tier"));
    // Nothing to archive is a usage error, not a silent success.
    let out = env.cmd().arg("archive").output().unwrap();
    assert_eq!(common::code(&out), 2);
}

#[test]
fn the_policy_keeps_each_names_newest_images_hot() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let v1 = gzip_fs(&env, 1);
    let v2 = gzip_fs(&env, 2);
    env.put("lab/fs:v1", &v1);
    // Ref times have one-second resolution.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.put("lab/fs:v2", &v2);
    let plan = env.json(&["archive", "--keep-hot", "1", "--dry-run"]);
    let refs: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["lab/fs:v1"], "{plan}");
    // Images put within the last hour stay hot too.
    let none = env.json(&["archive", "--keep-hot", "1", "--older-than", "1h", "--dry-run"]);
    assert_eq!(none.as_array().unwrap().len(), 0, "{none}");
    let r = archive(&env, &["--keep-hot", "1"]);
    assert_eq!(r["images"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["images"][0]["tier"], "archive", "{r}");
    assert_eq!(env.json(&["inspect", "lab/fs:v2"])["tier"], "bytes");
    let plan = env.json(&["archive", "--keep-hot", "1", "--dry-run"]);
    assert_eq!(
        plan.as_array().unwrap().len(),
        0,
        "archived images are not picked again: {plan}"
    );
    assert!(env.get("lab/fs:v1") == std::fs::read(&v1).unwrap());
}

/// Killed at each step, an archive leaves the image as it was (whole, in
/// either tier), gc loses nothing of it, and a second run finishes.
#[test]
fn an_archive_killed_at_any_step_loses_nothing() {
    for step in [
        "archive-after-stream",
        "archive-after-stream-manifest",
        "archive-before-recipe",
        "archive-after-recipe",
    ] {
        let Some(env) = env_with_mksquashfs(Env::new) else {
            return;
        };
        let v1 = gzip_fs(&env, 1);
        env.put("lab/fs:v1", &v1);
        let want = std::fs::read(&v1).unwrap();
        let mut child = common::spawn_held(
            &env,
            step,
            &["archive", "lab/fs:v1"],
            &[("IMGSTORE_LEASE_SECS", "2")],
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // The killed archive's lease lapses; gc runs twice (condemn, delete).
        std::thread::sleep(std::time::Duration::from_secs(3));
        gc_twice(&env);
        assert!(env.get("lab/fs:v1") == want, "{step}: the image differs");
        assert_clean(&env, step);
        let r = archive(&env, &["lab/fs:v1"]);
        assert_eq!(r["images"][0]["tier"], "archive", "{step}: {r}");
        gc_twice(&env);
        assert!(
            env.get("lab/fs:v1") == want,
            "{step}: the image differs after the second run"
        );
    }
}

/// gc runs twice while an archive waits before its commit point: the
/// archive's new chunks are in no image yet, but its lease keeps them.
#[test]
fn gc_while_archiving_loses_nothing() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let v1 = gzip_fs(&env, 1);
    env.put("lab/fs:v1", &v1);
    let child = common::spawn_held(&env, "archive-before-recipe", &["archive", "lab/fs:v1"], &[]);
    gc_twice(&env);
    common::release(&env, "archive-before-recipe");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    gc_twice(&env);
    assert!(env.get("lab/fs:v1") == std::fs::read(&v1).unwrap());
    assert_clean(&env, "after the archive");
}

/// mount and serve read an archived image through the random-access reader:
/// random ranges through the library, and a pull of the whole blob (the
/// curl replay of Apptainer's client), every byte right.
#[test]
fn archived_images_read_at_random_and_pull_whole() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let v1 = sif_of(&env, &gzip_fs(&env, 1), "v1.sif");
    env.put("lab/fs:v1", &v1);
    archive(&env, &["lab/fs:v1"]);
    gc_twice(&env);
    let want = std::fs::read(&v1).unwrap();

    let store =
        std::sync::Arc::new(imgstore_store::Store::open(&env.store(), Some(env.path("index-a"))).unwrap());
    let reader = store.reader().unwrap();
    let image = imgstore_store::ImageRef::parse("lab/fs:v1").unwrap();
    let r = reader.open(&image).unwrap();
    assert_eq!(r.size(), want.len() as u64);
    crate::reader::random_reads(&r, &want, 300, 7);
    assert!(
        crate::reader::read_all(&r, 1 << 20) == want,
        "read whole in 1 MiB pieces"
    );
    drop((r, reader));

    let srv = crate::serve::Server::start(&env);
    let m = crate::serve::curl(&[&srv.url("/v2/lab/fs/manifests/v1")]);
    assert_eq!(m.status, 200);
    let layer = m.json()["layers"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(layer, format!("sha256:{}", crate::serve::sha256(&want)));
    let blob = crate::serve::curl(&[&srv.url(&format!("/v2/lab/fs/blobs/{layer}"))]);
    assert_eq!((blob.exit, blob.status), (0, 200));
    assert!(blob.body == want, "pulled blob differs");
}

/// `get lab/fs:v1` exits 4 (corrupt) without an output file; its stderr.
fn get_fails_as_corrupt(env: &Env, what: &str) -> String {
    let out_file = env.path("never.sqfs");
    let out = env
        .cmd()
        .args(["get", "lab/fs:v1", "-o"])
        .arg(&out_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(common::code(&out), 4, "{what}: {err}");
    assert!(!out_file.exists(), "{what} left an output file");
    err
}

/// Damage to an archived image's recipe or stream is found and named:
/// `get` fails without writing the output, gc refuses to mark past it,
/// `verify` reports it.
#[test]
fn a_damaged_recipe_or_stream_is_named_never_returned() {
    let Some(env) = env_with_mksquashfs(Env::new) else {
        return;
    };
    let v1 = gzip_fs(&env, 1);
    let id = env.put("lab/fs:v1", &v1)["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string();
    archive(&env, &["lab/fs:v1"]);
    gc_twice(&env);
    let recipe = env.store().join("archives").join(&id[..2]).join(&id);
    let good = std::fs::read(&recipe).unwrap();
    let mut bad = good.clone();
    bad[150] ^= 0x01;
    std::fs::write(&recipe, &bad).unwrap();
    let err = get_fails_as_corrupt(&env, "a damaged recipe");
    assert!(err.contains("archives/"), "{err}");
    let gc = env.cmd().args(["gc", "--grace", "0s"]).output().unwrap();
    assert_ne!(common::code(&gc), 0, "gc marked past a damaged recipe");
    let v = env.cmd().arg("verify").output().unwrap();
    assert_eq!(common::code(&v), 4, "{}", String::from_utf8_lossy(&v.stdout));

    // The recipe mended, a byte flipped in the stream's pack instead.
    std::fs::write(&recipe, &good).unwrap();
    assert!(env.get("lab/fs:v1") == std::fs::read(&v1).unwrap());
    // Every live chunk is the stream's now: a byte in the middle of each pack.
    for p in common::list_files(&env.store().join("packs")) {
        let pack = env.store().join("packs").join(p);
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x5a;
        std::fs::write(&pack, &bytes).unwrap();
    }
    get_fails_as_corrupt(&env, "a damaged stream");
    let v = env.cmd().args(["verify", "--read-data"]).output().unwrap();
    assert_eq!(common::code(&v), 4, "{}", String::from_utf8_lossy(&v.stdout));
}
