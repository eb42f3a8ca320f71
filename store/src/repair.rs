//! `repair`: conservative. It acts only on packs that `verify --read-data`
//! proved damaged (or that the index points at but are gone), and for each:
//!
//! 1. salvages every chunk the index locates in that pack and that still
//!    reads back and hashes correctly into a new pack + segment (durable
//!    first, so no sound chunk becomes unreachable);
//! 2. writes the quarantine record `quarantine/<pack-hex>.json` (what, why,
//!    which images were affected): every host's index catch-up then drops
//!    the entries that still point at the pack, so a later put of an image
//!    that needs a lost chunk stores it anew instead of skipping it;
//! 3. moves the pack file itself to `quarantine/<pack-hex>.pack` (a rename:
//!    the bytes are kept for inspection, never deleted).
//!
//! Corrupt refs, manifests, segments and stray files are reported, never
//! touched: a manifest is rewritten by the next put of the same image, a ref
//! by the next put or tag, and a segment is not needed (`index rebuild`
//! reads the pack footers).

use serde::Serialize;

use crate::backend::InMemory;
use crate::codec::{self, Codec};
use crate::error::Result;
use crate::id::ChunkId;
use crate::index::{self, QUARANTINE_DIR, QUARANTINE_RECORD};
use crate::pack::{self, PackBuilder, PackEntry};
use crate::progress::Progress;
use crate::segment::{self, INDEX_DIR};
use crate::session::{hostname, now_unix};
use crate::verify::{DamagedPack, VerifyOptions, VerifyReport};
use crate::Store;

/// What repair does.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepairOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
}

/// One quarantined pack.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    /// The pack's former store key.
    pub pack: String,
    /// Why it was quarantined.
    pub reason: String,
    /// Chunks copied into a new pack.
    pub salvaged_chunks: u64,
    /// Chunks lost until an image containing them is put again.
    pub lost_chunks: Vec<ChunkId>,
    /// Refs of images that needed a lost chunk.
    pub affected_refs: Vec<String>,
    /// When, by the repairing host's clock.
    pub time: u64,
    /// Which host repaired.
    pub host: String,
}

/// What repair found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The verify run repair acted on.
    pub verify: VerifyReport,
    /// Packs quarantined (or that would be, with `dry_run`).
    pub quarantined: Vec<Quarantined>,
    /// Nothing was changed.
    pub dry_run: bool,
}

fn reason(d: &DamagedPack) -> String {
    let mut why = Vec::new();
    if d.missing {
        why.push("missing".to_string());
    }
    if d.footer_bad {
        why.push("footer unreadable".to_string());
    }
    if d.hash_mismatch {
        why.push("file hash does not match its name".to_string());
    }
    if !d.bad_chunks.is_empty() {
        why.push(format!("{} corrupt chunks", d.bad_chunks.len()));
    }
    why.join(", ")
}

impl Store {
    /// Verifies every byte, then quarantines proven-damaged packs; see the
    /// module documentation.
    pub fn repair(&self, opts: RepairOptions, progress: &dyn Progress) -> Result<RepairReport> {
        let verify = self.verify(
            &VerifyOptions {
                read_data: true,
                ..VerifyOptions::default()
            },
            progress,
        )?;
        let mut quarantined = Vec::new();
        let lookup = index::Reader::open(&self.index_dir)?;
        for d in &verify.damaged_packs {
            let located = lookup.pack_entries(&d.pack)?;
            let bytes = if d.missing {
                None
            } else {
                self.backend.get(&d.key)?
            };
            let mut builder = PackBuilder::new();
            let mut lost = Vec::new();
            let level = self.config.compression.zstd_level;
            let mut entries: Vec<PackEntry> = located
                .iter()
                .map(|(id, loc)| PackEntry {
                    id: *id,
                    offset: loc.offset,
                    raw_len: loc.raw_len,
                    stored_len: loc.stored_len,
                    codec: loc.codec,
                    inner: loc.inner,
                })
                .collect();
            entries.sort_unstable_by_key(|e| (e.offset, e.inner));
            for frame in pack::frames(&entries) {
                let Some(b) = bytes.as_deref() else {
                    lost.extend(frame.iter().map(|e| e.id));
                    continue;
                };
                // A sound frame is copied whole; else each chunk that still
                // reads back right is stored again on its own.
                if pack::copy_frames(&InMemory(b), d.pack, frame, &mut builder).is_ok() {
                    continue;
                }
                for e in frame {
                    let sound = pack::read_chunk(&InMemory(b), &e.id, &e.location(d.pack))
                        .and_then(|raw| Ok((codec::encode(level, &e.id, &raw)?, raw)));
                    match sound {
                        Ok((Some(z), _)) => builder.add(e.id, e.raw_len, Codec::Zstd, &z),
                        Ok((None, raw)) => builder.add(e.id, e.raw_len, Codec::Raw, &raw),
                        Err(_) => lost.push(e.id),
                    }
                }
            }
            let salvaged = (located.len() - lost.len()) as u64;
            let affected_refs: Vec<String> = verify
                .damaged
                .iter()
                .filter(|img| img.damage.iter().any(|w| w.contains(&d.key)))
                .flat_map(|img| img.refs.iter().cloned())
                .collect();
            let q = Quarantined {
                pack: d.key.clone(),
                reason: reason(d),
                salvaged_chunks: salvaged,
                lost_chunks: lost,
                affected_refs,
                time: now_unix(),
                host: hostname(),
            };
            if !opts.dry_run {
                if !builder.is_empty() {
                    let (new_id, new_bytes, entries) = builder.finish();
                    self.backend.put(&pack::key(&new_id), &new_bytes)?;
                    let locs: Vec<_> = entries.iter().map(|e| (e.id, e.location(new_id))).collect();
                    let (seg_id, seg) = segment::encode(&locs);
                    self.backend.put(&seg_id.key(INDEX_DIR), &seg)?;
                }
                // The record before the move: a crash between the two leaves
                // the pack in place with its entries dropped, and the next
                // repair finishes the move.
                let hex = d.pack.to_hex();
                let record = serde_json::to_vec_pretty(&q).expect("record serializes");
                self.backend
                    .put(&format!("{QUARANTINE_DIR}/{hex}{QUARANTINE_RECORD}"), &record)?;
                // A move is a copy then a delete (object storage has no
                // rename); a crash between them leaves both, and the next
                // repair copies again and deletes.
                if let Some(bytes) = &bytes {
                    self.backend.put(&format!("{QUARANTINE_DIR}/{hex}.pack"), bytes)?;
                    self.backend.delete(&d.key)?;
                }
                tracing::warn!(pack = %d.key, reason = %q.reason, "pack quarantined");
            }
            quarantined.push(q);
        }
        drop(lookup);
        if !opts.dry_run && !quarantined.is_empty() {
            self.index_catch_up()?;
        }
        Ok(RepairReport {
            verify,
            quarantined,
            dry_run: opts.dry_run,
        })
    }
}
