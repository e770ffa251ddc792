//! The store survives `kill -9`: policies and generations are the same after a restart.

use crate::support::*;

#[test]
fn policies_and_generations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    let out = cp.ctl_stdin(&["apply", "-f", "-"], TWO_POLICIES);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    register(
        &cp,
        &[
            ("reviews-v1-0", "reviews", "v1", "10.244.0.11"),
            ("reviews-v2-0", "reviews", "v2", "10.244.0.12"),
        ],
    );
    cp.ok(&["canary", "reviews", "v2", "--weight", "50"]);
    cp.ok(&["delete", "policy", "ratings"]);
    let policies = cp.ok(&["get", "policies", "-o", "json"]);
    let reviews = cp.ok(&["get", "policies", "reviews", "-o", "yaml"]);
    let services = cp.ok(&["get", "services", "-o", "json"]);
    assert!(reviews.contains("generation: 2"), "{reviews}");

    let store = cp.kill9();
    let cp = ControlPlane::start(&store);
    assert_eq!(
        cp.ok(&["get", "policies", "-o", "json"]),
        policies,
        "policies after kill -9"
    );
    assert_eq!(
        cp.ok(&["get", "policies", "reviews", "-o", "yaml"]),
        reviews
    );
    assert_eq!(
        cp.ok(&["get", "services", "-o", "json"]),
        services,
        "services, VIPs and endpoints after kill -9"
    );
    // Generations go on where they were, deletes included: ratings was 1, deleted at 2.
    let again = cp.ctl_stdin(&["apply", "-f", "-"], TWO_POLICIES);
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert!(
        stdout.contains("policy/reviews configured (generation 3)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy/ratings created (generation 3)"),
        "{stdout}"
    );
    assert!(
        cp.ok(&["rollback", "reviews"])
            .contains("rolled back to the content of generation 2 (now generation 4)")
    );
}
