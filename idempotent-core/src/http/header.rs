//! Reading the `Idempotency-Key` header: a bare token, as Stripe and most
//! SDKs send it, or an RFC 8941 sf-string, as the IETF draft specifies.

use crate::pattern::key::validate_key;

/// Why a request's `Idempotency-Key` header was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRejection {
    /// The request has no `Idempotency-Key` header.
    #[error("the request has no Idempotency-Key header; send one (a UUID is a good choice)")]
    Missing,
    /// The header was sent more than once, or as a list.
    #[error("the Idempotency-Key header must hold exactly one key; it was sent {0}")]
    NotOne(&'static str),
    /// The header is not a valid sf-string, or the key breaks the key rules.
    #[error("the Idempotency-Key header is invalid: {0}")]
    Invalid(String),
}

/// The key in the values of every `Idempotency-Key` header line of a
/// request.
pub(crate) fn parse_key<'v>(
    mut lines: impl Iterator<Item = &'v [u8]>,
) -> Result<String, KeyRejection> {
    let Some(line) = lines.next() else {
        return Err(KeyRejection::Missing);
    };
    if lines.next().is_some() {
        return Err(KeyRejection::NotOne("in more than one header line"));
    }
    let value = trim_ows(line);
    let key = if let Some(quoted) = value.strip_prefix(b"\"") {
        sf_string(quoted)?
    } else if value.contains(&b',') {
        return Err(KeyRejection::NotOne("as a list"));
    } else {
        match std::str::from_utf8(value) {
            Ok(text) => text.to_owned(),
            Err(_) => return Err(invalid_key(non_ascii())),
        }
    };
    validate_key(&key).map_err(|e| match e {
        crate::Error::InvalidKey { reason } => invalid_key(reason),
        other => KeyRejection::Invalid(other.to_string()),
    })?;
    Ok(key)
}

fn invalid_key(reason: &str) -> KeyRejection {
    KeyRejection::Invalid(format!(
        "{reason}; send 1 to 255 visible ASCII characters (a UUID is a good choice)"
    ))
}

fn non_ascii() -> &'static str {
    "the key holds a space, a control character or non-ASCII text"
}

/// The value without leading and trailing spaces and tabs.
fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// An RFC 8941 sf-string after its opening quote: the text up to the
/// closing quote, unescaped (`\"` and `\\` only). After it may come
/// parameters (ignored, as the RFC asks of unknown ones, but parsed: a
/// header that is no sf-item is refused), never a second list member.
fn sf_string(after_quote: &[u8]) -> Result<String, KeyRejection> {
    let (text, mut rest) = string_body(after_quote)?;
    // Parameters: `;`, spaces, a key, optionally `=` and a bare item.
    while let [b';', after @ ..] = rest {
        let after = skip_spaces(after);
        let after = parameter_key(after).ok_or_else(|| {
            KeyRejection::Invalid(
                "a parameter after the quoted key has no valid name (lowercase letters, \
                 digits, `_`, `-`, `.`, `*`)"
                    .into(),
            )
        })?;
        rest = match after {
            [b'=', value @ ..] => bare_item(value)?,
            _ => after,
        };
    }
    let rest = trim_ows(rest);
    if rest.is_empty() {
        Ok(text)
    } else if rest.starts_with(b",") {
        Err(KeyRejection::NotOne("as a list"))
    } else {
        Err(KeyRejection::Invalid(
            "unexpected text after the quoted key".into(),
        ))
    }
}

/// The text of an sf-string after its opening quote, unescaped, and what
/// follows its closing quote.
fn string_body(after_quote: &[u8]) -> Result<(String, &[u8]), KeyRejection> {
    let mut text = String::new();
    let mut bytes = after_quote.iter();
    loop {
        match bytes.next() {
            None => {
                return Err(KeyRejection::Invalid(
                    "the quoted key has no closing quote".into(),
                ));
            }
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => text.push(char::from(escaped)),
                _ => {
                    return Err(KeyRejection::Invalid(
                        "a quoted key may escape only `\"` and `\\`".into(),
                    ));
                }
            },
            Some(&byte @ 0x20..=0x7e) => text.push(char::from(byte)),
            Some(_) => return Err(invalid_key(non_ascii())),
        }
    }
    Ok((text, bytes.as_slice()))
}

fn skip_spaces(mut value: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = value {
        value = rest;
    }
    value
}

/// What follows a parameter's key (`lcalpha` or `*`, then lowercase
/// letters, digits, `_`, `-`, `.` or `*`); `None` without a key.
fn parameter_key(value: &[u8]) -> Option<&[u8]> {
    match value {
        [b'a'..=b'z' | b'*', rest @ ..] => Some(take_while(
            rest,
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'),
        )),
        _ => None,
    }
}

