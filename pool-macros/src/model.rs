//! The checked model of a `#[task]` function, and its expansion.
//!
//! Every rule lives in [`TaskFn::from_syn`]; [`TaskFn::generate`] reads the
//! checked model only and cannot fail.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::errors::Errors;

/// The handle type's name: `power` → `PowerTask`, with the span of `power`.
pub(crate) fn handle_ident(func: &syn::Ident) -> syn::Ident {
    format_ident!("{}Task", camel(func), span = func.span())
}

fn camel(ident: &syn::Ident) -> String {
    let name = ident.unraw().to_string();
    let mut out = String::with_capacity(name.len());
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    if out.is_empty() {
        "Unnamed".to_owned()
    } else {
        out
    }
}

/// The options `#[task]` and `#[main]` take: only `crate = path`, the path
/// of `pool_runtime` when it is re-exported under another name
/// (`::pool_runtime` by default). `attr` names the attribute in errors.
pub(crate) fn crate_option(args: TokenStream, attr: &str) -> syn::Result<syn::Path> {
    let mut krate: syn::Path = syn::parse_quote!(::pool_runtime);
    if args.is_empty() {
        return Ok(krate);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            krate = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error(format!(
                "unknown {attr} option `{}`; expected `crate = path`",
                meta.path.to_token_stream().to_string().replace(' ', "")
            )))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(krate)
}

/// One parameter of the task function.
struct Param {
    name: syn::Ident,
    /// The type as written (`u64`, `&str`).
    ty: syn::Type,
    /// For `&T`: `T`.
    borrowed: Option<syn::Type>,
}

impl Param {
    /// The owned type stored in the argument struct.
    fn owned(&self) -> TokenStream {
        let Some(inner) = &self.borrowed else {
            return self.ty.to_token_stream();
        };
        let span = self.ty.span();
        match inner {
            syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => {
                quote_spanned!(span=> ::std::string::String)
            }
            syn::Type::Slice(s) => {
                let elem = &s.elem;
                quote_spanned!(span=> ::std::vec::Vec<#elem>)
            }
            other => quote_spanned!(span=> <#other as ::std::borrow::ToOwned>::Owned),
        }
    }

    /// The type a caller passes for this parameter in an argument tuple.
    fn passed(&self, lifetime: &syn::Lifetime) -> TokenStream {
        match &self.borrowed {
            Some(inner) => quote!(&#lifetime #inner),
            None => self.ty.to_token_stream(),
        }
    }

    /// Whether the worker can pass this parameter straight out of the
    /// encoded arguments: `&[u8]` and `&str`, whose encoding is their bytes.
    fn borrows_input(&self) -> bool {
        match &self.borrowed {
            Some(syn::Type::Slice(s)) => {
                matches!(&*s.elem, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8"))
            }
            Some(syn::Type::Path(p)) => p.qself.is_none() && p.path.is_ident("str"),
            _ => false,
        }
    }

    /// Whether the owned type is named without `ToOwned` (`Vec<X>` for
    /// `&[X]`, `String` for `&str`, or the parameter's own type), so that
    /// callers may pass it too.
    fn owned_is_plain(&self) -> bool {
        match &self.borrowed {
            None | Some(syn::Type::Slice(_)) => true,
            Some(syn::Type::Path(p)) => p.qself.is_none() && p.path.is_ident("str"),
            Some(_) => false,
        }
    }

    /// `X` when the owned type is `Vec<X>` (passed as `Vec<X>` or `&[X]`).
    fn vec_element(&self) -> Option<&syn::Type> {
        match &self.borrowed {
            Some(syn::Type::Slice(s)) => Some(&s.elem),
            Some(_) => None,
            None => match &self.ty {
                syn::Type::Path(p) if p.qself.is_none() => {
                    let last = p.path.segments.last()?;
                    if last.ident != "Vec" {
                        return None;
                    }
                    match &last.arguments {
                        syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => {
                            match &a.args[0] {
                                syn::GenericArgument::Type(t) => Some(t),
                                _ => None,
                            }
                        }
                        _ => None,
                    }
                }
                _ => None,
            },
        }
    }

    /// The `#[serde(with)]` helper of `pool_runtime::__private` that
    /// encodes this parameter in one copy, if any: `bytes` for `Vec<u8>`,
    /// `f64s` / `f32s` for `Vec<f64>` / `Vec<f32>` (their little-endian
    /// bytes as one byte string).
    fn one_copy_helper(&self) -> Option<&'static str> {
        let elem = self.vec_element()?;
        ["u8", "f64", "f32"]
            .into_iter()
            .zip(["bytes", "f64s", "f32s"])
            .find(|(name, _)| matches!(elem, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident(name)))
            .map(|(_, helper)| helper)
    }
}

/// Finds what a type must not contain.
#[derive(Default)]
struct TypeScan {
    impl_trait: Option<syn::TypeImplTrait>,
    reference: Option<Span>,
}

impl<'ast> Visit<'ast> for TypeScan {
    fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
        self.impl_trait.get_or_insert_with(|| node.clone());
    }
    fn visit_type_reference(&mut self, node: &'ast syn::TypeReference) {
        self.reference.get_or_insert(node.span());
        syn::visit::visit_type_reference(self, node);
    }
}

/// A `#[task]` function that passed every check.
pub(crate) struct TaskFn<'a> {
    func: &'a syn::ItemFn,
    krate: syn::Path,
    params: Vec<Param>,
    output: syn::Type,
}

impl<'a> TaskFn<'a> {
    /// Checks the attribute's options and the function's signature,
    /// reporting every problem at once.
    pub(crate) fn from_syn(args: TokenStream, func: &'a syn::ItemFn) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let krate = crate_option(args, "#[task]").unwrap_or_else(|err| {
            errors.at(err.to_compile_error(), err);
            syn::parse_quote!(::pool_runtime)
        });

