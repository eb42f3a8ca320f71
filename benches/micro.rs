//! Micro-benchmarks of each put/get stage, in MB/s of input (the
//! `Throughput::Bytes` of criterion, measured with `Instant`; criterion is
//! left out on purpose: its dependency tree would change the build graph
//! RocksDB's 8-minute C++ build hangs off). Median of 5 runs per stage.
//!
//! ```text
//! cargo bench --bench micro            # 64 MiB of image-like data
//! cargo bench --bench micro -- 256     # MiB of data
//! ```

use std::time::Instant;

use imgstore_store::chunker::{Chunker, ChunkerParams};
use imgstore_store::codec::{decode, Codec, Encoder};
use imgstore_store::pack::{read_chunk, PackBuilder};
use imgstore_store::{ChunkId, ImageRef, InitOptions, Input, NoProgress, PutOptions, Store, TagRef};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `f` 5 times; prints the median MB/s over `bytes`.
fn bench(name: &str, bytes: usize, mut f: impl FnMut()) {
    let times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let t = median(times);
    println!("| {name} | {:.0} | {:.1} ms |", bytes as f64 / 1e6 / t, t * 1e3);
}

struct Mem(Vec<u8>);
impl imgstore_store::backend::ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> imgstore_store::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn size(&self) -> imgstore_store::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("temp dir");
    let img = dir.path().join("img");
    imgstore_store::testdata::write_image(&img, (mib as u64) << 20, 7, false).expect("image");
    let data = std::fs::read(&img).expect("read image");
    let n = data.len();
    let chunker = Chunker::new(ChunkerParams::with_avg(32 * 1024, 1)).expect("params");
    let cuts: Vec<_> = chunker.chunks(&data).collect();
    println!(
        "{mib} MiB of image-like data, {} chunks of 32 KiB average; median of 5 runs",
        cuts.len()
    );
    println!();
    println!("| stage | MB/s | time |");
    println!("|---|---:|---:|");

    bench("FastCDC cut points (1 thread)", n, || {
        std::hint::black_box(chunker.chunks(&data).count());
    });
    bench(
        "FastCDC cut points, 8 MiB blocks, halves at once (2 threads)",
        n,
        || {
            for block in data.chunks(8 << 20) {
                std::hint::black_box(chunker.chunks_parallel(block).len());
            }
        },
    );
    bench("BLAKE3 per chunk (1 thread)", n, || {
        for r in &cuts {
            std::hint::black_box(ChunkId::of(&data[r.clone()]));
        }
    });
    bench("BLAKE3 whole image (1 thread)", n, || {
        std::hint::black_box(blake3::hash(&data));
    });
    let ids: Vec<ChunkId> = cuts.iter().map(|r| ChunkId::of(&data[r.clone()])).collect();
    let mut enc = Encoder::new(3);
    let mut encoded = Vec::new();
    bench("zstd -3 encode + verify per chunk (1 thread)", n, || {
        encoded = cuts
            .iter()
            .zip(&ids)
            .map(
                |(r, id)| match enc.encode(id, &data[r.clone()]).expect("encode") {
                    Some(c) => (Codec::Zstd, c),
                    None => (Codec::Raw, data[r.clone()].to_vec()),
                },
            )
            .collect();
    });
    bench("decode + BLAKE3 check per chunk (1 thread)", n, || {
        for ((r, id), (codec, stored)) in cuts.iter().zip(&ids).zip(&encoded) {
            std::hint::black_box(decode(*codec, stored, r.len(), id, "bench").expect("decode"));
        }
    });
    let mut pack_bytes = Vec::new();
    let mut entries = Vec::new();
    let mut pack_id = None;
    bench("pack build (append frames + footer)", n, || {
        let mut b = PackBuilder::with_capacity(n + (1 << 20));
        for ((r, id), (codec, stored)) in cuts.iter().zip(&ids).zip(&encoded) {
            b.add(*id, r.len() as u32, *codec, stored);
        }
        let (id, bytes, e) = b.finish();
        pack_id = Some(id);
        pack_bytes = bytes;
        entries = e;
    });
    let pack = Mem(pack_bytes);
    let pid = pack_id.expect("built");
    bench("pack read + decode + check per chunk", n, || {
        for e in &entries {
            std::hint::black_box(read_chunk(&pack, &e.id, &e.location(pid)).expect("read"));
        }
    });

    // The index, through a real store: one put fills it.
    let store = Store::init(
        &dir.path().join("store"),
        InitOptions::default(),
        Some(dir.path().join("idx")),
    )
    .expect("init");
    let r = TagRef::parse("bench/micro:v1").expect("name");
    let t = Instant::now();
    store
        .put(&r, Input::File(img.clone()), &PutOptions::default(), &NoProgress)
        .expect("put");
    let put_s = t.elapsed().as_secs_f64();
    let lookup = imgstore_store::index::Reader::open(store.index_dir()).expect("reader");
    let m = store
        .manifest(&store.resolve(&ImageRef::Tag(r)).expect("ref").id)
        .expect("manifest");
    let known: Vec<ChunkId> = m
        .entries
        .iter()
        .filter_map(|e| match e {
            imgstore_store::manifest::Entry::Chunk { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let t = Instant::now();
    for batch in known.chunks(256) {
        std::hint::black_box(lookup.lookup(batch).expect("lookup"));
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "| index lookups (RocksDB, batches of 256) | {:.0} lookups/ms | {:.1} ms for {} |",
        known.len() as f64 / (s * 1e3),
        s * 1e3,
        known.len()
    );
    println!(
        "| whole put of the image (all stages, 2 threads, fsync) | {:.0} | {:.1} ms |",
        n as f64 / 1e6 / put_s,
        put_s * 1e3
    );
}
