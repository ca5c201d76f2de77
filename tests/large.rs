//! Large arguments through shared memory, through real workers: a chunk
//! whose encoded arguments take 256 KiB or more is not written to the
//! worker's socket but mapped by the worker from a memfd of the pool's
//! process. Checked here: every shape round-trips exactly (and large
//! results come back exactly through the socket), the worker really reads
//! a mapping (its `/proc/self/maps` shows it while the task runs, and not
//! for small chunks), kills, timeouts, cancelled `imap`s, replacement and
//! forked workers, and no memfd left once the pool is gone. Every wait is
//! bounded.
//!
//! The tests run one at a time (`serial()`), so that each can check that
//! no body memfd outlives its pool.

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::within;
use pool_runtime::prelude::*;
use pool_runtime::{TaskFailure, task};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pool_runtime::test_support!();

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memfds of this process that hold chunk bodies.
fn body_memfds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .filter(|link| link.starts_with("/memfd:pool-runtime-body"))
        .collect()
}

/// Whether this process maps a chunk body now (true in a worker while it
/// runs an item of a chunk that came through shared memory, and after, as
/// long as the worker keeps that mapping for a later chunk).
#[task]
fn maps_a_body() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.contains("/memfd:pool-runtime-body"))
        .unwrap_or(false)
}

/// Every shape the issue names, in one argument list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Nested {
    id: u32,
    label: String,
    weights: Vec<f32>,
}

#[task]
fn echo(
    bytes: Vec<u8>,
    text: String,
    floats: Vec<f64>,
    ints: Vec<u64>,
    raw: serde_bytes::ByteBuf,
    nested: Vec<Nested>,
) -> (
    Vec<u8>,
    String,
    Vec<f64>,
    Vec<u64>,
    serde_bytes::ByteBuf,
    Vec<Nested>,
) {
    (bytes, text, floats, ints, raw, nested)
}

/// The length of `data`, whether it is read from a mapped body, and a
/// checksum of it.
#[task]
fn inspect(data: &[u8]) -> (u64, bool, u64) {
    (
        data.len() as u64,
        in_a_body_mapping(data.as_ptr()),
        sum(data),
    )
}

/// Aborts (the worker dies) when `die`; else the length of `data`.
#[task]
fn die_on(data: Vec<u8>, die: bool) -> u64 {
    if die {
        std::process::abort();
    }
    data.len() as u64
}

/// Sleeps for ever when `stuck`; else the checksum of `data`.
#[task]
fn stuck_on(data: Vec<u8>, stuck: bool) -> u64 {
    if stuck {
        loop {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    data.iter().map(|&b| b as u64).sum()
}

type Shapes = (
    Vec<u8>,
    String,
    Vec<f64>,
    Vec<u64>,
    serde_bytes::ByteBuf,
    Vec<Nested>,
);

/// Arguments of about `bytes` encoded bytes, all different for `seed`.
fn shapes(seed: u64, bytes: usize) -> Shapes {
    let n = bytes / 6;
    let data: Vec<u8> = (0..n).map(|i| (i as u64 * 31 + seed) as u8).collect();
    let text: String = (0..n)
        .map(|i| char::from(b'a' + ((i as u64 + seed) % 26) as u8))
        .collect();
    let floats: Vec<f64> = (0..n / 8).map(|i| i as f64 * 0.5 + seed as f64).collect();
    let ints: Vec<u64> = (0..n / 8).map(|i| (i as u64) << (i % 50) ^ seed).collect();
    let raw = serde_bytes::ByteBuf::from(data.iter().rev().copied().collect::<Vec<u8>>());
    let nested = (0..(n / 64).max(1) as u32)
        .map(|id| Nested {
            id,
            label: format!("item {id} of {seed}"),
            weights: vec![id as f32 / 3.0; 4],
        })
        .collect();
    (data, text, floats, ints, raw, nested)
}

fn sum(data: &[u8]) -> u64 {
    data.iter().map(|&b| b as u64).sum()
}

#[test]
fn large_arguments_and_results_of_every_shape_round_trip_exactly() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        // Small, just over the threshold, several MiB, and small again: the
        // first item decides nothing, each chunk goes its own way.
        let sizes = [
            1 << 10,
            300 << 10,
            3 << 20,
            2 << 10,
            5 << 20,
            600 << 10,
            100,
        ];
        let inputs: Vec<Shapes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| shapes(i as u64, size))
            .collect();
        let out = pool
            .starmap(task!(echo), inputs.clone())
            .expect("every item runs");
        assert_eq!(out.len(), inputs.len());
        for (i, (got, sent)) in out.iter().zip(&inputs).enumerate() {
            assert!(
                got == sent,
                "item {i} ({} bytes) came back different",
                sizes[i]
            );
        }
        // A first item that is large: it too goes straight to shared memory.
        let first_large: Vec<Shapes> = vec![shapes(9, 4 << 20), shapes(10, 10)];
        let out = pool
            .starmap(task!(echo), first_large.clone())
            .expect("runs");
        assert!(out == first_large, "a large first item came back different");
        drop(pool);
        assert_eq!(
            body_memfds(),
            Vec::<String>::new(),
            "a body memfd outlived the pool"
        );
    });
}

