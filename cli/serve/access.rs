//! Who may pull and push what: HTTP Basic users from an htpasswd file
//! (bcrypt lines only) and per-prefix rules from a small access file.
//!
//! The access file, one rule a line (`#` starts a comment):
//!
//! ```text
//! group ml alice bob            # a group and its members
//! read  lab/private/  @ml       # names starting lab/private/: read by group ml
//! push  lab/private/  alice     # ... pushed by alice
//! read  lab/          anonymous # lab/*: anyone, without a user
//! push  *             @ml       # * is every name
//! ```
//!
//! For a request, the rules of its action whose prefix starts its name and
//! is the longest such prefix decide: it is allowed if one of them names its
//! user (`anonymous` matches everyone, users included). So `lab/private/`
//! rules alone govern `lab/private/x`, whatever `lab/` allows. A prefix is
//! a plain string prefix: end it with `/` to mean a subtree. A push always
//! needs a user: `anonymous` in a push rule is refused at load.
//! Without an access file, every user in the htpasswd file may read and
//! push everything and anonymous requests nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

/// What a request wants to do with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Push,
}

#[derive(Debug)]
struct Rule {
    action: Action,
    /// `""` for `*`.
    prefix: String,
    /// Users, `@group`s, or `anonymous`.
    who: Vec<String>,
}

/// The users and rules a server checks requests against.
pub struct Access {
    /// user -> bcrypt hash.
    users: HashMap<String, String>,
    groups: HashMap<String, HashSet<String>>,
    /// `None`: every user may do everything.
    rules: Option<Vec<Rule>>,
    /// sha256 of `user:password` pairs that passed bcrypt once: bcrypt is
    /// slow on purpose, and clients send the password with every request.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No or wrong credentials where a user is needed (401).
    Unauthenticated,
    /// The user may not (403).
    Denied,
}

impl Access {
    /// Loads the htpasswd file and, if given, the access file.
    pub fn load(htpasswd: &Path, rules: Option<&Path>) -> Result<Access> {
        let text =
            std::fs::read_to_string(htpasswd).with_context(|| format!("reading {}", htpasswd.display()))?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                bail!("{}:{}: not USER:HASH", htpasswd.display(), n + 1);
            };
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                bail!(
                    "{}:{}: user {user}'s password is not a bcrypt hash (make it with `htpasswd -B`)",
                    htpasswd.display(),
                    n + 1
                );
            }
            users.insert(user.to_string(), hash.to_string());
        }
        let mut access = Access {
            users,
            groups: HashMap::new(),
            rules: None,
            verified: Mutex::new(HashSet::new()),
        };
        if let Some(path) = rules {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            access
                .parse_rules(&text)
                .with_context(|| format!("in {}", path.display()))?;
        }
        Ok(access)
    }

    fn parse_rules(&mut self, text: &str) -> Result<()> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = n + 1;
            match words.as_slice() {
                [] => {}
                ["group", name, members @ ..] => {
                    self.groups
                        .entry(name.to_string())
                        .or_default()
                        .extend(members.iter().map(|m| m.to_string()));
                }
                [action @ ("read" | "push"), prefix, who @ ..] if !who.is_empty() => {
                    let action = if *action == "read" {
                        Action::Read
                    } else {
                        Action::Push
                    };
                    if action == Action::Push && who.contains(&"anonymous") {
                        bail!("line {at}: a push always needs a user; `anonymous` cannot push");
                    }
                    let prefix = if *prefix == "*" { "" } else { *prefix };
                    rules.push(Rule {
                        action,
                        prefix: prefix.to_string(),
                        who: who.iter().map(|w| w.to_string()).collect(),
                    });
                }
                _ => bail!("line {at}: expected `group NAME USER...` or `read|push PREFIX|* WHO...`"),
            }
        }
        for r in &rules {
            for w in &r.who {
                if let Some(g) = w.strip_prefix('@') {
                    if !self.groups.contains_key(g) {
                        bail!(
                            "rule for {:?} names group {g}, which no `group` line defines",
                            r.prefix
                        );
                    }
                }
            }
        }
        self.rules = Some(rules);
        Ok(())
    }

    /// The user a request's `Authorization` header proves, `None` for
    /// none; `Err` for credentials that do not check out.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<String>, Refused> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let encoded = value.strip_prefix("Basic ").ok_or(Refused::Unauthenticated)?;
        let decoded = decode_base64(encoded.trim()).ok_or(Refused::Unauthenticated)?;
        let decoded = String::from_utf8(decoded).map_err(|_| Refused::Unauthenticated)?;
        let (user, password) = decoded.split_once(':').ok_or(Refused::Unauthenticated)?;
        let hash = self.users.get(user).ok_or(Refused::Unauthenticated)?;
        let key: [u8; 32] = Sha256::digest(decoded.as_bytes()).into();
        if self.verified.lock().expect("verified").contains(&key) {
            return Ok(Some(user.to_string()));
        }
        if bcrypt::verify(password, hash).unwrap_or(false) {
            self.verified.lock().expect("verified").insert(key);
            Ok(Some(user.to_string()))
        } else {
            Err(Refused::Unauthenticated)
        }
    }

    /// Whether some name may be read without a user.
    pub fn anonymous_reads(&self) -> bool {
        self.rules.as_ref().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| r.action == Action::Read && r.who.iter().any(|w| w == "anonymous"))
        })
    }

    fn matches(&self, who: &str, user: Option<&str>) -> bool {
        match (who, user) {
            ("anonymous", _) => true,
            (_, None) => false,
            (w, Some(u)) => match w.strip_prefix('@') {
                Some(g) => self.groups.get(g).is_some_and(|m| m.contains(u)),
                None => w == u,
            },
        }
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `name`.
    pub fn check(&self, user: Option<&str>, action: Action, name: &str) -> Result<(), Refused> {
        let allowed = match &self.rules {
            None => user.is_some(),
            Some(rules) => {
                // The most specific prefix decides: `lab/private/` over `lab/`.
                let applies = |r: &&Rule| r.action == action && name.starts_with(&r.prefix);
                let longest = rules.iter().filter(applies).map(|r| r.prefix.len()).max();
                (action == Action::Read || user.is_some())
                    && rules
                        .iter()
                        .filter(applies)
                        .filter(|r| Some(r.prefix.len()) == longest)
                        .any(|r| r.who.iter().any(|w| self.matches(w, user)))
            }
        };
        match (allowed, user) {
            (true, _) => Ok(()),
            (false, None) => Err(Refused::Unauthenticated),
            (false, Some(_)) => Err(Refused::Denied),
        }
    }
}

