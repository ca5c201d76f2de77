//! The iterators of the `imap` family: one `Result` per input item, in
//! input order ([`Imap`]) or as they complete ([`ImapUnordered`]).

use std::collections::VecDeque;

use pool_core::{IntoArgs, Task};

use crate::error::Error;
use crate::run::{Indexed, Run};

/// The iterator of [`Pool::imap`](crate::Pool::imap): one `Result` per input item, in input order.
///
/// A pool-level failure ([`Error::Terminated`], ...) is yielded once, then
/// the iterator ends.
pub struct Imap<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    /// Results from index `next` on; `None` where not yet arrived.
    buffer: VecDeque<Option<Result<T::Output, Error>>>,
    next: usize,
}

impl<T: Task, I> Imap<T, I> {
    pub(crate) fn new(run: Result<Run<T, I>, Error>) -> Self {
        Imap {
            inner: run.map_err(Some),
            buffer: VecDeque::new(),
            next: 0,
        }
    }
}

impl<T, I> Iterator for Imap<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let run = match &mut self.inner {
            Ok(run) => run,
            Err(err) => return err.take().map(Err),
        };
        loop {
            if let Some(Some(_)) = self.buffer.front() {
                let item = self.buffer.pop_front().flatten();
                self.next += 1;
                run.release(self.next);
                return item;
            }
            match run.next_batch()? {
                Err(err) => return Some(Err(err)),
                Ok(batch) => place(&mut self.buffer, self.next, batch),
            }
        }
    }
}

fn place<O>(buffer: &mut VecDeque<Option<Result<O, Error>>>, next: usize, batch: Vec<Indexed<O>>) {
    for (index, result) in batch {
        let Some(offset) = index.checked_sub(next) else {
            continue;
        };
        if buffer.len() <= offset {
            buffer.resize_with(offset + 1, || None);
        }
        buffer[offset] = Some(result);
    }
}

/// The iterator of [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result` per input item,
/// in completion order. [`indexed`](ImapUnordered::indexed) tells which
/// input each result belongs to.
pub struct ImapUnordered<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    ready: VecDeque<Indexed<T::Output>>,
    answered: Answered,
}

/// Which inputs got their outcome: every one below `base`, and those
/// marked after it (a window as wide as the results' disorder).
#[derive(Default)]
struct Answered {
    base: usize,
    above: VecDeque<bool>,
}

impl Answered {
    fn mark(&mut self, index: usize) {
        let Some(offset) = index.checked_sub(self.base) else {
            return;
        };
        if self.above.len() <= offset {
            self.above.resize(offset + 1, false);
        }
        self.above[offset] = true;
        while self.above.front() == Some(&true) {
            self.above.pop_front();
            self.base += 1;
        }
    }

    /// The inputs below `pulled` with no outcome yet.
    fn missing(&self, pulled: usize) -> Vec<usize> {
        (self.base..pulled)
            .filter(|&i| !self.above.get(i - self.base).copied().unwrap_or(false))
            .collect()
    }
}

impl<T: Task, I> ImapUnordered<T, I> {
    pub(crate) fn new(run: Result<Run<T, I>, Error>) -> Self {
        ImapUnordered {
            inner: run.map_err(Some),
            ready: VecDeque::new(),
            answered: Answered::default(),
        }
    }

    /// The same results, each with the position of its input item:
    /// `(index, result)`, in completion order.
    ///
    /// Every input read gets exactly one outcome, those yielded before the
    /// switch included. A failure of the whole call ([`Error::Terminated`],
    /// [`Error::Cancelled`], ...) is yielded for every input read whose
    /// result had not come; if there is none, it is yielded once at the
    /// index of the first input not read (the input was cut short there:
    /// by `join`, say). Then the iterator ends.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let naps = [300, 10];
    /// let mut done = pool.chunksize(1).imap_unordered(task!(nap), naps).indexed();
    /// assert!(matches!(done.next(), Some((1, Ok(10))))); // input 1 finished first
    /// assert!(matches!(done.next(), Some((0, Ok(300)))));
    /// # Ok(()) }
    /// ```
    pub fn indexed(self) -> ImapIndexed<T, I> {
        ImapIndexed {
            inner: self.inner,
            ready: self.ready,
            answered: self.answered,
        }
    }
}

impl<T, I> Iterator for ImapUnordered<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let run = match &mut self.inner {
            Ok(run) => run,
            Err(err) => return err.take().map(Err),
        };
        loop {
            if let Some((index, item)) = self.ready.pop_front() {
                self.answered.mark(index);
                return Some(item);
            }
            match run.next_batch()? {
                Err(err) => return Some(Err(err)),
                Ok(batch) => self.ready.extend(batch),
            }
        }
    }
}

/// The iterator of [`ImapUnordered::indexed`]: `(index, result)` per input
/// item, in completion order.
pub struct ImapIndexed<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    ready: VecDeque<Indexed<T::Output>>,
    /// Which inputs were answered, to fail the others once the call fails.
    answered: Answered,
}

impl<T, I> Iterator for ImapIndexed<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    type Item = (usize, Result<T::Output, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((index, item)) = self.ready.pop_front() {
                self.answered.mark(index);
                return Some((index, item));
            }
            let run = match &mut self.inner {
                Ok(run) => run,
                Err(err) => return err.take().map(|err| (0, Err(err))),
            };
            match run.next_batch()? {
                Ok(batch) => self.ready.extend(batch),
                Err(err) => {
                    // Every input read and not answered gets the call's
                    // error; with none, the first input not read does.
                    let pulled = run.pulled();
                    let missing = self.answered.missing(pulled);
                    if missing.is_empty() {
                        self.ready.push_back((pulled, Err(err)));
                    } else {
                        self.ready
                            .extend(missing.into_iter().map(|i| (i, Err(err.again()))));
                    }
                    self.inner = Err(None);
                }
            }
        }
    }
}
