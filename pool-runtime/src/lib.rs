//! A typed process pool: Python's `multiprocessing.Pool`, checked by the
//! compiler.
//!
//! ```
//! use pool_runtime::prelude::*; // Pool, Error and the task!(...) macro
//! use pool_runtime::task; // the #[task] attribute
//!
//! #[task]
//! fn power(x: u64, n: u32) -> u64 {
//!     x.pow(n)
//! }
//!
//! #[pool_runtime::main] // or: pool_runtime::init(); as the first line of main
//! fn main() -> Result<(), pool_runtime::Error> {
//!     let pool = Pool::new()?; // one worker process per CPU
//!     let out: Vec<u64> = pool.starmap(task!(power), [(2, 3), (3, 2), (4, 1)])?;
//!     assert_eq!(out, [8, 9, 4]);
//!     Ok(())
//! }
//! ```
//!
//! - [`#[task]`](macro@task) registers a function under a stable id and
//!   generates its typed argument struct; [`task!`](prelude::task) names it.
//!   Wrong argument types or counts do not compile.
//! - The pool re-executes this program's own binary as its workers, which is
//!   why `main` starts with [`init`] (or [`#[main]`](macro@main)): in a worker,
//!   `init()` serves tasks and never returns. Whatever runs before it runs in
//!   every worker too. Once the first pool is ready, later workers are forks
//!   of one more such process waiting in `init()`, the fork server (see
//!   [`PoolBuilder::fork_server`]): ~0.2 ms instead of a new `exec`.
//! - Arguments and results travel as postcard over private sockets; the
//!   workers' stdout and stderr are the program's, so `println!` in a task
//!   prints as in Python. Chunks whose arguments take 256 KiB or more do not
//!   cross the socket: they are written once into shared memory of the
//!   pool's process (a memfd; items of 1 MiB or more are encoded straight
//!   into it), which the worker maps through `/proc/<pid>/fd` and decodes in
//!   place, with no annotation. The pool owns that memory; a worker that
//!   dies leaves nothing behind, and it is released when the pool shuts
//!   down. Results frames of 256 KiB or more do not cross the socket
//!   either: the pool's reader copies them once from the worker's memory
//!   (`process_vm_readv`) while the worker waits, or, where that is
//!   refused, the worker sends them through the socket
//!   ([`WorkerStats::pulled_bytes`] counts what was read in place). (Linux
//!   only, as the whole crate; MPI ranks get the bytes as messages.)
//! - A panic in a task, or a worker that dies (abort, signal,
//!   `process::exit`), is an [`Error`] naming the task and the item; the pool
//!   replaces the worker and goes on.
//!
//! # Operations
//!
//! Every example below is a complete program; `cargo test --doc` runs them.
//!
//! ## `map`, `starmap`, `apply`: blocking, results in input order
//!
//! ```
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! #[task]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[task]
//! fn power(x: u64, n: u32) -> u64 { x.pow(n) }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(2).build()?;
//!     assert_eq!(pool.map(task!(square), [1, 2, 3])?, [1, 4, 9]); // one-argument tasks
//!     assert_eq!(pool.starmap(task!(power), [(2, 3), (3, 2)])?, [8, 9]); // argument tuples
//!     assert_eq!(pool.apply(task!(power), (2, 10))?, 1024); // one call
//!     // Per-call options come first (see "One name per option" below).
//!     let big = pool.chunksize(100).map(task!(square), 0..10_000)?;
//!     assert_eq!(big[9_999], 9_999 * 9_999);
//!     Ok(())
//! }
//! ```
//!
//! ## `_async`: an [`AsyncResult`] now, the value later
//!
//! ```
//! use std::time::Duration;
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! #[task]
//! fn power(x: u64, n: u32) -> u64 { x.pow(n) }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(2).build()?;
//!     let mut all = pool.starmap_async(task!(power), [(2, 3), (3, 2)])?;
//!     let one = pool
//!         .apply_async(task!(power), (2, 4))?
//!         .callback(|v| println!("callback got {v}")) // on the pool's result thread
//!         .error_callback(|e| eprintln!("failed: {e}"));
//!     assert_eq!(all.get_timeout(Duration::from_secs(10))?, [8, 9]);
//!     assert_eq!(one.get()?, 16); // or `.await` it in async code
//!     Ok(())
//! }
//! ```
//!
//! ## `imap` and friends: lazy input, one `Result` per item
//!
//! ```
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! #[task]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(2).build()?;
//!     // An endless input: pulled only as fast as results are consumed.
//!     let first: Vec<u64> = pool.imap(task!(square), 0u64..).take(5).collect::<Result<_, _>>()?;
//!     assert_eq!(first, [0, 1, 4, 9, 16]);
//!     // In completion order; `istarmap(_unordered)` take argument tuples.
//!     let mut any: Vec<u64> = pool.imap_unordered(task!(square), [3, 1, 2]).collect::<Result<_, _>>()?;
//!     any.sort();
//!     assert_eq!(any, [1, 4, 9]);
//!     Ok(())
//! }
//! ```
//!
//! ## Faults: errors per item, timeouts, retries
//!
//! ```
//! use std::time::Duration;
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! #[task]
//! fn risky(x: u64) -> u64 {
//!     if x == 3 { panic!("three is bad") }
//!     x
//! }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(2).build()?;
//!     match pool.map(task!(risky), 0..10) {
//!         Err(Error::TaskPanicked { index, message, .. }) => assert_eq!((index, message.as_str()), (3, "three is bad")),
//!         other => panic!("{other:?}"),
//!     }
//!     // Per item instead: the other nine succeed.
//!     let ok = pool.imap(task!(risky), 0..10).filter(Result::is_ok).count();
//!     assert_eq!(ok, 9);
//!     // A stuck item is killed after its timeout; a dead worker's item can be retried.
//!     let out = pool.timeout(Duration::from_secs(5)).retries(1).map(task!(risky), [1, 2])?;
//!     assert_eq!(out, [1, 2]);
//!     Ok(())
//! }
//! ```
//!
//! ## Worker set-up and lifecycle
//!
//! ```
//! use std::sync::OnceLock;
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! static DATA: OnceLock<Vec<u64>> = OnceLock::new();
//!
//! #[task]
//! fn load(len: usize) { DATA.get_or_init(|| (0..len as u64).collect()); }
//!
//! #[task]
//! fn lookup(i: usize) -> u64 { DATA.get().map_or(0, |d| d[i]) }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder()
//!         .processes(2)
//!         .initializer(task!(load), 100) // once per worker, before its first task
//!         .max_tasks_per_child(1000) // then it is replaced by a fresh process
//!         .build()?;
//!     assert_eq!(pool.map(task!(lookup), [5, 50])?, [5, 50]);
//!     println!("{:?}", pool.stats()); // items, failures, respawns, busy time per worker
//!     pool.close(); // no new calls
//!     pool.join(); // wait for submitted work, then stop and reap every worker
//!     Ok(())
//! }
//! ```
//!
//! ## Large read-only inputs: [`share`](Pool::share), [`share_slice`](Pool::share_slice)
//!
//! ```
//! use pool_runtime::prelude::*; // also Shared and SharedSlice
//! use pool_runtime::task;
//!
//! #[task]
//! fn dot(weights: SharedSlice<f64>, row: Vec<f64>) -> f64 {
//!     weights.iter().zip(&row).map(|(w, x)| w * x).sum()
//! }
//!
//! #[task]
//! fn label(names: Shared<Vec<String>>, i: usize) -> String {
//!     names[i].clone()
//! }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(2).build()?;
//!     // Written once into a sealed memfd; each item carries a small handle.
//!     let weights = pool.share_slice(&[0.5, 2.0])?; // read in place by workers
//!     let names = pool.share(vec!["a".to_owned(), "b".to_owned()])?; // decoded once per worker
//!     let rows = [vec![2.0, 1.0], vec![4.0, 0.0]].map(|r| (weights.clone(), r));
//!     assert_eq!(pool.starmap(task!(dot), rows)?, [3.0, 2.0]);
//!     assert_eq!(pool.apply(task!(label), (names, 1))?, "b");
//!     Ok(())
//! }
//! ```
//!
//! # Logging from tasks
//!
//! `tracing` events and `log` records emitted in a task, or in the
//! initializer, are emitted again in the pool's process, where its
//! subscriber shows them as it shows its own events:
//!
//! ```text
//! INFO my_app: squaring x=3 pid=4242 task="my_app::square" item=3
//! ```
//!
//! - Each keeps its level, its target, module, file and line (the worker's;
//!   filters such as `RUST_LOG=my_app=debug` select it by them), and gets
//!   the fields `pid` (the worker's), `task` and `item` (the item's index in
//!   the call's input; absent in the initializer and between items). The
//!   event's own fields follow its message as ` name=value`, as
//!   `tracing_subscriber::fmt` prints them. Spans are not forwarded.
//! - The pool's process decides what is shown. A worker is told, when it
//!   starts, the most verbose level this process shows (the higher of
//!   `tracing`'s `LevelFilter::current()` and `log::max_level()`), and
//!   installs a `tracing` subscriber and a `log` logger with that level:
//!   disabled levels cost a worker nothing more than without a subscriber.
//!   So set the subscriber up before building the pool. With no subscriber
//!   and no logger, workers install nothing. A subscriber or logger that the
//!   program installs before [`init`] runs in the workers too, and wins: its
//!   records stay in the worker (for example on its stderr). A task cannot
//!   install its own (`set_global_default` and `log::set_logger` return
//!   errors; `tracing_subscriber`'s `init()` panics, `try_init()` does not).
//! - Emitting never waits for the pool: records wait in a bounded buffer
//!   in the worker (4 096 records, 4 MiB of text; messages past 16 KiB are
//!   cut). When the pool's process reads too slowly, the records that do not
//!   fit are dropped and counted, and the count is one `warn` event:
//!   "N log records dropped". Records reach the pool before the result of
//!   the item that emitted them (or its error, when its worker was killed
//!   for a timeout or died, and before the result of a retry), and within a
//!   few milliseconds while a long item runs.
//! - Without a global `tracing` subscriber, records go to the `log` logger,
//!   with `pid`, `task` and `item` at the end of the message.
//! - The pool adds its own `warn` events: a failed item (`task panicked:
//!   <message>`, with `task`, `item`, `location` and `pid`) and a worker
//!   that died (`pool worker died`, with `task` and `item` of the item it
//!   ran, its `slot`, `pid`, `cause` and `signal`). They are emitted on the
//!   pool's emitting thread, after the records handed off before them.
//!
//! ```
//! use pool_runtime::prelude::*;
//! use pool_runtime::task;
//!
//! #[task]
//! fn square(x: u64) -> u64 {
//!     tracing::info!(x, "squaring"); // shown by this process's subscriber
//!     x * x
//! }
//!
//! #[pool_runtime::main]
//! fn main() -> Result<(), Error> {
//!     // e.g. tracing_subscriber::fmt().with_env_filter(EnvFilter::from_default_env()).init();
//!     let pool = Pool::builder().processes(2).build()?;
//!     assert_eq!(pool.map(task!(square), [1, 2, 3])?, [1, 4, 9]);
//!     Ok(())
//! }
//! ```
//!
//! `examples/logging.rs` is a complete program with `tracing_subscriber`.
//!
//! ## With `#[tokio::main]`
//!
//! Put `#[pool_runtime::main]` below `#[tokio::main]` (or any async
//! runtime's attribute): attributes expand from the top, so the lower one
//! sees the plain `fn main` the runtime's attribute made, and [`init`]
//! comes first in it, before the runtime starts.
//!
//! ```ignore
//! #[tokio::main]
//! #[pool_runtime::main]
//! async fn main() -> Result<(), pool_runtime::Error> { /* .. */ }
//! ```
//!
//! The other order would put `init()` inside the `async` body, so every
//! worker would build a tokio runtime first (its threads included) and
//! serve tasks from inside its `block_on`, where a task that starts a
//! runtime of its own panics ("Cannot start a runtime from within a
//! runtime"). It does not compile: `#[pool_runtime::main]` refuses an
//! `async fn`, with a message saying where it goes.
//!
//! # Coming from Python
//!
//! | `multiprocessing.Pool` | pool-runtime |
//! |---|---|
//! | `Pool()` / `Pool(processes=4)` | [`Pool::new()`](Pool::new) / [`Pool::builder()`](Pool::builder)`.processes(4).build()?` |
//! | `initializer=f, initargs=(a,)` | [`.initializer(task!(f), a)`](PoolBuilder::initializer) |
//! | `maxtasksperchild=100` | [`.max_tasks_per_child(100)`](PoolBuilder::max_tasks_per_child) (counted in items) |
//! | `pool.map(f, xs)` / `chunksize=2` | [`pool.map(task!(f), xs)?`](Pool::map) / [`pool.chunksize(2).map(..)`](Pool::chunksize) |
//! | `pool.starmap(f, pairs)` | [`pool.starmap(task!(f), pairs)?`](Pool::starmap) |
//! | `pool.apply(f, (a, b))` | [`pool.apply(task!(f), (a, b))?`](Pool::apply) |
//! | `map_async`, `starmap_async`, `apply_async` | the same names, returning an [`AsyncResult`] |
//! | `callback=`, `error_callback=` | [`.callback(..)`](AsyncResult::callback), [`.error_callback(..)`](AsyncResult::error_callback) |
//! | `res.get(timeout=2)` | [`res.get_timeout(Duration::from_secs(2))`](AsyncResult::get_timeout) (or [`get()`](AsyncResult::get), `.await`) |
//! | `res.wait()`, `res.ready()`, `res.successful()` | the same names |
//! | `pool.imap(f, xs, chunksize=k)` | [`pool.chunksize(k).imap(task!(f), xs)`](Pool::imap), lazy, bounded memory |
//! | `pool.imap_unordered(f, xs)` | [`pool.imap_unordered(task!(f), xs)`](Pool::imap_unordered) |
//! | `pool.close()`, `pool.join()`, `pool.terminate()` | the same names |
//! | `with Pool() as pool:` | scope: dropping the pool ends every worker |
//! | joblib's memmapping, `ray.put(x)` | [`pool.share_slice(&array)?`](Pool::share_slice) (read in place), [`pool.share(x)?`](Pool::share) (decoded once per worker) |
//! | `if __name__ == '__main__':` | [`#[pool_runtime::main]`](macro@main) or [`init()`](init) first in `main` |
//! | — | [`timeout`](Call::timeout), [`retries`](Call::retries), [`retry_panics`](Call::retry_panics), [`on_progress`](Call::on_progress), [`progress`](Call::progress), [`stats`](Pool::stats), [`cancel`](AsyncResult::cancel), [`cancel_all`](Pool::cancel_all), [`as_completed`] |
//! | loky's memory-leak protection; dask's `--lifetime` | [`.max_memory_per_child(bytes)`](PoolBuilder::max_memory_per_child), [`.max_lifetime(d)`](PoolBuilder::max_lifetime) |
//!
//! | `concurrent.futures.ProcessPoolExecutor` | pool-runtime |
//! |---|---|
//! | `ProcessPoolExecutor(max_workers=4)` | [`Pool::builder()`](Pool::builder)`.processes(4).build()?` |
//! | `ex.submit(f, a, b)` | [`pool.apply_async(task!(f), (a, b))?`](Pool::apply_async): an [`AsyncResult`], which is also a `Future` |
//! | `fut.result(timeout=t)`, `fut.done()` | [`get_timeout(t)`](AsyncResult::get_timeout), [`ready()`](AsyncResult::ready) |
//! | `fut.add_done_callback(fn)` | [`.callback(..)`](AsyncResult::callback) and [`.error_callback(..)`](AsyncResult::error_callback), run on the pool's result thread |
//! | `fut.cancel()` | [`cancel()`](AsyncResult::cancel). Differs: Python cancels only a future not yet running; here items already running are stopped too, by killing their worker (which is replaced) |
//! | `as_completed(fs, timeout=t)` | [`as_completed(results)`](as_completed), with [`next_timeout(t)`](AsCompleted::next_timeout) for the limit; it yields each outcome with its position |
//! | `wait(fs, timeout=t, return_when=FIRST_COMPLETED)` / `ALL_COMPLETED` | [`wait_any(&results, Some(t))`](wait_any) / [`wait_all(&results, Some(t))`](wait_all) |
//! | `wait(.., return_when=FIRST_EXCEPTION)` | no single call: iterate [`as_completed`] and stop at the first `Err`, then [`cancel_remaining()`](AsCompleted::cancel_remaining) |
//! | `ex.map(f, xs, chunksize=k)` | [`pool.chunksize(k).imap(task!(f), xs)`](Pool::imap): lazy, where Python's `map` submits the whole input at once |
//! | `ex.map(f, xs, timeout=t)` | Differs: Python's `timeout` limits the caller's wait and the work goes on; here [`timeout(t)`](Call::timeout) limits each item's run and kills its worker. For Python's meaning: [`map_async`](Pool::map_async) + [`get_timeout(t)`](AsyncResult::get_timeout) |
//! | `ex.shutdown(wait=True)` / `wait=False` | [`close()`](Pool::close) + [`join()`](Pool::join) / [`close()`](Pool::close) (dropping the pool ends it) |
//! | `ex.shutdown(cancel_futures=True)` | [`cancel_all()`](Pool::cancel_all), then [`join()`](Pool::join); `cancel_all` alone keeps the pool open |
//! | `max_tasks_per_child=n` | [`.max_tasks_per_child(n)`](PoolBuilder::max_tasks_per_child) |
//! | `mp_context=` | no equivalent, because workers are always a fresh start of the program (or forks of a fork server that only ran `init`), never a fork of a parent with threads |
//! | `BrokenProcessPool` after a worker dies | no equivalent, because the pool does not break: the item the worker ran fails with [`Error::WorkerDied`], the worker is replaced and the rest goes on |
//!
//! | joblib | pool-runtime |
//! |---|---|
//! | `Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)` | [`Pool::new()?`](Pool::new)`.map(task!(f), xs)?` (one worker per CPU) |
//! | `n_jobs=4` / `n_jobs=-2` | [`.processes(4)`](PoolBuilder::processes) / `.processes(cpus - 1)` from [`std::thread::available_parallelism`] |
//! | `delayed(f)(a, b)` | the tuple `(a, b)` in [`starmap(task!(f), ..)`](Pool::starmap) |
//! | `return_as="generator"` / `"generator_unordered"` | [`imap`](Pool::imap) / [`imap_unordered(..).indexed()`](ImapUnordered::indexed) (each result with its input's position) |
//! | `batch_size="auto"`, `pre_dispatch` | the default: automatic chunk sizes, input read within a bounded window |
//! | `timeout=t` | [`timeout(t)`](Call::timeout): per item, as in joblib, and the stuck worker is killed and replaced |
//! | automatic memmapping of large arrays (`max_nbytes`) | explicit: [`pool.share_slice(&array)?`](Pool::share_slice), passed to tasks as a handle; nothing is shared without asking, since an argument is owned by the call |
//! | `verbose=10` | [`progress(true)`](Call::progress) or [`on_progress`](Call::on_progress) |
//! | `backend="threading"` | no equivalent, because the pool runs processes only; for threads in one process use `rayon` |
//!
//! # One name per option
//!
//! - **Per call.** Every option of one call is a method of [`Call`]
//!   (`pool.call().timeout(d)`), and [`Pool`] has a shortcut of the same
//!   name and arguments that starts a call with it (`pool.timeout(d)`):
//!   [`chunksize`](Pool::chunksize), [`timeout`](Pool::timeout),
//!   [`retries`](Pool::retries), [`retry_panics`](Pool::retry_panics),
//!   [`progress`](Pool::progress), [`on_progress`](Pool::on_progress),
//!   [`cancel_on_drop`](Pool::cancel_on_drop). Chain the others after it.
//! - **Pool defaults.** The same name on [`PoolBuilder`] sets the default
//!   of every call of that pool: [`timeout`](PoolBuilder::timeout),
//!   [`retries`](PoolBuilder::retries),
//!   [`retry_panics`](PoolBuilder::retry_panics),
//!   [`progress`](PoolBuilder::progress). `chunksize` and `on_progress`
//!   describe one call's input and one call's observer, so they have no
//!   pool default.
//! - **Pool settings** (`processes`, `initializer`, `max_tasks_per_child`,
//!   `max_memory_per_child`, `max_lifetime`, `max_frame_size`,
//!   `startup_timeout`, `fork_server`, `chunks_in_flight`) exist on the
//!   builder only.
//! - **Arguments.** A switch takes a `bool` everywhere (`progress(true)`,
//!   `retry_panics(true)`, `fork_server(false)`); a limit takes its value
//!   (`timeout(Duration)`, `retries(u32)`).
//! - **Timeouts.** `timeout` always limits how long one item may run: past
//!   it the worker is killed and replaced, and the item fails with
//!   [`Error::TaskTimeout`]. A limit on how long the caller waits is named
//!   after the wait ([`get_timeout`](AsyncResult::get_timeout),
//!   [`wait_timeout`](AsyncResult::wait_timeout),
//!   [`startup_timeout`](PoolBuilder::startup_timeout)); `get_timeout`
//!   running out is [`Error::WaitTimeout`], and nothing is stopped.
//!
//! # Limits
//!
//! - **Arguments and results must be postcard-friendly.** postcard is not
//!   self-describing, so serde features that need that fail: a type with
//!   `#[serde(flatten)]` cannot be written, and an `#[serde(untagged)]` enum
//!   (or anything calling `deserialize_any`) cannot be read back. The item
//!   fails with [`Error::Serialization`] naming the type
//!   (`could not decode arguments of type `my::Args`: ... WontImplement`).
//!   Workaround: give the task plain structs and tagged enums (the serde
//!   default), converting at the edges.
//! - **Tasks are plain, non-generic functions.** Borrowed parameters (`&str`,
//!   `&[T]`, `&T`) are owned values on the way (a worker lends `&[u8]` and
//!   `&str` straight out of the received bytes, the others from a decoded
//!   copy); `&mut` parameters are rejected, since changes could not reach
//!   the caller.
//! - **One frame is at most 1 GiB by default** ([`PoolBuilder::max_frame_size`]);
//!   a bigger argument or result fails that item with a clear error.
//! - **No pools inside tasks** ([`Error::NestedPool`]): a worker never
//!   starts workers.
//! - **Shared values need local workers.** Workers read a [`Shared`] or
//!   [`SharedSlice`] through `/proc/<pid>/fd/<n>` of the pool's process:
//!   they must run on the same machine as the same user (true of every
//!   local worker, forked or not). On the ranks of the MPI backend, or
//!   with a handle created by another process, the item fails with
//!   [`Error::Serialization`] saying so.
//! - **Platforms:** Linux only (kernel 5.3 or newer for pidfds; without them
//!   the fork server stays off). The pool relies on `/proc/self/exe`,
//!   parent-death signals, `memfd` pages shared with each worker, pidfds and
//!   descriptor passing; building for another system fails with a
//!   `compile_error!` saying so.
//!
//! # Tests
//!
//! A test binary is re-executed as its workers too. Add one line at the top
//! of each integration test file (or in the crate's test module) that starts
//! pools:
//!
//! ```ignore
//! pool_runtime::test_support!();
//! ```
//!
//! It adds an ignored test, `pool_runtime_worker_entry`, that the pool runs
//! in its workers; it works under `cargo test` and `cargo nextest`.
//!
//! # Features
//!
//! - `progress`: the line [`Call::progress`] draws is an `indicatif` bar
//!   (without the feature: plain text with the same numbers).
//! - `mpi`: the same binary on a cluster. Started by `mpirun`, `mpiexec` or
//!   `srun --mpi=pmix`, [`init`] initialises MPI: rank 0 returns to `main`
//!   and its pools use ranks 1..N-1 as their workers; the other ranks serve
//!   tasks and exit with the job. Without a launcher nothing changes.
//!   [`mpi_rank`] says which rank runs a task. A rank cannot be killed or
//!   replaced alone, so timeouts, `max_tasks_per_child`,
//!   `max_memory_per_child` and `max_lifetime` do not apply, and
//!   a rank that dies ends the whole job. Needs an MPI library and libclang
//!   to build (Debian: `openmpi-bin libopenmpi-dev libclang-dev`); the
//!   README's "Running on a cluster" says more.

