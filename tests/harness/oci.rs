//! The OCI stand-ins of tests/oci/standin.py, serving until dropped, with what the OCI
//! tests share: a namespace and a service-account token the local API server issued.

#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use super::harness::{self, TestNamespace, control_plane};

pub const WAIT: Duration = Duration::from_secs(60);
pub const SECRET_ID: &str = "ocid1.vaultsecret.oc1.iad.standin";
pub const TOPIC_ID: &str = "ocid1.onstopic.oc1.iad.standin";

/// The stand-ins, serving until dropped.
pub struct StandIn {
    child: Child,
    pub dir: tempfile::TempDir,
    pub exchange: u16,
    pub services: u16,
}

impl StandIn {
    pub fn start(token_lifetime: u64, exchange_port: u16) -> StandIn {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            token_lifetime,
            (exchange_port, 0),
        )
    }

    /// Stops these stand-ins and starts new ones on the same ports with a new signing key:
    /// every RPST issued before is refused from now on.
    pub fn restart(mut self) -> StandIn {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ports = (self.exchange, self.services);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::fs::remove_file(dir.path().join("ports.json")).unwrap();
        let _ = std::fs::remove_file(dir.path().join("requests.jsonl"));
        Self::start_in(dir, 600, ports)
    }

    fn start_in(
        dir: tempfile::TempDir,
        token_lifetime: u64,
        (exchange_port, services_port): (u16, u16),
    ) -> StandIn {
        let content = base64::engine::general_purpose::STANDARD.encode("db-password");
        std::fs::write(
            dir.path().join("secrets.json"),
            format!("{{\"{SECRET_ID}\": \"{content}\"}}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("topics.json"), format!("[\"{TOPIC_ID}\"]")).unwrap();
        let child = Command::new(harness::oci_python())
            .arg(harness::repo_root().join("tests/oci/standin.py"))
            .args(["--dir".as_ref(), dir.path().as_os_str()])
            .args([
                "--kubeconfig".as_ref(),
                control_plane().kubeconfig().as_os_str(),
            ])
            .args(["--token-lifetime", &token_lifetime.to_string()])
            .args(["--exchange-port", &exchange_port.to_string()])
            .args(["--services-port", &services_port.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let ports = dir.path().join("ports.json");
        let started = Instant::now();
        while !ports.exists() {
            assert!(started.elapsed() < WAIT, "the stand-ins never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ports: Value = serde_json::from_slice(&std::fs::read(ports).unwrap()).unwrap();
        let port = |k: &str| ports[k].as_u64().unwrap() as u16;
        StandIn {
            exchange: port("exchange"),
            services: port("services"),
            child,
            dir,
        }
    }

    /// A Python script run with the official SDK, set up as an OKE pod is (the token
    /// exchange at KUBERNETES_SERVICE_HOST, the cluster CA, the region), trusting the
    /// stand-ins' CA; its standard output, once it succeeded.
    pub fn sdk(&self, script: &str) -> String {
        let out = Command::new(harness::oci_python())
            .args(["-c", script])
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH", self.ca())
            .env("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1")
            .env("REQUESTS_CA_BUNDLE", self.ca())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The agent's `oci:` section for these stand-ins: workload identity with `token`, and
    /// each of `services` (`secrets`, `devops`...) at the stand-ins; `extra` is more YAML
    /// of the section (`  vaultRefresh: 1s\n`).
    pub fn oci_section(&self, token: &Path, services: &[&str], extra: &str) -> String {
        let url = format!("https://127.0.0.1:{}", self.services);
        let endpoints: Vec<String> = services.iter().map(|s| format!("{s}: \"{url}\"")).collect();
        format!(
            "oci:\n  auth: workloadIdentity\n  region: us-ashburn-1\n  caFile: {ca}\n{extra}\
             \x20 endpoints: {{{endpoints}}}\n\
             \x20 tokenExchange: {{host: 127.0.0.1, port: {exchange}, serviceAccountToken: {token}, clusterCa: {ca}}}\n",
            ca = self.ca().display(),
            endpoints = endpoints.join(", "),
            exchange = self.exchange,
            token = token.display(),
        )
    }

    /// `gitops-agent oci raw-request` with workload identity against the stand-ins.
    pub fn raw_request(&self, token: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(["oci", "raw-request"])
            .args(args)
            .args([
                "--auth",
                "oke_workload_identity",
                "--token-exchange-port",
                &self.exchange.to_string(),
            ])
            .arg("--service-account-token")
            .arg(token)
            .arg("--ca-file")
            .arg(self.ca())
            .env("OCI_RESOURCE_PRINCIPAL_VERSION", "2.2")
            .env("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1")
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH", self.ca())
            .output()
            .unwrap()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A plain client that trusts the stand-ins' CA (to send what the agent would not).
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).unwrap()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.services)
    }

    pub fn log(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn exchanges(&self) -> usize {
        self.log("requests.jsonl")
            .iter()
            .filter(|r| r["role"] == "exchange" && r["status"] == 200)
            .count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace, the stand-ins (token lifetime and exchange port) and a work directory.
pub async fn setup(
    prefix: &str,
    lifetime: u64,
    port: u16,
) -> (TestNamespace, StandIn, tempfile::TempDir) {
    harness::init_logging();
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, prefix).await;
    (
        ns,
        StandIn::start(lifetime, port),
        tempfile::tempdir().unwrap(),
    )
}

/// A token the local API server issued for a new service account, in a file.
pub async fn token_file(ns: &TestNamespace, dir: &Path) -> PathBuf {
    let token = control_plane()
        .service_account_token(&ns.name, "gitops-agent")
        .await;
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

/// The daemon, `run` with a config file, its output in a log file; killed when dropped.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Writes `config` to `work/config.yaml` and runs the daemon with it.
    pub fn run(work: &Path, config: &str) -> (Agent, PathBuf) {
        let path = work.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        (Agent::start(&path, work.join("agent.log")), path)
    }

    pub fn start(config: &Path, log: PathBuf) -> Agent {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
            .args(["run", "--config"])
            .arg(config)
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gitops-agent status` for the config at `path`: its table.
pub fn status(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gitops-agent"))
        .args(["status", "--config"])
        .arg(path)
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until ConfigMap `name` holds `value: want`.
pub async fn wait_value(
    cms: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    name: &str,
    want: &str,
    agent: &Agent,
    why: &str,
) {
    let started = Instant::now();
    loop {
        let value = cms
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|c| c.data)
            .and_then(|d| d.get("value").cloned());
        if value.as_deref() == Some(want) {
            return;
        }
        assert!(started.elapsed() < WAIT, "{why}:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
