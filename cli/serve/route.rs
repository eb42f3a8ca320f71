//! Request paths of the OCI distribution API, parsed into routes. Names go
//! through imgstore's own grammar (`refs::check_name`), so a name that
//! reaches a handler is one `imgstore put` could have written: no `..`, no
//! empty or dotted components, no percent escapes, nothing outside `refs/`.

use imgstore_store::oci::sha256_hex;
use imgstore_store::refs::{check_name, check_tag};
use imgstore_store::Digest;

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest { name: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`: start an upload.
    Uploads { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload under way.
    Upload { name: String, id: String },
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a path is not a route; each maps to an OCI error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Not a path of the API (404).
    NotFound,
    /// The repository name breaks the grammar (400 NAME_INVALID).
    Name(String),
    /// A tag that breaks the grammar (400 TAG_INVALID... sent as MANIFEST_INVALID).
    Tag(String),
    /// A digest that is not `sha256:` and 64 lowercase hex digits (400 DIGEST_INVALID).
    Digest(String),
}

/// Parses `sha256:<64 lowercase hex>`; other algorithms are not served.
pub fn parse_digest(s: &str) -> Result<Digest, Bad> {
    s.strip_prefix("sha256:").and_then(sha256_hex).ok_or_else(|| {
        Bad::Digest(format!(
            "{s:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
        ))
    })
}

fn name(comps: &[&str]) -> Result<String, Bad> {
    let name = comps.join("/");
    check_name(&name).map_err(|e| Bad::Name(e.to_string()))?;
    Ok(name)
}

/// Parses a request path (without its query).
pub fn parse(path: &str) -> Result<Route, Bad> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(Bad::NotFound);
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(Bad::NotFound);
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    // `/v2/<name>/blobs/uploads/` is the one route that ends with a slash.
    if let Some(n) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        let comps: Vec<&str> = n.split('/').collect();
        return Ok(Route::Uploads { name: name(&comps)? });
    }
    let comps: Vec<&str> = rest.split('/').collect();
    let n = comps.len();
    if n < 3 {
        return Err(Bad::NotFound);
    }
    match (comps[n - 2], comps[n - 1]) {
        ("tags", "list") => Ok(Route::Tags {
            name: name(&comps[..n - 2])?,
        }),
        ("manifests", r) => {
            let name = name(&comps[..n - 2])?;
            let reference = if r.contains(':') {
                Reference::Digest(parse_digest(r)?)
            } else {
                check_tag(r, r).map_err(|e| Bad::Tag(e.to_string()))?;
                Reference::Tag(r.to_string())
            };
            Ok(Route::Manifest { name, reference })
        }
        ("blobs", d) => {
            let name = name(&comps[..n - 2])?;
            Ok(Route::Blob {
                name,
                digest: parse_digest(d)?,
            })
        }
        ("uploads", id) if n >= 4 && comps[n - 3] == "blobs" => {
            let name = name(&comps[..n - 3])?;
            if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(Bad::NotFound);
            }
            Ok(Route::Upload {
                name,
                id: id.to_string(),
            })
        }
        _ => Err(Bad::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(
            parse("/v2/lab/app/tags/list"),
            Ok(Route::Tags {
                name: "lab/app".into()
            })
        );
        assert_eq!(
            parse("/v2/lab/app/manifests/3f2c1e"),
            Ok(Route::Manifest {
                name: "lab/app".into(),
                reference: Reference::Tag("3f2c1e".into())
            })
        );
        assert!(matches!(
            parse(&format!("/v2/lab/app/manifests/{D}")),
            Ok(Route::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
        assert!(
            matches!(parse(&format!("/v2/a/b/c/blobs/{D}")), Ok(Route::Blob { name, .. }) if name == "a/b/c")
        );
        assert_eq!(
            parse("/v2/lab/app/blobs/uploads/"),
            Ok(Route::Uploads {
                name: "lab/app".into()
            })
        );
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse(&format!("/v2/lab/app/blobs/uploads/{id}")),
            Ok(Route::Upload {
                name: "lab/app".into(),
                id: id.into()
            })
        );
        // A name may have a component called like a route word.
        assert!(matches!(
            parse("/v2/lab/manifests/x/manifests/v1"),
            Ok(Route::Manifest { name, .. }) if name == "lab/manifests/x"
        ));
    }

    #[test]
    fn path_tricks_are_bad_names_never_paths() {
        for p in [
            "/v2/../etc/manifests/v1",
            "/v2/lab/../../x/manifests/v1",
            "/v2/lab/%2e%2e/manifests/v1",
            "/v2//lab/manifests/v1",
            "/v2/Lab/manifests/v1",
            "/v2/lab/.x/blobs/uploads/",
            "/v2/lab/app/./tags/list",
        ] {
            assert!(matches!(parse(p), Err(Bad::Name(_))), "{p}: {:?}", parse(p));
        }
        assert!(matches!(parse("/v2/lab/manifests/..%2fx"), Err(Bad::Tag(_))));
        assert!(matches!(
            parse("/v2/lab/blobs/sha256:..%2fx"),
            Err(Bad::Digest(_))
        ));
        assert!(matches!(parse("/v2/lab/blobs/md5:00"), Err(Bad::Digest(_))));
        assert_eq!(parse("/v2/lab/blobs/uploads/../x"), Err(Bad::NotFound));
        assert_eq!(parse("/etc/passwd"), Err(Bad::NotFound));
        assert_eq!(parse("/v2/x"), Err(Bad::NotFound));
    }
}
