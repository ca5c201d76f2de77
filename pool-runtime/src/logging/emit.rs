//! The pool's side: records from workers emitted again in this process,
//! and the warnings for items that failed in a worker.
//!
//! Each place records are emitted from in a worker (target, level, module,
//! file, line) gets a callsite of its own here, made once and kept (at most
//! [`MAX_SITES`]; records from further places are emitted with the target
//! `pool_runtime::worker`, their own target starting the message). So the
//! event a subscriber sees has the worker's target and location, and a
//! filter such as `RUST_LOG=my_crate=debug` selects it as it would in a
//! single process. Without a global `tracing` subscriber the record goes
//! to the `log` logger, if one is set, with the fields in its message.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};

use pool_core::wire::{self, FromWorker, Items, LogRecord};
use pool_core::{ProtocolError, TaskFailure};
use tracing::field::Value;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_core::callsite::Callsite;
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;

use super::to_level;

/// The most callsites made for records from workers.
const MAX_SITES: usize = 4096;
/// The target of records whose own does not get a callsite.
const FALLBACK_TARGET: &str = "pool_runtime::worker";

/// The fields of every re-emitted record, in this order.
static FIELDS: &[&str] = &["message", "pid", "task", "item"];

/// A callsite made for one place in a worker's code.
struct Site {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for Site {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'static> {
        self.meta.get().unwrap_or(&PLACEHOLDER_META)
    }
}

/// What a [`Site`] shows in the instant between its making and its metadata.
struct Placeholder;

static PLACEHOLDER: Placeholder = Placeholder;

static PLACEHOLDER_META: Metadata<'static> = Metadata::new(
    "event from a pool worker",
    FALLBACK_TARGET,
    Level::TRACE,
    None,
    None,
    None,
    FieldSet::new(FIELDS, tracing_core::identify_callsite!(&PLACEHOLDER)),
    Kind::EVENT,
);

impl Callsite for Placeholder {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'static> {
        &PLACEHOLDER_META
    }
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    level: u8,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

static SITES: LazyLock<Mutex<HashMap<Key, &'static Site>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

/// The callsite of `record`'s place, made on first use; `false` with it if
/// that is the fallback one, which does not show the record's target.
fn site(record: &LogRecord, level: Level) -> (&'static Site, bool) {
    let key = Key {
        level: record.level,
        target: record.target.clone(),
        module_path: record.module_path.clone(),
        file: record.file.clone(),
        line: record.line,
    };
    let mut sites = SITES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(site) = sites.get(&key) {
        return (site, true);
    }
    let (key, own) = if sites.len() < MAX_SITES {
        (key, true)
    } else {
        let fallback = Key {
            level: record.level,
            target: FALLBACK_TARGET.to_owned(),
            module_path: None,
            file: None,
            line: None,
        };
        if let Some(site) = sites.get(&fallback) {
            return (site, false);
        }
        (fallback, false)
    };
    let site: &'static Site = Box::leak(Box::new(Site {
        meta: OnceLock::new(),
    }));
    let name = match (&key.file, key.line) {
        (Some(file), Some(line)) => leak(&format!("event {file}:{line} in a pool worker")),
        _ => "event in a pool worker",
    };
    let meta = Metadata::new(
        name,
        leak(&key.target),
        level,
        key.file.as_deref().map(leak),
        key.line,
        key.module_path.as_deref().map(leak),
        FieldSet::new(FIELDS, tracing_core::identify_callsite!(site)),
        Kind::EVENT,
    );
    let _ = site.meta.set(meta);
    sites.insert(key, site);
    drop(sites);
    tracing_core::callsite::register(site);
    (site, own)
}

/// Emits a record from the worker `pid` again in this process.
pub(crate) fn emit(record: &LogRecord, pid: u32, task: Option<&str>, item: Option<usize>) {
    let Some(level) = to_level(record.level) else {
        return;
    };
    if tracing_core::dispatcher::has_been_set() {
        if level > LevelFilter::current() {
            return;
        }
        let (site, own) = site(record, level);
        let message = if own {
            record.message.clone()
        } else {
            format!("{}: {}", record.target, record.message)
        };
        dispatch(site.metadata(), &message, pid, task, item);
    } else {
        emit_log(record, pid, task, item);
    }
}

fn dispatch(
    meta: &'static Metadata<'static>,
    message: &str,
    pid: u32,
    task: Option<&str>,
    item: Option<usize>,
) {
    let fields = meta.fields();
    let mut names = fields.iter();
    let (Some(f_message), Some(f_pid), Some(f_task), Some(f_item)) =
        (names.next(), names.next(), names.next(), names.next())
    else {
        return;
    };
    let item = item.map(|i| i as u64);
    let values: [(&tracing::field::Field, Option<&dyn Value>); 4] = [
        (&f_message, Some(&message as &dyn Value)),
        (&f_pid, Some(&pid as &dyn Value)),
        (&f_task, task.as_ref().map(|t| t as &dyn Value)),
        (&f_item, item.as_ref().map(|i| i as &dyn Value)),
    ];
    tracing_core::dispatcher::get_default(|dispatch| {
        if dispatch.enabled(meta) {
            dispatch.event(&Event::new(meta, &fields.value_set(&values)));
        }
    });
}

