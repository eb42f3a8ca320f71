//! The random-access reader through the library, on stores the real binary
//! wrote: random ranges against the original bytes (zero runs, a delta
//! manifest, compressed groups), threads sharing one handle, a flipped byte
//! in a pack, and gc repacking while a handle is open.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use imgstore_store::codec::Codec;
use imgstore_store::manifest::Entry;
use imgstore_store::manifest::{Manifest, ManifestMeta};
use imgstore_store::pack::{self, Location};
use imgstore_store::{index, Digest, Error, ImageId, ImageReader, ImageRef, Store, StoreReader, TagRef};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, Env};

fn open_store(env: &Env) -> Arc<Store> {
    Arc::new(Store::open(&env.store(), Some(env.path("index-a"))).unwrap())
}

fn tag(s: &str) -> ImageRef {
    ImageRef::Tag(TagRef::parse(s).unwrap())
}

fn image_id(report: &serde_json::Value) -> ImageId {
    let hex = report["image"].as_str().unwrap().trim_start_matches("blake3:");
    ImageId(Digest::from_hex(hex).unwrap())
}

/// `n` reads at random offsets (some past the end) of random lengths,
/// mostly small, each checked against `data`.
pub(crate) fn random_reads(r: &ImageReader, data: &[u8], n: usize, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 300_000];
    for i in 0..n {
        let offset = rng.random_range(0..data.len() as u64 + 64);
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(0..300_000),
            1..=3 => 4096,
            _ => rng.random_range(1..9000),
        };
        let got = r.read_at(offset, &mut buf[..len]).unwrap();
        let start = (offset as usize).min(data.len());
        let want = &data[start..(start + len).min(data.len())];
        assert_eq!(got, want.len(), "read {i}: {len} bytes at {offset}");
        assert!(buf[..got] == *want, "read {i}: {len} bytes at {offset} differ");
    }
}

/// The image read whole in `step`-byte pieces.
pub(crate) fn read_all(r: &ImageReader, step: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.size() as usize);
    let mut buf = vec![0u8; step];
    loop {
        let n = r.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A name's two images (the second a delta manifest), with zero runs and
/// compressed groups; returns their bytes.
fn two_commits(env: &Env) -> (Vec<u8>, Vec<u8>) {
    let x = common::image(8 << 20, 21);
    let y = common::edit(&x, 5, 22);
    env.put("lab/app:v1", &env.file("x.img", &x));
    let second = env.put("lab/app:v2", &env.file("y.img", &y));
    let path = env
        .store()
        .join(imgstore_store::manifest::delta_key(&image_id(&second)));
    let manifest = std::fs::read(path).unwrap();
    assert_eq!(
        u32::from_le_bytes(manifest[8..12].try_into().unwrap()),
        2,
        "v2 is a delta"
    );
    (x, y)
}

#[test]
fn random_reads_return_the_images_bytes() {
    let env = Env::new();
    let (x, y) = two_commits(&env);
    let store = open_store(&env);
    // What the reads cover: zero runs in the manifests, groups in the packs.
    let id = store.resolve(&tag("lab/app:v1")).unwrap().id;
    let entries = store.manifest(&id).unwrap().entries;
    assert!(
        entries.iter().any(|e| matches!(e, Entry::Zero { .. })),
        "no zero run"
    );
    let grouped = common::packs(&env.store())
        .iter()
        .flat_map(|(_, _, e)| e.clone())
        .filter(|e| e.codec == Codec::ZstdGroup)
        .count();
    assert!(grouped > 10, "{grouped} grouped chunks");

    let reader = store.reader().unwrap();
    let rx = reader.open(&tag("lab/app:v1")).unwrap();
    let ry = reader.open(&tag("lab/app:v2")).unwrap();
    assert_eq!((rx.size(), ry.size()), (x.len() as u64, y.len() as u64));
    random_reads(&rx, &x, 2000, 1);
    random_reads(&ry, &y, 2000, 2);
    assert!(read_all(&ry, 128 << 10) == y);
    assert!(read_all(&rx, 4093) == x);
    assert_eq!(rx.read_at(x.len() as u64, &mut [0u8; 10]).unwrap(), 0);
    let stats = reader.stats();
    assert!(stats.cache_hits > stats.frames_decoded, "{stats:?}");
    // A tiny cache still returns the right bytes, decoding again.
    let small = store.reader_with(1 << 20).unwrap();
    random_reads(&small.open(&tag("lab/app:v2")).unwrap(), &y, 500, 3);
    assert!(small.memory().frames <= 1 << 20);
}

#[test]
fn four_threads_read_through_one_handle() {
    fn shared<T: Send + Sync>(_: &T) {}
    let env = Env::new();
    let (x, y) = two_commits(&env);
    let store = open_store(&env);
    let reader: StoreReader = store.reader().unwrap();
    let rx = reader.open(&tag("lab/app:v1")).unwrap();
    let ry = reader.open(&tag("lab/app:v2")).unwrap();
    shared(&reader);
    shared(&rx);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (rx, ry, x, y) = (&rx, &ry, &x, &y);
            s.spawn(move || {
                random_reads(rx, x, 500, 10 + t);
                random_reads(ry, y, 500, 20 + t);
            });
        }
    });
}

