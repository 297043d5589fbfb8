//! An OCI image (layout in a tar) of the busybox rootfs, for `ctr image import`.

use std::io;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Name the image is imported under.
pub const IMAGE: &str = "docker.io/library/scute-busybox:latest";

fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// The rootfs of [`crate::busybox_bundle`] as an uncompressed layer tar.
fn layer(rootfs: &Path) -> io::Result<Vec<u8>> {
    let mut t = tar::Builder::new(Vec::new());
    t.follow_symlinks(false);
    t.append_dir_all(".", rootfs)?;
    t.into_inner()
}

fn add(t: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, name, data)
}

/// Writes an OCI image layout tar at `out` holding the busybox rootfs,
/// named [`IMAGE`] (annotation `io.containerd.image.name`).
pub fn busybox_image_tar(out: &Path) -> io::Result<()> {
    image_tar(out, IMAGE, &["sh"], &[])
}

/// The busybox rootfs as image `name` whose default command is `cmd` and
/// which declares `exposed` TCP ports, like an application image.
pub fn image_tar(out: &Path, name: &str, cmd: &[&str], exposed: &[u16]) -> io::Result<()> {
    image_tar_with_env(out, name, cmd, exposed, &[DEFAULT_PATH])
}

/// `PATH` as images set it.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Like [`image_tar`] with the image config's environment `env` (a pause
/// image, say, sets none, not even `PATH`).
pub fn image_tar_with_env(
    out: &Path,
    name: &str,
    cmd: &[&str],
    exposed: &[u16],
    env: &[&str],
) -> io::Result<()> {
    image_tar_with_host_tools(out, name, cmd, exposed, env, &[])
}

/// Like [`image_tar_with_env`], with host programs added at their host
/// paths, each with the shared libraries `ldd` names and the dynamic
/// loader (as a distribution image carries them). `tools` are (program,
/// extra directories it loads plugins from, links to it).
pub fn image_tar_with_host_tools(
    out: &Path,
    name: &str,
    cmd: &[&str],
    exposed: &[u16],
    env: &[&str],
    tools: &[HostTool],
) -> io::Result<()> {
    build(out, name, cmd, exposed, env, tools, Format::Oci)
}

/// The busybox image as `docker save` writes it (`manifest.json`, tagged
/// `name`), for `docker load` and `podman load` (Docker 20.10 reads no
/// OCI layout).
pub fn docker_image_tar(out: &Path, name: &str, cmd: &[&str], exposed: &[u16]) -> io::Result<()> {
    build(
        out,
        name,
        cmd,
        exposed,
        &[DEFAULT_PATH],
        &[],
        Format::Docker,
    )
}

#[derive(PartialEq)]
enum Format {
    Oci,
    Docker,
}

fn build(
    out: &Path,
    name: &str,
    cmd: &[&str],
    exposed: &[u16],
    env: &[&str],
    tools: &[HostTool],
    format: Format,
) -> io::Result<()> {
    // Per call: tests build images from several threads of one process.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = std::env::temp_dir().join(format!("scute-image-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    crate::busybox_bundle(&work, &["sh"])?;
    let rootfs = work.join("rootfs");
    for t in tools {
        add_host_tool(&rootfs, t)?;
    }
    let layer = layer(&rootfs)?;
    std::fs::remove_dir_all(&work)?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": env,
            "Cmd": cmd,
            "WorkingDir": "/",
            "ExposedPorts": exposed.iter().map(|p| (format!("{p}/tcp"), json!({}))).collect::<serde_json::Map<_, _>>()
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}]
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}
        }]
    }))?;
    let mut t = tar::Builder::new(std::fs::File::create(out)?);
    if format == Format::Docker {
        let blob = |b: &[u8]| format!("blobs/sha256/{}", &digest(b)[7..]);
        let tag = name.strip_prefix("docker.io/library/").unwrap_or(name);
        let m = serde_json::to_vec(&json!([{
            "Config": blob(&config),
            "RepoTags": [tag],
            "Layers": [blob(&layer)],
        }]))?;
        add(&mut t, "manifest.json", &m)?;
    } else {
        add(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add(&mut t, "index.json", &index)?;
    }
    for blob in [&layer, &config, &manifest] {
        let d = digest(blob);
        add(&mut t, &format!("blobs/sha256/{}", &d[7..]), blob)?;
    }
    t.into_inner()?;
    Ok(())
}

/// A host program to put into an image.
pub struct HostTool {
    pub program: &'static str,
    /// Directories copied whole (plugins the program loads at run time).
    pub dirs: &'static [&'static str],
    /// Paths made symlinks to `program` (multi-call binaries).
    pub links: &'static [&'static str],
}

/// Copies `p` (following symlinks) to the same path under `rootfs`.
fn copy_in(rootfs: &Path, p: &Path) -> io::Result<()> {
    let to = rootfs.join(p.strip_prefix("/").unwrap_or(p));
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(p, &to)?;
    Ok(())
}

fn add_host_tool(rootfs: &Path, t: &HostTool) -> io::Result<()> {
    let mut files = vec![std::path::PathBuf::from(t.program)];
    for d in t.dirs {
        for e in std::fs::read_dir(d)?.flatten() {
            files.push(e.path());
        }
    }
    let mut libs = Vec::new();
    for f in &files {
        libs.extend(scute_assets::shared_libs(f).map_err(io::Error::other)?);
    }
    for f in files.iter().chain(&libs) {
        copy_in(rootfs, f)?;
    }
    for l in t.links {
        let link = rootfs.join(l.trim_start_matches('/'));
        if let Some(d) = link.parent() {
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(t.program, link)?;
    }
    Ok(())
}
