//! The attribute's options: parsing and the checks that need no signature.
//!
//! Options are read one by one; a mistake in one option (an unknown name, a
//! value of the wrong kind, a value that does not parse) is recorded and the
//! rest of the attribute is still read, so every mistake is reported at once.
//!
//! Values may arrive through `macro_rules!` fragments (`name = $ns`), which
//! wrap them in invisible groups; every check looks through those.

use std::time::Duration;

use proc_macro2::{Span, TokenTree};
use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token};

/// Every option, in the order an error about an unknown one lists them.
const OPTIONS: &[&str] = &[
    "key",
    "hash",
    "get_or_create",
    "ttl",
    "abandon_after",
    "name",
    "scope",
    "conn",
    "clock",
    "skip",
    "on_conflict",
    "wait_for",
    "mode",
    "replay",
    "max_response_bytes",
    "crate",
];

/// The longest TTL accepted (366 days), as in the runtime's `Ttl::MAX`.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// The longest `abandon_after` accepted.
const MAX_ABANDON_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `wait_for` accepted.
const MAX_WAIT_FOR: Duration = Duration::from_secs(60 * 60);
/// The longest namespace the record table holds, as in the runtime.
pub(crate) const MAX_NAME_LEN: usize = 255;

/// The parsed options of one `#[idempotent(...)]`. Each option keeps the
/// span of its name, for errors about the option as a whole.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) key: Option<(Span, Expr)>,
    /// `get_or_create = LOOKUP`: the getOrCreate pattern.
    pub(crate) get_or_create: Option<Expr>,
    /// `hash` (every argument) or `hash(a, b.c)` (the named values).
    pub(crate) hash: Option<(Span, Option<Vec<Expr>>)>,
    pub(crate) ttl: Option<(Span, Duration)>,
    /// `abandon_after = "30s"`: how long the transaction of an `async fn`
    /// call may sit idle before the server ends the session.
    pub(crate) abandon_after: Option<(Span, Duration)>,
    pub(crate) name: Option<LitStr>,
    pub(crate) scope: Option<(Span, Expr)>,
    pub(crate) conn: Option<Ident>,
    pub(crate) skip: Vec<Ident>,
    /// Where `skip` was written, for errors.
    pub(crate) skip_span: Option<Span>,
    pub(crate) clock: Option<Expr>,
    /// `on_conflict = "reject"` (true) or `"wait"` (false, the default).
    pub(crate) reject: Option<(Span, bool)>,
    /// `wait_for = "2s"`: how long a duplicate waits for the call holding
    /// its key before it gets `Error::InFlight`.
    pub(crate) wait_for: Option<(Span, Duration)>,
    /// `mode = "optimistic"` (true) or `"claim_first"` (false, the default).
    pub(crate) optimistic: Option<(Span, bool)>,
    /// `replay = "read_first"` (true) or `"in_transaction"` (false, the
    /// default).
    pub(crate) read_first: Option<(Span, bool)>,
    /// `max_response_bytes = N`.
    pub(crate) max_response_bytes: Option<(Span, u64)>,
    /// `crate = "path"`: where `diesel_idempotent` is reachable.
    pub(crate) krate: Option<syn::Path>,
    /// Options that were written, valid or not (and the option an unknown
    /// name most likely meant), so that a broken `key = ..` is not also
    /// reported as a missing key.
    pub(crate) written: Vec<&'static str>,
    /// Problems with individual options, reported together with the
    /// signature's problems.
    pub(crate) errors: Errors,
}

