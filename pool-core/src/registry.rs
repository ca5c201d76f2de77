//! The task registry: one row per `#[task]`, collected by `inventory`.

use std::collections::HashMap;

use crate::error::TaskFailure;
use crate::task::Task;
use crate::wire::VecFlavor;

/// Decodes one argument struct from `input`, runs the task, appends the
/// encoded result to `out`. Panics propagate to the caller, which catches them.
pub type RunFn = fn(input: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure>;

/// The row each `#[task]` submits to the registry.
#[derive(Debug)]
pub struct TaskEntry {
    /// [`Task::ID`].
    pub id: u64,
    /// [`Task::NAME`].
    pub name: &'static str,
    /// The type-erased entry point.
    pub run: RunFn,
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
            output_type: std::any::type_name::<T::Output>,
        }
    }
}

/// Runs task `T` on encoded arguments; see [`RunFn`].
pub fn run_erased<T: Task>(input: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure> {
    let args: T::Args = postcard::from_bytes(input).map_err(|err| TaskFailure::BadArguments {
        ty: std::any::type_name::<T::Args>().to_owned(),
        message: err.to_string(),
    })?;
    let output = T::call(args);
    let mark = out.len();
    postcard::serialize_with_flavor(&output, VecFlavor(out)).map_err(|err| {
        out.truncate(mark);
        TaskFailure::BadOutput {
            ty: std::any::type_name::<T::Output>().to_owned(),
            message: err.to_string(),
        }
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
