//! Faults at the storage door: a put or gc stopped at each of its writes
//! (as a crash or an object store's error would stop it) leaves a store
//! that verifies clean, publishes nothing half-made, and loses no image.
//! The memory backend shows a staged object only once committed, so an
//! uncommitted pack is lost as it would be at a power cut.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Fault, MemoryBackend};
use crate::config::{Config, CONFIG_KEY};
use crate::gc::GcOptions;
use crate::testdata::Rng;
use crate::{Error, ImageRef, Input, NoProgress, Output, PutOptions, Store, TagRef, VerifyOptions};

/// A store in memory with 1 MiB packs and small chunks, so a few MiB of
/// input make several packs.
pub(super) fn store() -> (tempfile::TempDir, MemoryBackend, Store) {
    store_with(Config::new(4096, 1).unwrap())
}

/// [`store`] with a chunker seed of its own choosing, so that where chunks
/// and packs fall is the same from run to run.
pub(super) fn seeded_store(seed: u64) -> (tempfile::TempDir, MemoryBackend, Store) {
    let mut config = Config::new(4096, 1).unwrap();
    config.chunker = crate::chunker::ChunkerParams::with_avg(4096, seed);
    store_with(config)
}

fn store_with(mut config: Config) -> (tempfile::TempDir, MemoryBackend, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryBackend::default();
    config.pack_size = 1 << 20;
    mem.put(CONFIG_KEY, &config.to_bytes()).unwrap();
    let store = Store::open_with(Arc::new(mem.clone()), Some(dir.path().join("idx"))).unwrap();
    (dir, mem, store)
}

pub(super) fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

pub(super) fn put(store: &Store, tag: &str, data: &[u8]) -> crate::Result<crate::PutReport> {
    let input = Input::Stream(Box::new(std::io::Cursor::new(data.to_vec())));
    store.put(
        &TagRef::parse(tag).unwrap(),
        input,
        &PutOptions::default(),
        &NoProgress,
    )
}

pub(super) fn get(store: &Store, tag: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    store
        .get(
            &ImageRef::parse(tag).unwrap(),
            Output::File(out.clone()),
            &NoProgress,
        )
        .unwrap();
    std::fs::read(out).unwrap()
}

pub(super) fn assert_sound(store: &Store) {
    let opts = VerifyOptions {
        read_data: true,
        ..Default::default()
    };
    let report = store.verify(&opts, &NoProgress).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Each write a put makes, failed in turn: the put fails, no ref appears,
/// the store verifies clean, and the same put then succeeds.
#[test]
fn a_put_stopped_at_any_write_publishes_nothing() {
    let faults = [
        Fault::FailPut("packs/".into()),
        // Between two packs of one put.
        Fault::FailPutAfter("packs/".into(), 1),
        // Between the packs and their index segment.
        Fault::FailPut("index/".into()),
        Fault::FailPut("manifests/".into()),
        Fault::FailPut("refs/".into()),
        Fault::FailPut("sessions/".into()),
    ];
    let data = image(1, 3 << 20);
    for fault in faults {
        let (_dir, mem, store) = store();
        let first = image(2, 1 << 20);
        put(&store, "lab/app:v1", &first).unwrap();
        mem.inject(fault.clone());
        let err = put(&store, "lab/app:v2", &data).expect_err(&format!("{fault:?} did not stop the put"));
        assert!(matches!(err, Error::Backend { .. }), "{fault:?}: {err}");
        let v2 = TagRef::parse("lab/app:v2").unwrap();
        assert!(
            store.read_ref(&v2).unwrap().is_none(),
            "{fault:?}: a ref appeared"
        );
        assert_sound(&store);
        put(&store, "lab/app:v2", &data).unwrap();
        assert!(get(&store, "lab/app:v2") == data, "{fault:?}: other bytes");
        assert!(get(&store, "lab/app:v1") == first, "{fault:?}: v1 changed");
        assert_sound(&store);
    }
}

/// After the ref is written the put has happened: a failure to log it or
/// to end its session is not the put's failure.
#[test]
fn a_put_whose_ref_is_written_reports_success() {
    for fault in [
        Fault::FailPut("log/".into()),
        Fault::FailDelete("sessions/".into()),
    ] {
        let (_dir, mem, store) = store();
        let data = image(3, 1 << 20);
        mem.inject(fault.clone());
        put(&store, "lab/app:v1", &data).unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(get(&store, "lab/app:v1") == data, "{fault:?}");
    }
}

/// Each write and delete of a gc, failed in turn, across both phases: the
/// gc fails, every image still named reads back, the store verifies clean,
/// and the next gc run finishes the work.
#[test]
fn a_gc_stopped_at_any_step_loses_nothing() {
    let faults = [
        Fault::FailPut("gc/plan".into()),
        Fault::FailPut("gc/deleted/".into()),
        Fault::FailDelete("packs/".into()),
        // A repack's new pack and its segment.
        Fault::FailPut("packs/".into()),
        Fault::FailPut("index/".into()),
    ];
    let gc = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    for fault in faults {
        let (_dir, mem, store) = store();
        // `gone` interleaves pieces of `kept` with its own, and is put
        // first: each of its packs is about half garbage once it is
        // removed, so gc repacks the live half as well as deleting.
        let (live, dead) = (image(4, 3 << 20), image(5, 3 << 20));
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for (l, d) in live.chunks(64 << 10).zip(dead.chunks(64 << 10)) {
            kept.extend_from_slice(l);
            gone.extend_from_slice(l);
            gone.extend_from_slice(d);
        }
        put(&store, "lab/app:gone", &gone).unwrap();
        put(&store, "lab/app:kept", &kept).unwrap();
        store.rm(&TagRef::parse("lab/app:gone").unwrap()).unwrap();
        mem.inject(fault.clone());
        let mut failed = false;
        for _ in 0..3 {
            failed |= store.gc(&gc, &NoProgress).is_err();
            assert!(
                get(&store, "lab/app:kept") == kept,
                "{fault:?}: kept image changed"
            );
            assert_sound(&store);
        }
        assert!(failed, "{fault:?} never struck");
        let before = mem.list("packs").unwrap().len();
        store.gc(&gc, &NoProgress).unwrap();
        store.gc(&gc, &NoProgress).unwrap();
        assert!(get(&store, "lab/app:kept") == kept, "{fault:?}");
        assert_sound(&store);
        assert!(
            mem.list("packs").unwrap().len() <= before,
            "{fault:?}: gc did not finish"
        );
    }
}
