//! Output: aligned tables, YAML and JSON of what the control plane returns.

use std::time::SystemTime;

use serde::Serialize;
use serin_proto::v1;

use crate::error::CliError;

/// Rows under headers, columns aligned, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A wire timestamp as RFC 3339 (seconds).
pub fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = SystemTime::try_from(*t?).ok()?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// How long ago, for tables ("12s", "3m", "2h").
pub fn age(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A route as `v1:90 v2:10`.
pub fn route(weights: &[v1::VersionWeight]) -> String {
    weights
        .iter()
        .map(|w| format!("{}:{}", w.version, w.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A route as shares, `v1 90%, v2 10%`.
pub fn shares(weights: &[v1::VersionWeight]) -> String {
    let total: u64 = weights.iter().map(|w| u64::from(w.weight)).sum();
    weights
        .iter()
        .map(|w| {
            let pct = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(w.weight) / total as f64
            };
            format!("{} {}%", w.version, trim_float(pct))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `12.5`, `10` (no trailing zeros).
pub fn trim_float(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// YAML of one value or a `---` separated list.
pub fn yaml<T: Serialize>(items: &[T], single: bool) -> Result<String, CliError> {
    let encode = |v: &T| {
        serde_yaml_ng::to_string(v).map_err(|e| CliError::Input(format!("cannot encode YAML: {e}")))
    };
    if single {
        return encode(&items[0]);
    }
    let mut out = String::new();
    for item in items {
        out.push_str("---\n");
        out.push_str(&encode(item)?);
    }
    Ok(out)
}

/// Pretty JSON of one value or an array.
pub fn json<T: Serialize>(items: &[T], single: bool) -> Result<String, CliError> {
    let text = if single {
        serde_json::to_string_pretty(&items[0])
    } else {
        serde_json::to_string_pretty(items)
    };
    Ok(text.map_err(|e| CliError::Input(format!("cannot encode JSON: {e}")))? + "\n")
}
