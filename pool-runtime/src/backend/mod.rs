//! Backends: how worker processes are started, written to, read from,
//! signalled and reaped. The scheduler sees them only through this module:
//! a [`Backend`] starts workers and reports what happens to them as
//! [`Events`]; each worker is held as a [`Link`], one enum over the kinds
//! of worker.
//!
//! - [`local`]: processes of this machine, re-executing this very binary
//!   ([`process`], [`child`]) or forked by the [`forkserver`], each with a
//!   progress page ([`shm`]) and its own reader and writer threads;
//! - `mpi` (feature `mpi`): the other ranks of an MPI job.
//!
//! [`handshake`] is what every worker is told first, whatever its backend.

pub(crate) mod child;
pub(crate) mod forkserver;
pub(crate) mod handshake;
pub(crate) mod local;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
pub(crate) mod process;
pub(crate) mod pull;
pub(crate) mod shm;
pub(crate) mod slab;

use std::sync::Arc;

use crossbeam_channel::Sender;
use pool_core::ProtocolError;
use pool_core::wire::{self, ToWorker};

use crate::error::{Error, ExitCause};
pub(crate) use shm::Running;
pub(crate) use slab::{Body, OneItem, trim as trim_bodies};

/// Attaches the workers of a backend whose workers already exist (MPI
/// ranks) to a new pool, through its events.
pub(crate) type RemoteStart = fn(&Arc<dyn Events>) -> Result<(), Error>;

/// A frame for one worker: an encoded header and a shared body.
pub(crate) struct Outgoing {
    pub(crate) header: Vec<u8>,
    pub(crate) body: Arc<Body>,
    /// Bytes of this frame already written by the dispatching thread.
    pub(crate) skip: usize,
}

/// A worker, as the scheduler holds it.
pub(crate) enum Link {
    /// A process of this machine, on its channel.
    Local(local::LocalLink),
    /// A worker behind a backend's own thread (an MPI rank): frames go to
    /// that thread; it is stopped with an exit frame, honoured between
    /// chunks.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    // only the MPI backend has remote workers
    Remote {
        tx: Sender<Outgoing>,
        /// A page where its running item is recorded, if it has one.
        page: Option<Arc<shm::Progress>>,
    },
}

impl Link {
    /// Sends a frame; `idle`: nothing is in flight to the worker.
    pub(crate) fn send(&self, header: Vec<u8>, body: Arc<Body>, idle: bool, max: usize) {
        match self {
            Link::Local(link) => link.send(header, body, idle, max),
            Link::Remote { tx, .. } => {
                let _ = tx.send(Outgoing {
                    header,
                    body,
                    skip: 0,
                });
            }
        }
    }

    /// Stops the worker now: SIGKILL for a local process, an exit frame
    /// for a remote one.
    pub(crate) fn kill(&self) {
        match self {
            Link::Local(link) => link.kill(),
            Link::Remote { .. } => self.send(
                wire::encode_header(&ToWorker::Exit),
                Arc::new(Body::empty()),
                false,
                usize::MAX,
            ),
        }
    }

    /// A local worker that exited while something else holds its channel
    /// open has the channel cut, so its reader sees the end.
    pub(crate) fn notice_exit(&self) {
        if let Link::Local(link) = self {
            link.notice_exit();
        }
    }

    fn page(&self) -> Option<&shm::Progress> {
        match self {
            Link::Local(link) => Some(link.page()),
            Link::Remote { page, .. } => page.as_deref(),
        }
    }

    /// Whether chunks sent to it can be taken back ([`Link::steal_after`]).
    pub(crate) fn can_take_back(&self) -> bool {
        matches!(self, Link::Local(_))
    }

    /// What the worker records as running, if it records it.
    pub(crate) fn running(&self) -> Option<Running> {
        self.page().map(shm::Progress::read)
    }

    /// Takes back the chunks after `running` up to `last` sent to the
    /// worker, if it has not started any of them: see
    /// [`shm::Progress::steal_after`]. Only a local worker's: a remote
    /// worker's page is a copy kept by its backend, on which the worker
    /// itself claims nothing.
    pub(crate) fn steal_after(&self, running: u64, last: u64) -> Option<u64> {
        match self {
            Link::Local(link) => link.page().steal_after(running, last),
            Link::Remote { .. } => None,
        }
    }
}

/// What a backend tells the scheduler about its workers, and asks it.
/// Implemented by the scheduler; a backend never reaches into its state.
pub(crate) trait Events: Send + Sync {
    /// The handshake and initializer every worker of the pool gets.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // for backends that attach existing workers
    fn launch(&self) -> &handshake::Launch;
    /// How many workers the pool has.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // as above
    fn processes(&self) -> usize;
    /// Whether the pool is shutting down: no worker is to be started.
    fn is_stopping(&self) -> bool;
    /// A worker start begins: counted until [`Events::launched`], so that
    /// shutdown waits for it. `false` (and not counted) once stopping.
    fn launching(&self) -> bool;
    /// A worker start counted by [`Events::launching`] is over.
    fn launched(&self);
    /// A replacement for `slot` could not be started.
    fn start_failed(&self, slot: usize, err: Error);
    /// Adds a ready worker in `slot`. Its frames are then handed to
    /// [`Events::deliver_all`], and [`Events::detach`] is called once it is
    /// gone. `false` (nothing attached) once the pool is terminated.
    fn attach(&self, slot: usize, pid: u32, link: Link) -> bool;
    /// Frames from the worker in `slot`, in order, drained from `frames`.
    /// On a bad frame, those before it are handled and the error returned.
    fn deliver_all(
        &self,
        slot: usize,
        pid: u32,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError>;
    /// One frame from the worker in `slot` (see [`Events::deliver_all`]).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // the MPI backend delivers frame by frame
    fn deliver(&self, slot: usize, pid: u32, frame: Vec<u8>) -> Result<(), ProtocolError> {
        self.deliver_all(slot, pid, &mut vec![frame])
    }
    /// `bytes` of results frames were read from the memory of the worker
    /// `pid` in `slot` ([`pull`]); told before those frames are delivered.
    fn pulled(&self, slot: usize, pid: u32, bytes: u64);
    /// The worker in `slot` is ending: nothing more is sent to it, and it
    /// is no longer signalled.
    fn mark_dying(&self, slot: usize);
    /// The worker `pid` in `slot` is gone (nothing happens if another
    /// worker is in the slot now).
    fn detach(&self, slot: usize, pid: u32, cause: ExitCause, protocol: Option<ProtocolError>);
}

/// How a pool's workers are started.
pub(crate) trait Backend:
    Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe
{
    /// Starts workers for `slots` and attaches each; returns once every
    /// one is attached or has failed (the first failure).
    fn start_all(&self, slots: &[usize], events: &Arc<dyn Events>) -> Result<(), Error>;
    /// Starts a replacement for `slot` without waiting for it.
    fn respawn(&self, slot: usize, events: &Arc<dyn Events>);
    /// Kills the workers still starting (the pool is shutting down).
    fn abort_starts(&self);
}