/// A record for a process that logs through `log` only: the fields join
/// its message.
fn emit_log(record: &LogRecord, pid: u32, task: Option<&str>, item: Option<usize>) {
    let level = match record.level {
        wire::LOG_ERROR => log::Level::Error,
        wire::LOG_WARN => log::Level::Warn,
        wire::LOG_INFO => log::Level::Info,
        wire::LOG_DEBUG => log::Level::Debug,
        _ => log::Level::Trace,
    };
    if level > log::max_level() {
        return;
    }
    let meta = log::Metadata::builder()
        .level(level)
        .target(&record.target)
        .build();
    let logger = log::logger();
    if !logger.enabled(&meta) {
        return;
    }
    let task = task.map(|t| format!(" task={t}")).unwrap_or_default();
    let item = item.map(|i| format!(" item={i}")).unwrap_or_default();
    logger.log(
        &log::Record::builder()
            .metadata(meta)
            .module_path(record.module_path.as_deref())
            .file(record.file.as_deref())
            .line(record.line)
            .args(format_args!("{} pid={pid}{task}{item}", record.message))
            .build(),
    );
}

/// Reports records dropped: by a worker, its buffer being full, or
/// `here`, too many waiting for this process's subscriber or logger.
fn dropped(pid: u32, count: u64, here: bool) {
    let why = if here {
        "this process emitted them slower than the pool worker sent them"
    } else {
        "the pool worker emitted them faster than they could be sent"
    };
    if tracing_core::dispatcher::has_been_set() || log::max_level() < log::Level::Warn {
        tracing::warn!(pid, dropped = count, "{count} log records dropped: {why}");
    } else {
        log::warn!("{count} log records dropped: {why} pid={pid}");
    }
}

/// Reports an item that failed in a worker.
fn failed(pid: u32, task: Option<&str>, item: usize, failure: &TaskFailure) {
    match failure {
        TaskFailure::Panicked {
            message, location, ..
        } => tracing::warn!(pid, task, item, %location, "task panicked: {message}"),
        other => tracing::warn!(pid, task, item, "task failed: {other}"),
    }
}

