//! Code generation: the function keeps its signature; its body becomes a call
//! into the runtime with the original body as a closure over the connection
//! (for an `async fn`, an async closure, and the call is awaited).

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::attr::{Errors, MAX_NAME_LEN, Options, ungroup};

const RESULT_REQUIRED: &str = "`#[idempotent]` functions must return `Result<T, E>` with \
     `T: Serialize + DeserializeOwned` and `E: From<diesel_idempotent::Error>`";

/// The error for a fingerprinted `impl Trait` argument; `leave_out` says how
/// to leave it out of the fingerprint.
fn impl_trait_argument(kind: &str, leave_out: &str) -> String {
    format!(
        "{} `{kind} Trait` argument cannot be fingerprinted: two types that serialize alike would \
         share a key, and this type has no name to tell them apart; name a type parameter bound \
         by `StableName` (`fn f<E: Serialize + StableName>(.., value: &E)`), or {leave_out}",
        if kind == "impl" { "an" } else { "a" }
    )
}

/// The type a call stores: `T` of `Result<T, E>` (or of an alias written
/// `Alias<T>`); the whole type when it has no type argument.
fn stored_type(output: &Type) -> &Type {
    if let Type::Path(path) = ungroup_type(output)
        && let Some(last) = path.path.segments.last()
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(ok)) = args.args.first()
    {
        return ok;
    }
    output
}

/// Expands `#[idempotent(attr)] item`. On error, the original item is emitted
/// beside the errors so the rest of the crate still type-checks.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(attr, item.clone()) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.to_compile_error();
            quote! { #error #item }
        }
    }
}

fn try_expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let function = parse_function(item)?;
    let mut options: Options = syn::parse2(attr)?;
    let errors = std::mem::take(&mut options.errors);
    let plan = Plan::new(&options, &function, errors)?;
    Ok(plan.emit(&function))
}

fn parse_function(item: TokenStream) -> syn::Result<ItemFn> {
    if let Ok(function) = syn::parse2::<ItemFn>(item.clone()) {
        return Ok(function);
    }
    if let Ok(method) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        return Err(syn::Error::new_spanned(
            &method.sig,
            "`#[idempotent]` needs a function body; put it on the implementation, \
             not on the trait method declaration",
        ));
    }
    Err(syn::Error::new(
        item.into_iter()
            .next()
            .map_or_else(Span::call_site, |t| t.span()),
        "`#[idempotent]` can only be applied to a function",
    ))
}

