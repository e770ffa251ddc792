//! Client OS classification from `Sec-CH-UA-Platform` or the User-Agent, with plain substring
//! scans (no regex): the sidecar runs it at most once per request, and only when a rule uses `os`.

use std::fmt;

/// The OS class of a client, the most specific one known. `os: [ios]` in a policy also takes
/// [`OsClass::Ipados`] (iPadOS is iOS's family); see [`OsSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OsClass {
    /// Android (never `linux`).
    Android,
    /// iOS on iPhone or iPod touch.
    Ios,
    /// iPadOS (an iPad that says so; iPads in desktop mode look like macOS).
    Ipados,
    /// macOS.
    Macos,
    /// Windows.
    Windows,
    /// Desktop Linux (not Android, HarmonyOS or ChromeOS).
    Linux,
    /// ChromeOS (not `linux`).
    Chromeos,
    /// HarmonyOS / OpenHarmony (never `android` or `linux`).
    Harmonyos,
    /// Anything else, including no User-Agent at all.
    Other,
}

impl OsClass {
    /// Every class, in declaration order.
    pub const ALL: [OsClass; 9] = [
        OsClass::Android,
        OsClass::Ios,
        OsClass::Ipados,
        OsClass::Macos,
        OsClass::Windows,
        OsClass::Linux,
        OsClass::Chromeos,
        OsClass::Harmonyos,
        OsClass::Other,
    ];

