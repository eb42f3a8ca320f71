//! Content-defined cut points (FastCDC v2020).
//!
//! Cut points are part of the on-disk format: the same bytes with the same
//! [`ChunkerParams`] must always give the same chunks, or dedup against older
//! images silently stops working. `fastcdc` is pinned to an exact version and
//! the golden vectors in the tests below fail on any change.

use std::borrow::Cow;
use std::ops::Range;

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Chunk size bounds and gear seed, frozen in the store's config at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter than this, except the last one of an image.
    pub min: u32,
    /// Target mean chunk size; a power of two.
    pub avg: u32,
    /// No chunk is longer than this.
    pub max: u32,
    /// XORed into the gear tables, so cut points differ between stores.
    pub seed: u64,
}

impl ChunkerParams {
    /// min/avg/max as avg/4, avg, avg*4 (FastCDC's usual spread).
    pub fn with_avg(avg: u32, seed: u64) -> Self {
        ChunkerParams {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
            seed,
        }
    }

    /// Checks the bounds that `fastcdc` only `debug_assert!`s.
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && avg.is_power_of_two()
            && min % 2 == 0
            && max % 2 == 0
            && min <= avg
            && avg <= max;
        if ok {
            Ok(())
        } else {
            Err(Error::BadConfig {
                reason: format!(
                    "chunker sizes min={min} avg={avg} max={max} are out of range \
                     (avg must be a power of two, min <= avg <= max, within FastCDC's limits)"
                ),
            })
        }
    }
}