#[test]
fn an_image_put_after_the_handle_opened_is_read_after_a_catch_up() {
    let env = Env::new();
    let store = open_store(&env);
    let reader = store.reader().unwrap();
    let data = common::image(2 << 20, 5);
    env.put("lab/late:v1", &env.file("late.img", &data));
    let r = reader.open(&tag("lab/late:v1")).unwrap();
    assert!(read_all(&r, 100_000) == data);
    assert_eq!(reader.stats().refreshes, 1);
}

/// Where chunk `k` of `id`'s manifest starts in the image, its length, its
/// id and where the index says it is stored.
fn chunk_at(store: &Store, id: &ImageId, k: usize) -> (u64, u64, imgstore_store::ChunkId, Location) {
    let entries = store.manifest(id).unwrap().entries;
    let at: u64 = entries[..k].iter().map(Entry::len).sum();
    let Entry::Chunk { id: chunk, len } = entries[k] else {
        panic!("entry {k} is a zero run")
    };
    store.index_catch_up().unwrap();
    let lookup = index::Reader::open(store.index_dir()).unwrap();
    let loc = lookup.lookup(&[chunk]).unwrap()[0].unwrap();
    (at, u64::from(len), chunk, loc)
}

#[test]
fn a_flipped_byte_fails_the_reads_of_its_chunk_only() {
    let env = Env::new();
    let data = common::random(4 << 20, 7);
    let report = env.put("lab/rand:v1", &env.file("r.img", &data));
    let store = open_store(&env);
    let id = image_id(&report);
    let (start, len, chunk, loc) = chunk_at(&store, &id, 40);
    assert_eq!(loc.codec, Codec::Raw, "random bytes are stored raw");
    let pack_path: PathBuf = env.store().join(pack::key(&loc.pack));
    let file = std::fs::OpenOptions::new().write(true).open(&pack_path).unwrap();
    let at = loc.offset + pack::FRAME_HEADER_LEN as u64 + len / 2;
    file.write_at(&[!data[(start + len / 2) as usize]], at).unwrap();

    let reader = store.reader().unwrap();
    let r = reader
        .open(&ImageRef::Tag(TagRef::parse("lab/rand:v1").unwrap()))
        .unwrap();
    let end = start + len;
    let mut rng = SmallRng::seed_from_u64(9);
    let mut buf = vec![0u8; 70_000];
    let (mut failed, mut good) = (0, 0);
    for _ in 0..3000 {
        let offset = rng.random_range(0..data.len() as u64);
        let n = rng.random_range(1..buf.len());
        let touches = offset < end && offset + n as u64 > start;
        match r.read_at(offset, &mut buf[..n]) {
            Err(e) => {
                assert!(touches, "read of {n} at {offset} failed: {e}");
                assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                let text = e.to_string();
                for name in [
                    id.to_string(),
                    chunk.to_string(),
                    loc.pack.to_string(),
                    loc.offset.to_string(),
                ] {
                    assert!(text.contains(&name), "{text} does not name {name}");
                }
                failed += 1;
            }
            Ok(got) => {
                assert!(!touches, "read of {n} at {offset} returned the damaged chunk");
                let want = &data[offset as usize..(offset as usize + n).min(data.len())];
                assert!(buf[..got] == *want, "read of {n} at {offset} differs");
                good += 1;
            }
        }
    }
    assert!(failed > 10 && good > 1000, "{failed} failed, {good} good");
    // One byte of it, from its middle, fails too.
    assert!(r.read_at(start + len / 2, &mut [0u8; 1]).is_err());
}

/// x, then y sharing x's first 2 MiB; x removed and a gc run: x's pack is
/// mostly garbage, so y's first 2 MiB are copied to a new pack and x's pack
/// is condemned. Returns y and its reader, opened before the gc.
fn repack_under_a_reader(env: &Env, store: &Arc<Store>) -> (Vec<u8>, StoreReader, ImageReader) {
    let x = common::random(8 << 20, 3);
    let mut y = x[..2 << 20].to_vec();
    y.extend(common::random(6 << 20, 4));
    env.put("lab/x:v1", &env.file("x.img", &x));
    env.put("lab/y:v1", &env.file("y.img", &y));
    let reader = store.reader().unwrap();
    let r = reader.open(&tag("lab/y:v1")).unwrap();
    // The handle is in use, but not yet on the chunks that will move.
    let mut tail = vec![0u8; 1 << 20];
    r.read_at(7 << 20, &mut tail).unwrap();
    assert!(tail == y[7 << 20..]);
    env.cmd().args(["rm", "lab/x:v1"]).assert().success();
    let first = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert_eq!(first["packs_repacked"], 1, "{first}");
    (y, reader, r)
}

