//! The command line (the binary's edge, where errors become `anyhow`): global flags and
//! the subcommands, each a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gitops_agent::core::Action;
use gitops_agent::telemetry::logging;
use gitops_agent::{cluster, config, controller, health, inventory, oci, render, source, sync};

mod crds;
mod progress;

#[derive(Debug, Parser)]
#[command(name = "gitops-agent", version = gitops_agent::VERSION, about = "Keeps a Kubernetes cluster in step with Git: server-side apply, prune, drift alerts.", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: logging::Options,
    #[command(flatten)]
    pub cluster: cluster::Options,
    /// Agent configuration file (sources and syncs).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "GITOPS_AGENT_CONFIG",
        default_value = "/etc/gitops-agent/config.yaml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the agent's version.
    Version,
    /// Connect to the cluster and report its version and who the agent is to it.
    Check,
    /// Parse and validate manifests offline (no cluster): a directory of the repository,
    /// built first when it holds a kustomization or a chart (Chart.yaml), as a sync would.
    /// Exit code 0 when valid, 1 when not.
    Validate(Box<ValidateArgs>),
    /// Show what a sync would change, as a unified diff per object. Exit code 1 when
    /// something would change, 0 when nothing would, 2 on error (like kubectl diff).
    Diff {
        /// Only this sync (default: all).
        #[arg(long)]
        sync: Option<String>,
    },
    /// Sync now and print the change set; non-zero exit code on failure.
    Sync {
        /// Sync once and exit (the only mode; the daemon is `run`).
        #[arg(long, required = true)]
        once: bool,
        /// Only this sync (default: all).
        #[arg(long)]
        sync: Option<String>,
        /// Print the diff of every changed object.
        #[arg(long)]
        show_diff: bool,
    },
    /// Run the agent: poll sources on their intervals and sync new revisions.
    Run,
    /// Show each sync's last revision, time, counts per action, health and last error.
    Status,
    /// Oracle Cloud diagnostics.
    Oci {
        #[command(subcommand)]
        command: Box<OciCommand>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Directory to validate (as a sync path would be read).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Namespace given to namespaced objects that name none (and a chart's release
    /// namespace).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The repository's root, which bases and values files must stay inside (default: the
    /// Git work tree holding DIR, else DIR).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A chart: the Kubernetes version to render for (offline, there is no cluster to ask).
    #[arg(long, value_name = "VERSION")]
    kube_version: Option<String>,
    /// A chart: an API version (or group/version/Kind) the cluster serves besides the
    /// built-in ones (repeatable).
    #[arg(long = "api-versions", value_name = "GROUP/VERSION")]
    api_versions: Vec<String>,
    /// A chart: a values file (repeatable; later ones win).
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    values: Vec<PathBuf>,
    /// A chart: the release name.
    #[arg(long, default_value = "release")]
    release_name: String,
    /// A policy pack the objects must pass (repeatable); policy files among the objects
    /// apply too. Exit code 1 when one denies.
    #[arg(long = "pack", value_name = "NAME")]
    packs: Vec<String>,
    /// Where packs are (default: the configuration's policies.dir).
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// CustomResourceDefinitions the cluster already has (a file, or a directory of them),
    /// so that objects of their kinds validate offline (repeatable).
    #[arg(long = "crds", value_name = "PATH")]
    crds: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Sign one request with the configured OCI identity and send it, or print it signed
    /// (like `oci raw-request`): for finding out why OCI answers 401.
    RawRequest {
        /// GET, HEAD, DELETE, PUT, POST or PATCH.
        method: String,
        /// The full URL, query included.
        url: String,
        /// The request body, from a file.
        #[arg(long, value_name = "FILE")]
        body: Option<PathBuf>,
        /// Sign with this HTTP date instead of now (to compare with another signer).
        #[arg(long, value_name = "HTTP-DATE")]
        date: Option<String>,
        /// An extra header, NAME:VALUE (repeatable).
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Print the request and its signed headers instead of sending it.
        #[arg(long)]
        print_only: bool,
        #[command(flatten)]
        oci: OciProfile,
    },
}

/// Where the OCI identity comes from: a profile of the OCI config file, or OKE workload
/// identity (the pod's environment, with overrides).
#[derive(Debug, clap::Args)]
pub struct OciProfile {
    /// api_key or security_token (from the config file's profile), or oke_workload_identity.
    #[arg(long, value_name = "KIND")]
    pub auth: Option<String>,
    /// Trust only this CA (PEM) for the OCI endpoints, instead of the platform's roots.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Workload identity: the service-account token file.
    #[arg(long, value_name = "PATH", default_value = oci::auth::workload::TOKEN_PATH)]
    pub service_account_token: PathBuf,
    /// Workload identity: the token exchange's port.
    #[arg(long, value_name = "PORT", default_value_t = oci::auth::workload::PORT)]
    pub token_exchange_port: u16,
    /// The OCI config file.
    #[arg(
        long,
        value_name = "PATH",
        env = "OCI_CLI_CONFIG_FILE",
        default_value = "~/.oci/config"
    )]
    pub config_file: String,
    /// The profile in it.
    #[arg(long, env = "OCI_CLI_PROFILE", default_value = "DEFAULT")]
    pub profile: String,
}

