//! put/get round trips: sizes, zeros, stdin, dedup accounting.

use crate::common::{self, Env, Kind};

fn round_trip(env: &Env, name: &str, data: &[u8]) -> serde_json::Value {
    let file = env.file(&format!("{}.img", name.replace([':', '/'], "_")), data);
    let report = env.put(name, &file);
    assert_eq!(report["size"], data.len() as u64);
    assert_eq!(report["image"], format!("blake3:{}", blake3::hash(data).to_hex()));
    let back = env.get(name);
    assert!(back == data, "{name}: get returned different bytes");
    report
}

fn sizes_from_empty_to_many_chunks(kind: Kind) {
    let env = Env::on(kind);
    round_trip(&env, "t/empty:v", &[]);
    round_trip(&env, "t/one:v", b"x");
    round_trip(&env, "t/small:v", &common::random(1000, 1));
    round_trip(&env, "t/chunky:v", &common::image(3 << 20, 2));
    round_trip(&env, "t/random:v", &common::random(5 << 20, 3));
}

#[test]
fn zeros_are_stored_as_nothing_and_come_back_sparse() {
    let env = Env::new();
    let mut data = common::random(300_000, 4);
    data.extend(vec![0u8; 8 << 20]);
    data.extend(common::random(300_000, 5));
    data.extend(vec![0u8; 2 << 20]);
    let before = env.pack_bytes();
    let report = round_trip(&env, "t/zeros:v", &data);
    assert!(report["zero_bytes"].as_u64().unwrap() >= 9 << 20, "{report}");
    assert!(env.pack_bytes() - before < 1 << 20, "zero runs were stored");
    // The restored file is sparse: fewer blocks allocated than its length.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(env.path("got.img")).unwrap();
    assert!(
        m.blocks() * 512 < m.len() / 2,
        "not sparse: {} blocks for {} bytes",
        m.blocks(),
        m.len()
    );
}

fn stdin_of_unknown_length_and_stdout(kind: Kind) {
    let env = Env::on(kind);
    let data = common::image(2 << 20, 6);
    let out = env
        .cmd()
        .args(["--json", "put", "t/pipe:v", "-"])
        .write_stdin(data.clone())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["size"], data.len() as u64);
    let got = env
        .cmd()
        .args(["get", "t/pipe:v", "-o", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == data);
}

fn similar_image_costs_only_the_difference(kind: Kind) {
    let env = Env::on(kind);
    let v1 = common::image(16 << 20, 7);
    let v2 = common::edit(&v1, 5, 8);
    let r1 = round_trip(&env, "lab/app:v1", &v1);
    let after_first = env.pack_bytes();
    let r2 = round_trip(&env, "lab/app:v2", &v2);
    let added = env.pack_bytes() - after_first;
    // 5 edits of 4 KiB and one insertion touch at most ~12 chunks of <=256 KiB.
    assert!(added < 3 << 20, "second image added {added} bytes to packs");
    assert!(r1["added"]["raw_bytes"].as_u64().unwrap() > 10 << 20);
    let reported = r2["added"]["stored_bytes"].as_u64().unwrap();
    assert!(
        reported <= added && reported > 0,
        "report {reported} vs packs {added}"
    );
}

fn same_image_twice_costs_nothing_new(kind: Kind) {
    let env = Env::on(kind);
    let data = common::image(4 << 20, 9);
    round_trip(&env, "lab/app:a", &data);
    let packs = common::list_files(&env.store().join("packs"));
    let r = round_trip(&env, "lab/other:b", &data);
    assert_eq!(r["added"]["chunks"], 0);
    assert_eq!(common::list_files(&env.store().join("packs")), packs);
    // A repeat inside one image is stored once.
    let mut twice = common::random(2 << 20, 10);
    twice.extend_from_within(..);
    let r = round_trip(&env, "lab/twice:v", &twice);
    let raw = r["added"]["raw_bytes"].as_u64().unwrap();
    assert!(raw < (2 << 20) + (512 << 10), "repeat stored twice: {raw}");
}

