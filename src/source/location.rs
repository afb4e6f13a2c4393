//! Source URLs from the manifest, parsed once, joined with file paths, and
//! displayed without secrets (no user info, no query string).

use std::fmt;
use std::path::PathBuf;

use reqwest::Url;

/// The location of one object (or, for a model's sources, of a base to join
/// a file's path onto).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Http(Url),
    S3 {
        bucket: String,
        key: String,
    },
    Hf {
        repo: String,
        revision: String,
        path: String,
    },
    /// The orchestrator's `local://REL` when no local root was given: kept,
    /// so the manifest stays valid, and failed over at once when fetched.
    LocalUnrooted(String),
}

impl Location {
    /// Parses `file:///abs`, `http(s)://...`, `s3://bucket/prefix` or
    /// `hf://owner/repo[@revision][/path]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not a URL (expected scheme://...)"))?;
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(format!(
                        "{text:?}: a file URL needs an absolute path (file:///dir)"
                    ));
                }
                Ok(Location::File(PathBuf::from(rest)))
            }
            "http" | "https" => {
                let url = Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{text:?}: no host"));
                }
                Ok(Location::Http(url))
            }
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("{text:?}: no bucket (expected s3://bucket/prefix)"));
                }
                Ok(Location::S3 {
                    bucket: bucket.to_owned(),
                    key: key.trim_matches('/').to_owned(),
                })
            }
            "hf" => {
                let mut parts = rest.splitn(3, '/');
                let owner = parts.next().unwrap_or_default();
                let repo_rev = parts.next().unwrap_or_default();
                let path = parts.next().unwrap_or_default().trim_matches('/');
                let (repo, revision) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
                if owner.is_empty() || repo.is_empty() || revision.is_empty() {
                    return Err(format!("{text:?}: expected hf://owner/repo[@revision]"));
                }
                Ok(Location::Hf {
                    repo: format!("{owner}/{repo}"),
                    revision: revision.to_owned(),
                    path: path.to_owned(),
                })
            }
            // Only the orchestrator's format has these; a root, when given,
            // has already made them file:// URLs.
            "local" => Ok(Location::LocalUnrooted(rest.trim_matches('/').to_owned())),
            other => Err(format!(
                "unknown scheme {other:?} in {text:?} (use file, http, https, s3 or hf)"
            )),
        }
    }

    /// The location of `rel` (a validated relative '/'-separated path) under this base.
    pub fn join(&self, rel: &str) -> Location {
        let join_key = |base: &str| {
            if base.is_empty() {
                rel.to_owned()
            } else {
                format!("{base}/{rel}")
            }
        };
        match self {
            Location::File(dir) => Location::File(dir.join(rel)),
            Location::Http(base) => {
                let mut url = base.clone();
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.pop_if_empty().extend(rel.split('/'));
                }
                Location::Http(url)
            }
            Location::S3 { bucket, key } => Location::S3 {
                bucket: bucket.clone(),
                key: join_key(key),
            },
            Location::Hf {
                repo,
                revision,
                path,
            } => Location::Hf {
                repo: repo.clone(),
                revision: revision.clone(),
                path: join_key(path),
            },
            Location::LocalUnrooted(base) => Location::LocalUnrooted(join_key(base)),
        }
    }
}

impl Location {
    /// Where a location's bytes come from, as a metric label and a key for
    /// source health: scheme and host (or bucket, or repo), no path.
    pub fn origin(&self) -> String {
        match self {
            Location::File(_) => "file".into(),
            Location::Http(url) => {
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or(""))
            }
            Location::S3 { bucket, .. } => format!("s3://{bucket}"),
            Location::Hf { repo, .. } => format!("hf://{repo}"),
            Location::LocalUnrooted(_) => "local".into(),
        }
    }
}

/// Safe for logs and metric labels: presigned query strings and credentials
/// in URLs are left out.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "file://{}", path.display()),
            Location::LocalUnrooted(rel) => write!(f, "local://{rel}"),
            Location::Http(url) => {
                write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or(""))?;
                if let Some(port) = url.port() {
                    write!(f, ":{port}")?;
                }
                f.write_str(url.path())
            }
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Hf {
                repo,
                revision,
                path,
            } => write!(f, "hf://{repo}@{revision}/{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_per_scheme() {
        let http = Location::parse("http://127.0.0.1:8080/m/").unwrap();
        assert_eq!(
            http.join("a b/c.bin").to_string(),
            "http://127.0.0.1:8080/m/a%20b/c.bin"
        );
        let file = Location::parse("file:///srv/m").unwrap();
        assert_eq!(file.join("x/y"), Location::File("/srv/m/x/y".into()));
        let s3 = Location::parse("s3://bucket/pre/").unwrap();
        assert_eq!(s3.join("f").to_string(), "s3://bucket/pre/f");
        let hf = Location::parse("hf://org/repo@v1").unwrap();
        assert_eq!(hf.join("w.bin").to_string(), "hf://org/repo@v1/w.bin");
        let hf_default = Location::parse("hf://org/repo").unwrap();
        assert_eq!(
            hf_default.join("w.bin").to_string(),
            "hf://org/repo@main/w.bin"
        );
    }

    #[test]
    fn display_hides_secrets() {
        let loc = Location::parse("https://user:pw@host/f?X-Amz-Signature=abc").unwrap();
        assert_eq!(loc.to_string(), "https://host/f");
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(
            Location::parse("ftp://x/y")
                .unwrap_err()
                .contains("unknown scheme")
        );
        assert!(
            Location::parse("file://rel/dir")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            Location::parse("hf://onlyowner")
                .unwrap_err()
                .contains("owner/repo")
        );
        assert!(
            Location::parse("/just/a/path")
                .unwrap_err()
                .contains("not a URL")
        );
    }
}
