//! Collects every problem of a macro input, each on its own token.

use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Every error found while checking one input.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records `msg`, blaming the tokens of `blame`.
    pub(crate) fn at(&mut self, blame: impl ToTokens, msg: impl Display) {
        let err = syn::Error::new_spanned(blame, msg);
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    /// `Err` with everything recorded, or `Ok`.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The original tokens followed by the error, so that users see one error
/// and not a cascade of "cannot find function".
pub(crate) fn with_error(tokens: TokenStream, err: syn::Error) -> TokenStream {
    let mut out = tokens;
    out.extend(err.into_compile_error());
    out
}
