use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn count(s: &str, xs: &[u32]) -> usize {
    s.len() + xs.len()
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

// Never called: only the argument types are checked.
#[allow(dead_code)]
fn borrowed(pool: &Pool) -> Result<Vec<usize>, Error> {
    pool.starmap(task!(count), [("ab", &[1u32, 2][..])])
}

#[allow(dead_code)]
fn inferred_literals(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.map(task!(square), [1, 2, 3])
}

fn main() {}

// `&str` and `&[T]` parameters also take the owned forms, moved.
#[allow(dead_code)]
fn owned(pool: &Pool) -> Result<Vec<usize>, Error> {
    pool.starmap(task!(count), vec![("ab".to_owned(), vec![1u32, 2])])
}

#[task]
fn checksum(data: &[u8]) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum()
}

#[allow(dead_code)]
fn owned_bare(pool: &Pool, buffers: Vec<Vec<u8>>) -> Result<Vec<u64>, Error> {
    pool.map(task!(checksum), buffers)
}

// A worker decodes `&[u8]` and `&str` as views through a struct of its
// own: the user's types and parameter names around them stay theirs.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct View {
    x: u32,
}
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct PoolRuntimeArgsView {
    y: u32,
}

#[task]
fn views(input: &[u8], args: &str, view: View, other: &PoolRuntimeArgsView) -> u32 {
    input.len() as u32 + args.len() as u32 + view.x + other.y
}

#[allow(dead_code)]
fn views_call(pool: &Pool) -> Result<u32, Error> {
    pool.apply(
        task!(views),
        (&[1u8][..], "a", View { x: 1 }, &PoolRuntimeArgsView { y: 2 }),
    )
}
