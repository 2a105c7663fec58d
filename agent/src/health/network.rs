//! Services (a LoadBalancer needs an address) and Ingresses.

use serde_json::Value;

use super::Assessment;
use super::json::*;

pub(super) fn has_lb_address(obj: &Value) -> bool {
    obj.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|ingress| {
            ingress
                .iter()
                .any(|i| str_at(i, "/ip").is_some() || str_at(i, "/hostname").is_some())
        })
}

pub(super) fn service(obj: &Value) -> Assessment {
    if str_at(obj, "/spec/type") == Some("LoadBalancer") && !has_lb_address(obj) {
        return progressing("Waiting for the load balancer to be assigned an address");
    }
    healthy("")
}

pub(super) fn ingress(obj: &Value) -> Assessment {
    if has_lb_address(obj) {
        healthy("")
    } else {
        progressing("Waiting for the ingress controller to publish an address")
    }
}
