//! Pins: images kept whatever happens to their tags.
//!
//! A pin is a small record, `pins/xx/<image-hex>` (JSON), that makes its
//! image a root of gc's mark beside the refs: `rm` of every tag, `prune` and
//! `gc` leave a pinned image whole, and `get blake3:<id>` (or `get --lock`)
//! returns it. Pins are part of the store, so every host sees them.
//!
//! Safety without compare-and-swap: gc's mark lists refs first, then pins.
//! An image pinned while a tag still named it is seen either by its ref
//! (listed before the pin was needed) or by its pin (written before the tag
//! could go). Pinning an image no tag names is allowed only when gc has not
//! condemned any of its chunks, like `tag` by id; a gc that condemned them
//! in the meantime re-marks before it deletes and sees the pin then.

use serde::{Deserialize, Serialize};

use crate::config;
use crate::error::{Error, Object, Result, Wanted};
use crate::eventlog::{self, Event};
use crate::id::{Digest, ImageId};
use crate::refs::ImageRef;
use crate::session;
use crate::Store;

/// Top-level store directory of pins.
pub const PINS_DIR: &str = "pins";
const FORMAT: &str = "imgstore-pin";

/// The contents of a pin file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Always `"imgstore-pin"`.
    pub format: String,
    /// Record version, 1.
    pub version: u32,
    /// The pinned image.
    pub image: ImageId,
    /// Its size in bytes.
    pub size: u64,
    /// Why it is kept (`--reason`).
    pub reason: String,
    /// When it was pinned (seconds since the epoch, the pinning host's clock).
    pub created: u64,
    /// Who pinned it.
    pub user: String,
    /// From which host.
    pub host: String,
}

impl PinRecord {
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("pin serializes");
        v.push(b'\n');
        v
    }

    fn parse(bytes: &[u8], key: &str) -> Result<PinRecord> {
        let what = || Object::StoreObject(key.to_string());
        let r: PinRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(what(), format!("not a pin record: {e}")))?;
        if r.format != FORMAT {
            return Err(Error::corrupt(what(), "not a pin record (format field)"));
        }
        if r.version > 1 {
            return Err(Error::NewerFormat {
                found: format!("pin version {}", r.version),
                supported: 1,
            });
        }
        if r.image.0.key(PINS_DIR) != key {
            return Err(Error::corrupt(
                what(),
                "the pin is not about the image it is named after",
            ));
        }
        Ok(r)
    }
}

/// The image id a pin key names, if the key is shaped like one.
pub fn pin_key_image(key: &str) -> Option<ImageId> {
    let mut parts = key.split('/');
    let (dir, shard, hex) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = dir == PINS_DIR && parts.next().is_none() && hex.starts_with(shard) && shard.len() == 2;
    let d = Digest::from_hex(hex).ok().filter(|d| ok && d.to_hex() == hex)?;
    Some(ImageId(d))
}

impl Store {
    /// Pins the image `image` names, with `reason`. Pinning a pinned image
    /// keeps the first pin (its reason and date) and returns it.
    pub fn pin(&self, image: &ImageRef, reason: &str) -> Result<PinRecord> {
        if reason.trim().is_empty() {
            return Err(Error::BadInput {
                reason: "a pin needs a reason (--reason TEXT): it is what tells a later admin why the image is kept"
                    .into(),
            });
        }
        let resolved = self.resolve(image)?;
        if let Some(existing) = self.pin_of(&resolved.id)? {
            return Ok(existing);
        }
        let manifest = self.manifest(&resolved.id)?;
        if resolved.record.is_none() {
            self.check_restorable(&manifest)?;
        }
        // A build that would not honour pins must refuse the store rather
        // than let its gc delete pinned images.
        config::add_feature(self.backend.as_ref(), config::PINS)?;
        let record = PinRecord {
            format: FORMAT.into(),
            version: 1,
            image: resolved.id,
            size: manifest.size,
            reason: reason.to_string(),
            created: session::now_unix(),
            user: session::username(),
            host: session::hostname(),
        };
        self.backend
            .put(&resolved.id.0.key(PINS_DIR), &record.to_bytes())?;
        eventlog::append(
            self.backend.as_ref(),
            &Event::now("pin", image.to_string(), Some(resolved.id)),
        )?;
        Ok(record)
    }

    /// Removes the pin of the image `image` names; its data stays until no
    /// tag needs it and gc runs.
    pub fn unpin(&self, image: &ImageRef) -> Result<PinRecord> {
        let id = match self.resolve(image) {
            Ok(r) => r.id,
            // A pin may outlive its manifest's listing only in a damaged
            // store; a full id still names the pin.
            Err(e @ Error::NotFound { .. }) => match image {
                ImageRef::Id(hex) if hex.len() == 64 => ImageId(Digest::from_hex(hex).map_err(|_| e)?),
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let record = self
            .pin_of(&id)?
            .ok_or_else(|| Error::not_found(Wanted::Pin(id.to_string())))?;
        self.backend.delete(&id.0.key(PINS_DIR))?;
        eventlog::append(
            self.backend.as_ref(),
            &Event::now("unpin", image.to_string(), Some(id)),
        )?;
        Ok(record)
    }

    /// The pin of image `id`, if it is pinned.
    pub fn pin_of(&self, id: &ImageId) -> Result<Option<PinRecord>> {
        let key = id.0.key(PINS_DIR);
        self.backend
            .get(&key)?
            .map(|b| PinRecord::parse(&b, &key))
            .transpose()
    }

    /// Every pin, by image id. Fails closed on a record it cannot read: gc
    /// marks from this list.
    pub fn pins(&self) -> Result<Vec<PinRecord>> {
        let mut out = Vec::new();
        for key in self.backend.list(PINS_DIR)? {
            if pin_key_image(&key).is_none() {
                return Err(Error::corrupt(
                    Object::StoreObject(key),
                    "a file under pins/ that is not named by an image id; move it out of pins/ before gc and prune can run",
                ));
            }
            // Removed (unpinned) since the listing.
            let Some(bytes) = self.backend.get(&key)? else {
                continue;
            };
            out.push(PinRecord::parse(&bytes, &key)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_keys_name_their_image_and_nothing_else() {
        let id = ImageId(Digest([0xab; 32]));
        let key = id.0.key(PINS_DIR);
        assert_eq!(pin_key_image(&key), Some(id));
        for bad in [
            "pins/ab".to_string(),
            format!("pins/cd/{}", "ab".repeat(32)),
            format!("pins/ab/{}", "AB".repeat(32)),
            format!("pins/ab/{}/x", "ab".repeat(32)),
            format!("refs/ab/{}", "ab".repeat(32)),
        ] {
            assert_eq!(pin_key_image(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_about_another_image_is_corrupt() {
        let rec = PinRecord {
            format: FORMAT.into(),
            version: 1,
            image: ImageId(Digest([1; 32])),
            size: 1,
            reason: "r".into(),
            created: 0,
            user: "u".into(),
            host: "h".into(),
        };
        let other = ImageId(Digest([2; 32])).0.key(PINS_DIR);
        assert!(matches!(
            PinRecord::parse(&rec.to_bytes(), &other),
            Err(Error::Corrupt { .. })
        ));
        let own = rec.image.0.key(PINS_DIR);
        assert_eq!(PinRecord::parse(&rec.to_bytes(), &own).unwrap(), rec);
        let newer = String::from_utf8(rec.to_bytes())
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            PinRecord::parse(newer.as_bytes(), &own),
            Err(Error::NewerFormat { .. })
        ));
    }
}
