//! `#[main]`: call `init()` before anything else in `main`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

use crate::errors::with_error;
use crate::model::crate_option;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(err) => return with_error(item, err),
    };
    let krate = match crate_option(args, "#[pool_runtime::main]") {
        Ok(krate) => krate,
        Err(err) => return with_error(func.to_token_stream(), err),
    };
    let init: syn::Stmt = syn::parse_quote!(#krate::init(););
    func.block.stmts.insert(0, init);
    quote!(#func)
}
