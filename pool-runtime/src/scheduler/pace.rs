//! How fast a worker runs a task, and how much work it is given ahead.

use std::time::Duration;

/// How much work, measured by its last chunk's duration, a worker is given
/// ahead: enough to hide the round trip for short chunks (up to the
/// configured maximum); a worker whose chunks take longer than this gets
/// one at a time, so nothing waits behind a long chunk while another worker
/// is free.
pub(super) const PIPELINE: Duration = Duration::from_millis(1);

/// A running estimate of a worker's time per item: decayed sums of chunk
/// times and item counts. Results read in one batch make the first chunk
/// seem to take all the time and the others none; the sums average that
/// out. A chunk that took [`PIPELINE`] or more counts at once, whatever
/// came before: after thousands of instant items, the sums would take
/// dozens of slow chunks to notice them (each queued deep behind the last).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pace {
    nanos: f64,
    items: f64,
    /// The time per item of the last chunk, if it took `PIPELINE` or more.
    slow: Option<Duration>,
}

impl Pace {
    /// Adds a chunk of `items` items that took `took`.
    pub(crate) fn add(&mut self, took: Duration, items: u32) {
        const KEEP: f64 = 0.875;
        self.nanos = self.nanos * KEEP + took.as_nanos() as f64;
        self.items = self.items * KEEP + f64::from(items);
        self.slow = (took >= PIPELINE).then(|| took / items.max(1));
    }

    /// The time per item, once a chunk was added: what dispatch goes by.
    pub(crate) fn per_item(&self) -> Option<Duration> {
        let average = self.average()?;
        Some(self.slow.map_or(average, |slow| slow.max(average)))
    }

    /// The decayed average alone, without the last slow chunk's say (for a
    /// call's read-ahead, which one slow reading should not shrink).
    pub(crate) fn average(&self) -> Option<Duration> {
        (self.items > 0.0).then(|| Duration::from_nanos((self.nanos / self.items) as u64))
    }
}

/// How many chunks of `chunk_time` a worker is given at once: enough for
/// [`PIPELINE`] of work, at least 2 if they are shorter than that (so one
/// waits while the other runs), otherwise 1.
pub(crate) fn ahead(chunk_time: Duration) -> usize {
    if chunk_time >= PIPELINE {
        return 1;
    }
    let n = PIPELINE.as_nanos() / chunk_time.as_nanos().max(1);
    usize::try_from(n).unwrap_or(usize::MAX).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow chunk after many instant ones is seen at once.
    #[test]
    fn a_slow_chunk_counts_at_once() {
        let mut pace = Pace::default();
        for _ in 0..1000 {
            pace.add(Duration::from_micros(5), 1000);
        }
        assert!(pace.per_item() < Some(Duration::from_micros(1)));
        pace.add(Duration::from_millis(10), 1);
        assert_eq!(pace.per_item(), Some(Duration::from_millis(10)));
        assert_eq!(ahead(Duration::from_millis(10)), 1);
        // A fast chunk after it: the average again (batched results make
        // single readings near zero, so one fast reading is not trusted
        // more than the sums).
        pace.add(Duration::from_micros(5), 1);
        assert!(pace.per_item() < Some(Duration::from_millis(10)));
    }
}
