//! Installing and removing a plan: compare with what the kernel holds (`iptables-save`), then one
//! `iptables-restore --noflush` batch per family that converges on the plan and touches nothing
//! that is not Serin's. Running it twice changes nothing the second time.

use crate::executor::{ExecError, Executor};
use crate::plan::{Family, RuleSet, TablePlan};
use crate::restore::{RestoreText, failed_line};
use crate::saved::{SavedRules, SavedTable};

/// Installing or removing rules failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The restore tool rejected one line of the batch; nothing of the batch was applied.
    #[error("{program} rejected line {line} `{rule}`: {message}")]
    Rejected {
        /// The tool that refused.
        program: String,
        /// The line number it reported.
        line: usize,
        /// The text of that line.
        rule: String,
        /// What the tool said.
        message: String,
    },
    /// A tool could not run or failed without naming a line.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What one family's batch did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jumps from built-in chains that were added.
    pub jumps_added: usize,
    /// Jumps into Serin's chains that were removed (stale, duplicate or unplanned).
    pub jumps_removed: usize,
    /// Serin chains that were deleted because the plan no longer has them.
    pub chains_removed: usize,
    /// Rules written into Serin's chains.
    pub rules_written: usize,
}

/// Installs `rules`: Serin's chains are created or flushed and refilled, jumps into them are added
/// only where missing, and Serin chains or jumps the plan does not have are removed.
pub fn apply(
    rules: &RuleSet,
    executor: &dyn Executor,
) -> Result<Vec<(Family, Changes)>, InstallError> {
    let mut done = Vec::new();
    for plan in &rules.families {
        let saved = SavedRules::parse(&executor.save(plan.family)?);
        let (text, changes) = reconcile(&plan.tables, &saved);
        restore(executor, plan.family, &text)?;
        tracing::info!(
            family = %plan.family,
            rules = changes.rules_written,
            jumps_added = changes.jumps_added,
            jumps_removed = changes.jumps_removed,
            chains_removed = changes.chains_removed,
            "capture rules applied"
        );
        done.push((plan.family, changes));
    }
    Ok(done)
}

/// Removes every Serin chain and every jump into one, in every table of each family, and nothing
/// else. Does nothing (no restore at all) where nothing of Serin's is left.
pub fn clean(
    families: &[Family],
    executor: &dyn Executor,
) -> Result<Vec<(Family, Changes)>, InstallError> {
    let mut done = Vec::new();
    for &family in families {
        let saved = SavedRules::parse(&executor.save(family)?);
        let (text, changes) = reconcile(&[], &saved);
        if !text.is_empty() {
            restore(executor, family, &text)?;
        }
        tracing::info!(
            %family,
            jumps_removed = changes.jumps_removed,
            chains_removed = changes.chains_removed,
            "capture rules removed"
        );
        done.push((family, changes));
    }
    Ok(done)
}

fn restore(
    executor: &dyn Executor,
    family: Family,
    text: &RestoreText,
) -> Result<(), InstallError> {
    tracing::debug!(%family, input = %text, "iptables-restore");
    executor
        .restore(family, &text.to_string())
        .map_err(|error| {
            if let ExecError::Failed {
                program, stderr, ..
            } = &error
                && let Some(line) = failed_line(stderr)
                && let Some((line, rule)) = culprit(text, line, stderr)
            {
                return InstallError::Rejected {
                    program: program.clone(),
                    line,
                    rule: rule.to_owned(),
                    message: tool_message(stderr),
                };
            }
            InstallError::Exec(error)
        })
}

/// The line to blame for an error reported at `line`. The nft backend checks some things (a
/// target chain that does not exist) only when the batch commits, and so reports the `COMMIT`
/// line: then the first rule naming the quoted word of the message (`Chain 'X' does not exist`)
/// is the one to show.
fn culprit<'t>(text: &'t RestoreText, line: usize, stderr: &str) -> Option<(usize, &'t str)> {
    let reported = text.line(line)?;
    if reported != "COMMIT" {
        return Some((line, reported));
    }
    let quoted = stderr
        .split(['\'', '"'])
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty());
    for word in quoted {
        let naming = text.lines().iter().enumerate().find(|(_, rule)| {
            rule.starts_with('-') && rule.split_whitespace().any(|token| token == word)
        });
        if let Some((index, rule)) = naming {
            return Some((index + 1, rule.as_str()));
        }
    }
    Some((line, reported))
}

