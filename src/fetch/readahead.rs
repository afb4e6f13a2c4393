//! Readahead as a pure state machine: given each read of one open file, say
//! which bytes to fetch ahead of it. No I/O, so it is tested on its own.
//!
//! A sequential reader gets a window of bytes requested ahead of it that
//! doubles each time it has consumed half of the window, up to a cap; a
//! random reader gets nothing ahead (only the chunks it touches), and a
//! reader that seeks away leaves its old window behind, to be cancelled.
//! A few reads elsewhere are not a seek: a copy out of a mapped file touches
//! the end of what it copies first (glibc's memcpy loads the last vectors
//! before the loop), so a loader's page faults jump a tensor ahead, read a
//! page-cache window there, and come back. Only reads that go on from there
//! for [`MOVED_AFTER`] bytes move the window.

use std::ops::Range;

/// How far a read may land from where the last one ended and still count as
/// sequential: the kernel issues up to 1 MiB per request and may have a few
/// in flight out of order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;
/// Bytes read in a row away from the window that show the reader moved: more
/// than the kernel reads around one fault of a mapping (1 MiB here).
const MOVED_AFTER: u64 = 4 << 20;
/// Cap on bytes requested ahead of one reader: enough for every request
/// slot to carry a full request (16 × 8 MiB).
const MAX_WINDOW_BYTES: u64 = 128 << 20;

/// What to do after one read.
#[derive(Debug, PartialEq, Eq)]
pub struct Ahead {
    /// Bytes to fetch ahead (empty for none).
    pub fetch: Range<u64>,
    /// The reader left what was fetched ahead for it behind: stop that.
    pub cancel: bool,
}

#[derive(Debug)]
pub struct Readahead {
    /// Where the last read ended.
    next: u64,
    /// End of what has been requested ahead so far.
    requested_to: u64,
    /// Bytes read since the reader last sought away.
    run: u64,
    /// Bytes read in a row away from the run, the latest last: the reader
    /// moved only if it goes on there for [`MOVED_AFTER`] bytes.
    stray: Option<Range<u64>>,
    window: u64,
    initial: u64,
    max: u64,
}

impl Readahead {
    pub fn new(chunk_size: u64) -> Self {
        let max = MAX_WINDOW_BYTES.max(chunk_size);
        Readahead {
            next: 0,
            requested_to: 0,
            run: 0,
            stray: None,
            window: chunk_size,
            initial: chunk_size,
            max,
        }
    }

    /// Records a read of `len` bytes at `offset` in a file of `size` bytes and
    /// says what to fetch ahead of it.
    pub fn on_read(&mut self, offset: u64, len: u64, size: u64) -> Ahead {
        let end = offset.saturating_add(len).min(size);
        let none = |cancel| Ahead {
            fetch: end..end,
            cancel,
        };
        let near = |to: u64| offset + SEQUENTIAL_SLACK >= to && offset <= to + SEQUENTIAL_SLACK;
        let (mut cancel, mut read) = (false, end - offset.min(end));
        if !near(self.next) {
            let stray = match self.stray.take() {
                Some(stray) if near(stray.end) => stray.start..end.max(stray.end),
                _ => offset..end,
            };
            if stray.end - stray.start < MOVED_AFTER {
                self.stray = Some(stray);
                return none(false);
            }
            // The reader moved. Into the window (a skipped tensor), the run
            // goes on; elsewhere, a seek leaves the window behind and
            // starts a new run.
            if stray.start < self.next || stray.start > self.requested_to {
                cancel = self.requested_to > self.next;
                self.run = 0;
                self.window = self.initial;
                self.requested_to = end;
                self.next = end;
            }
            read = stray.end - stray.start;
        }
        self.stray = None;
        self.next = self.next.max(end);
        self.run += read;
        if self.requested_to.saturating_sub(end) > self.window / 2 {
            return none(cancel);
        }
        if self.requested_to >= end {
            // The reader is reading what was fetched for it: widen.
            self.window = (self.window * 2).min(self.max);
        }
        let from = self.requested_to.max(end);
        let to = (end + self.window).min(size);
        self.requested_to = to.max(self.requested_to);
        Ahead {
            fetch: from..to.max(from),
            cancel,
        }
    }

