//! What a policy pack costs a cold sync: the same corpus synced cold into fresh namespaces,
//! plain and with the `virtual-nodes` pack (the OKE one; the corpus's Secrets would be
//! denied by the `secrets` pack and its small Deployments by `baseline`), alternating, three
//! times each, in one run; the medians and their ratio, written to `bench/RESULTS-policies.md`.

use std::path::Path;
use std::time::Duration;

use crate::agent::{self, Agent};
use crate::cluster::ControlPlane;
use crate::corpus::Corpus;
use crate::{Args, SETTLE, SYNC_LIMIT, git, prepare_system_namespace, sink};

const RUNS: usize = 3;

/// The pack every second sync is judged by.
const PACK: &str = "virtual-nodes";

pub async fn bench_policies(
    args: &Args,
    cp: &ControlPlane,
    agent_bin: &Path,
) -> anyhow::Result<()> {
    let client = cp.client().await?;
    prepare_system_namespace(&client).await?;
    let sink = sink::Sink::default();
    let alert_url = sink.start().await?;
    let upstream = git::Upstream::new()?;
    let daemon = git::GitDaemon::start(upstream.root())?;
    let work = tempfile::Builder::new()
        .prefix("gitops-agent-bench-policies-")
        .tempdir()?;
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut table = String::from(
        "| N | plain cold sync (median) | with the virtual-nodes pack (median) | the pack adds | ratio |\n| ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &n in &args.objects {
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            for with_pack in [false, true] {
                let contender = format!("p{}{run}", if with_pack { "v" } else { "n" });
                let corpus = Corpus::new(&contender, n);
                let name = format!("{contender}-{n}");
                upstream.create(&name, |w| corpus.write(&w.join("deploy")))?;
                let dir = work.path().join(&name);
                std::fs::create_dir_all(&dir)?;
                let first = corpus.first_namespace();
                let agent = Agent::configure(agent::Setup {
                    binary: agent_bin,
                    kubeconfig: &cp.kubeconfig,
                    dir: &dir,
                    sync: &name,
                    interval: "1h",
                    parts: &[],
                    url: &daemon.url(&name),
                    first_namespace: &first,
                    alert_url: &alert_url,
                })?;
                // Its own sync (and inventory) each time, and no health wait: the kwok
                // rollout of the Deployments would dwarf what is measured.
                let mut text = std::fs::read_to_string(&agent.config)?.replace(
                    "    selfHeal: true\n",
                    "    selfHeal: true\n    health: {wait: false}\n",
                );
                if with_pack {
                    text.push_str(&format!(
                        "policies: {{dir: {}, packs: [{PACK}]}}\n",
                        policies.display()
                    ));
                }
                std::fs::write(&agent.config, text)?;
                let took = agent.sync_once(SYNC_LIMIT).await?.wall;
                eprintln!("N = {n}, run {run}, pack {with_pack}: {took:?}");
                match with_pack {
                    true => packed.push(took),
                    false => plain.push(took),
                }
                tokio::time::sleep(SETTLE).await;
            }
        }
        let (p, v) = (median(&mut plain), median(&mut packed));
        table.push_str(&format!(
            "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.2}× |\n",
            p.as_secs_f64(),
            v.as_secs_f64(),
            v.as_secs_f64() - p.as_secs_f64(),
            v.as_secs_f64() / p.as_secs_f64().max(1e-9)
        ));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS-policies.md");
    let text = format!(
        "# What a policy pack costs a cold sync\n\n`cargo build --release -p gitops-agent && cargo run --release -p gitops-agent-bench -- --policies --objects {}` \
         ({} runs each, alternating, fresh namespaces each time; the agent's `sync --once` wall time, \
         health not waited for; the local control plane on this 2-core machine).\n\n{table}",
        args.objects
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        RUNS
    );
    std::fs::write(&out, &text)?;
    println!("{text}");
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
