//! The task registry: one row per `#[task]`, collected by `inventory`.

use std::collections::HashMap;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::encode::{EncodeError, encode_value_limited};
use crate::error::{ProtocolError, TaskFailure};
use crate::task::Task;
use crate::wire::{self, Items};

/// Decodes one argument struct from `input`, runs the task, appends the
/// encoded result to `out`. Panics propagate to the caller, which catches them.
pub type RunFn = fn(input: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure>;

/// Runs consecutive items of a chunk in one loop compiled for the task;
/// see [`Batch`]. `None` once `limit` items ran, or once the results body
/// reached `out_limit`; otherwise why it stopped early.
pub type RunBatchFn = for<'a> fn(batch: &mut Batch<'_, 'a>) -> Option<Halt<'a>>;

/// The row each `#[task]` submits to the registry.
#[derive(Debug)]
pub struct TaskEntry {
    /// [`Task::ID`].
    pub id: u64,
    /// [`Task::NAME`].
    pub name: &'static str,
    /// The type-erased entry point for one item.
    pub run: RunFn,
    /// The type-erased entry point for a run of items.
    pub run_batch: RunBatchFn,
    /// The name of the task's return type, for error messages.
    pub output_type: fn() -> &'static str,
}

inventory::collect!(TaskEntry);

impl TaskEntry {
    /// The registry row of task `T`.
    pub const fn of<T: Task>() -> Self {
        TaskEntry {
            id: T::ID,
            name: T::NAME,
            run: run_erased::<T>,
            run_batch: run_batch::<T>,
            output_type: std::any::type_name::<T::Output>,
        }
    }
}

/// Runs task `T` on encoded arguments; see [`RunFn`].
pub fn run_erased<T: Task>(input: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure> {
    let output = T::call_encoded(input).map_err(|err| TaskFailure::BadArguments {
        ty: std::any::type_name::<T::Args>().to_owned(),
        message: err.to_string(),
    })?;
    let mark = out.len();
    encode_value_limited(out, &output, usize::MAX).map_err(|err| {
        out.truncate(mark);
        TaskFailure::BadOutput {
            ty: std::any::type_name::<T::Output>().to_owned(),
            message: err.to_string(),
        }
    })
}

/// A run of consecutive items of one chunk, handed to
/// [`TaskEntry::run_batch`].
///
/// Each item's result is appended to `out` as a results-body item. The loop
/// stops early at the first item that fails (its failure is returned, and
/// nothing of it is appended), and after an item that leaves `out` at least
/// `out_limit` bytes long, so the caller can send the results.
pub struct Batch<'b, 'a> {
    /// The chunk's remaining argument items.
    pub items: &'b mut Items<'a>,
    /// Run at most this many items.
    pub limit: u32,
    /// The results body.
    pub out: &'b mut Vec<u8>,
    /// Stop after an item that leaves `out` at least this long.
    pub out_limit: usize,
    /// The largest results-body item (head and encoded result) an item may
    /// have: a longer one is not appended and halts the batch with
    /// [`Halt::TooLarge`].
    pub max_result: usize,
    /// Where the worker shows which item runs, if anywhere: before each
    /// item after the first, set to `first_index` plus the item's index in
    /// the batch (the caller records the first item itself).
    pub progress: Option<&'b AtomicU64>,
    /// The index in its chunk of the batch's first item.
    pub first_index: u64,
    /// How many items ran and were appended (output).
    pub ran: u32,
    /// Where the last appended item starts in `out` (output).
    pub last_mark: usize,
}

/// Why a batch stopped before its end: item number [`Batch::ran`] of the
/// batch failed, and nothing of it was appended.
pub enum Halt<'a> {
    /// The task (or a serde impl) panicked.
    Panicked {
        /// The item's encoded arguments, to run it again.
        arg: &'a [u8],
        /// The panic's payload.
        payload: Box<dyn Any + Send>,
    },
    /// Its arguments could not be decoded, or its result encoded.
    Failed(TaskFailure),
    /// Its result item takes more than [`Batch::max_result`] bytes: at
    /// least `size` (encoding stopped once past the limit).
    TooLarge {
        /// The result item's size.
        size: usize,
    },
    /// The arguments body is malformed: the chunk cannot go on.
    Protocol(ProtocolError),
}

/// Runs a batch of task `T`; see [`RunBatchFn`].
pub fn run_batch<'a, T: Task>(batch: &mut Batch<'_, 'a>) -> Option<Halt<'a>> {
    let mut arg: &'a [u8] = &[];
    let mut mark = batch.out.len();
    // One unwinding guard for the whole loop: a panic leaves `arg` and
    // `mark` naming the item that was running.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        while batch.ran < batch.limit {
            if let Some(slot) = batch.progress
                && batch.ran > 0
            {
                slot.store(batch.first_index + u64::from(batch.ran), Ordering::Relaxed);
            }
            arg = match batch.items.next_arg() {
                Ok(arg) => arg,
                Err(err) => return Some(Halt::Protocol(err)),
            };
            mark = batch.out.len();
            let output = match T::call_encoded(arg) {
                Ok(output) => output,
                Err(err) => {
                    return Some(Halt::Failed(TaskFailure::BadArguments {
                        ty: std::any::type_name::<T::Args>().to_owned(),
                        message: err.to_string(),
                    }));
                }
            };
            wire::begin_result(batch.out);
            // Encoding stops as soon as the result is known not to fit.
            let payload_limit = batch.max_result.saturating_sub(batch.out.len() - mark);
            if let Err(err) = encode_value_limited(batch.out, &output, payload_limit) {
                batch.out.truncate(mark);
                if let EncodeError::TooLarge { .. } = err {
                    return Some(Halt::TooLarge {
                        size: batch.max_result + 1,
                    });
                }
                return Some(Halt::Failed(TaskFailure::BadOutput {
                    ty: std::any::type_name::<T::Output>().to_owned(),
                    message: err.to_string(),
                }));
            }
            let size = batch.out.len() - mark;
            if size > batch.max_result {
                batch.out.truncate(mark);
                return Some(Halt::TooLarge { size });
            }
            wire::finish_result(batch.out, mark, wire::ITEM_OK);
            batch.ran += 1;
            batch.last_mark = mark;
            if batch.out.len() >= batch.out_limit {
                return None;
            }
        }
        None
    }));
    outcome.unwrap_or_else(|payload| {
        batch.out.truncate(mark);
        Some(Halt::Panicked { arg, payload })
    })
}