/// The tool's own words, without its line-number and usage hints, on one line.
fn tool_message(stderr: &str) -> String {
    let kept: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Error occurred at line") && !l.starts_with("Try `")
        })
        .collect();
    kept.join("; ")
}

/// The batch that turns `saved` into `desired` for Serin's part of each table, and what it changes.
/// An empty `desired` removes everything of Serin's.
pub fn reconcile(desired: &[TablePlan], saved: &SavedRules) -> (RestoreText, Changes) {
    let mut text = RestoreText::default();
    let mut changes = Changes::default();
    let mut tables: Vec<&str> = desired.iter().map(|t| t.table).collect();
    for table in &saved.tables {
        let ours =
            table.serin_chains().next().is_some() || table.jumps_into_serin().next().is_some();
        if ours && !tables.contains(&table.name.as_str()) {
            tables.push(&table.name);
        }
    }
    let empty = SavedTable::default();
    for name in tables {
        let plan = desired.iter().find(|t| t.table == name);
        let saved = saved.table(name).unwrap_or(&empty);
        reconcile_table(name, plan, saved, &mut text, &mut changes);
    }
    (text, changes)
}

fn reconcile_table(
    name: &str,
    plan: Option<&TablePlan>,
    saved: &SavedTable,
    text: &mut RestoreText,
    changes: &mut Changes,
) {
    let planned_chains: &[&str] = plan.map_or(&[], |p| &p.chains);
    let planned_rules = plan.map_or(&[][..], |p| &p.rules);
    let stale_chains: Vec<&str> = saved
        .serin_chains()
        .filter(|c| !planned_chains.contains(c))
        .collect();

    text.push(format!("*{name}"));
    // A declaration creates a missing chain and flushes an existing one (with --noflush), so
    // stale chains are declared too: emptied, they hold no references when deleted below.
    for chain in planned_chains.iter().chain(&stale_chains) {
        text.push(format!(":{chain} - [0:0]"));
    }
    // Keep the first copy of each planned jump; delete duplicates and jumps the plan lacks.
    let mut kept = Vec::new();
    for (chain, spec) in saved.jumps_into_serin() {
        let planned = planned_rules
            .iter()
            .find(|r| r.chain == chain && r.spec == spec);
        match planned {
            Some(rule) if !kept.contains(&rule) => kept.push(rule),
            _ => {
                text.push(format!("-D {chain} {spec}"));
                changes.jumps_removed += 1;
            }
        }
    }
    for chain in &stale_chains {
        text.push(format!("-X {chain}"));
        changes.chains_removed += 1;
    }
    for rule in planned_rules {
        if rule.is_jump_into_serin() {
            if kept.contains(&rule) {
                continue;
            }
            changes.jumps_added += 1;
        } else {
            changes.rules_written += 1;
        }
        text.push(rule.to_string());
    }
    text.push("COMMIT");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::executor::RecordingExecutor;
    use crate::plan::plan;
    use crate::restore::render_family;

    fn v4_only() -> RuleSet {
        plan(&Config {
            ipv6: false,
            ..Config::default()
        })
    }

    /// What the kernel would print after the plan was installed, as the fake's save output.
    fn installed(rules: &RuleSet, extra: &str) -> String {
        let plan = render_family(&rules.families[0]).to_string();
        let plan = plan.replace(
            ":SERIN_INBOUND",
            ":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [7:420]\n:SERIN_INBOUND",
        );
        plan.replace("COMMIT", &format!("{extra}COMMIT"))
    }

    #[test]
    fn first_apply_creates_chains_and_jumps() {
        let fake = RecordingExecutor::new();
        let rules = v4_only();
        let done = apply(&rules, &fake).unwrap();
        let restores = fake.restores();
        assert_eq!(restores.len(), 1);
        assert_eq!(restores[0].1, render_family(&rules.families[0]).to_string());
        assert_eq!(done[0].1.jumps_added, 2);
    }

    #[test]
    fn second_apply_adds_no_jumps_and_refills_chains() {
        let fake = RecordingExecutor::new();
        let rules = v4_only();
        fake.set_saved(Family::V4, &installed(&rules, ""));
        let done = apply(&rules, &fake).unwrap();
        let input = &fake.restores()[0].1;
        assert!(
            !input.contains("-A PREROUTING") && !input.contains("-A OUTPUT"),
            "{input}"
        );
        assert!(!input.contains("-D "), "{input}");
        assert!(input.contains(":SERIN_OUTPUT - [0:0]\n"));
        assert!(input.contains("-A SERIN_OUTPUT -j SERIN_REDIRECT\n"));
        assert_eq!(done[0].1.jumps_added, 0);
        assert_eq!(done[0].1.jumps_removed, 0);
    }

    #[test]
    fn duplicate_stale_and_foreign_rules() {
        let fake = RecordingExecutor::new();
        let rules = plan(&Config {
            inbound: crate::config::InboundCapture::Off,
            ipv6: false,
            ..Config::default()
        });
        // Installed earlier with inbound capture on, plus a duplicate jump and an unrelated rule.
        let before = v4_only();
        fake.set_saved(
            Family::V4,
            &installed(
                &before,
                "-A OUTPUT -p tcp -j SERIN_OUTPUT\n-A OUTPUT -d 10.9.9.9/32 -j ACCEPT\n",
            ),
        );
        let done = apply(&rules, &fake).unwrap();
        let input = &fake.restores()[0].1;
        assert!(
            input.contains("-D PREROUTING -p tcp -j SERIN_INBOUND\n"),
            "{input}"
        );
        assert_eq!(
            input.matches("-D OUTPUT -p tcp -j SERIN_OUTPUT").count(),
            1,
            "{input}"
        );
        assert!(
            input.contains("-X SERIN_INBOUND\n-X SERIN_IN_REDIRECT\n"),
            "{input}"
        );
        assert!(!input.contains("10.9.9.9"), "{input}");
        assert_eq!(done[0].1.chains_removed, 2);
        assert_eq!(done[0].1.jumps_removed, 2);
    }

    #[test]
    fn clean_removes_only_serin_and_skips_when_nothing_is_left() {
        let fake = RecordingExecutor::new();
        let rules = v4_only();
        fake.set_saved(
            Family::V4,
            &installed(&rules, "-A OUTPUT -d 10.9.9.9/32 -j ACCEPT\n"),
        );
        clean(&[Family::V4, Family::V6], &fake).unwrap();
        let restores = fake.restores();
        assert_eq!(restores.len(), 1, "nothing to do for IPv6: no restore");
        let input = &restores[0].1;
        assert_eq!(
            input,
            "*nat\n:SERIN_INBOUND - [0:0]\n:SERIN_IN_REDIRECT - [0:0]\n:SERIN_OUTPUT - [0:0]\n\
             :SERIN_REDIRECT - [0:0]\n-D PREROUTING -p tcp -j SERIN_INBOUND\n\
             -D OUTPUT -p tcp -j SERIN_OUTPUT\n-X SERIN_INBOUND\n-X SERIN_IN_REDIRECT\n\
             -X SERIN_OUTPUT\n-X SERIN_REDIRECT\nCOMMIT\n"
        );
    }

    #[test]
    fn errors_reported_at_commit_name_the_rule_they_are_about() {
        let fake = RecordingExecutor::new();
        let rules = v4_only();
        let commit = render_family(&rules.families[0]).lines().len();
        fake.fail_restores_with(&format!(
            "iptables-nft-restore v1.8.9 (nf_tables): Chain 'SERIN_REDIRECT' does not exist\n\
             Error occurred at line: {commit}"
        ));
        let err = apply(&rules, &fake).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "iptables-restore rejected line 16 `-A SERIN_OUTPUT -j SERIN_REDIRECT`"
            ),
            "{err}"
        );
    }

    #[test]
    fn rejected_line_is_named_with_its_rule() {
        let fake = RecordingExecutor::new();
        fake.fail_restores_with(
            "iptables-restore v1.8.9 (nf_tables): unknown option \"--uid-owner\"\n\
             Error occurred at line: 14\nTry `iptables-restore -h' for more information.",
        );
        let err = apply(&v4_only(), &fake).unwrap_err();
        assert_eq!(
            err.to_string(),
            "iptables-restore rejected line 14 `-A SERIN_OUTPUT -m owner --uid-owner 1337 -j \
             RETURN`: iptables-restore v1.8.9 (nf_tables): unknown option \"--uid-owner\""
        );
    }
}