fn get_by_image_id_and_prefix(kind: Kind) {
    let env = Env::on(kind);
    let data = common::image(1 << 20, 11);
    let r = round_trip(&env, "lab/app:v1", &data);
    let id = r["image"].as_str().unwrap().to_string();
    assert!(env.get(&id) == data);
    assert!(env.get(&id[..7 + 10]) == data);
}

#[test]
fn get_overwrites_only_when_complete() {
    let env = Env::new();
    let data = common::image(1 << 20, 12);
    let file = env.file("in.img", &data);
    env.put("lab/app:v1", &file);
    let target = env.file("target.img", b"old contents");
    env.cmd()
        .args(["get", "lab/app:v1", "-o"])
        .arg(&target)
        .assert()
        .success();
    assert!(std::fs::read(&target).unwrap() == data);
    // No temporary files are left beside the target.
    let names: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// A 100 GiB sparse image: put in bounded time and memory (holes are never
/// read), adds only its data, and comes back sparse with the same bytes.
#[test]
fn sparse_100_gib_image() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let path = env.path("sparse.img");
    let size: u64 = 100 << 30;
    let regions = [
        (0u64, common::random(300_000, 20)),
        (50 << 30, common::random(700_000, 21)),
        (size - 100_000, common::random(100_000, 22)),
    ];
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for (at, data) in &regions {
        f.seek(SeekFrom::Start(*at)).unwrap();
        f.write_all(data).unwrap();
    }
    drop(f);
    let r = env.put("lab/sparse:v1", &path);
    assert_eq!(r["size"], size);
    let added = r["added"]["raw_bytes"].as_u64().unwrap();
    assert!(added < 2 << 20, "added {added} bytes for 1.1 MB of data");
    let out = env.path("back.img");
    env.cmd()
        .args(["get", "lab/sparse:v1", "-o"])
        .arg(&out)
        .assert()
        .success();
    let m = std::fs::metadata(&out).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        m.blocks() * 512 < 16 << 20,
        "restored file is not sparse: {} blocks",
        m.blocks()
    );
    let mut back = std::fs::File::open(&out).unwrap();
    for (at, data) in &regions {
        let mut buf = vec![0u8; data.len()];
        back.seek(SeekFrom::Start(*at)).unwrap();
        std::io::Read::read_exact(&mut back, &mut buf).unwrap();
        assert!(&buf == data, "data at {at} differs");
    }
}

/// A hole is cut as if its zeros had been read: the same bytes through a
/// pipe (every zero read) and from a sparse file (holes skipped) give the
/// same chunks, so the second put adds nothing. Which zeros a filesystem
/// reports as holes can change between two reads of one file (ext4's
/// unwritten extents are holes only while uncached), so cuts must not
/// depend on it.
#[test]
fn a_hole_is_cut_like_the_zeros_it_holds() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let path = env.path("sparse.img");
    let size: u64 = (9 << 20) + 12_345;
    let regions = [
        (0u64, common::random(1_000_000, 23)),
        (5 << 20, common::random(777_777, 24)),
    ];
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for (at, data) in &regions {
        f.seek(SeekFrom::Start(*at)).unwrap();
        f.write_all(data).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let blocks = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        blocks * 512 < 4 << 20,
        "the test file is not sparse ({blocks} blocks)"
    );
    let bytes = std::fs::read(&path).unwrap();

    let out = env
        .cmd()
        .args(["--json", "put", "t/holes:pipe", "-"])
        .write_stdin(bytes)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let piped: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let file = env.put("t/holes:file", &path);
    assert_eq!(file["image"], piped["image"]);
    assert_eq!(file["chunks"], piped["chunks"], "{file} vs {piped}");
    assert_eq!(file["zero_bytes"], piped["zero_bytes"], "{file} vs {piped}");
    assert_eq!(
        file["added"]["chunks"], 0,
        "the file's cuts differ from the pipe's: {file}"
    );
    assert!(env.get("t/holes:file") == std::fs::read(&path).unwrap());
}

