//! The command line: global flags and the subcommands, each a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{cluster, logging};

#[derive(Debug, Parser)]
#[command(name = "gitops-agent", version = crate::VERSION, about = "Keeps a Kubernetes cluster in step with Git: server-side apply, prune, drift alerts.", long_about = None)]
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
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Version => {
                println!("gitops-agent {}", crate::VERSION);
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
                Ok(ExitCode::SUCCESS)
            }
        }
    }
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
