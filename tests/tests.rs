//! imgstore's integration tests: the real binary (assert_cmd), a real
//! RocksDB, real files, a fresh store per test. One test binary, because
//! each links RocksDB statically.

// Shared helpers: a store per test, seeded image generators.
mod common;

// put/get round trips: sizes, zeros, stdin, dedup accounting.
mod roundtrip;
// Names, refs and metadata commands: ls, inspect, deffile, tag, rm, log.
mod refs;
// find and diff --deffile: search over definition files, labels, names, dates.
mod find;
// Bad input and damaged stores: one-line errors and documented exit codes.
mod errors;
// Several puts at once, on one host and from "different hosts".
mod concurrency;
// SIGKILL and crash points during put: nothing half-visible, re-put works.
mod crash;
// Garbage collection and prune on a live store, with puts and gets racing it.
mod gc;
// A group-shared store used by users with different umasks (needs root).
mod shared;
// SIF files built in the test: deffile and labels lifted into the manifest.
mod sif;
// Fault injection: verify, repair, index damage and rebuild.
mod verify;
// Test hooks at real boundaries: EIO from fsync and writes, a codec's wrong bytes.
mod faults;
// Delta manifests: a name's later images stored against its first.
mod deltas;
// Storage reports (stats, du, history, diff, report) against independent counts.
mod reports;
// completions, man page, demo.
mod cli;
// The random-access reader: ranges, threads, damage, gc under a handle.
mod reader;
// Object storage only: requests per put and get, URLs, an unreachable server.
mod objects;
// `imgstore copy` between a directory and object storage.
mod copy;
// Object storage misbehaving: 503s, 500s and stalls from a proxy; a client clock off.
mod object_faults;
// `imgstore serve` with real clients: curl replaying Apptainer's pull, oras push/pull, bad requests.
mod serve;
// `imgstore mount` through real FUSE: bytes, threads, damage, kill -9, gc.
mod mount;
// Pins: kept through rm, prune and gc; unpin frees exactly their bytes.
mod pins;
// The squashfs reader on mksquashfs's output: blocks found, gzip blocks reproduced.
mod squashfs;
// The archive tier: squashfs blocks kept inflated, rebuilt exactly at get.
mod archive;
// Lock files: export, get --lock after tags, prune, gc, copy and index rebuild; run.sh.
mod lock;
