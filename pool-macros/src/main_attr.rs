//! `#[main]`: call `init()` before anything else in `main`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

use crate::errors::with_error;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(err) => return with_error(item, err),
    };
    if !args.is_empty() {
        let err = syn::Error::new_spanned(args, "#[pool_runtime::main] takes no options");
        return with_error(func.to_token_stream(), err);
    }
    let init: syn::Stmt = syn::parse_quote!(::pool_runtime::init(););
    func.block.stmts.insert(0, init);
    quote!(#func)
}
