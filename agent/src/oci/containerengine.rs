//! OCI Container Engine (`/20180222`, signed): node pools and virtual node pools read with
//! their `etag` (Get, or List by cluster and name), updated with `if-match` (the answer is
//! a work request id), and work requests polled (GetWorkRequest, honouring `retry-after`)
//! with their errors read when they fail.

use std::time::Duration;

use super::{Error, Shared};

const TEMPLATE: &str = "https://containerengine.{region}.oci.oraclecloud.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    NodePool,
    VirtualNodePool,
}

impl PoolKind {
    fn path(self) -> &'static str {
        match self {
            PoolKind::NodePool => "nodePools",
            PoolKind::VirtualNodePool => "virtualNodePools",
        }
    }

    /// The field a pool's name is in.
    pub fn name_field(self) -> &'static str {
        match self {
            PoolKind::NodePool => "name",
            PoolKind::VirtualNodePool => "displayName",
        }
    }
}

/// A pool as OCI has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub id: String,
    pub etag: String,
    pub body: serde_json::Value,
}

/// A work request's state.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRequest {
    pub status: String,
    pub compartment_id: String,
    /// How long the service asks to wait before the next poll.
    pub retry_after: Option<Duration>,
}

fn base(shared: &Shared) -> Result<String, Error> {
    Ok(format!(
        "{}/20180222",
        shared.base("containerengine", TEMPLATE)?
    ))
}

/// The pool `id`, with its etag.
pub async fn get(shared: &Shared, kind: PoolKind, id: &str) -> Result<Live, Error> {
    let what = format!("{}: Get{kind:?}", id);
    let url = format!("{}/{}/{}", base(shared)?, kind.path(), super::segment(id));
    let response = super::call(shared, "GET", &url, Vec::new(), &[], &what).await?;
    let etag = super::header(&response, "etag").unwrap_or_default();
    let body = super::read_json(response, 4 * 1024 * 1024, &what).await?;
    Ok(Live {
        id: id.to_owned(),
        etag,
        body,
    })
}

/// The id of the pool named `name` in cluster `cluster_id` (ListNodePools/ListVirtualNodePools
/// need the compartment: it is read from the cluster). Deleted pools do not count.
pub async fn find(
    shared: &Shared,
    kind: PoolKind,
    compartment_id: &str,
    cluster_id: &str,
    name: &str,
) -> Result<String, Error> {
    let what = format!("{cluster_id}: List{kind:?}s {name}");
    // Both lists filter with `name` (a virtual pool's is its displayName), as the SDKs send it.
    let url = format!(
        "{}/{}?compartmentId={}&clusterId={}&name={}",
        base(shared)?,
        kind.path(),
        super::segment(compartment_id),
        super::segment(cluster_id),
        super::segment(name)
    );
    let response = super::call(shared, "GET", &url, Vec::new(), &[], &what).await?;
    let listed = super::read_json(response, 4 * 1024 * 1024, &what).await?;
    let items = listed
        .as_array()
        .or_else(|| listed["items"].as_array())
        .cloned()
        .unwrap_or_default();
    let live: Vec<&serde_json::Value> = items
        .iter()
        .filter(|p| p[kind.name_field()] == name && p["lifecycleState"] != "DELETED")
        .collect();
    match live.as_slice() {
        [one] => one["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Answer {
                what: what.clone(),
                reason: "a pool without an id".into(),
            }),
        [] => Err(Error::Api {
            what,
            status: 404,
            code: "NotFound".into(),
            message: format!("no pool named {name} in the cluster"),
        }),
        _ => Err(Error::Answer {
            what,
            reason: format!("{} pools are named {name}: name it by its OCID", live.len()),
        }),
    }
}

/// The cluster's compartment (GetCluster).
pub async fn cluster_compartment(shared: &Shared, cluster_id: &str) -> Result<String, Error> {
    let what = format!("{cluster_id}: GetCluster");
    let url = format!("{}/clusters/{}", base(shared)?, super::segment(cluster_id));
    let response = super::call(shared, "GET", &url, Vec::new(), &[], &what).await?;
    let body = super::read_json(response, 4 * 1024 * 1024, &what).await?;
    body["compartmentId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Answer {
            what,
            reason: "no compartmentId".into(),
        })
}

/// Updates the pool with `details` if it is still at `etag`; the work request's id.
pub async fn update(
    shared: &Shared,
    kind: PoolKind,
    live: &Live,
    details: &serde_json::Value,
) -> Result<String, Error> {
    let what = format!("{}: Update{kind:?}", live.id);
    let url = format!(
        "{}/{}/{}",
        base(shared)?,
        kind.path(),
        super::segment(&live.id)
    );
    let mut headers = vec!["content-type:application/json".to_owned()];
    if !live.etag.is_empty() {
        headers.push(format!("if-match:{}", live.etag));
    }
    let body = serde_json::to_vec(details).expect("JSON values serialise");
    let response = super::call(shared, "PUT", &url, body, &headers, &what).await?;
    super::header(&response, "opc-work-request-id").ok_or_else(|| Error::Answer {
        what,
        reason: "no opc-work-request-id in the answer".into(),
    })
}

/// The work request's state now.
pub async fn work_request(shared: &Shared, id: &str) -> Result<WorkRequest, Error> {
    let what = format!("{id}: GetWorkRequest");
    let url = format!("{}/workRequests/{}", base(shared)?, super::segment(id));
    let response = super::call(shared, "GET", &url, Vec::new(), &[], &what).await?;
    let retry_after = super::header(&response, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = super::read_json(response, 4 * 1024 * 1024, &what).await?;
    Ok(WorkRequest {
        status: body["status"].as_str().unwrap_or_default().to_owned(),
        compartment_id: body["compartmentId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        retry_after,
    })
}

/// The errors of a failed work request, as one line (`code: message; ...`).
pub async fn work_request_errors(
    shared: &Shared,
    id: &str,
    compartment_id: &str,
) -> Result<String, Error> {
    let what = format!("{id}: ListWorkRequestErrors");
    let url = format!(
        "{}/workRequests/{}/errors?compartmentId={}",
        base(shared)?,
        super::segment(id),
        super::segment(compartment_id)
    );
    let response = super::call(shared, "GET", &url, Vec::new(), &[], &what).await?;
    let body = super::read_json(response, 4 * 1024 * 1024, &what).await?;
    let items = body
        .as_array()
        .or_else(|| body["items"].as_array())
        .cloned()
        .unwrap_or_default();
    let lines: Vec<String> = items
        .iter()
        .take(5)
        .map(|e| {
            format!(
                "{}: {}",
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    Ok(if lines.is_empty() {
        "no errors listed".into()
    } else {
        lines.join("; ")
    })
}