#[test]
fn a_gc_condemning_while_a_handle_is_open_waits_for_it() {
    let env = Env::new();
    let store = open_store(&env);
    let (y, reader, r) = repack_under_a_reader(&env, &store);
    let second = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert_eq!(second["packs_deleted"], 0, "{second}");
    assert!(
        second["waiting"]
            .as_str()
            .unwrap_or("")
            .contains("sessions/read-"),
        "{second}"
    );
    assert!(read_all(&r, 64 << 10) == y);
    assert_eq!(reader.stats().relocated, 0);
    drop((r, reader));
    let third = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert!(third["packs_deleted"].as_u64().unwrap() >= 1, "{third}");
    let again = store.reader().unwrap();
    assert!(read_all(&again.open(&tag("lab/y:v1")).unwrap(), 1 << 20) == y);
}

#[test]
fn reads_after_gc_deleted_a_pack_find_its_chunks_where_they_moved() {
    let env = Env::new();
    let store = open_store(&env);
    let (y, reader, r) = repack_under_a_reader(&env, &store);
    // The handle's lease lapses (its process was paused past it, and gc
    // removed the file): gc no longer waits for it.
    for name in std::fs::read_dir(env.store().join("sessions")).unwrap() {
        std::fs::remove_file(name.unwrap().path()).unwrap();
    }
    let second = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert!(second["packs_deleted"].as_u64().unwrap() >= 1, "{second}");
    let started = Instant::now();
    assert!(read_all(&r, 64 << 10) == y);
    let stats = reader.stats();
    assert!(stats.relocated >= 1 && stats.refreshes == 1, "{stats:?}");
    eprintln!("whole image read through the retry in {:?}", started.elapsed());
}

/// A removed image whose pack gc deleted under an open handle: the read
/// fails (busy: read it again), it does not return wrong bytes.
#[test]
fn a_removed_image_whose_pack_is_gone_fails_its_reads() {
    let env = Env::new();
    let store = open_store(&env);
    let data = common::random(3 << 20, 11);
    env.put("lab/gone:v1", &env.file("g.img", &data));
    let reader = store.reader().unwrap();
    let r = reader.open(&tag("lab/gone:v1")).unwrap();
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();
    common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    for name in std::fs::read_dir(env.store().join("sessions")).unwrap() {
        std::fs::remove_file(name.unwrap().path()).unwrap();
    }
    let second = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert!(second["packs_deleted"].as_u64().unwrap() >= 1, "{second}");
    let err = r.read_at(0, &mut [0u8; 4096]).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
}

/// Figures, not a check: `cargo test --test tests reader::figures --
/// --ignored --nocapture` (IMGSTORE_BENCH_MB sets the image size).
#[test]
#[ignore]
fn figures() {
    let env = Env::new();
    let mb: u64 = std::env::var("IMGSTORE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let path = env.path("bench.img");
    imgstore_store::testdata::write_image(&path, mb << 20, 1, false).unwrap();
    let data = std::fs::read(&path).unwrap();
    env.put("bench/img:v1", &path);
    let store = open_store(&env);
    let reader = store.reader().unwrap();
    let r = reader.open(&tag("bench/img:v1")).unwrap();
    for step in [128usize << 10, 1 << 20] {
        let cold = store.reader().unwrap();
        let r = cold.open(&tag("bench/img:v1")).unwrap();
        let t = Instant::now();
        let got = read_all(&r, step);
        let secs = t.elapsed().as_secs_f64();
        assert!(got == data);
        println!(
            "sequential, {} KiB reads, new handle: {:.0} MB/s ({mb} MiB in {secs:.2} s)",
            step >> 10,
            data.len() as f64 / secs / 1e6
        );
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let mut buf = [0u8; 4096];
    for pass in ["new handle", "same handle again"] {
        let mut lat = Vec::new();
        for _ in 0..5000 {
            let offset = rng.random_range(0..(data.len() as u64) / 4096) * 4096;
            let t = Instant::now();
            r.read_at(offset, &mut buf).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        let mean = lat.iter().sum::<f64>() / lat.len() as f64;
        println!(
            "random 4 KiB reads, {pass}: mean {mean:.0} us, p50 {:.0} us, p99 {:.0} us ({:?})",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100],
            reader.stats()
        );
    }
    println!("handle: {:?}; image reader: {} B", reader.memory(), r.memory());

    // A 4 GiB image's offset table and kept windows: its manifest alone
    // (131,072 chunks of 32 KiB; reads load windows, then fail: the chunks
    // are in no pack).
    let entries: Vec<Entry> = (0u64..131_072)
        .map(|i| Entry::Chunk {
            id: Digest::of(&i.to_le_bytes()),
            len: 32 << 10,
        })
        .collect();
    let big = Manifest {
        size: 4 << 30,
        id: ImageId(Digest::of(b"4 GiB")),
        entries,
        meta: ManifestMeta::default(),
    };
    store
        .backend()
        .put(&imgstore_store::manifest::key(&big.id), &big.encode())
        .unwrap();
    let r = reader.open_id(&big.id).unwrap();
    let opened = r.memory();
    for k in 0..16u64 {
        assert!(r.read_at(k * (256 << 20), &mut buf).is_err());
    }
    println!(
        "4 GiB image (131,072 entries): {opened} B after open, {} B with {} windows kept",
        r.memory(),
        imgstore_store::ops::reader::WINDOWS_KEPT
    );
}