/// `len` bytes, all different for `seed`.
fn some_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// `len` doubles, the awkward ones among them (NaNs with payloads, signed
/// zeros, infinities, subnormals).
fn some_doubles(seed: u64, len: usize) -> Vec<f64> {
    let awkward = [
        f64::NAN,
        f64::from_bits(0xfff8_0000_dead_beef),
        -0.0,
        0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE / 4.0,
        f64::MAX,
    ];
    (0..len)
        .map(|i| match i % 16 {
            k @ 0..8 => awkward[k],
            _ => i as f64 * 0.25 + seed as f64,
        })
        .collect()
}

#[task]
fn bytes_back(seed: u8, len: usize) -> Vec<u8> {
    some_bytes(seed, len)
}

/// Bytes of results `pool` has read from its workers' memory.
fn pulled(pool: &Pool) -> u64 {
    pool.stats().workers.iter().map(|w| w.pulled_bytes).sum()
}

/// How many bytes `pool` reads from its worker's memory while its call of
/// `bytes_back(seed, len)` returns, which must arrive exactly.
fn pulled_for(pool: &Pool, seed: u8, len: usize) -> u64 {
    let before = pulled(pool);
    let got = pool.apply(task!(bytes_back), (seed, len)).expect("runs");
    assert!(
        got == some_bytes(seed, len),
        "the bytes of a {len}-byte result"
    );
    pulled(pool) - before
}

/// Makes this worker's memory unreadable by an unprivileged pool, as
/// setuid, file capabilities or a credential change would.
#[task]
fn undumpable() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
}

#[task]
fn doubles_back(seed: u64, len: usize) -> Vec<f64> {
    some_doubles(seed, len)
}

#[task]
fn singles_back(seed: u64, len: usize) -> Vec<f32> {
    some_doubles(seed, len).iter().map(|&x| x as f32).collect()
}

fn bits64(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The bits of each float, as received.
#[task]
fn float_bits(doubles: Vec<f64>, singles: &[f32]) -> (Vec<u64>, Vec<u32>) {
    (bits64(&doubles), bits32(singles))
}

/// `Vec<f64>` and `&[f32]` parameters travel as one block of bytes: every
/// bit arrives (NaN payloads, signed zeros, subnormals), at every length,
/// through the socket and through a mapped chunk alike.
#[test]
fn float_vector_arguments_arrive_bit_for_bit() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let lens = [0usize, 1, 3, 1025, 40_000, 400_000];
        let inputs: Vec<(Vec<f64>, Vec<f32>)> = lens
            .iter()
            .map(|&n| {
                let d = some_doubles(n as u64, n);
                let s = d.iter().rev().map(|&x| x as f32).collect();
                (d, s)
            })
            .collect();
        let out = pool
            .call()
            .chunksize(2)
            .starmap(
                task!(float_bits),
                inputs.iter().map(|(d, s)| (d.clone(), s.as_slice())),
            )
            .expect("every item runs");
        for ((d, s), (got_d, got_s)) in inputs.iter().zip(&out) {
            assert!(*got_d == bits64(d), "{} doubles", d.len());
            assert!(*got_s == bits32(s), "{} singles", s.len());
        }
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// Results that are exactly `Vec<u8>`, `Vec<f64>` or `Vec<f32>` are
/// written and read in one copy, not element by element: every length,
/// byte and bit (NaN payloads included) comes back, small or large, in
/// any call.
#[test]
fn byte_and_number_vector_results_come_back_bit_for_bit() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let lens = [0usize, 1, 7, 513, 4097, 300 << 10, 3 << 20];
        let args: Vec<(u8, usize)> = lens.iter().map(|&n| (n as u8, n)).collect();
        let bytes = pool.starmap(task!(bytes_back), args.clone()).expect("runs");
        for (got, &(seed, len)) in bytes.iter().zip(&args) {
            assert!(*got == some_bytes(seed, len), "a {len}-byte result");
        }
        let args: Vec<(u64, usize)> = lens.iter().map(|&n| (n as u64, n / 8)).collect();
        let doubles = pool
            .call()
            .chunksize(3)
            .starmap(task!(doubles_back), args.clone())
            .expect("runs");
        for (got, &(seed, len)) in doubles.iter().zip(&args) {
            assert!(
                bits64(got) == bits64(&some_doubles(seed, len)),
                "a result of {len} doubles"
            );
        }
        for &(seed, len) in &args {
            let got = pool.apply(task!(singles_back), (seed, len)).expect("runs");
            let want: Vec<f32> = some_doubles(seed, len).iter().map(|&x| x as f32).collect();
            assert!(bits32(&got) == bits32(&want), "a result of {len} singles");
        }
        let lazily: Vec<Vec<u8>> = pool
            .istarmap(task!(bytes_back), [(1, 5 << 20), (2, 0), (3, 100)])
            .collect::<Result<_, _>>()
            .expect("runs");
        assert!(lazily == [some_bytes(1, 5 << 20), some_bytes(2, 0), some_bytes(3, 100)]);
        // Through an async call's result thread as well.
        let args = vec![(4, 2 << 20), (5, 10), (6, 1 << 20)];
        let later = pool
            .starmap_async(task!(bytes_back), args.clone())
            .expect("submits")
            .get()
            .expect("runs");
        for (got, &(seed, len)) in later.iter().zip(&args) {
            assert!(*got == some_bytes(seed, len), "an async {len}-byte result");
        }
    });
}

