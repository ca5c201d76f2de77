//! Procedural macros of `pool-runtime`. Use them through `pool-runtime`:
//! `#[pool_runtime::task]`, `pool_runtime::task!(...)` (from the prelude) and
//! `#[pool_runtime::main]`. Their documentation lives there.

use proc_macro::TokenStream;

mod errors;
mod main_attr;
mod model;
mod task_attr;
mod task_ref;

/// Registers a function as a pool task. See `pool_runtime::task`.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task_attr::expand(args.into(), item.into()).into()
}

/// Names the handle of a `#[task]` function. See `pool_runtime::task!`.
#[proc_macro]
pub fn task_handle(input: TokenStream) -> TokenStream {
    task_ref::expand(input.into()).into()
}

/// Makes `main` worker-capable. See `pool_runtime::main`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    main_attr::expand(args.into(), item.into()).into()
}