/// A put that outgrows an index segment forgets the chunks it stored and
/// finds them in the index instead (so its memory does not grow with the
/// image): an image repeating itself across segments must still store each
/// of its distinct chunks exactly once.
#[test]
fn repeats_across_index_segments_are_stored_once() {
    let a = common::random(40 << 20, 31);
    let mut data = a.clone();
    data.extend(common::random(1 << 20, 32));
    data.extend(&a);
    for per_segment in ["1", "32"] {
        let env = Env::new();
        let file = env.file("img", &data);
        let mut cmd = env.cmd();
        cmd.env("IMGSTORE_TEST_PACKS_PER_SEGMENT", per_segment);
        let r = common::json_of(cmd, &["put", "lab/rep:v1", file.to_str().unwrap()]);
        assert_eq!(env.get("lab/rep:v1"), data);
        let inspect = env.json(&["inspect", "lab/rep:v1"]);
        assert_eq!(
            (&r["added"]["chunks"], &r["added"]["raw_bytes"]),
            (&inspect["unique_chunks"], &inspect["unique_chunk_bytes"]),
            "{per_segment} packs per segment"
        );
        assert!(
            r["packs"].as_u64().unwrap() >= 2,
            "the image fills more than one pack"
        );
    }
}

/// The local index keeps few table files however many puts it saw: each
/// reader (every put and get) opens all of them. Before, closing the index
/// cancelled the compaction RocksDB had scheduled, and the segments' files
/// (one key each) were moved down whole instead of merged, so every put
/// left a file or two behind, and the 987th put into a store failed with
/// "Too many open files" at the common limit of 1,024 descriptors. Forty
/// puts, each its own segment, must leave a number of files that does not
/// grow with them, and must work under a limit of 64 descriptors.
#[test]
fn the_local_index_keeps_few_files_however_many_puts() {
    let env = Env::new();
    let tables = || {
        let db = env.path("index-a").join("db");
        std::fs::read_dir(&db)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sst"))
            .count()
    };
    for i in 0..40u64 {
        let file = env.file("img", &common::random(64 << 10, 100 + i));
        env.put(&format!("lab/many:v{i}"), &file);
        if i == 9 || i == 39 {
            assert!(tables() <= 20, "{} table files after {} puts", tables(), i + 1);
        }
    }
    let mut limited = std::process::Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" put -q lab/many:limited \"$1\"")
        .arg(assert_cmd::cargo::cargo_bin("imgstore"))
        .arg(env.file("img", &common::random(64 << 10, 99)))
        .env("IMGSTORE_STORE", env.store())
        .env("IMGSTORE_INDEX_DIR", env.path("index-a"))
        .env("IMGSTORE_HOSTNAME", "host-a");
    let out = limited.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.get("lab/many:v0"), common::random(64 << 10, 100));
}