    /// Bytes this reader read since it last sought away: how far it has
    /// shown itself a sequential reader (a loader), not a random one.
    pub fn sequential_bytes(&self) -> u64 {
        self.run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_window_doubles_to_the_cap() {
        let mut ra = Readahead::new(8 * MIB);
        let size = 10_000 * MIB;
        let first = ra.on_read(0, 128 << 10, size).fetch;
        assert_eq!(first, (128 << 10)..(8 * MIB + (128 << 10)));
        let mut widest = 0;
        let mut requested_to = first.end;
        let mut offset = 128 << 10;
        while offset < 2_000 * MIB {
            let r = ra.on_read(offset, 128 << 10, size).fetch;
            if !r.is_empty() {
                assert_eq!(r.start, requested_to, "windows are contiguous");
                requested_to = r.end;
                widest = widest.max(r.end - offset);
            }
            offset += 128 << 10;
        }
        assert!(
            widest > 64 * MIB && widest <= 128 * MIB + MIB,
            "widest {widest}"
        );
    }

    #[test]
    fn random_reads_get_nothing_ahead_and_a_seek_resets_the_window() {
        let mut ra = Readahead::new(8 * MIB);
        let size = 1_000 * MIB;
        assert!(!ra.on_read(0, MIB, size).fetch.is_empty());
        for offset in [500 * MIB, 100 * MIB, 700 * MIB, 701 * MIB, 702 * MIB] {
            assert_eq!(
                ra.on_read(offset, MIB, size),
                Ahead {
                    fetch: offset + MIB..offset + MIB,
                    cancel: false
                },
                "nothing ahead of a random read, and a few reads are not a seek"
            );
        }
        // Reading on there past MOVED_AFTER: the reader moved.
        let moved = ra.on_read(703 * MIB, MIB, size);
        assert!(
            moved.cancel,
            "the window ahead of offset 1 MiB is left behind"
        );
        assert_eq!(moved.fetch.start, 704 * MIB);
        assert_eq!(ra.sequential_bytes(), 4 * MIB, "a seek starts a new run");
        // A skip forward into that window (a skipped tensor) keeps it.
        let skip_to = moved.fetch.end - 4 * MIB;
        for i in 0..4 {
            assert!(!ra.on_read(skip_to + i * MIB, MIB, size).cancel);
        }
        assert_eq!(ra.sequential_bytes(), 8 * MIB, "the run goes on");
    }

    #[test]
    fn copies_out_of_a_mapping_do_not_reset_the_window() {
        // memcpy of each 32 MiB tensor faults at its end first, then from
        // its start on: the window keeps growing and nothing is cancelled.
        let mut ra = Readahead::new(MIB);
        let size = 1_000 * MIB;
        let mut widest = 0;
        for tensor in 0..8 {
            let base = tensor * 32 * MIB;
            let first = ra.on_read(base + 31 * MIB, MIB, size);
            assert!(!first.cancel);
            for i in 0..31 {
                let ahead = ra.on_read(base + i * MIB, MIB, size);
                assert!(!ahead.cancel, "tensor {tensor} MiB {i}");
                widest = widest.max(ahead.fetch.end.saturating_sub(base + i * MIB));
            }
        }
        assert!(widest >= 64 * MIB, "widest {widest}");
        assert_eq!(ra.sequential_bytes(), 8 * 31 * MIB);
    }

    #[test]
    fn reads_as_large_as_a_chunk_still_widen_the_window() {
        // The kernel asks for 1 MiB at a time; chunks are 1 MiB too.
        let mut ra = Readahead::new(MIB);
        let size = 1_000 * MIB;
        let widest = (0..64)
            .map(|i| ra.on_read(i * MIB, MIB, size).fetch)
            .map(|r| r.end - r.start)
            .max()
            .unwrap();
        assert!(widest >= 32 * MIB, "widest {widest}");
    }

    #[test]
    fn never_past_the_end() {
        let mut ra = Readahead::new(8 * MIB);
        let r = ra.on_read(0, 4096, 5 * MIB).fetch;
        assert_eq!(r, 4096..5 * MIB);
        assert!(ra.on_read(5 * MIB - 4096, 4096, 5 * MIB).fetch.is_empty());
    }
}
