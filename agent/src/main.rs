//! The `gitops-agent` binary: parse the command line, set up logging, run the command.
#![forbid(unsafe_code)]

use clap::Parser;
use gitops_agent::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(err) = gitops_agent::logging::init(&cli.log) {
        eprintln!("gitops-agent: {err}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gitops-agent: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(err) => {
            // anyhow's alternate form prints the whole cause chain on one line.
            tracing::error!(error = format!("{err:#}"), "command failed");
            eprintln!("gitops-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
