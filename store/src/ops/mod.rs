//! Operations on a store, one file each.

pub mod get;
mod outfile;
pub mod prune;
pub mod put;
pub mod reader;
pub mod refs;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