        let sig = &func.sig;
        if let Some(token) = &sig.asyncness {
            errors.at(token, "#[task] functions cannot be `async`: a worker runs them to completion; make it a plain `fn`");
        }
        if let Some(token) = &sig.unsafety {
            errors.at(token, "#[task] functions cannot be `unsafe fn`: no caller in another process can uphold its contract");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.at(
                &sig.generics,
                "#[task] functions cannot be generic: a worker must know the concrete argument and return types; write a non-generic wrapper",
            );
        }
        if let Some(variadic) = &sig.variadic {
            errors.at(variadic, "#[task] functions cannot be variadic");
        }

        let mut params = Vec::new();
        for input in &sig.inputs {
            match input {
                syn::FnArg::Receiver(receiver) => errors.at(
                    receiver,
                    "#[task] cannot be a method: a worker has no `self`; make it a free function that takes the value as an argument",
                ),
                syn::FnArg::Typed(pat_type) => {
                    if let Some(param) = check_param(pat_type, &mut errors) {
                        params.push(param);
                    }
                }
            }
        }

        let output = match &sig.output {
            syn::ReturnType::Default => syn::parse_quote!(()),
            syn::ReturnType::Type(_, ty) => {
                let mut scan = TypeScan::default();
                scan.visit_type(ty);
                if scan.impl_trait.is_some() {
                    errors.at(ty, "#[task] functions cannot return `impl Trait`: name a concrete type the parent can decode");
                } else if scan.reference.is_some() {
                    errors.at(ty, "#[task] functions cannot return a reference: results cross a process boundary; return an owned type");
                }
                (**ty).clone()
            }
        };