    /// The name used in policies (`ios`, `chromeos`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OsClass::Android => "android",
            OsClass::Ios => "ios",
            OsClass::Ipados => "ipados",
            OsClass::Macos => "macos",
            OsClass::Windows => "windows",
            OsClass::Linux => "linux",
            OsClass::Chromeos => "chromeos",
            OsClass::Harmonyos => "harmonyos",
            OsClass::Other => "other",
        }
    }

    /// The class of a policy name, exactly as written in DESIGN.md (lowercase).
    pub fn from_name(name: &str) -> Option<OsClass> {
        OsClass::ALL.into_iter().find(|c| c.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for OsClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of OS classes as a bit mask, built from a policy's `os:` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OsSet(u16);

impl OsSet {
    /// Adds what the policy name `class` takes: `ios` adds iOS and iPadOS.
    pub fn insert(&mut self, class: OsClass) {
        self.0 |= class.bit();
        if class == OsClass::Ios {
            self.0 |= OsClass::Ipados.bit();
        }
    }

    /// True if a client of class `class` matches.
    pub fn contains(self, class: OsClass) -> bool {
        self.0 & class.bit() != 0
    }
}

impl FromIterator<OsClass> for OsSet {
    fn from_iter<I: IntoIterator<Item = OsClass>>(iter: I) -> Self {
        let mut set = OsSet::default();
        for class in iter {
            set.insert(class);
        }
        set
    }
}

/// Classifies a client. `platform_hint` is the raw `Sec-CH-UA-Platform` value (a quoted string
/// such as `"Android"`); when it names a known platform it wins, otherwise (absent, empty,
/// `"Unknown"`, unrecognised) the User-Agent decides.
///
/// A hint of `"iOS"` with an iPad or desktop-Safari (`Macintosh`) User-Agent is iPadOS: only an
/// iPad in desktop mode reports iOS while looking like a Mac.
pub fn classify(platform_hint: Option<&[u8]>, user_agent: Option<&[u8]>) -> OsClass {
    let ua = user_agent.map(String::from_utf8_lossy);
    let ua = ua.as_deref().unwrap_or("");
    if let Some(class) = platform_hint.and_then(classify_hint) {
        if class == OsClass::Ios && (ua.contains("iPad") || ua.contains("Macintosh")) {
            return OsClass::Ipados;
        }
        return class;
    }
    classify_user_agent(ua)
}

/// Classifies a `Sec-CH-UA-Platform` value; `None` when it says nothing usable.
pub fn classify_hint(value: &[u8]) -> Option<OsClass> {
    let value = value.trim_ascii();
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value)
        .trim_ascii();
    let is = |name: &str| value.eq_ignore_ascii_case(name.as_bytes());
    Some(if is("Android") {
        OsClass::Android
    } else if is("iOS") {
        OsClass::Ios
    } else if is("iPadOS") {
        OsClass::Ipados
    } else if is("macOS") {
        OsClass::Macos
    } else if is("Windows") {
        OsClass::Windows
    } else if is("Linux") {
        OsClass::Linux
    } else if is("Chrome OS") || is("Chromium OS") || is("ChromeOS") {
        OsClass::Chromeos
    } else if is("HarmonyOS") || is("OpenHarmony") {
        OsClass::Harmonyos
    } else {
        // "Unknown", "" and platforms with no class of their own (e.g. "Fuchsia") defer to the UA.
        return None;
    })
}

/// Classifies a User-Agent string. Order matters: HarmonyOS UAs also say `Android` and `Linux`,
/// Android and ChromeOS UAs say `Linux`, iPhone UAs say `like Mac OS X`.
pub fn classify_user_agent(ua: &str) -> OsClass {
    let has = |needle: &str| ua.contains(needle);
    if ua.is_empty() {
        OsClass::Other
    } else if has("HarmonyOS") || has("OpenHarmony") {
        OsClass::Harmonyos
    } else if has("CrOS") {
        OsClass::Chromeos
    } else if has("Android") {
        OsClass::Android
    } else if has("iPad") {
        OsClass::Ipados
    } else if has("iPhone") || has("iPod") || has("(iOS") || has("; iOS ") {
        OsClass::Ios
    } else if has("Windows") {
        OsClass::Windows
    } else if has("Macintosh") || has("Mac OS X") {
        OsClass::Macos
    } else if has("Linux") {
        OsClass::Linux
    } else {
        OsClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of `shared/data/user-agents.tsv`.
    struct Row {
        line: usize,
        expected: OsClass,
        hint: Option<String>,
        user_agent: Option<String>,
    }

    fn rows() -> Vec<Row> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/user-agents.tsv"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("cannot read {path}: {e} (shared/ must sit beside the repo)")
        });
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() && !line.contains('\t') {
                continue;
            }
            let mut cols = line.splitn(3, '\t');
            let expected = cols.next().unwrap_or_default();
            let hint = cols.next().unwrap_or_default();
            let ua = cols.next().unwrap_or_default();
            let expected = OsClass::from_name(expected)
                .unwrap_or_else(|| panic!("line {}: unknown class {expected:?}", i + 1));
            rows.push(Row {
                line: i + 1,
                expected,
                hint: (!hint.is_empty()).then(|| hint.to_owned()),
                user_agent: (!ua.is_empty()).then(|| ua.to_owned()),
            });
        }
        rows
    }

    #[test]
    fn agrees_with_every_row_of_user_agents_tsv() {
        let rows = rows();
        assert!(
            rows.len() >= 50,
            "the table has {} rows; expected the whole file",
            rows.len()
        );
        let mut mismatches = Vec::new();
        for row in &rows {
            let got = classify(
                row.hint.as_deref().map(str::as_bytes),
                row.user_agent.as_deref().map(str::as_bytes),
            );
            if got != row.expected {
                mismatches.push(format!(
                    "line {}: expected {}, got {} (hint {:?}, UA {:?})",
                    row.line, row.expected, got, row.hint, row.user_agent
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    #[test]
    fn every_class_occurs_in_the_table() {
        let rows = rows();
        for class in OsClass::ALL {
            assert!(
                rows.iter().any(|r| r.expected == class),
                "no row for {class}"
            );
        }
        assert!(
            rows.iter().any(|r| r.user_agent.is_none()),
            "a row without User-Agent"
        );
    }

    #[test]
    fn hint_wins_over_user_agent() {
        let linux_ua = Some(&b"Mozilla/5.0 (X11; Linux x86_64)"[..]);
        assert_eq!(classify(Some(b"\"Android\""), linux_ua), OsClass::Android);
        assert_eq!(
            classify(Some(b"\"Chromium OS\""), linux_ua),
            OsClass::Chromeos
        );
        assert_eq!(
            classify(Some(b" \"HarmonyOS\" "), linux_ua),
            OsClass::Harmonyos
        );
        assert_eq!(classify(Some(b"\"Windows\""), None), OsClass::Windows);
    }

    #[test]
    fn unknown_or_empty_hint_defers_to_user_agent() {
        let ua = Some(&b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"[..]);
        assert_eq!(classify(Some(b"\"Unknown\""), ua), OsClass::Macos);
        assert_eq!(classify(Some(b"\"\""), ua), OsClass::Macos);
        assert_eq!(classify(Some(b""), ua), OsClass::Macos);
        assert_eq!(classify(Some(b"\"Unknown\""), None), OsClass::Other);
    }

    #[test]
    fn ipad_in_desktop_mode_is_macos_unless_the_hint_says_ios() {
        let desktop_safari = Some(
            &b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15"[..],
        );
        assert_eq!(classify(None, desktop_safari), OsClass::Macos);
        assert_eq!(classify(Some(b"\"iOS\""), desktop_safari), OsClass::Ipados);
        assert_eq!(classify(Some(b"\"macOS\""), desktop_safari), OsClass::Macos);
        let iphone = Some(&b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X)"[..]);
        assert_eq!(classify(Some(b"\"iOS\""), iphone), OsClass::Ios);
    }

    #[test]
    fn ios_set_takes_ipad_but_ipados_set_does_not_take_iphone() {
        let ios: OsSet = [OsClass::Ios].into_iter().collect();
        assert!(ios.contains(OsClass::Ios) && ios.contains(OsClass::Ipados));
        assert!(!ios.contains(OsClass::Macos));
        let ipados: OsSet = [OsClass::Ipados].into_iter().collect();
        assert!(ipados.contains(OsClass::Ipados) && !ipados.contains(OsClass::Ios));
        let other: OsSet = [OsClass::Other].into_iter().collect();
        assert!(other.contains(OsClass::Other) && !other.contains(OsClass::Linux));
    }

    #[test]
    fn names_round_trip_and_are_lowercase_only() {
        for class in OsClass::ALL {
            assert_eq!(OsClass::from_name(class.as_str()), Some(class));
        }
        assert_eq!(OsClass::from_name("iOS"), None);
        assert_eq!(OsClass::from_name("darwin"), None);
    }

    #[test]
    fn non_utf8_user_agent_is_scanned_lossily() {
        assert_eq!(
            classify(None, Some(b"\xffWindows NT 10.0")),
            OsClass::Windows
        );
    }
}
