//! The synthetic repository: N objects across ten namespaces in a realistic mix
//! (ConfigMaps, Secrets, ServiceAccounts, headless Services, small Deployments), the
//! same objects for every contender with only the namespace prefix differing.

use std::path::Path;

use serde_json::{Value, json};

/// Namespaces the objects are spread over.
pub const NAMESPACES: usize = 10;

/// The ConfigMap the change and webhook steps rewrite: its own file, in the first namespace.
pub const HOT: &str = "cm-hot";
/// The ConfigMap the drift step edits out of band.
pub const DRIFT: &str = "cm-drift";

/// One contender's copy of the corpus: `b-<contender>-<n>-<i>` namespaces.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub prefix: String,
    pub objects: usize,
}

/// The corpus's namespaced kinds: (group, version, kind, plural).
pub const KINDS: [(&str, &str, &str, &str); 5] = [
    ("", "v1", "ConfigMap", "configmaps"),
    ("", "v1", "Secret", "secrets"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    ("", "v1", "Service", "services"),
    ("apps", "v1", "Deployment", "deployments"),
];

/// Share of each kind, in percent (Deployments kept small: every one becomes a kwok pod).
const MIX: [(&str, usize); 5] = [
    ("ConfigMap", 40),
    ("Secret", 20),
    ("ServiceAccount", 15),
    ("Service", 20),
    ("Deployment", 5),
];

impl Corpus {
    pub fn new(contender: &str, objects: usize) -> Self {
        Corpus {
            prefix: format!("b-{contender}-{objects}"),
            objects,
        }
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}-{i:02}", self.prefix)
    }

    /// All its namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        (0..NAMESPACES).map(|i| self.namespace(i)).collect()
    }

    /// How many Deployments (each a kwok pod) it holds.
    pub fn deployments(&self) -> usize {
        self.groups()
            .iter()
            .filter(|(name, _)| name.ends_with("/deployment"))
            .map(|(_, objs)| objs.len())
            .sum()
    }

    /// The namespace of the hot and drift ConfigMaps.
    pub fn first_namespace(&self) -> String {
        self.namespace(0)
    }

    /// Namespace objects, then everything else grouped by (namespace, kind), so that each
    /// group can be one file. Counts include the Namespaces themselves.
    pub fn groups(&self) -> Vec<(String, Vec<Value>)> {
        let namespaces: Vec<Value> = (0..NAMESPACES)
            .map(|i| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace(i)}}))
            .collect();
        let rest = self.objects.saturating_sub(NAMESPACES);
        let mut out = vec![("00-namespaces".to_owned(), namespaces)];
        for i in 0..NAMESPACES {
            let ns = self.namespace(i);
            // This namespace's share of the rest, split by the mix.
            let share = rest / NAMESPACES + usize::from(i < rest % NAMESPACES);
            let mut assigned = 0;
            for (k, (kind, pct)) in MIX.iter().enumerate() {
                let count = if k + 1 == MIX.len() {
                    share - assigned
                } else {
                    share * pct / 100
                };
                assigned += count;
                let mut objs: Vec<Value> = (0..count).map(|j| object(kind, &ns, j)).collect();
                if i == 0 && *kind == "ConfigMap" && objs.len() >= 2 {
                    objs[0] = config_map(&ns, HOT, "0");
                    objs[1] = config_map(&ns, DRIFT, "0");
                }
                out.push((format!("{ns}/{}", kind.to_lowercase()), objs));
            }
        }
        out
    }

    /// Writes the corpus as YAML files under `dir` (JSON documents are YAML), with the hot
    /// ConfigMap in its own file, `hot.yaml`, so a change rewrites one small file.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        for (name, mut objs) in self.groups() {
            if name.ends_with("/configmap") && name.starts_with(&self.first_namespace()) {
                let hot = objs.remove(0);
                write_docs(&dir.join(&name).with_extension("hot.yaml"), &[hot])?;
            }
            write_docs(&dir.join(format!("{name}.yaml")), &objs)?;
        }
        Ok(())
    }

    /// The hot ConfigMap with `value`, as its file's content.
    pub fn hot_file(&self, value: &str) -> (String, String) {
        let path = format!("{}/configmap.hot.yaml", self.first_namespace());
        let text = docs(&[config_map(&self.first_namespace(), HOT, value)]);
        (path, text)
    }

    /// ConfigMaps of the first namespace for the drift samples, `cm-drift` first, then the
    /// plain ones, cycling: each sample edits a different object, because the agent treats
    /// an object healed more than three times in a minute as a fight and stops healing it.
    pub fn drift_targets(&self, samples: usize) -> Vec<String> {
        let plain = self
            .groups()
            .into_iter()
            .find(|(name, _)| *name == format!("{}/configmap", self.first_namespace()))
            .map(|(_, objs)| {
                objs.iter()
                    .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
                    .filter(|n| n != HOT)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if plain.is_empty() {
            return Vec::new();
        }
        (0..samples)
            .map(|i| plain[i % plain.len()].clone())
            .collect()
    }

    /// Every object, Namespaces first.
    pub fn all(&self) -> Vec<Value> {
        self.groups().into_iter().flat_map(|(_, o)| o).collect()
    }
}

fn docs(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| {
            format!(
                "---\n{}\n",
                serde_json::to_string_pretty(o).unwrap_or_default()
            )
        })
        .collect()
}

fn write_docs(path: &Path, objs: &[Value]) -> anyhow::Result<()> {
    if objs.is_empty() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, docs(objs))?;
    Ok(())
}

fn labels(app: &str) -> Value {
    json!({"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "bench", "tier": "backend"})
}

fn config_map(ns: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
        "data": {
            "value": value,
            "LOG_LEVEL": "info",
            "FEATURE_FLAGS": "search,checkout,recommendations",
            "application.properties": "server.port=8080\nmanagement.port=9090\ncache.ttl=300s\n",
        }
    })
}

fn object(kind: &str, ns: &str, j: usize) -> Value {
    match kind {
        "ConfigMap" => config_map(ns, &format!("cm-{j:04}"), &j.to_string()),
        "Secret" => json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("secret-{j:04}"), "namespace": ns, "labels": labels("secret")},
            "type": "Opaque",
            "stringData": {"username": format!("svc-{j}"), "password": format!("s3cr3t-{j:08x}")}
        }),
        "ServiceAccount" => json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("sa-{j:04}"), "namespace": ns, "labels": labels("sa")}
        }),
        // Headless: the local control plane's service range is a /24, too small for
        // thousands of ClusterIPs.
        "Service" => json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{j:04}"), "namespace": ns, "labels": labels("svc")},
            "spec": {
                "clusterIP": "None",
                "selector": {"app.kubernetes.io/name": format!("web-{j:04}")},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
            }
        }),
        _ => {
            let name = format!("web-{j:04}");
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "labels": labels(&name)},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                    "template": {
                        "metadata": {"labels": labels(&name)},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "registry.example/web:1.4.2",
                                "ports": [{"containerPort": 8080, "name": "http"}],
                                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "128Mi"}
                                },
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
                            }]
                        }
                    }
                }
            })
        }
    }
}
