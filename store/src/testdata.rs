//! Seeded synthetic images for the demo and the benchmarks: nothing to
//! download, the same bytes for the same seed on every machine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// xorshift64*: a fast, seeded source of bytes for test images.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (zero is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes an image of `size` bytes: random blocks (like compressed squashfs
/// data), text-like blocks (compressible, like scripts and ELF tables) and
/// zero blocks (like unused ext3 space). With `edit`, about one block in 100 is
/// rewritten and 10 KB are inserted mid-image, as a new commit would change it.
pub fn write_image(path: &Path, size: u64, seed: u64, edit: bool) -> std::io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut layout = Rng::new(seed);
    let mut content = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut edits = Rng::new(seed ^ 0xdead_beef);
    let words: Vec<&[u8]> =
        b"lib cuda kernel tensor float int void return static const struct module import def class self"
            .split(|&b| b == b' ')
            .collect();
    let mut buf = vec![0u8; BLOCK];
    let blocks = size.div_ceil(BLOCK as u64);
    let mut written = 0u64;
    for i in 0..blocks {
        match layout.next_u64() % 10 {
            0..=4 => content.fill(&mut buf),
            5..=8 => {
                let mut n = 0;
                while n < BLOCK {
                    let w = words[(content.next_u64() % words.len() as u64) as usize];
                    let k = w.len().min(BLOCK - n);
                    buf[n..n + k].copy_from_slice(&w[..k]);
                    n += k;
                    if n < BLOCK {
                        buf[n] = if content.next_u64().is_multiple_of(8) {
                            b'\n'
                        } else {
                            b' '
                        };
                        n += 1;
                    }
                }
            }
            _ => buf.fill(0),
        }
        // The second image: about 1 block in 100 rewritten, plus 10 KB
        // inserted near the middle, which shifts everything after it.
        if edit && edits.next_u64().is_multiple_of(100) {
            edits.fill(&mut buf[..4096]);
        }
        if edit && i == blocks / 2 {
            let mut extra = vec![0u8; 10_000];
            edits.fill(&mut extra);
            out.write_all(&extra)?;
        }
        let k = (size - written).min(BLOCK as u64) as usize;
        out.write_all(&buf[..k])?;
        written += k as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
