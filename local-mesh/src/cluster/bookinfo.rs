//! The demo's application, in Bookinfo's shape: productpage → details, productpage → reviews
//! (v1 alone; v2 and v3 → ratings), every service a `serin-demo-app`, plus a `loadgen` pod to
//! send traffic from inside the mesh. `serinctl demo` deploys it with [`Cluster::deploy`] and
//! drives it with [`Cluster::traffic`].

use std::path::PathBuf;

use super::PodSpec;

/// The port every Bookinfo service serves.
pub const PORT: u16 = 9080;
/// The pod traffic is sent from.
pub const LOADGEN_POD: &str = "loadgen";
/// The URL the traffic goes to, from inside the mesh.
pub const ENTRY_URL: &str = "http://productpage:9080/productpage";

/// The Bookinfo pods of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bookinfo {
    /// The namespace they go in.
    pub namespace: String,
    /// The `serin-demo-app` binary.
    pub demo_app: PathBuf,
}

impl Bookinfo {
    /// Bookinfo in `namespace`, run by the `serin-demo-app` at `demo_app`.
    pub fn new(namespace: &str, demo_app: impl Into<PathBuf>) -> Self {
        Bookinfo {
            namespace: namespace.to_owned(),
            demo_app: demo_app.into(),
        }
    }

    fn pod(&self, service: &str, version: &str, calls: &[&str]) -> PodSpec {
        let mut command = vec![
            self.demo_app.display().to_string(),
            "--port".to_owned(),
            PORT.to_string(),
        ];
        for call in calls {
            command.push("--call".to_owned());
            command.push(format!("{call}:{PORT}"));
        }
        PodSpec::new(
            &format!("{service}-{version}"),
            &self.namespace,
            service,
            version,
            PORT,
            command,
        )
    }

    /// The pods, callees before callers, the load generator last.
    pub fn pods(&self) -> Vec<PodSpec> {
        let mut loadgen = self.pod("loadgen", "v1", &[]);
        loadgen.name = LOADGEN_POD.to_owned();
        vec![
            self.pod("ratings", "v1", &[]),
            self.pod("details", "v1", &[]),
            self.pod("reviews", "v1", &[]),
            self.pod("reviews", "v2", &["ratings"]),
            self.pod("reviews", "v3", &["ratings"]),
            self.pod("productpage", "v1", &["details", "reviews"]),
            loadgen,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callees_come_before_callers() {
        let pods = Bookinfo::new("shop", "/bin/serin-demo-app").pods();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ratings-v1",
                "details-v1",
                "reviews-v1",
                "reviews-v2",
                "reviews-v3",
                "productpage-v1",
                "loadgen"
            ]
        );
        let productpage = &pods[5];
        assert_eq!(productpage.service, "productpage");
        assert_eq!(
            productpage.command,
            [
                "/bin/serin-demo-app",
                "--port",
                "9080",
                "--call",
                "details:9080",
                "--call",
                "reviews:9080"
            ]
        );
        assert!(pods.iter().all(|p| p.namespace == "shop" && p.port == PORT));
    }
}
