//! serinctl and the admin credentials: the token from --token, SERIN_TOKEN or --token-file; a
//! missing, wrong or read-only one fails with one line saying what to do.

use serin_proto::auth::{Role, TOKENS_FILE};

use crate::support::{ControlPlane, one_error_line, register, serinctl_as, token_of};

#[test]
fn serinctl_sends_the_token_and_says_what_to_do_without_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    register(&cp, &[("reviews-v1-0", "reviews", "v1", "10.244.0.11")]);
    let url = cp.url();
    let read = token_of(dir.path(), Role::Read);

    // No token at all.
    let err = one_error_line(&serinctl_as(&url, None, &["get", "policies"], None));
    assert!(err.contains("no admin token"), "{err}");
    assert!(
        err.ends_with("(give serinctl the token with --token, SERIN_TOKEN or --token-file)"),
        "{err}"
    );

    // A wrong token, by flag: non-zero exit, one line.
    let out = serinctl_as(
        &url,
        None,
        &["--token", "wrong-token-0123456789", "get", "policies"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = one_error_line(&out);
    assert!(err.contains("the admin token is not valid"), "{err}");
    assert!(
        err.contains("--token, SERIN_TOKEN or --token-file"),
        "{err}"
    );

    // A read token reads but does not change.
    let listed = serinctl_as(&url, Some(&read), &["get", "services"], None);
    assert!(listed.status.success(), "{listed:?}");
    let yaml = "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata:\n  name: reviews\nspec:\n  service: reviews\n  default:\n    route:\n      - version: v1\n        weight: 100\n";
    let err = one_error_line(&serinctl_as(
        &url,
        Some(&read),
        &["apply", "-f", "-"],
        Some(yaml),
    ));
    assert!(
        err.contains("the admin token has role read; ApplyPolicy needs a token with role write"),
        "{err}"
    );
    assert!(err.contains("give serinctl a write token"), "{err}");

    // The control plane's tokens file itself, by --token-file: its write token is used.
    let file = dir.path().join(TOKENS_FILE);
    let file = file.to_str().unwrap();
    let applied = serinctl_as(
        &url,
        None,
        &["--token-file", file, "apply", "-f", "-"],
        Some(yaml),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}
