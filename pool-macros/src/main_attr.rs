//! `#[main]`: call `init()` before anything else in `main`. Refused on an
//! `async fn`, which an async runtime's attribute below it would wrap.

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
    if let Some(asyncness) = &func.sig.asyncness {
        // An async `main` is made sync by an attribute below this one (an
        // async runtime's): `init()` would run inside its runtime.
        let err = syn::Error::new_spanned(
            asyncness,
            "#[pool_runtime::main] goes below the async runtime's attribute (`#[tokio::main]` \
             then `#[pool_runtime::main]`), so that `init()` runs before the runtime starts; \
             above it, every worker would start the runtime and serve tasks inside it",
        );
        return with_error(func.to_token_stream(), err);
    }
    let init: syn::Stmt = syn::parse_quote!(#krate::init(););
    func.block.stmts.insert(0, init);
    quote!(#func)
}
