//! What the renderers' unit tests share: the pinned binaries and files of a repository.

use std::path::{Path, PathBuf};

use crate::source::File;

/// A pinned renderer binary (`kustomize`, `helm`), as tests/setup builds it.
pub fn pinned(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("tests/renderers/build"))
        .output()
        .expect("tests/renderers/build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name)
}

/// A file of a repository.
pub fn file(path: &str, content: &str) -> File {
    File {
        path: path.into(),
        content: content.as_bytes().to_vec(),
    }
}
