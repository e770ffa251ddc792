//! The command line of `serinctl`: every verb, flag and environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default control plane address.
pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:15010";

/// serinctl: drive gray releases on a Serin mesh.
#[derive(Debug, Parser)]
#[command(name = "serinctl", version, about)]
pub struct Cli {
    /// gRPC address of serin-control.
    #[arg(long, global = true, env = "SERIN_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// Admin token sent to serin-control (role write for changes, read enough for get, status,
    /// explain and top). Without it: --token-file, then the local mesh's when the control plane
    /// is on this host's loopback.
    #[arg(long, global = true, env = "SERIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the admin token: a bare token, or a tokens file (`write TOKEN` lines; its
    /// first write token is used, else its first read token).
    #[arg(long, global = true, value_name = "FILE", env = "SERIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With an https:// control plane (its mTLS port, e.g. https://HOST:15012): a client
    /// certificate (PEM chain) to present instead of a token; its SPIFFE ID must be on a line of
    /// the control plane's admin tokens file (`write spiffe://…`). Needs --client-key.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "SERIN_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM, PKCS#8) of --client-cert.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "SERIN_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// With an https:// control plane: the roots (PEM) its certificate must chain to, e.g. the
    /// file of `serin-control --trust-bundle-out`.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "SERIN_CONTROL_PLANE_CA"
    )]
    pub control_plane_ca: Option<PathBuf>,
    /// Namespace of the services and policies named on the command line.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    pub namespace: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or replace policies from YAML (several documents separated by `---`).
    Apply(ApplyArgs),
    /// Show policies, services or proxies.
    Get(GetArgs),
    /// Delete a policy.
    Delete(DeleteArgs),
    /// Split a service's default route between its stable version and VERSION.
    Canary(CanaryArgs),
    /// Send requests that match conditions to VERSION (adds a rule, first).
    Route(RouteArgs),
    /// Copy a share of a service's requests to VERSION (0 turns mirroring off).
    Mirror(MirrorArgs),
    /// Make VERSION take all traffic: default 100% to it, rules and mirror removed.
    Promote(PromoteArgs),
    /// Restore an earlier generation of a service's policy.
    Rollback(RollbackArgs),
    /// Every proxy: pod, service, version, config acked, in sync or the NACK error.
    Status,
    /// Which version would take a request, and why.
    Explain(ExplainArgs),
    /// The live traffic edges, busiest first, refreshed in place (`--once`: one snapshot).
    Top(TopArgs),
    /// Show the mTLS modes, or set the namespace's (`-n`) or the mesh-wide one.
    Mtls(MtlsArgs),
    /// Show the private namespaces, or make the namespace (`-n`) private or public.
    Visibility(VisibilityArgs),
    /// Print a shell completion script.
    Completion(CompletionArgs),
    /// Add the Serin sidecar to the pods and pod templates of Kubernetes manifests (offline).
    Inject(InjectArgs),
    /// Turn ingress-nginx / Higress canary Ingresses into TrafficPolicies.
    Convert(ConvertArgs),
    /// Bring up the local mesh: a control plane and pods as network namespaces on this host (root).
    Up(UpArgs),
    /// Remove the local mesh: every namespace, link, rule and process it made (root).
    Down(MeshArgs),
    /// Namespaces of the local mesh.
    Namespace(NamespaceArgs),
    /// Start a pod in the local mesh running CMD, with a sidecar when its namespace has injection (root).
    Run(RunArgs),
    /// Run CMD inside a pod's network namespace, with its names and addresses (root).
    Exec(ExecArgs),
    /// The local mesh's pods.
    Pods(MeshArgs),
    /// Print the log of a pod's app (or of its sidecar).
    Logs(LogsArgs),
    /// The local mesh with Bookinfo, traffic and the dashboard, and a guide to a gray release (root).
    Demo(DemoArgs),
}

/// `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Traffic policies.
    #[value(alias = "policy")]
    Policies,
    /// Services with their versions.
    #[value(alias = "service", alias = "svc")]
    Services,
    /// Connected proxies.
    #[value(alias = "proxy")]
    Proxies,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// YAML (policies as apply takes them).
    Yaml,
    /// JSON.
    Json,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// policies, services or proxies.
    pub resource: Resource,
    /// Only this one (policy name, service name or pod name).
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// Every namespace, not just --namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// What `delete` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Deletable {
    /// A traffic policy.
    #[value(alias = "policies")]
    Policy,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// What to delete (policy).
    pub resource: Deletable,
    /// Its name.
    pub name: String,
}