impl Options {
    /// Whether `option` was written, even with an invalid value.
    pub(crate) fn wrote(&self, option: &str) -> bool {
        self.written.contains(&option)
    }
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

/// `expr` without the invisible groups `macro_rules!` fragments arrive in.
pub(crate) fn ungroup(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

/// Stores `value` in `slot` unless the option was given before.
fn once<T>(slot: &mut Option<T>, value: T, name: &Ident, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(syn::Error::new(
            name.span(),
            format!("duplicate option `{name}`; give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

/// Reads `= VALUE` after the option `name`, with errors that say how the
/// option is written when the `=` or the value is missing.
fn value<T: Parse>(input: ParseStream<'_>, name: &Ident, example: &str) -> syn::Result<T> {
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            name.span(),
            format!("`{name}` takes a value: write `{example}`"),
        ));
    }
    let eq: Token![=] = input.parse()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(syn::Error::new(
            eq.span,
            format!("`{name} =` is missing its value: write `{example}`"),
        ));
    }
    input.parse()
}

/// Skips what is left of a broken option, up to the next top-level comma.
fn skip_to_comma(input: ParseStream<'_>) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options::default();
        while !input.is_empty() {
            // Each option is read on a fork: tokens a broken value leaves
            // inside its parentheses are that option's error alone, not an
            // "unexpected token" for the whole attribute.
            let fork = input.fork();
            match options.parse_option(&fork) {
                Ok(()) => input.advance_to(&fork),
                Err(error) => {
                    options.errors.push(error);
                    skip_to_comma(input);
                }
            }
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                options
                    .errors
                    .push(input.error("expected `,` between options"));
                skip_to_comma(input);
                if input.is_empty() {
                    break;
                }
            }
            input.parse::<Token![,]>()?;
        }
        Ok(options)
    }
}