/// A result whose `Deserialize` panics in the parent.
#[derive(Debug, Serialize)]
struct Grenade(#[serde(with = "serde_bytes")] Vec<u8>);

impl<'de> Deserialize<'de> for Grenade {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Grenade, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?.into_vec();
        if bytes.first() == Some(&0xFF) {
            panic!("the grenade went off in the parent");
        }
        Ok(Grenade(bytes))
    }
}

#[task]
fn grenade(armed: bool, len: usize) -> Grenade {
    let mut bytes = vec![1u8; len];
    if armed {
        bytes[0] = 0xFF;
    }
    Grenade(bytes)
}

/// A large result whose `Deserialize` panics: the panic reaches the
/// caller, as it does for a small one (results are decoded on the
/// caller's thread, never on a thread of the pool, which must not die of
/// it), and the pool goes on with the same workers.
#[test]
fn a_large_result_whose_decoding_panics_panics_in_the_caller_and_the_pool_goes_on() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(1).build().expect("a pool starts");
        let before = pool.worker_pids();
        for len in [100, 4 << 20] {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.apply(task!(grenade), (true, len))
            }));
            let payload = caught.expect_err("the decoding panic reached the caller");
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(message.contains("grenade went off"), "{message}");
            let fine = pool.apply(task!(grenade), (false, len)).expect("runs");
            assert_eq!(fine.0.len(), len);
        }
        assert_eq!(pool.worker_pids(), before, "a worker was replaced");
    });
}

/// The same panic in an async call fails that call with an error naming
/// the panic: the thread that serves every async call survives it, and
/// later async calls complete.
#[test]
fn an_async_result_whose_decoding_panics_fails_its_call_and_later_async_calls_complete() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(1).build().expect("a pool starts");
        for len in [100, 4 << 20] {
            let err = pool
                .apply_async(task!(grenade), (true, len))
                .expect("submits")
                .get()
                .expect_err("its decoding panicked");
            match &err {
                Error::Serialization {
                    failure: TaskFailure::BadOutput { message, .. },
                    ..
                } => assert!(
                    message.contains("Deserialize panicked: the grenade went off"),
                    "{message}"
                ),
                other => panic!("{other:?}"),
            }
            let fine = pool
                .starmap_async(task!(bytes_back), [(7, len), (8, 3)])
                .expect("submits")
                .get()
                .expect("later async calls complete");
            assert!(fine == [some_bytes(7, len), some_bytes(8, 3)]);
        }
    });
}

#[test]
fn large_chunks_are_read_from_a_mapping_and_small_ones_from_the_socket() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let sizes = [100usize, 4 << 20, 200, 1 << 20, 300 << 10, 64 << 10];
        let inputs: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i % 253) as u8).collect())
            .collect();
        // One item per chunk, so each chunk's size is the item's.
        let out = pool
            .call()
            .chunksize(1)
            .map(task!(inspect), inputs.clone())
            .expect("every item runs");
        for ((len, mapped, checksum), data) in out.iter().zip(&inputs) {
            assert_eq!(*len, data.len() as u64);
            assert_eq!(*checksum, sum(data), "the bytes of a {len}-byte item");
            assert_eq!(
                *mapped,
                data.len() >= 256 << 10,
                "a {len}-byte item was (not) mapped"
            );
        }
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// A results frame of 256 KiB or more is read by the pool from the
/// worker's memory (the worker writes only a small frame naming it); a
/// smaller one comes through the socket. For a spawned worker, its
/// replacements (`max_tasks_per_child`), and a worker forked by the fork
/// server.
#[test]
fn large_results_are_read_from_the_workers_memory_and_small_ones_from_the_socket() {
    let _serial = serial();
    within(120, || {
        let pools = [
            ("spawned", Pool::builder().processes(1).build()),
            // Each call below on a new worker.
            (
                "replaced",
                Pool::builder().processes(1).max_tasks_per_child(1).build(),
            ),
            (
                "forked",
                Pool::builder().processes(1).fork_server(true).build(),
            ),
        ];
        for (kind, pool) in pools {
            let pool = pool.expect("a pool starts");
            for (seed, len) in [
                (1u8, 100usize),
                (2, 4 << 20),
                (3, 200 << 10),
                (4, 300 << 10),
            ] {
                let read = pulled_for(&pool, seed, len);
                if len >= 256 << 10 {
                    // The frame: the result, its length and the headers.
                    assert!(
                        (len as u64..len as u64 + 64).contains(&read),
                        "{kind}: a {len}-byte result, {read} bytes read in place"
                    );
                } else {
                    assert_eq!(read, 0, "{kind}: a {len}-byte result read in place");
                }
            }
        }
    });
}

