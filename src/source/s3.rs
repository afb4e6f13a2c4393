//! `s3://bucket/prefix`: ranged `GetObject` over the shared HTTP client.
//! Requests are presigned (SigV4, query string) with rusty-s3 when there are
//! keys (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, else the profile's
//! in the shared AWS files), and unsigned otherwise. A custom endpoint
//! (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`)
//! is addressed path-style, which every S3-compatible store understands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use rusty_s3::actions::{GetObject, S3Action as _};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::SourceError;

/// How long a presigned URL stays valid; it is made for one request, so
/// this only needs to cover a slow transfer's start.
const PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);

pub(super) struct S3 {
    endpoint: Url,
    style: UrlStyle,
    region: String,
    credentials: Option<Credentials>,
}

impl S3 {
    /// Reads the standard AWS environment variables, then the profile
    /// (`AWS_PROFILE`, default `default`) of the shared files.
    pub(super) fn from_env() -> Result<S3, SourceError> {
        Self::from_vars(
            |k| std::env::var(k).ok(),
            |p| std::fs::read_to_string(p).ok(),
        )
    }

    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<S3, SourceError> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let profile = profile(var, read);
        let from_profile = |k: &str| profile.get(k).filter(|v| !v.is_empty()).cloned();
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| from_profile("endpoint_url"));
        let (endpoint, style) = match custom {
            Some(text) => {
                let url = Url::parse(&text)
                    .map_err(|e| SourceError::Request(format!("AWS_ENDPOINT_URL {text:?}: {e}")))?;
                (url, UrlStyle::Path)
            }
            None => (
                Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                    .map_err(|e| SourceError::Request(format!("AWS_REGION {region:?}: {e}")))?,
                UrlStyle::VirtualHost,
            ),
        };
        let keys = |id: Option<String>, secret: Option<String>, token: Option<String>| {
            let (id, secret) = (id?, secret?);
            Some(match token {
                Some(token) => Credentials::new_with_token(id, secret, token),
                None => Credentials::new(id, secret),
            })
        };
        let credentials = keys(
            var("AWS_ACCESS_KEY_ID"),
            var("AWS_SECRET_ACCESS_KEY"),
            var("AWS_SESSION_TOKEN"),
        )
        .or_else(|| {
            keys(
                from_profile("aws_access_key_id"),
                from_profile("aws_secret_access_key"),
                from_profile("aws_session_token"),
            )
        });
        Ok(S3 {
            endpoint,
            style,
            region,
            credentials,
        })
    }

    /// The URL of one `GetObject`, presigned when there are credentials. It
    /// carries a signature: never log it (the HTTP layer logs no URLs).
    pub(super) fn object_url(&self, bucket: &str, key: &str) -> Result<Url, SourceError> {
        // Bucket names with dots don't fit AWS's TLS certificates as a host label.
        let style = match self.style {
            UrlStyle::VirtualHost if bucket.contains('.') => UrlStyle::Path,
            style => style,
        };
        let bucket = Bucket::new(
            self.endpoint.clone(),
            style,
            bucket.to_owned(),
            self.region.clone(),
        )
        .map_err(|e| SourceError::Request(format!("bucket {bucket:?}: {e:?}")))?;
        Ok(GetObject::new(&bucket, self.credentials.as_ref(), key).sign(PRESIGN_TTL))
    }

    /// What a 401/403 means here: which credentials were (or were not) used.
    pub(super) fn denied_advice(&self) -> &'static str {
        if self.credentials.is_some() {
            "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and the bucket's policy"
        } else {
            "the request was unsigned: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        }
    }
}

