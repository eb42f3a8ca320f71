use super::*;
use crate::backend::ReadAt;
use crate::codec;

struct Mem(Vec<u8>);
impl ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = offset as usize;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or_else(|| Error::corrupt(Object::InMemory, "short"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn sample() -> (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>) {
    let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let mut b = PackBuilder::new();
    for c in &chunks {
        b.add(ChunkId::of(c), c.len() as u32, Codec::Raw, c);
    }
    let (id, bytes, entries) = b.finish();
    (id, bytes.to_vec(), entries, chunks)
}

/// A version 2 pack: a raw chunk, a group of three, a zstd chunk.
fn sample_groups() -> (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>) {
    let chunks: Vec<Vec<u8>> = (0..5u8)
        .map(|i| format!("chunk {i} ").repeat(100 + i as usize).into_bytes())
        .collect();
    let mut b = PackBuilder::new();
    b.add(
        ChunkId::of(&chunks[0]),
        chunks[0].len() as u32,
        Codec::Raw,
        &chunks[0],
    );
    let group: Vec<u8> = chunks[1..4].concat();
    let stored = codec::encode_group(3, &Object::InMemory, &group)
        .unwrap()
        .expect("compresses");
    let members: Vec<_> = chunks[1..4]
        .iter()
        .map(|c| (ChunkId::of(c), c.len() as u32))
        .collect();
    b.add_group(&members, &stored);
    let id4 = ChunkId::of(&chunks[4]);
    let z = codec::encode(3, &id4, &chunks[4]).unwrap().expect("compresses");
    b.add(id4, chunks[4].len() as u32, Codec::Zstd, &z);
    let (id, bytes, entries) = b.finish();
    (id, bytes.to_vec(), entries, chunks)
}

#[test]
fn footer_and_chunks_round_trip() {
    let (id, bytes, entries, chunks) = sample();
    assert_eq!(id, Digest::of(&bytes));
    let file = Mem(bytes);
    assert_eq!(read_footer(&file, &Object::InMemory).unwrap(), entries);
    for (e, c) in entries.iter().zip(&chunks) {
        assert_eq!(&read_chunk(&file, &e.id, &e.location(id)).unwrap(), c);
    }
}

#[test]
fn groups_round_trip_and_share_their_stored_bytes() {
    let (id, bytes, entries, chunks) = sample_groups();
    assert_eq!(
        &bytes[8..12],
        &2u32.to_le_bytes(),
        "a pack with groups is version 2"
    );
    let file = Mem(bytes);
    assert_eq!(read_footer(&file, &Object::InMemory).unwrap(), entries);
    assert_eq!(entries.len(), 5);
    let group = read_group(&file, &entries[2].location(id)).unwrap();
    assert_eq!(group, chunks[1..4].concat());
    for (e, c) in entries.iter().zip(&chunks) {
        let loc = e.location(id);
        assert_eq!(&read_chunk(&file, &e.id, &loc).unwrap(), c);
        assert_eq!(Location::decode(&loc.encode()), Some(loc));
        if loc.in_group() {
            assert_eq!(member(&group, &e.id, &loc, Check::Hash).unwrap(), &c[..]);
        }
    }
    let shares = framed_shares(&entries);
    let group_stored = u64::from(entries[1].stored_len);
    let framed = group_stored + FRAME_HEADER_LEN as u64;
    assert_eq!(shares[1..4].iter().sum::<u64>(), framed);
    assert!(shares[1..4].iter().all(|s| *s > 0 && *s < framed));
    assert_eq!(
        shares[0],
        u64::from(entries[0].stored_len) + FRAME_HEADER_LEN as u64
    );
    let footer_and_ends = (HEADER_LEN + TAIL_LEN + FOOTER_ENTRY_LEN * entries.len()) as u64;
    assert_eq!(shares.iter().sum::<u64>() + footer_and_ends, file.0.len() as u64);
    // Copied into a new pack: the same frames, byte for byte.
    let mut copy = PackBuilder::new();
    let added = copy_frames(&file, id, &entries, &mut copy).unwrap();
    let (copy_id, copy_bytes, copy_entries) = copy.finish();
    assert_eq!(
        added,
        entries.iter().map(|e| e.stored_len as u64).sum::<u64>() - 2 * group_stored
    );
    assert_eq!(copy_bytes[32..], file.0[32..], "only the nonce differs");
    let copy_file = Mem(copy_bytes.to_vec());
    for (e, c) in copy_entries.iter().zip(&chunks) {
        assert_eq!(&read_chunk(&copy_file, &e.id, &e.location(copy_id)).unwrap(), c);
    }
    // A group copied without all its members is refused.
    let mut part = PackBuilder::new();
    assert!(copy_frames(&file, id, &[entries[1], entries[3]], &mut part).is_err());
    // A member's location asks for the wrong chunk: named, not returned.
    let mut wrong = entries[2].location(id);
    wrong.inner = 0;
    assert!(read_chunk(&file, &entries[2].id, &wrong).is_err());
}

#[test]
fn any_flipped_byte_is_caught() {
    flips_are_caught(sample());
    flips_are_caught(sample_groups());
}

fn flips_are_caught((id, bytes, entries, _): (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>)) {
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        let file = Mem(bad);
        let footer_ok = read_footer(&file, &Object::InMemory)
            .map(|f| f == entries)
            .unwrap_or(false);
        let chunks_ok = entries
            .iter()
            .all(|e| read_chunk(&file, &e.id, &e.location(id)).is_ok());
        // Reserved bytes are not checked; everything else must be.
        let reserved = (12..32).contains(&i) || (bytes.len() - 44..bytes.len() - 40).contains(&i);
        // A group frame's header id (its first member's) is covered by
        // the pack's name only: members are checked against their own ids.
        let in_frame_pad = entries.iter().any(|e| {
            let o = e.offset as usize;
            (o + 41..o + 48).contains(&i) || (e.codec == Codec::ZstdGroup && (o..o + 32).contains(&i))
        });
        let in_footer_pad = false;
        if !(reserved || in_frame_pad || in_footer_pad) {
            assert!(!(footer_ok && chunks_ok), "flip at {i} went unnoticed");
        }
    }
}

#[test]
fn location_round_trip() {
    let loc = Location {
        pack: Digest::of(b"p"),
        offset: 1 << 40,
        raw_len: 65536,
        stored_len: 1234,
        codec: Codec::ZstdGroup,
        inner: 98304,
    };
    assert_eq!(Location::decode(&loc.encode()), Some(loc));
    assert_eq!(Location::decode(&[0u8; 10]), None);
    // Builds before groups wrote 49 bytes: no offset in a group.
    let old = Location {
        codec: Codec::Zstd,
        inner: 0,
        ..loc
    };
    assert_eq!(Location::decode(&old.encode()[..Location::LEN_V1]), Some(old));
    let mut group_v1 = loc.encode();
    group_v1[48] = Codec::ZstdGroup as u8;
    assert_eq!(Location::decode(&group_v1[..Location::LEN_V1]), None);
}
