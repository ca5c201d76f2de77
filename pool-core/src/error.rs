//! Errors that cross the wire or come from reading it.

use serde::{Deserialize, Serialize};

/// Why one item failed inside a worker. Plain data: it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TaskFailure {
    /// The task function panicked.
    #[error("panicked at {location}: {message}")]
    Panicked {
        /// The panic message (`"explicit panic"` when the payload is not a string).
        message: String,
        /// `file:line:column` of the panic, or `"<unknown>"`.
        location: String,
        /// A backtrace, when `RUST_BACKTRACE` asked the worker for one.
        backtrace: Option<String>,
    },
    /// The worker could not decode the arguments it received.
    #[error("could not decode arguments of type `{ty}`: {message}")]
    BadArguments {
        /// The argument struct's type name.
        ty: String,
        /// What the decoder reported.
        message: String,
    },
    /// The worker could not encode the task's return value.
    #[error("could not encode the result of type `{ty}`: {message}")]
    BadOutput {
        /// The return type's name.
        ty: String,
        /// What the encoder reported.
        message: String,
    },
    /// The parent could not encode the arguments, so they were never sent:
    /// a `Serialize` impl failed, postcard cannot write the shape (serde's
    /// `flatten`), or the encoding exceeds the frame limit.
    #[error("the parent could not encode arguments of type `{ty}`: {message}")]
    Unencodable {
        /// The argument struct's type name.
        ty: String,
        /// What the encoder reported.
        message: String,
    },
    /// The worker has no task with this id (a different binary answered).
    #[error("the worker has no task with id {id:#018x}")]
    UnknownTask {
        /// The id that was asked for.
        id: u64,
    },
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The channel failed.
    #[error("the worker channel failed")]
    Io(#[source] std::io::Error),
    /// The peer closed the channel between frames.
    #[error("the channel was closed")]
    Closed,
    /// The peer closed the channel in the middle of a frame.
    #[error("a frame was truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes announced.
        expected: usize,
        /// Bytes received before the end of the stream.
        got: usize,
    },
    /// A frame announced a size above the limit; nothing was allocated.
    #[error("a frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// A frame's header or body could not be decoded.
    #[error("a malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}")]
    Version {
        /// This side's version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer has a different set of tasks (it is a different binary).
    #[error(
        "the worker's task registry differs from the parent's (fingerprint {theirs:#018x}, expected {ours:#018x}): it runs a different binary"
    )]
    Fingerprint {
        /// The parent's fingerprint.
        ours: u64,
        /// The worker's fingerprint.
        theirs: u64,
    },
    /// The peer sent a frame that is valid but not expected now.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

impl From<std::io::Error> for ProtocolError {
    fn from(err: std::io::Error) -> Self {
        ProtocolError::Io(err)
    }
}
