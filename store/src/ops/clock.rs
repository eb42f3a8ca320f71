//! A store whose clock is hours off the host's: gc's grace period and the
//! leases of puts in flight are judged by the store's clock alone, so a put
//! in flight keeps its chunks, a finished put's image survives, and garbage
//! is still reclaimed, whichever way the clocks differ.

use std::sync::Arc;
use std::time::Duration;

use super::faults::{assert_sound, get, image, put, seeded_store};
use crate::backend::{Backend, Fault, MemoryBackend};
use crate::gc::GcOptions;
use crate::{NoProgress, Store, TagRef};

/// Store clock minus host clock, both ways.
const SKEWS: [i64; 2] = [-3 * 3600, 3 * 3600];
/// The grace period the tests' gc runs use (shorter than a default lease,
/// so the store's clock can pass it while a put's session is live).
const GRACE: Duration = Duration::from_secs(300);

fn gc_grace() -> GcOptions {
    GcOptions {
        grace: GRACE,
        ..Default::default()
    }
}

/// The store in `mem` as another host sees it: its own local index.
fn host(mem: &MemoryBackend) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(Arc::new(mem.clone()), Some(dir.path().join("idx"))).unwrap();
    (dir, store)
}

/// Moves the store's clock past the grace period.
fn pass_grace(mem: &MemoryBackend) {
    mem.set_clock_skew(mem.clock_skew() + GRACE.as_secs() as i64 + 1);
}

/// Runs gc until no pack is left, moving the store's clock past the grace
/// period before each run; fails if that takes more than `runs` runs.
fn reclaim_all(mem: &MemoryBackend, store: &Store, runs: usize, what: &str) {
    for _ in 0..runs {
        if mem.list("packs").unwrap().is_empty() {
            return;
        }
        pass_grace(mem);
        store.gc(&gc_grace(), &NoProgress).unwrap();
    }
    let left = mem.list("packs").unwrap();
    assert!(left.is_empty(), "{what}: gc is stuck, {} packs left", left.len());
}

/// A put held before its manifest, holding chunks it found in `a:v1`,
/// while `a:v1` is removed and gc condemns its packs and, past the grace
/// period by the store's clock, runs again: gc waits for the put's
/// session, the put publishes an image that reads back, and once both
/// images are removed every pack goes.
#[test]
fn a_put_in_flight_keeps_its_chunks_with_the_store_clock_hours_off() {
    for skew in SKEWS {
        let what = format!("store clock {skew:+} s");
        let (_dir, mem, store) = seeded_store(3);
        mem.set_clock_skew(skew);
        let first = image(6, 2 << 20);
        put(&store, "lab/a:v1", &first).unwrap();
        let mut next = first[..3 << 19].to_vec();
        next.extend_from_slice(&image(7, 1 << 19));
        let packs_of_a = mem.list("packs").unwrap();

        let (_gc_dir, gc_host) = host(&mem);
        let held = mem.hold("manifests/");
        std::thread::scope(|scope| {
            let putting = scope.spawn(|| put(&store, "lab/b:v1", &next));
            assert!(
                held.wait(Duration::from_secs(60)),
                "{what}: the put never got to its manifest"
            );
            gc_host.rm(&TagRef::parse("lab/a:v1").unwrap()).unwrap();
            let condemned = gc_host.gc(&gc_grace(), &NoProgress).unwrap();
            assert!(condemned.packs_condemned > 0, "{what}: {condemned:?}");
            pass_grace(&mem);
            let waited = gc_host.gc(&gc_grace(), &NoProgress).unwrap();
            assert!(
                waited
                    .waiting
                    .as_deref()
                    .is_some_and(|w| w.contains("sessions/put-")),
                "{what}: gc did not wait for the put: {waited:?}"
            );
            assert_eq!(waited.packs_deleted, 0, "{what}");
            for key in &packs_of_a {
                assert!(
                    mem.head(key).unwrap().is_some(),
                    "{what}: {key} deleted under the put"
                );
            }
            held.release();
            putting
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{what}: the put: {e}"));
        });
        assert!(get(&store, "lab/b:v1") == next, "{what}: b:v1 changed");
        // The plan is ready now; the finished put's image needs some of
        // its packs, and survives it.
        let executed = gc_host.gc(&gc_grace(), &NoProgress).unwrap();
        assert!(executed.waiting.is_none(), "{what}: {executed:?}");
        assert!(get(&gc_host, "lab/b:v1") == next, "{what}: b:v1 changed by gc");
        assert_sound(&gc_host);
        gc_host.rm(&TagRef::parse("lab/b:v1").unwrap()).unwrap();
        reclaim_all(&mem, &gc_host, 4, &what);
    }
}

/// A plan whose time cannot be read (gone between gc's get and head, as a
/// concurrent gc's deletion would make it) is not executed: its time was
/// once taken from the host's clock, which, behind the store's, made a
/// plan condemned a moment ago look hours old.
#[test]
fn a_plan_whose_time_cannot_be_read_waits() {
    for skew in SKEWS {
        let what = format!("store clock {skew:+} s");
        let (_dir, mem, store) = seeded_store(4);
        mem.set_clock_skew(skew);
        put(&store, "lab/a:v1", &image(8, 1 << 20)).unwrap();
        store.rm(&TagRef::parse("lab/a:v1").unwrap()).unwrap();
        let packs = mem.list("packs").unwrap();
        let gc = GcOptions {
            grace: Duration::from_secs(3600),
            ..Default::default()
        };
        assert!(store.gc(&gc, &NoProgress).unwrap().packs_condemned > 0);
        mem.inject(Fault::VanishOnHead("gc/plan".into()));
        let r = store.gc(&gc, &NoProgress).unwrap();
        assert_eq!(
            r.packs_deleted, 0,
            "{what}: a plan in its grace period was executed"
        );
        assert_eq!(mem.list("packs").unwrap(), packs, "{what}");
        mem.set_clock_skew(skew + 3601);
        store.gc(&gc, &NoProgress).unwrap();
        assert!(mem.list("packs").unwrap().is_empty(), "{what}: not reclaimed");
    }
}
