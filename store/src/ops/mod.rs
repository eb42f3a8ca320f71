//! Operations on a store, one file each.

#[cfg(test)]
mod clock;
pub mod copy;
#[cfg(test)]
mod crash;
#[cfg(test)]
mod faults;
pub mod get;
mod outfile;
pub mod prune;
pub mod put;
pub mod reader;
mod ref_cache;
pub mod refs;

/// A thread pool of one operation's own, threads named `prefix0`, `prefix1`,
/// ... Not rayon's global pool: that one is started on first use, where a
/// failure to start a thread is a panic, and a panic in a job on it aborts
/// the process. Here a thread that cannot start (the process limit) is an
/// error naming `what`; a panic in a job reaches whoever `install`ed it,
/// and the handler only keeps rayon from aborting should one get past.
pub fn own_pool(what: &str, prefix: &'static str) -> crate::Result<rayon::ThreadPool> {
    let job_of = what.to_owned();
    rayon::ThreadPoolBuilder::new()
        .thread_name(move |i| format!("{prefix}{i}"))
        .panic_handler(move |_| tracing::error!("a job of {job_of} panicked"))
        .build()
        .map_err(|e| crate::Error::threads(what, std::io::Error::other(e)))
}

/// The message a caught panic carries, for the error that reports it.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::backend::Backend;
    use crate::{ImageRef, InitOptions, Input, NoProgress, Output, PutOptions, Store, TagRef};

    /// A store with small chunks, so small inputs have many of them.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            avg_chunk: 1024,
            zstd_level: 3,
            shared: false,
        };
        let store = Store::init(&dir.path().join("s"), opts, Some(dir.path().join("idx"))).unwrap();
        (dir, store)
    }

    fn put_get(store: &Store, tag: &str, data: &[u8]) -> Vec<u8> {
        let r = TagRef::parse(tag).unwrap();
        let input = Input::Stream(Box::new(std::io::Cursor::new(data.to_vec())));
        store.put(&r, input, &PutOptions::default(), &NoProgress).unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct W(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        store
            .get(
                &ImageRef::Tag(r),
                Output::Stream(Box::new(W(out.clone()))),
                &NoProgress,
            )
            .unwrap();
        let v = out.lock().unwrap().clone();
        v
    }

    /// Random edits of a base image: overwrite, insert, delete, zero a run.
    /// (kind, position, length, byte) of one edit.
    type Edit = (u8, usize, usize, u8);

    fn edited() -> impl Strategy<Value = (Vec<u8>, Vec<Edit>)> {
        (
            proptest::collection::vec(any::<u8>(), 0..60_000),
            proptest::collection::vec((0u8..4, any::<usize>(), 1usize..5000, any::<u8>()), 0..6),
        )
    }

    fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut v = base.to_vec();
        for &(kind, at, len, byte) in edits {
            let at = if v.is_empty() { 0 } else { at % v.len() };
            let end = (at + len).min(v.len());
            match kind {
                0 => v[at..end].fill(byte),
                1 => {
                    v.splice(at..at, std::iter::repeat_n(byte, len));
                }
                2 => {
                    v.drain(at..end);
                }
                _ => v[at..end].fill(0),
            }
        }
        v
    }

    fn verify_clean(store: &Store) {
        let opts = crate::VerifyOptions {
            read_data: true,
            ..Default::default()
        };
        let report = store.verify(&opts, &NoProgress).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
    }

    /// Similar images: a base, and the base with a few edits.
    fn two_commits() -> (Vec<u8>, Vec<u8>) {
        let mut base = vec![0u8; 300_000];
        crate::testdata::Rng::new(7).fill(&mut base);
        let next = apply(&base, &[(0, 1000, 3000, 9), (1, 150_000, 2000, 3)]);
        (base, next)
    }

    /// A store in memory with small chunks; its local index in a temporary
    /// directory.
    fn mem_store() -> (tempfile::TempDir, crate::MemoryBackend, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::MemoryBackend::default();
        let opts = InitOptions {
            avg_chunk: 1024,
            zstd_level: 3,
            shared: false,
        };
        let store = Store::init_with(
            std::sync::Arc::new(mem.clone()),
            opts,
            Some(dir.path().join("idx")),
        )
        .unwrap();
        (dir, mem, store)
    }

    /// The backend is the only door: a store in memory puts, gets (the
    /// second image as a delta), verifies and collects garbage, with
    /// nothing on disk but the local index.
    #[test]
    fn a_store_in_memory_does_everything_a_local_one_does() {
        let (dir, mem, store) = mem_store();
        let (base, next) = two_commits();
        assert_eq!(put_get(&store, "lab/app:v1", &base), base);
        assert_eq!(put_get(&store, "lab/app:v2", &next), next);
        let v2 = store
            .resolve(&crate::ImageRef::parse("lab/app:v2").unwrap())
            .unwrap()
            .id;
        let keys = mem.list("").unwrap();
        assert!(keys.contains(&crate::manifest::delta_key(&v2)), "{keys:?}");
        verify_clean(&store);
        store.rm(&TagRef::parse("lab/app:v1").unwrap()).unwrap();
        let gc = crate::gc::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };
        store.gc(&gc, &NoProgress).unwrap();
        store.gc(&gc, &NoProgress).unwrap();
        verify_clean(&store);
        assert_eq!(put_get(&store, "lab/app:v3", &next), next);
        let on_disk: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(on_disk, ["idx"], "something besides the index went to disk");
    }

    /// Invariant 2: a full manifest stays full. An image stored first under
    /// another name keeps its full manifest when a later put of it under a
    /// name with a delta base comes along; no delta is written beside it.
    #[test]
    fn a_full_manifest_is_never_turned_into_a_delta() {
        let (_dir, mem, store) = mem_store();
        let (base, next) = two_commits();
        put_get(&store, "other/name:v1", &next);
        put_get(&store, "lab/app:v1", &base);
        put_get(&store, "lab/app:v2", &next);
        let id = store
            .resolve(&crate::ImageRef::parse("lab/app:v2").unwrap())
            .unwrap()
            .id;
        assert!(mem.head(&crate::manifest::key(&id)).unwrap().is_some());
        assert!(mem.head(&crate::manifest::delta_key(&id)).unwrap().is_none());
        verify_clean(&store);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// get(put(x)) == x, for a base image and an edited next commit in one store.
        #[test]
        fn get_put_is_identity((base, edits) in edited()) {
            let (_dir, store) = store();
            let next = apply(&base, &edits);
            prop_assert_eq!(put_get(&store, "p/base:v1", &base), base);
            prop_assert_eq!(put_get(&store, "p/base:v2", &next), next);
        }
    }
}
