//! Request path normalisation (FAULTS 8), done once before a request is matched against a
//! traffic policy and before it is forwarded, so that the path the policy matched is the path the
//! app receives (what Envoy's `normalize_path` and `merge_slashes` do).
//!
//! The rules, applied to the path of an origin-form or absolute-form URI (the query is kept as
//! it is; a path that does not start with `/`, such as `*` or a CONNECT authority, is left alone):
//!
//! 1. Refused with 400: a percent-encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`), the same
//!    encoded twice (`%252F`, `%255C`, `%2500`), a `%` not followed by two hex digits, a raw
//!    `\`, and any raw control byte (below 0x20, or 0x7F). Either case of hex digit. These are
//!    the encodings a server behind the proxy may decode into a separator or a string end the
//!    proxy did not match on; a malformed `%` is refused because it could otherwise combine with
//!    what decoding yields (`%%32F` would become `%2F`), and the decoded path is checked again
//!    (`%25%32%46` decodes to the double encoding `%252F`).
//! 2. Percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-`, `.`, `_`,
//!    `~`) are decoded, so `/%2E%2E/` is seen as `/../`. Every other percent-encoding is kept
//!    as sent.
//! 3. Runs of `/` are merged into one.
//! 4. `.` segments are removed and `..` segments remove the segment before them (RFC 3986
//!    §5.2.4); `..` at the root stays at the root. A path that ended in `.` or `..` keeps a
//!    trailing `/` (`/a/b/..` is `/a/`).
//!
//! A fragment never reaches here: the URI parser ends the path at `#` and drops the rest, so it
//! is neither matched nor forwarded.

use std::borrow::Cow;

use http::Uri;
use http::uri::PathAndQuery;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// `%2F` (or `%252F`).
    #[error("percent-encoded '/' (%2F) in the path")]
    EncodedSlash,
    /// `%5C` (or `%255C`).
    #[error("percent-encoded '\\' (%5C) in the path")]
    EncodedBackslash,
    /// `%00` (or `%2500`).
    #[error("percent-encoded NUL (%00) in the path")]
    EncodedNul,
    /// A `%` not followed by two hex digits.
    #[error("'%' not followed by two hex digits in the path")]
    MalformedEncoding,
    /// A raw `\`.
    #[error("'\\' in the path")]
    Backslash,
    /// A raw control byte.
    #[error("control character 0x{0:02x} in the path")]
    Control(u8),
    /// The normalised path is not a valid URI path (cannot happen for input the URI parser
    /// accepted; kept so that a parser change fails safe).
    #[error("path is not valid after normalisation")]
    Invalid,
}

/// `uri` with its path normalised, or `None` when it is already normal (the common case costs
/// one scan and no allocation).
pub fn normalize_uri(uri: &Uri) -> Result<Option<Uri>, BadPath> {
    let Cow::Owned(path) = normalize(uri.path())? else {
        return Ok(None);
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::from_maybe_shared(path_and_query).map_err(|_| BadPath::Invalid)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| BadPath::Invalid)
}

