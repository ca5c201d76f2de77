//! What rank 0's `pool-mpi` thread keeps: its commands, the endpoints (a
//! rank, or one local worker of a rank) and their phases, the pools being
//! attached, and the messages under way.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) enum Command {
    Attach(AttachRequest),
    Finalize(Sender<()>),
}

pub(super) struct AttachRequest {
    pub(super) shared: Arc<dyn Events>,
    pub(super) reply: Sender<Result<(), Error>>,
    pub(super) deadline: Instant,
}

/// What a rank reports of a local worker that died ([`TAG_DIED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Died {
    /// Its index among the rank's local workers.
    pub(crate) local: u32,
    pub(crate) pid: u32,
    pub(crate) cause: ExitCause,
    /// The `(chunk, item)` its progress page says it was running.
    pub(crate) running: Option<(u64, u64)>,
}

impl Died {
    const LEN: usize = 30;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, value) = match self.cause {
            ExitCause::Code(code) => (0u8, code),
            ExitCause::Signal(signal) => (1, signal),
            _ => (2, 0),
        };
        let (busy, chunk, item) = match self.running {
            Some((chunk, item)) => (1u8, chunk, item),
            None => (0, 0, 0),
        };
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.local.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&value.to_le_bytes());
        out.push(busy);
        out.extend_from_slice(&chunk.to_le_bytes());
        out.extend_from_slice(&item.to_le_bytes());
        out
    }

    pub(super) fn decode(data: &[u8]) -> Option<Died> {
        if data.len() != Self::LEN {
            return None;
        }
        let u32_at = |at: usize| {
            data.get(at..at + 4)?
                .try_into()
                .ok()
                .map(u32::from_le_bytes)
        };
        let u64_at = |at: usize| {
            data.get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        let value = u32_at(9)? as i32;
        let cause = match data[8] {
            0 => ExitCause::Code(value),
            1 => ExitCause::Signal(value),
            _ => ExitCause::Unknown,
        };
        let running = match data[13] {
            0 => None,
            _ => Some((u64_at(14)?, u64_at(22)?)),
        };
        Some(Died {
            local: u32_at(0)?,
            pid: u32_at(4)?,
            cause,
            running,
        })
    }
}

/// The body of a [`TAG_START`] message.
pub(crate) fn start_body(local: u32, chunk: u64, item: u64) -> [u8; 20] {
    let mut body = [0u8; 20];
    body[..4].copy_from_slice(&local.to_le_bytes());
    body[4..12].copy_from_slice(&chunk.to_le_bytes());
    body[12..].copy_from_slice(&item.to_le_bytes());
    body
}

pub(super) fn parse_start(data: &[u8]) -> Option<(u32, u64, u64)> {
    if data.len() != 20 {
        return None;
    }
    Some((
        u32::from_le_bytes(data.get(..4)?.try_into().ok()?),
        u64::from_le_bytes(data.get(4..12)?.try_into().ok()?),
        u64::from_le_bytes(data.get(12..20)?.try_into().ok()?),
    ))
}

/// Where an endpoint stands, seen from rank 0.
pub(super) enum Phase {
    /// Serving no pool.
    Free,
    /// Sent the handshake of batch `batch`; waiting for `Ready`.
    Hello { batch: u64, slot: usize },
    /// Sent the initializer; waiting for `InitDone`.
    Init { batch: u64, slot: usize },
    /// Handshake done; waiting for the rest of its batch.
    Ready { batch: u64, slot: usize },
    /// The replacement of a local worker that died, in its handshake
    /// (`init`: the initializer was sent): it takes `slot` of the pool.
    Rejoin {
        shared: Arc<dyn Events>,
        slot: usize,
        init: bool,
    },
    /// A worker of a pool: frames for it arrive on `rx`.
    Attached {
        shared: Arc<dyn Events>,
        slot: usize,
        rx: Receiver<Outgoing>,
    },
    /// Sent `Exit`; waiting for `BYE` (or, for a local worker that was
    /// busy, its death), then detached from `pool` if any.
    Releasing {
        pool: Option<(Arc<dyn Events>, usize)>,
    },
    /// Broke the protocol: never given work again.
    Lost,
    /// Its rank acknowledged the end of the job.
    Done,
}

/// One worker a pool may use: a worker rank that runs tasks itself, or one
/// local worker process of a rank.
pub(super) struct Endpoint {
    pub(super) rank: usize,
    /// Its index among its rank's local workers (0 for a rank serving itself).
    pub(super) local: usize,
    /// One of a rank's local workers (not the rank itself).
    pub(super) relayed: bool,
    pub(super) phase: Phase,
    pub(super) stream: Assembler,
    /// The pid its pool knows it by: the rank for a rank serving itself,
    /// the local process's pid otherwise.
    pub(super) pid: u32,
    /// A local worker's progress page on rank 0, given to its pool: it
    /// stays idle, except where the rank reports an item under a timeout
    /// and, at a death, the item that was running, so the scheduler reads
    /// what a local worker's own page would say.
    pub(super) page: Option<Arc<Progress>>,
}

impl Endpoint {
    /// How messages name it.
    pub(super) fn name(&self) -> String {
        if self.relayed {
            format!("local worker {} of MPI rank {}", self.local, self.rank)
        } else {
            format!("MPI rank {}", self.rank)
        }
    }
}

/// A worker rank: its endpoints are `first .. first + count`.
pub(super) struct RankInfo {
    pub(super) first: usize,
    pub(super) count: usize,
    /// Acknowledged the end of the job.
    pub(super) done: bool,
}

/// A progress page for a relayed endpoint, which the scheduler can never
/// take chunks back through (nothing on rank 0 claims them: the local
/// worker's claims happen on its own page).
pub(super) fn relay_page() -> Option<Arc<Progress>> {
    let mut page = Progress::create().ok()?;
    // Only rank 0 maps it: no descriptor per endpoint stays open.
    page.forget_fd();
    // A claim far above any chunk id: the pool's `steal_after` sees the
    // worker past every chunk, so it never takes back work sent to a rank.
    page.claim(1 << 62);
    Some(Arc::new(page))
}

/// The order in which free endpoints, given as `(rank, local)`, go to a
/// pool: the first local worker of every rank, then the second, ..., so a
/// pool smaller than the job spreads over the ranks.
pub(super) fn endpoint_order(places: &[(usize, usize)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_by_key(|&e| (places[e].1, places[e].0));
    order
}

/// A pool being attached: its ranks go through the handshake together.
pub(super) struct Batch {
    pub(super) id: u64,
    pub(super) shared: Arc<dyn Events>,
    pub(super) reply: Sender<Result<(), Error>>,
    pub(super) deadline: Instant,
    pub(super) endpoints: Vec<usize>,
}

/// A send in progress, with the buffer it reads from.
pub(super) struct PendingSend {
    pub(super) request: Option<Request<'static, [u8]>>,
    pub(super) _keep: Keep,
}

// Never read: each variant only keeps a buffer alive while MPI reads it.
#[allow(dead_code)]
pub(super) enum Keep {
    Owned(Box<[u8]>),
    Shared(Arc<Body>),
}
