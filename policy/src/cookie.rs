//! `Cookie` request header parsing per RFC 6265 §4.2.1 / §5.4, without allocating.
//!
//! Rules this crate applies (and tests):
//! - every `Cookie` header of a request is part of one list (HTTP/2 sends one header per cookie);
//! - pairs are separated by `;`, and spaces or tabs around pairs, names and values are dropped;
//! - a value in double quotes is dequoted (`a="x y"` has value `x y`);
//! - a pair without `=` is skipped (it names no cookie);
//! - when a name occurs more than once, the first occurrence wins (browsers send the most specific
//!   path first, and servers conventionally read the first).

/// The `(name, value)` pairs of one `Cookie` header value, in order.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = trim(&pair[..eq]);
        if name.is_empty() {
            return None;
        }
        Some((name, dequote(trim(&pair[eq + 1..]))))
    })
}

/// The value of cookie `name` across all `headers` (first occurrence wins), if any.
pub fn find<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &[u8]) -> Option<&'a [u8]> {
    headers
        .into_iter()
        .flat_map(pairs)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// True if `name` is a valid cookie name (an RFC 7230 token).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

fn dequote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(header: &str) -> Vec<(String, String)> {
        pairs(header.as_bytes())
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn splits_and_trims_pairs() {
        assert_eq!(
            all(" a=1;b=2 ;\tc = 3 ;;  "),
            [("a", "1"), ("b", "2"), ("c", "3")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn dequotes_values() {
        assert_eq!(all("a=\"x y\"; b=\"\"; c=\"")[0].1, "x y");
        assert_eq!(all("b=\"\"")[0].1, "");
        assert_eq!(all("c=\"")[0].1, "\"", "a lone quote is not a quoted value");
    }

    #[test]
    fn value_may_contain_equals_and_pairs_without_equals_are_skipped() {
        assert_eq!(
            all("token=a=b==; flag; =nameless; x=1"),
            [
                ("token".to_owned(), "a=b==".to_owned()),
                ("x".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn several_headers_are_one_list_and_first_wins() {
        let headers: [&[u8]; 2] = [b"a=1; canary=first", b"canary=second; b=2"];
        assert_eq!(find(headers, b"canary"), Some(&b"first"[..]));
        assert_eq!(find(headers, b"b"), Some(&b"2"[..]));
        assert_eq!(find(headers, b"missing"), None);
    }

    #[test]
    fn names_match_whole_not_substrings() {
        let headers: [&[u8]; 1] = [b"xcanary=1; canary_old=2; canar=3"];
        assert_eq!(find(headers, b"canary"), None);
        let headers: [&[u8]; 1] = [b"xcanary=1; canary=yes"];
        assert_eq!(find(headers, b"canary"), Some(&b"yes"[..]));
    }

    #[test]
    fn names_are_case_sensitive() {
        let headers: [&[u8]; 1] = [b"Canary=1"];
        assert_eq!(find(headers, b"canary"), None);
    }

    #[test]
    fn valid_names() {
        assert!(is_valid_name("session_id"));
        assert!(is_valid_name("__Host-x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a=b"));
        assert!(!is_valid_name("a;b"));
    }
}
