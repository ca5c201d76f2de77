//! `task!(path::to::power)` → `path::to::power::PowerTask`.

use proc_macro2::TokenStream;

use crate::errors::Errors;
use crate::model::handle_ident;

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    match handle_path(input) {
        Ok(path) => quote::quote!(#path),
        Err(err) => err.into_compile_error(),
    }
}

fn handle_path(input: TokenStream) -> syn::Result<syn::Path> {
    if input.is_empty() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "task!(...) needs the path of a #[task] function, e.g. `task!(power)` or `task!(math::power)`",
        ));
    }
    let mut path: syn::Path = syn::parse2(input).map_err(|err| {
        syn::Error::new(
            err.span(),
            "task!(...) takes the path of a #[task] function, e.g. `task!(math::power)`",
        )
    })?;
    let mut errors = Errors::default();
    for seg in &path.segments {
        if !seg.arguments.is_none() {
            errors.at(
                &seg.arguments,
                "task!(...) takes a plain path: tasks are not generic",
            );
        }
    }
    errors.finish()?;
    let Some(last) = path.segments.last() else {
        return Err(syn::Error::new_spanned(
            &path,
            "task!(...) needs the path of a #[task] function",
        ));
    };
    let handle = handle_ident(&last.ident);
    path.segments.push(syn::PathSegment::from(handle));
    Ok(path)
}
