//! The directory tree a mount shows, built from one listing of the refs.
//!
//! Inode numbers are interned by path (and, for files, by image), so a
//! listing taken later gives the same numbers to what did not change, and a
//! tag moved to another image gets a new inode: the kernel may keep a
//! file's pages cached for as long as its inode lives.

use std::collections::{BTreeMap, HashMap};

use imgstore_store::{ImageId, RefRecord, TagRef};

/// The root directory's inode (FUSE's fixed number).
pub const ROOT: u64 = 1;
/// Top-level directory of images by id.
pub const BY_ID: &str = "by-id";

/// One directory entry's target.
#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        children: BTreeMap<String, u64>,
        /// Newest put time below it (seconds since the epoch).
        mtime: u64,
    },
    File {
        image: ImageId,
        size: u64,
        /// Put (or tag) time, seconds since the epoch.
        mtime: u64,
    },
}

/// A snapshot of the tree: inode -> node.
#[derive(Debug, Default)]
pub struct Tree {
    pub nodes: HashMap<u64, Node>,
}

/// Inode numbers handed out so far, by key; they are never reused.
#[derive(Debug)]
pub struct Inodes {
    by_key: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes {
            by_key: HashMap::new(),
            next: ROOT + 1,
        }
    }
}

impl Inodes {
    fn get(&mut self, key: String) -> u64 {
        let next = &mut self.next;
        *self.by_key.entry(key).or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }
}

/// The file name of a tag: the tag and the image's extension.
pub fn file_name(tag: &str, sif: bool) -> String {
    format!("{tag}.{}", if sif { "sif" } else { "img" })
}

impl Tree {
    /// The tree of `refs`: `<name>/<tag>.<ext>` for each ref (each `/` of a
    /// name a directory), and `by-id/<image id>` for each image they name.
    /// `is_sif` says which images are SIF files.
    pub fn build(
        refs: &[(TagRef, RefRecord)],
        is_sif: &dyn Fn(&ImageId) -> bool,
        inodes: &mut Inodes,
    ) -> Tree {
        let mut tree = Tree::default();
        tree.nodes.insert(
            ROOT,
            Node::Dir {
                children: BTreeMap::new(),
                mtime: 0,
            },
        );
        let by_id = tree.dir(ROOT, BY_ID, BY_ID.to_string(), inodes);
        for (t, r) in refs {
            let mut dir = ROOT;
            let mut path = String::new();
            for comp in t.name.split('/') {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(comp);
                tree.touch(dir, r.created);
                dir = match tree.dir(dir, comp, path.clone(), inodes) {
                    Some(d) => d,
                    None => break,
                };
            }
            tree.touch(dir, r.created);
            let name = file_name(&t.tag, is_sif(&r.image));
            tree.file(dir, &format!("{path}/{name}"), name, r, inodes);
            if let Some(by_id) = by_id {
                let name = r.image.to_string();
                let oldest = match tree.child(by_id, &name) {
                    Some(Node::File { mtime, .. }) => (*mtime).min(r.created),
                    _ => r.created,
                };
                let rec = RefRecord {
                    created: oldest,
                    ..r.clone()
                };
                tree.file(by_id, &format!("{BY_ID}/{name}"), name, &rec, inodes);
                tree.touch(by_id, r.created);
            }
        }
        tree
    }

    fn child(&self, dir: u64, name: &str) -> Option<&Node> {
        match self.nodes.get(&dir) {
            Some(Node::Dir { children, .. }) => children.get(name).and_then(|i| self.nodes.get(i)),
            _ => None,
        }
    }

    /// The directory `name` in `parent`, made if missing; `None` if a file
    /// has that name already.
    fn dir(&mut self, parent: u64, name: &str, key: String, inodes: &mut Inodes) -> Option<u64> {
        let existing = match self.nodes.get(&parent) {
            Some(Node::Dir { children, .. }) => children.get(name).copied(),
            _ => return None,
        };
        if let Some(ino) = existing {
            return matches!(self.nodes.get(&ino), Some(Node::Dir { .. })).then_some(ino);
        }
        let ino = inodes.get(key);
        self.nodes.insert(
            ino,
            Node::Dir {
                children: BTreeMap::new(),
                mtime: 0,
            },
        );
        if let Some(Node::Dir { children, .. }) = self.nodes.get_mut(&parent) {
            children.insert(name.to_string(), ino);
        }
        Some(ino)
    }

