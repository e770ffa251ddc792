//! Query string parsing for `query:` conditions, following `application/x-www-form-urlencoded`
//! (the WHATWG URL standard's parser):
//! - pairs are separated by `&`; empty pairs are skipped; a pair without `=` has the empty value;
//! - names and values are percent-decoded, and `+` decodes to a space (form encoding; write `%2B`
//!   for a literal plus);
//! - a `%` not followed by two hex digits stays as it is;
//! - decoded bytes need not be UTF-8: matching works on bytes;
//! - when a name occurs more than once, the first occurrence wins, as for cookies.
//!
//! Decoding borrows the input and allocates only when a `%` or `+` is present.

use std::borrow::Cow;

/// The raw (still encoded) `(name, value)` pairs of a query string (without the leading `?`).
pub fn raw_pairs(query: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        })
}

/// Percent-decodes `raw` with `+` as space.
pub fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// The decoded value of parameter `name` (compared after decoding), first occurrence.
pub fn find<'q>(query: &'q str, name: &[u8]) -> Option<Cow<'q, [u8]>> {
    raw_pairs(query)
        .find(|(n, _)| *decode(n) == *name)
        .map(|(_, v)| decode(v))
}

fn hex(b: &u8) -> Option<u8> {
    match *b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(query: &str, name: &str) -> Option<Vec<u8>> {
        find(query, name.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn percent_and_plus_decoding() {
        assert_eq!(get("q=a%20b+c%2Bd", "q").unwrap(), b"a b c+d");
        assert_eq!(get("q=%e4%BD%A0", "q").unwrap(), "你".as_bytes());
        assert_eq!(get("q=%FF", "q").unwrap(), [0xff]);
    }

    #[test]
    fn malformed_escapes_stay_literal() {
        assert_eq!(get("q=100%", "q").unwrap(), b"100%");
        assert_eq!(get("q=%zz%4", "q").unwrap(), b"%zz%4");
        assert_eq!(get("q=%4x", "q").unwrap(), b"%4x");
    }

    #[test]
    fn names_are_decoded_too() {
        assert_eq!(get("user+id=7", "user id").unwrap(), b"7");
        assert_eq!(get("user%5Fid=7", "user_id").unwrap(), b"7");
    }

    #[test]
    fn missing_value_is_empty_and_empty_pairs_skip() {
        assert_eq!(get("&&beta&x=1", "beta").unwrap(), b"");
        assert_eq!(get("beta=", "beta").unwrap(), b"");
        assert_eq!(get("x=1", "beta"), None);
        assert_eq!(get("", "beta"), None);
    }

    #[test]
    fn first_occurrence_wins_and_names_match_whole() {
        assert_eq!(get("beta=1&beta=2", "beta").unwrap(), b"1");
        assert_eq!(get("betamax=1&abeta=2", "beta"), None);
    }

    #[test]
    fn decoding_borrows_when_nothing_to_decode() {
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
        assert!(matches!(decode(b"a+b"), Cow::Owned(_)));
    }
}