impl OciProfile {
    async fn identity(&self) -> anyhow::Result<oci::auth::Identity> {
        match self.auth.as_deref() {
            None | Some("api_key" | "security_token") => {}
            Some("oke_workload_identity") => {
                let opts = oci::auth::workload::Options {
                    token_path: self.service_account_token.clone(),
                    port: self.token_exchange_port,
                    ..oci::auth::workload::Options::from_env()?
                };
                return Ok(oci::auth::Identity::workload(opts).await?);
            }
            Some(other) => anyhow::bail!(
                "--auth {other}: expected api_key, security_token or oke_workload_identity"
            ),
        }
        let path = match self.config_file.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/"), PathBuf::from)
                .join(rest),
            None => PathBuf::from(&self.config_file),
        };
        Ok(oci::auth::Identity::from_config_file(&path, &self.profile)?)
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Version => {
                println!("gitops-agent {}", gitops_agent::VERSION);
                Ok(ExitCode::SUCCESS)
            }
            Command::Check => {
                let (client, origin) = self.cluster.client().await?;
                tracing::info!(%origin, "connecting");
                let id = cluster::identify(&client).await?;
                println!("server:   {}", id.server_version);
                println!("user:     {}", id.username);
                println!("groups:   {}", id.groups.join(", "));
                println!("via:      {origin}");
                check_renderers(&self.config).await;
                check_oci(&self.config).await
            }
            Command::Validate(args) => validate(&self.config, *args).await,
            Command::Diff { ref sync } => {
                let code = match diff(&self, sync.as_deref()).await {
                    Ok(true) => 1,
                    Ok(false) => 0,
                    Err(e) => {
                        eprintln!("gitops-agent: {e:#}");
                        2
                    }
                };
                Ok(ExitCode::from(code))
            }
            Command::Sync {
                ref sync,
                show_diff,
                ..
            } => sync_once(&self, sync.as_deref(), show_diff).await,
            Command::Run => {
                let path = controller::absolute(&self.config);
                let config = config::load(&path)?;
                let counter = cluster::RequestCounter::default();
                let (client, origin) = self.cluster.counted_client(&counter).await?;
                tracing::info!(%origin, config = %path.display(), "starting");
                let opts = controller::Options::for_config(&config);
                controller::run(client, counter, path, config, opts).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Status => status(&self).await,
            Command::Oci { command } => oci_command(*command).await,
        }
    }
}

