//! Values shared once with every worker (`Pool::share`, `Pool::share_slice`),
//! through real workers: read exactly, whatever the shape; decoded once per
//! worker; kept alive by the calls that carry them; readable by replacement
//! workers (after `kill -9`, `max_tasks_per_child`, the fork server); a
//! freed one refused with a message that says so; a worker's memory grows
//! by the pages it reads; nothing left behind. Every wait is bounded.
//!
//! The tests run one at a time (`serial()`), so that each can check that
//! no shared memfd of its own outlives it.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::within;
use pool_runtime::prelude::*;
use pool_runtime::{TaskFailure, task};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pool_runtime::test_support!();

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The links of this process's shared-value memfds.
fn shared_memfds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .filter(|link| link.starts_with("/memfd:pool-runtime-shared"))
        .collect()
}

/// No shared memfd is left in this process, and nothing of ours in /dev/shm.
fn assert_nothing_left() {
    assert_eq!(shared_memfds(), Vec::<String>::new());
    let in_shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains("pool-runtime"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(in_shm, Vec::<String>::new());
}

fn pool_of(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .build()
        .expect("a pool starts")
}

/// A deterministic, well-mixed sequence (splitmix64).
fn mixed(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| {
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// Wrapping sum and rotate-xor of `xs`: any changed or moved element shows.
fn digest(xs: &[u64]) -> (u64, u64) {
    xs.iter().fold((0u64, 0u64), |(sum, mix), &x| {
        (sum.wrapping_add(x), mix.rotate_left(7) ^ x)
    })
}

// ----- 1. every shape is read exactly -----

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Config {
    name: String,
    weights: Vec<f64>,
    index: HashMap<String, u32>,
    nested: Vec<(u8, Option<String>)>,
}

#[task]
fn config_back(config: Shared<Config>) -> Config {
    config.get().clone()
}

#[task]
fn bytes_back(bytes: Shared<Vec<u8>>) -> Vec<u8> {
    bytes.to_vec()
}

#[task]
fn digest_range(data: SharedSlice<u64>, start: usize, end: usize) -> (u64, u64) {
    digest(&data[start..end])
}

#[task]
fn f64_bits_back(data: SharedSlice<f64>) -> Vec<u64> {
    data.iter().map(|x| x.to_bits()).collect()
}

#[task]
fn i16_back(data: SharedSlice<i16>) -> Vec<i16> {
    data.to_vec()
}

#[test]
fn every_shape_is_read_exactly_in_the_workers() {
    let _serial = serial();
    within(120, || {
        let pool = pool_of(2);
        let config = Config {
            name: "naïve ✓".into(),
            weights: vec![0.5, -0.0, f64::MAX, f64::MIN_POSITIVE],
            index: (0..100).map(|i| (format!("key{i}"), i * 7)).collect(),
            nested: vec![
                (1, None),
                (2, Some(String::new())),
                (255, Some("x".repeat(300))),
            ],
        };
        let shared = pool.share(config.clone()).expect("share a struct");
        let back = pool
            .map(task!(config_back), vec![shared.clone(); 6])
            .expect("config_back");
        assert!(back.iter().all(|c| *c == config));
        assert_eq!(*shared, config);

        let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let shared_bytes = pool.share(bytes.clone()).expect("share bytes");
        let back = pool
            .map(task!(bytes_back), vec![shared_bytes; 4])
            .expect("bytes_back");
        assert!(back.iter().all(|b| *b == bytes));

        // 64 MiB of u64, read in 64 ranges spread over both workers.
        let n = 8 << 20;
        let data = mixed(n);
        let slice = pool.share_slice(&data).expect("share 64 MiB");
        assert_eq!(&slice[..], &data[..]);
        let step = n / 64;
        let ranges: Vec<_> = (0..64)
            .map(|i| (slice.clone(), i * step, (i + 1) * step))
            .collect();
        let got = pool
            .chunksize(1)
            .starmap(task!(digest_range), ranges)
            .expect("digest_range");
        let want: Vec<_> = (0..64)
            .map(|i| digest(&data[i * step..(i + 1) * step]))
            .collect();
        assert_eq!(got, want);

        let floats = [1.5, -0.0, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE / 2.0];
        let shared_floats = pool.share_slice(&floats).expect("share f64");
        let bits = pool
            .apply(task!(f64_bits_back), shared_floats)
            .expect("f64_bits_back");
        assert_eq!(bits, floats.map(f64::to_bits));
        let shorts = [i16::MIN, -1, 0, 1, i16::MAX];
        let shared_shorts = pool.share_slice(&shorts).expect("share i16");
        let empty = pool.share_slice::<i16>(&[]).expect("share nothing");
        let got = pool
            .map(task!(i16_back), [shared_shorts, empty])
            .expect("i16_back");
        assert_eq!(got, [shorts.to_vec(), Vec::new()]);
    });
    assert_nothing_left();
}

/// A value that holds handles to other shared values.
#[derive(Serialize, Deserialize)]
struct Catalog {
    title: String,
    pages: Vec<SharedSlice<u8>>,
}

#[task]
fn catalog_back(catalog: Shared<Catalog>) -> (String, Vec<Vec<u8>>) {
    let pages = catalog.pages.iter().map(|p| p.to_vec()).collect();
    (catalog.title.clone(), pages)
}

#[test]
fn a_shared_value_may_hold_handles_to_other_shared_values() {
    let _serial = serial();
    within(120, || {
        let pool = pool_of(2);
        let one = pool.share_slice(b"first page").expect("share");
        let two = pool.share_slice(b"second page").expect("share");
        let catalog = Catalog {
            title: "catalog".into(),
            pages: vec![one, two.clone(), two],
        };
        // The catalog holds the only handles to its pages: the parent's copy
        // of it keeps them alive, and each worker resolves them as it decodes it.
        let shared = pool.share(catalog).expect("share the catalog");
        let back = pool
            .chunksize(1)
            .map(task!(catalog_back), vec![shared.clone(); 4])
            .expect("catalog_back");
        let want = (
            "catalog".to_owned(),
            vec![
                b"first page".to_vec(),
                b"second page".to_vec(),
                b"second page".to_vec(),
            ],
        );
        assert!(back.iter().all(|b| *b == want));
        assert_eq!(shared_memfds().len(), 3);
    });
    assert_nothing_left();
}

// ----- 2. decoded once per worker -----

static DECODES: AtomicUsize = AtomicUsize::new(0);

/// A vector whose every decoding is counted in its process.
struct Counted(Vec<u32>);

impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::Relaxed);
        Vec::deserialize(d).map(Counted)
    }
}

