//! Parsing of `#[idempotent(...)]`'s arguments.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token, bracketed, parenthesized};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(store);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(namespace);
    syn::custom_keyword!(fingerprint);
    syn::custom_keyword!(in_progress);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(fail);
}

/// A duration: a literal such as `"30s"`, checked at compile time, or an expression of type
/// `std::time::Duration`.
pub(crate) enum DurationArg {
    Literal(Duration),
    Expr(Expr),
}

/// `in_progress = wait`, `wait("5s")`, `wait(expr)` or `fail`.
pub(crate) enum InProgressArg {
    Wait(Option<DurationArg>),
    Fail,
}

/// The arguments, each at most once.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key: Option<Expr>,
    pub(crate) store: Option<Expr>,
    pub(crate) ttl: Option<DurationArg>,
    pub(crate) lease: Option<DurationArg>,
    pub(crate) namespace: Option<Expr>,
    pub(crate) fingerprint: Option<Vec<Ident>>,
    pub(crate) in_progress: Option<InProgressArg>,
}

const EXPECTED: &str = "expected one of `key`, `store`, `ttl`, `lease`, `namespace`, \
    `fingerprint`, `in_progress`";

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::key) {
                let name = input.parse::<kw::key>()?;
                input.parse::<Token![=]>()?;
                set(&mut args.key, input.parse()?, name.span, "key")?;
            } else if lookahead.peek(kw::store) {
                let name = input.parse::<kw::store>()?;
                input.parse::<Token![=]>()?;
                set(&mut args.store, input.parse()?, name.span, "store")?;
            } else if lookahead.peek(kw::ttl) {
                let name = input.parse::<kw::ttl>()?;
                input.parse::<Token![=]>()?;
                set(&mut args.ttl, input.parse()?, name.span, "ttl")?;
            } else if lookahead.peek(kw::lease) {
                let name = input.parse::<kw::lease>()?;
                input.parse::<Token![=]>()?;
                set(&mut args.lease, input.parse()?, name.span, "lease")?;
            } else if lookahead.peek(kw::namespace) {
                let name = input.parse::<kw::namespace>()?;
                input.parse::<Token![=]>()?;
                set(&mut args.namespace, input.parse()?, name.span, "namespace")?;
            } else if lookahead.peek(kw::fingerprint) {
                let name = input.parse::<kw::fingerprint>()?;
                input.parse::<Token![=]>()?;
                let content;
                bracketed!(content in input);
                let params = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                set(
                    &mut args.fingerprint,
                    params.into_iter().collect(),
                    name.span,
                    "fingerprint",
                )?;
            } else if lookahead.peek(kw::in_progress) {
                let name = input.parse::<kw::in_progress>()?;
                input.parse::<Token![=]>()?;
                set(
                    &mut args.in_progress,
                    input.parse()?,
                    name.span,
                    "in_progress",
                )?;
            } else if input.peek(Ident) {
                let unknown: Ident = input.parse()?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!("unknown argument `{unknown}`: {EXPECTED}"),
                ));
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

fn set<T>(slot: &mut Option<T>, value: T, span: Span, name: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("duplicate argument `{name}`: give it once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

impl Parse for DurationArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            let literal: LitStr = input.parse()?;
            parse_duration(&literal.value())
                .map(DurationArg::Literal)
                .map_err(|why| {
                    syn::Error::new(
                        literal.span(),
                        format!(
                            "invalid duration {:?}: {why}; write a number and a unit (ms, s, m, \
                             h, d), as \"30s\", \"24h\" or \"1h30m\", or a std::time::Duration",
                            literal.value()
                        ),
                    )
                })
        } else {
            input.parse().map(DurationArg::Expr)
        }
    }
}

impl Parse for InProgressArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::fail) {
            input.parse::<kw::fail>()?;
            Ok(InProgressArg::Fail)
        } else if lookahead.peek(kw::wait) {
            input.parse::<kw::wait>()?;
            if input.peek(syn::token::Paren) {
                let content;
                parenthesized!(content in input);
                let bound: DurationArg = content.parse()?;
                if !content.is_empty() {
                    return Err(content.error("expected one duration: wait(\"10s\")"));
                }
                Ok(InProgressArg::Wait(Some(bound)))
            } else {
                Ok(InProgressArg::Wait(None))
            }
        } else {
            Err(lookahead.error())
        }
    }
}

/// Parses `"30s"`, `"24h"`, `"1h30m"`, `"500ms"`, `"2d"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty");
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err("a number must come before each unit");
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "the number is too large")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(60 * 60),
            "d" => Duration::from_secs(24 * 60 * 60),
            "" => return Err("the unit is missing"),
            _ => return Err("the unit is not one of ms, s, m, h, d"),
        };
        rest = &rest[unit_len..];
        let part = unit
            .checked_mul(u32::try_from(number).map_err(|_| "the number is too large")?)
            .ok_or("it is too long")?;
        total = total.checked_add(part).ok_or("it is too long")?;
    }
    if total.is_zero() {
        return Err("it must be longer than zero");
    }
    Ok(total)
}

impl DurationArg {
    pub(crate) fn span(&self) -> Span {
        match self {
            DurationArg::Literal(_) => Span::call_site(),
            DurationArg::Expr(expr) => expr.span(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }
}