/// A pool that may not read a worker's memory (the worker made itself
/// non-dumpable, and the pool is not root) gets the large result through
/// the socket, exactly, and asks no later worker to leave results to be
/// read. Run as an unprivileged user (root reads any process's memory).
#[test]
fn a_result_the_pool_may_not_read_in_place_comes_through_the_socket() {
    let out = run_unprivileged_probe("nopull");
    assert!(out.contains("probe nopull: all correct"), "{out}");
}

/// A worker killed while its large result is written or read: the call
/// gets the exact result or `WorkerDied` for that item, the pool goes on
/// with a replacement, and no worker is left behind.
#[test]
fn a_worker_killed_around_its_large_result_fails_only_that_item() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(1).build().expect("a pool starts");
        let (mut delivered, mut died) = (0, 0);
        let delays = [0u64, 100, 300, 1000, 2000, 5000, 20_000, 100_000];
        for delay_us in delays {
            match pool.apply(task!(bytes_then_killed), (32 << 20, delay_us)) {
                Ok(got) => {
                    assert!(
                        got == some_bytes(9, 32 << 20),
                        "the bytes of a 32 MiB result"
                    );
                    delivered += 1;
                }
                Err(Error::WorkerDied { .. }) => died += 1,
                Err(other) => panic!("a killed worker's item failed with {other:?}"),
            }
            let small = pool
                .apply(task!(bytes_back), (5, 10))
                .expect("the pool goes on");
            assert!(small == some_bytes(5, 10));
        }
        assert_eq!(delivered + died, delays.len());
        drop(pool);
    });
}

/// Returns `len` bytes while a thread of its own SIGKILLs the worker
/// `delay_us` µs after they are ready: while they are encoded, sent or
/// read, or after.
#[task]
fn bytes_then_killed(len: usize, delay_us: u64) -> Vec<u8> {
    let bytes = some_bytes(9, len);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_micros(delay_us));
        // SAFETY: kill of this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
    bytes
}

/// Whether process `pid` maps a chunk body now (seen from outside: asking
/// the worker would be input, which resets its idle time).
fn maps_a_body_from_outside(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| maps.contains("/memfd:pool-runtime-body"))
        .unwrap_or(false)
}

/// A worker keeps its mapping of a slab for later chunks (the pool
/// recycles its slabs: mapping 16 MiB costs about what copying it does),
/// also across a short idle time (the next call reuses the slabs), but not
/// under a memory bound, where the mapped pages would count in its
/// resident memory, and not once it has been idle for long (2 s).
#[test]
fn a_worker_keeps_its_mapping_of_a_large_chunk_unless_its_memory_is_bounded() {
    let _serial = serial();
    within(60, || {
        for bounded in [false, true] {
            let mut builder = Pool::builder().processes(1);
            if bounded {
                builder = builder.max_memory_per_child(1 << 40);
            }
            let pool = builder.build().expect("a pool starts");
            assert!(!pool.apply(task!(maps_a_body), ()).expect("runs"));
            for round in 0..3u8 {
                let data = vec![round; 1 << 20];
                let (len, mapped, checksum) =
                    pool.apply(task!(inspect), (data.clone(),)).expect("runs");
                assert_eq!((len, mapped, checksum), (1 << 20, true, sum(&data)));
                let kept = pool.apply(task!(maps_a_body), ()).expect("runs");
                assert_eq!(kept, !bounded, "bounded {bounded}: the mapping kept");
            }
            let worker = pool.worker_pids()[0];
            // Idle for 300 ms (it cannot have been idle for longer): the
            // slab is the pool's still, the mapping is kept.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                maps_a_body_from_outside(worker),
                !bounded,
                "bounded {bounded}: kept across a short idle time"
            );
            // Idle for long, it lets go.
            let released = (0..1000).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                !maps_a_body_from_outside(worker)
            });
            assert!(
                released,
                "bounded {bounded}: an idle worker let go of its mapping"
            );
            drop(pool);
            assert_eq!(body_memfds(), Vec::<String>::new());
        }
    });
}

/// A worker kept busy by small calls lets go of its mapping of a slab as
/// soon as the pool has dropped it (here: when another pool shuts down,
/// which empties the free list), before it answers the next call; it does
/// not wait to be idle.
#[test]
fn a_busy_worker_lets_go_of_a_slab_the_pool_dropped_before_its_next_answer() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(1).build().expect("a pool starts");
        let data = vec![3u8; 1 << 20];
        let (len, mapped, _) = pool.apply(task!(inspect), (data,)).expect("runs");
        assert_eq!((len, mapped), (1 << 20, true));
        let worker = pool.worker_pids()[0];
        assert!(maps_a_body_from_outside(worker), "the mapping is kept");
        // Another pool shuts down: the free list, and this slab, go.
        drop(Pool::builder().processes(1).build().expect("a pool starts"));
        // Calls back to back (never 100 ms idle): the worker lets go of
        // it once it runs out of input, not after an idle time. (Its
        // answer may leave just before: its flusher thread may send it.)
        let gone = (0..2000).any(|_| {
            pool.apply(task!(inspect), (vec![1u8; 10],)).expect("runs");
            !maps_a_body_from_outside(worker)
        });
        assert!(gone, "its mapping of the dropped slab is gone while busy");
        let mapped = pool.apply(task!(maps_a_body), ()).expect("runs");
        assert!(!mapped, "and stays gone");
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// Installs, in the worker, a handler that does nothing for a timer signal
/// firing every 10 ms: every wait of the worker is cut short.
#[task]
fn tick_every_10_ms() {
    common::tick_every(10_000, false);
}

