//! The `#[plugin]` attribute of `fluxgate-sdk`, re-exported as `fluxgate_sdk::plugin`.
//! Plugin authors use it through the SDK; see the SDK's documentation.
//!
//! On `impl Plugin for MyPlugin { ... }` the attribute
//! 1. sets `const HOOKS: ::fluxgate_sdk::Hooks` on the impl from the hook methods the
//!    block defines (`on_request`, `on_response`), so the gateway calls exactly the
//!    hooks the plugin implements: a hook that is written is never silently skipped,
//!    and one that is not written is never called for nothing;
//! 2. exports the type as the component's `init`, `on-request` and `on-response`
//!    (through the SDK's hidden `__export_plugin!`, on wasm32 only).
//!
//! A hook method under `#[cfg(...)]` counts when its `cfg` holds. A macro call among
//! the impl's items could define a hook the attribute cannot see: then both hooks count
//! (the trait's default, which only means a default hook is called for nothing).

#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Attribute, ImplItem, ItemImpl, Meta};

/// Marks a plugin's `impl Plugin for T` block: sets `T::HOOKS` from the hooks the block
/// defines and exports `T` as the WebAssembly component. Use it once per plugin crate.
///
/// ```text
/// #[fluxgate_sdk::plugin]
/// impl Plugin for MyPlugin {
///     fn init(config: Config) -> Result<Self, String> { ... }
///     fn on_request(&self, req: &mut Request) -> Action { ... }
/// }
/// ```
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into()).into()
}

/// The attribute on token streams (testable outside a compiler invocation).
fn expand(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    if !attr.is_empty() {
        return syn::Error::new(attr.span(), "#[fluxgate_sdk::plugin] takes no arguments")
            .to_compile_error();
    }
    match syn::parse2::<ItemImpl>(item) {
        Ok(imp) => expand_impl(imp).unwrap_or_else(|e| e.to_compile_error()),
        Err(e) => syn::Error::new(
            e.span(),
            "#[fluxgate_sdk::plugin] goes on an `impl Plugin for YourType { ... }` block",
        )
        .to_compile_error(),
    }
}

/// Which hooks the impl defines: `None` if not at all, else the `cfg` conditions of the
/// method (empty: always).
#[derive(Default)]
struct Found {
    on_request: Option<Vec<TokenStream2>>,
    on_response: Option<Vec<TokenStream2>>,
    /// A macro call among the items: it could define a hook.
    has_macro: bool,
}

