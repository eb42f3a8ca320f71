//! `--read-data`: each selected pack read whole and every chunk checked,
//! oldest-verified first, with the time of each clean read kept so a run
//! cut short resumes where the last one stopped.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::time::Instant;

use super::{PackInfo, Problem, ProblemKind, VerifyOptions, VerifyReport, STATE_FILE};
use crate::backend::InMemory;
use crate::error::{Object, Result};
use crate::fsutil::atomic_write;
use crate::id::{Digest, PackId};
use crate::pack::{self, PackEntry};
use crate::progress::Progress;
use crate::session::now_unix;
use crate::Store;

impl Store {
    /// Reads the selected packs whole, oldest-verified first, until the
    /// deadline; records damage in `packs` and clean reads in the state file.
    pub(super) fn read_packs(
        &self,
        opts: &VerifyOptions,
        packs: &mut HashMap<PackId, PackInfo>,
        report: &mut VerifyReport,
        problems: &mut Vec<Problem>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let state_path = self.index_dir.join(STATE_FILE);
        let mut state = load_state(&state_path);
        let mut order: Vec<(u64, PackId)> = packs
            .iter()
            .filter(|(id, p)| opts.subset.is_none_or(|s| s.contains(id)) && p.damage.is_none())
            .map(|(id, _)| (state.get(&id.to_hex()).copied().unwrap_or(0), *id))
            .collect();
        order.sort();
        let total: u64 = order.iter().map(|(_, id)| packs[id].size).sum();
        let pool = crate::ops::own_pool("verify's reads", "imgstore-verify")?;
        progress.start("verify", Some(total));
        let deadline = opts.max_duration.map(|d| Instant::now() + d);
        let mut read_ok = 0;
        for (i, (_, id)) in order.iter().enumerate() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                report.packs_left = (order.len() - i) as u64;
                break;
            }
            let info = packs.get_mut(id).expect("pack listed");
            let key = info.key.clone();
            let bytes = match self.backend.get(&key)? {
                Some(b) => b,
                // A gc running meanwhile deleted it (after copying what
                // any image needs): not damage.
                None if self
                    .backend
                    .head(&format!("{}/{}", crate::segment::TOMBSTONES_DIR, id.to_hex()))?
                    .is_some() =>
                {
                    continue;
                }
                None => {
                    info.damage(*id).missing = true;
                    problems.push(Problem {
                        kind: ProblemKind::Missing,
                        key,
                        detail: "pack vanished while verify ran".into(),
                    });
                    continue;
                }
            };
            report.packs_read += 1;
            report.bytes_read += bytes.len() as u64;
            progress.advance(bytes.len() as u64);
            let what = Object::Pack { key: key.to_owned() };
            let mut clean = true;
            if Digest::of(&bytes) != *id {
                clean = false;
                info.damage(*id).hash_mismatch = true;
                problems.push(Problem {
                    kind: ProblemKind::Corrupt,
                    key: key.clone(),
                    detail: "the file's BLAKE3 does not match its name".into(),
                });
            }
            let entries: Vec<PackEntry> = match pack::read_footer(&InMemory(&bytes), &what) {
                Ok(e) => e,
                Err(e) => {
                    info.damage(*id).footer_bad = true;
                    problems.push(Problem::of(key, &e));
                    continue;
                }
            };
            let bad = pool.install(|| pack::check_all(&InMemory(&bytes), *id, &entries));
            report.chunks_read += entries.len() as u64;
            for (chunk, detail) in bad {
                clean = false;
                info.damage(*id).bad_chunks.push(chunk);
                problems.push(Problem {
                    kind: ProblemKind::Corrupt,
                    key: key.clone(),
                    detail,
                });
            }
            if clean {
                state.insert(id.to_hex(), now_unix());
                read_ok += 1;
            }
        }
        progress.finish();
        if read_ok > 0 {
            // Forget packs that no longer exist so the state stays small.
            state.retain(|k, _| Digest::from_hex(k).is_ok_and(|d| packs.contains_key(&d)));
            save_state(&state_path, &state)?;
        }
        Ok(())
    }
}

fn load_state(path: &Path) -> BTreeMap<String, u64> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(path: &Path, state: &BTreeMap<String, u64>) -> Result<()> {
    atomic_write(path, &serde_json::to_vec(state).expect("state serializes"))
}
