//! Puts a call's results in input order as they arrive.

use std::collections::BTreeMap;

/// Results in input order, built from results that arrive in runs of
/// consecutive indices (a frame holds a run of one chunk), in any order of
/// runs.
///
/// A result that extends the ordered prefix is pushed straight to it; a run
/// that arrives early waits in its own `Vec` until the prefix reaches it,
/// and is then appended whole. Each result is written once (twice for early
/// runs), without the `Option` slot per item and the final pass that a
/// `Vec<Option<T>>` needs.
#[derive(Debug)]
pub(crate) struct InOrder<T> {
    /// Results `0 .. done.len()`.
    done: Vec<T>,
    /// The early run the last early result went to: its first index and
    /// its results.
    open: Option<(usize, Vec<T>)>,
    /// The other early runs, by first index.
    early: BTreeMap<usize, Vec<T>>,
    /// The smallest first index among the early runs (`open` included), or
    /// `usize::MAX`.
    next_early: usize,
}

impl<T> InOrder<T> {
    /// Room for `len` results in the ordered prefix.
    pub(crate) fn with_capacity(len: usize) -> Self {
        InOrder {
            done: Vec::with_capacity(len),
            open: None,
            early: BTreeMap::new(),
            next_early: usize::MAX,
        }
    }

    /// Stores result `index`. Every index is expected once (the scheduler
    /// resends only items it has no result for); a second result for an
    /// index already in the prefix is dropped.
    #[inline]
    pub(crate) fn put(&mut self, index: usize, value: T) {
        if index == self.done.len() {
            self.done.push(value);
            if self.done.len() == self.next_early {
                self.catch_up();
            }
        } else if index > self.done.len() {
            self.put_early(index, value);
        }
    }

    fn put_early(&mut self, index: usize, value: T) {
        if let Some((start, run)) = &mut self.open
            && *start + run.len() == index
        {
            run.push(value);
            return;
        }
        if let Some((start, run)) = self.open.take() {
            self.early.insert(start, run);
        }
        self.open = Some((index, vec![value]));
        self.next_early = self.next_early.min(index);
    }

    /// Appends the early runs that now follow the prefix.
    fn catch_up(&mut self) {
        loop {
            let at = self.done.len();
            if let Some((start, _)) = &self.open
                && *start == at
                && let Some((_, run)) = self.open.take()
            {
                self.done.extend(run);
                continue;
            }
            match self.early.first_entry() {
                Some(entry) if *entry.key() == at => self.done.extend(entry.remove()),
                _ => break,
            }
        }
        let open = self.open.as_ref().map_or(usize::MAX, |(start, _)| *start);
        let early = self.early.keys().next().copied().unwrap_or(usize::MAX);
        self.next_early = open.min(early);
    }

    /// How many results, from index 0 on, are in order with no gap.
    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }

    /// The results in input order, if the first `expected` all arrived;
    /// otherwise the first missing index.
    pub(crate) fn finish(self, expected: usize) -> Result<Vec<T>, usize> {
        if self.done.len() >= expected {
            let mut done = self.done;
            done.truncate(expected);
            Ok(done)
        } else {
            Err(self.done.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InOrder;

    /// Delivers `0..n` in runs of `run` items, runs in the order `order`.
    fn deliver(n: usize, run: usize, order: &[usize]) -> Result<Vec<usize>, usize> {
        let mut out = InOrder::with_capacity(n);
        for &r in order {
            for index in r * run..((r + 1) * run).min(n) {
                out.put(index, index * 10);
            }
        }
        out.finish(n)
    }

    #[test]
    fn runs_in_any_order_come_out_in_input_order() {
        let want: Vec<usize> = (0..100).map(|i| i * 10).collect();
        let orders: [&[usize]; 5] = [
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            &[1, 0, 3, 2, 5, 4, 7, 6, 9, 8],
            &[2, 3, 1, 5, 6, 0, 9, 4, 8, 7],
            &[5, 6, 7, 8, 9, 0, 1, 2, 3, 4],
        ];
        for order in orders {
            assert_eq!(deliver(100, 10, order).as_ref(), Ok(&want), "{order:?}");
        }
        // Interleaved single items (two workers, one item per chunk).
        let mut out = InOrder::with_capacity(6);
        for index in [1, 0, 3, 5, 2, 4] {
            out.put(index, index);
        }
        assert_eq!(out.finish(6), Ok(vec![0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_missing_run_is_reported_by_its_first_index() {
        assert_eq!(deliver(100, 10, &[0, 1, 3, 4, 5, 6, 7, 8, 9]), Err(20));
        assert_eq!(deliver(100, 10, &[]), Err(0));
    }

    #[test]
    fn a_repeated_index_keeps_the_first_result() {
        let mut out = InOrder::with_capacity(3);
        out.put(0, "first");
        out.put(0, "again");
        out.put(1, "b");
        out.put(2, "c");
        assert_eq!(out.len(), 3);
        assert_eq!(out.finish(3), Ok(vec!["first", "b", "c"]));
    }
}
