//! The attribute's options: parsing and the checks that need no signature.

use std::time::Duration;

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(hash);
    syn::custom_keyword!(get_or_create);
    syn::custom_keyword!(on_conflict);
    syn::custom_keyword!(max_response_bytes);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(name);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(conn);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(clock);
}

/// The longest TTL accepted (366 days), as in the runtime's `Ttl::MAX`.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
const MAX_NAME_LEN: usize = 255;

/// The parsed options of one `#[idempotent(...)]`.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) key: Option<(kw::key, Expr)>,
    /// `get_or_create = LOOKUP`: the getOrCreate pattern.
    pub(crate) get_or_create: Option<Expr>,
    /// `hash` (every argument) or `hash(a, b.c)` (the named values).
    pub(crate) hash: Option<(kw::hash, Option<Vec<Expr>>)>,
    pub(crate) ttl: Option<(kw::ttl, Duration)>,
    pub(crate) name: Option<LitStr>,
    pub(crate) scope: Option<(kw::scope, Expr)>,
    pub(crate) conn: Option<Ident>,
    pub(crate) skip: Vec<Ident>,
    /// Where `skip` was written, for errors.
    pub(crate) skip_span: Option<proc_macro2::Span>,
    pub(crate) clock: Option<Expr>,
    /// `on_conflict = "reject"` (true) or `"wait"` (false, the default).
    pub(crate) reject: Option<(kw::on_conflict, bool)>,
    /// `max_response_bytes = N`.
    pub(crate) max_response_bytes: Option<(kw::max_response_bytes, u64)>,
    /// `crate = "path"`: where `diesel_idempotent` is reachable.
    pub(crate) krate: Option<syn::Path>,
    /// Problems with individual options, reported together with the
    /// signature's problems.
    pub(crate) errors: Errors,
}

/// Accumulates errors so one expansion reports all of them.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

fn duplicate(span: proc_macro2::Span, option: &str) -> syn::Error {
    syn::Error::new(span, format!("duplicate option `{option}`; give it once"))
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options::default();
        let mut errors = Errors::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::key) {
                let token: kw::key = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                if options.key.is_some() {
                    errors.push(duplicate(token.span, "key"));
                } else {
                    options.key = Some((token, expr));
                }
            } else if lookahead.peek(kw::get_or_create) {
                let token: kw::get_or_create = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                if options.get_or_create.is_some() {
                    errors.push(duplicate(token.span, "get_or_create"));
                } else {
                    options.get_or_create = Some(expr);
                }
            } else if lookahead.peek(kw::on_conflict) {
                let token: kw::on_conflict = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                let reject = match &expr {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(lit),
                        ..
                    }) if lit.value() == "wait" => Ok(false),
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(lit),
                        ..
                    }) if lit.value() == "reject" => Ok(true),
                    other => Err(syn::Error::new(
                        other.span(),
                        "`on_conflict` is `\"wait\"` (block until the call holding the key \
                         finishes, then replay) or `\"reject\"` (return `Error::InFlight` at once)",
                    )),
                };
                match reject {
                    Ok(reject) if options.reject.is_none() => {
                        options.reject = Some((token, reject))
                    }
                    Ok(_) => errors.push(duplicate(token.span, "on_conflict")),
                    Err(e) => errors.push(e),
                }
            } else if lookahead.peek(kw::max_response_bytes) {
                let token: kw::max_response_bytes = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                let limit = match &expr {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(lit),
                        ..
                    }) => lit.base10_parse::<u64>().ok().filter(|n| *n > 0),
                    _ => None,
                };
                match limit {
                    Some(limit) if options.max_response_bytes.is_none() => {
                        options.max_response_bytes = Some((token, limit));
                    }
                    Some(_) => errors.push(duplicate(token.span, "max_response_bytes")),
                    None => errors.push(syn::Error::new(
                        expr.span(),
                        "`max_response_bytes` is a positive integer literal, e.g. \
                         `max_response_bytes = 65_536`",
                    )),
                }
            } else if lookahead.peek(kw::hash) {
                let token: kw::hash = input.parse()?;
                let values = if input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in input);
                    let values = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
                    if values.is_empty() {
                        errors.push(syn::Error::new(
                            token.span,
                            "`hash()` names no value; write `hash` to hash every argument, \
                             or `hash(event.id, event.source)` to hash some",
                        ));
                    }
                    Some(values.into_iter().collect())
                } else {
                    None
                };
                if options.hash.is_some() {
                    errors.push(duplicate(token.span, "hash"));
                } else {
                    options.hash = Some((token, values));
                }
            } else if lookahead.peek(kw::ttl) {
                let token: kw::ttl = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                match parse_ttl(&expr) {
                    Ok(ttl) if options.ttl.is_none() => options.ttl = Some((token, ttl)),
                    Ok(_) => errors.push(duplicate(token.span, "ttl")),
                    Err(e) => errors.push(e),
                }
            } else if lookahead.peek(kw::name) {
                let token: kw::name = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                match parse_name(&expr) {
                    Ok(name) if options.name.is_none() => options.name = Some(name),
                    Ok(_) => errors.push(duplicate(token.span, "name")),
                    Err(e) => errors.push(e),
                }
            } else if lookahead.peek(kw::scope) {
                let token: kw::scope = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                if options.scope.is_some() {
                    errors.push(duplicate(token.span, "scope"));
                } else {
                    options.scope = Some((token, expr));
                }
            } else if lookahead.peek(kw::conn) {
                let token: kw::conn = input.parse()?;
                input.parse::<Token![=]>()?;
                let ident: Ident = input.parse()?;
                if options.conn.is_some() {
                    errors.push(duplicate(token.span, "conn"));
                } else {
                    options.conn = Some(ident);
                }
            } else if lookahead.peek(kw::clock) {
                let token: kw::clock = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                if options.clock.is_some() {
                    errors.push(duplicate(token.span, "clock"));
                } else {
                    options.clock = Some(expr);
                }
            } else if lookahead.peek(Token![crate]) {
                let token: Token![crate] = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                match parse_crate_path(&expr) {
                    Ok(path) if options.krate.is_none() => options.krate = Some(path),
                    Ok(_) => errors.push(duplicate(token.span, "crate")),
                    Err(e) => errors.push(e),
                }
            } else if lookahead.peek(kw::skip) {
                let token: kw::skip = input.parse()?;
                options.skip_span.get_or_insert(token.span);
                let content;
                syn::parenthesized!(content in input);
                let names = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                for name in names {
                    if options.skip.contains(&name) {
                        errors.push(syn::Error::new(
                            name.span(),
                            format!("`{name}` is already skipped"),
                        ));
                    } else {
                        options.skip.push(name);
                    }
                }
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        options.errors = errors;
        Ok(options)
    }
}