/// Two tasks share an id.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "tasks `{first}` and `{second}` have the same id {id:#018x}; rename one of them (two versions of one crate in a binary also cause this)"
)]
pub struct RegistryError {
    /// The shared id.
    pub id: u64,
    /// One task.
    pub first: &'static str,
    /// The other task.
    pub second: &'static str,
}

/// All tasks linked into this binary, by id.
#[derive(Debug)]
pub struct Registry {
    by_id: HashMap<u64, &'static TaskEntry>,
    fingerprint: u64,
}

impl Registry {
    /// Collects every submitted [`TaskEntry`], refusing duplicate ids.
    pub fn collect() -> Result<Registry, RegistryError> {
        let mut by_id: HashMap<u64, &'static TaskEntry> = HashMap::new();
        for entry in inventory::iter::<TaskEntry> {
            if let Some(prev) = by_id.insert(entry.id, entry) {
                return Err(RegistryError {
                    id: entry.id,
                    first: prev.name,
                    second: entry.name,
                });
            }
        }
        let mut rows: Vec<(u64, &str)> = by_id.values().map(|e| (e.id, e.name)).collect();
        rows.sort_unstable();
        let mut text = String::new();
        for (id, name) in rows {
            text.push_str(&format!("{id:016x} {name}\n"));
        }
        Ok(Registry {
            by_id,
            fingerprint: crate::task::task_id(&text),
        })
    }

    /// The row of task `id`.
    pub fn get(&self, id: u64) -> Option<&'static TaskEntry> {
        self.by_id.get(&id).copied()
    }

    /// A hash of every (id, name) pair: equal in two processes of one binary.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