/// (worker pid, decodings of `Counted` in this worker so far, length).
#[task]
fn decodings(data: Shared<Counted>, _item: u32) -> (u32, usize, usize) {
    (
        std::process::id(),
        DECODES.load(Ordering::Relaxed),
        data.0.len(),
    )
}

#[test]
fn each_worker_decodes_a_shared_value_once() {
    let _serial = serial();
    within(120, || {
        let pool = pool_of(2);
        let data = pool.share(Counted((0..10_000).collect())).expect("share");
        // One item per chunk: 300 separate deliveries of the handle.
        let items = (0..300).map(|i| (data.clone(), i));
        let out = pool
            .chunksize(1)
            .starmap(task!(decodings), items)
            .expect("decodings");
        let mut per_worker: HashMap<u32, usize> = HashMap::new();
        for (pid, decodes, len) in out {
            assert_eq!(len, 10_000);
            let max = per_worker.entry(pid).or_default();
            *max = (*max).max(decodes);
        }
        assert!(!per_worker.is_empty());
        assert!(
            per_worker.values().all(|&n| n == 1),
            "decodings per worker: {per_worker:?}"
        );
        // The parent reads its own value and never decodes it.
        assert_eq!(DECODES.load(Ordering::Relaxed), 0);
    });
    assert_nothing_left();
}