/// A worker whose task set a fast timer signal keeps its mapping across a
/// short idle time all the same (its idle time is counted by the clock,
/// not by the waits a signal cuts short), and lets go of it in the end.
#[test]
fn a_timer_signal_in_the_worker_does_not_shorten_how_long_it_keeps_a_mapping() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(1).build().expect("a pool starts");
        pool.apply(task!(tick_every_10_ms), ()).expect("runs");
        let data = vec![5u8; 1 << 20];
        let (len, mapped, checksum) = pool.apply(task!(inspect), (data.clone(),)).expect("runs");
        assert_eq!((len, mapped, checksum), (1 << 20, true, sum(&data)));
        let worker = pool.worker_pids()[0];
        // Idle for 300 ms at most: kept (30 signals later).
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            maps_a_body_from_outside(worker),
            "kept across 300 ms of signals"
        );
        let released = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !maps_a_body_from_outside(worker)
        });
        assert!(released, "let go of in the end");
        let again = pool.apply(task!(inspect), (data.clone(),)).expect("runs");
        assert_eq!(again, (1 << 20, true, sum(&data)));
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

#[test]
fn a_worker_that_dies_holding_a_large_argument_fails_only_its_item() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let big = vec![7u8; 2 << 20];
        let args: Vec<(Vec<u8>, bool)> = (0..8).map(|i| (big.clone(), i == 3)).collect();
        let outcomes: Vec<Result<u64, Error>> = pool.istarmap(task!(die_on), args).collect();
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 3 {
                assert!(
                    matches!(outcome, Err(Error::WorkerDied { .. })),
                    "item 3 killed its worker: {outcome:?}"
                );
            } else {
                assert_eq!(outcome.as_ref().ok(), Some(&(2 << 20)), "item {i}");
            }
        }
        // The replacement reads large arguments too.
        let again = pool
            .starmap(task!(die_on), [(big.clone(), false), (big.clone(), false)])
            .expect("the replacement runs it");
        assert_eq!(again, [2 << 20, 2 << 20]);
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

#[test]
fn a_timed_out_item_does_not_hold_back_the_large_chunks_queued_behind_it() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let args: Vec<(Vec<u8>, bool)> = (0..10u8).map(|i| (vec![i; 1 << 20], i == 0)).collect();
        let outcomes: Vec<Result<u64, Error>> = pool
            .call()
            .timeout(Duration::from_millis(300))
            .istarmap(task!(stuck_on), args)
            .collect();
        assert!(
            matches!(outcomes[0], Err(Error::TaskTimeout { .. })),
            "item 0 never ends: {:?}",
            outcomes[0]
        );
        for (i, outcome) in outcomes.iter().enumerate().skip(1) {
            assert_eq!(outcome.as_ref().ok(), Some(&((i as u64) << 20)), "item {i}");
        }
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

