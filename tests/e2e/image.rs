//! The agent's image (agent/image), which tests/setup builds with podman FROM scratch and
//! exports: its own root filesystem runs the microservices example's sync against the
//! local control plane, as the image's non-root user, with nothing from the host but the
//! network (loopback) and a kubeconfig. `podman run` is tried first; on machines where it
//! cannot start a container (crun cannot set rlimits in this sandbox) the test says why and
//! runs the same binary from the image's root filesystem with `chroot --userspec`.

#[path = "../harness/git.rs"]
mod git;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

const IMAGE: &str = concat!("localhost/gitops-agent:", env!("CARGO_PKG_VERSION"));
const USER: &str = "65532:65532";

fn rootfs() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    let dir = cache.join("gitops-agent/image/rootfs");
    assert!(
        dir.join("usr/local/bin/gitops-agent").is_file(),
        "{}: no image root filesystem; tests/setup builds it (agent/image/build --rootfs)",
        dir.display()
    );
    dir
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman").args(args).output().expect("podman")
}

#[test]
fn the_image_is_minimal_and_non_root() {
    let inspect = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{.Size}}",
        IMAGE,
    ]);
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let text = String::from_utf8_lossy(&inspect.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[0], USER, "{text}");
    assert_eq!(fields[1], r#"["/usr/local/bin/gitops-agent"]"#, "{text}");
    eprintln!(
        "image {IMAGE}: {} MB",
        fields[2].parse::<u64>().unwrap() / 1_000_000
    );
    // Nothing but what the Containerfile names: no shell, no package manager.
    let fs = rootfs();
    for path in ["bin/sh", "usr/bin", "var/lib/dpkg"] {
        assert!(!fs.join(path).exists(), "{path} in the image");
    }
    for bin in ["gitops-agent", "kustomize", "helm"] {
        // ldd names the libraries a dynamic executable loads ("=>"); a static one has none.
        let out = Command::new("ldd")
            .arg(fs.join("usr/local/bin").join(bin))
            .output()
            .unwrap();
        let text = output(&out);
        assert!(!text.contains("=>"), "{bin} is dynamically linked: {text}");
    }
}

#[tokio::test]
async fn the_image_syncs_an_example_into_the_local_control_plane() {
    let cp = harness::with_addons();
    let admin = cp.client().await;
    let upstream = git::Upstream::new();
    let repo = upstream.create("examples");
    let root = harness::repo_root().join("manifests/examples");
    let files = harness::files_under(&root, "microservices");
    repo.push("main", &harness::borrowed(&files), &[]);
    let daemon = git::GitDaemon::start(upstream.root());

    // The image's /tmp (an emptyDir in the install) holds the config, kubeconfig and state.
    let fs = rootfs();
    let work = tempfile::Builder::new()
        .prefix("image-")
        .tempdir_in(fs.join("tmp"))
        .unwrap();
    let inside = Path::new("/tmp").join(work.path().file_name().unwrap());
    std::fs::copy(cp.kubeconfig(), work.path().join("kubeconfig")).unwrap();
    let config = format!(
        "stateDir: {inside}/state\nnamespace: gitops-agent-image\n\
         sources:\n  - {{name: examples, url: {url}}}\n\
         syncs:\n  - {{name: shop, source: examples, path: microservices/overlays/local, namespace: shop, health: {{timeout: 3m}}}}\n",
        inside = inside.display(),
        url = daemon.url("examples"),
    );
    std::fs::write(work.path().join("config.yaml"), config).unwrap();
    Command::new("chown")
        .args(["-R", USER])
        .arg(work.path())
        .status()
        .unwrap();
    let args = [
        "sync".to_string(),
        "--once".into(),
        "--config".into(),
        format!("{}/config.yaml", inside.display()),
        "--kubeconfig".into(),
        format!("{}/kubeconfig", inside.display()),
    ];

    let mut run = vec!["run", "--rm", "--network", "host", "--read-only", "-v"];
    let mount = format!("{}:{}", work.path().display(), inside.display());
    run.extend([mount.as_str(), IMAGE]);
    run.extend(args.iter().map(String::as_str));
    let out = podman(&run);
    let (code, text) = if out.status.success() {
        (out.status.code(), output(&out))
    } else {
        eprintln!(
            "podman run cannot run the image here, so its root filesystem is run instead: {}",
            output(&out).trim()
        );
        default_devices(&fs);
        // By path: the child's PATH is the image's, where there is no chroot.
        let out = Command::new("/usr/sbin/chroot")
            .arg(format!("--userspec={USER}"))
            .arg(&fs)
            .arg("/usr/local/bin/gitops-agent")
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/local/bin")
            .env("HOME", "/tmp")
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
            .output()
            .unwrap();
        (out.status.code(), output(&out))
    };
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "rendered: kustomize",
        "Deployment/shop/web created",
        "health: Healthy",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    let _ = Api::<Namespace>::all(admin)
        .delete("shop", &Default::default())
        .await;
}

fn output(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The devices every OCI runtime creates in a container's /dev (runtime-spec, "Default
/// Devices"), which a bare root filesystem lacks: the agent's renderers read /dev/null.
fn default_devices(fs: &Path) {
    std::fs::create_dir_all(fs.join("dev")).unwrap();
    for (name, minor) in [
        ("null", "3"),
        ("zero", "5"),
        ("random", "8"),
        ("urandom", "9"),
    ] {
        let path = fs.join("dev").join(name);
        if !path.exists() {
            let made = Command::new("mknod")
                .args(["-m", "666"])
                .arg(&path)
                .args(["c", "1", minor])
                .status()
                .unwrap();
            assert!(made.success(), "mknod {}", path.display());
        }
    }
}