// ----- 3. a call keeps the values it carries -----

/// A file path tasks wait for; opened by creating the file (and when
/// dropped, if asked), removed at the end.
struct Gate {
    path: PathBuf,
    open_on_drop: bool,
}

impl Gate {
    fn new(tag: &str) -> Gate {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shared-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Gate {
            path,
            open_on_drop: false,
        }
    }

    fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn open(&self) {
        std::fs::write(&self.path, b"open").expect("create the gate file");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.open_on_drop {
            self.open();
        }
    }
}

fn wait_for_gate(gate: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(gate).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for `gate` if it has no data, else sums the data's range `i`.
#[task]
fn sum_after_gate(data: Option<SharedSlice<u64>>, gate: String, i: usize) -> u64 {
    match data {
        None => {
            wait_for_gate(&gate);
            0
        }
        Some(data) => data[i * 100..(i + 1) * 100].iter().sum(),
    }
}

/// The input of a blocking call that owns the caller's only handle: the
/// handle goes first, then the gate opens (fields drop in order).
struct Owned {
    data: SharedSlice<u64>,
    gate: Gate,
}

#[test]
fn a_call_keeps_its_shared_values_after_the_caller_drops_them() {
    let _serial = serial();
    let data: Vec<u64> = (0..2_000).collect();
    let want: Vec<u64> = (0..20)
        .map(|i| {
            if i < 2 {
                0
            } else {
                data[i * 100..(i + 1) * 100].iter().sum()
            }
        })
        .collect();
    // Blocking: the input iterator owns the last handle and is dropped
    // once read, while items 0 and 1 hold both workers at the gate; items
    // 2.. are decoded by the workers only after that.
    let data2 = data.clone();
    let want2 = want.clone();
    within(120, move || {
        let pool = pool_of(2);
        let mut gate = Gate::new("blocking");
        let path = gate.arg();
        gate.open_on_drop = true;
        let owned = Owned {
            data: pool.share_slice(&data2).expect("share"),
            gate,
        };
        let items = (0..20usize).map(move |i| {
            let data = (i >= 2).then(|| owned.data.clone());
            (data, owned.gate.arg(), i)
        });
        let out = pool
            .chunksize(1)
            .starmap(task!(sum_after_gate), items)
            .expect("every item reads the data");
        assert_eq!(out, want2);
        let _ = std::fs::remove_file(path);
    });
    assert_nothing_left();
    // Async: the caller drops its handle right after submitting.
    within(120, move || {
        let pool = pool_of(2);
        let gate = Gate::new("async");
        let shared = pool.share_slice(&data).expect("share");
        let items: Vec<_> = (0..20usize)
            .map(|i| ((i >= 2).then(|| shared.clone()), gate.arg(), i))
            .collect();
        let mut result = pool
            .chunksize(1)
            .starmap_async(task!(sum_after_gate), items)
            .expect("submitted");
        drop(shared);
        assert_eq!(shared_memfds().len(), 1, "the call keeps the memfd open");
        gate.open();
        let out = result
            .get_timeout(Duration::from_secs(60))
            .expect("every item reads the data");
        assert_eq!(out, want);
        let _ = std::fs::remove_file(gate.arg());
        // The result thread lets the call go just after delivering it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !shared_memfds().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert_nothing_left();
}

// ----- 4. replacement workers read the same handle -----

/// (pid, parent pid, sum of range `i`); kills its own worker with SIGKILL
/// on item `die` the first time (when the file `marker` does not exist yet).
#[task]
fn sum_or_die(data: SharedSlice<u64>, i: usize, die: usize, marker: String) -> (u32, u32, u64) {
    if i == die && std::fs::File::create_new(&marker).is_ok() {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(10));
    }
    let parent = std::os::unix::process::parent_id();
    (
        std::process::id(),
        parent,
        data[i * 1000..(i + 1) * 1000].iter().sum(),
    )
}

fn range_sums(data: &[u64], n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| data[i * 1000..(i + 1) * 1000].iter().sum())
        .collect()
}

#[test]
fn a_worker_killed_mid_call_is_replaced_by_one_that_reads_the_same_handle() {
    let _serial = serial();
    within(120, || {
        // One worker: the retry of item 5 runs on its replacement.
        let pool = Pool::builder()
            .processes(1)
            .retries(1)
            .build()
            .expect("a pool starts");
        let data = mixed(20_000).iter().map(|x| x >> 20).collect::<Vec<_>>();
        let shared = pool.share_slice(&data).expect("share");
        let before = pool.worker_pids();
        let marker = std::env::temp_dir().join(format!("shared-kill-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let marker_arg = marker.to_string_lossy().into_owned();
        let items = (0..20).map(|i| (shared.clone(), i, 5, marker_arg.clone()));
        let out = pool
            .chunksize(1)
            .starmap(task!(sum_or_die), items)
            .expect("item 5 is retried on a fresh worker");
        let _ = std::fs::remove_file(&marker);
        let sums: Vec<u64> = out.iter().map(|&(_, _, sum)| sum).collect();
        assert_eq!(sums, range_sums(&data, 20));
        let (retried_on, _, _) = out[5];
        assert!(
            !before.contains(&retried_on),
            "item 5 ran again on the replacement of {before:?}, not on {retried_on}"
        );
        // Items after it ran there too, with the handle decoded anew.
        assert!(out[6..].iter().all(|&(pid, _, _)| pid == retried_on));
    });
    assert_nothing_left();
}

#[test]
fn workers_replaced_after_each_item_read_the_same_handle_with_and_without_the_fork_server() {
    let _serial = serial();
    for fork_server in [false, true] {
        within(120, move || {
            let pool = Pool::builder()
                .processes(2)
                .max_tasks_per_child(1)
                .fork_server(fork_server)
                .build()
                .expect("a pool starts");
            if fork_server {
                common::wait_for_fork_server(None);
            }
            let data: Vec<u64> = (0..12_000).collect();
            let shared = pool.share_slice(&data).expect("share");
            let items = (0..12).map(|i| (shared.clone(), i, usize::MAX, String::new()));
            let out = pool
                .chunksize(1)
                .starmap(task!(sum_or_die), items)
                .expect("every item reads the data");
            let sums: Vec<u64> = out.iter().map(|&(_, _, sum)| sum).collect();
            assert_eq!(sums, range_sums(&data, 12));
            let mut pids: Vec<u32> = out.iter().map(|&(pid, _, _)| pid).collect();
            pids.sort_unstable();
            pids.dedup();
            assert_eq!(pids.len(), 12, "one fresh worker per item");
            let me = std::process::id();
            let forked = out.iter().filter(|&&(_, parent, _)| parent != me).count();
            if fork_server {
                // Forks of the fork server: their parent is not the pool's
                // process, yet they open its memfd.
                assert!(forked > 0, "no item ran on a forked worker: {out:?}");
            } else {
                assert_eq!(forked, 0, "{out:?}");
            }
        });
    }
    assert_nothing_left();
}

// ----- 5. a freed value is refused by name -----

/// Keeps `data` in the worker (for the pool's initializer).
#[task]
fn keep_in_worker(data: SharedSlice<u8>) {
    static KEPT: OnceLock<SharedSlice<u8>> = OnceLock::new();
    let _ = KEPT.set(data);
}

static STASH: Mutex<Option<Shared<Vec<u32>>>> = Mutex::new(None);

/// Keeps `data` in this worker for the next items.
#[task]
fn stash(data: Shared<Vec<u32>>) {
    *STASH.lock().unwrap_or_else(|p| p.into_inner()) = Some(data);
}

/// The sum of the stashed value, read in this worker.
#[task]
fn stashed_sum() -> Option<u32> {
    let stash = STASH.lock().unwrap_or_else(|p| p.into_inner());
    stash.as_ref().map(|data| data.iter().sum())
}

/// The stashed handle itself, sent back to the parent.
#[task]
fn stashed_handle() -> Option<Shared<Vec<u32>>> {
    STASH.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[test]
fn a_freed_value_fails_its_item_with_a_message_that_says_so() {
    let _serial = serial();
    within(120, || {
        // A worker given a handle whose value was dropped meanwhile: an
        // initializer's arguments do not keep it.
        let first = pool_of(1);
        let data = first.share_slice(b"read me").expect("share");
        let builder = Pool::builder()
            .processes(1)
            .initializer(task!(keep_in_worker), data.clone());
        drop(data);
        match builder.build() {
            Err(Error::Initializer { reason, .. }) => {
                assert!(
                    reason.contains("is gone")
                        && reason.contains("keep a handle alive")
                        && reason.contains(&std::process::id().to_string()),
                    "{reason}"
                );
            }
            other => panic!("expected Error::Initializer, got {other:?}"),
        }

        // A handle that comes back to its process after the value was
        // dropped there; the worker's own copy lives on meanwhile.
        let pool = pool_of(1);
        let data = pool.share(vec![1u32, 2, 3]).expect("share");
        pool.apply(task!(stash), data.clone()).expect("stash");
        let back = pool.apply(task!(stashed_handle), ()).expect("back");
        assert_eq!(back.as_deref(), Some(&vec![1, 2, 3]));
        drop((data, back));
        assert_eq!(pool.apply(task!(stashed_sum), ()).expect("sum"), Some(6));
        match pool.apply(task!(stashed_handle), ()) {
            Err(Error::Serialization {
                failure: TaskFailure::BadOutput { message, .. },
                ..
            }) => assert!(
                message.contains("is gone") && message.contains("keep a handle alive"),
                "{message}"
            ),
            other => panic!("expected a failure to decode the result, got {other:?}"),
        }
    });
    assert_nothing_left();
}

// ----- 6. memory: the pages a worker reads -----

/// This process's proportional set size, in KiB.
fn pss_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[task]
fn worker_pss() -> u64 {
    pss_kib()
}

/// Reads `pages` pages spread over `data`, then this worker's Pss (KiB).
#[task]
fn touch_then_pss(data: SharedSlice<u8>, pages: usize) -> (u64, u64) {
    let step = (data.len() / pages.max(1)).max(1);
    let sum = data
        .iter()
        .step_by(step)
        .take(pages)
        .map(|&b| u64::from(b))
        .sum();
    (sum, pss_kib())
}

#[test]
fn a_worker_that_reads_one_page_of_a_large_slice_grows_by_about_one_page() {
    let _serial = serial();
    within(120, || {
        let pool = pool_of(1);
        let size = 256 << 20;
        let data = vec![1u8; size];
        let shared = pool.share_slice(&data).expect("share 256 MiB");
        drop(data);
        let before = pool.apply(task!(worker_pss), ()).expect("pss");
        let (sum, after_one) = pool
            .apply(task!(touch_then_pss), (shared.clone(), 1))
            .expect("one page");
        assert_eq!(sum, 1);
        let one_page = after_one.saturating_sub(before);
        assert!(
            one_page < 4 << 10,
            "reading one page grew the worker by {one_page} KiB"
        );
        // The same measure sees the pages when the whole slice is read.
        let pages = size / 4096;
        let (sum, after_all) = pool
            .apply(task!(touch_then_pss), (shared, pages))
            .expect("every page");
        assert_eq!(sum, pages as u64);
        let all = after_all.saturating_sub(before);
        assert!(
            all > 200 << 10,
            "reading every page grew the worker by only {all} KiB"
        );
    });
    assert_nothing_left();
}
