//! [`Error`]: why a pool operation failed.

use std::fmt;
use std::time::Duration;

pub use pool_core::{ProtocolError, RegistryError, TaskFailure};

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// It exited with this code (`std::process::exit(3)` gives `Code(3)`).
    Code(i32),
    /// It was killed by this signal (`9` for `SIGKILL`, `6` for an abort).
    Signal(i32),
    /// Its status could not be read.
    Unknown,
}

impl ExitCause {
    /// The signal's name (`"SIGKILL"`), for a death by signal.
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn abort_on(x: u64) -> u64 { if x == 1 { std::process::abort() } x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// use pool_runtime::ExitCause;
    /// let out: Vec<_> = pool.chunksize(1).imap(task!(abort_on), [0, 1, 2]).collect();
    /// match &out[1] {
    ///     Err(Error::WorkerDied { cause, index: 1, .. }) => {
    ///         assert_eq!(*cause, ExitCause::Signal(6));
    ///         assert_eq!(cause.signal_name(), Some("SIGABRT"));
    ///         assert!(cause.to_string().starts_with("was killed by signal 6 (SIGABRT)"));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(ExitCause::Code(3).signal_name(), None);
    /// assert_eq!(ExitCause::Code(3).to_string(), "exited with code 3");
    /// # Ok(()) }
    /// ```
    pub fn signal_name(&self) -> Option<&'static str> {
        let ExitCause::Signal(sig) = *self else {
            return None;
        };
        Some(match sig {
            libc::SIGHUP => "SIGHUP",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGILL => "SIGILL",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGKILL => "SIGKILL",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGALRM => "SIGALRM",
            libc::SIGTERM => "SIGTERM",
            libc::SIGXCPU => "SIGXCPU",
            libc::SIGXFSZ => "SIGXFSZ",
            libc::SIGSYS => "SIGSYS",
            _ => "an unnamed signal",
        })
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCause::Code(code) => write!(f, "exited with code {code}"),
            ExitCause::Signal(sig) => {
                let name = self.signal_name().unwrap_or("?");
                write!(f, "was killed by signal {sig} ({name})")?;
                f.write_str(match *sig {
                    libc::SIGABRT => {
                        ": it aborted (`abort()`, a panic with panic=abort, a stack overflow or a failed allocation; the worker's stderr says which)"
                    }
                    libc::SIGSEGV | libc::SIGBUS => ": an invalid memory access",
                    libc::SIGKILL => ": killed from outside, or by the kernel's out-of-memory killer",
                    _ => "",
                })
            }
            ExitCause::Unknown => f.write_str("ended for an unknown reason"),
        }
    }
}