#[test]
fn an_imap_of_large_items_dropped_early_leaves_the_pool_working_and_nothing_behind() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let mut results = pool.imap(task!(inspect), (0..1000).map(|i| vec![i as u8; 1 << 20]));
        let first = results.next().expect("a first result").expect("it runs");
        assert_eq!((first.0, first.1), (1 << 20, true));
        drop(results);
        let out = pool
            .map(task!(inspect), [vec![5u8; 2 << 20]])
            .expect("runs");
        assert_eq!(out, [(2 << 20, true, 5 * (2 << 20))]);
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// An `imap` of large items encodes at most about 64 MiB of arguments
/// ahead of its consumer (or one chunk per worker and one more), not the
/// whole input: a consumer that reads slowly holds a bounded amount of
/// shared memory, whatever the input's length.
#[test]
fn an_imap_of_large_items_reads_about_64_mib_ahead_of_its_consumer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pulled);
        let endless = (0u64..).map(move |i| {
            counter.fetch_add(1, Ordering::Relaxed);
            vec![i as u8; 8 << 20]
        });
        let mut results = pool.imap(task!(inspect), endless);
        for i in 0..12u64 {
            let (len, mapped, sum) = results.next().expect("a result").expect("it runs");
            assert_eq!((len, mapped, sum), (8 << 20, true, (i % 256) * (8 << 20)));
        }
        // 12 consumed, 8 chunks of 8 MiB (64 MiB) ahead, one being encoded.
        let at_stop = pulled.load(Ordering::Relaxed);
        assert!(
            (13..=12 + 8 + 1).contains(&at_stop),
            "pulled {at_stop} items of 8 MiB after 12 were consumed"
        );
        drop(results);
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// A large `Vec<u8>` result alone in its results frame comes back as the
/// buffer the frame was read into, its bytes moved to the front (no second
/// allocation: its capacity is the frame's, a few bytes above its length);
/// smaller ones, and results sharing a frame, are copied out as before
/// (capacity = length). Every byte arrives either way, in every kind of
/// call, sync or async.
#[test]
fn a_large_byte_result_alone_in_its_frame_is_the_received_buffer() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let lens = [
            0usize,
            1000,
            (64 << 10) - 16,
            64 << 10,
            (64 << 10) + 1,
            300 << 10,
            3 << 20,
        ];
        let args: Vec<(u8, usize)> = lens.iter().map(|&n| (n as u8 ^ 0x5A, n)).collect();
        let check = |got: &[Vec<u8>], how: &str, alone: bool| {
            assert_eq!(got.len(), args.len(), "{how}");
            for (v, &(seed, len)) in got.iter().zip(&args) {
                assert!(
                    *v == some_bytes(seed, len),
                    "{how}: the bytes of a {len}-byte result"
                );
                if alone {
                    assert_eq!(
                        v.capacity() > v.len(),
                        len >= 64 << 10,
                        "{how}: a {len}-byte result (capacity {}) taken in place or not",
                        v.capacity()
                    );
                }
            }
        };
        let one = || pool.call().chunksize(1);
        check(
            &one()
                .starmap(task!(bytes_back), args.clone())
                .expect("runs"),
            "starmap",
            true,
        );
        let streamed: Vec<Vec<u8>> = one()
            .istarmap(task!(bytes_back), args.clone())
            .collect::<Result<_, _>>()
            .expect("runs");
        check(&streamed, "istarmap", true);
        let applied: Vec<Vec<u8>> = args
            .iter()
            .map(|&a| pool.apply(task!(bytes_back), a).expect("runs"))
            .collect();
        check(&applied, "apply", true);
        let pending: Vec<_> = args
            .iter()
            .map(|&a| pool.apply_async(task!(bytes_back), a).expect("submitted"))
            .collect();
        let awaited: Vec<Vec<u8>> = pending
            .into_iter()
            .map(|p| p.get().expect("runs"))
            .collect();
        check(&awaited, "apply_async", true);
        let mapped = one()
            .starmap_async(task!(bytes_back), args.clone())
            .expect("submitted")
            .get()
            .expect("runs");
        check(&mapped, "starmap_async", true);
        // Several results to a chunk: some share a frame.
        let shared = pool
            .call()
            .chunksize(3)
            .starmap(task!(bytes_back), args.clone())
            .expect("runs");
        check(&shared, "starmap, chunks of 3", false);
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// Whether `ptr` lies in a mapping of a chunk body of this process.
fn in_a_body_mapping(ptr: *const u8) -> bool {
    let at = ptr as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap_or("");
        let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
        let start = usize::from_str_radix(start, 16).unwrap_or(0);
        let end = usize::from_str_radix(end, 16).unwrap_or(0);
        (start..end).contains(&at) && line.contains("/memfd:pool-runtime-body")
    })
}

/// What the borrowed arguments hold, and whether each points into a
/// mapped chunk body (read in place) rather than into a copy.
#[task]
fn views(data: &[u8], text: &str, tag: u32) -> (u64, u64, String, u32, bool, bool) {
    (
        data.len() as u64,
        sum(data),
        text.to_owned(),
        tag,
        in_a_body_mapping(data.as_ptr()),
        in_a_body_mapping(text.as_ptr()),
    )
}

/// The length of `data` and whether it is read in place from a mapping.
#[task]
fn view_len(data: &[u8]) -> (u64, bool) {
    (data.len() as u64, in_a_body_mapping(data.as_ptr()))
}

/// `&[u8]` and `&str` parameters are views of the encoded arguments in
/// the worker: for a chunk that came through shared memory they point
/// into its mapping (no copy), for a small one into the frame read from
/// the socket. Their contents arrive exactly either way, passed borrowed
/// or owned (`Vec<u8>`, `String`: moved, not copied), in every kind of
/// call.
#[test]
fn byte_and_text_views_are_read_in_place_from_mapped_chunks() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        let sizes = [0usize, 100, 1 << 20, 3000, 600 << 10];
        let inputs: Vec<(Vec<u8>, String)> = sizes
            .iter()
            .map(|&n| {
                let data: Vec<u8> = (0..n).map(|i| (i % 241) as u8).collect();
                let text: String = (0..n / 2 + 1).map(|i| ['a', 'é', '字'][i % 3]).collect();
                (data, text)
            })
            .collect();
        let check = |out: &[(u64, u64, String, u32, bool, bool)], how: &str| {
            assert_eq!(out.len(), inputs.len(), "{how}");
            for (i, ((len, checksum, text, tag, data_in_place, text_in_place), (d, t))) in
                out.iter().zip(&inputs).enumerate()
            {
                assert_eq!(
                    (*len, *checksum, *tag),
                    (d.len() as u64, sum(d), i as u32),
                    "{how}"
                );
                assert!(text == t, "{how}: the text of item {i}");
                // One item per chunk: a chunk of 256 KiB or more is mapped.
                let mapped = d.len() + t.len() >= 256 << 10;
                assert_eq!(*data_in_place, mapped, "{how}: the bytes of item {i}");
                assert_eq!(*text_in_place, mapped, "{how}: the text of item {i}");
            }
        };
        let borrowed = pool
            .call()
            .chunksize(1)
            .starmap(
                task!(views),
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, (d, t))| (d.as_slice(), t.as_str(), i as u32)),
            )
            .expect("every item runs");
        check(&borrowed, "starmap, borrowed");
        let owned: Vec<_> = pool
            .call()
            .chunksize(1)
            .istarmap(
                task!(views),
                inputs
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, (d, t))| (d, t, i as u32)),
            )
            .collect::<Result<_, _>>()
            .expect("every item runs");
        check(&owned, "istarmap, owned");
        let applied: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, (d, t))| {
                pool.apply(task!(views), (d.clone(), t.clone(), i as u32))
                    .expect("the item runs")
            })
            .collect();
        check(&applied, "apply");
        let lens = pool
            .call()
            .chunksize(1)
            .map(task!(view_len), inputs.iter().map(|(d, _)| d.clone()))
            .expect("every item runs");
        for ((len, in_place), (d, _)) in lens.iter().zip(&inputs) {
            assert_eq!((*len, *in_place), (d.len() as u64, d.len() >= 256 << 10));
        }
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