/// Where [`emit_frame`] finds the task and input index of an item: from
/// the chunk id and the index in it that a record names.
pub(crate) type Locate<'a> = &'a dyn Fn(u64, u32) -> (Option<&'static str>, Option<usize>);

/// What frames of one worker have to say, kept while the scheduler's lock
/// is held and said after it is released, before the results of the same
/// frames reach their calls.
#[derive(Default)]
pub(crate) struct Pending {
    entries: Vec<Entry>,
}

enum Entry {
    Record {
        record: LogRecord,
        pid: u32,
        task: Option<&'static str>,
        item: Option<usize>,
    },
    Dropped {
        pid: u32,
        count: u64,
        /// Dropped in this process (its subscriber was behind), not in
        /// the worker.
        here: bool,
    },
    Failed {
        pid: u32,
        task: Option<&'static str>,
        item: usize,
        failure: TaskFailure,
    },
}

impl Pending {
    /// Takes the records of a `Log` frame's body.
    ///
    /// # Errors
    ///
    /// The body is malformed or does not hold `records` records.
    pub(crate) fn add_log(
        &mut self,
        pid: u32,
        (records, dropped): (u32, u64),
        body: &[u8],
        locate: Locate<'_>,
    ) -> Result<(), ProtocolError> {
        let decoded = wire::log_records(body)?;
        if decoded.len() != records as usize {
            return Err(ProtocolError::Malformed(format!(
                "a log frame announces {records} records and holds {}",
                decoded.len()
            )));
        }
        if dropped > 0 {
            self.entries.push(Entry::Dropped {
                pid,
                count: dropped,
                here: false,
            });
        }
        for record in decoded {
            let (task, item) = if record.chunk == 0 {
                (None, None)
            } else {
                locate(record.chunk, record.item)
            };
            self.entries.push(Entry::Record {
                record,
                pid,
                task,
                item,
            });
        }
        Ok(())
    }

    /// Takes the failed items of a results body whose first item has the
    /// input index `first` (a body already checked whole).
    pub(crate) fn add_failures(
        &mut self,
        pid: u32,
        task: Option<&'static str>,
        first: usize,
        body: &[u8],
    ) {
        let mut items = Items::new(body);
        let mut index = first;
        while !items.is_empty() {
            match items.next_result() {
                Ok(Ok(_)) => {}
                Ok(Err(failure)) => self.entries.push(Entry::Failed {
                    pid,
                    task,
                    item: index,
                    failure,
                }),
                Err(_) => break,
            }
            index += 1;
        }
    }

    /// Whether nothing was kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many records were kept, and about how many bytes they hold.
    pub(crate) fn size(&self) -> (usize, usize) {
        self.entries
            .iter()
            .fold((0, 0), |(records, bytes), entry| match entry {
                Entry::Record { record, .. } => (
                    records + 1,
                    bytes
                        + record.message.len()
                        + record.target.len()
                        + record.module_path.as_ref().map_or(0, String::len)
                        + record.file.as_ref().map_or(0, String::len),
                ),
                _ => (records, bytes),
            })
    }

    /// The last chunk (by id) whose items' records were kept; 0 if none.
    /// A record that names no chunk counts as from `unplaced`: emitted
    /// between items (by another thread of the task's), or by a worker
    /// whose progress page could not be made, it may come from any chunk
    /// the worker was sent.
    pub(crate) fn last_chunk(&self, unplaced: u64) -> u64 {
        self.entries
            .iter()
            .map(|entry| match entry {
                Entry::Record { record, .. } if record.chunk == 0 => unplaced,
                Entry::Record { record, .. } => record.chunk,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Replaces the records kept by their count (one per worker), in
    /// place of the first; reports of failed items stay.
    pub(crate) fn drop_records(&mut self) {
        let mut kept = Vec::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            match entry {
                Entry::Record { pid, .. } => {
                    let counted = kept.iter_mut().find_map(|e| match e {
                        Entry::Dropped {
                            pid: p,
                            count,
                            here: true,
                        } if *p == pid => Some(count),
                        _ => None,
                    });
                    match counted {
                        Some(count) => *count += 1,
                        None => kept.push(Entry::Dropped {
                            pid,
                            count: 1,
                            here: true,
                        }),
                    }
                }
                other => kept.push(other),
            }
        }
        self.entries = kept;
    }

    /// Emits what was kept, in order.
    pub(crate) fn emit(self) {
        for entry in self.entries {
            match entry {
                Entry::Record {
                    record,
                    pid,
                    task,
                    item,
                } => emit(&record, pid, task, item),
                Entry::Dropped { pid, count, here } => dropped(pid, count, here),
                Entry::Failed {
                    pid,
                    task,
                    item,
                    failure,
                } => failed(pid, task, item, &failure),
            }
        }
    }
}

/// Emits the records of `frame` (without its length prefix) if it is a
/// `Log` frame, as from `task` (the initializer, during a worker's start);
/// `true` if it was one. A malformed log frame is ignored.
pub(crate) fn emit_start_frame(frame: &[u8], pid: u32, task: Option<&'static str>) -> bool {
    let Ok((FromWorker::Log { records, dropped }, body)) = wire::split_frame::<FromWorker>(frame)
    else {
        return false;
    };
    let mut pending = Pending::default();
    let _ = pending.add_log(pid, (records, dropped), body, &|_, _| (task, None));
    // Records of the initializer name it even though no item runs.
    for entry in &mut pending.entries {
        if let Entry::Record { task: t, .. } = entry {
            *t = task;
        }
    }
    super::emitter::hand_off(pending, None);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            level: wire::LOG_INFO,
            target: "app".to_owned(),
            module_path: Some("app::m".to_owned()),
            file: None,
            line: None,
            message: message.to_owned(),
            chunk: 0,
            item: 0,
        }
    }

    #[test]
    fn dropped_records_become_one_count_per_worker_and_failures_stay() {
        let mut pending = Pending::default();
        for (pid, message) in [(1, "a"), (2, "bb"), (1, "ccc")] {
            pending.entries.push(Entry::Record {
                record: record(message),
                pid,
                task: None,
                item: None,
            });
        }
        pending.entries.push(Entry::Failed {
            pid: 2,
            task: None,
            item: 4,
            failure: TaskFailure::BadOutput {
                ty: "T".to_owned(),
                message: "bad".to_owned(),
            },
        });
        // Three records: their messages, targets and module paths.
        assert_eq!(pending.size(), (3, 6 + 3 * 3 + 3 * 6));
        pending.drop_records();
        assert_eq!(pending.size(), (0, 0));
        let kept: Vec<_> = pending
            .entries
            .iter()
            .map(|entry| match entry {
                Entry::Dropped { pid, count, here } => format!("dropped {pid} {count} {here}"),
                Entry::Failed { pid, item, .. } => format!("failed {pid} {item}"),
                Entry::Record { .. } => "record".to_owned(),
            })
            .collect();
        assert_eq!(kept, ["dropped 1 2 true", "dropped 2 1 true", "failed 2 4"]);
        assert_eq!(pending.last_chunk(9), 0, "no record left");
        assert!(!pending.is_empty());
        assert!(Pending::default().is_empty());
    }

    #[test]
    fn a_record_naming_no_chunk_counts_as_the_last_chunk_sent() {
        let mut pending = Pending::default();
        let mut placed = record("placed");
        placed.chunk = 5;
        pending.entries.push(Entry::Record {
            record: placed,
            pid: 1,
            task: None,
            item: Some(0),
        });
        assert_eq!(pending.last_chunk(7), 5);
        pending.entries.push(Entry::Record {
            record: record("unplaced"),
            pid: 1,
            task: None,
            item: None,
        });
        assert_eq!(pending.last_chunk(7), 7);
        assert_eq!(pending.last_chunk(3), 5);
    }
}