// docs.rs builds with `--cfg docsrs` on nightly: feature-gated items get a
// "Available on crate feature ... only" badge.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "pool-runtime supports Linux only: its workers rely on /proc/self/exe, parent-death signals, memfd pages, pidfds and descriptor passing (SCM_RIGHTS). Build for a Linux target."
);

use std::sync::atomic::Ordering;

mod async_result;
mod backend;
mod builder;
mod call;
mod completion;
mod entry;
mod error;
mod imap;
mod in_order;
mod logging;
mod memory;
mod pool;
mod pool_options;
mod progress;
mod result_thread;
mod run;
mod scheduler;
mod serde_with;
mod shared;
mod stats;
mod sys;
mod worker;

pub use async_result::AsyncResult;
pub use builder::PoolBuilder;
pub use call::Call;
pub use completion::{AsCompleted, as_completed, wait_all, wait_any};
pub use error::{Error, ExitCause, ProtocolError, RegistryError, TaskFailure};
pub use imap::{Imap, ImapIndexed, ImapUnordered};
pub use pool::Pool;
pub use pool_core::{InitOutput, IntoArgs, Task, UnaryTask};
pub use shared::{CACHE_ENTRIES, Plain, Shared, SharedSlice};
pub use stats::{PoolStats, WorkerStats};

