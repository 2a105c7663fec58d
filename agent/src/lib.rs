//! gitops-agent: keeps a Kubernetes cluster in step with a Git repository.
//!
//! Data flows one way: trigger → source → render → policy → apply → prune → health →
//! inventory → alerts. Each stage is a module named after what it owns.
#![forbid(unsafe_code)]

pub mod alert;
pub mod apply;
pub mod change;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod discovery;
pub mod drift;
pub mod files;
pub mod health;
pub mod inventory;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod object;
pub mod prune;
pub mod render;
pub mod source;
pub mod sync;
pub mod webhook;

/// The agent's version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The field manager name for every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "gitops-agent";
