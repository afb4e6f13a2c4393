//! `hf://owner/repo[@revision]`: the Hugging Face hub's `resolve` URLs under
//! `HF_ENDPOINT` (default the public hub), with `Authorization: Bearer
//! $HF_TOKEN` when set. The hub redirects to a CDN; the HTTP client drops the
//! token on any redirect to another host, port or scheme.

use reqwest::Url;

use super::SourceError;

pub(super) struct Hub {
    endpoint: Url,
    token: Option<String>,
}

impl Hub {
    /// Reads `HF_ENDPOINT` and `HF_TOKEN`.
    pub(super) fn from_env() -> Result<Hub, SourceError> {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        let endpoint = Url::parse(&endpoint)
            .map_err(|e| SourceError::Request(format!("HF_ENDPOINT {endpoint:?}: {e}")))?;
        Ok(Hub {
            endpoint,
            token: var("HF_TOKEN"),
        })
    }

    /// `ENDPOINT/owner/repo/resolve/REVISION/path`, each segment escaped.
    pub(super) fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(repo.split('/'))
                .push("resolve")
                .push(revision)
                .extend(path.split('/'));
        }
        url
    }

    /// `ENDPOINT/api/models/owner/repo/revision/REVISION?blobs=true`: the
    /// repo's files at a revision, with sizes and LFS hashes.
    pub(super) fn api_url(&self, repo: &str, revision: &str) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["api", "models"])
                .extend(repo.split('/'))
                .push("revision")
                .push(revision);
        }
        url.set_query(Some("blobs=true"));
        url
    }

    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// What a 401/403 from the hub means.
    pub(super) fn denied_advice(&self) -> &'static str {
        if self.token.is_some() {
            "HF_TOKEN was sent but has no access to this repo"
        } else {
            "set HF_TOKEN to a token with access to this repo"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_resolve_urls() {
        let hub = Hub {
            endpoint: Url::parse("http://127.0.0.1:9/mirror/").unwrap(),
            token: None,
        };
        assert_eq!(
            hub.resolve_url("org/repo", "v1.0", "sub dir/w.bin")
                .as_str(),
            "http://127.0.0.1:9/mirror/org/repo/resolve/v1.0/sub%20dir/w.bin"
        );
    }
}