#[test]
fn replacement_and_forked_workers_map_large_arguments() {
    let _serial = serial();
    within(120, || {
        for fork_server in [false, true] {
            let pool = Pool::builder()
                .processes(2)
                .max_tasks_per_child(1)
                .fork_server(fork_server)
                .build()
                .expect("a pool starts");
            let inputs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; (1 << 20) + i as usize]).collect();
            let out = pool
                .map(task!(inspect), inputs.clone())
                .expect("every item runs");
            for ((len, mapped, checksum), data) in out.iter().zip(&inputs) {
                assert_eq!((*len, *checksum), (data.len() as u64, sum(data)));
                assert!(
                    mapped,
                    "fork server {fork_server}: a {len}-byte item was not mapped"
                );
            }
            drop(pool);
            assert_eq!(body_memfds(), Vec::<String>::new());
        }
    });
}

/// An argument that can be serialized only once (it gives its bytes away),
/// as a value streamed from an iterator would be.
struct OneShot(Mutex<Option<Vec<u8>>>);

impl OneShot {
    fn new(bytes: Vec<u8>) -> OneShot {
        OneShot(Mutex::new(Some(bytes)))
    }
}

impl Serialize for OneShot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A second run serializes nothing, as such a value would.
        s.serialize_bytes(&taken.unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for OneShot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OneShot, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(OneShot::new(bytes.into_vec()))
    }
}

/// The length and checksum of a one-shot argument.
#[task]
fn one_shot(data: OneShot) -> (u64, u64) {
    let bytes = data
        .0
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default();
    (bytes.len() as u64, sum(&bytes))
}

#[test]
fn every_argument_is_serialized_once_whatever_its_size() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder().processes(2).build().expect("a pool starts");
        for len in [100usize, 300 << 10, 3 << 20] {
            let bytes = vec![9u8; len];
            let expected = (len as u64, sum(&bytes));
            let got = pool.apply(task!(one_shot), (OneShot::new(bytes.clone()),));
            assert_eq!(got.ok(), Some(expected), "apply of {len} bytes");
            let items = (0..4).map(|_| OneShot::new(bytes.clone()));
            let got = pool.map(task!(one_shot), items).expect("every item runs");
            assert_eq!(got, vec![expected; 4], "map of {len}-byte items");
        }
        drop(pool);
        assert_eq!(body_memfds(), Vec::<String>::new());
    });
}

/// The probe program of the two tests below: `POOL_PROBE_LARGE` says which.
#[test]
#[ignore = "a probe program, run by the tests below"]
fn probe_large() {
    let Ok(mode) = std::env::var("POOL_PROBE_LARGE") else {
        return;
    };
    if mode == "late" {
        return probe_not_dumpable_late();
    }
    if mode == "nopull" {
        return probe_no_pull();
    }
    let inputs: Vec<Vec<u8>> = (0..120u32)
        .map(|i| vec![i as u8; (300 << 10) + i as usize])
        .collect();
    let expected: Vec<(u64, u64)> = inputs.iter().map(|d| (d.len() as u64, sum(d))).collect();
    let pool = if mode == "nodump" {
        // What setuid, file capabilities or a credential change also do:
        // only root may open this process's /proc/<pid>/fd now.
        // SAFETY: prctl with an integer argument.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
        Pool::builder().processes(2).build().expect("a pool starts")
    } else {
        let limit = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        // SAFETY: setrlimit with a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        Pool::builder()
            .processes(2)
            .max_tasks_per_child(1)
            .build()
            .expect("a pool starts")
    };
    // Every chunk queued at once, each a new worker's.
    let mut queued = pool
        .call()
        .chunksize(1)
        .map_async(task!(check), inputs)
        .expect("the call starts");
    let got = queued
        .get_timeout(Duration::from_secs(60))
        .expect("every item runs");
    let got: Vec<(u64, u64)> = got.into_iter().map(|(len, _, s)| (len, s)).collect();
    assert!(got == expected, "results differ");
    let big = pool
        .apply(task!(check), (vec![1u8; 3 << 20],))
        .expect("a 3 MiB item runs");
    assert_eq!((big.0, big.2), (3 << 20, 3 << 20));
    println!("probe {mode}: all correct");
}

