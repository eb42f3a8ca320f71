//! Hostile bytes: every parser of stored data returns a typed error, never
//! panics, on arbitrary input, including inputs that start like the real
//! thing (a valid magic, then garbage) so the checks past the magic run too.
//! (Manifest, segment and SIF parsers have their own property tests.)

use proptest::prelude::*;

use crate::backend::InMemory;
use crate::codec::Codec;
use crate::config::Config;
use crate::error::{Error, Object};
use crate::eventlog;
use crate::id::Digest;
use crate::pack::{self, Location, PackBuilder};
use crate::refs::RefRecord;

fn real_pack() -> Vec<u8> {
    let mut b = PackBuilder::new();
    for i in 0..3u8 {
        let c = vec![i; 300];
        b.add(Digest::of(&c), 300, Codec::Raw, &c);
    }
    b.finish().1.to_vec()
}

/// A real pack with `edits` (position, xor) applied and cut to `cut` bytes.
fn mangled(edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut p = real_pack();
    for (at, x) in edits {
        let n = p.len();
        p[at % n] ^= x;
    }
    p.truncate(cut.max(1));
    p
}

proptest! {
    #[test]
    fn pack_footer_and_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                          loc in proptest::collection::vec(any::<u8>(), 49)) {
        let file = InMemory(&bytes);
        let _ = pack::read_footer(&file, &Object::InMemory);
        if let Some(loc) = Location::decode(&loc) {
            let _ = pack::read_chunk(&file, &Digest::of(b"x"), &loc);
        }
    }

    #[test]
    fn mangled_packs_never_panic(edits in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
                                 cut in 0usize..2000) {
        let mangled = mangled(&edits, cut);
        let file = InMemory(&mangled);
        if let Ok(entries) = pack::read_footer(&file, &Object::InMemory) {
            for e in entries {
                let _ = pack::read_chunk(&file, &e.id, &e.location(Digest::of(b"p")));
            }
        }
    }

    #[test]
    fn config_ref_and_log_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                      prefix in 0usize..4) {
        let starts: [&[u8]; 4] = [b"", b"{\"format\": \"imgstore\", \"version\": ",
                                  b"{\"format\": \"imgstore-ref\", \"version\": 1, \"image\": ",
                                  b"{\"time\": 1, \"action\": "];
        let mut input = starts[prefix].to_vec();
        input.extend_from_slice(&bytes);
        let config_ok = matches!(Config::parse(&input),
            Ok(_) | Err(Error::CorruptConfig { .. } | Error::NewerFormat { .. } | Error::BadConfig { .. }));
        let ref_ok = matches!(RefRecord::parse(&input, &Object::InMemory), Ok(_) | Err(Error::Corrupt { .. } | Error::NewerFormat { .. }));
        let log_ok = matches!(eventlog::parse(&input, "l"), Ok(_) | Err(Error::Corrupt { .. }));
        prop_assert!(config_ok, "config: unexpected error kind");
        prop_assert!(ref_ok, "ref: unexpected error kind");
        prop_assert!(log_ok, "log: unexpected error kind");
    }
}
