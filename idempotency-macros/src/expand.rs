//! Generation: the function, its body run once per key by `idempotency_layer::action`.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Signature, Type};

use crate::args::{Args, DurationArg, InProgressArg};

/// The path of the runtime crate, even when the user renamed it in Cargo.toml.
fn runtime() -> TokenStream {
    match crate_name("idempotency-layer") {
        Ok(FoundCrate::Name(name)) => {
            let name = Ident::new(&name, Span::call_site());
            quote!(::#name)
        }
        // `Itself` is idempotency-layer's own tests, examples and doctests: separate crates.
        Ok(FoundCrate::Itself) | Err(_) => quote!(::idempotency_layer),
    }
}

pub(crate) fn expand(args: Args, function: ItemFn) -> syn::Result<TokenStream> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            "#[idempotent] works on async functions: write `async fn`",
        ));
    }
    let (ok, err) = result_types(sig)?;
    let Some(key) = args.key else {
        return Err(syn::Error::new(
            Span::call_site(),
            "missing `key`: write #[idempotent(key = <an expression over the parameters>)], \
             such as key = format!(\"welcome-{user_id}\")",
        ));
    };
    let krate = runtime();

    let namespace = match &args.namespace {
        Some(namespace) => quote!(#namespace),
        None => default_namespace(sig),
    };
    let store = args
        .store
        .as_ref()
        .map(|store| quote_spanned!(store.span()=> .store(#store)));
    let ttl = args.ttl.as_ref().map(|ttl| {
        let ttl = duration(ttl);
        quote!(.ttl(#ttl))
    });
    let lease = args.lease.as_ref().map(|lease| {
        let lease = duration(lease);
        quote!(.lease(#lease))
    });
    let in_progress = args.in_progress.as_ref().map(|policy| match policy {
        InProgressArg::Fail => quote!(.in_progress(#krate::action::InProgress::Fail)),
        InProgressArg::Wait(None) => {
            quote!(.in_progress(#krate::action::InProgress::Wait(::core::time::Duration::from_secs(10))))
        }
        InProgressArg::Wait(Some(bound)) => {
            let bound = duration(bound);
            quote!(.in_progress(#krate::action::InProgress::Wait(#bound)))
        }
    });

    let params = parameter_names(&function);
    let fingerprint = match &args.fingerprint {
        Some(names) => {
            for name in names {
                if !params.iter().any(|param| param == name) {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "`{name}` is not a parameter of this function; `fingerprint` names \
                             the parameters whose change must be refused"
                        ),
                    ));
                }
            }
            let params = names
                .iter()
                .map(|name| quote_spanned!(name.span()=> .param(&#name)?));
            quote!(#krate::action::fingerprint_params() #(#params)* .finish())
        }
        None => quote!(#krate::action::Fingerprint::of("")),
    };

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let run = quote_spanned!(sig.output.span()=>
        __idempotent_action.run::<#ok, #err, _, _>(
            __idempotent_key,
            __idempotent_fingerprint,
            move || async move #block,
        )
    );
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let __idempotent_key = ::std::string::ToString::to_string(&(#key));
            let __idempotent_fingerprint = #fingerprint;
            let __idempotent_action = #krate::action::Action::new(#namespace)
                #store #ttl #lease #in_progress;
            #run.await
        }
    })
}

/// The module path and the function's name; for a method, also the type of `Self`, and for a
/// generic function the type (or value) of each type, const and `impl Trait` parameter, so that
/// two impls of one trait method, or two instances of one generic function, never share keys.
fn default_namespace(sig: &Signature) -> TokenStream {
    let name = sig.ident.to_string();
    let path = quote!(::core::concat!(::core::module_path!(), "::", #name));
    let mut types: Vec<TokenStream> = Vec::new();
    if sig.receiver().is_some() {
        types.push(quote!(::core::any::type_name::<Self>()));
    }
    for param in sig.generics.type_params() {
        let ident = &param.ident;
        types.push(quote!(::core::any::type_name::<#ident>()));
    }
    for param in sig.generics.const_params() {
        let ident = &param.ident;
        types.push(quote!(&::std::string::ToString::to_string(&#ident)));
    }
    // `impl Trait` parameters are anonymous type parameters: name them by their values' types.
    for input in &sig.inputs {
        if let FnArg::Typed(typed) = input
            && let Type::ImplTrait(_) = &*typed.ty
            && let Pat::Ident(ident) = &*typed.pat
        {
            let ident = &ident.ident;
            types.push(quote!(::core::any::type_name_of_val(&#ident)));
        }
    }
    if types.is_empty() {
        return path;
    }
    quote!({
        let mut __idempotent_namespace = ::std::string::String::from(#path);
        #(
            __idempotent_namespace.push_str(" ");
            __idempotent_namespace.push_str(#types);
        )*
        __idempotent_namespace
    })
}

/// A duration argument as an expression of type `Duration`; a mistyped expression is an error
/// at that expression.
fn duration(arg: &DurationArg) -> TokenStream {
    match arg {
        DurationArg::Literal(duration) => {
            let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            quote!(::core::time::Duration::from_millis(#millis))
        }
        DurationArg::Expr(expr) => quote_spanned!(arg.span()=> {
            let __idempotent_duration: ::core::time::Duration = #expr;
            __idempotent_duration
        }),
    }
}

/// `T` and `E` of a `Result<T, E>` return type.
fn result_types(sig: &Signature) -> syn::Result<(Type, Type)> {
    const WANTED: &str = "an #[idempotent] function returns Result<T, E>, with \
        T: Serialize + DeserializeOwned (stored and returned to every later call) and \
        E: From<idempotency_layer::Error>";
    let ReturnType::Type(_, ty) = &sig.output else {
        return Err(syn::Error::new(sig.ident.span(), WANTED));
    };
    if let Type::Path(path) = &**ty
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let PathArguments::AngleBracketed(generics) = &last.arguments
    {
        let types: Vec<&Type> = generics
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect();
        if let [ok, err] = types[..] {
            return Ok((ok.clone(), err.clone()));
        }
    }
    Err(syn::Error::new(ty.span(), WANTED))
}

/// The names of the function's parameters bound by a plain identifier.
fn parameter_names(function: &ItemFn) -> Vec<Ident> {
    function
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(ident) => Some(ident.ident.clone()),
                _ => None,
            },
            FnArg::Receiver(receiver) => Some(Ident::new("self", receiver.self_token.span)),
        })
        .collect()
}
