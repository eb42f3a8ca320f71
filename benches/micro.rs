//! Criterion micro-benchmarks of each put/get stage, in bytes of input per
//! second (`Throughput::Bytes`; index lookups in lookups per second).
//!
//! ```text
//! cargo bench --bench micro                        # 64 MiB of image-like data
//! IMGSTORE_MICRO_MIB=256 cargo bench --bench micro # more data per iteration
//! cargo bench --bench micro -- zstd                # only benches whose name has "zstd"
//! ```
//!
//! Whole put and get against `cp` are the end-to-end bench (`benches/e2e.rs`).

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imgstore_store::backend::InMemory;
use imgstore_store::chunker::{Chunker, ChunkerParams};
use imgstore_store::codec::{decode, Codec, Encoder};
use imgstore_store::pack::{read_chunk, PackBuilder};
use imgstore_store::{ChunkId, ImageRef, InitOptions, Input, NoProgress, PutOptions, Store, TagRef};

/// The input every stage works on: image-like bytes (text, code, zeros and
/// random runs, from `testdata`), cut at 32 KiB average chunks.
struct Corpus {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    data: Vec<u8>,
    chunker: Chunker,
    cuts: Vec<Range<usize>>,
    ids: Vec<ChunkId>,
}

fn corpus() -> Corpus {
    let mib: u64 = std::env::var("IMGSTORE_MICRO_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("temp dir");
    let img = dir.path().join("img");
    imgstore_store::testdata::write_image(&img, mib << 20, 7, false).expect("image");
    let data = std::fs::read(&img).expect("read image");
    let chunker = Chunker::new(ChunkerParams::with_avg(32 * 1024, 1)).expect("params");
    let cuts: Vec<_> = chunker.chunks(&data).collect();
    let ids = cuts.iter().map(|r| ChunkId::of(&data[r.clone()])).collect();
    eprintln!(
        "micro: {mib} MiB of image-like data, {} chunks of 32 KiB average",
        cuts.len()
    );
    Corpus {
        _dir: dir,
        img,
        data,
        chunker,
        cuts,
        ids,
    }
}

/// Every chunk as put stores it: zstd where it pays, raw where not.
fn encode_all(c: &Corpus, enc: &mut Encoder) -> Vec<(Codec, Vec<u8>)> {
    c.cuts
        .iter()
        .zip(&c.ids)
        .map(
            |(r, id)| match enc.encode(id, &c.data[r.clone()]).expect("encode") {
                Some(z) => (Codec::Zstd, z),
                None => (Codec::Raw, c.data[r.clone()].to_vec()),
            },
        )
        .collect()
}

fn stages(cr: &mut Criterion) {
    let c = corpus();
    let n = c.data.len() as u64;

    let mut g = cr.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(n)).sample_size(10);
    g.bench_function("fastcdc cut points, 1 thread", |b| {
        b.iter(|| black_box(c.chunker.chunks(&c.data).count()))
    });
    g.bench_function(
        "fastcdc cut points, 8 MiB blocks, halves at once (2 threads)",
        |b| {
            b.iter(|| {
                for block in c.data.chunks(8 << 20) {
                    black_box(c.chunker.chunks_parallel(block).len());
                }
            })
        },
    );
    g.finish();

    let mut g = cr.benchmark_group("hash");
    g.throughput(Throughput::Bytes(n)).sample_size(10);
    g.bench_function("blake3 per chunk, 1 thread", |b| {
        b.iter(|| {
            for r in &c.cuts {
                black_box(ChunkId::of(&c.data[r.clone()]));
            }
        })
    });
    g.bench_function("blake3 whole image, 1 thread", |b| {
        b.iter(|| black_box(blake3::hash(&c.data)))
    });
    g.finish();

    let mut enc = Encoder::new(3);
    let encoded = encode_all(&c, &mut enc);
    let mut g = cr.benchmark_group("compression");
    g.throughput(Throughput::Bytes(n)).sample_size(10);
    g.bench_function("zstd -3 encode + round-trip check per chunk, 1 thread", |b| {
        b.iter(|| black_box(encode_all(&c, &mut enc)))
    });
    g.bench_function("decode + blake3 check per chunk, 1 thread", |b| {
        b.iter(|| {
            for ((r, id), (codec, stored)) in c.cuts.iter().zip(&c.ids).zip(&encoded) {
                black_box(
                    decode(*codec, stored, r.len(), id, &imgstore_store::Object::InMemory).expect("decode"),
                );
            }
        })
    });
    g.finish();

    let build = || {
        let mut p = PackBuilder::with_capacity(c.data.len() + (1 << 20));
        for ((r, id), (codec, stored)) in c.cuts.iter().zip(&c.ids).zip(&encoded) {
            p.add(*id, r.len() as u32, *codec, stored);
        }
        p.finish()
    };
    let (pack_id, pack_bytes, entries) = build();
    let pack = InMemory(&pack_bytes);
    let mut g = cr.benchmark_group("pack");
    g.throughput(Throughput::Bytes(n)).sample_size(10);
    g.bench_function("build (append frames + footer + pack id)", |b| {
        b.iter(|| black_box(build()))
    });
    g.bench_function("read + decode + check per chunk", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(read_chunk(&pack, &e.id, &e.location(pack_id)).expect("read"));
            }
        })
    });
    g.finish();

    // The index, through a real store: one put fills it.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::init(
        &dir.path().join("store"),
        InitOptions::default(),
        Some(dir.path().join("idx")),
    )
    .expect("init");
    let r = TagRef::parse("bench/micro:v1").expect("name");
    store
        .put(
            &r,
            Input::File(c.img.clone()),
            &PutOptions::default(),
            &NoProgress,
        )
        .expect("put");
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
    let mut g = cr.benchmark_group("index");
    g.throughput(Throughput::Elements(known.len() as u64))
        .sample_size(20);
    g.bench_function("rocksdb lookups, batches of 256", |b| {
        b.iter(|| {
            for batch in known.chunks(256) {
                black_box(lookup.lookup(batch).expect("lookup"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
