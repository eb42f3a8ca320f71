//! A store held in memory, with faults that tests inject at the door:
//! proof that [`Backend`] is the only way to the store's bytes (a whole
//! put, get, verify and gc run on it, with nothing on disk but the local
//! index), and a place to fail a write or lose what was not yet durable.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::{checked, dir_prefix, Backend, Fill, ListPage, ObjectMeta, ReadAt, Staged};
use crate::error::{self, Error, Result};

/// A fault [`MemoryBackend::inject`] arms: a write, read or delete of a key
/// starting with the prefix fails, once, as an object store's 5xx would,
/// or as a crash at that step would stop a writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next put (or staged commit) of a key with this prefix fails;
    /// nothing is written.
    FailPut(String),
    /// Like [`Fault::FailPut`], after this many matching puts went through:
    /// the second pack of a put, not the first.
    FailPutAfter(String, u32),
    /// The next get or open of a key with this prefix fails.
    FailGet(String),
    /// The next delete of a key with this prefix fails; nothing is deleted.
    FailDelete(String),
}

/// What a fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Delete,
}

#[derive(Debug, Clone)]
struct Object {
    data: Arc<Vec<u8>>,
    modified: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    faults: Vec<Fault>,
    puts: u64,
}

/// A store's objects in memory. Cloning shares them.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    page: usize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_page_size(1000)
    }
}

impl MemoryBackend {
    /// An empty backend whose listings come in pages of `page` objects.
    pub fn with_page_size(page: usize) -> Self {
        MemoryBackend {
            state: Arc::default(),
            page: page.max(1),
        }
    }

    /// Arms `fault`; it fires once.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// How many objects were put so far.
    pub fn puts(&self) -> u64 {
        self.lock().puts
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the map whole: each change
        // is one insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fire(state: &mut State, key: &str, op: Op) -> Result<()> {
        for f in &mut state.faults {
            if let Fault::FailPutAfter(p, n) = f {
                if op == Op::Put && *n > 0 && key.starts_with(p.as_str()) {
                    *n -= 1;
                    return Ok(());
                }
            }
        }
        let hit = state.faults.iter().position(|f| match f {
            Fault::FailPut(p) | Fault::FailPutAfter(p, _) => op == Op::Put && key.starts_with(p.as_str()),
            Fault::FailGet(p) => op == Op::Get && key.starts_with(p.as_str()),
            Fault::FailDelete(p) => op == Op::Delete && key.starts_with(p.as_str()),
        });
        match hit {
            Some(i) => {
                let fault = state.faults.remove(i);
                Err(Error::Backend {
                    key: key.into(),
                    source: format!("injected fault {fault:?}").into(),
                })
            }
            None => Ok(()),
        }
    }

    fn insert(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Put)?;
        state.puts += 1;
        state.objects.insert(
            key.into(),
            Object {
                data: Arc::new(data),
                modified: SystemTime::now(),
            },
        );
        Ok(())
    }

    fn object(&self, key: &str) -> Result<Option<Object>> {
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Get)?;
        Ok(state.objects.get(key).cloned())
    }
}

/// A staged object: in place only at commit (where a put fault fires).
struct MemoryStaged {
    backend: MemoryBackend,
    key: String,
    data: Vec<u8>,
}

impl Staged for MemoryStaged {
    fn commit(self: Box<Self>) -> Result<()> {
        self.backend.insert(&self.key, self.data)
    }
}

struct MemoryObject {
    data: Arc<Vec<u8>>,
    key: String,
}

impl ReadAt for MemoryObject {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| {
                Error::corrupt(
                    error::Object::StoreObject(self.key.clone()),
                    format!("too short: {} bytes at offset {offset} are missing", buf.len()),
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn put_with(&self, key: &str, fill: &mut Fill) -> Result<()> {
        checked(key)?;
        let mut data = Vec::new();
        fill(&mut data).map_err(|source| Error::Backend {
            key: key.into(),
            source: source.into(),
        })?;
        self.insert(key, data)
    }

    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        checked(key)?;
        Ok(Box::new(MemoryStaged {
            backend: self.clone(),
            key: key.into(),
            data: data.to_vec(),
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        checked(key)?;
        Ok(self.object(key)?.map(|o| o.data.as_ref().clone()))
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        checked(key)?;
        match self.object(key)? {
            Some(o) => Ok(Box::new(MemoryObject {
                data: o.data,
                key: key.into(),
            })),
            None => Err(Error::Missing { key: key.into() }),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        checked(key)?;
        Ok(self.lock().objects.get(key).map(|o| ObjectMeta {
            key: key.into(),
            size: o.data.len() as u64,
            modified: o.modified,
        }))
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage> {
        let start = dir_prefix(prefix);
        let state = self.lock();
        let mut keys = Vec::new();
        let mut more = false;
        // Keys under a prefix are one contiguous run of the sorted map.
        let from = match after {
            Some(a) if a >= start.as_str() => Bound::Excluded(a.to_string()),
            _ => Bound::Included(start.clone()),
        };
        for key in state.objects.range((from, Bound::Unbounded)).map(|(k, _)| k) {
            if !key.starts_with(&start) {
                break;
            }
            if keys.len() == self.page {
                more = true;
                break;
            }
            keys.push(key.clone());
        }
        Ok(ListPage { keys, more })
    }

    fn delete(&self, key: &str) -> Result<()> {
        checked(key)?;
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Delete)?;
        state.objects.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_fault_fires_once_and_writes_nothing() {
        let b = MemoryBackend::default();
        b.inject(Fault::FailPut("packs/".into()));
        assert!(matches!(b.put("packs/ab/x", b"1"), Err(Error::Backend { .. })));
        assert!(b.head("packs/ab/x").unwrap().is_none());
        b.put("packs/ab/x", b"1").unwrap();
        b.inject(Fault::FailGet("packs/ab/x".into()));
        assert!(b.get("packs/ab/x").is_err());
        assert_eq!(b.get("packs/ab/x").unwrap().unwrap(), b"1");
    }
}
