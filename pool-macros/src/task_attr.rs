//! `#[task]`: parse, validate, expand.

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::errors::with_error;
use crate::model::TaskFn;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(err) => {
            let err = syn::Error::new(
                err.span(),
                format!("#[task] applies to a free function: {err}"),
            );
            return with_error(item, err);
        }
    };
    match TaskFn::from_syn(args, &func) {
        Ok(task) => task.generate(),
        Err(err) => with_error(func.to_token_stream(), err),
    }
}
