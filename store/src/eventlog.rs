//! The store's history: who put, tagged or removed what, when, from where.
//!
//! Each event is its own small file, `log/<nanoseconds>-<unique>.json`, so
//! writers on many hosts never append to a shared file (appends are not
//! atomic on NFS or object storage). Names sort by time.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::Backend;
use crate::error::{Error, Object, Result};
use crate::id::unique_suffix;
use crate::id::ImageId;
use crate::refs::Added;
use crate::session::{hostname, username};

/// Store directory of the event log.
pub const LOG_DIR: &str = "log";

/// One thing that happened to a ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the epoch, host clock.
    pub time: u64,
    /// `put`, `tag`, `rm` or `gc`.
    pub action: String,
    /// The `name:tag` acted on (empty for `gc`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image the ref names after the event (`rm`: the one it named);
    /// none for `gc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageId>,
    /// The image the ref named before, when it was moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ImageId>,
    /// User.
    pub user: String,
    /// Host.
    pub host: String,
    /// What a put added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<Added>,
    /// What a gc run deleted and wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcDone>,
}

/// What one gc run changed on disk: the store's growth chart subtracts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDone {
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Stored bytes copied into new packs by repacking.
    pub bytes_repacked: u64,
}

impl Event {
    /// An event happening now, by this user on this host.
    pub fn now(action: &str, reference: String, image: Option<ImageId>) -> Event {
        Event {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            action: action.into(),
            reference,
            image,
            previous: None,
            user: username(),
            host: hostname(),
            added: None,
            gc: None,
        }
    }

    /// A gc run that deleted or wrote packs, now.
    pub fn gc(done: GcDone) -> Event {
        Event {
            gc: Some(done),
            ..Event::now("gc", String::new(), None)
        }
    }
}

/// Appends an event.
pub fn append(backend: &dyn Backend, event: &Event) -> Result<()> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!("{LOG_DIR}/{nanos:020}-{}.json", unique_suffix());
    backend.put(&key, &serde_json::to_vec(event).expect("event serializes"))
}

/// Parses one event file; `key` names it in errors.
pub fn parse(bytes: &[u8], key: &str) -> Result<Event> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(Object::LogEntry { key: key.into() }, e.to_string()))
}

/// All events in time order.
pub fn read_all(backend: &dyn Backend) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for key in backend.list(LOG_DIR)? {
        let Some(bytes) = backend.get(&key)? else {
            continue;
        };
        events.push(parse(&bytes, &key)?);
    }
    Ok(events)
}
