//! `http://` and `https://`: ranged `GET`s through one pooled client.
//!
//! A source that answers with the wrong bytes is a fault of that source: a
//! `200` for a partial range, a `Content-Range` other than the one asked for,
//! a short or over-long body, or an `ETag` that changes between requests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, ETAG, RANGE, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode, Url};

use super::{Sink, SourceError, StreamError, Timeouts};

pub(super) struct HttpSource {
    client: Client,
    read_timeout: Duration,
    /// First `ETag` seen per URL: a later different one means the object
    /// changed under us, and its chunks would not fit together.
    etags: Mutex<HashMap<String, String>>,
}

impl HttpSource {
    pub(super) fn new(timeouts: &Timeouts) -> Result<Self, SourceError> {
        // ring keeps the build free of aws-lc's C toolchain; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .connect_timeout(timeouts.connect)
            .user_agent(concat!("modelfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Request(describe(&e)))?;
        Ok(HttpSource {
            client,
            read_timeout: timeouts.read,
            etags: Mutex::new(HashMap::new()),
        })
    }

    pub(super) async fn fetch(
        &self,
        url: &Url,
        range: Range<u64>,
        sink: &mut (dyn Sink + Send),
        bearer: Option<&str>,
    ) -> Result<(), StreamError> {
        let want = range.end - range.start;
        let mut request = self
            .client
            .get(url.clone())
            .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(token) = bearer {
            // Dropped by the client on a redirect to another host, port or scheme.
            request = request.bearer_auth(token);
        }
        let mut response = tokio::time::timeout(self.read_timeout, request.send())
            .await
            .map_err(|_| SourceError::Timeout(self.read_timeout))?
            .map_err(|e| classify(&e, self.read_timeout))?;
        check_status(&response, &range)?;
        self.check_etag(url, &response)?;

        let mut got = 0u64;
        loop {
            let piece = tokio::time::timeout(self.read_timeout, response.chunk())
                .await
                .map_err(|_| SourceError::Timeout(self.read_timeout))?
                .map_err(|e| classify(&e, self.read_timeout))?;
            let Some(piece) = piece else { break };
            let room = (want - got) as usize;
            if piece.len() > room {
                sink.write(&piece[..room]).map_err(StreamError::Sink)?;
                return Err(SourceError::LongBody { want }.into());
            }
            sink.write(&piece).map_err(StreamError::Sink)?;
            got += piece.len() as u64;
        }
        if got < want {
            return Err(SourceError::ShortBody { got, want }.into());
        }
        Ok(())
    }

    fn check_etag(&self, url: &Url, response: &Response) -> Result<(), SourceError> {
        let Some(now) = response.headers().get(ETAG).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
        let was = etags
            .entry(url.as_str().to_owned())
            .or_insert_with(|| now.to_owned());
        if was != now {
            return Err(SourceError::ObjectChanged {
                was: was.clone(),
                now: now.to_owned(),
            });
        }
        Ok(())
    }
}

fn check_status(response: &Response, range: &Range<u64>) -> Result<(), SourceError> {
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let got = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let expected = format!("bytes {}-{}/", range.start, range.end - 1);
            if got.starts_with(&expected) {
                Ok(())
            } else {
                Err(SourceError::WrongRange {
                    want: range.clone(),
                    got: got.to_owned(),
                })
            }
        }
        // A whole-object answer is only right when the whole object was asked for.
        StatusCode::OK if range.start == 0 && response.content_length() == Some(range.end) => {
            Ok(())
        }
        StatusCode::OK => Err(SourceError::IgnoredRange),
        StatusCode::NOT_FOUND | StatusCode::GONE => Err(SourceError::NotFound(status.as_u16())),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(SourceError::Denied(status.as_u16()))
        }
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
            Err(SourceError::Status {
                status: status.as_u16(),
                retry_after: response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
            })
        }
        _ => Err(SourceError::Request(format!("unexpected HTTP {status}"))),
    }
}

fn classify(error: &reqwest::Error, read_timeout: Duration) -> SourceError {
    if error.is_timeout() {
        SourceError::Timeout(read_timeout)
    } else {
        SourceError::Request(describe(error))
    }
}

/// The error and its causes, without the URL (it may carry a presigned query).
fn describe(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        let part = e.to_string();
        // reqwest prints "... for url (http://...)"; keep the words, drop the URL.
        text.push_str(part.split(" for url (").next().unwrap_or(&part));
        next = e.source();
    }
    text
}
