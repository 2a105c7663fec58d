//! Manifests: parse the files of a revision into validated Kubernetes objects, each
//! with the file and line it came from, before anything is written to the cluster.
