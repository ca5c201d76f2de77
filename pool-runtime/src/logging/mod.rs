//! Logging from tasks: `tracing` events and `log` records emitted in a
//! worker are sent to the pool's process and emitted there again.
//!
//! - The pool tells each worker, in its handshake, the most verbose level
//!   its own process shows ([`forward_level`]: the higher of `tracing`'s
//!   [`LevelFilter::current`](tracing::level_filters::LevelFilter::current)
//!   and [`log::max_level`]). A worker whose level is not `OFF` installs a
//!   global `tracing` subscriber and a `log` logger with that level
//!   ([`capture`]), unless the process already has its own (one installed
//!   before `init()` runs in workers too, and wins). Disabled levels cost a
//!   worker what they cost any program without a subscriber.
//! - Records wait in a bounded buffer in the worker; emitting one never
//!   waits for the pool. A full buffer drops records and counts them; the
//!   pool reports the count as one warning. They are sent as
//!   [`FromWorker::Log`](pool_core::wire::FromWorker::Log) frames: by the
//!   serving thread before the results of the items that emitted them, and
//!   while a long item runs by a thread of their own.
//! - The pool's process emits them on a thread of its own ([`emitter`]),
//!   a worker's results following the records of its frames (and the
//!   failures its death makes, and the results of its items run again
//!   elsewhere, following the records it sent before): a subscriber
//!   that is slow or blocked holds back those results, never a reader
//!   thread, a cancel, terminate or drop. Records waiting there are bounded
//!   too; past that they are dropped and counted the same way.
//! - The pool's process emits each record again ([`emit`]) at its level,
//!   with its target, module, file and line, and the fields `pid` (the
//!   worker's), `task` and `item` (the index in the call's input of the
//!   item that was running, absent in the initializer and between items).
//!   Its filter decides what is shown, as for its own events.

/// One of the pool's own `tracing` events (a worker died, retired, was
/// killed for a timeout...), emitted on the [emitting thread](emitter)
/// instead of here: the threads that notice them often hold the
/// scheduler's lock, and a subscriber that blocks must not hold it (nor a
/// reader thread) with them. They follow the records of tasks handed off
/// before. `counted by` a pool's count of hand-offs (`State::emitting`),
/// its `join` and drop wait for the event as for records. Nothing is
/// handed off for a level the subscriber does not show (without a
/// subscriber, for a program whose `log` logger shows nothing: with
/// `tracing`'s `log` feature on, events go there). `true` if it was
/// handed off. The fields' values are moved into the event: pass owned
/// ones.
macro_rules! pool_event {
    (counted by $count:expr, $level:ident, $($field:tt)+) => {
        $crate::logging::pool_event!(@ Some(::std::sync::Arc::clone($count)), $level, $($field)+)
    };
    (@ $count:expr, $level:ident, $($field:tt)+) => {
        if tracing::enabled!(tracing::Level::$level)
            || $crate::logging::log_shows(tracing::Level::$level)
        {
            $crate::logging::emitter::later($count, move || {
                tracing::event!(tracing::Level::$level, $($field)+)
            });
            true
        } else {
            false
        }
    };
    ($level:ident, $($field:tt)+) => {
        $crate::logging::pool_event!(@ None, $level, $($field)+)
    };
}
pub(crate) use pool_event;

pub(crate) mod capture;
pub(crate) mod emit;
pub(crate) mod emitter;

use pool_core::wire::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_OFF, LOG_TRACE, LOG_WARN};
use tracing::Level;
use tracing::level_filters::LevelFilter;

/// The level workers are to forward: the most verbose one this process
/// shows through `tracing` or `log`, read now.
pub(crate) fn forward_level() -> u8 {
    let tracing = match LevelFilter::current().into_level() {
        None => LOG_OFF,
        Some(level) => from_level(level),
    };
    // `log`'s filter numbers its levels as the wire does: Off = 0 .. Trace = 5.
    let log = log::max_level() as usize as u8;
    tracing.max(log).min(LOG_TRACE)
}

/// The wire's number for a `tracing` level.
pub(crate) fn from_level(level: Level) -> u8 {
    match level {
        Level::ERROR => LOG_ERROR,
        Level::WARN => LOG_WARN,
        Level::INFO => LOG_INFO,
        Level::DEBUG => LOG_DEBUG,
        Level::TRACE => LOG_TRACE,
    }
}

/// The `tracing` level of a wire number; `None` for [`LOG_OFF`] and
/// numbers past [`LOG_TRACE`].
pub(crate) fn to_level(level: u8) -> Option<Level> {
    match level {
        LOG_ERROR => Some(Level::ERROR),
        LOG_WARN => Some(Level::WARN),
        LOG_INFO => Some(Level::INFO),
        LOG_DEBUG => Some(Level::DEBUG),
        LOG_TRACE => Some(Level::TRACE),
        _ => None,
    }
}

/// The `log` filter of a wire number.
pub(crate) fn to_log_filter(level: u8) -> log::LevelFilter {
    match level {
        LOG_OFF => log::LevelFilter::Off,
        LOG_ERROR => log::LevelFilter::Error,
        LOG_WARN => log::LevelFilter::Warn,
        LOG_INFO => log::LevelFilter::Info,
        LOG_DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Whether, with no `tracing` subscriber set, the `log` logger shows
/// `level` (where `tracing`'s `log` feature sends events).
pub(crate) fn log_shows(level: Level) -> bool {
    !tracing::dispatcher::has_been_set() && to_log_filter(from_level(level)) <= log::max_level()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_both_ways() {
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ] {
            assert_eq!(to_level(from_level(level)), Some(level));
            let filter = to_log_filter(from_level(level));
            assert_eq!(filter as usize as u8, from_level(level));
        }
        assert_eq!(to_level(LOG_OFF), None);
        assert_eq!(to_level(9), None);
        assert_eq!(to_log_filter(LOG_OFF), log::LevelFilter::Off);
    }
}