/// The settings of one profile of the shared AWS files: `~/.aws/config`
/// (`AWS_CONFIG_FILE`; section `[profile NAME]`, or `[default]`), then
/// `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`; section `[NAME]`),
/// which wins. Keys are lower-cased; nested (indented) settings are skipped.
fn profile(
    var: impl Fn(&str) -> Option<String>,
    read: impl Fn(&Path) -> Option<String>,
) -> HashMap<String, String> {
    let name = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let file = |env: &str, rel: &str| {
        var(env)
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(rel)))
            .and_then(|p| read(&p))
    };
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    let mut values = HashMap::new();
    for (text, section) in [
        (file("AWS_CONFIG_FILE", ".aws/config"), config_section),
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            name,
        ),
    ] {
        values.extend(text.map(|t| ini_section(&t, &section)).unwrap_or_default());
    }
    values
}

fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_lowercase(), v.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(vars: &[(&str, &str)]) -> S3 {
        with_files(vars, &[])
    }

    /// `files` are (path, text) pairs standing in for the file system.
    fn with_files(vars: &[(&str, &str)], files: &[(&str, &str)]) -> S3 {
        let find = |pairs: &[(&str, &str)], k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        S3::from_vars(|k| find(vars, k), |p| find(files, p.to_str().unwrap())).unwrap()
    }

    #[test]
    fn the_profile_in_the_shared_files_fills_in_what_the_environment_leaves_out() {
        let config = "[default]\nregion = eu-west-1\n\n[profile lab]\nregion = eu-north-1\n\
                      endpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\n";
        let credentials = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s\n\
                           # a comment\n[lab]\nAWS_ACCESS_KEY_ID = AKIDLAB\naws_secret_access_key = t\n";
        let files = [
            ("/home/u/.aws/config", config),
            ("/home/u/.aws/credentials", credentials),
        ];
        let lab = with_files(&[("HOME", "/home/u"), ("AWS_PROFILE", "lab")], &files);
        assert_eq!(lab.region, "eu-north-1");
        assert_eq!(lab.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(lab.credentials.as_ref().unwrap().key(), "AKIDLAB");

        let default = with_files(&[("HOME", "/home/u")], &files);
        assert_eq!(default.region, "eu-west-1");
        assert_eq!(default.credentials.as_ref().unwrap().key(), "AKIDDEFAULT");

        // The environment wins, as in the AWS SDKs.
        let env = with_files(
            &[
                ("HOME", "/home/u"),
                ("AWS_REGION", "us-west-2"),
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "u"),
            ],
            &files,
        );
        assert_eq!(env.region, "us-west-2");
        assert_eq!(env.credentials.as_ref().unwrap().key(), "AKIDENV");
        assert!(
            with_files(&[], &files).credentials.is_none(),
            "no HOME, no files"
        );
    }

    #[test]
    fn custom_endpoint_is_path_style_and_unsigned_without_keys() {
        let s3 = s3(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")]);
        let url = s3.object_url("models", "tiny/a b.bin").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/models/tiny/a%20b.bin");
    }

    #[test]
    fn s3_specific_endpoint_wins_and_keys_sign() {
        let s3 = s3(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000/"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let url = s3.object_url("models", "w.bin").unwrap();
        assert!(
            url.as_str()
                .starts_with("http://127.0.0.1:9000/models/w.bin?")
        );
        let query: Vec<_> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        assert!(query.contains(&"X-Amz-Signature".to_owned()), "{query:?}");
        let credential = url
            .query_pairs()
            .find(|(k, _)| k == "X-Amz-Credential")
            .unwrap()
            .1;
        assert!(credential.contains("/eu-west-1/s3/aws4_request"));
    }

    #[test]
    fn aws_is_virtual_hosted_unless_the_bucket_has_dots() {
        let s3 = s3(&[("AWS_DEFAULT_REGION", "us-west-2")]);
        assert_eq!(
            s3.object_url("models", "k").unwrap().as_str(),
            "https://models.s3.us-west-2.amazonaws.com/k"
        );
        assert_eq!(
            s3.object_url("my.models", "k").unwrap().as_str(),
            "https://s3.us-west-2.amazonaws.com/my.models/k"
        );
    }
}
