//! The fetch logic against a scripted source, with tokio's clock paused:
//! single flight, resume, retry, failover and the whole-file path, each
//! proven from the requests the source saw. No network, no mount, no
//! waiting on real time.

use std::sync::Arc;

use super::*;
use crate::metrics::Metrics;
use crate::source::scripted::{Fault, Scripted};
use crate::source::{Sink, StreamError};

const CHUNK: usize = 65536;

/// 4 chunks and a bit: the last chunk is short.
fn data() -> Vec<u8> {
    data_of(4 * CHUNK + 1000)
}

fn data_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A one-file manifest with two sources, a and b; chunk hashes optional.
fn manifest(data: &[u8], chunk_hashes: bool) -> Arc<Manifest> {
    let chunks = if chunk_hashes {
        let list: Vec<String> = data
            .chunks(CHUNK)
            .map(|c| format!("\"{}\"", Digest::of(c)))
            .collect();
        format!("chunks = [{}]\n", list.join(", "))
    } else {
        String::new()
    };
    let text = format!(
        "version = 1\n[[model]]\nid = \"m\"\n\
         sources = [\"http://127.0.0.1:1/a\", \"http://127.0.0.1:2/b\"]\n\
         [[model.file]]\npath = \"w.bin\"\nsize = {}\nsha256 = \"{}\"\nchunk_size = {CHUNK}\n{chunks}",
        data.len(),
        Digest::of(data),
    );
    Arc::new(Manifest::parse("t.toml".as_ref(), &text).unwrap())
}

struct Setup {
    _dir: tempfile::TempDir,
    fetcher: Fetcher,
    target: Target,
    blob: Arc<Blob>,
    source: Arc<Scripted>,
    data: Vec<u8>,
    /// The file's two locations, a and b.
    locations: Vec<Location>,
}

impl Setup {
    /// `script` scripts the source, given the file's two locations (a, b).
    fn new(
        chunk_hashes: bool,
        script: impl FnOnce(Scripted, &Location, &Location) -> Scripted,
    ) -> Setup {
        Setup::with_data(data(), chunk_hashes, script)
    }

    fn with_data(
        data: Vec<u8>,
        chunk_hashes: bool,
        script: impl FnOnce(Scripted, &Location, &Location) -> Scripted,
    ) -> Setup {
        let manifest = manifest(&data, chunk_hashes);
        let target = Target::of(&manifest, 0, 0);
        let locations = target.locations();
        let (a, b) = (&locations[0], &locations[1]);
        let source = Arc::new(script(Scripted::new(&[a, b], &data), a, b));
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(dir.path()).unwrap());
        let blob = cache.open_blob(target.entry()).unwrap();
        let fetcher = Fetcher::new(
            cache,
            Shared(Arc::clone(&source)),
            RetryPolicy::default(),
            Arc::new(Metrics::new()),
        );
        Setup {
            _dir: dir,
            fetcher,
            target,
            blob,
            source,
            data,
            locations,
        }
    }

    fn a(&self) -> &Location {
        &self.locations[0]
    }

    fn b(&self) -> &Location {
        &self.locations[1]
    }

    fn metric(&self, series: &str) -> u64 {
        let text = self.fetcher.metrics().encode(0);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The blob's bytes of chunk `index` equal the file's.
    fn assert_chunk_right(&self, index: usize) {
        assert!(self.blob.has_chunk(index as u64));
        let want = &self.data[index * CHUNK..((index + 1) * CHUNK).min(self.data.len())];
        let mut got = Vec::new();
        let at = (index * CHUNK) as u64;
        self.blob
            .read_into(&mut got, at, at + want.len() as u64)
            .unwrap();
        assert!(got == want, "chunk {index} holds other bytes");
    }
}

/// The fetcher owns its source; the test keeps a handle to read its log.
struct Shared(Arc<Scripted>);

