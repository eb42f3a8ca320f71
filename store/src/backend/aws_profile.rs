//! The shared credentials and config files the AWS CLI reads
//! (`~/.aws/credentials`, `~/.aws/config`, profile from `AWS_PROFILE`),
//! for the keys and region `object_store` takes only from the environment.

use std::path::PathBuf;

pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

fn profile() -> String {
    std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into())
}

fn file(env: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
}

/// `key = value` lines of the section named `section` of an INI file.
fn section(path: Option<PathBuf>, section: &str) -> Vec<(String, String)> {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

pub fn credentials() -> Option<Credentials> {
    let pairs = section(file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile());
    Some(Credentials {
        key_id: value(&pairs, "aws_access_key_id")?,
        secret: value(&pairs, "aws_secret_access_key")?,
        token: value(&pairs, "aws_session_token"),
    })
}

pub fn region() -> Option<String> {
    let p = profile();
    let name = if p == "default" { p } else { format!("profile {p}") };
    value(&section(file("AWS_CONFIG_FILE", "config"), &name), "region")
}
