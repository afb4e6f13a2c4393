//! Where bytes come from: one small module per URL scheme behind one call,
//! [`Sources::fetch`], which streams a byte range of one object into a sink.
//!
//! A source only moves bytes and classifies failures ([`SourceError`]); retry,
//! failover and verification belong to [`crate::fetch`].

mod file;
mod hf;
mod http;
mod location;

use std::io;
use std::ops::Range;
use std::time::Duration;

pub use location::Location;

/// Timeouts for network sources (`mount --connect-timeout/--read-timeout`).
/// Every request has a deadline so a stalled server can never wedge a reader.
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest silence allowed between two pieces of a response body.
    pub read: Duration,
}

/// Why one attempt to read a range from one source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("not found (HTTP {0})")]
    NotFound(u16),
    #[error("access denied (HTTP {0})")]
    Denied(u16),
    #[error("{}", hub_denied(*status, *token_sent))]
    HubDenied { status: u16, token_sent: bool },
    #[error("server error (HTTP {status})")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out: no data for {0:?}")]
    Timeout(Duration),
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
    #[error("{0} sources are not supported yet")]
    Unsupported(&'static str),
}

impl SourceError {
    /// Whether trying the same source again may help. A 404, 403 or an
    /// unsupported scheme moves on to the next source at once.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            SourceError::NotFound(_)
                | SourceError::Denied(_)
                | SourceError::HubDenied { .. }
                | SourceError::Unsupported(_)
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

fn hub_denied(status: u16, token_sent: bool) -> String {
    if token_sent {
        format!(
            "Hugging Face denied access (HTTP {status}): HF_TOKEN was sent but has no access to this repo"
        )
    } else {
        format!(
            "Hugging Face denied access (HTTP {status}): set HF_TOKEN to a token with access to this repo"
        )
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

/// The set of clients for every scheme; cheap to share.
pub struct Sources {
    http: http::HttpSource,
    hub: hf::Hub,
}

impl Sources {
    pub fn new(timeouts: Timeouts) -> Result<Self, SourceError> {
        Ok(Sources {
            http: http::HttpSource::new(&timeouts)?,
            hub: hf::Hub::from_env()?,
        })
    }

    /// Streams `range` of the object at `location` into `sink`. On error the
    /// sink may have received a prefix of the range; the caller resumes from there.
    pub async fn fetch(
        &self,
        location: &Location,
        range: Range<u64>,
        sink: &mut (dyn Sink + Send),
    ) -> Result<(), StreamError> {
        match location {
            Location::File(path) => file::fetch(path, range, sink).await,
            Location::Http(url) => self.http.fetch(url, range, sink, None).await,
            Location::S3 { .. } => Err(SourceError::Unsupported("s3").into()),
            Location::Hf {
                repo,
                revision,
                path,
            } => {
                let url = self.hub.resolve_url(repo, revision, path);
                match self.http.fetch(&url, range, sink, self.hub.token()).await {
                    Err(StreamError::Source(e)) => Err(StreamError::Source(self.hub.explain(e))),
                    other => other,
                }
            }
        }
    }
}