/// Finds cut points; cheap to clone, shareable across threads.
#[derive(Debug, Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// Builds the masks and gear tables once for `params`.
    pub fn new(params: ChunkerParams) -> Result<Self> {
        params.validate()?;
        let (mask_s, mask_l) = v2020::select_masks(params.avg as usize, v2020::Normalization::Level1);
        let (gear, gear_ls) = v2020::get_gear_with_seed(params.seed);
        Ok(Chunker {
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        })
    }

    /// The parameters this chunker cuts with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk that starts at `data[0]`.
    ///
    /// When `data` is shorter than `max` and more input follows, a cut at
    /// `data.len()` may be forced by the end of the buffer rather than found
    /// in the content: callers keep that tail and cut it again with more data.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let (_, len) = v2020::cut_gear(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len.max(1)
    }

    /// Length of every chunk that starts in a run of zero bytes and ends
    /// before the run does: a cut depends only on the chunk's own bytes, so
    /// within zeros all chunks are this long. This lets a put cut through a
    /// hole it never reads exactly as if it had read the zeros.
    pub fn zero_chunk_len(&self) -> usize {
        self.next_cut(&vec![0u8; 2 * self.max_len()])
    }

    /// Every chunk of `data`, treating its end as the end of the input.
    pub fn chunks<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = Range<usize>> + 'a {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= data.len() {
                return None;
            }
            let len = self.next_cut(&data[start..]);
            let range = start..start + len;
            start += len;
            Some(range)
        })
    }

    /// The chunks [`Chunker::chunks`] gives, found by two threads (rayon):
    /// one cuts from the start, the other from the middle as if a chunk
    /// began there. A cut depends only on the bytes from its chunk's start,
    /// so once the first sequence reaches a point where the second has a
    /// chunk start, the rest of the second is the rest of the first: the
    /// result is the sequential one. Where they never meet (e.g. long runs
    /// cut only at the maximum length, out of phase), the first sequence
    /// simply goes on to the end.
    pub fn chunks_parallel(&self, data: &[u8]) -> Vec<Range<usize>> {
        // Small inputs gain nothing from a second thread.
        if data.len() < 16 * self.max_len() {
            return self.chunks(data).collect();
        }
        let mid = data.len() / 2;
        let (mut first, second) = rayon::join(
            || self.cut_from(data, 0, mid),
            || {
                let mut second = self.cut_from(data, mid, data.len());
                second.reverse(); // popped in order below
                second
            },
        );
        let mut second = second;
        let mut at = first.last().map_or(0, |r| r.end);
        loop {
            // Drop the second sequence's chunks that start before `at`.
            while second.last().is_some_and(|r| r.start < at) {
                second.pop();
            }
            match second.last() {
                Some(r) if r.start == at => {
                    first.extend(second.drain(..).rev());
                    return first;
                }
                _ if at >= data.len() => return first,
                _ => {
                    let len = self.next_cut(&data[at..]);
                    first.push(at..at + len);
                    at += len;
                }
            }
        }
    }

    /// Chunks of `data` from `start` on, cut as the whole of `data` would
    /// be, until one ends at or after `stop`.
    fn cut_from(&self, data: &[u8], mut start: usize, stop: usize) -> Vec<Range<usize>> {
        let mut cuts = Vec::new();
        while start < stop {
            let len = self.next_cut(&data[start..]);
            cuts.push(start..start + len);
            start += len;
        }
        cuts
    }

    /// The largest chunk this chunker can produce.
    pub fn max_len(&self) -> usize {
        self.params.max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test bytes (xorshift64*), independent of any crate.
    fn bytes(n: usize, mut s: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            v.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn cuts(params: ChunkerParams, data: &[u8]) -> Vec<usize> {
        Chunker::new(params)
            .unwrap()
            .chunks(data)
            .map(|r| r.end)
            .collect()
    }

    /// Cut points are part of the format. If this fails, existing stores
    /// would stop deduplicating against new puts: do not update the vectors,
    /// find out what changed (a fastcdc upgrade, a parameter mapping).
    #[test]
    fn golden_cut_points() {
        let data = bytes(1 << 20, 0x1234_5678);
        assert_eq!(cuts(ChunkerParams::with_avg(64 * 1024, 0), &data), GOLDEN_SEED0);
        assert_eq!(
            cuts(ChunkerParams::with_avg(16 * 1024, 42), &data),
            GOLDEN_SEED42_16K
        );
    }

    const GOLDEN_SEED0: &[usize] = &[
        44305, 100225, 166206, 244538, 311063, 386355, 454728, 519567, 724920, 787876, 853467, 920707,
        995899, 1021633, 1048576,
    ];
    const GOLDEN_SEED42_16K: &[usize] = &[
        28406, 45819, 53067, 71532, 94316, 129297, 161765, 175976, 218307, 239783, 263348, 280456, 304740,
        329508, 356239, 391250, 410838, 423460, 445200, 465066, 514374, 539733, 556232, 583500, 602074,
        623410, 628838, 654732, 681154, 704684, 737760, 746027, 764623, 772124, 805573, 822696, 833552,
        842201, 859045, 865020, 884274, 912214, 938451, 961080, 978584, 983481, 992857, 1004053, 1017855,
        1044205, 1048576,
    ];

    /// Cutting from both ends of a buffer at once gives exactly the
    /// sequential cut points: on random bytes (the halves meet soon), on
    /// long zero runs and repeated patterns (cut at the maximum length,
    /// possibly never meeting), and on mixes of these.
    #[test]
    fn parallel_cuts_equal_sequential_cuts() {
        let chunker = Chunker::new(ChunkerParams::with_avg(256, 7)).unwrap();
        let random = bytes(64 << 10, 9);
        let mut mixed = bytes(20_000, 10);
        mixed.extend(vec![0u8; 30_001]);
        mixed.extend(bytes(15_000, 11));
        mixed.extend(b"abcdefg".repeat(5_000));
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            ("random", random.clone()),
            ("zeros", vec![0u8; 70_001]),
            ("pattern", b"0123456789abcdef".repeat(5_000)),
            ("mixed", mixed),
            ("short", random[..1_000].to_vec()),
        ];
        for (name, data) in &inputs {
            for len in [data.len(), data.len() - 1, data.len() / 2 + 333] {
                let data = &data[..len];
                let sequential: Vec<_> = chunker.chunks(data).collect();
                assert_eq!(chunker.chunks_parallel(data), sequential, "{name}, {len} bytes");
            }
        }
    }

    /// Our cut loop agrees with the crate's own iterator.
    #[test]
    fn matches_fastcdc_reference_iterator() {
        let data = bytes(1 << 20, 0x1234_5678);
        let reference: Vec<usize> =
            v2020::FastCDC::with_level_and_seed(&data, 4096, 16384, 65536, v2020::Normalization::Level1, 42)
                .map(|c| c.offset + c.length)
                .collect();
        assert_eq!(cuts(ChunkerParams::with_avg(16 * 1024, 42), &data), reference);
    }

    #[test]
    fn chunks_tile_the_input_within_bounds() {
        let p = ChunkerParams::with_avg(4096, 7);
        let data = bytes(300_000, 9);
        let c = Chunker::new(p).unwrap();
        let mut pos = 0;
        let ranges: Vec<_> = c.chunks(&data).collect();
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(r.start, pos);
            let len = r.end - r.start;
            assert!(len <= p.max as usize);
            assert!(len >= p.min as usize || i == ranges.len() - 1);
            pos = r.end;
        }
        assert_eq!(pos, data.len());
    }

    #[test]
    fn cutting_in_blocks_equals_cutting_whole() {
        // The put pipeline cuts block by block and carries the last chunk
        // over; that must give the same chunks as cutting the whole input.
        let p = ChunkerParams::with_avg(4096, 3);
        let c = Chunker::new(p).unwrap();
        let data = bytes(500_000, 11);
        let whole: Vec<_> = c.chunks(&data).collect();
        for block in [20_000usize, 65_536, 99_999] {
            let mut got = Vec::new();
            let mut start = 0;
            let mut fed = 0;
            while start < data.len() {
                fed = (fed + block).min(data.len());
                let eof = fed == data.len();
                let mut rs: Vec<_> = c.chunks(&data[start..fed]).collect();
                if !eof {
                    rs.pop();
                }
                for r in rs {
                    got.push(start + r.start..start + r.end);
                }
                start = got.last().map_or(0, |r| r.end);
            }
            assert_eq!(got, whole, "block size {block}");
        }
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(ChunkerParams::with_avg(3000, 0).validate().is_err());
        assert!(ChunkerParams {
            min: 10,
            avg: 1024,
            max: 4096,
            seed: 0
        }
        .validate()
        .is_err());
        assert!(ChunkerParams::with_avg(1 << 30, 0).validate().is_err());
    }
}