/// `canary`.
#[derive(Debug, Args)]
pub struct CanaryArgs {
    /// The service.
    pub service: String,
    /// The canary version.
    pub version: String,
    /// Percent of the default route's traffic for VERSION (0-100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub weight: u32,
}

/// `route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The service.
    pub service: String,
    /// The version that takes matching requests.
    pub version: String,
    /// Header NAME=VALUE (exact; repeatable).
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Cookie NAME=VALUE (exact; repeatable).
    #[arg(long = "cookie", value_name = "K=V")]
    pub cookies: Vec<String>,
    /// Path prefix.
    #[arg(long, value_name = "P")]
    pub uri_prefix: Option<String>,
    /// Client OS list, comma-separated (android, ios, ipados, macos, windows, linux, chromeos, harmonyos, other).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub os: Vec<String>,
    /// Query parameter NAME=VALUE (exact; repeatable).
    #[arg(long = "query", value_name = "K=V")]
    pub query: Vec<String>,
    /// Name of the rule (default route-VERSION).
    #[arg(long = "name", value_name = "RULE")]
    pub rule_name: Option<String>,
}

/// `mirror`.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The service.
    pub service: String,
    /// The version that receives the copies.
    pub version: String,
    /// Percent of requests copied (0 < P <= 100; 0 turns mirroring off).
    #[arg(long)]
    pub percent: f64,
}

/// `promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The service.
    pub service: String,
    /// The version that takes over.
    pub version: String,
    /// Promote even if VERSION has no ready endpoint.
    #[arg(long)]
    pub force: bool,
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The service.
    pub service: String,
    /// Generation to restore (default: the one before the current one).
    #[arg(long, value_name = "N")]
    pub to_generation: Option<u64>,
}

/// `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The service the request is sent to.
    pub service: String,
    /// Header NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Cookie NAME=VALUE (repeatable).
    #[arg(long = "cookie", value_name = "K=V")]
    pub cookies: Vec<String>,
    /// Request path (may end in ?query).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Query parameter NAME=VALUE (repeatable).
    #[arg(long = "query", value_name = "K=V")]
    pub query: Vec<String>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// User-Agent.
    #[arg(long)]
    pub user_agent: Option<String>,
}

/// An mTLS mode to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MtlsModeArg {
    /// Accept plain and mTLS connections between pods.
    Permissive,
    /// Accept only mTLS connections from meshed sidecars.
    Strict,
    /// Remove the namespace's own mode (it follows the mesh-wide one).
    Unset,
}

/// `mtls`.
#[derive(Debug, Args)]
pub struct MtlsArgs {
    /// The mode to set; without it, show the modes.
    #[arg(value_enum)]
    pub mode: Option<MtlsModeArg>,
    /// Set the mesh-wide default instead of the namespace's mode.
    #[arg(long)]
    pub mesh_wide: bool,
}

/// A namespace's visibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VisibilityArg {
    /// Its services, endpoints and policies reach only its own sidecars (on the mTLS port).
    Private,
    /// Seen by every sidecar (the default).
    Public,
}

/// `visibility`.
#[derive(Debug, Args)]
pub struct VisibilityArgs {
    /// The visibility to give the namespace (`-n`); without it, show the private namespaces.
    #[arg(value_enum)]
    pub visibility: Option<VisibilityArg>,
}

/// `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Window the rates, error rates and latencies cover: 10s, 1m, 10m (1s..10m).
    #[arg(long, default_value = "10s")]
    pub window: String,
    /// Print one snapshot and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1)]
    pub interval: u64,
    /// Every namespace, not only --namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// What `inject` assumes about namespaces (offline there is no API server to ask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum NamespaceInjectionArg {
    /// Every namespace counts as labelled `serin-injection=enabled`: pods are injected unless
    /// labelled `sidecar.serin.io/inject: "false"`.
    #[default]
    Enabled,
    /// No namespace is labelled: only pods labelled `sidecar.serin.io/inject: "true"` are.
    Disabled,
}