/// The pool reads a 1 MiB result from its worker's memory until the worker
/// makes itself non-dumpable; then that result and later ones, also of new
/// pools' workers, come through the socket, exactly.
fn probe_no_pull() {
    let pool = Pool::builder().processes(1).build().expect("a pool starts");
    let read = pulled_for(&pool, 1, 1 << 20);
    assert!(read >= 1 << 20, "read in place: {read} bytes");
    pool.apply(task!(undumpable), ()).expect("runs");
    for seed in 2..5 {
        let read = pulled_for(&pool, seed, 1 << 20);
        assert_eq!(read, 0, "refused, then through the socket");
    }
    drop(pool);
    let pool = Pool::builder().processes(1).build().expect("a pool starts");
    let read = pulled_for(&pool, 5, 1 << 20);
    assert_eq!(read, 0, "a new worker is not asked");
    println!("probe nopull: all correct");
}

/// `inspect`, under another name for the probe.
#[task]
fn check(data: &[u8]) -> (u64, bool, u64) {
    inspect(data)
}

fn run_probe(mode: &str) -> String {
    let mut cmd = common::probe_command("probe_large", "POOL_PROBE_LARGE");
    cmd.env("POOL_PROBE_LARGE", mode);
    let out = within(120, move || cmd.output().expect("the probe runs"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A pool whose process is not dumpable (workers that are not root cannot
/// open its `/proc/<pid>/fd`) sends large chunks through the socket. Run as
/// an unprivileged user (through `setpriv` when the suite runs as root,
/// since root opens every `/proc/<pid>/fd`).
#[test]
fn a_process_that_is_not_dumpable_sends_large_chunks_through_the_socket() {
    let out = run_unprivileged_probe("nodump");
    assert!(out.contains("probe nodump: all correct"), "{out}");
}

/// Runs the probe in `mode` as a user other than root (through `setpriv`
/// when the suite runs as root: root opens every `/proc/<pid>/fd`).
fn run_unprivileged_probe(mode: &str) -> String {
    let mut cmd = common::probe_command("probe_large", "POOL_PROBE_LARGE");
    cmd.env("POOL_PROBE_LARGE", mode).current_dir("/");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let inner = std::mem::replace(&mut cmd, Command::new("setpriv"));
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .current_dir("/")
            .stdout(std::process::Stdio::piped());
    }
    let out = within(120, move || {
        cmd.output()
            .expect("the probe runs (setpriv, from util-linux, when root)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Under a limit of 64 descriptors, with every chunk of 120 large items
/// queued at once and a new worker for each, slabs leave descriptors for
/// the replacements: every item runs.
#[test]
fn large_chunks_queued_under_a_low_descriptor_limit_leave_room_for_workers() {
    let out = run_probe("fds");
    assert!(out.contains("probe fds: all correct"), "{out}");
}

/// Waits (at most 30 s) for `gate` to exist; then the length of `data`.
#[task]
fn after_gate(gate: String, data: Vec<u8>) -> u64 {
    for _ in 0..3000 {
        if std::path::Path::new(&gate).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    data.len() as u64
}

/// A large chunk is queued in shared memory, then the process becomes not
/// dumpable before the worker opens it: that item fails with a message
/// saying why, and the worker goes on with the next.
fn probe_not_dumpable_late() {
    let gate = std::env::temp_dir().join(format!("pool-large-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let gate_arg = gate.to_string_lossy().into_owned();
    let pool = Pool::builder().processes(1).build().expect("a pool starts");
    let items = [
        (gate_arg.clone(), vec![1u8; 10]),
        (gate_arg.clone(), vec![2u8; 2 << 20]),
    ];
    // Both chunks are encoded (the second into shared memory) and sent
    // before `starmap_async` returns; the worker waits at the gate in the
    // first.
    let mut pending = pool
        .call()
        .chunksize(1)
        .starmap_async(task!(after_gate), items)
        .expect("the call starts");
    // SAFETY: prctl with an integer argument.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
    std::fs::write(&gate, b"").expect("the gate opens");
    let outcome = pending.get_timeout(Duration::from_secs(60));
    match outcome {
        Err(Error::Serialization {
            index: 1, failure, ..
        }) => {
            let message = failure.to_string();
            assert!(message.contains("shared memory"), "{message}");
            assert!(message.contains("Permission denied"), "{message}");
        }
        other => panic!("item 1 should fail for its shared memory: {other:?}"),
    }
    // The same worker goes on, large items now through the socket.
    let again = pool.apply(task!(after_gate), (gate_arg, vec![3u8; 2 << 20]));
    let _ = std::fs::remove_file(&gate);
    assert_eq!(again.ok(), Some(2 << 20));
    println!("probe late: all correct");
}

/// A large chunk already in shared memory when the process becomes not
/// dumpable fails its items with a message saying why (its worker cannot
/// open it), instead of killing workers in a loop; the pool goes on.
#[test]
fn a_chunk_the_worker_cannot_map_fails_its_items_and_the_pool_goes_on() {
    let out = run_unprivileged_probe("late");
    assert!(out.contains("probe late: all correct"), "{out}");
}