        errors.finish()?;
        Ok(TaskFn {
            func,
            krate,
            params,
            output,
        })
    }

    /// Emits the function unchanged plus its argument struct, handle,
    /// conversions and registry row.
    pub(crate) fn generate(&self) -> TokenStream {
        let func = self.func;
        let krate = &self.krate;
        let private = quote!(#krate::__private);
        let vis = &func.vis;
        let fn_ident = &func.sig.ident;
        let fn_name = fn_ident.unraw().to_string();
        let sig_span = func.sig.span();
        let args_ident = format_ident!("{}Args", camel(fn_ident), span = fn_ident.span());
        let handle = handle_ident(fn_ident);
        let handle_path = quote!(#fn_ident::#handle);
        let inner_vis = nested_vis(vis);
        let arity = self.params.len();

        let names: Vec<&syn::Ident> = self.params.iter().map(|p| &p.name).collect();
        let owned: Vec<TokenStream> = self.params.iter().map(Param::owned).collect();
        let private_path = format!(
            "{}::__private",
            krate.to_token_stream().to_string().replace(' ', "")
        );
        let field_attrs: Vec<TokenStream> = self
            .params
            .iter()
            .map(|p| match p.one_copy_helper() {
                Some(helper) => {
                    let with = format!("{private_path}::{helper}");
                    quote!(#[serde(with = #with)])
                }
                None => quote!(),
            })
            .collect();
        let serde_crate = format!(
            "{}::__private::serde",
            krate.to_token_stream().to_string().replace(' ', "")
        );

        // `call`'s parameter is hygienic (mixed-site span): a task function
        // or a parameter named `args` is not shadowed by it.
        let args_var = syn::Ident::new("args", Span::mixed_site());
        let call_args: Vec<TokenStream> = self
            .params
            .iter()
            .map(|p| {
                let name = &p.name;
                if p.borrowed.is_some() {
                    quote!(::core::borrow::Borrow::borrow(&#args_var.#name))
                } else {
                    quote!(#args_var.#name)
                }
            })
            .collect();

        let any_borrowed = self.params.iter().any(|p| p.borrowed.is_some());
        let lifetime = syn::Lifetime::new("'arg", Span::call_site());
        let impl_generics = if any_borrowed {
            quote!(<#lifetime>)
        } else {
            quote!()
        };
        let passed: Vec<TokenStream> = self.params.iter().map(|p| p.passed(&lifetime)).collect();
        let convert = |value: TokenStream, p: &Param| {
            if p.borrowed.is_some() {
                quote!(::std::borrow::ToOwned::to_owned(#value))
            } else {
                value
            }
        };
        let tuple_fields: Vec<TokenStream> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let index = syn::Index::from(i);
                let name = &p.name;
                let value = convert(quote!(self.#index), p);
                quote!(#name: #value)
            })
            .collect();

        // Callers may also pass owned values for `&[X]` and `&str`
        // parameters (`Vec<X>`, `String`), which move into the argument
        // struct without a copy.
        let owned_too = any_borrowed && self.params.iter().all(Param::owned_is_plain);
        let unary = if arity == 1 {
            let p = &self.params[0];
            let ty = &passed[0];
            let name = &p.name;
            let value = convert(quote!(self), p);
            let owned_ty = &owned[0];
            let owned_unary = if owned_too {
                quote_spanned! {sig_span=>
                    impl #private::IntoArgs<#handle_path> for #owned_ty {
                        #[inline]
                        fn into_args(self) -> #args_ident {
                            #args_ident { #name: self }
                        }
                    }
                }
            } else {
                quote!()
            };
            quote_spanned! {sig_span=>
                #owned_unary
                impl #private::UnaryTask for #handle_path {}
                impl #impl_generics #private::IntoArgs<#handle_path> for #ty {
                    #[inline]
                    fn into_args(self) -> #args_ident {
                        #args_ident { #name: #value }
                    }
                }
                impl #impl_generics ::core::convert::From<#ty> for #args_ident {
                    #[inline]
                    fn from(value: #ty) -> Self {
                        #private::IntoArgs::<#handle_path>::into_args(value)
                    }
                }
            }
        } else {
            quote!()
        };

        // A worker decodes `&[u8]` and `&str` parameters as views of the
        // encoded arguments (for a large chunk, its shared mapping): no
        // copy. Other parameters decode as in the argument struct.
        let call_encoded = if self.params.iter().any(Param::borrows_input) {
            let input_var = syn::Ident::new("input", Span::mixed_site());
            let view = syn::Lifetime::new("'input", Span::mixed_site());
            let view_fields: Vec<TokenStream> = self
                .params
                .iter()
                .zip(&field_attrs)
                .zip(&owned)
                .map(|((p, attrs), owned)| {
                    let name = &p.name;
                    match &p.borrowed {
                        Some(inner) if p.borrows_input() => {
                            quote!(#[serde(borrow)] #name: &#view #inner)
                        }
                        _ => quote!(#attrs #name: #owned),
                    }
                })
                .collect();
            let view_args: Vec<TokenStream> = self
                .params
                .iter()
                .zip(&call_args)
                .map(|(p, arg)| {
                    if p.borrows_input() {
                        let name = &p.name;
                        quote!(#args_var.#name)
                    } else {
                        arg.clone()
                    }
                })
                .collect();
            let output = &self.output;
            // Named after the argument struct (whose name the user's types
            // already must not take), with a `__` prefix: the user's types
            // written in its fields resolve to theirs, not to it.
            let view_ident = format_ident!("__{}View", args_ident);
            quote! {
                #[inline]
                fn call_encoded(
                    #input_var: &[u8],
                ) -> ::core::result::Result<#output, #private::DecodeError> {
                    #[derive(#private::serde::Deserialize)]
                    #[serde(crate = #serde_crate)]
                    struct #view_ident<#view> {
                        #(#view_fields,)*
                    }
                    let #args_var: #view_ident<'_> = #private::from_bytes(#input_var)?;
                    ::core::result::Result::Ok(#fn_ident(#(#view_args),*))
                }
            }
        } else {
            quote!()
        };

        let output = &self.output;
        let output_span = output.span();
        let output_decl = quote_spanned!(output_span=> type Output = #output;);
        let args_doc = format!(
            "The arguments of the task [`{fn_name}()`], as they cross the process boundary."
        );
        let handle_doc = format!(
            "The handle of the task [`{fn_name}()`](super::{fn_name}); name it with `task!({fn_name})`."
        );

        let conversions = quote_spanned! {sig_span=>
            impl #impl_generics #private::IntoArgs<#handle_path> for (#(#passed,)*) {
                #[inline]
                fn into_args(self) -> #args_ident {
                    #args_ident { #(#tuple_fields),* }
                }
            }

            impl #impl_generics ::core::convert::From<(#(#passed,)*)> for #args_ident {
                #[inline]
                fn from(value: (#(#passed,)*)) -> Self {
                    #private::IntoArgs::<#handle_path>::into_args(value)
                }
            }

            impl #private::IntoArgs<#handle_path> for #args_ident {
                #[inline]
                fn into_args(self) -> #args_ident {
                    self
                }
            }
        };
        let owned_indices = (0..arity).map(syn::Index::from);
        let owned_tuple = if owned_too {
            quote_spanned! {sig_span=>
                impl #private::IntoArgs<#handle_path> for (#(#owned,)*) {
                    #[inline]
                    fn into_args(self) -> #args_ident {
                        #args_ident { #(#names: self.#owned_indices),* }
                    }
                }
            }
        } else {
            quote!()
        };
        let wire_checks: Vec<TokenStream> = self
            .params
            .iter()
            .map(|p| {
                let owned = p.owned();
                quote_spanned!(p.ty.span()=> #private::assert_wire::<#owned>();)
            })
            .chain(std::iter::once(
                quote_spanned!(output_span=> #private::assert_wire::<#output>();),
            ))
            .collect();

        quote! {
            #func

            const _: () = { #(#wire_checks)* };

            #[doc = #args_doc]
            #[derive(#private::serde::Serialize, #private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #vis struct #args_ident {
                #(
                    #[allow(missing_docs)]
                    #field_attrs
                    #vis #names: #owned,
                )*
            }

            #[doc(hidden)]
            #vis mod #fn_ident {
                #[doc = #handle_doc]
                #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::default::Default)]
                #inner_vis struct #handle;
            }

            impl #private::TaskSealed for #handle_path {}

            impl #private::Task for #handle_path {
                const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #fn_name);
                const ID: u64 = #private::task_id(<Self as #private::Task>::NAME);
                type Args = #args_ident;
                #output_decl
                #[inline]
                fn call(#args_var: #args_ident) -> #output {
                    #fn_ident(#(#call_args),*)
                }
                #call_encoded
            }

            #unary

            #conversions

            #owned_tuple

            const _: () = {
                #private::inventory::submit! {
                    #private::TaskEntry::of::<#handle_path>()
                }
            };
        }
    }
}