/// The normalised form of `path` (see the module docs), borrowed when nothing changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(BadPath::Backslash),
            0..=0x1f | 0x7f => return Err(BadPath::Control(b)),
            b'%' => {
                let decoded = check_encoded(&bytes[i + 1..])?;
                needs_work |= is_unreserved(decoded);
            }
            b'/' => {
                let segment = bytes[i + 1..]
                    .split(|&b| b == b'/')
                    .next()
                    .unwrap_or_default();
                if bytes.get(i + 1) == Some(&b'/') || segment == b"." || segment == b".." {
                    needs_work = true;
                }
            }
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes);
    // Decoded digits can complete a double encoding after a kept `%25` (`%25%30%30` becomes
    // `%2500`): the decoded path is checked again.
    let mut rest = decoded.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        check_encoded(&rest[at + 1..])?;
        rest = &rest[at + 1..];
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Refuses the encodings of rule 1 and a `%` without two hex digits after it; `rest` is what
/// follows the `%`. The byte it encodes otherwise.
fn check_encoded(rest: &[u8]) -> Result<u8, BadPath> {
    let refused = |hi: u8, lo: u8| match (hi, lo.to_ascii_uppercase()) {
        (b'2', b'F') => Some(BadPath::EncodedSlash),
        (b'5', b'C') => Some(BadPath::EncodedBackslash),
        (b'0', b'0') => Some(BadPath::EncodedNul),
        _ => None,
    };
    let (Some(hi), Some(lo)) = (
        rest.first().copied().and_then(hex),
        rest.get(1).copied().and_then(hex),
    ) else {
        return Err(BadPath::MalformedEncoding);
    };
    if let Some(bad) = refused(rest[0], rest[1]) {
        return Err(bad);
    }
    // `%25` is an encoded `%`: refused when what follows makes a refused encoding.
    if let [b'2', b'5', hi, lo, ..] = rest
        && let Some(bad) = refused(*hi, *lo)
    {
        return Err(bad);
    }
    Ok(hi << 4 | lo)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters (rule 2); everything else is copied.
fn decode_unreserved(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
            && is_unreserved(hi << 4 | lo)
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    // Only `%XX` triples became ASCII bytes, so what was UTF-8 still is.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Merges slashes and resolves `.` and `..` (rules 3 and 4); `path` starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, BadPath> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn a_normal_path_is_borrowed_unchanged() {
        for path in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/a-b_c~d", "/a%20b%3A"] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/beta//x").unwrap(), "/beta/x");
        assert_eq!(norm("///a///b//").unwrap(), "/a/b/");
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/beta/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/../../c").unwrap(), "/c");
        assert_eq!(norm("/.").unwrap(), "/");
    }

    #[test]
    fn dot_dot_never_climbs_above_the_root() {
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/a/../../..//b").unwrap(), "/b");
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_before_dots_resolve() {
        assert_eq!(norm("/beta/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/beta/%2e./admin").unwrap(), "/admin");
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/a%7Eb").unwrap(), "/a~b");
        assert_eq!(norm("/caf\u{e9}/./x").unwrap(), "/caf\u{e9}/x");
    }

    #[test]
    fn other_encodings_are_kept_as_sent() {
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/100%25").unwrap(), "/100%25");
        assert_eq!(norm("/a%3A").unwrap(), "/a%3A");
    }

    #[test]
    fn a_malformed_percent_is_refused() {
        for path in [
            "/a%2",
            "/a%",
            "/100%",
            "/%zz",
            "/%%32F",
            "/%%32E%%32E/admin",
        ] {
            assert_eq!(norm(path), Err(BadPath::MalformedEncoding), "{path}");
        }
    }

    #[test]
    fn encoded_separators_and_nul_are_refused() {
        assert_eq!(norm("/a%2Fb"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/a%2fb"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/a%5Cb"), Err(BadPath::EncodedBackslash));
        assert_eq!(norm("/a%5cb"), Err(BadPath::EncodedBackslash));
        assert_eq!(norm("/a%00"), Err(BadPath::EncodedNul));
    }

    #[test]
    fn double_encoded_separators_and_nul_are_refused() {
        assert_eq!(norm("/a%252Fb"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/a%255c"), Err(BadPath::EncodedBackslash));
        assert_eq!(norm("/a%2500"), Err(BadPath::EncodedNul));
    }

    #[test]
    fn raw_backslash_and_control_bytes_are_refused() {
        assert_eq!(norm("/a\\b"), Err(BadPath::Backslash));
        assert_eq!(norm("/a\0b"), Err(BadPath::Control(0)));
        assert_eq!(norm("/a\tb"), Err(BadPath::Control(b'\t')));
        assert_eq!(norm("/a\x7f"), Err(BadPath::Control(0x7f)));
    }

    #[test]
    fn decoding_never_makes_a_refused_encoding() {
        // Only unreserved characters are decoded, never `%`: no new `%XX` appears...
        assert_eq!(norm("/%32%46").unwrap(), "/2F");
        assert_eq!(norm("/%2532").unwrap(), "/%2532");
        // ...but decoded digits after an encoded `%` can spell a double encoding (found by
        // cargo-fuzz): refused like the double encoding itself.
        assert_eq!(norm("/a%25%300e"), Err(BadPath::EncodedNul));
        assert_eq!(norm("/a%25%32%46"), Err(BadPath::EncodedSlash));
        assert_eq!(norm("/a%255%43"), Err(BadPath::EncodedBackslash));
        assert_eq!(norm("/a%25%32E").unwrap(), "/a%252E");
    }

    #[test]
    fn non_origin_paths_are_left_alone() {
        assert_eq!(norm("*").unwrap(), "*");
        assert_eq!(norm("").unwrap(), "");
    }

    #[test]
    fn the_uri_keeps_its_query_and_authority() {
        let uri: Uri = "http://svc:8080//a/../b?x=%2F&y=/../".parse().unwrap();
        let normal = normalize_uri(&uri).unwrap().unwrap();
        assert_eq!(normal.to_string(), "http://svc:8080/b?x=%2F&y=/../");
        let unchanged: Uri = "/a/b?c".parse().unwrap();
        assert_eq!(normalize_uri(&unchanged).unwrap(), None);
    }

    #[test]
    fn a_fragment_never_reaches_normalisation() {
        // The URI parser stops the path at `#`: the fragment is neither matched nor forwarded.
        let uri: Uri = "/beta/../admin#/beta".parse().unwrap();
        assert_eq!(uri.path(), "/beta/../admin");
        let normal = normalize_uri(&uri).unwrap().unwrap();
        assert_eq!(normal.to_string(), "/admin");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in ["//a/./b/../c/", "/%2E%2E/x", "/a/%41/..", "/x/y/../../.."] {
            let once = norm(path).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{path}");
        }
    }
}