/// Where a call's key comes from.
enum Identity<'f> {
    /// `key = EXPR`: the client's key; the arguments are fingerprinted.
    Key(&'f Expr),
    /// `hash`: the fingerprint of the arguments is the key.
    HashArguments,
    /// `hash(a, b.c)`: the fingerprint of these values is the key (and the
    /// request's fingerprint: a repeat is recognised by them alone).
    HashValues(&'f [Expr]),
    /// `get_or_create = LOOKUP`: no record; the lookup, then the body.
    GetOrCreate(&'f Expr),
}

/// Everything the expansion needs, checked against the signature.
struct Plan<'f> {
    identity: Identity<'f>,
    scope: Option<&'f Expr>,
    clock: Option<&'f Expr>,
    ttl: Duration,
    namespace: TokenStream,
    /// For the default namespace: a compile-time check of its length.
    namespace_check: TokenStream,
    conn: &'f Ident,
    fingerprinted: Vec<&'f Ident>,
    /// Type parameters that fingerprinted values mention, in the order of
    /// the generics: their `StableName`s join the fingerprint.
    named_types: Vec<&'f Ident>,
    /// Const parameters whose values join the fingerprint.
    named_consts: Vec<&'f Ident>,
    output: &'f Type,
    /// The `async` token of an `async fn`.
    asyncness: Option<&'f syn::token::Async>,
    abandon_after: Option<Duration>,
    krate: Option<&'f syn::Path>,
    reject: bool,
    /// `wait_for = "2s"`: a bounded wait for a held key.
    wait_for: Option<Duration>,
    optimistic: bool,
    read_first: bool,
    max_response_bytes: Option<u64>,
}

impl<'f> Plan<'f> {
    fn new(
        options: &'f Options,
        function: &'f ItemFn,
        mut errors: Errors,
    ) -> syn::Result<Plan<'f>> {
        let sig = &function.sig;

        if let Some(token) = &sig.constness {
            errors.push(syn::Error::new_spanned(
                token,
                "`#[idempotent]` cannot be applied to a `const fn`: it talks to a database",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new_spanned(
                abi,
                "`#[idempotent]` cannot be applied to an `extern` function",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(syn::Error::new_spanned(
                variadic,
                "`#[idempotent]` cannot be applied to a variadic function",
            ));
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => match &**ty {
                Type::Path(_) | Type::Group(_) | Type::Paren(_) => Some(&**ty),
                Type::ImplTrait(_) => {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "`#[idempotent]` functions must return a nameable `Result<T, E>`, \
                         not `impl Trait`: the stored result is deserialized into `T`",
                    ));
                    None
                }
                other => {
                    errors.push(syn::Error::new_spanned(other, RESULT_REQUIRED));
                    None
                }
            },
            ReturnType::Default => {
                errors.push(syn::Error::new_spanned(&sig.ident, RESULT_REQUIRED));
                None
            }
        };

        if options.get_or_create.is_some() {
            let pointless = |span: Span, option: &str, why: &str| {
                syn::Error::new(
                    span,
                    format!(
                        "`{option}` makes no sense with `get_or_create`: {why}; the entity \
                         table's unique constraint is the guard and no record is kept"
                    ),
                )
            };
            let why_key = "the natural key in the lookup identifies the entity";
            if let Some((span, _)) = &options.key {
                errors.push(pointless(*span, "key", why_key));
            }
            if let Some((span, _)) = &options.hash {
                errors.push(pointless(*span, "hash", why_key));
            }
            if let Some((span, _)) = &options.ttl {
                errors.push(pointless(
                    *span,
                    "ttl",
                    "the entity lives as long as its row",
                ));
            }
            if let Some((span, _)) = &options.scope {
                errors.push(pointless(*span, "scope", "put the tenant in the lookup"));
            }
            if let Some(span) = options.skip_span {
                errors.push(pointless(span, "skip", "nothing is fingerprinted"));
            }
            if let Some(clock) = &options.clock {
                errors.push(pointless(clock.span(), "clock", "nothing expires"));
            }
            if let Some((span, _)) = &options.reject {
                errors.push(pointless(
                    *span,
                    "on_conflict",
                    "a concurrent creator always waits on the unique constraint",
                ));
            }
            if let Some((span, _)) = &options.wait_for {
                errors.push(pointless(
                    *span,
                    "wait_for",
                    "a concurrent creator always waits on the unique constraint",
                ));
            }
            if let Some((span, _)) = &options.optimistic {
                errors.push(pointless(*span, "mode", "the body is the insert"));
            }
            if let Some((span, _)) = &options.read_first {
                errors.push(pointless(
                    *span,
                    "replay",
                    "the lookup already answers a repeat with one read",
                ));
            }
            if let Some((span, _)) = &options.max_response_bytes {
                errors.push(pointless(*span, "max_response_bytes", "nothing is stored"));
            }
            if let Some((span, _)) = &options.abandon_after {
                errors.push(pointless(
                    *span,
                    "abandon_after",
                    "no key is held, so a dropped call leaves none behind",
                ));
            }
        } else if let Some((span, _)) = &options.abandon_after
            && sig.asyncness.is_none()
        {
            errors.push(syn::Error::new(
                *span,
                "`abandon_after` bounds how long the key of a dropped `async fn` call stays \
                 held; a blocking call cannot be dropped mid-way: remove it or make the \
                 function `async`",
            ));
        }
        if options.get_or_create.is_none()
            && let (Some((span, _)), Some((_, true))) = (&options.wait_for, &options.reject)
        {
            errors.push(syn::Error::new(
                *span,
                "`wait_for` and `on_conflict = \"reject\"` contradict each other: `wait_for` \
                 waits a bounded time for the call holding the key, `reject` never waits; \
                 remove one of them",
            ));
        }
        let identity = match (&options.key, &options.hash) {
            _ if options.get_or_create.is_some() => None,
            (Some(_), Some((hash, _))) => {
                errors.push(syn::Error::new(
                    *hash,
                    "`key` and `hash` exclude each other: `key = ..` takes the client's \
                     idempotency key, `hash` derives the key from the arguments; choose one",
                ));
                None
            }
            (Some((_, expr)), None) => Some(Identity::Key(expr)),
            (None, Some((_, None))) => Some(Identity::HashArguments),
            (None, Some((_, Some(values)))) => Some(Identity::HashValues(values)),
            (None, None) if options.wrote("key") || options.wrote("hash") => None,
            (None, None) => {
                errors.push(syn::Error::new(
                    Span::call_site(),
                    "missing `key = <expr>` or `hash`: say where the idempotency key comes \
                     from, e.g. `#[idempotent(key = req.idempotency_key)]` or \
                     `#[idempotent(hash)]`",
                ));
                None
            }
        };
        let key = match identity {
            Some(Identity::Key(expr)) => Some(expr),
            _ => None,
        };

        // Named parameters, in order; patterns cannot be fingerprinted.
        let mut params: Vec<(&Ident, &Type)> = Vec::new();
        for input in &sig.inputs {
            let FnArg::Typed(typed) = input else { continue };
            match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => params.push((&pat.ident, &typed.ty)),
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "`#[idempotent]` needs every argument bound to a plain name so it can be \
                     fingerprinted; write `value: Type` and destructure inside the body",
                )),
            }
        }
        let find = |name: &Ident| params.iter().find(|(ident, _)| *ident == name);

        let conn = match &options.conn {
            Some(name) => match find(name) {
                Some((ident, _)) => Some(*ident),
                None => {
                    errors.push(syn::Error::new_spanned(
                        name,
                        format!("`conn = {name}` names no parameter of this function"),
                    ));
                    None
                }
            },
            // Written, but not as a parameter name: reported with the options.
            None if options.wrote("conn") => None,
            None => match params.iter().find(|(ident, _)| *ident == "conn") {
                Some((ident, _)) => Some(*ident),
                None => {
                    errors.push(syn::Error::new_spanned(
                        &sig.ident,
                        format!(
                            "no connection parameter: name it `conn` (`conn: &mut {}`) \
                             or point to it with `conn = <parameter>`",
                            connection_example(sig)
                        ),
                    ));
                    None
                }
            },
        };
        if let Some(conn) = conn
            && let Some((_, ty)) = find(conn)
            && !matches!(ungroup_type(ty), Type::Reference(r) if r.mutability.is_some())
        {
            errors.push(syn::Error::new_spanned(
                ty,
                if sig.asyncness.is_some() {
                    "the connection of an `async fn` must be a `&mut` reference to a \
                     diesel-async connection, e.g. `&mut AsyncPgConnection`"
                } else {
                    "the connection must be a `&mut` reference to a Diesel connection, \
                     e.g. `&mut PgConnection`"
                },
            ));
        }

        let key_param = key.and_then(bare_ident);
        let scope = options.scope.as_ref().map(|(_, expr)| expr);
        let clock = options.clock.as_ref();
        for name in &options.skip {
            if find(name).is_none() {
                errors.push(syn::Error::new_spanned(
                    name,
                    format!("`skip({name})` names no parameter of this function"),
                ));
            } else if Some(name) == conn {
                errors.push(syn::Error::new_spanned(
                    name,
                    "the connection is never fingerprinted; remove it from `skip`",
                ));
            } else if Some(name) == key_param {
                errors.push(syn::Error::new_spanned(
                    name,
                    "the key is never fingerprinted; remove it from `skip`",
                ));
            }
        }

        if let Some(Identity::HashValues(values)) = &identity {
            for value in *values {
                match root_ident(value) {
                    Some(root) if find(root).is_some() => {}
                    _ => errors.push(syn::Error::new_spanned(
                        value,
                        "`hash(..)` takes parameters or their fields, such as \
                         `hash(event.user_id, event.url)`",
                    )),
                }
            }
        }

        if sig.asyncness.is_some()
            && let Some(Expr::Await(awaited)) = options.get_or_create.as_ref().map(ungroup)
        {
            let (dot, keyword) = (&awaited.dot_token, &awaited.await_token);
            errors.push(syn::Error::new_spanned(
                quote! { #dot #keyword },
                "`get_or_create` awaits the lookup itself: remove this `.await`",
            ));
        }
        let identity = match (&options.get_or_create, identity) {
            (Some(lookup), _) => Some(Identity::GetOrCreate(lookup)),
            (None, identity) => identity,
        };
        // Not fingerprinted: the connection, the key, scope and clock when
        // they are plain parameters, and what `skip` names. Computed even
        // when another piece is missing, so its errors come all at once.
        let excluded = [
            conn,
            key_param,
            scope.and_then(bare_ident),
            clock.and_then(bare_ident),
        ];
        let fingerprinted: Vec<&Ident> = params
            .iter()
            .map(|(ident, _)| *ident)
            .filter(|ident| !excluded.contains(&Some(*ident)) && !options.skip.contains(ident))
            .collect();

        // The types whose values are fingerprinted: a type parameter among
        // them must add its stable name, and an `impl Trait` has none.
        let fingerprinted_types: Vec<(&Ident, &Type)> = match &identity {
            Some(Identity::HashValues(values)) => values
                .iter()
                .filter_map(|value| root_ident(value).and_then(find).copied())
                .collect(),
            Some(Identity::GetOrCreate(_)) => Vec::new(),
            Some(Identity::Key(_) | Identity::HashArguments) | None => fingerprinted
                .iter()
                .filter_map(|ident| find(ident).copied())
                .collect(),
        };
        let mut mentioned = Vec::new();
        for (ident, ty) in &fingerprinted_types {
            let idents = type_idents(ty);
            if let Some(kind) = idents
                .iter()
                .find(|ident| *ident == "impl" || *ident == "dyn")
            {
                let leave_out = match &identity {
                    Some(Identity::HashValues(_)) => format!("leave `{ident}` out of `hash(..)`"),
                    _ => format!("leave the argument out with `skip({ident})`"),
                };
                errors.push(syn::Error::new_spanned(
                    ty,
                    impl_trait_argument(&kind.to_string(), &leave_out),
                ));
            }
            mentioned.extend(idents);
        }
        let (Some(identity), Some(conn), Some(output)) = (identity, conn, output) else {
            errors.finish()?;
            // Every missing piece pushed an error above; this is a fallback.
            return Err(syn::Error::new(
                Span::call_site(),
                "`#[idempotent]` could not read this function",
            ));
        };
        errors.finish()?;
        // The stored type counts too: a replay deserializes the stored JSON
        // into the type of this call, so `load::<Created>` and
        // `load::<Deleted>` must not share a record.
        // So does a type parameter that no argument and no result mentions
        // (chosen with a turbofish, `load::<Created>(conn, id)`): it can
        // only change what the body does.
        if !matches!(identity, Identity::GetOrCreate(_)) {
            mentioned.extend(type_idents(stored_type(output)));
            let in_signature: Vec<Ident> = params
                .iter()
                .flat_map(|(_, ty)| type_idents(ty))
                .chain(type_idents(output))
                .collect();
            mentioned.extend(
                sig.generics
                    .type_params()
                    .map(|param| param.ident.clone())
                    .filter(|param| !in_signature.contains(param)),
            );
        }
        let named_types = sig
            .generics
            .type_params()
            .map(|param| &param.ident)
            .filter(|param| mentioned.contains(param))
            .collect();
        // A const parameter's value is part of the type (`Tagged<1>` and
        // `Tagged<2>` serialize alike): it joins the fingerprint too.
        let named_consts = sig
            .generics
            .const_params()
            .map(|param| &param.ident)
            .filter(|param| mentioned.contains(param))
            .collect();

        let fn_name = sig.ident.to_string();
        let (namespace, namespace_check) = match &options.name {
            Some(lit) => (lit.to_token_stream(), TokenStream::new()),
            None => {
                let namespace = quote! { ::core::concat!(::core::module_path!(), "::", #fn_name) };
                let max = Literal::usize_unsuffixed(MAX_NAME_LEN);
                let message = format!(
                    "the namespace of `{fn_name}` (its module path, `::` and its name) is longer \
                     than {MAX_NAME_LEN} bytes; give it a shorter one with \
                     `#[idempotent(name = \"...\")]`"
                );
                let check = quote_spanned! {sig.ident.span()=>
                    const _: () = ::core::assert!(#namespace.len() <= #max, #message);
                };
                (namespace, check)
            }
        };
        let ttl = options
            .ttl
            .as_ref()
            .map_or(Duration::from_secs(24 * 60 * 60), |(_, ttl)| *ttl);

        Ok(Plan {
            identity,
            scope,
            clock,
            ttl,
            namespace,
            namespace_check,
            conn,
            fingerprinted,
            named_types,
            named_consts,
            output,
            asyncness: sig.asyncness.as_ref(),
            abandon_after: options.abandon_after.map(|(_, after)| after),
            krate: options.krate.as_ref(),
            reject: options.reject.is_some_and(|(_, reject)| reject),
            wait_for: options.wait_for.map(|(_, limit)| limit),
            optimistic: options.optimistic.is_some_and(|(_, optimistic)| optimistic),
            read_first: options.read_first.is_some_and(|(_, read_first)| read_first),
            max_response_bytes: options.max_response_bytes.map(|(_, limit)| limit),
        })
    }

    fn emit(&self, function: &ItemFn) -> TokenStream {
        let ItemFn {
            attrs,
            vis,
            sig,
            block,
        } = function;
        let private = match &self.krate {
            Some(path) => quote! { #path::__private },
            None => quote! { ::diesel_idempotent::__private },
        };
        let local = |name: &str| Ident::new(name, Span::mixed_site());
        let key_var = local("__idempotent_key");
        let scope_var = local("__idempotent_scope");
        let fingerprint_var = local("__idempotent_fingerprint");

        let add = |values: &mut dyn Iterator<Item = TokenStream>| -> TokenStream {
            values
                .map(|value| {
                    // The user never wrote this use of an `_`-prefixed
                    // parameter: the lint against using one is not theirs.
                    let underscore = value.to_string().starts_with('_');
                    let allow =
                        underscore.then(|| quote! { #[allow(clippy::used_underscore_binding)] });
                    // Named in the error should the value fail to serialize.
                    let name: String = value
                        .to_string()
                        .split_whitespace()
                        .map(|part| part.strip_prefix("r#").unwrap_or(part))
                        .collect();
                    quote_spanned! {value.span()=>
                        #allow
                        let #fingerprint_var = #private::fingerprint_argument(
                            #fingerprint_var,
                            #name,
                            &(#value),
                        );
                    }
                })
                .collect()
        };
        let conn = self.conn;
        let output = self.output;
        let closure = format_ident!("{}", conn, span = conn.span());
        let run = |sync: &str| {
            let name = match self.asyncness {
                Some(_) => format!("{sync}_async"),
                None => sync.to_owned(),
            };
            // Type errors about the result (not a `Result`, `T` not
            // serializable, `E` without `From<Error>`) point at the return
            // type; those about the connection, at its parameter.
            Ident::new(&name, output.span())
        };
        // An `async fn` keeps its signature: its body awaits the same call
        // made with async closures, inside `require_async!`, which without
        // the `async` feature replaces it with the error that says so, at
        // the `async` token (and nothing else is reported).
        let asyncness = self.asyncness;
        let require_async = |body: TokenStream| match asyncness {
            Some(token) => {
                let private = respan(private.clone(), token.span);
                quote_spanned! {token.span=> #private::require_async!{ #body } }
            }
            None => body,
        };
        // Awaiting the call's future checks the call's bounds again. The
        // awaited call is spanned at the return type, so a result that fails
        // them is reported once, there; a connection that fails them is
        // reported at its parameter (and once more at the return type).
        let at_output = respan(private.clone(), output.span());
        if let Identity::GetOrCreate(lookup) = self.identity {
            let run = run("get_or_create_named");
            let namespace = &self.namespace;
            let call = if self.asyncness.is_some() {
                // A lookup that is not a future is reported at the lookup.
                let awaited = quote_spanned! {lookup.span()=> (#lookup).await? };
                let lookup = quote! {
                    async |#closure| ::core::result::Result::Ok(#awaited)
                };
                let body = quote! { async |#closure| -> #output #block };
                quote_spanned! {output.span()=>
                    #at_output::#run(#namespace, #conn, #lookup, #body).await
                }
            } else {
                quote! {
                    #private::#run(
                        #namespace,
                        #conn,
                        |#closure| ::core::result::Result::Ok((#lookup)?),
                        |#closure| -> #output #block,
                    )
                }
            };
            let body = require_async(call);
            return quote! {
                #(#attrs)*
                #vis #sig {
                    #body
                }
            };
        }
        let fingerprint_stmts = match self.identity {
            Identity::GetOrCreate(_) => TokenStream::new(),
            Identity::Key(_) | Identity::HashArguments => add(&mut self
                .fingerprinted
                .iter()
                .map(|ident| ident.to_token_stream())),
            Identity::HashValues(values) => add(&mut values.iter().map(ToTokens::to_token_stream)),
        };
        // A generic argument's type joins the fingerprint by its stable
        // name; the error for a parameter without one points at it.
        let type_name_stmts: TokenStream = self
            .named_types
            .iter()
            .map(|param| {
                quote_spanned! {param.span()=>
                    let #fingerprint_var =
                        #private::type_name_for_generic_argument::<#param>(#fingerprint_var);
                }
            })
            .chain(self.named_consts.iter().map(|param| {
                let name = param.to_string();
                quote! {
                    let #fingerprint_var =
                        #private::fingerprint_argument(#fingerprint_var, #name, &#param);
                }
            }))
            .collect();
        // The key expression is evaluated once: what it says about the
        // request (an HTTP key's method and route) joins the fingerprint,
        // and the key itself is taken as an owned `String`.
        let (key_context_stmt, key_stmt) = match self.identity {
            Identity::Key(key) => (
                quote_spanned! {key.span()=>
                    let (#fingerprint_var, #key_var) =
                        #private::key(#fingerprint_var, &(#key));
                },
                TokenStream::new(),
            ),
            Identity::HashArguments | Identity::HashValues(_) | Identity::GetOrCreate(_) => (
                TokenStream::new(),
                quote! {
                    let #key_var = #private::hashed_key(&#fingerprint_var);
                },
            ),
        };
        let (scope_stmt, scope_call) = match self.scope {
            Some(scope) => (
                quote_spanned! {scope.span()=>
                    let #scope_var = #private::scope(&(#scope));
                },
                quote! { .scope(&#scope_var) },
            ),
            None => (TokenStream::new(), TokenStream::new()),
        };
        let clock_call = self.clock.map(|clock| quote! { .clock(&(#clock)) });
        let on_conflict_call = match (self.reject, self.wait_for) {
            (true, _) => Some(quote! { .on_conflict(#private::OnConflict::Reject) }),
            (false, Some(limit)) => {
                let millis = Literal::u128_unsuffixed(limit.as_millis());
                Some(quote! {
                    .on_conflict(#private::OnConflict::WaitFor(
                        ::core::time::Duration::from_millis(#millis)
                    ))
                })
            }
            (false, None) => None,
        };
        let pattern_call = match self.identity {
            Identity::HashArguments | Identity::HashValues(_) => {
                Some(quote! { .pattern(#private::Pattern::Hash) })
            }
            Identity::Key(_) | Identity::GetOrCreate(_) => None,
        };
        let mode_call = self
            .optimistic
            .then(|| quote! { .mode(#private::Mode::Optimistic) });
        let replay_call = self
            .read_first
            .then(|| quote! { .replay(#private::Replay::ReadFirst) });
        let limit_call = self.max_response_bytes.map(|limit| {
            let limit = proc_macro2::Literal::u64_unsuffixed(limit);
            quote! { .max_response_bytes(#limit) }
        });
        let abandon_call = self.abandon_after.map(|after| {
            let millis = Literal::u128_unsuffixed(after.as_millis());
            quote! { .abandon_after(::core::time::Duration::from_millis(#millis)) }
        });
        let namespace = &self.namespace;
        let namespace_check = &self.namespace_check;
        let ttl = if self.ttl.subsec_nanos() == 0 {
            let secs = Literal::u64_unsuffixed(self.ttl.as_secs());
            quote! { #private::Ttl::from_secs(#secs) }
        } else {
            // Whole milliseconds: the attribute rejects anything finer.
            let millis = Literal::u128_unsuffixed(self.ttl.as_millis());
            quote! { #private::Ttl::from_millis(#millis) }
        };
        let run = run("run_response");

        let builder = quote! {
            #private::Call::new(#namespace, &#key_var)
                #pattern_call
                #scope_call
                .ttl(#ttl)
                #clock_call
                #on_conflict_call
                #mode_call
                #replay_call
                #limit_call
                #abandon_call
                .fingerprint(#fingerprint_var)
        };
        let call = if self.asyncness.is_some() {
            let call_var = local("__idempotent_call");
            let body = quote! { async |#closure| -> #output #block };
            let awaited = quote_spanned! {output.span()=>
                #at_output::Call::#run(#call_var, #conn, #body).await
            };
            quote! {
                let #call_var = #builder;
                #awaited
            }
        } else {
            quote! { #builder.#run(#conn, |#closure| -> #output #block) }
        };

        let body = require_async(quote! {
            #namespace_check
            let #fingerprint_var = #private::Fingerprint::builder();
            #fingerprint_stmts
            #type_name_stmts
            #key_context_stmt
            let #fingerprint_var = #fingerprint_var.finish();
            #key_stmt
            #scope_stmt
            #call
        });
        quote! {
            #(#attrs)*
            #vis #sig {
                #body
            }
        }
    }
}

/// How a connection parameter is written, in errors about a missing one.
fn connection_example(sig: &syn::Signature) -> &'static str {
    if sig.asyncness.is_some() {
        "AsyncPgConnection"
    } else {
        "PgConnection"
    }
}

/// `tokens`, every one of them at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

/// The parameter at the root of `a`, `a.b` or `a.0.c`.
fn root_ident(expr: &Expr) -> Option<&Ident> {
    match ungroup(expr) {
        Expr::Field(field) => root_ident(&field.base),
        Expr::Paren(paren) => root_ident(&paren.expr),
        other => bare_ident(other),
    }
}

/// The parameter an expression names when it is just that name.
fn bare_ident(expr: &Expr) -> Option<&Ident> {
    match ungroup(expr) {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => path.path.get_ident(),
        _ => None,
    }
}

/// `ty` without invisible groups (`macro_rules!` `$t:ty` fragments) and
/// parentheses.
fn ungroup_type(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            other => return other,
        }
    }
}

/// The identifiers a type is written with (lifetimes left out): enough to
/// tell which type parameters it mentions and whether it holds `impl Trait`.
fn type_idents(ty: &Type) -> Vec<Ident> {
    fn walk(tokens: TokenStream, out: &mut Vec<Ident>) {
        let mut after_quote = false;
        for token in tokens {
            match &token {
                TokenTree::Group(group) => walk(group.stream(), out),
                TokenTree::Ident(ident) if !after_quote => out.push(ident.clone()),
                _ => {}
            }
            after_quote = matches!(&token, TokenTree::Punct(punct) if punct.as_char() == '\'');
        }
    }
    let mut out = Vec::new();
    walk(ty.to_token_stream(), &mut out);
    out
}
