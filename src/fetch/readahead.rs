//! Readahead as a pure state machine: given each read of one open file, say
//! which bytes to fetch ahead of it. No I/O, so it is tested on its own.
//!
//! A sequential reader gets a window of bytes requested ahead of it that
//! doubles each time it has consumed half of the window, up to a cap; a
//! random reader gets nothing ahead (only the chunks it touches), and a
//! reader that seeks away leaves its old window behind, to be cancelled.

use std::ops::Range;

/// How far a read may land from where the last one ended and still count as
/// sequential: the kernel issues up to 1 MiB per request and may have a few
/// in flight out of order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;
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
        // A jump forward into what was fetched ahead still uses it.
        let prev = self.next;
        let sequential = offset + SEQUENTIAL_SLACK >= prev
            && offset <= (prev + SEQUENTIAL_SLACK).max(self.requested_to);
        self.next = end;
        // A seek starts a new run with this read.
        self.run = if sequential { self.run } else { 0 } + (end - offset.min(end));
        if !sequential {
            let cancel = self.requested_to > prev;
            self.window = self.initial;
            self.requested_to = end;
            return none(cancel);
        }
        if self.requested_to.saturating_sub(end) > self.window / 2 {
            return none(false);
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
            cancel: false,
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
    fn random_reads_get_nothing_ahead_and_reset_the_window() {
        let mut ra = Readahead::new(8 * MIB);
        let size = 1_000 * MIB;
        assert!(!ra.on_read(0, MIB, size).fetch.is_empty());
        let seek = ra.on_read(500 * MIB, 4096, size);
        assert!(seek.fetch.is_empty());
        assert!(
            seek.cancel,
            "the window ahead of offset 1 MiB is left behind"
        );
        let again = ra.on_read(100 * MIB, 4096, size);
        assert_eq!(
            again,
            Ahead {
                fetch: 100 * MIB + 4096..100 * MIB + 4096,
                cancel: false
            },
            "nothing was fetched ahead of a random read"
        );
        assert_eq!(ra.sequential_bytes(), 4096, "a seek starts a new run");
        // Reading on from there is sequential again, with the first window.
        let r = ra.on_read(100 * MIB + 4096, 4096, size).fetch;
        assert_eq!(ra.sequential_bytes(), 8192);
        assert_eq!(r.end - r.start, 8 * MIB);
        // A jump forward into that window (a skipped tensor) keeps it.
        let skip = ra.on_read(100 * MIB + 6 * MIB, 4096, size);
        assert!(!skip.cancel);
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
