//! Where bytes come from: one small module per URL scheme behind one call,
//! [`Sources::fetch`], which streams a byte range of one object into a sink.
//!
//! A source only moves bytes and classifies failures ([`SourceError`]); retry,
//! failover and verification belong to [`crate::fetch`], which sees sources
//! through the [`Source`] trait so that its logic is tested against a
//! scripted double ([`scripted`]) as well as real servers.

mod file;
mod hf;
mod http;
mod location;
mod s3;
#[cfg(test)]
pub mod scripted;

use std::borrow::Cow;
use std::io;
use std::ops::Range;
use std::time::Duration;

use futures::future::BoxFuture;

pub use location::Location;

/// Timeouts for network sources (`mount --connect-timeout/--read-timeout`).
/// Every request has a deadline so a stalled server can never wedge a reader.
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest silence allowed between two pieces of a response body.
    pub read: Duration,
    /// Longest one ranged request may take in all, so a source that trickles
    /// bytes inside the silence timeout cannot hold a chunk; a retry resumes.
    pub request: Duration,
}

/// Why one attempt to read a range from one source failed. Texts name
/// status codes and S3 error codes, never URLs (they may be presigned).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("not found ({0})")]
    NotFound(String),
    #[error("access denied ({reply}){}", advice.map(|a| format!(": {a}")).unwrap_or_default())]
    Denied {
        reply: String,
        /// What to check, from the scheme that knows its credentials.
        advice: Option<&'static str>,
    },
    #[error("request rejected ({0})")]
    Rejected(String),
    #[error("server error ({reply})")]
    Status {
        reply: String,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out: no data for {0:?}")]
    Timeout(Duration),
    #[error("timed out: the request took longer than {0:?} in all")]
    Deadline(Duration),
    #[error("server ignored the Range header (HTTP 200 for a partial range)")]
    IgnoredRange,
    #[error("server answered range {got:?} for requested {want:?}")]
    WrongRange { want: Range<u64>, got: String },
    #[error("body ended after {got} of {want} bytes")]
    ShortBody { got: u64, want: u64 },
    #[error("body is longer than the {want} bytes requested")]
    LongBody { want: u64 },
    #[error("object changed at the source (ETag {was} became {now})")]
    ObjectChanged { was: String, now: String },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl SourceError {
    /// Whether trying the same source again may help. An answer that
    /// asking again won't change (404, 403, other 4xx) moves on at once.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            SourceError::NotFound(_)
                | SourceError::Denied { .. }
                | SourceError::Rejected(_)
                | SourceError::ObjectChanged { .. }
        )
    }

    /// The delay a server asked for (HTTP 429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a fetch stopped: a fault of the source, or of the local sink (a full
/// disk is not a reason to fail over to another source).
#[derive(Debug)]
pub enum StreamError {
    Source(SourceError),
    Sink(io::Error),
}

impl From<SourceError> for StreamError {
    fn from(e: SourceError) -> Self {
        StreamError::Source(e)
    }
}

/// Receives the bytes of a range in order.
pub trait Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Anything that streams byte ranges of objects into a sink: the real
/// clients ([`Sources`]), or in tests a scripted double.
pub trait Source: Send + Sync {
    /// Streams `range` of the object at `location` into `sink`. On error the
    /// sink may have received a prefix of the range; the caller resumes from there.
    fn fetch<'a>(
        &'a self,
        location: &'a Location,
        range: Range<u64>,
        sink: &'a mut (dyn Sink + Send),
    ) -> BoxFuture<'a, Result<(), StreamError>>;
}

impl Source for Sources {
    fn fetch<'a>(
        &'a self,
        location: &'a Location,
        range: Range<u64>,
        sink: &'a mut (dyn Sink + Send),
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(self.fetch_range(location, range, sink))
    }
}

/// The set of clients for every scheme; cheap to share.
pub struct Sources {
    http: http::HttpSource,
    hub: hf::Hub,
    s3: s3::S3,
}

impl Sources {
    pub fn new(timeouts: Timeouts) -> Result<Self, SourceError> {
        Ok(Sources {
            http: http::HttpSource::new(&timeouts)?,
            hub: hf::Hub::from_env()?,
            s3: s3::S3::from_env()?,
        })
    }

