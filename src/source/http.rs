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
    request_timeout: Duration,
    /// First `ETag` seen per object (URL without its query, which may be a
    /// fresh presignature each time): a later different one means the object
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
            request_timeout: timeouts.request,
            etags: Mutex::new(HashMap::new()),
        })
    }

    /// Streams `range` of `url` into `sink`, within the request deadline;
    /// what reached the sink before a failure stays there for a resume.
    pub(super) async fn fetch(
        &self,
        url: &Url,
        range: Range<u64>,
        sink: &mut (dyn Sink + Send),
        bearer: Option<&str>,
    ) -> Result<(), StreamError> {
        let request = self.fetch_within(url, range, sink, bearer);
        tokio::time::timeout(self.request_timeout, request)
            .await
            .unwrap_or(Err(SourceError::Deadline(self.request_timeout).into()))
    }

    async fn fetch_within(
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
        check_status(&mut response, &range, self.read_timeout).await?;
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

    /// A small document (an API's answer) at `url`, whole, within the
    /// request deadline; more than `limit` bytes is a fault.
    pub(super) async fn get(
        &self,
        url: &Url,
        bearer: Option<&str>,
        limit: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let got = self.get_if_changed(url, bearer, limit, None).await?;
        Ok(got.body.unwrap_or_default())
    }

    /// As [`Self::get`], unless the document still has the ETag `unless`
    /// (a conditional request: then no body comes).
    pub(super) async fn get_if_changed(
        &self,
        url: &Url,
        bearer: Option<&str>,
        limit: usize,
        unless: Option<&str>,
    ) -> Result<super::Document, SourceError> {
        let request = async {
            let mut request = self.client.get(url.clone());
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            if let Some(etag) = unless {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            let mut response = request
                .send()
                .await
                .map_err(|e| classify(&e, self.read_timeout))?;
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if unless.is_some() && response.status() == reqwest::StatusCode::NOT_MODIFIED {
                return Ok(super::Document { body: None, etag });
            }
            if !response.status().is_success() {
                return Err(refusal(&mut response, self.read_timeout).await);
            }
            let mut body = Vec::new();
            while let Some(piece) = response
                .chunk()
                .await
                .map_err(|e| classify(&e, self.read_timeout))?
            {
                if body.len() + piece.len() > limit {
                    return Err(SourceError::LongBody { want: limit as u64 });
                }
                body.extend_from_slice(&piece);
            }
            Ok(super::Document {
                body: Some(body),
                etag,
            })
        };
        tokio::time::timeout(self.request_timeout, request)
            .await
            .unwrap_or(Err(SourceError::Deadline(self.request_timeout)))
    }

    fn check_etag(&self, url: &Url, response: &Response) -> Result<(), SourceError> {
        let Some(now) = response.headers().get(ETAG).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
        let was = etags
            .entry(
                url.as_str()
                    .split(['?', '#'])
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
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

async fn check_status(
    response: &mut Response,
    range: &Range<u64>,
    read_timeout: Duration,
) -> Result<(), SourceError> {
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
        _ => Err(refusal(response, read_timeout).await),
    }
}

/// What a status other than success means, with the reply's gist.
async fn refusal(response: &mut Response, read_timeout: Duration) -> SourceError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs);
    let reply = reply(response, read_timeout).await;
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => SourceError::NotFound(reply),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Denied {
            reply,
            advice: None,
        },
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            SourceError::Status { reply, retry_after }
        }
        _ if status.is_server_error() => SourceError::Status { reply, retry_after },
        // Other 4xx, or a redirect not followed: asking again won't help.
        _ => SourceError::Rejected(reply),
    }
}

/// Error bodies worth reading are small (S3's XML); anything past this is ignored.
const ERROR_BODY_MAX: usize = 4096;

/// "HTTP 403", plus the S3-style error code of the body when there is one
/// ("HTTP 403 SignatureDoesNotMatch"): it says which of many causes it was.
async fn reply(response: &mut Response, read_timeout: Duration) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_MAX {
        match tokio::time::timeout(read_timeout, response.chunk()).await {
            Ok(Ok(Some(piece))) => body.extend_from_slice(&piece),
            _ => break,
        }
    }
    let status = response.status().as_u16();
    match error_code(&body) {
        Some(code) => format!("HTTP {status} {code}"),
        None => format!("HTTP {status}"),
    }
}

/// The `<Code>` of an S3 error body, if it looks like one (it goes into logs:
/// only short alphanumeric codes are taken).
fn error_code(body: &[u8]) -> Option<&str> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).ok()?,
    };
    let start = text.find("<Code>")? + "<Code>".len();
    let code = &text[start..start + text[start..].find("</Code>")?];
    let plain = (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then_some(code)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3_error_codes_and_nothing_else() {
        let xml =
            b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(error_code(xml), Some("NoSuchKey"));
        assert_eq!(error_code(b"<html>not found</html>"), None);
        assert_eq!(error_code(b"<Code>a b\nc</Code>"), None);
        assert_eq!(error_code(b"<Code>Truncated"), None);
    }
}
