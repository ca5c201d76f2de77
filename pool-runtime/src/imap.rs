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
/// in completion order.
pub struct ImapUnordered<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    ready: VecDeque<Result<T::Output, Error>>,
}

impl<T: Task, I> ImapUnordered<T, I> {
    pub(crate) fn new(run: Result<Run<T, I>, Error>) -> Self {
        ImapUnordered {
            inner: run.map_err(Some),
            ready: VecDeque::new(),
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
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            match run.next_batch()? {
                Err(err) => return Some(Err(err)),
                Ok(batch) => self.ready.extend(batch.into_iter().map(|(_, r)| r)),
            }
        }
    }
}
