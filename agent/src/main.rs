//! The `gitops-agent` binary: parse the command line, set up logging, run the command.
#![deny(unsafe_code)]

mod cli;

use clap::Parser;
use cli::Cli;

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    if let Err(err) = gitops_agent::telemetry::logging::init(&cli.log) {
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

/// One glibc malloc arena for the whole process. By default every thread that allocates
/// (the runtime's workers, its blocking pool for Git) gets an arena of its own, and memory
/// freed in one is not reused by another: with a revision's objects allocated on one
/// thread and dropped on another, the peak RSS was about 20 MiB higher at 5,000 objects
/// for the same heap. Threads keep their own small-allocation caches, so contention stays
/// low.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: called first thing in `main`, before any other thread exists; `mallopt` only
    // sets an allocator parameter, and a failure (0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