    /// Puts the file `name` for `r` in `dir`, unless a directory has its name.
    fn file(&mut self, dir: u64, path: &str, name: String, r: &RefRecord, inodes: &mut Inodes) {
        if matches!(self.child(dir, &name), Some(Node::Dir { .. })) {
            tracing::warn!("{path}: a directory has this name; the file is left out");
            return;
        }
        let ino = inodes.get(format!("{path}\0{}", r.image));
        self.nodes.insert(
            ino,
            Node::File {
                image: r.image,
                size: r.size,
                mtime: r.created,
            },
        );
        if let Some(Node::Dir { children, .. }) = self.nodes.get_mut(&dir) {
            if let Some(old) = children.insert(name, ino) {
                if old != ino {
                    self.nodes.remove(&old);
                }
            }
        }
    }

    fn touch(&mut self, dir: u64, time: u64) {
        if let Some(Node::Dir { mtime, .. }) = self.nodes.get_mut(&dir) {
            *mtime = (*mtime).max(time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(image: u8, created: u64) -> RefRecord {
        let mut r: RefRecord = serde_json::from_value(serde_json::json!({
            "format": "imgstore-ref", "version": 1,
            "image": format!("blake3:{}", format!("{image:02x}").repeat(32)),
            "size": 10, "created": created, "user": "u", "host": "h",
        }))
        .unwrap();
        r.size = u64::from(image);
        r
    }

    fn refs() -> Vec<(TagRef, RefRecord)> {
        vec![
            (TagRef::parse("lab:v1").unwrap(), rec(1, 5)),
            (TagRef::parse("lab/app:v1").unwrap(), rec(2, 7)),
            (TagRef::parse("lab/app:v2").unwrap(), rec(1, 9)),
        ]
    }

    fn names(t: &Tree, dir: u64) -> Vec<String> {
        match &t.nodes[&dir] {
            Node::Dir { children, .. } => children.keys().cloned().collect(),
            Node::File { .. } => panic!("not a dir"),
        }
    }

    fn at(t: &Tree, path: &str) -> u64 {
        let mut ino = ROOT;
        for c in path.split('/') {
            ino = match &t.nodes[&ino] {
                Node::Dir { children, .. } => children[c],
                Node::File { .. } => panic!("{path}"),
            };
        }
        ino
    }

    #[test]
    fn names_become_directories_and_ids_share_one() {
        let mut inodes = Inodes::default();
        let sif = |i: &ImageId| i.to_string().contains("0202");
        let t = Tree::build(&refs(), &sif, &mut inodes);
        assert_eq!(names(&t, ROOT), vec!["by-id", "lab"]);
        assert_eq!(names(&t, at(&t, "lab")), vec!["app", "v1.img"]);
        assert_eq!(names(&t, at(&t, "lab/app")), vec!["v1.sif", "v2.img"]);
        assert_eq!(names(&t, at(&t, "by-id")).len(), 2);
        match &t.nodes[&at(&t, "lab")] {
            Node::Dir { mtime, .. } => assert_eq!(*mtime, 9),
            other => panic!("{other:?}"),
        }
        // The by-id file of image 1 carries its oldest put time.
        let id1 = rec(1, 0).image.to_string();
        match &t.nodes[&at(&t, &format!("by-id/{id1}"))] {
            Node::File { mtime, size, .. } => assert_eq!((*mtime, *size), (5, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inodes_stay_for_what_did_not_change_and_a_moved_tag_gets_a_new_one() {
        let mut inodes = Inodes::default();
        let no = |_: &ImageId| false;
        let a = Tree::build(&refs(), &no, &mut inodes);
        let mut moved = refs();
        moved[0].1 = rec(3, 11);
        let b = Tree::build(&moved, &no, &mut inodes);
        assert_eq!(at(&a, "lab/app/v2.img"), at(&b, "lab/app/v2.img"));
        assert_eq!(at(&a, "lab/app"), at(&b, "lab/app"));
        assert_ne!(at(&a, "lab/v1.img"), at(&b, "lab/v1.img"));
    }
}