/// The renderer binaries the agent would use (configured, else on PATH) and their versions.
async fn check_renderers(config: &std::path::Path) {
    let cfg = config::load(config).map(|c| c.render).unwrap_or_default();
    let renderers = sync::renderers(&cfg).await;
    for (name, tool) in [
        ("kustomize", &renderers.kustomize),
        ("helm", &renderers.helm),
    ] {
        // Aligned with the lines above, one space at least.
        let label = format!("{:<9} ", format!("{name}:"));
        match tool {
            Some(t) => println!("{label}{} ({})", t.version, t.path.display()),
            None => println!("{label}not found (set render.{name} or put it on PATH)"),
        }
    }
}

/// The OCI identity the configuration names, if it names one: kind, region, principal and
/// when its token expires (never the token). A failure is reported and fails the check.
async fn check_oci(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(oci_cfg) = config::load(config).ok().and_then(|c| c.oci) else {
        return Ok(ExitCode::SUCCESS);
    };
    let shared = oci::Shared::new(oci_cfg);
    match shared.client().await {
        Ok(client) => {
            let id = client.identity();
            println!(
                "oci:      {} ({}), region {}",
                id.kind.as_str(),
                id.principal,
                shared.region().unwrap_or_else(|| "not set".into())
            );
            if let Some(at) = id.expires() {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                println!(
                    "          token expires {} (in {}s)",
                    httpdate::fmt_http_date(at),
                    left.as_secs()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("oci:      {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn oci_command(command: OciCommand) -> anyhow::Result<ExitCode> {
    let OciCommand::RawRequest {
        method,
        url,
        body,
        date,
        headers,
        print_only,
        oci: profile,
    } = command;
    let identity = profile.identity().await?;
    let body = match &body {
        Some(path) => {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let request = oci::request(&method, &url, body, date.as_deref(), &headers)?;
    if print_only {
        println!("{} {}", request.method, request.uri);
        let mut lines: Vec<String> = request
            .sign(&identity.credentials())?
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        lines.sort();
        for line in lines {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = oci::Client::new(identity, profile.ca_file.as_deref())?;
    let response = client.send(&request).await?;
    let status = response.status();
    let request_id = response
        .headers()
        .get("opc-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    println!(
        "{status}{}",
        request_id
            .map(|id| format!(" (opc-request-id {id})"))
            .unwrap_or_default()
    );
    println!("{}", response.text().await?);
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `validate`: the directory read as a sync would read it (the whole repository when a
/// renderer builds it), built, rendered and checked; infra specs too.
async fn validate(config: &std::path::Path, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let absolute = |p: &std::path::Path| {
        p.canonicalize()
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let dir = absolute(&args.dir)?;
    // The configuration's renderers and policies directory when there is one (offline,
    // nothing else of it is used).
    let cfg = match config.exists() {
        true => Some(config::load(config)?),
        false => None,
    };
    let policies_dir = match (&args.policies, &cfg) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => c.policies.dir.clone(),
        (None, None) => config::Policies::default().dir,
    };
    let packs =
        sync::policy::Packs::read(&policies_dir, &args.packs).map_err(|e| anyhow::anyhow!(e))?;
    let crds = crds::ClusterCrds::read(&args.crds)?;
    let checks = Checks {
        crds: &crds,
        namespace: &args.namespace,
        packs: &packs,
        names: &args.packs,
    };
    let manifests = source::read_dir(&dir, &source::Limits::default())?;
    let is_chart = dir.join("Chart.yaml").is_file();
    if !is_chart && render::kustomize::kustomization(&manifests, "").is_none() {
        return report_valid(&args.dir, &manifests, &checks);
    }
    let root = match &args.root {
        Some(r) => absolute(r)?,
        None => work_tree(&dir).unwrap_or_else(|| dir.clone()),
    };
    let inside = |p: &std::path::Path| -> anyhow::Result<String> {
        let abs = absolute(p)?;
        let rel = abs.strip_prefix(&root).map_err(|_| {
            let root = root.display();
            anyhow::anyhow!("{}: outside the repository root {root}", p.display())
        })?;
        Ok(rel.to_string_lossy().into_owned())
    };
    let path = inside(&dir)?;
    let chart = match is_chart {
        false => None,
        true => Some(render::helm::Chart {
            chart: path.clone(),
            values_files: args
                .values
                .iter()
                .map(|v| inside(v))
                .collect::<anyhow::Result<_>>()?,
            values: serde_json::Value::Null,
            release_name: args.release_name.clone(),
            namespace: args.namespace.clone(),
            post_render: None,
        }),
    };
    if chart.is_some() && args.kube_version.is_none() {
        let dir = dir.display();
        anyhow::bail!("{dir}: a chart: pass --kube-version (offline, there is no cluster to ask)");
    }
    let files = source::read_dir_all(&root, &source::Limits::default())?;
    let render_cfg = cfg.map(|c| c.render).unwrap_or_default();
    let renderers = sync::renderers(&render_cfg).await;
    let caps = render::helm::Capabilities {
        kube_version: args.kube_version.clone().unwrap_or_default(),
        api_versions: args.api_versions.clone(),
    };
    let recipe = render::build::Recipe::of(&files, &path, chart.as_ref())
        .ok_or_else(|| anyhow::anyhow!("{}: nothing to build", dir.display()))?;
    match renderers.build("validate", "", recipe, &files, &caps).await {
        Ok((out, _)) => report_valid(&args.dir, &out, &checks),
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The Git work tree `dir` is in, if any.
fn work_tree(dir: &std::path::Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(|d| d.to_owned())
}

/// What `validate` checks the objects against.
struct Checks<'a> {
    crds: &'a crds::ClusterCrds,
    namespace: &'a str,
    packs: &'a sync::policy::Packs,
    names: &'a [String],
}

/// Renders `files`, checks its infra specs and judges it by the policies; prints the result:
/// exit code 1 when invalid or denied.
fn report_valid(
    dir: &std::path::Path,
    files: &[source::File],
    checks: &Checks<'_>,
) -> anyhow::Result<ExitCode> {
    let opts = render::Options {
        default_namespace: checks.namespace.to_string(),
        ..Default::default()
    };
    let rendered = render::render(files, &opts, checks.crds).and_then(|manifests| {
        // Infra specs (OKE node pools) are checked as the sync would check them.
        let infra: Vec<render::Manifest> = manifests
            .iter()
            .filter(|m| m.id.group == gitops_agent::core::INFRA_GROUP)
            .cloned()
            .collect();
        gitops_agent::infra::parse_manifests(&infra).map(|_| manifests)
    });
    let manifests = match rendered {
        Ok(manifests) => manifests,
        Err(errors) => {
            println!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let names: Vec<&String> = checks.names.iter().collect();
    let set = sync::policy::load_set(checks.packs, &names, &manifests, Vec::new())
        .map_err(|e| anyhow::anyhow!(e))?;
    let findings = match &set {
        None => Vec::new(),
        Some(set) => offline_findings(set, &manifests, checks.crds),
    };
    for f in &findings {
        println!("{f}");
    }
    if findings.iter().any(|f| f.violation.denies()) {
        return Ok(ExitCode::FAILURE);
    }
    println!("{}: {} objects valid", dir.display(), manifests.len());
    Ok(ExitCode::SUCCESS)
}

/// The policies' findings without a cluster: kinds resolve from the built-in ones, the
/// cluster's CustomResourceDefinitions (`--crds`) and the revision's; namespaces and params
/// from the revision.
fn offline_findings(
    set: &gitops_agent::policy::PolicySet,
    manifests: &[render::Manifest],
    cluster: &crds::ClusterCrds,
) -> Vec<sync::policy::Finding> {
    let revision = crds::ClusterCrds::from_manifests(manifests);
    let resolve = |id: &gitops_agent::core::ObjectKey| {
        cluster
            .resource(&id.group, &id.kind)
            .or_else(|| revision.resource(&id.group, &id.kind))
    };
    let lookups = sync::policy::Lookups::from_revision(manifests, set);
    let user = gitops_agent::policy::User::default();
    let none = inventory::Inventory::default();
    sync::policy::findings(set, manifests, &none, &resolve, &lookups, &user)
}

/// The syncs selected by `--sync`, or all of them.
fn selected<'a>(
    cfg: &'a config::Config,
    only: Option<&str>,
) -> anyhow::Result<Vec<&'a config::Sync>> {
    let syncs: Vec<&config::Sync> = cfg
        .syncs
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
        .collect();
    if let Some(o) = only
        && syncs.is_empty()
    {
        anyhow::bail!("no sync named {o:?} in the configuration");
    }
    Ok(syncs)
}

async fn diff(cli: &Cli, only: Option<&str>) -> anyhow::Result<bool> {
    let cfg = config::load(&cli.config)?;
    let (client, _) = cli.cluster.client().await?;
    let mut engine = sync::Engine::new(client.clone(), &cfg.namespace).await?;
    engine.set_oci(cfg.oci.as_ref().map(gitops_agent::oci::Shared::for_config));
    engine.set_renderers(sync::renderers(&cfg.render).await);
    let packs = sync::policy_packs(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    engine.set_policies(packs, cfg.policies.packs.clone());
    let mut changed = false;
    for s in selected(&cfg, only)? {
        let outcome = controller::sync_once(
            &engine,
            Some(&client),
            &cfg,
            s,
            &sync::Options {
                dry_run: true,
                ..Default::default()
            },
        )
        .await;
        for c in &outcome.changes.entries {
            match (&c.action, &c.diff) {
                (Action::Created | Action::Configured, Some(d)) => print!("{d}"),
                (Action::Deleted, _) => {
                    println!("--- live/{}\n+++ /dev/null\n(would be deleted)", c.subject)
                }
                (Action::Failed, _) => eprintln!(
                    "{} failed: {}",
                    c.subject,
                    c.message.as_deref().unwrap_or("")
                ),
                _ => {}
            }
        }
        changed |= outcome.changes.has_writes();
        if let Some(f) = outcome.failure {
            anyhow::bail!("sync {}: {f}", s.name);
        }
    }
    Ok(changed)
}

async fn sync_once(cli: &Cli, only: Option<&str>, show_diff: bool) -> anyhow::Result<ExitCode> {
    let cfg = config::load(&cli.config)?;
    let counter = cluster::RequestCounter::default();
    let (client, _) = cli.cluster.counted_client(&counter).await?;
    let mut engine = sync::Engine::new(client.clone(), &cfg.namespace).await?;
    engine.set_oci(cfg.oci.as_ref().map(gitops_agent::oci::Shared::for_config));
    engine.set_renderers(sync::renderers(&cfg.render).await);
    let packs = sync::policy_packs(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    engine.set_policies(packs, cfg.policies.packs.clone());
    let mut ok = true;
    for s in selected(&cfg, only)? {
        if s.suspend {
            println!("sync {}: suspended", s.name);
            continue;
        }
        let before = counter.snapshot();
        let started = std::time::Instant::now();
        let reporter = progress::Reporter::new(&s.name);
        let opts = sync::Options {
            progress: Some(reporter.callback()),
            ..Default::default()
        };
        let outcome = controller::sync_once(&engine, Some(&client), &cfg, s, &opts).await;
        reporter.finish();
        let requests = counter.snapshot() - before;
        println!("sync {}: revision {}", s.name, outcome.revision);
        for c in &outcome.changes.entries {
            print!("  {} {}", c.subject, c.action);
            if let Some(m) = &c.message {
                print!(": {m}");
            }
            println!();
            if show_diff && let Some(d) = &c.diff {
                for line in d.lines() {
                    println!("    {line}");
                }
            }
        }
        println!("  summary: {}", outcome.changes.summary());
        for f in &outcome.findings {
            println!("  policy: {f}");
        }
        if let Some(b) = &outcome.render {
            let how = match b.cached {
                true => "from the render cache".to_owned(),
                false => format!("in {:.2}s", b.took.as_secs_f64()),
            };
            println!("  rendered: {} {how}", b.renderer.as_str());
        }
        let waited = match outcome.health_wait {
            Some(w) => format!(" ({:.2}s of it waiting on health)", w.as_secs_f64()),
            None => String::new(),
        };
        println!(
            "  took {:.2}s{waited}, {} API requests ({} writes, {} dry-runs)",
            started.elapsed().as_secs_f64(),
            requests.total,
            requests.writes,
            requests.dry_runs
        );
        if let Some(h) = outcome.overall_health() {
            println!("  health: {h}");
            for (id, a) in outcome
                .health
                .iter()
                .filter(|(_, a)| a.status != health::Status::Healthy)
            {
                println!("    {id}: {a}");
            }
        }
        if let Some(f) = &outcome.failure {
            ok = false;
            println!("  error: {f}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let cfg = config::load(&cli.config)?;
    let (client, _) = cli.cluster.client().await?;
    let store = inventory::Store::new(client, &cfg.namespace);
    let records = store.list().await?;
    let (ours, leftovers): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|(name, _)| cfg.syncs.iter().any(|s| s.name == *name));
    println!(
        "{:<20} {:<12} {:<10} {:<12} {:>7}  {:<20}  COUNTS",
        "SYNC", "REVISION", "RESULT", "HEALTH", "OBJECTS", "LAST-CHANGE"
    );
    for s in &cfg.syncs {
        match ours.iter().find(|(n, _)| *n == s.name) {
            Some((_, r)) => println!("{}", status_row(&s.name, r)),
            None => println!("{:<20} {:<12} {:<10}", s.name, "-", "NeverSynced"),
        }
    }
    for (name, r) in &ours {
        if let Some(e) = &r.status.error {
            println!("\n{name}: {e}");
        }
    }
    if !leftovers.is_empty() {
        println!(
            "\nInventories in namespace {} of syncs that are not in {} (a removed sync, or another agent's):",
            cfg.namespace,
            cli.config.display()
        );
        for (name, r) in &leftovers {
            println!("{}", status_row(name, r));
        }
        println!(
            "Their objects stay as they are, labelled {}=<sync>. To clean up one, delete its objects \
             (kubectl delete <kinds> -A -l {}=<sync>), then its inventory \
             (kubectl -n {} delete configmap {}).",
            gitops_agent::core::OWNER_LABEL,
            gitops_agent::core::OWNER_LABEL,
            cfg.namespace,
            inventory::configmap_name("<sync>")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of `status`: revision, result, health, object count, last change, counts.
fn status_row(name: &str, r: &inventory::Record) -> String {
    let rev = r
        .status
        .revision
        .as_deref()
        .map(short_revision)
        .unwrap_or("-");
    let counts = r
        .status
        .last_change_counts
        .iter()
        .map(|(a, n)| format!("{a}={n}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{:<20} {:<12} {:<10} {:<12} {:>7}  {:<20}  {}",
        name,
        rev,
        r.status.result,
        r.status.health.as_deref().unwrap_or("-"),
        r.inventory.entries.len(),
        r.status.last_change_time.as_deref().unwrap_or("-"),
        counts
    )
}

/// `main@sha1:0123abcd...` → `0123abcd`.
fn short_revision(rev: &str) -> &str {
    let sha = rev.rsplit(':').next().unwrap_or(rev);
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn log_format_json_parses() {
        let cli = Cli::try_parse_from(["gitops-agent", "--log-format", "json", "version"]).unwrap();
        assert_eq!(cli.log.log_format, logging::Format::Json);
    }

    #[test]
    fn unknown_log_format_is_rejected() {
        assert!(Cli::try_parse_from(["gitops-agent", "--log-format", "xml", "version"]).is_err());
    }
}