/// What follows an RFC 8941 bare item (a parameter's value): an integer,
/// a decimal, a string, a token, a byte sequence or a boolean.
fn bare_item(value: &[u8]) -> Result<&[u8], KeyRejection> {
    let invalid =
        || KeyRejection::Invalid("a parameter after the quoted key has an invalid value".into());
    match value {
        [b'"', after @ ..] => string_body(after).map(|(_, rest)| rest),
        [b'?', b'0' | b'1', rest @ ..] => Ok(rest),
        [b':', after @ ..] => match take_while(after, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
        }) {
            [b':', rest @ ..] => Ok(rest),
            _ => Err(invalid()),
        },
        [b'A'..=b'Z' | b'a'..=b'z' | b'*', rest @ ..] => Ok(take_while(rest, |b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b)
        })),
        [b'-' | b'0'..=b'9', ..] => {
            let digits = value.strip_prefix(b"-").unwrap_or(value);
            let rest = take_while(digits, |b| b.is_ascii_digit() || b == b'.');
            let number = &digits[..digits.len() - rest.len()];
            let valid = match number.iter().position(|&b| b == b'.') {
                None => (1..=15).contains(&number.len()),
                Some(dot) => {
                    let fraction = &number[dot + 1..];
                    (1..=12).contains(&dot)
                        && (1..=3).contains(&fraction.len())
                        && !fraction.contains(&b'.')
                }
            };
            if valid { Ok(rest) } else { Err(invalid()) }
        }
        _ => Err(invalid()),
    }
}

/// `value` after its leading bytes that satisfy `keep`.
fn take_while(value: &[u8], keep: impl Fn(u8) -> bool) -> &[u8] {
    let taken = value.iter().take_while(|&&b| keep(b)).count();
    &value[taken..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<String, KeyRejection> {
        parse_key(lines.iter().map(|line| line.as_bytes()))
    }

    #[test]
    fn bare_and_quoted_keys_read_alike() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(&[uuid]).unwrap(), uuid);
        assert_eq!(parse(&[&format!("\"{uuid}\"")]).unwrap(), uuid);
        assert_eq!(parse(&[&format!("  \"{uuid}\"\t")]).unwrap(), uuid);
        assert_eq!(parse(&[&format!("\"{uuid}\";v=1")]).unwrap(), uuid);
        assert_eq!(parse(&[r#""a\"b\\c""#]).unwrap(), r#"a"b\c"#);
    }

    #[test]
    fn every_malformed_header_is_refused() {
        assert_eq!(parse(&[]), Err(KeyRejection::Missing));
        assert!(matches!(parse(&["a", "b"]), Err(KeyRejection::NotOne(_))));
        assert!(matches!(parse(&["a, b"]), Err(KeyRejection::NotOne(_))));
        assert!(matches!(
            parse(&["\"a\", \"b\""]),
            Err(KeyRejection::NotOne(_))
        ));
        for invalid in [
            "",
            "\"\"",
            "\"a b\"",
            "\"abc",
            "\"a\\n\"",
            "\"a\" junk",
            "\u{e9}t\u{e9}",
        ] {
            assert!(
                matches!(parse(&[invalid]), Err(KeyRejection::Invalid(_))),
                "{invalid:?}: {:?}",
                parse(&[invalid])
            );
        }
        // Parameters are RFC 8941 parameters: `;key` or `;key=bare-item`.
        for valid in [
            r#""k";a"#,
            r#""k";a=1;b=-12;c=1.5;d=-0.125"#,
            r#""k"; a=?1;*b=tok/x:y;c=:AQ==:;d="x,\"y\"""#,
        ] {
            assert_eq!(parse(&[valid]), Ok("k".to_owned()), "{valid}");
        }
        for invalid in [
            r#""k";"#,
            r#""k";a=1."#,
            r#""k";a=.5"#,
            r#""k";a=1.2345"#,
            r#""k";a=1.2.3"#,
            r#""k";a=1234567890123456"#,
            r#""k";a=-"#,
            r#""k";a=?2"#,
            r#""k";a=:AQ=="#,
            r#""k";a="x"#,
            r#""k";a=1;"#,
            r#""k";a b"#,
        ] {
            assert!(
                matches!(parse(&[invalid]), Err(KeyRejection::Invalid(_))),
                "{invalid:?}: {:?}",
                parse(&[invalid])
            );
        }
        assert!(matches!(
            parse(&[r#""k";a=1, "l""#]),
            Err(KeyRejection::NotOne(_))
        ));
        assert!(parse(&[&"k".repeat(255)]).is_ok());
        assert!(matches!(
            parse(&[&"k".repeat(256)]),
            Err(KeyRejection::Invalid(_))
        ));
        assert!(matches!(
            parse_key([&b"\"\xff\""[..]].into_iter()),
            Err(KeyRejection::Invalid(_))
        ));
    }
}