/// A get reads the manifest a window of entries at a time: an image of
/// many more chunks than a window (1 KiB chunks), with zero runs between
/// them, must come back byte for byte, to a file and to a stream.
#[test]
fn images_of_many_manifest_windows_round_trip() {
    let env = Env::with_init(&["--chunk-size", "1KiB"]);
    let mut data = common::random(6 << 20, 41);
    data.extend(vec![0u8; 3 << 20]);
    data.extend(common::random(6 << 20, 42));
    let r = round_trip(&env, "lab/many:v1", &data);
    assert!(r["chunks"].as_u64().unwrap() > 2 * 4096, "{}", r["chunks"]);
    let out = env
        .cmd()
        .args(["get", "lab/many:v1", "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data, "streamed bytes differ");
}

/// Compressible data is stored in group frames (version 2 packs) that
/// `get` and `verify --read-data` read back; a store made before groups
/// (no `chunk-groups` feature) keeps writing version 1 packs and segments,
/// which the builds before groups read.
#[test]
fn groups_in_new_stores_and_none_in_old_ones() {
    use imgstore_store::codec::Codec;
    let data = {
        let mut d = common::text(3 << 20, 1);
        d.extend(common::random(1 << 20, 2));
        d.extend(common::text(2 << 20, 3));
        d
    };
    for groups in [true, false] {
        let env = Env::new();
        if !groups {
            let config = env.store().join("config");
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
            v["features"] = serde_json::json!(["manifest-deltas"]);
            std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
        let put = env.put("lab/app:v1", &env.file("a.img", &data));
        let packs = common::packs(&env.store());
        let entries: Vec<_> = packs.iter().flat_map(|(_, _, e)| e.clone()).collect();
        let grouped = entries.iter().filter(|e| e.codec == Codec::ZstdGroup).count();
        let raw = entries.iter().filter(|e| e.codec == Codec::Raw).count();
        assert!(raw > 0, "the random MiB is stored raw");
        let segments = common::list_files(&env.store().join("index"));
        let seg_version = |p: &String| {
            let b = std::fs::read(env.store().join("index").join(p)).unwrap();
            u32::from_le_bytes(b[8..12].try_into().unwrap())
        };
        if groups {
            // Groups of 1 MiB at most: 5 MiB of text makes at least 5.
            let frames: std::collections::HashSet<_> = entries
                .iter()
                .filter(|e| e.codec == Codec::ZstdGroup)
                .map(|e| e.offset)
                .collect();
            assert!(
                frames.len() >= 5 && grouped > 5 * 8,
                "{} frames, {grouped} members",
                frames.len()
            );
            assert!(packs.iter().all(|(_, b, _)| b[8..12] == 2u32.to_le_bytes()));
            assert!(segments.iter().all(|s| seg_version(s) == 2));
        } else {
            assert_eq!(grouped, 0);
            assert!(packs.iter().all(|(_, b, _)| b[8..12] == 1u32.to_le_bytes()));
            assert!(segments.iter().all(|s| seg_version(s) == 1));
        }
        // Stored: the text shrinks (more with groups), the random part does not.
        let stored = put["added"]["stored_bytes"].as_u64().unwrap();
        assert!(stored < (1 << 20) + (5 << 20) / 2, "{groups}: stored {stored}");
        assert!(env.get("lab/app:v1") == data, "{groups}: get to a file");
        let streamed = env
            .cmd()
            .args(["get", "lab/app:v1", "-o", "-"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert!(streamed == data, "{groups}: get to a stream");
        env.cmd().args(["verify", "--read-data"]).assert().success();
    }
}

/// An image not in the page cache is read with O_DIRECT (see store's
/// `direct` module): data, a skipped hole, a tail that ends mid-page, and the
/// same bytes back. The image's pages are dropped from the cache first.
#[test]
fn cold_image_is_read_direct_and_comes_back_the_same() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let env = Env::new();
    let path = env.path("cold.img");
    let mut data = common::image(5 << 20, 30);
    data.extend(vec![0u8; 3 << 20]); // a hole, once written sparse
    data.extend(common::image((2 << 20) + 777, 31));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&data[..5 << 20]).unwrap();
    f.seek(SeekFrom::Start((8 << 20) as u64)).unwrap();
    f.write_all(&data[8 << 20..]).unwrap();
    f.sync_all().unwrap();
    #[allow(unsafe_code)]
    // SAFETY: a plain syscall on a live descriptor; the result is checked.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    drop(f);

    let out = env
        .cmd()
        .env("IMGSTORE_LOG", "imgstore_store::ops::put=debug")
        .args(["--json", "put", "t/cold:v", path.to_str().unwrap()])
        .assert()
        .success()
        .get_output()
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["image"],
        format!("blake3:{}", blake3::hash(&data).to_hex())
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let direct: u64 = log
        .split("direct_bytes=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no direct_bytes in the log: {log}"));
    let fs_has_direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_ok();
    if fs_has_direct {
        // All but the unaligned tail's last partial page came straight from disk.
        assert!(
            direct >= (7 << 20) as u64,
            "only {direct} bytes read direct: {log}"
        );
    }
    assert!(env.get("t/cold:v") == data, "get returned different bytes");
}

crate::on_both_backends!(
    sizes_from_empty_to_many_chunks,
    stdin_of_unknown_length_and_stdout,
    similar_image_costs_only_the_difference,
    same_image_twice_costs_nothing_new,
    get_by_image_id_and_prefix,
);

// The round trips that need no look at the objects' files, on Azurite.
crate::on_azure!(
    sizes_from_empty_to_many_chunks,
    stdin_of_unknown_length_and_stdout,
    get_by_image_id_and_prefix,
);