/// Registers a function as a pool task.
///
/// ```
/// use pool_runtime::task;
///
/// #[task]
/// pub fn power(x: u64, n: u32) -> u64 {
///     x.pow(n)
/// }
/// # fn main() {}
/// ```
///
/// expands to the function unchanged (still callable as `power(2, 3)`), plus
/// roughly:
///
/// ```ignore
/// /// The arguments of the task `power()`, as they cross the process boundary.
/// #[derive(Serialize, Deserialize)]
/// pub struct PowerArgs { pub x: u64, pub n: u32 }
///
/// #[doc(hidden)]
/// pub mod power {               // types and functions live in separate
///     pub struct PowerTask;     // namespaces: `use m::power` imports both
/// }
/// impl Task for power::PowerTask {
///     const NAME: &str = concat!(module_path!(), "::power");
///     const ID: u64 = task_id(Self::NAME);   // stable, computed at compile time
///     type Args = PowerArgs;
///     type Output = u64;
///     fn call(args: PowerArgs) -> u64 { power(args.x, args.n) }
/// }
/// impl IntoArgs<power::PowerTask> for (u64, u32) { /* .. */ }  // + From<(u64, u32)> for PowerArgs
/// impl IntoArgs<power::PowerTask> for PowerArgs { /* .. */ }
/// inventory::submit! { TaskEntry::of::<power::PowerTask>() }
/// ```
///
/// A one-argument task also accepts its bare argument (`map`), and
/// implements [`UnaryTask`]. A borrowed parameter (`&str`, `&[T]`, `&T`) is
/// stored owned (`String`, `Vec<T>`, `T`) and lent to the function; callers
/// pass the borrowed form (copied) or, for `&str` and `&[T]`, the owned one
/// (`String`, `Vec<T>`: moved, no copy). In the worker, `&[u8]` and `&str`
/// are views of the received bytes: a large argument, which arrives in
/// shared memory, is read in place, not copied out (the fastest way to hand
/// a task a big buffer; `tests/large.rs` checks where it points).
/// A parameter of type `Vec<u8>`, `Vec<f32>` or
/// `Vec<f64>` (or `&[u8]`, `&[f32]`, `&[f64]`) travels as one block of
/// bytes, and a result that is exactly one of those vectors is written and
/// read in one copy (a large `Vec<u8>` result becomes the very buffer its
/// bytes were received in). A byte buffer nested in another type
/// (a tuple, a struct) goes element by element, as serde has it, unless
/// it is a `serde_bytes::ByteBuf` or marked `#[serde(with = "serde_bytes")]`.
///
/// Rejected with an error on the offending token: generic, `async` and
/// `unsafe` functions, methods (`self`), pattern and `impl Trait`
/// parameters, `&mut` parameters, references nested inside parameter types,
/// and returned references. Argument and return types must implement serde's
/// `Serialize` and `Deserialize`.
///
/// `#[task(crate = path)]` names the `pool_runtime` crate when it is
/// re-exported under another path.
pub use pool_macros::task;

