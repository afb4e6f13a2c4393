//! `s3://bucket/prefix`: ranged `GetObject` over the shared HTTP client.
//! Requests are presigned (SigV4, query string) with rusty-s3 when
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` are set, and unsigned
//! otherwise. A custom endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`)
//! is addressed path-style, which every S3-compatible store understands.

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
    /// Reads the standard AWS environment variables.
    pub(super) fn from_env() -> Result<S3, SourceError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<S3, SourceError> {
        let var = |k| var(k).filter(|v: &String| !v.trim().is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
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
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => Some(match var("AWS_SESSION_TOKEN") {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }),
            _ => None,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(vars: &[(&str, &str)]) -> S3 {
        S3::from_vars(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
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