    /// See [`Source::fetch`].
    pub async fn fetch_range(
        &self,
        location: &Location,
        range: Range<u64>,
        sink: &mut (dyn Sink + Send),
    ) -> Result<(), StreamError> {
        let Some((url, bearer, advice)) = self.over_http(location)? else {
            return match location {
                Location::File(path) => file::fetch(path, range, sink).await,
                _ => Err(unrooted().into()),
            };
        };
        self.http
            .fetch(&url, range, sink, bearer)
            .await
            .map_err(|e| match e {
                StreamError::Source(e) => StreamError::Source(advised(e, advice)),
                sink => sink,
            })
    }

    /// The whole object at `location` (a manifest, a signature bundle), at
    /// most `limit` bytes, unless it still has the ETag `unless`.
    pub async fn document(
        &self,
        location: &Location,
        limit: usize,
        unless: Option<&str>,
    ) -> Result<Document, SourceError> {
        let Some((url, bearer, advice)) = self.over_http(location)? else {
            return match location {
                Location::File(path) => file::read_whole(path, limit).await,
                _ => Err(unrooted()),
            };
        };
        self.http
            .get_if_changed(&url, bearer, limit, unless)
            .await
            .map_err(|e| advised(e, advice))
    }

    /// How a remote `location` is asked over HTTP: its URL, the bearer
    /// token to send, and what to say if access is denied; `None` for a
    /// local one.
    fn over_http<'a>(
        &'a self,
        location: &'a Location,
    ) -> Result<Option<OverHttp<'a>>, SourceError> {
        Ok(Some(match location {
            Location::File(_) | Location::LocalUnrooted(_) => return Ok(None),
            Location::Http(url) => (Cow::Borrowed(url), None, None),
            Location::S3 { bucket, key } => (
                Cow::Owned(self.s3.object_url(bucket, key)?),
                None,
                Some(self.s3.denied_advice()),
            ),
            Location::Hf {
                repo,
                revision,
                path,
            } => (
                Cow::Owned(self.hub.resolve_url(repo, revision, path)),
                self.hub.token(),
                Some(self.hub.denied_advice()),
            ),
        }))
    }
}

type OverHttp<'a> = (Cow<'a, reqwest::Url>, Option<&'a str>, Option<&'static str>);

fn unrooted() -> SourceError {
    SourceError::NotFound(
        "local:// needs --local-root (or $MODELFS_LOCAL_ROOT, or $MODELS_ROOT)".into(),
    )
}

/// A document read whole.
#[derive(Debug)]
pub struct Document {
    /// None when it still had the ETag the request named.
    pub body: Option<Vec<u8>>,
    pub etag: Option<String>,
}

/// A Hugging Face repo at one revision, as its API describes it.
#[derive(Debug, serde::Deserialize)]
pub struct HubRepo {
    /// The commit the revision names.
    pub sha: String,
    pub siblings: Vec<HubFile>,
}

#[derive(Debug, serde::Deserialize)]
pub struct HubFile {
    pub rfilename: String,
    pub size: Option<u64>,
    /// Set for files stored in LFS (the large ones): their sha256.
    pub lfs: Option<HubLfs>,
}

#[derive(Debug, serde::Deserialize)]
pub struct HubLfs {
    pub sha256: String,
    pub size: u64,
}

/// An API answer larger than this is not one.
const HUB_API_MAX: usize = 16 << 20;

impl Sources {
    /// What the hub (`$HF_ENDPOINT`, `$HF_TOKEN`) says `repo` holds at `revision`.
    pub async fn hub_repo(&self, repo: &str, revision: &str) -> Result<HubRepo, SourceError> {
        let url = self.hub.api_url(repo, revision);
        let body = self
            .http
            .get(&url, self.hub.token(), HUB_API_MAX)
            .await
            .map_err(|e| advised(e, Some(self.hub.denied_advice())))?;
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::Request(format!("the hub's answer for {repo}: {e}")))
    }
}

/// Adds what to check to an access-denied answer; the scheme knows its credentials.
fn advised(e: SourceError, advice: Option<&'static str>) -> SourceError {
    match e {
        SourceError::Denied { reply, .. } if advice.is_some() => {
            SourceError::Denied { reply, advice }
        }
        other => other,
    }
}
