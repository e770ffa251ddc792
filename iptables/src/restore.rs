//! The `iptables-restore` text format: rendering plans into it (deterministically) and mapping a
//! line number in the tool's error back to the rule on that line.

use std::fmt;

use crate::plan::{FamilyPlan, RuleSet};

/// Input for `iptables-restore`, kept as lines so an error's line number finds its rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreText {
    lines: Vec<String>,
}

impl RestoreText {
    /// Appends one line (without its newline).
    pub fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// The line `number` (1-based, as the tools count), if there is one.
    pub fn line(&self, number: usize) -> Option<&str> {
        number
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(String::as_str)
    }

    /// The lines, in order.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The text, one line each, ending with a newline.
impl fmt::Display for RestoreText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lines.iter().try_for_each(|line| writeln!(f, "{line}"))
    }
}

/// Renders one family's full plan: chain declarations, then the jumps, then the chains' rules.
/// With `--noflush`, a declaration creates a missing chain and flushes an existing one.
pub fn render_family(plan: &FamilyPlan) -> RestoreText {
    let mut text = RestoreText::default();
    for table in &plan.tables {
        text.push(format!("*{}", table.table));
        for chain in &table.chains {
            text.push(format!(":{chain} - [0:0]"));
        }
        for rule in &table.rules {
            text.push(rule.to_string());
        }
        text.push("COMMIT");
    }
    text
}

/// Renders what `plan` prints: each family labelled, IPv4 first; an IPv6 that is off says so.
pub fn render_plan(rules: &RuleSet) -> String {
    let mut out = String::new();
    for family in crate::plan::Family::ALL {
        match rules.family(family) {
            Some(plan) => {
                out.push_str(&format!(
                    "# {family}: {}-restore --noflush (apply adds the jumps from built-in chains \
                     only where they are missing)\n",
                    family.tool()
                ));
                out.push_str(&render_family(plan).to_string());
            }
            None => out.push_str(&format!("# {family}: off, no rules\n")),
        }
    }
    out
}

/// Finds the line number in an `iptables-restore` error: `line 3 failed` (legacy and nft rule
/// errors) or `Error occurred at line: 3` (parse errors).
pub fn failed_line(stderr: &str) -> Option<usize> {
    stderr.match_indices("line").find_map(|(at, word)| {
        let rest = stderr[at + word.len()..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_line_numbers_of_both_backends() {
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): unknown option \"--bogus\"\n\
                   Error occurred at line: 3\nTry `iptables-nft-restore -h' for more information.";
        assert_eq!(failed_line(nft), Some(3));
        let legacy = "iptables-restore: line 12 failed";
        assert_eq!(failed_line(legacy), Some(12));
        let nft_rule =
            "iptables-nft-restore: line 2 failed: Bad rule (does a matching rule exist?)";
        assert_eq!(failed_line(nft_rule), Some(2));
        assert_eq!(
            failed_line("iptables-restore: unable to initialize table 'nat'"),
            None
        );
    }

    #[test]
    fn lines_are_one_based() {
        let mut text = RestoreText::default();
        text.push("*nat");
        text.push("COMMIT");
        assert_eq!(text.line(1), Some("*nat"));
        assert_eq!(text.line(2), Some("COMMIT"));
        assert_eq!(text.line(0), None);
        assert_eq!(text.line(3), None);
        assert_eq!(text.to_string(), "*nat\nCOMMIT\n");
    }
}
