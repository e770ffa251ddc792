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

/// A client certificate for `identity` signed by `root`: (chain file, key file) in `dir`.
fn client_certificate(
    dir: &std::path::Path,
    root: &serin_control::ca::StoredRoot,
    name: &str,
    identity: &str,
) -> (String, String) {
    let authority = serin_control::ca::Authority::new(
        "cluster.local",
        serin_control::ca::StoredRoots {
            roots: vec![root.clone()],
        },
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed = authority
        .sign(&csr, identity, std::time::Duration::from_secs(3600))
        .unwrap();
    let (cert, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, signed.chain_pem.concat()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_owned(),
        key_file.to_str().unwrap().to_owned(),
    )
}

#[test]
fn serinctl_on_the_mtls_port_presents_a_client_certificate_the_tokens_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // The operator's root, and a tokens file naming two identities besides the tokens.
    let root = serin_control::ca::generate_root("cluster.local").unwrap();
    let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    std::fs::write(&ca_cert, &root.cert_pem).unwrap();
    std::fs::write(&ca_key, &root.key_pem).unwrap();
    std::fs::write(
        store.join(TOKENS_FILE),
        "write writer-token-0000000001\nread reader-token-0000000001\n\
         write spiffe://cluster.local/ns/ci/sa/deployer\n\
         read spiffe://cluster.local/ns/ops/sa/viewer\n",
    )
    .unwrap();
    let bundle = dir.path().join("trust-bundle.pem");
    let tls_port = crate::support::free_port();
    let cp = ControlPlane::start_with(
        &store,
        &[
            "--grpc-tls",
            &tls_port.to_string(),
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--ca-key",
            ca_key.to_str().unwrap(),
            "--trust-bundle-out",
            bundle.to_str().unwrap(),
        ],
    );
    let https = format!("https://{tls_port}");
    let bundle = bundle.to_str().unwrap();
    let (deployer, deployer_key) = client_certificate(
        dir.path(),
        &root,
        "deployer",
        "spiffe://cluster.local/ns/ci/sa/deployer",
    );
    let (viewer, viewer_key) = client_certificate(
        dir.path(),
        &root,
        "viewer",
        "spiffe://cluster.local/ns/ops/sa/viewer",
    );
    let as_identity = |cert: &str, key: &str, args: &[&str], stdin: Option<&str>| {
        let mut all = vec![
            "--control-plane-ca",
            bundle,
            "--client-cert",
            cert,
            "--client-key",
            key,
        ];
        all.extend_from_slice(args);
        serinctl_as(&https, None, &all, stdin)
    };
    let yaml = "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata:\n  name: reviews\nspec:\n  service: reviews\n  default:\n    route:\n      - version: v1\n        weight: 100\n";

    // The deployer's certificate, no token: it writes and reads.
    let applied = as_identity(&deployer, &deployer_key, &["apply", "-f", "-"], Some(yaml));
    assert!(applied.status.success(), "{applied:?}");
    let listed = as_identity(&deployer, &deployer_key, &["get", "policies"], None);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("reviews"));
    // The viewer's reads and may not write.
    let listed = as_identity(&viewer, &viewer_key, &["get", "policies"], None);
    assert!(listed.status.success(), "{listed:?}");
    let err = one_error_line(&as_identity(
        &viewer,
        &viewer_key,
        &["apply", "-f", "-"],
        Some(yaml),
    ));
    assert!(err.contains("has role read; ApplyPolicy needs"), "{err}");
    // Without the control plane's roots, an https:// URL is refused before dialling.
    let err = one_error_line(&serinctl_as(&https, None, &["get", "policies"], None));
    assert!(err.contains("--control-plane-ca"), "{err}");
    // A client certificate needs the mTLS port.
    let err = one_error_line(&serinctl_as(
        &cp.url(),
        None,
        &[
            "--client-cert",
            &deployer,
            "--client-key",
            &deployer_key,
            "get",
            "policies",
        ],
        None,
    ));
    assert!(err.contains("needs the control plane's mTLS port"), "{err}");
    // A token still works on the mTLS port.
    let listed = serinctl_as(
        &https,
        Some("reader-token-0000000001"),
        &["--control-plane-ca", bundle, "get", "policies"],
        None,
    );
    assert!(listed.status.success(), "{listed:?}");
}