/// Standard base64 (with padding), as HTTP Basic sends it.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for group in s.chunks(4) {
        if group.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(rules: &str) -> Access {
        let mut a = Access {
            users: HashMap::from([
                ("alice".into(), bcrypt::hash("pa", 4).unwrap()),
                ("bob".into(), bcrypt::hash("pb", 4).unwrap()),
            ]),
            groups: HashMap::new(),
            rules: None,
            verified: Mutex::new(HashSet::new()),
        };
        if !rules.is_empty() {
            a.parse_rules(rules).unwrap();
        }
        a
    }

    fn basic(user_pass: &str) -> String {
        // "alice:pa" and friends, encoded by hand-checked table below.
        let table = [
            ("alice:pa", "YWxpY2U6cGE="),
            ("bob:pb", "Ym9iOnBi"),
            ("alice:no", "YWxpY2U6bm8="),
        ];
        format!("Basic {}", table.iter().find(|(k, _)| *k == user_pass).unwrap().1)
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("YWxpY2U6cGE=").unwrap(), b"alice:pa");
        assert_eq!(decode_base64("Ym9iOnBi").unwrap(), b"bob:pb");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("@@@@").is_none());
    }

    #[test]
    fn users_are_checked_with_bcrypt() {
        let a = access("");
        assert_eq!(a.authenticate(Some(&basic("alice:pa"))), Ok(Some("alice".into())));
        assert_eq!(
            a.authenticate(Some(&basic("alice:pa"))),
            Ok(Some("alice".into())),
            "cached"
        );
        assert_eq!(
            a.authenticate(Some(&basic("alice:no"))),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(a.authenticate(Some("Bearer x")), Err(Refused::Unauthenticated));
        assert_eq!(a.authenticate(None), Ok(None));
        // No rules: users do everything, anonymous nothing.
        assert_eq!(a.check(Some("bob"), Action::Push, "x"), Ok(()));
        assert_eq!(a.check(None, Action::Read, "x"), Err(Refused::Unauthenticated));
    }

    #[test]
    fn rules_by_prefix_and_group() {
        let a = access(
            "group ml alice\nread lab/private/ @ml\npush lab/private/ alice\nread lab/ anonymous # public\n",
        );
        assert_eq!(a.check(Some("alice"), Action::Read, "lab/private/x"), Ok(()));
        assert_eq!(a.check(Some("alice"), Action::Push, "lab/private/x"), Ok(()));
        assert_eq!(
            a.check(Some("bob"), Action::Read, "lab/private/x"),
            Err(Refused::Denied),
            "lab/private/ rules decide, not lab/'s"
        );
        assert_eq!(
            a.check(None, Action::Read, "lab/private/x"),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            a.check(Some("bob"), Action::Push, "lab/private/x"),
            Err(Refused::Denied)
        );
        assert_eq!(
            a.check(None, Action::Push, "lab/x"),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(a.check(None, Action::Read, "lab/x"), Ok(()));
        assert_eq!(
            a.check(None, Action::Read, "other/x"),
            Err(Refused::Unauthenticated)
        );
        assert_eq!(
            a.check(Some("bob"), Action::Read, "other/x"),
            Err(Refused::Denied)
        );
        let mut b = access("");
        assert!(b.parse_rules("push * anonymous").is_err());
        assert!(b.parse_rules("read * @nobody").is_err());
        assert!(b.parse_rules("write * alice").is_err());
    }
}
