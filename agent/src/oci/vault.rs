//! OCI Vault secrets: GetSecretBundle (`GET /20190301/secretbundles/{secretId}`) or
//! GetSecretBundleByName (`POST .../actions/getByName?secretName=&vaultId=`, empty body),
//! the CURRENT version, content decoded from its BASE64 bundle. The value is returned,
//! never printed.

use base64::Engine as _;

use super::{Error, Shared};
use crate::config::OciVaultRef;

/// The secret's current value.
pub async fn secret(shared: &Shared, secret: &OciVaultRef) -> Result<Vec<u8>, Error> {
    let fail = |reason: String| Error::Vault {
        secret_id: secret.to_string(),
        reason,
    };
    let base = shared
        .base(
            "secrets",
            "https://secrets.vaults.{region}.oci.oraclecloud.com",
        )
        .map_err(|e| fail(e.to_string()))?;
    let (method, url) = match (&secret.secret_name, &secret.vault_id) {
        (Some(name), Some(vault)) if secret.secret_id.is_empty() => (
            "POST",
            format!(
                "{base}/20190301/secretbundles/actions/getByName?secretName={}&vaultId={}",
                super::segment(name),
                super::segment(vault)
            ),
        ),
        _ => (
            "GET",
            format!(
                "{base}/20190301/secretbundles/{}",
                super::segment(&secret.secret_id)
            ),
        ),
    };
    let client = shared.client().await?;
    let request = super::request(method, &url, Vec::new(), None, &[])?;
    let response = client.send(&request).await?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| fail(crate::http::client::describe(e)))?;
    if !status.is_success() {
        // OCI's error bodies are {"code", "message"}: no secret material.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = v["code"].as_str().unwrap_or("");
        return Err(fail(format!("{status} {code}")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| fail("the answer is not JSON".into()))?;
    let content = &v["secretBundleContent"];
    if content["contentType"] != "BASE64" {
        return Err(fail("the bundle's contentType is not BASE64".into()));
    }
    let text = content["content"]
        .as_str()
        .ok_or_else(|| fail("the bundle has no content".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| fail("the bundle's content is not base64".into()))
}