/// `inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifests to read (multi-document YAML), or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,
    /// Whether the manifests' namespaces have injection on.
    #[arg(long, value_enum, default_value_t)]
    pub namespace_injection: NamespaceInjectionArg,
    /// The cluster's Kubernetes version: 1.29 and later get a native sidecar.
    #[arg(long, default_value = "1.29")]
    pub kubernetes_version: serin_control::inject::config::KubernetesVersion,
    /// Image of the sidecar and the init container.
    #[arg(long, default_value = serin_control::inject::config::DEFAULT_PROXY_IMAGE)]
    pub sidecar_image: String,
    /// Control-plane URL the sidecars follow.
    #[arg(long, default_value = serin_control::inject::config::DEFAULT_CONTROL_PLANE)]
    pub sidecar_control_plane: String,
    /// The control plane's mTLS URL the sidecars subscribe on with their certificates (`off`:
    /// they stay on --sidecar-control-plane). With the global --control-plane-ca FILE, its
    /// roots go into each sidecar (SERIN_CONTROL_PLANE_CA_PEM), so that its first certificate
    /// request goes there too, as the webhook does.
    #[arg(long, default_value = serin_control::inject::config::DEFAULT_CONTROL_PLANE_TLS)]
    pub sidecar_control_plane_tls: String,
}

/// `convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Ingress manifests to read (multi-document YAML), or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,
}

/// `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Where the local mesh keeps its state.
#[derive(Debug, Args)]
pub struct MeshArgs {
    /// State directory of the local mesh: state file, agent socket, control plane store, logs.
    #[arg(long, value_name = "DIR", env = "SERIN_STATE_DIR", default_value = serin_local::cluster::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The host ports of the local mesh's control plane.
#[derive(Debug, Args)]
pub struct HostPortArgs {
    /// Port on 127.0.0.1 forwarded to the control plane's gRPC API (what --control-plane names).
    #[arg(long, value_name = "PORT", default_value_t = serin_local::cluster::GRPC_PORT)]
    pub grpc_port: u16,
    /// Port on 127.0.0.1 forwarded to the dashboard.
    #[arg(long, value_name = "PORT", default_value_t = serin_local::cluster::HTTP_PORT)]
    pub http_port: u16,
}

/// `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub ports: HostPortArgs,
}

/// `namespace`.
#[derive(Debug, Args)]
pub struct NamespaceArgs {
    /// What to do with the namespace.
    #[command(subcommand)]
    pub action: NamespaceAction,
}

/// What `namespace` does.
#[derive(Debug, Subcommand)]
pub enum NamespaceAction {
    /// Create a namespace (or change whether its new pods get a sidecar) (root).
    Create(NamespaceCreateArgs),
}

/// Whether the pods of a namespace get a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Injection {
    /// Capture rules and a sidecar in every new pod.
    Enabled,
    /// The app alone.
    Disabled,
}

/// `namespace create`.
#[derive(Debug, Args)]
pub struct NamespaceCreateArgs {
    /// The namespace.
    pub name: String,
    /// Whether pods started in it afterwards get a sidecar.
    #[arg(long, value_enum, default_value = "enabled")]
    pub injection: Injection,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// `run` (the pod's namespace is --namespace).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pod's name (a DNS label).
    pub name: String,
    /// The service the pod serves (its name resolves in every pod).
    #[arg(long, value_name = "S")]
    pub service: String,
    /// The pod's version label.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// The port the app listens on (not 15000-15099: the sidecar's and the control plane's).
    #[arg(long, value_name = "P")]
    pub port: u16,
    /// Extra environment of the app, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Register the pod without waiting for the app to listen on --port (for clients).
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// The app: a program (a path, or a name in PATH) and its arguments, after `--`.
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The pod (`serin-control` is the control plane's).
    pub pod: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// The command and its arguments, after `--`.
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod (`serin-control` is the control plane's).
    pub pod: String,
    /// The sidecar's log instead of the app's.
    #[arg(long)]
    pub sidecar: bool,
    /// Keep printing what is written, until Ctrl-C or the pod is gone.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// `demo` (Bookinfo goes in --namespace).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests per second the traffic generator sends to productpage.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub rate: u32,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub ports: HostPortArgs,
}