/// Why a pool operation failed.
///
/// Errors about one item name the task (its full path) and the item's index
/// within the call, so `Err` from `starmap` over 10 000 tuples says which one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A worker process (or a thread for it) could not be started.
    #[error("failed to start a worker process: {0}")]
    Spawn(#[source] std::io::Error),
    /// A worker started but did not complete the handshake.
    #[error("worker process {pid} failed during start-up: {reason}")]
    Startup {
        /// The worker's process id.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
    /// This program never called [`init`](crate::init), so its own binary
    /// cannot serve as a worker.
    #[error(
        "this program cannot start pool workers: call `pool_runtime::init()` as the first line of `main` (or mark `main` with `#[pool_runtime::main]`); in a test binary add `pool_runtime::test_support!();`"
    )]
    NotWorkerCapable,
    /// This process was started as a pool worker but its `main` never reached
    /// the worker entry point, and then tried to create a pool itself.
    #[error(
        "this process was started as a pool worker but never reached the worker entry point: call `pool_runtime::init()` as the first line of `main` (or use `#[pool_runtime::main]`); in a test binary add `pool_runtime::test_support!();`"
    )]
    WorkerContext,
    /// A task tried to create a pool inside a worker.
    #[error("a pool cannot be created inside a task running in a worker process")]
    NestedPool,
    /// A builder setting or call option is out of range.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// The task panicked inside a worker.
    #[error("task `{task}` panicked on item {index} at {location}: {message}")]
    TaskPanicked {
        /// The task's full path.
        task: &'static str,
        /// The item's index within the call.
        index: usize,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
        /// A backtrace, when `RUST_BACKTRACE` was set for the worker.
        backtrace: Option<String>,
    },
    /// The worker running the item died (abort, signal, `process::exit`).
    #[error("worker process {pid} running task `{task}` on item {index} {cause}")]
    WorkerDied {
        /// The task's full path.
        task: &'static str,
        /// The item's index within the call.
        index: usize,
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
    },
    /// The item ran longer than the call's
    /// [`timeout`](crate::Call::timeout): its worker was killed and
    /// replaced. (A wait for an async result that ran out is
    /// [`Error::WaitTimeout`]; the work goes on.)
    #[error(
        "task `{task}` on item {index} exceeded its timeout of {timeout:?}; worker process {pid} was killed"
    )]
    TaskTimeout {
        /// The task's full path.
        task: &'static str,
        /// The item's index within the call.
        index: usize,
        /// The worker's process id.
        pid: u32,
        /// The timeout that was exceeded.
        timeout: Duration,
    },
    /// An argument or result could not be encoded or decoded.
    #[error("task `{task}` on item {index}: {failure}")]
    Serialization {
        /// The task's full path.
        task: &'static str,
        /// The item's index within the call.
        index: usize,
        /// What failed, with the type involved.
        failure: TaskFailure,
    },
    /// The worker that ran the item has no task with the item's id: it runs
    /// another build of the program (with MPI, a rank started from another
    /// binary).
    #[error(
        "task `{task}` on item {index}: the worker has no task with id {id:#018x} (it runs another build of this program)"
    )]
    UnknownTask {
        /// The task's full path.
        task: &'static str,
        /// The item's index within the call.
        index: usize,
        /// The task id the worker did not know.
        id: u64,
    },
    /// A worker sent a malformed frame, or the channel failed.
    #[error("protocol error with worker process {pid}")]
    Protocol {
        /// The worker's process id.
        pid: u32,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
    /// Two tasks share an id.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The pool was closed: it accepts no new work.
    #[error("the pool is closed and accepts no new work")]
    Closed,
    /// The pool was terminated or dropped before this work finished.
    #[error("the pool was terminated before this work finished")]
    Terminated,
    /// The call was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel),
    /// [`Pool::cancel_all`](crate::Pool::cancel_all)) before its result was in.
    #[error("the call was cancelled before its result was in")]
    Cancelled,
    /// A wait ran out: an async result was not ready within the time given
    /// to [`get_timeout`](crate::AsyncResult::get_timeout). Nothing was
    /// stopped; the work goes on and the result stays retrievable. (An item
    /// that ran over the call's `timeout` and was killed is
    /// [`Error::TaskTimeout`].)
    #[error("the result was not ready within {0:?}")]
    WaitTimeout(Duration),
    /// The outcome of an async result was already returned once.
    #[error("this result was already retrieved")]
    AlreadyRetrieved,
    /// The pool's initializer failed in a worker.
    #[error("the initializer `{task}` failed in worker process {pid}: {reason}")]
    Initializer {
        /// The initializer task's full path.
        task: &'static str,
        /// The worker's process id.
        pid: u32,
        /// The panic, error or exit.
        reason: String,
    },
    /// The pool cannot go on: no worker runs and none can be started, or
    /// a result it waited for was lost.
    #[error("the pool stopped: {reason}")]
    Broken {
        /// What happened, with the cause's message.
        reason: String,
        /// The error that caused it, if one did (e.g. [`Error::Spawn`]
        /// with `EMFILE`, or an MPI launch error).
        #[source]
        source: Option<std::sync::Arc<Error>>,
    },
    /// A value could not be shared with the workers
    /// ([`Pool::share`](crate::Pool::share),
    /// [`Pool::share_slice`](crate::Pool::share_slice)): it could not be
    /// encoded, or its memfd could not be created or written.
    #[error("could not share a value of type `{ty}`: {reason}")]
    Share {
        /// The shared type's name.
        ty: &'static str,
        /// What went wrong.
        reason: String,
        /// The system call's error, if one failed.
        #[source]
        source: Option<std::io::Error>,
    },
}

impl Error {
    /// The same failure of a whole call, for another of its items: the
    /// kinds a call ends with are repeated, anything else as
    /// [`Error::Terminated`].
    pub(crate) fn again(&self) -> Error {
        match self {
            Error::Closed => Error::Closed,
            Error::Cancelled => Error::Cancelled,
            Error::Broken { reason, source } => Error::Broken {
                reason: reason.clone(),
                source: source.clone(),
            },
            _ => Error::Terminated,
        }
    }

    /// The index within its call of the item this error is about, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn abort_on(x: u64) -> u64 { if x == 1 { std::process::abort() } x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out: Vec<_> = pool.chunksize(1).imap(task!(abort_on), [0, 1, 2]).collect();
    /// let failed: Vec<usize> = out.iter().filter_map(|r| r.as_ref().err()?.index()).collect();
    /// assert_eq!(failed, [1]);
    /// assert_eq!(Error::Closed.index(), None); // not about one item
    /// # Ok(()) }
    /// ```
    pub fn index(&self) -> Option<usize> {
        match self {
            Error::TaskPanicked { index, .. }
            | Error::WorkerDied { index, .. }
            | Error::TaskTimeout { index, .. }
            | Error::UnknownTask { index, .. }
            | Error::Serialization { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// Attaches task and index to a failure reported by a worker.
    pub(crate) fn from_failure(task: &'static str, index: usize, failure: TaskFailure) -> Error {
        match failure {
            TaskFailure::Panicked {
                message,
                location,
                backtrace,
            } => Error::TaskPanicked {
                task,
                index,
                message,
                location,
                backtrace,
            },
            TaskFailure::UnknownTask { id } => Error::UnknownTask { task, index, id },
            other => Error::Serialization {
                task,
                index,
                failure: other,
            },
        }
    }
}

/// The message of a panic's payload, as the default panic hook shows it
/// (`&str` or `String`; anything else is `Box<dyn Any>`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}