impl Options {
    /// Reads one option. A syntax error is returned (the caller skips to the
    /// next option); a well-formed but invalid value is recorded in
    /// `self.errors`.
    fn parse_option(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        let name = match input.call(Ident::parse_any) {
            Ok(name) => name,
            Err(_) => {
                return Err(input.error(format!("expected an option, one of {}", list(OPTIONS))));
            }
        };
        let text = name.to_string();
        let Some(option) = OPTIONS.iter().copied().find(|option| *option == text) else {
            let mut message = format!("unknown option `{name}`, expected one of {}", list(OPTIONS));
            if let Some(meant) = closest(&text) {
                self.written.push(meant);
                message = format!("{message}; did you mean `{meant}`?");
            }
            return Err(syn::Error::new(name.span(), message));
        };
        self.written.push(option);
        let errors = &mut self.errors;
        match option {
            "key" => {
                let expr: Expr = value(input, &name, "key = req.idempotency_key")?;
                once(&mut self.key, (name.span(), expr), &name, errors);
            }
            "get_or_create" => {
                let expr: Expr = value(input, &name, "get_or_create = find_user(conn, email)")?;
                once(&mut self.get_or_create, expr, &name, errors);
            }
            "scope" => {
                let expr: Expr = value(input, &name, "scope = tenant_id")?;
                once(&mut self.scope, (name.span(), expr), &name, errors);
            }
            "clock" => {
                let expr: Expr = value(input, &name, "clock = self.clock")?;
                once(&mut self.clock, expr, &name, errors);
            }
            "conn" => {
                let expr: Expr = value(input, &name, "conn = db")?;
                match ungroup(&expr) {
                    Expr::Path(path) if path.qself.is_none() && path.path.get_ident().is_some() => {
                        if let Some(ident) = path.path.get_ident() {
                            once(&mut self.conn, ident.clone(), &name, errors);
                        }
                    }
                    other => errors.push(syn::Error::new(
                        other.span(),
                        "`conn` names the connection parameter, e.g. `conn = db`",
                    )),
                }
            }
            "ttl" => {
                let expr: Expr = value(input, &name, "ttl = \"24h\"")?;
                match parse_ttl(&expr) {
                    Ok(ttl) => once(&mut self.ttl, (name.span(), ttl), &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "abandon_after" => {
                let expr: Expr = value(input, &name, "abandon_after = \"30s\"")?;
                match parse_abandon_after(&expr) {
                    Ok(after) => once(&mut self.abandon_after, (name.span(), after), &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "name" => {
                let expr: Expr = value(input, &name, "name = \"payments.create\"")?;
                match parse_name(&expr) {
                    Ok(lit) => once(&mut self.name, lit, &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "crate" => {
                let expr: Expr = value(input, &name, "crate = \"::my_app::idempotency\"")?;
                match parse_crate_path(&expr) {
                    Ok(path) => once(&mut self.krate, path, &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "on_conflict" => {
                let expr: Expr = value(input, &name, "on_conflict = \"reject\"")?;
                match parse_on_conflict(&expr) {
                    Ok(reject) => once(&mut self.reject, (name.span(), reject), &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "wait_for" => {
                let expr: Expr = value(input, &name, "wait_for = \"2s\"")?;
                match parse_wait_for(&expr) {
                    Ok(limit) => once(&mut self.wait_for, (name.span(), limit), &name, errors),
                    Err(e) => errors.push(e),
                }
            }
            "mode" => {
                let expr: Expr = value(input, &name, "mode = \"optimistic\"")?;
                match parse_mode(&expr) {
                    Ok(optimistic) => {
                        once(
                            &mut self.optimistic,
                            (name.span(), optimistic),
                            &name,
                            errors,
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
            "replay" => {
                let expr: Expr = value(input, &name, "replay = \"read_first\"")?;
                match parse_replay(&expr) {
                    Ok(read_first) => {
                        once(
                            &mut self.read_first,
                            (name.span(), read_first),
                            &name,
                            errors,
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
            "max_response_bytes" => {
                let expr: Expr = value(input, &name, "max_response_bytes = 65_536")?;
                match parse_limit(&expr) {
                    Ok(limit) => {
                        once(
                            &mut self.max_response_bytes,
                            (name.span(), limit),
                            &name,
                            errors,
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
            "hash" => {
                let values = if input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in input);
                    let values = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
                    if values.is_empty() {
                        errors.push(syn::Error::new(
                            name.span(),
                            "`hash()` names no value; write `hash` to hash every argument, \
                             or `hash(event.id, event.source)` to hash some",
                        ));
                    }
                    Some(values.into_iter().collect())
                } else if input.is_empty() || input.peek(Token![,]) {
                    None
                } else {
                    return Err(syn::Error::new(
                        name.span(),
                        "write `hash` to hash every argument, or `hash(event.id, event.source)` \
                         to hash some",
                    ));
                };
                once(&mut self.hash, (name.span(), values), &name, errors);
            }
            "skip" => {
                if !input.peek(syn::token::Paren) {
                    return Err(syn::Error::new(
                        name.span(),
                        "`skip` lists the arguments left out of the fingerprint: \
                         write `skip(trace, verbose)`",
                    ));
                }
                self.skip_span.get_or_insert(name.span());
                let content;
                syn::parenthesized!(content in input);
                let names = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                for skipped in names {
                    if self.skip.contains(&skipped) {
                        errors.push(syn::Error::new(
                            skipped.span(),
                            format!("`{skipped}` is already skipped"),
                        ));
                    } else {
                        self.skip.push(skipped);
                    }
                }
            }
            _ => unreachable_option(&name)?,
        }
        Ok(())
    }
}

/// Every name in `OPTIONS` has an arm above; this keeps the match total
/// without a panic.
fn unreachable_option(name: &Ident) -> syn::Result<()> {
    Err(syn::Error::new(
        name.span(),
        format!("option `{name}` is not handled"),
    ))
}

/// "`a`, `b`, `c`".
fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The option an unknown name most likely meant: within two edits, or one
/// of them a prefix of the other (`namespace` for `name`).
fn closest(unknown: &str) -> Option<&'static str> {
    let unknown = unknown.to_lowercase();
    let by_edits = OPTIONS
        .iter()
        .map(|option| (edit_distance(&unknown, option), *option))
        .filter(|(distance, option)| *distance <= 2 && *distance < option.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, option)| option);
    by_edits.or_else(|| {
        OPTIONS.iter().copied().find(|option| {
            option.len() >= 3
                && unknown.len() >= 3
                && (unknown.starts_with(option) || option.starts_with(unknown.as_str()))
        })
    })
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The string literal `expr` is, through invisible groups.
fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match ungroup(expr) {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Some(lit),
        _ => None,
    }
}

fn parse_on_conflict(expr: &Expr) -> syn::Result<bool> {
    match string_literal(expr).map(LitStr::value).as_deref() {
        Some("wait") => Ok(false),
        Some("reject") => Ok(true),
        _ => Err(syn::Error::new(
            expr.span(),
            "`on_conflict` is `\"wait\"` (block until the call holding the key \
             finishes, then replay) or `\"reject\"` (return `Error::InFlight` at once); \
             to wait a bounded time, write `wait_for = \"2s\"`",
        )),
    }
}

fn parse_mode(expr: &Expr) -> syn::Result<bool> {
    match string_literal(expr).map(LitStr::value).as_deref() {
        Some("claim_first") => Ok(false),
        Some("optimistic") => Ok(true),
        _ => Err(syn::Error::new(
            expr.span(),
            "`mode` is `\"claim_first\"` (claim the key, then run the body; the default) \
             or `\"optimistic\"` (run the body, then insert the record with its result; \
             only for a body whose every effect is in this transaction)",
        )),
    }
}

fn parse_replay(expr: &Expr) -> syn::Result<bool> {
    match string_literal(expr).map(LitStr::value).as_deref() {
        Some("in_transaction") => Ok(false),
        Some("read_first") => Ok(true),
        _ => Err(syn::Error::new(
            expr.span(),
            "`replay` is `\"in_transaction\"` (the claim finds a stored result; the \
             default) or `\"read_first\"` (one read before the transaction answers a replay)",
        )),
    }
}

fn parse_limit(expr: &Expr) -> syn::Result<u64> {
    let limit = match ungroup(expr) {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(lit),
            ..
        }) => lit.base10_parse::<u64>().ok().filter(|n| *n > 0),
        _ => None,
    };
    limit.ok_or_else(|| {
        syn::Error::new(
            expr.span(),
            "`max_response_bytes` is a positive integer literal, e.g. \
             `max_response_bytes = 65_536`",
        )
    })
}

/// The string literal of a duration option, parsed with humantime.
/// `not_literal` is the error when the value is not a string literal;
/// `examples` shows how the duration is written.
fn parse_duration(
    expr: &Expr,
    option: &str,
    not_literal: &str,
    examples: &str,
) -> syn::Result<(LitStr, Duration)> {
    let Some(lit) = string_literal(expr) else {
        return Err(syn::Error::new(expr.span(), not_literal));
    };
    let text = lit.value();
    let duration = humantime::parse_duration(&text).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("invalid {option} {text:?}: {e}; write it like {examples}"),
        )
    })?;
    Ok((lit.clone(), duration))
}

/// The runtime counts durations in milliseconds.
fn whole_milliseconds(lit: &LitStr, option: &str, duration: Duration) -> syn::Result<Duration> {
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "{option} {:?} is finer than a millisecond; round it to whole milliseconds",
                lit.value()
            ),
        ));
    }
    Ok(duration)
}

fn parse_ttl(expr: &Expr) -> syn::Result<Duration> {
    let (lit, ttl) = parse_duration(
        expr,
        "ttl",
        "`ttl` must be a string literal such as `ttl = \"24h\"`, `\"15m\"` or `\"7d\"`",
        "\"30s\", \"15m\", \"24h\" or \"7d\"",
    )?;
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
    whole_milliseconds(&lit, "ttl", ttl)
}

fn parse_abandon_after(expr: &Expr) -> syn::Result<Duration> {
    let (lit, after) = parse_duration(
        expr,
        "abandon_after",
        "`abandon_after` must be a string literal such as `abandon_after = \"30s\"` or `\"5m\"`",
        "\"30s\", \"5m\" or \"1h\"",
    )?;
    if after.is_zero() {
        return Err(syn::Error::new(
            lit.span(),
            "`abandon_after` must be longer than zero: it is how long the call's transaction may \
             sit idle before the server ends the session and frees the key; make it longer than \
             the body's longest pause between statements, e.g. \"30s\"",
        ));
    }
    if after > MAX_ABANDON_AFTER {
        return Err(syn::Error::new(
            lit.span(),
            "`abandon_after` must be at most 24 hours: until it passes, the key of a dropped or \
             stalled call stays held and its retries wait (or get `Error::InFlight`); write it \
             like \"30s\" or \"5m\"",
        ));
    }
    whole_milliseconds(&lit, "abandon_after", after)
}

fn parse_wait_for(expr: &Expr) -> syn::Result<Duration> {
    let (lit, limit) = parse_duration(
        expr,
        "wait_for",
        "`wait_for` must be a string literal such as `wait_for = \"2s\"` or `\"500ms\"`",
        "\"500ms\", \"2s\" or \"1m\"",
    )?;
    if limit.is_zero() {
        return Err(syn::Error::new(
            lit.span(),
            "`wait_for` must be longer than zero: it is how long a duplicate waits for the call \
             holding its key before it gets `Error::InFlight`; use `on_conflict = \"reject\"` \
             to never wait",
        ));
    }
    if limit > MAX_WAIT_FOR {
        return Err(syn::Error::new(
            lit.span(),
            "`wait_for` must be at most 1 hour: a duplicate holds its connection for as long as \
             it waits, and a client has given up long before; write it like \"500ms\" or \"2s\", \
             or use `on_conflict = \"wait\"` to wait as long as the database lets it",
        ));
    }
    whole_milliseconds(&lit, "wait_for", limit)
}

fn parse_crate_path(expr: &Expr) -> syn::Result<syn::Path> {
    let Some(lit) = string_literal(expr) else {
        return Err(syn::Error::new(
            expr.span(),
            "`crate` must be a string literal holding a path, e.g. `crate = \"::my_app::idempotency\"`",
        ));
    };
    lit.parse::<syn::Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!(
                "`crate = {:?}` is not a path; write the path under which \
                 `diesel_idempotent` is reachable, e.g. `crate = \"::my_app::idempotency\"`",
                lit.value()
            ),
        )
    })
}

/// A `name` the runtime accepts: the checks of its namespace validation,
/// done once here instead of failing every call.
fn parse_name(expr: &Expr) -> syn::Result<LitStr> {
    let Some(lit) = string_literal(expr) else {
        return Err(syn::Error::new(
            expr.span(),
            "`name` must be a string literal such as `name = \"payments.create\"`",
        ));
    };
    let value = lit.value();
    let problem = if value.is_empty() {
        Some("`name` is empty; name the operation, e.g. `name = \"payments.create\"`".to_owned())
    } else if value.len() > MAX_NAME_LEN {
        Some(format!(
            "`name` is {} bytes long; the namespace holds at most {MAX_NAME_LEN} bytes",
            value.len()
        ))
    } else if value.chars().any(char::is_control) {
        Some("`name` holds a control character; use printable text".to_owned())
    } else if value.trim() != value {
        Some(format!(
            "`name` begins or ends with whitespace; write `name = {:?}`",
            value.trim()
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(syn::Error::new(lit.span(), message)),
        None => Ok(lit.clone()),
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::{Delimiter, Group, TokenStream};
    use quote::{ToTokens, quote};

    use super::*;

    /// `tokens` in an invisible group, as a `macro_rules!` fragment arrives.
    fn fragment(tokens: TokenStream) -> TokenTree {
        TokenTree::Group(Group::new(Delimiter::None, tokens))
    }

    fn parse(tokens: TokenStream) -> Options {
        syn::parse2(tokens).expect("options parse")
    }

    fn messages(options: Options) -> Vec<String> {
        match options.errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn values_in_invisible_groups() {
        let name = fragment(quote!("svc.create"));
        let ttl = fragment(quote!("1500ms"));
        let conflict = fragment(quote!("reject"));
        let limit = fragment(quote!(4096));
        let krate = fragment(quote!("::app::idem"));
        let key = fragment(quote!(key));
        let conn = fragment(quote!(db));
        let after = fragment(quote!("45s"));
        let wait = fragment(quote!("750ms"));
        let options = parse(quote!(
            name = #name, ttl = #ttl, on_conflict = #conflict,
            max_response_bytes = #limit, crate = #krate, key = #key, conn = #conn,
            abandon_after = #after, wait_for = #wait
        ));
        assert_eq!(
            options.name.as_ref().map(LitStr::value).as_deref(),
            Some("svc.create")
        );
        assert_eq!(options.ttl.map(|t| t.1), Some(Duration::from_millis(1500)));
        assert_eq!(
            options.abandon_after.map(|a| a.1),
            Some(Duration::from_secs(45))
        );
        assert_eq!(options.reject.map(|r| r.1), Some(true));
        assert_eq!(
            options.wait_for.map(|w| w.1),
            Some(Duration::from_millis(750))
        );
        assert_eq!(options.max_response_bytes.map(|m| m.1), Some(4096));
        assert_eq!(
            options.krate.to_token_stream().to_string(),
            ":: app :: idem"
        );
        assert_eq!(
            options.conn.as_ref().map(ToString::to_string).as_deref(),
            Some("db")
        );
        assert!(options.key.is_some());
        assert!(messages(options).is_empty());
    }

    #[test]
    fn unknown_options_name_themselves_and_parsing_goes_on() {
        let options = parse(quote!(
            on_confict = "reject",
            retries = 3,
            ttl = "0s",
            key = k
        ));
        assert!(
            options.key.is_some(),
            "the options after the mistakes are read"
        );
        assert!(
            options.wrote("on_conflict"),
            "the typo counts as what it meant"
        );
        let messages = messages(options);
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].starts_with("unknown option `on_confict`, expected one of `key`"));
        assert!(messages[0].ends_with("did you mean `on_conflict`?"));
        assert!(messages[1].starts_with("unknown option `retries`"));
        assert!(!messages[1].contains("did you mean"));
        assert!(messages[2].contains("at least one second"));
    }

    #[test]
    fn missing_values_do_not_hide_other_errors() {
        let options = parse(quote!(ttl =, key = , name = 5, hash));
        let all = messages(options);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0].starts_with("`ttl =` is missing its value"));
        assert!(all[1].starts_with("`key =` is missing its value"));
        assert!(all[2].starts_with("`name` must be a string literal"));
        let nested = messages(parse(quote!(hash(a b), key = f(x y), ttl = "0s")));
        assert_eq!(nested.len(), 3, "{nested:#?}");
        assert!(nested[2].contains("at least one second"));
        let trailing = parse(quote!(key = k, ttl =));
        assert!(trailing.key.is_some());
        assert_eq!(
            messages(trailing),
            ["`ttl =` is missing its value: write `ttl = \"24h\"`"]
        );
    }

    #[test]
    fn names_the_runtime_would_reject() {
        let long = "n".repeat(256);
        for (name, expected) in [
            (" payments.create", "begins or ends with whitespace"),
            ("payments.create\t", "control character"),
            (long.as_str(), "is 256 bytes long"),
            ("", "is empty"),
        ] {
            let messages = messages(parse(quote!(name = #name)));
            assert!(
                messages.len() == 1 && messages[0].contains(expected),
                "{name:?}: {messages:?}"
            );
        }
        assert!(messages(parse(quote!(name = "payments.create"))).is_empty());
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("on_confict"), Some("on_conflict"));
        assert_eq!(closest("TTL"), Some("ttl"));
        assert_eq!(closest("namespace"), Some("name"));
        assert_eq!(closest("connection"), Some("conn"));
        assert_eq!(closest("max_response_size"), None);
        assert_eq!(closest("retries"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "key"), 3);
    }

    #[test]
    fn abandon_after_is_a_bounded_duration() {
        let options = parse(quote!(key = k, abandon_after = "1m 30s"));
        assert_eq!(
            options.abandon_after.map(|a| a.1),
            Some(Duration::from_secs(90))
        );
        for (value, expected) in [
            (quote!("0s"), "must be longer than zero"),
            (quote!("25h"), "must be at most 24 hours"),
            (quote!("soon"), "invalid abandon_after \"soon\""),
            (quote!("1s 500us"), "is finer than a millisecond"),
            (quote!(30), "must be a string literal"),
        ] {
            let messages = messages(parse(quote!(abandon_after = #value)));
            assert!(
                messages.len() == 1 && messages[0].contains(expected),
                "{value}: {messages:?}"
            );
        }
        assert!(messages(parse(quote!(abandon_after = "24h"))).is_empty());
        assert_eq!(closest("abandon"), Some("abandon_after"));
        assert_eq!(closest("abandon_afer"), Some("abandon_after"));
    }

    #[test]
    fn wait_for_is_a_bounded_duration() {
        let options = parse(quote!(key = k, on_conflict = "wait", wait_for = "1s 500ms"));
        assert_eq!(
            options.wait_for.map(|w| w.1),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(options.reject.map(|r| r.1), Some(false));
        for (value, expected) in [
            (quote!("0s"), "use `on_conflict = \"reject\"` to never wait"),
            (quote!("2h"), "must be at most 1 hour"),
            (quote!("a bit"), "invalid wait_for \"a bit\""),
            (quote!("1s 500us"), "is finer than a millisecond"),
            (quote!(2), "must be a string literal"),
        ] {
            let messages = messages(parse(quote!(wait_for = #value)));
            assert!(
                messages.len() == 1 && messages[0].contains(expected),
                "{value}: {messages:?}"
            );
        }
        assert!(messages(parse(quote!(wait_for = "1h"))).is_empty());
        assert!(messages(parse(quote!(wait_for = "1ms"))).is_empty());
        assert_eq!(closest("wait"), Some("wait_for"));
        assert_eq!(closest("wait_fro"), Some("wait_for"));
        assert_eq!(closest("waitfor"), Some("wait_for"));
    }

    #[test]
    fn sub_millisecond_ttls_are_rejected() {
        assert_eq!(
            parse_ttl(&syn::parse_quote!("1s 1500us")).map_err(|e| e.to_string()),
            Err(
                "ttl \"1s 1500us\" is finer than a millisecond; round it to whole milliseconds"
                    .to_owned()
            )
        );
    }
}
