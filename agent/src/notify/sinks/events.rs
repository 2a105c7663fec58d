//! The Kubernetes Events sink.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, GroupVersionKind, PostParams};
use kube::{Api, Client};
use tracing::debug;

use super::{Alert, Sink};
use crate::core::{ObjectKey, truncate};
use crate::notify::{Error, Result};

/// Kubernetes Events (events.k8s.io/v1): one regarding the subject (related: the agent),
/// and one regarding the agent (related: the subject); sync events only on the agent.
///
/// Written directly rather than through `kube::runtime::events::Recorder`: the Recorder
/// folds repeats into a series under a key without the note, so a second drift of the same
/// object within six minutes would keep the first drift's text. Repeats are rare here (the
/// caller de-duplicates, the dispatcher rate-limits), so every alert gets its own Event.
///
/// RBAC: `create` on `events.k8s.io/events`; `get` on subjects (for their UID, so
/// `kubectl describe` finds the Event; without it the Event is still written).
pub struct EventsSink {
    id: String,
    client: Client,
    agent_ref: ObjectKey,
    controller: String,
    instance: String,
    resources: Mutex<HashMap<GroupVersionKind, ApiResource>>,
}

/// Limits the API server enforces on events.k8s.io/v1.
const NOTE_MAX: usize = 1024;
const NAME_BASE_MAX: usize = 200;

impl EventsSink {
    pub fn new(
        id: impl Into<String>,
        client: Client,
        agent_ref: ObjectKey,
        reporting_controller: impl Into<String>,
        instance: impl Into<String>,
    ) -> Self {
        EventsSink {
            id: id.into(),
            client,
            agent_ref,
            controller: reporting_controller.into(),
            instance: truncate(&instance.into(), 128),
            resources: Mutex::default(),
        }
    }

    /// The reference with the object's UID when it can be read (best effort).
    async fn reference(&self, r: &ObjectKey) -> ObjectReference {
        let mut out = ObjectReference {
            api_version: (!r.version.is_empty()).then(|| r.api_version()),
            kind: Some(r.kind.clone()),
            namespace: r.namespace.clone(),
            name: Some(r.name.clone()),
            ..Default::default()
        };
        if r.version.is_empty() {
            return out;
        }
        match self.uid(r).await {
            Ok(uid) => out.uid = uid,
            Err(e) => debug!(subject = %r, error = %e, "no UID for the Event's reference"),
        }
        out
    }

    async fn uid(&self, r: &ObjectKey) -> Result<Option<String>, kube::Error> {
        let gvk = GroupVersionKind::gvk(&r.group, &r.version, &r.kind);
        let cached = self.resources.lock().expect("lock").get(&gvk).cloned();
        let ar = match cached {
            Some(ar) => ar,
            None => {
                let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
                self.resources.lock().expect("lock").insert(gvk, ar.clone());
                ar
            }
        };
        let api = crate::cluster::api_for(&self.client, &ar, r.namespace.as_deref());
        Ok(api
            .get_metadata_opt(&r.name)
            .await?
            .and_then(|m| m.metadata.uid))
    }

    async fn publish(
        &self,
        alert: &Alert,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
    ) -> Result<()> {
        let e = &alert.event;
        // Events of cluster-scoped objects live in `default`, as the API server requires.
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        // Cut on a character boundary (RBAC names from Git may hold any Unicode), and still
        // ending alphanumeric (a DNS subdomain).
        let name = regarding.name.as_deref().unwrap_or("gitops-agent");
        let base = crate::core::prefix(name, NAME_BASE_MAX).trim_end_matches(['-', '.']);
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(alert.time)),
            type_: Some(e.severity().as_str().into()),
            reason: Some(e.reason().into()),
            action: Some(e.action().into()),
            note: Some(truncate(&e.summary(), NOTE_MAX)),
            regarding: Some(regarding.clone()),
            related: related.cloned(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| Error::Kube {
                sink: self.id.clone(),
                target: format!(
                    "Event/{ns} regarding {}/{}",
                    regarding.kind.as_deref().unwrap_or(""),
                    regarding.name.as_deref().unwrap_or("")
                ),
                source,
            })?;
        Ok(())
    }
}

impl Sink for EventsSink {
    fn name(&self) -> &str {
        &self.id
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let agent = self.reference(&self.agent_ref).await;
            match alert.event.subject() {
                Some(subject) => {
                    let regarding = self.reference(subject).await;
                    self.publish(alert, &regarding, Some(&agent)).await?;
                    // A retry after this one fails repeats the first Event: at least once.
                    self.publish(alert, &agent, Some(&regarding)).await
                }
                None => self.publish(alert, &agent, None).await,
            }
        })
    }
}