fn check_param(pat_type: &syn::PatType, errors: &mut Errors) -> Option<Param> {
    let name = match &*pat_type.pat {
        syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
        other => {
            errors.at(
                other,
                "#[task] arguments must be plain names (`x: u64`): patterns are not supported; destructure inside the function",
            );
            return None;
        }
    };
    let ty = (*pat_type.ty).clone();
    let mut borrowed = None;
    let mut inner_ty = &ty;
    if let syn::Type::Reference(r) = &ty {
        if let Some(token) = &r.mutability {
            let and = &r.and_token;
            errors.at(
                quote!(#and #token),
                "#[task] arguments cannot be `&mut`: changes made in a worker cannot reach the caller; take the value and return the new one",
            );
            return None;
        }
        if let Some(lt) = &r.lifetime
            && lt.ident != "_"
        {
            errors.at(
                lt,
                "#[task] borrowed arguments cannot name a lifetime: the worker rebuilds them from an owned copy; write `&T` or take an owned type",
            );
            return None;
        }
        borrowed = Some((*r.elem).clone());
        inner_ty = &r.elem;
    }
    let mut scan = TypeScan::default();
    scan.visit_type(inner_ty);
    if let Some(node) = scan.impl_trait {
        errors.at(
            node,
            "#[task] arguments cannot be `impl Trait`: a worker must know the concrete type; name it",
        );
        return None;
    }
    if scan.reference.is_some() {
        errors.at(
            inner_ty,
            "#[task] argument types cannot contain references (only a top-level `&T` is copied into an owned value); use an owned type such as `String` or `Vec<T>`",
        );
        return None;
    }
    Some(Param { name, ty, borrowed })
}

/// The visibility, seen from inside the generated `mod`, that matches `vis`
/// seen from outside it.
fn nested_vis(vis: &syn::Visibility) -> TokenStream {
    match vis {
        syn::Visibility::Public(_) => quote!(pub),
        syn::Visibility::Inherited => quote!(pub(super)),
        syn::Visibility::Restricted(r) => {
            let path = &r.path;
            let first = path.segments.first().map(|s| s.ident.to_string());
            match first.as_deref() {
                Some("crate") if path.segments.len() == 1 => quote!(pub(crate)),
                Some("self") if path.segments.len() == 1 => quote!(pub(super)),
                Some("self") => {
                    let rest = path.segments.iter().skip(1);
                    quote!(pub(in super #(::#rest)*))
                }
                Some("super") => quote!(pub(in super::#path)),
                _ => quote!(pub(in #path)),
            }
        }
    }
}
