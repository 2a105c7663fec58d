//! gitops-agent: keeps a Kubernetes cluster in step with a Git repository.
//!
//! Data flows one way: trigger → source → render → apply → prune → health → inventory →
//! notify. Each stage is a module named after what it owns; `sync` runs them for one
//! revision, `controller` decides when, and `core` holds what they all share.
#![forbid(unsafe_code)]

pub mod apply;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod core;
pub mod diff;
pub mod drift;
pub mod health;
pub mod http;
pub mod infra;
pub mod inventory;
pub mod notify;
pub mod oci;
pub mod policy;
pub mod prune;
pub mod render;
pub mod secrets;
pub mod source;
pub mod sync;
pub mod telemetry;
pub mod webhook;

/// The agent's version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The field manager name for every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "gitops-agent";