/// Makes `main` worker-capable: inserts [`init()`](init) as its first statement.
///
/// ```
/// #[pool_runtime::main]
/// fn main() {
///     // ...
/// }
/// ```
///
/// With an async runtime's attribute, this one goes below it, so that
/// `init()` runs before the runtime starts (see the crate docs, "With
/// `#[tokio::main]`"); on an `async fn` (written above it) it is a compile
/// error:
///
/// ```ignore
/// #[tokio::main]
/// #[pool_runtime::main]
/// async fn main() { /* .. */ }
/// ```
///
/// `#[pool_runtime::main(crate = path)]`, like `#[task(crate = path)]`,
/// names the `pool_runtime` crate when it is re-exported under another path:
///
/// ```
/// mod reexport {
///     pub(crate) use ::pool_runtime as pool;
/// }
///
/// #[reexport::pool::main(crate = crate::reexport::pool)]
/// fn main() {}
/// ```
pub use pool_macros::main;

/// The names most programs need: [`Pool`], [`Error`], the `task!(...)`
/// macro, and the shared-value handles [`Shared`] and [`SharedSlice`].
///
/// Import the `#[task]` attribute beside it with `use pool_runtime::task;`:
/// the explicit import and this glob import coexist.
pub mod prelude {
    pub use crate::{Error, Pool, Shared, SharedSlice};