fn expand_impl(mut imp: ItemImpl) -> syn::Result<TokenStream2> {
    if imp.trait_.is_none() {
        return Err(syn::Error::new(
            imp.self_ty.span(),
            "#[fluxgate_sdk::plugin] goes on `impl Plugin for YourType`, not on an inherent impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "a plugin exported as a component cannot be generic: implement Plugin for a concrete type",
        ));
    }
    let mut found = Found::default();
    for item in &imp.items {
        match item {
            ImplItem::Fn(f) if f.sig.ident == "on_request" => {
                found.on_request = Some(cfg_conditions(&f.attrs));
            }
            ImplItem::Fn(f) if f.sig.ident == "on_response" => {
                found.on_response = Some(cfg_conditions(&f.attrs));
            }
            ImplItem::Const(c) if c.ident == "HOOKS" => {
                return Err(syn::Error::new(
                    c.ident.span(),
                    "HOOKS is set by #[fluxgate_sdk::plugin] from the hook methods this impl \
                     defines: remove it (to skip a hook for some configs, return \
                     `Info::new().on_request(false)` or `.on_response(false)` from `info`)",
                ));
            }
            ImplItem::Macro(_) => found.has_macro = true,
            _ => {}
        }
    }
    let on_request = flag(found.on_request.as_deref(), found.has_macro);
    let on_response = flag(found.on_response.as_deref(), found.has_macro);
    let hooks: ImplItem = syn::parse_quote! {
        /// The hooks this impl defines (set by `#[fluxgate_sdk::plugin]`).
        const HOOKS: ::fluxgate_sdk::Hooks = ::fluxgate_sdk::Hooks {
            on_request: #on_request,
            on_response: #on_response,
        };
    };
    imp.items.insert(0, hooks);
    let self_ty = &imp.self_ty;
    let export = quote! { ::fluxgate_sdk::__export_plugin!(#self_ty); };
    Ok(quote! {
        #imp
        #export
    })
}

/// The `cfg(...)` predicates on a method, as tokens for `cfg!(...)`.
fn cfg_conditions(attrs: &[Attribute]) -> Vec<TokenStream2> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .filter_map(|a| match &a.meta {
            Meta::List(list) => Some(list.tokens.clone()),
            _ => None,
        })
        .collect()
}

/// The boolean expression for one hook.
fn flag(found: Option<&[TokenStream2]>, has_macro: bool) -> TokenStream2 {
    match found {
        Some(conditions) => {
            let conditions = conditions.iter().map(|c| quote! { && ::core::cfg!(#c) });
            quote! { (true #(#conditions)*) }
        }
        None if has_macro => quote! { true },
        None => quote! { false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(attr: TokenStream2, item: TokenStream2) -> String {
        expand(attr, item)
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn hooks_of(item: TokenStream2) -> (String, String) {
        let out = expanded(TokenStream2::new(), item);
        let field = |name: &str| {
            let start = out
                .find(&format!("{name} :"))
                .unwrap_or_else(|| panic!("no {name} in {out}"));
            let rest = &out[start + name.len() + 2..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].trim().to_string()
        };
        (field("on_request"), field("on_response"))
    }

    #[test]
    fn detects_the_defined_hooks() {
        let (req, resp) = hooks_of(quote! {
            impl Plugin for P {
                fn init(c: Config) -> Result<Self, String> { Ok(P) }
                fn on_request(&self, req: &mut Request) -> Action { Action::Continue }
            }
        });
        assert_eq!((req.as_str(), resp.as_str()), ("(true)", "false"));

        let (req, resp) = hooks_of(quote! {
            impl fluxgate_sdk::Plugin for P {
                fn init(c: Config) -> Result<Self, String> { Ok(P) }
                fn on_response(&self, req: &Request, resp: &mut Response) {}
            }
        });
        assert_eq!((req.as_str(), resp.as_str()), ("false", "(true)"));

        let (req, resp) = hooks_of(quote! {
            impl Plugin for P {
                fn init(c: Config) -> Result<Self, String> { Ok(P) }
            }
        });
        assert_eq!((req.as_str(), resp.as_str()), ("false", "false"));
    }

    #[test]
    fn cfg_and_macros_are_honoured() {
        let (req, resp) = hooks_of(quote! {
            impl Plugin for P {
                fn init(c: Config) -> Result<Self, String> { Ok(P) }
                #[cfg(feature = "tag")]
                fn on_response(&self, req: &Request, resp: &mut Response) {}
            }
        });
        assert_eq!(req, "false");
        assert_eq!(resp, "(true && :: core :: cfg ! (feature = \"tag\"))");

        let (req, resp) = hooks_of(quote! {
            impl Plugin for P {
                fn init(c: Config) -> Result<Self, String> { Ok(P) }
                hooks!();
            }
        });
        assert_eq!((req.as_str(), resp.as_str()), ("true", "true"));
    }

    #[test]
    fn exports_the_type() {
        let out = expanded(
            TokenStream2::new(),
            quote! { impl Plugin for my::P { fn init(c: Config) -> Result<Self, String> { Ok(P) } } },
        );
        assert!(
            out.ends_with(":: fluxgate_sdk :: __export_plugin ! (my :: P) ;"),
            "{out}"
        );
        assert!(
            out.contains("const HOOKS : :: fluxgate_sdk :: Hooks"),
            "{out}"
        );
    }

    #[test]
    fn misuse_is_a_compile_error() {
        for (attr, item, message) in [
            (
                quote! { nope },
                quote! { impl Plugin for P {} },
                "takes no arguments",
            ),
            (quote! {}, quote! { struct P; }, "goes on an `impl Plugin"),
            (quote! {}, quote! { impl P {} }, "not on an inherent impl"),
            (
                quote! {},
                quote! { impl<T> Plugin for P<T> {} },
                "cannot be generic",
            ),
            (
                quote! {},
                quote! { impl Plugin for P { const HOOKS: Hooks = Hooks::BOTH; } },
                "HOOKS is set by",
            ),
        ] {
            let out = expand(attr, item).to_string();
            assert!(
                out.contains("compile_error") && out.contains(message),
                "{out}"
            );
        }
    }
}
