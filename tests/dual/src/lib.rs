//! Writes a test module once, as async code, and derives its blocking copy.
//!
//! ```text
//! #[dual::blocking]
//! pub mod nonblocking {
//!     pub async fn pays<C: AsyncTestConn>(conn: &mut C) {
//!         conn.insert_payment(1).await.unwrap();
//!     }
//! }
//! ```
//! emits the module under `#[cfg(feature = "async")]` (the async code needs
//! diesel-async and tokio; a `cfg` on the module itself would remove it
//! before this attribute sees it) and, beside it, always, `pub mod blocking` (the same
//! visibility and doc comments, none of its other attributes; another name
//! with `#[dual::blocking(mod = name)]`) in which
//! - `async fn` is `fn`, `async |x|` is `|x|`, `async move |x|` is
//!   `move |x|`;
//! - an `async { .. }` or `async move { .. }` block is the plain block
//!   `{ .. }` (so `|| async { .. }` is `|| { .. }`);
//! - `.await` is gone;
//! - each async name of the test support and of the library has its
//!   blocking name (`RENAMES`, and pairs given as `rename(From = To, ..)`),
//!   wherever it stands (paths, method names, macro arguments).
//!
//! The rewrite is lexical, so it applies inside macro calls too. It never
//! looks into string literals.
#![warn(missing_docs)]

use std::collections::HashMap;

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, ItemMod, Token, parenthesized};

/// Emits the annotated module and its blocking copy (see the crate docs).
#[proc_macro_attribute]
pub fn blocking(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The async names and their blocking counterparts.
const RENAMES: &[(&str, &str)] = &[
    // The test support (tests/common).
    ("nonblocking", "blocking"),
    ("AsyncSuiteBackend", "Backend"),
    ("AsyncTestConn", "TestConn"),
    ("AsyncConn", "Conn"),
    ("connect_async", "connect"),
    ("wait_for_lock_waiters_async", "wait_for_lock_waiters"),
    // diesel-async and Diesel.
    ("diesel_async", "diesel"),
    ("AsyncConnection", "Connection"),
    ("AsyncPgConnection", "PgConnection"),
    ("AsyncMysqlConnection", "MysqlConnection"),
    // The library.
    ("AsyncIdempotentConnection", "IdempotentConnection"),
    ("run_async", "run"),
    ("run_response_async", "run_response"),
    ("get_or_create_async", "get_or_create"),
    ("retry_async", "retry"),
    // The language.
    ("AsyncFnOnce", "FnOnce"),
    ("AsyncFnMut", "FnMut"),
    ("AsyncFn", "Fn"),
];

struct Args {
    module: Ident,
    renames: HashMap<String, Ident>,
}

struct Rename {
    from: Ident,
    to: Ident,
}

impl Parse for Rename {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let from = input.parse()?;
        input.parse::<Token![=]>()?;
        let to = input.parse()?;
        Ok(Rename { from, to })
    }
}

fn default_renames() -> HashMap<String, Ident> {
    RENAMES
        .iter()
        .map(|(from, to)| ((*from).to_owned(), Ident::new(to, Span::call_site())))
        .collect()
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut module = Ident::new("blocking", Span::call_site());
        let mut renames = default_renames();
        while !input.is_empty() {
            if input.peek(Token![mod]) {
                input.parse::<Token![mod]>()?;
                input.parse::<Token![=]>()?;
                module = input.parse()?;
            } else {
                let word: Ident = input.parse()?;
                if word != "rename" {
                    return Err(syn::Error::new(
                        word.span(),
                        "expected `mod = name` or `rename(..)`",
                    ));
                }
                let content;
                parenthesized!(content in input);
                for rename in Punctuated::<Rename, Token![,]>::parse_terminated(&content)? {
                    renames.insert(rename.from.to_string(), rename.to);
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Args { module, renames })
    }
}

fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args: Args = syn::parse2(attr)?;
    let module: ItemMod = syn::parse2(item)?;
    let Some((_, items)) = &module.content else {
        return Err(syn::Error::new_spanned(
            &module,
            "the module's items must be inline",
        ));
    };
    let docs: Vec<&Attribute> = module
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let vis = &module.vis;
    let name = &args.module;
    let body = rewrite(quote!(#(#items)*), &args.renames);
    Ok(quote! {
        #[cfg(feature = "async")]
        #module
        #(#docs)*
        #vis mod #name {
            #body
        }
    })
}

/// The lexical rewrite of the crate docs.
fn rewrite(tokens: TokenStream, renames: &HashMap<String, Ident>) -> TokenStream {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(dot)
                if dot.as_char() == '.'
                    && matches!(tokens.get(i + 1), Some(TokenTree::Ident(w)) if w == "await") =>
            {
                i += 2;
                continue;
            }
            TokenTree::Ident(word) if word == "async" => {
                let moves = matches!(tokens.get(i + 1), Some(TokenTree::Ident(w)) if w == "move");
                let block_after_move = matches!(
                    tokens.get(i + 2),
                    Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace
                );
                // `async move { .. }` loses `move` too; `async move |x|`
                // keeps it.
                i += if moves && block_after_move { 2 } else { 1 };
                continue;
            }
            TokenTree::Ident(word) => match renames.get(&word.to_string()) {
                Some(to) => out.push(TokenTree::Ident(Ident::new(&to.to_string(), word.span()))),
                None => out.push(tokens[i].clone()),
            },
            TokenTree::Group(group) => {
                let mut inner = Group::new(group.delimiter(), rewrite(group.stream(), renames));
                inner.set_span(group.span());
                out.push(TokenTree::Group(inner));
            }
            other => out.push(other.clone()),
        }
        i += 1;
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocking_copy(source: &str) -> String {
        rewrite(source.parse().unwrap(), &default_renames()).to_string()
    }

    #[test]
    fn removes_async_and_await() {
        assert_eq!(
            blocking_copy("async fn f<C: AsyncTestConn>(c: &mut C) { c.go().await.unwrap(); }"),
            "fn f < C : TestConn > (c : & mut C) { c . go () . unwrap () ; }"
        );
    }

    #[test]
    fn async_blocks_become_blocks_and_closures_stay_closures() {
        assert_eq!(
            blocking_copy("spawn(move || async move { x.await }); t(async move |c| c.y().await)"),
            "spawn (move || { x }) ; t (move | c | c . y ())"
        );
        assert_eq!(
            blocking_copy("retry_async(p, || async { c.run_async(c, async |c| 1).await })"),
            "retry (p , || { c . run (c , | c | 1) })"
        );
        assert_eq!(
            blocking_copy("assert_eq!(async { 1 }.await, \"x.await\")"),
            "assert_eq ! ({ 1 } , \"x.await\")"
        );
    }
}