    /// Names the handle of a `#[task]` function: `task!(power)`,
    /// `task!(math::power)`, `task!(other_crate::power)`.
    ///
    /// It rewrites the path `a::b::power` to the handle `a::b::power::PowerTask`
    /// that `#[task]` generated beside the function, so anything that can
    /// name the function (including a `use` of it) can name its task.
    ///
    /// ```
    /// use pool_runtime::prelude::*;
    /// use pool_runtime::task;
    ///
    /// mod math {
    ///     use pool_runtime::task;
    ///     #[task]
    ///     pub fn square(x: u64) -> u64 { x * x }
    /// }
    ///
    /// #[pool_runtime::main]
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::new()?;
    ///     assert_eq!(pool.map(task!(math::square), [1, 2, 3])?, [1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    pub use pool_macros::task_handle as task;
}

/// Makes this program worker-capable. Call it first in `main` (or mark
/// `main` with [`#[main]`](macro@main)).
///
/// In a process the pool started as a worker, it serves tasks until the pool
/// is done with it, then exits the process: it never returns, and the rest
/// of `main` never runs there. Anywhere else it returns at once. Code placed
/// before it runs in every worker as well, and must not read stdin nor start
/// programs that inherit it: until `init()` takes it over, a worker's stdin
/// is its channel to the pool (its tasks then see an empty stdin).
///
/// # Examples
///
/// ```
/// use pool_runtime::prelude::*;
/// use pool_runtime::task;
///
/// #[task]
/// fn pid() -> u32 {
///     std::process::id()
/// }
///
/// fn main() -> Result<(), Error> {
///     pool_runtime::init(); // first: in a worker, serves tasks and never returns
///     let pool = Pool::builder().processes(2).build()?;
///     assert_ne!(pool.apply(task!(pid), ())?, std::process::id());
///     Ok(())
/// }
/// ```
pub fn init() {
    entry::enter();
}