impl Source for Shared {
    fn fetch<'a>(
        &'a self,
        location: &'a Location,
        range: Range<u64>,
        sink: &'a mut (dyn Sink + Send),
    ) -> futures::future::BoxFuture<'a, Result<(), StreamError>> {
        self.0.fetch(location, range, sink)
    }
}

fn chunk_range(index: usize, len: usize) -> Range<u64> {
    (index * CHUNK) as u64..((index + 1) * CHUNK).min(len) as u64
}

#[tokio::test(start_paused = true)]
async fn many_readers_of_one_chunk_cause_one_request() {
    let s = Setup::new(true, |src, _, _| src);
    let reads = (0..8).map(|_| s.fetcher.ensure_chunk(&s.target, &s.blob, 2));
    for r in join_all(reads).await {
        r.unwrap();
    }
    assert_eq!(s.source.requests(s.a()), [chunk_range(2, s.data.len())]);
    s.assert_chunk_right(2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_short_resumes_after_the_bytes_received() {
    let s = Setup::new(true, |src, a, _| src.queue(a, &[Fault::CutAfter(10_000)]));
    s.fetcher.ensure_chunk(&s.target, &s.blob, 1).await.unwrap();
    let whole = chunk_range(1, s.data.len());
    assert_eq!(
        s.source.requests(s.a()),
        [whole.clone(), whole.start + 10_000..whole.end]
    );
    s.assert_chunk_right(1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_backoff_on_the_same_source() {
    let s = Setup::new(true, |src, a, _| {
        src.queue(a, &[Fault::Unavailable, Fault::Unavailable])
    });
    let started = tokio::time::Instant::now();
    s.fetcher.ensure_chunk(&s.target, &s.blob, 0).await.unwrap();
    assert_eq!(s.source.requests(s.a()).len(), 3);
    assert!(s.source.requests(s.b()).is_empty(), "no failover");
    // Two backoffs of at least half the base delay each (paused clock).
    assert!(started.elapsed() >= RetryPolicy::default().base_delay);
    s.assert_chunk_right(0);
}

#[tokio::test(start_paused = true)]
async fn not_found_fails_over_at_once() {
    let s = Setup::new(true, |src, a, _| src.always(a, Fault::NotFound));
    s.fetcher.ensure_chunk(&s.target, &s.blob, 3).await.unwrap();
    assert_eq!(s.source.requests(s.a()).len(), 1, "404 is not retried");
    assert_eq!(s.source.requests(s.b()).len(), 1);
    assert_eq!(s.metric("modelfs_source_failovers_total"), 1);
    s.assert_chunk_right(3);
}

#[tokio::test(start_paused = true)]
async fn corrupt_bytes_are_never_marked_and_the_next_source_serves() {
    let s = Setup::new(true, |src, a, _| src.always(a, Fault::Corrupt));
    s.fetcher.ensure_chunk(&s.target, &s.blob, 4).await.unwrap();
    assert_eq!(s.metric("modelfs_chunk_verify_failures_total"), 1);
    assert_eq!(s.source.requests(s.b()).len(), 1);
    s.assert_chunk_right(4);
}

#[tokio::test(start_paused = true)]
async fn when_every_source_fails_the_error_names_each() {
    let s = Setup::new(true, |src, a, b| {
        src.always(a, Fault::NotFound).always(b, Fault::Unavailable)
    });
    let err = s
        .fetcher
        .ensure_chunk(&s.target, &s.blob, 0)
        .await
        .unwrap_err();
    let FetchError::AllSourcesFailed { attempts, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(attempts.len(), 2, "{err}");
    assert!(err.to_string().contains("127.0.0.1:1") && err.to_string().contains("503"));
    assert!(!s.blob.has_chunk(0));
    // 1 request to a (404), 3 to b (503, retried).
    assert_eq!(s.source.requests(s.a()).len(), 1);
    assert_eq!(
        s.source.requests(s.b()).len(),
        RetryPolicy::default().attempts as usize
    );
}

#[tokio::test(start_paused = true)]
async fn a_file_without_chunk_hashes_is_verified_whole_then_fetched_again_elsewhere() {
    // a corrupts one part: the whole-file hash fails, and the next round
    // starts from b.
    let s = Setup::new(false, |src, a, _| src.queue(a, &[Fault::Corrupt]));
    assert!(!s.blob.is_complete());
    s.fetcher
        .ensure_whole(&s.target, &s.blob, Urgency::Demand)
        .await
        .unwrap();
    assert!(s.blob.is_complete());
    assert_eq!(s.metric("modelfs_chunk_verify_failures_total"), 1);
    let parts = s.data.len().div_ceil(CHUNK);
    assert_eq!(s.source.requests(s.a()).len(), parts, "round 1: all from a");
    assert!(
        !s.source.requests(s.b()).is_empty(),
        "round 2 starts from b"
    );
    let mut got = Vec::new();
    s.blob.read_into(&mut got, 0, s.data.len() as u64).unwrap();
    assert!(got == s.data);
}

#[tokio::test(start_paused = true)]
async fn each_whole_file_round_starts_from_another_source_even_after_a_demotion() {
    // Round 1: a corrupts one part and fails the others until it is
    // demoted. Round 2 must start from b, not from a rotated back to first.
    let s = Setup::new(false, |src, a, _| {
        src.queue(a, &[Fault::Corrupt])
            .queue(a, &vec![Fault::Unavailable; 12])
            .always(a, Fault::Corrupt)
    });
    s.fetcher
        .ensure_whole(&s.target, &s.blob, Urgency::Demand)
        .await
        .unwrap();
    assert!(s.blob.is_complete());
    let mut got = Vec::new();
    s.blob.read_into(&mut got, 0, s.data.len() as u64).unwrap();
    assert!(got == s.data);
}

#[tokio::test(start_paused = true)]
async fn an_uncached_chunk_is_verified_in_memory_and_kept_for_the_next_requests() {
    let s = Setup::new(true, |src, a, _| src.always(a, Fault::Corrupt));
    let reads = (0..3).map(|_| s.fetcher.fetch_uncached(&s.target, &s.blob, 2));
    for bytes in join_all(reads).await {
        assert!(
            *bytes.unwrap() == s.data[2 * CHUNK..3 * CHUNK],
            "verified bytes"
        );
    }
    // The kernel asks for one chunk in several requests: one fetch serves all.
    s.fetcher
        .fetch_uncached(&s.target, &s.blob, 2)
        .await
        .unwrap();
    assert_eq!(
        s.source.requests(s.a()).len(),
        1,
        "corrupt, so never served"
    );
    assert_eq!(s.source.requests(s.b()).len(), 1);
    assert!(!s.blob.has_chunk(2), "nothing stored");
    assert_eq!(s.metric("modelfs_uncached_bytes_total"), CHUNK as u64);
}

#[tokio::test(start_paused = true)]
async fn a_whole_file_the_cache_cannot_hold_is_verified_and_served_from_memory() {
    let s = Setup::new(false, |src, a, _| src.queue(a, &[Fault::Corrupt]));
    let full = FetchError::CacheFull {
        target: s.target.to_string(),
        source: Arc::new(io::Error::from(io::ErrorKind::StorageFull)),
    };
    let bytes = s
        .fetcher
        .fetch_whole_uncached(&s.target, &s.blob, full)
        .await
        .unwrap();
    assert!(
        *bytes == s.data[..],
        "verified whole, after a corrupt round"
    );
    assert!(!s.blob.is_complete(), "nothing stored");
    assert_eq!(s.metric("modelfs_chunk_verify_failures_total"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_run_of_chunks_is_one_request_and_a_cut_resumes_inside_it() {
    let cut = 2 * CHUNK as u64 + 5000;
    let s = Setup::new(true, |src, a, _| src.queue(a, &[Fault::CutAfter(cut)]));
    let all = 0..s.blob.chunk_count();
    s.fetcher
        .fill(&s.target, &s.blob, all.clone(), None)
        .await
        .unwrap();
    let len = s.data.len() as u64;
    assert_eq!(s.source.requests(s.a()), [0..len, cut..len]);
    all.for_each(|c| s.assert_chunk_right(c as usize));
    assert!(s.source.requests(s.b()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_chunk_left_half_written_by_a_killed_fetch_resumes_after_its_recorded_bytes() {
    let s = Setup::new(true, |src, _, _| src);
    // As a killed process leaves it: 10,000 bytes of chunk 1 written, and
    // progress recorded in whole units.
    let start = CHUNK as u64;
    s.blob
        .write_at(&s.data[CHUNK..CHUNK + 10_000], start)
        .unwrap();
    s.blob.record_progress(1, 10_000);
    s.fetcher.ensure_chunk(&s.target, &s.blob, 1).await.unwrap();
    let unit = crate::cache::chunk_map::PROGRESS_UNIT;
    let resumed_at = start + 10_000 / unit * unit;
    let asked = s.source.requests(s.a());
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0], resumed_at..start + CHUNK as u64);
    s.assert_chunk_right(1);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_chunk_whose_start_on_disk_is_bad_is_fetched_whole_from_the_same_source() {
    let s = Setup::new(true, |src, _, _| src);
    // Progress that ran ahead of its data (a power loss): zeros on disk.
    s.blob.record_progress(2, 8192);
    s.fetcher.ensure_chunk(&s.target, &s.blob, 2).await.unwrap();
    let whole = chunk_range(2, s.data.len());
    assert_eq!(
        s.source.requests(s.a()),
        [whole.start + 8192..whole.end, whole.clone()]
    );
    assert!(
        s.source.requests(s.b()).is_empty(),
        "not the source's fault"
    );
    assert_eq!(s.metric("modelfs_chunk_verify_failures_total"), 0);
    s.assert_chunk_right(2);
}

#[tokio::test(start_paused = true)]
async fn a_reader_never_waits_for_a_request_slot_behind_background_fetches() {
    let chunks = MAX_CONCURRENT_REQUESTS + 8;
    let stall = std::time::Duration::from_secs(30);
    let last = chunks as u64 - 1;
    let s = Setup::with_data(data_of(chunks * CHUNK), true, |src, a, _| {
        let offset = last * CHUNK as u64;
        src.always(
            a,
            Fault::SlowBefore {
                offset,
                pause: stall,
            },
        )
    });
    // Every background slot stalls on a one-chunk fill; more fills queue.
    let fills = (0..last).map(|c| s.fetcher.fill(&s.target, &s.blob, c..c + 1, None));
    let reader = async {
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        s.fetcher
            .ensure_chunk(&s.target, &s.blob, last)
            .await
            .unwrap();
        started.elapsed()
    };
    let (fills, waited) = futures::join!(join_all(fills), reader);
    assert!(fills.iter().all(Result::is_ok));
    assert!(waited < stall / 10, "the reader waited {waited:?}");
    (0..chunks).for_each(|c| s.assert_chunk_right(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_waits_for_a_chunk_another_process_holds_instead_of_giving_up() {
    let s = Setup::new(true, |src, _, _| src);
    // Another process (another open of the cache) holds chunk 2's claim for
    // a while, then lets go without fetching it.
    let other = Cache::open(s._dir.path()).unwrap();
    let held = Arc::clone(&other.open_blob(s.target.entry()).unwrap())
        .claim_chunk(2)
        .unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    s.fetcher.fetch_file(&s.target, &|_| {}).await.unwrap();
    releaser.join().unwrap();
    assert!(s.blob.is_complete());
    (0..5).for_each(|c| s.assert_chunk_right(c));
}