fn parse_ttl(expr: &Expr) -> syn::Result<Duration> {
    let lit = match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => lit,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "`ttl` must be a string literal such as `ttl = \"24h\"`, `\"15m\"` or `\"7d\"`",
            ));
        }
    };
    let text = lit.value();
    let ttl = humantime::parse_duration(&text).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("invalid ttl {text:?}: {e}; write it like \"30s\", \"15m\", \"24h\" or \"7d\""),
        )
    })?;
    if ttl < Duration::from_secs(1) {
        return Err(syn::Error::new(
            lit.span(),
            "`ttl` must be at least one second: a record that expires at once protects nothing",
        ));
    }
    if ttl > MAX_TTL {
        return Err(syn::Error::new(
            lit.span(),
            "`ttl` must be at most 366 days: records kept longer than any client retries only \
             grow the table; purge them with `diesel_idempotent::purge_expired`",
        ));
    }
    Ok(ttl)
}

fn parse_crate_path(expr: &Expr) -> syn::Result<syn::Path> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => lit.parse::<syn::Path>().map_err(|_| {
            syn::Error::new(
                lit.span(),
                format!(
                    "`crate = {:?}` is not a path; write the path under which \
                     `diesel_idempotent` is reachable, e.g. `crate = \"::my_app::idempotency\"`",
                    lit.value()
                ),
            )
        }),
        other => Err(syn::Error::new(
            other.span(),
            "`crate` must be a string literal holding a path, e.g. `crate = \"::my_app::idempotency\"`",
        )),
    }
}

fn parse_name(expr: &Expr) -> syn::Result<LitStr> {
    let lit = match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => lit.clone(),
        other => {
            return Err(syn::Error::new(
                other.span(),
                "`name` must be a string literal such as `name = \"payments.create\"`",
            ));
        }
    };
    let value = lit.value();
    if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(syn::Error::new(
            lit.span(),
            "`name` must be 1 to 255 bytes without control characters",
        ));
    }
    Ok(lit)
}