/// This process's rank when the program runs under an MPI launcher
/// (`mpirun`, `mpiexec`, `srun`) and was built with the `mpi` feature: `0`
/// in the process that runs `main` and owns the pool, `1..` in its workers.
/// `None` otherwise, and before [`init`] ran.
///
/// ```
/// use pool_runtime::prelude::*;
/// use pool_runtime::task;
///
/// #[task]
/// fn whoami() -> String {
///     match pool_runtime::mpi_rank() {
///         Some(rank) => format!("MPI rank {rank}"),
///         None => format!("process {}", std::process::id()),
///     }
/// }
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), Error> {
///     let pool = Pool::builder().processes(2).build()?;
///     // Without a launcher (or without the feature) workers are local processes.
///     let here = pool.apply(task!(whoami), ())?;
///     assert!(here.starts_with("process ") || here.starts_with("MPI rank "), "{here}");
///     Ok(())
/// }
/// ```
pub fn mpi_rank() -> Option<u32> {
    #[cfg(feature = "mpi")]
    return backend::mpi::rank();
    #[cfg(not(feature = "mpi"))]
    None
}

/// Makes a test binary worker-capable: put it once at the top of an
/// integration test file (or inside the `#[cfg(test)]` module of a crate).
///
/// It defines an ignored test, `pool_runtime_worker_entry`, which the pool
/// selects (`--exact --ignored`) when it re-executes the test binary as a
/// worker. Works under `cargo test` and `cargo nextest run`.
#[macro_export]
macro_rules! test_support {
    () => {
        #[cfg(test)]
        #[test]
        #[ignore = "pool-runtime worker entry: runs inside worker processes only"]
        fn pool_runtime_worker_entry() {
            $crate::__private::worker_test_entry();
        }

        #[cfg(test)]
        $crate::__private::inventory::submit! {
            $crate::__private::HarnessEntry {
                path: ::core::concat!(::core::module_path!(), "::pool_runtime_worker_entry"),
            }
        }
    };
}

/// The arguments that make a test harness run only the worker entry.
pub(crate) fn harness_args() -> Option<Vec<String>> {
    let entry = inventory::iter::<__private::HarnessEntry>
        .into_iter()
        .next()?;
    // module_path!() starts with the crate's name, which test names omit.
    let name = entry
        .path
        .split_once("::")
        .map_or(entry.path, |(_, rest)| rest);
    Some(
        [
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
    )
}

/// Not public API: what generated code names.
#[doc(hidden)]
pub mod __private {
    pub use ::{inventory, postcard, serde};
    pub use pool_core::registry::TaskEntry;
    pub use pool_core::task::sealed::Sealed as TaskSealed;
    pub use pool_core::{IntoArgs, Task, UnaryTask, assert_wire, task_id};

    /// A test binary's worker entry test, registered by `test_support!`.
    pub struct HarnessEntry {
        /// `module_path!()::pool_runtime_worker_entry`.
        pub path: &'static str,
    }
    inventory::collect!(HarnessEntry);

    /// The body of the worker entry test.
    pub fn worker_test_entry() {
        super::entry::enter();
        // Not a worker (someone ran the ignored tests): nothing to do.
        super::worker::INIT_CALLED.store(false, super::Ordering::Relaxed);
    }

    pub use crate::serde_with::{bytes, f32s, f64s};
    pub use pool_core::decode::{DecodeError, from_bytes};
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_env_round_trips() {
        use crate::worker::WorkerEnv;
        let env = WorkerEnv::decode("v2:1:42").expect("valid");
        assert_eq!((env.stdout, env.parent), (true, 42));
        let env = WorkerEnv::decode("v2:0:7").expect("valid");
        assert_eq!((env.stdout, env.parent), (false, 7));
        for bad in ["v1:5:6:-1:42", "v2:2:42", "v2:1", "v2:1:42:9", "v2:x:42"] {
            assert!(WorkerEnv::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn float_helpers_move_every_bit_and_refuse_a_partial_element() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Doubles(#[serde(with = "crate::__private::f64s")] Vec<f64>);
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Singles(#[serde(with = "crate::__private::f32s")] Vec<f32>);
        let d = vec![
            1.5,
            -0.0,
            f64::from_bits(0x7ff8_0000_0000_0001),
            f64::MIN_POSITIVE / 2.0,
        ];
        let s: Vec<f32> = d.iter().map(|&x| x as f32).collect();
        let bytes = pool_core::encode::to_vec(&Doubles(d.clone())).expect("encodes");
        // A one-byte length (of bytes), then the elements' bytes.
        assert_eq!(bytes.len(), 1 + 8 * d.len());
        assert_eq!(bytes[1..9], 1.5f64.to_le_bytes());
        let back: Doubles = pool_core::decode::from_bytes(&bytes).expect("decodes");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.0), bits(&d));
        let bytes = pool_core::encode::to_vec(&Singles(s.clone())).expect("encodes");
        let back: Singles = pool_core::decode::from_bytes(&bytes).expect("decodes");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.0), bits(&s));
        // Seven bytes are not a whole f64, nor two and a bit f32s.
        let partial = [7u8, 0, 0, 0, 0, 0, 0, 0];
        let Err(err) = pool_core::decode::from_bytes::<Doubles>(&partial) else {
            panic!("seven bytes decoded as doubles");
        };
        assert!(err.to_string().contains("invalid length 7"), "{err}");
        assert!(err.to_string().contains("8-byte floats"), "{err}");
        assert!(pool_core::decode::from_bytes::<Singles>(&partial).is_err());
    }

    #[test]
    fn init_is_a_no_op_outside_workers() {
        super::init();
        assert!(super::worker::INIT_CALLED.load(super::Ordering::Relaxed));
    }
}
