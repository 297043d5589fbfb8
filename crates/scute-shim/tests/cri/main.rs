//! Kubernetes pods through containerd's CRI plugin, called as kubelet calls
//! it (a Rust CRI client over containerd's socket), on real containerd,
//! QEMU, virtiofsd and CNI plugins. Every scenario runs under runc too, with
//! the same body, as the baseline that shows the test itself is right.

mod client;
mod streaming;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use streaming::Channels;

use client::{Ctr, Handler, Node, PodSpec, CONTAINER_EXITED, CONTAINER_RUNNING, NOPATH_IMAGE};

const MINUTE: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn procs(needle: &str) -> Vec<String> {
    scute_testkit::procs::mentioning(needle)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// QEMU processes serving sandbox `id`.
fn vms_of(id: &str) -> usize {
    procs(&format!("/run/scute/{id}/"))
        .iter()
        .filter(|c| c.contains("qemu-system"))
        .count()
}

fn guest_kernel() -> String {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read("/var/lib/scute/assets/manifest.json").expect("assets built"),
    )
    .unwrap();
    m["kernel_version"].as_str().unwrap().to_owned()
}

fn host_kernel() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Network namespaces of this node's pods (its containerd mounts them
/// under its own state dir).
fn netns_count(node: &Node) -> usize {
    std::fs::read_dir(
        node.containerd
            .dir
            .join("state/io.containerd.grpc.v1.cri/netns"),
    )
    .map(|d| d.count())
    .unwrap_or(0)
}

/// Nothing of the node's pods is left: CRI objects, containerd tasks and
/// containers, shims, VMs, virtiofsd, state dirs, mounts, network namespaces.
async fn assert_node_clean(node: &mut Node, pods: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = Vec::new();
        let (p, c) = node.counts().await;
        if p + c > 0 {
            left.push(format!("CRI: {p} pods, {c} containers"));
        }
        for args in [["tasks", "ls", "-q"], ["containers", "ls", "-q"]] {
            let mut a = vec!["-n", "k8s.io"];
            a.extend(args);
            let out = node.containerd.ctr_ok(&a);
            let out = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.is_empty() {
                left.push(format!("ctr {}: {out}", args[0]));
            }
        }
        let sock = node.containerd.socket().display().to_string();
        let shims = procs(&format!("-address {sock} "));
        if !shims.is_empty() {
            left.push(format!("shims: {shims:?}"));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for id in pods {
            let state = format!("/run/scute/{id}");
            if !procs(&format!("{state}/")).is_empty() {
                left.push(format!("processes of {state}"));
            }
            if Path::new(&state).exists() {
                left.push(format!("state dir {state}"));
            }
            if mounts.contains(&format!("{state}/")) {
                left.push(format!("mounts under {state}"));
            }
        }
        let ns = netns_count(node);
        if ns > 0 {
            left.push(format!("{ns} network namespaces"));
        }
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------

/// Init container, two long-running containers sharing the pod's network,
/// IPC and UTS; a sibling stopped and removed; the pod removed.
async fn pod_lifecycle(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("web-pod"))
        .await
        .expect("run pod");

    // An init container runs to completion and is removed.
    let init = Ctr::sh("init", "echo init-done; exit 0");
    let init_id = node.run(&pod, &init).await;
    let st = node.wait_state(&init_id, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert!(st.started_at > 0 && st.finished_at > 0, "{st:?}");
    assert!(
        node.log(&pod, &init).contains("init-done"),
        "init log: {:?}",
        node.log(&pod, &init)
    );
    node.remove(&init_id).await;

    let web = Ctr::sh(
        "web",
        "mkdir -p /tmp/www && echo hello-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    );
    let web_id = node.run(&pod, &web).await;
    let side = Ctr::sh("side", "echo side-up; exec sleep 100000");
    let side_id = node.run(&pod, &side).await;
    node.wait_state(&web_id, CONTAINER_RUNNING, MINUTE).await;
    node.wait_state(&side_id, CONTAINER_RUNNING, MINUTE).await;

    // The pod's netns is where the leak check looks for it.
    assert_eq!(
        netns_count(&node),
        1,
        "the pod's netns, where the leak check looks"
    );
    // The host reaches the pod on its IP; the sibling on 127.0.0.1.
    let ip = node.pod_ip(&pod).await;
    let body =
        scute_testkit::http::get_200_within(&format!("{ip}:8080"), "/", Duration::from_secs(30));
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello-pod"),
        "GET {ip}:8080"
    );
    let (code, out, err) = node
        .exec(&side_id, &["wget", "-qO-", "http://127.0.0.1:8080/"])
        .await;
    assert_eq!((code, out.trim()), (0, "hello-pod"), "{err}");

    // The pod's kernel is the guest's under scute.
    let (_, uname, _) = node.exec(&side_id, &["uname", "-r"]).await;
    let want = match h {
        Handler::Scute => guest_kernel(),
        Handler::Runc => host_kernel(),
    };
    assert_eq!(uname.trim(), want);
    if h == Handler::Scute {
        assert_eq!(vms_of(&pod.id), 1, "one VM for the pod");
        for c in [&web_id, &side_id, &init_id] {
            assert_eq!(vms_of(c), 0, "no VM of its own for container {c}");
        }
    }

    // One UTS and one IPC namespace for the pod.
    for id in [&web_id, &side_id] {
        let (_, host, _) = node.exec(id, &["hostname"]).await;
        assert_eq!(host.trim(), "web-pod");
    }
    let ns = |out: (i32, String, String)| out.1.trim().to_owned();
    for kind in ["ipc", "uts"] {
        let path = format!("/proc/self/ns/{kind}");
        let a = ns(node.exec(&web_id, &["readlink", &path]).await);
        let b = ns(node.exec(&side_id, &["readlink", &path]).await);
        assert!(a.starts_with(kind) && a == b, "{kind}: {a} vs {b}");
    }
    // A POSIX message queue (an IPC-namespace object) made in one container
    // is seen in the other.
    let (code, _, err) = node
        .exec(&web_id, &["sh", "-c", ": > /dev/mqueue/scute-q"])
        .await;
    assert_eq!(code, 0, "{err}");
    let (_, ls, _) = node.exec(&side_id, &["ls", "/dev/mqueue"]).await;
    assert!(ls.contains("scute-q"), "{ls}");
    // Separate PID namespaces (kubelet's default).
    let (_, ps, _) = node.exec(&side_id, &["ps"]).await;
    assert!(!ps.contains("httpd"), "{ps}");

    // ExecSync exit codes come through.
    let (code, _, _) = node.exec(&side_id, &["sh", "-c", "exit 5"]).await;
    assert_eq!(code, 5);

    // A sibling stopped and removed: the other keeps serving.
    node.stop(&side_id, 2).await;
    let st = node.wait_state(&side_id, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(
        st.exit_code, 137,
        "sleep ignores SIGTERM as pid 1: killed after the timeout"
    );
    node.remove(&side_id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body =
        scute_testkit::http::get_200_within(&format!("{ip}:8080"), "/", Duration::from_secs(10));
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello-pod"),
        "web after side removed"
    );
    assert_eq!(node.status(&web_id).await.state, CONTAINER_RUNNING);
    assert!(node.log(&pod, &side).contains("side-up"));

    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn pod_lifecycle_scute() {
    rt().block_on(pod_lifecycle(Handler::Scute, 1));
}

#[test]
fn pod_lifecycle_runc() {
    rt().block_on(pod_lifecycle(Handler::Runc, 2));
}

/// Exit codes, restarts (attempt 1), StopContainer's SIGKILL after the
/// timeout, PATH rules as runc's, a memory limit that OOM-kills one container
/// and not its sibling.
async fn containers_of_a_pod(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("jobs-pod"))
        .await
        .expect("run pod");
    let keep = node.run(&pod, &Ctr::sh("keep", "exec sleep 100000")).await;

    // Exits with 3; recreated as attempt 1: the first one's status says 3.
    let first = Ctr::sh("job", "exit 3");
    let first_id = node.run(&pod, &first).await;
    let st = node.wait_state(&first_id, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st.exit_code, 3);
    let second = Ctr {
        attempt: 1,
        ..Ctr::sh("job", "echo second; exit 0")
    };
    let second_id = node.run(&pod, &second).await;
    let st2 = node.wait_state(&second_id, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st2.exit_code, 0);
    assert_eq!(node.status(&first_id).await.exit_code, 3);
    assert!(st.finished_at > 0 && st.started_at > 0 && st.created_at > 0);

    // A process that ignores SIGTERM: StopContainer kills it after 2 s.
    let stubborn = node
        .run(
            &pod,
            &Ctr::sh("stubborn", "trap '' TERM; while true; do sleep 1; done"),
        )
        .await;
    node.wait_state(&stubborn, CONTAINER_RUNNING, MINUTE).await;
    let t = Instant::now();
    node.stop(&stubborn, 2).await;
    let st = node.wait_state(&stubborn, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st.exit_code, 137);
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());

    // No PATH in the image: an absolute command runs. (The pause image has
    // none either; for containers the CRI plugin adds a default PATH, so a
    // relative command runs too, under runc as under scute.)
    for (name, cmd) in [("abs", "/bin/echo"), ("rel", "echo")] {
        let c = Ctr {
            image: Some(NOPATH_IMAGE),
            command: vec![cmd.into(), format!("{name}-ok")],
            ..Ctr::sh(name, "")
        };
        let id = node.run(&pod, &c).await;
        let st = node.wait_state(&id, CONTAINER_EXITED, MINUTE).await;
        assert_eq!(st.exit_code, 0, "{st:?}");
        assert!(node.log(&pod, &c).contains(&format!("{name}-ok")));
    }

    // Over its memory limit: OOM-killed (137); the sibling is untouched.
    let hog = Ctr {
        memory_limit: 32 << 20,
        ..Ctr::sh("hog", "dd if=/dev/zero of=/dev/null bs=96M count=1")
    };
    let hog_id = node.run(&pod, &hog).await;
    let st = node.wait_state(&hog_id, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(node.status(&keep).await.state, CONTAINER_RUNNING);
    let (code, out, _) = node.exec(&keep, &["echo", "alive"]).await;
    assert_eq!((code, out.trim()), (0, "alive"));

    // UpdateContainerResources: a running container gets a lower memory
    // limit; a process exec'd in it that goes past it is OOM-killed.
    let (code, _, _) = node
        .exec(
            &keep,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"],
        )
        .await;
    assert_eq!(code, 0, "48 MiB before the update");
    node.update_memory(&keep, 32 << 20).await.expect("update");
    let (code, _, _) = node
        .exec(
            &keep,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"],
        )
        .await;
    assert_eq!(code, 137, "48 MiB after an update to 32 MiB");
    assert_eq!(node.status(&keep).await.state, CONTAINER_RUNNING);

    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn containers_of_a_pod_scute() {
    rt().block_on(containers_of_a_pod(Handler::Scute, 3));
}

#[test]
fn containers_of_a_pod_runc() {
    rt().block_on(containers_of_a_pod(Handler::Runc, 4));
}

/// Host namespaces a VM can't give are refused by their pod-spec names, and
/// a refused pod leaves nothing.
#[test]
fn host_namespaces_are_refused_by_name() {
    rt().block_on(async {
        let mut node = Node::new(5).await;
        for (field, ns) in [
            (
                "hostNetwork",
                k8s_cri::v1::NamespaceOption {
                    network: 2,
                    ..client::ns_options(false)
                },
            ),
            (
                "hostPID",
                k8s_cri::v1::NamespaceOption {
                    pid: 2,
                    ..client::ns_options(false)
                },
            ),
            (
                "hostIPC",
                k8s_cri::v1::NamespaceOption {
                    ipc: 2,
                    ..client::ns_options(false)
                },
            ),
        ] {
            let spec = PodSpec {
                namespaces: Some(ns),
                ..PodSpec::new(&field.to_lowercase())
            };
            let err = match node.run_pod(Handler::Scute, &spec).await {
                Err(e) => e,
                Ok(pod) => panic!("{field} accepted: pod {}", pod.id),
            };
            assert!(err.message().contains(field), "{field}: {err:?}");
        }
        assert_node_clean(&mut node, &[]).await;
    });
}

/// containerd's `shim delete` for one container of a live pod leaves the
/// pod running; after the pod's shim is killed, it removes VM and state.
#[test]
fn shim_delete_is_per_container_while_the_pod_lives() {
    rt().block_on(async {
        let mut node = Node::new(6).await;
        let pod = node
            .run_pod(Handler::Scute, &PodSpec::new("del-pod"))
            .await
            .expect("run pod");
        let a = node.run(&pod, &Ctr::sh("a", "exec sleep 100000")).await;
        let b = node.run(&pod, &Ctr::sh("b", "exec sleep 100000")).await;
        node.wait_state(&b, CONTAINER_RUNNING, MINUTE).await;

        let (dir, socket) = (
            node.containerd.dir.clone(),
            node.containerd.socket().to_path_buf(),
        );
        let shim_delete = |id: &str| {
            let bundle = dir.join(format!("state/io.containerd.runtime.v2.task/k8s.io/{id}"));
            let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-scute-v2"))
                .env("TTRPC_ADDRESS", format!("{}.ttrpc", socket.display()))
                .args(["-namespace", "k8s.io", "-id", id, "-address"])
                .arg(&socket)
                .args(["-bundle"])
                .arg(&bundle)
                .arg("delete")
                .current_dir(&bundle)
                .output()
                .expect("run shim delete");
            assert!(
                out.status.success(),
                "shim delete {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        shim_delete(&a);
        node.wait_state(&a, CONTAINER_EXITED, MINUTE).await;
        assert_eq!(
            vms_of(&pod.id),
            1,
            "the pod's VM survives one container's delete"
        );
        let (code, out, _) = node.exec(&b, &["echo", "still-here"]).await;
        assert_eq!((code, out.trim()), (0, "still-here"));

        // The pod's shim dies: delete tears the sandbox down.
        let shim = scute_testkit::procs::mentioning(&format!("-id {} ", pod.id))
            .into_iter()
            .find(|(_, c)| c.contains("containerd-shim-scute-v2"))
            .expect("pod shim")
            .0;
        Command::new("kill")
            .args(["-9", &shim.to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        shim_delete(&pod.id);
        while vms_of(&pod.id) > 0 || Path::new(&format!("/run/scute/{}", pod.id)).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "VM or state left after the shim died"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        node.remove_pod(&pod).await;
        assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
    });
}

/// `shareProcessNamespace: true`: the pod's containers see each other's
/// processes (one PID namespace, the sandbox's).
async fn shared_pid_namespace(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let spec = PodSpec {
        share_pid: true,
        ..PodSpec::new("pid-pod")
    };
    let pod = node.run_pod(h, &spec).await.expect("run pod");
    let a = node.run(&pod, &Ctr::sh("a", "exec sleep 4242")).await;
    let b = node.run(&pod, &Ctr::sh("b", "exec sleep 100000")).await;
    node.wait_state(&a, CONTAINER_RUNNING, MINUTE).await;
    node.wait_state(&b, CONTAINER_RUNNING, MINUTE).await;
    let (_, ps, _) = node.exec(&b, &["ps"]).await;
    assert!(ps.contains("sleep 4242"), "b sees a's process: {ps}");
    let pid_ns = |out: (i32, String, String)| out.1.trim().to_owned();
    let na = pid_ns(node.exec(&a, &["readlink", "/proc/self/ns/pid"]).await);
    let nb = pid_ns(node.exec(&b, &["readlink", "/proc/self/ns/pid"]).await);
    assert_eq!(na, nb);
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn shared_pid_namespace_scute() {
    rt().block_on(shared_pid_namespace(Handler::Scute, 11));
}

#[test]
fn shared_pid_namespace_runc() {
    rt().block_on(shared_pid_namespace(Handler::Runc, 12));
}

/// `kubectl exec -it` and `kubectl attach -it`: terminal sessions through
/// containerd's streaming server (a WebSocket, as kubelet proxies them),
/// with Kubernetes' 64-character ids: input, output, resize, exit code.
async fn terminals(h: Handler, n: u8) {
    use streaming::{exit_code, expect, status, RESIZE, STDIN};
    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("tty"))
        .await
        .expect("run pod");
    let sleeper = node
        .run(&pod, &Ctr::sh("sleeper", "exec sleep 100000"))
        .await;
    assert_eq!(sleeper.len(), 64, "a Kubernetes-length id");
    let url = node
        .rt
        .exec(k8s_cri::v1::ExecRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let mut ch = Channels::open(&url, "", "v4.channel.k8s.io").await;
    let mut out = String::new();
    // The size travels apart from the input: ask until the terminal has it.
    let mut sized = false;
    for _ in 0..10 {
        ch.send(RESIZE, br#"{"Width":100,"Height":40}"#).await;
        ch.send(STDIN, b"stty size\n").await;
        if expect(&mut ch, &mut out, "40 100", Duration::from_secs(2)).await {
            sized = true;
            break;
        }
    }
    assert!(sized, "the exec's terminal never got 40x100: {out:?}");
    ch.send(STDIN, b"tty; echo in-$((6*7))\n").await;
    assert!(
        expect(&mut ch, &mut out, "in-42", Duration::from_secs(20)).await,
        "no answer to input: {out:?}"
    );
    assert!(out.contains("/dev/pts/"), "stdin is a terminal: {out:?}");
    ch.send(STDIN, b"exit 3\n").await;
    let st = status(&mut ch, Duration::from_secs(20)).await;
    let st = st.unwrap_or_else(|| panic!("the exec ended without a status: {out:?}"));
    assert_eq!(exit_code(&st), Ok(3));
    ch.close().await;

    let console = Ctr {
        tty: true,
        ..Ctr {
            name: "console".into(),
            command: vec!["sh".into()],
            ..Default::default()
        }
    };
    let con = node.run(&pod, &console).await;
    node.wait_state(&con, CONTAINER_RUNNING, MINUTE).await;
    let url = node
        .rt
        .attach(k8s_cri::v1::AttachRequest {
            container_id: con.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let mut ch = Channels::open(&url, "", "v4.channel.k8s.io").await;
    let mut out = String::new();
    let mut answered = false;
    for _ in 0..10 {
        ch.send(STDIN, b"echo attached-$((6*7))\n").await;
        if expect(&mut ch, &mut out, "attached-42", Duration::from_secs(2)).await {
            answered = true;
            break;
        }
    }
    assert!(answered, "no answer through attach: {out:?}");
    ch.send(STDIN, b"exit 5\n").await;
    let st = node.wait_state(&con, CONTAINER_EXITED, MINUTE).await;
    assert_eq!(st.exit_code, 5);
    ch.close().await;
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn terminals_scute() {
    rt().block_on(terminals(Handler::Scute, 20));
}

#[test]
fn terminals_runc() {
    rt().block_on(terminals(Handler::Runc, 21));
}

/// One `kubectl port-forward` connection to `port` of `pod` (a PortForward
/// call; its URL serves one connection): an HTTP GET of `/` through it,
/// the answer as it came.
async fn forward_get(node: &Node, pod: &str, port: u16) -> String {
    let url = node
        .rt
        .clone()
        .port_forward(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![port as i32],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let mut ch = Channels::open(&url, &format!("?port={port}"), "v4.channel.k8s.io").await;
    let mut body = Vec::new();
    let mut first = [true, true];
    ch.send(0, b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").await;
    while let Some((c, d)) = ch.recv(Duration::from_secs(20)).await {
        // Each channel's first message is its port number.
        if c < 2 && std::mem::take(&mut first[c as usize]) {
            assert_eq!(d, port.to_le_bytes(), "channel {c} starts with the port");
            continue;
        }
        match c {
            0 => body.extend(d),
            _ => body.extend(format!("[error: {}]", String::from_utf8_lossy(&d)).bytes()),
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `kubectl port-forward` (CRI PortForward): a GET to a pod's web server
/// through the streaming server, then 20 at once; a port nobody listens on
/// ends the forward with an error, without hanging.
async fn port_forward(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let pod = node.run_pod(h, &PodSpec::new("pf")).await.expect("run pod");
    let web = Ctr::sh(
        "web",
        "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    let web = node.run(&pod, &web).await;
    let deadline = Instant::now() + MINUTE;
    while node
        .try_exec(&web, &["wget", "-qO-", "http://127.0.0.1:8080/"])
        .await
        .map_or(true, |r| r.0 != 0)
    {
        assert!(
            Instant::now() < deadline,
            "the pod's web server never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = forward_get(&node, &pod.id, 8080).await;
    assert!(
        got.contains("200 OK") && got.contains("hello-from-the-pod"),
        "{got}"
    );
    let all =
        futures_util::future::join_all((0..20).map(|_| forward_get(&node, &pod.id, 8080))).await;
    for got in all {
        assert!(got.contains("hello-from-the-pod"), "{got}");
    }
    let t = Instant::now();
    let got = forward_get(&node, &pod.id, 8081).await;
    assert!(!got.contains("200 OK"), "{got}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "a closed port took {:?}",
        t.elapsed()
    );
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn port_forward_scute() {
    rt().block_on(port_forward(Handler::Scute, 22));
}

#[test]
fn port_forward_runc() {
    rt().block_on(port_forward(Handler::Runc, 23));
}

/// A privileged pod does what CNI plugins' and service meshes' init
/// containers do in their pod's network: a bridge with a veth, and a
/// netfilter rule with Debian's iptables (nf_tables backend), read back.
async fn privileged_pod_builds_a_bridge_and_a_firewall_rule(h: Handler, n: u8) {
    const TOOLS: &str = "docker.io/library/scute-iptables:test";
    let mut node = Node::new(n).await;
    client::import_with_tools(
        &node.containerd,
        TOOLS,
        &[scute_testkit::image::HostTool {
            program: "/usr/sbin/xtables-nft-multi",
            dirs: &["/usr/lib/x86_64-linux-gnu/xtables"],
            links: &["/usr/sbin/iptables"],
        }],
    );
    let spec = PodSpec {
        privileged: true,
        ..PodSpec::new("netadmin")
    };
    let pod = node.run_pod(h, &spec).await.expect("run pod");
    let c = Ctr {
        image: Some(TOOLS),
        privileged: true,
        ..Ctr::sh(
            "fw",
            "set -e; ip link add br0 type bridge; ip link add v0 type veth; \
             ip link set v0 master br0; ip link set br0 up; ls /sys/class/net/br0/brif; \
             iptables -A INPUT -p tcp --dport 9999 -j DROP; iptables -S INPUT; \
             echo FW-OK; exec sleep 100000",
        )
    };
    let id = node.run(&pod, &c).await;
    let deadline = Instant::now() + MINUTE;
    let log = loop {
        let log = node.log(&pod, &c);
        if log.contains("FW-OK") || node.status(&id).await.state == CONTAINER_EXITED {
            break log;
        }
        assert!(Instant::now() < deadline, "no answer: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(log.contains("FW-OK"), "{log}");
    assert!(log.contains("v0"), "the veth is in the bridge: {log}");
    assert!(
        log.contains("-A INPUT -p tcp -m tcp --dport 9999 -j DROP"),
        "the rule reads back: {log}"
    );
    // The rule is live in the pod's network: an exec sees it too.
    let (code, out, err) = node.exec(&id, &["iptables", "-S", "INPUT"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--dport 9999 -j DROP"), "{out}");
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn privileged_pod_builds_a_bridge_and_a_firewall_rule_scute() {
    rt().block_on(privileged_pod_builds_a_bridge_and_a_firewall_rule(
        Handler::Scute,
        24,
    ));
}

#[test]
fn privileged_pod_builds_a_bridge_and_a_firewall_rule_runc() {
    rt().block_on(privileged_pod_builds_a_bridge_and_a_firewall_rule(
        Handler::Runc,
        25,
    ));
}

/// kubelet gives up on a RunPodSandbox (its deadline passes while the VM
/// boots): containerd cancels it, and nothing of the pod may stay behind,
/// no shim, VM, mount or netns, once the shim has seen that nobody comes
/// back for it. Under scute the cancel is certain whatever the machine's
/// speed: the pod's QEMU is stopped (SIGSTOP) as soon as it appears, so
/// its boot can't finish before the deadline. runc races the same deadline.
async fn cancelled_run_pod_leaves_nothing(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let sock = node.containerd.socket().display().to_string();
    let spec = PodSpec::new("cancelled");
    let watched = sock.clone();
    let stopper = tokio::task::spawn_blocking(move || {
        let sock = watched;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let shims = scute_testkit::procs::mentioning(&format!("-address {sock} "));
            for (shim, _) in shims {
                for pid in scute_testkit::procs::descendants(shim) {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.starts_with("qemu-system") {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGSTOP,
                        );
                        return Some(pid);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    });
    let mut stopper = stopper;
    let (cancelled, stopped) = if h == Handler::Scute {
        // Cancelled once its QEMU is stopped: the boot is under way and
        // can't finish, however fast or slow this machine is.
        tokio::select! {
            r = node.run_pod(h, &spec) => panic!("a pod whose VM is stopped ran: {:?}", r.map(|p| p.id)),
            stopped = &mut stopper => (true, stopped.unwrap()),
        }
    } else {
        let cancelled =
            match tokio::time::timeout(Duration::from_secs(3), node.run_pod(h, &spec)).await {
                // Done in time: remove it as kubelet would.
                Ok(Ok(pod)) => {
                    node.remove_pod(&pod).await;
                    false
                }
                Ok(Err(e)) => panic!("run pod: {e:?}"),
                Err(_) => true,
            };
        (cancelled, stopper.await.unwrap())
    };
    if h == Handler::Scute {
        assert!(
            stopped.is_some() && cancelled,
            "no VM was seen to stop within 10 s"
        );
    }
    // The shim of a cancelled sandbox waits ORPHAN_GRACE (10 s) for
    // containerd to come back before it goes, VM and all.
    let t = Instant::now();
    while !scute_testkit::procs::mentioning(&format!("-address {sock} ")).is_empty()
        && t.elapsed() < Duration::from_secs(40)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_node_clean(&mut node, &[]).await;
    if let Some(vm) = stopped {
        assert!(
            !scute_runtime::procs::alive(vm),
            "the stopped VM (pid {vm}) is left"
        );
    }
}

#[test]
fn cancelled_run_pod_leaves_nothing_scute() {
    rt().block_on(cancelled_run_pod_leaves_nothing(Handler::Scute, 26));
}

#[test]
fn cancelled_run_pod_leaves_nothing_runc() {
    rt().block_on(cancelled_run_pod_leaves_nothing(Handler::Runc, 27));
}

/// An exec'd process gets what the container's init got, as under runc:
/// the runtime's default seccomp filter (sethostname refused even with the
/// capability present, `Seccomp: 2`), an empty bounding set when the
/// container drops ALL; and an exec of a missing binary fails at once.
async fn exec_is_confined_like_init(h: Handler, n: u8) {
    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("exec-pod"))
        .await
        .expect("run pod");
    let filtered = node
        .run(
            &pod,
            &Ctr {
                seccomp_default: true,
                ..Ctr::sh("filtered", "exec sleep 100000")
            },
        )
        .await;
    let dropped = node
        .run(
            &pod,
            &Ctr {
                drop_all_caps: true,
                ..Ctr::sh("dropped", "exec sleep 100000")
            },
        )
        .await;
    node.wait_state(&filtered, CONTAINER_RUNNING, MINUTE).await;
    node.wait_state(&dropped, CONTAINER_RUNNING, MINUTE).await;
    let status = "grep -E '^(Seccomp|CapBnd):' /proc/self/status";
    let (_, init, _) = node
        .exec(
            &filtered,
            &["grep", "-E", "^(Seccomp|CapBnd):", "/proc/1/status"],
        )
        .await;
    let (_, exec, _) = node.exec(&filtered, &["sh", "-c", status]).await;
    assert!(init.contains("Seccomp:\t2"), "{h:?} init: {init}");
    assert!(
        exec.contains("Seccomp:\t2"),
        "{h:?} exec lost the filter: {exec}"
    );
    let (code, _, err) = node.exec(&filtered, &["hostname", "exec-renamed"]).await;
    assert_ne!(code, 0, "{h:?}: sethostname passed the default profile");
    assert!(err.contains("not permitted"), "{h:?}: {err}");
    let t = Instant::now();
    let (_, caps, _) = node.exec(&dropped, &["sh", "-c", status]).await;
    // What an exec that runs takes on this machine now: a failed one
    // must take no longer than a few of those (a hung one took 60 s).
    let an_exec = t.elapsed();
    assert!(
        caps.contains("CapBnd:\t0000000000000000"),
        "{h:?} exec of a drop-ALL container: {caps}"
    );
    let t = Instant::now();
    let missing = node.try_exec(&dropped, &["no-such-binary"]).await;
    let took = t.elapsed();
    let said = match &missing {
        Ok((code, out, err)) => format!("exit {code}: {out}{err}"),
        Err(e) => e.message().to_owned(),
    };
    assert!(
        missing.as_ref().map(|r| r.0 != 0).unwrap_or(true),
        "{h:?}: {said}"
    );
    assert!(said.contains("not found"), "{h:?}: {said}");
    assert!(
        took < an_exec * 4 + Duration::from_secs(2),
        "{h:?}: took {took:?} (an exec that runs: {an_exec:?}): {said}"
    );
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
}

#[test]
fn exec_is_confined_like_init_scute() {
    rt().block_on(exec_is_confined_like_init(Handler::Scute, 14));
}

#[test]
fn exec_is_confined_like_init_runc() {
    rt().block_on(exec_is_confined_like_init(Handler::Runc, 15));
}

/// Kubernetes' `HostToContainer` and `Bidirectional` volumes (rslave and
/// rshared, on a host dir that is a shared mount, as kubelet requires):
/// the container starts, and a mount made on the host under the volume
/// before the start is visible in it.
async fn propagated_volumes_start(h: Handler, n: u8) {
    let host = std::env::temp_dir().join(format!("scute-prop-{n}-{}", std::process::id()));
    std::fs::create_dir_all(&host).unwrap();
    let mount = |src: Option<&str>, dst: &std::path::Path, fstype: Option<&str>, flags| {
        nix::mount::mount(src, dst, fstype, flags, None::<&str>).unwrap()
    };
    use nix::mount::MsFlags;
    mount(Some("tmpfs"), &host, Some("tmpfs"), MsFlags::empty());
    mount(None, &host, None, MsFlags::MS_SHARED);
    std::fs::create_dir(host.join("sub")).unwrap();
    mount(
        Some("tmpfs"),
        &host.join("sub"),
        Some("tmpfs"),
        MsFlags::empty(),
    );
    std::fs::write(host.join("sub/seen"), "from-the-host").unwrap();

    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("prop-pod"))
        .await
        .expect("run pod");
    for (name, propagation) in [
        (
            "slave",
            k8s_cri::v1::MountPropagation::PropagationHostToContainer,
        ),
        (
            "shared",
            k8s_cri::v1::MountPropagation::PropagationBidirectional,
        ),
    ] {
        let c = Ctr {
            mounts: vec![k8s_cri::v1::Mount {
                container_path: "/vol".into(),
                host_path: host.display().to_string(),
                propagation: propagation as i32,
                ..Default::default()
            }],
            ..Ctr::sh(name, "cat /vol/sub/seen; exec sleep 100000")
        };
        let id = node
            .create(&pod, &c)
            .await
            .unwrap_or_else(|e| panic!("{h:?} {name}: {e:?}"));
        node.start(&id)
            .await
            .unwrap_or_else(|e| panic!("{h:?} {name}: {e:?}"));
        node.wait_state(&id, CONTAINER_RUNNING, MINUTE).await;
        let (_, out, _) = node.exec(&id, &["cat", "/vol/sub/seen"]).await;
        assert_eq!(out.trim(), "from-the-host", "{h:?} {name}");
    }
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
    let _ = nix::mount::umount2(&host, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&host);
}

#[test]
fn propagated_volumes_start_scute() {
    rt().block_on(propagated_volumes_start(Handler::Scute, 16));
}

#[test]
fn propagated_volumes_start_runc() {
    rt().block_on(propagated_volumes_start(Handler::Runc, 17));
}

/// What a process of a container is, as it sees itself: ids, groups, every
/// capability set, no_new_privs, seccomp, the open-files limit, cwd and the
/// environment, from its init (pid 1, read by an exec) and from an exec.
async fn process_fingerprints(h: Handler, n: u8, as_user: bool) -> (String, String) {
    let mut node = Node::new(n).await;
    let pod = node
        .run_pod(h, &PodSpec::new("fp-pod"))
        .await
        .expect("run pod");
    let c = Ctr {
        seccomp_default: true,
        run_as: as_user.then(|| (1000, 3000, vec![4000, 5000])),
        no_new_privs: as_user,
        drop_all_caps: as_user,
        ..Ctr::sh("fp", "cd /tmp; exec sleep 100000")
    };
    let id = node.run(&pod, &c).await;
    node.wait_state(&id, CONTAINER_RUNNING, MINUTE).await;
    let fields = "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):'";
    let (_, init, _) = node
        .exec(
            &id,
            &["sh", "-c", &format!("{fields} /proc/1/status; tr '\\0' '\\n' </proc/1/environ | grep -v ^HOSTNAME= | sort; grep 'open files' /proc/1/limits; readlink /proc/1/cwd")],
        )
        .await;
    let (_, exec, _) = node
        .exec(
            &id,
            &["sh", "-c", &format!("{fields} /proc/self/status; env | grep -vE '^(HOSTNAME|SHLVL|PWD)=' | sort; grep 'open files' /proc/self/limits; pwd")],
        )
        .await;
    node.remove_pod(&pod).await;
    assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
    (init, exec)
}

/// A container's init and an exec in it are, field by field, what runc
/// makes them (pods side by side on two nodes): as root, and as user
/// 1000:3000 with groups 4000, 5000, no_new_privs and no capabilities.
#[test]
fn processes_match_runc_field_by_field() {
    rt().block_on(async {
        for as_user in [false, true] {
            let (runc, scute) = tokio::join!(
                process_fingerprints(Handler::Runc, 18, as_user),
                process_fingerprints(Handler::Scute, 19, as_user)
            );
            assert!(
                runc.0.contains("Seccomp:") && runc.1.contains("open files"),
                "{runc:?}"
            );
            assert!(!as_user || runc.1.contains("Uid:\t1000"), "{runc:?}");
            assert_eq!(
                scute.0, runc.0,
                "init (as user: {as_user}): scute (left), runc (right)"
            );
            assert_eq!(
                scute.1, runc.1,
                "exec (as user: {as_user}): scute (left), runc (right)"
            );
        }
    });
}

/// 20 pods of 3 containers each, created and removed two at a time.
async fn many_pods(h: Handler, n: u8) {
    let node = std::sync::Arc::new(tokio::sync::Mutex::new(Node::new(n).await));
    let mut ids = Vec::new();
    let mut workers = Vec::new();
    for w in 0..2 {
        let node = node.clone();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let name = format!("churn-{w}-{i}");
                let pod = {
                    let mut node = node.lock().await;
                    node.run_pod(h, &PodSpec::new(&name))
                        .await
                        .expect("run pod")
                };
                for c in ["a", "b", "c"] {
                    let mut node = node.lock().await;
                    node.run(&pod, &Ctr::sh(c, "exec sleep 100000")).await;
                }
                node.lock().await.remove_pod(&pod).await;
                ids.push(pod.id);
            }
            ids
        }));
    }
    for w in workers {
        ids.extend(w.await.unwrap());
    }
    let mut node = node.lock().await;
    assert_node_clean(&mut node, &ids).await;
}

#[test]
fn twenty_pods_leave_nothing_scute() {
    rt().block_on(many_pods(Handler::Scute, 7));
}

#[test]
fn twenty_pods_leave_nothing_runc() {
    rt().block_on(many_pods(Handler::Runc, 8));
}

fn annotations(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pod's VM size comes from its `io.scute.vm.*` annotations (passed on
/// by the runtime's `pod_annotations`) only where the operator's
/// `enable_annotations` lists them: otherwise a tenant asking for 8 GiB and
/// 8 vCPUs gets the configured size. Over the configured maximum it is
/// refused, and the refused pod leaves nothing.
#[test]
fn vm_size_from_pod_annotations() {
    rt().block_on(async {
        let cfg = std::env::temp_dir().join(format!("scute-cri-size-{}.toml", std::process::id()));
        std::fs::write(&cfg, "[pool]\nsize = 0\n").unwrap();
        let mut node = Node::with_env(10, &[("SCUTE_CONFIG", &cfg.display().to_string())]).await;
        let qemu_of = |pod: &str| {
            procs(&format!("/run/scute/{pod}/"))
                .into_iter()
                .find(|c| c.contains("qemu-system"))
                .expect("the pod's QEMU")
        };
        let spec = PodSpec {
            annotations: annotations(&[
                ("io.scute.vm.memory_mib", "8192"),
                ("io.scute.vm.vcpus", "8"),
            ]),
            ..PodSpec::new("greedy-pod")
        };
        let pod = node.run_pod(Handler::Scute, &spec).await.expect("run pod");
        let qemu = qemu_of(&pod.id);
        let default = scute_runtime::Config::default();
        assert!(
            qemu.contains(&format!(" -m {}M", default.memory_mib))
                && qemu.contains(&format!(" -smp {}", default.vcpus)),
            "a tenant sized its own VM: {qemu}"
        );
        node.remove_pod(&pod).await;

        std::fs::write(
            &cfg,
            "enable_annotations = [\"io.scute.vm.memory_mib\", \"io.scute.vm.vcpus\"]\n[pool]\nsize = 0\n",
        )
        .unwrap();
        let spec = PodSpec {
            annotations: annotations(&[
                ("io.scute.vm.memory_mib", "384"),
                ("io.scute.vm.vcpus", "2"),
            ]),
            ..PodSpec::new("sized-pod")
        };
        let sized = node.run_pod(Handler::Scute, &spec).await.expect("run pod");
        let qemu = qemu_of(&sized.id);
        assert!(
            qemu.contains(" -m 384M") && qemu.contains(" -smp 2"),
            "{qemu}"
        );
        node.remove_pod(&sized).await;

        let spec = PodSpec {
            annotations: annotations(&[("io.scute.vm.memory_mib", "999999")]),
            ..PodSpec::new("huge-pod")
        };
        let err = match node.run_pod(Handler::Scute, &spec).await {
            Err(e) => e,
            Ok(p) => panic!("a 999999 MiB pod was accepted: {}", p.id),
        };
        assert!(err.message().contains("max_memory_mib"), "{err:?}");
        assert_node_clean(&mut node, &[pod.id.clone(), sized.id.clone()]).await;
        let _ = std::fs::remove_file(&cfg);
    });
}

/// Under kubelet's systemd cgroup driver (kubeadm's default) a pod's
/// cgroup parent is a slice and CRI asks for `slice:cri-containerd:<id>`:
/// the VMM goes where systemd puts that scope, inside the pod's slice, so
/// node allocatable and eviction count the VM; nothing of it is left after.
#[test]
fn the_vmm_is_in_the_pods_systemd_slice() {
    rt().block_on(async {
        let mut node = Node::new(13).await;
        let pod_slice = format!("kubepods-besteffort-podscute{}.slice", std::process::id());
        let spec = PodSpec {
            cgroup_parent: pod_slice.clone(),
            ..PodSpec::new("sliced-pod")
        };
        let pod = node.run_pod(Handler::Scute, &spec).await.expect("run pod");
        let qemu = scute_testkit::procs::mentioning(&format!("/run/scute/{}/", pod.id))
            .into_iter()
            .find(|(_, c)| c.contains("qemu-system"))
            .expect("the pod's QEMU")
            .0;
        let cgroups = std::fs::read_to_string(format!("/proc/{qemu}/cgroup")).unwrap();
        let want = format!(
            "/kubepods.slice/kubepods-besteffort.slice/{pod_slice}/cri-containerd-{}.scope",
            pod.id
        );
        // v1: the memory controller's line; v2 only: the unified one.
        let line = cgroups
            .lines()
            .find(|l| l.contains(":memory:"))
            .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
            .unwrap_or("");
        assert!(
            line.ends_with(&want),
            "QEMU is not in the pod's slice {want}: {cgroups}"
        );
        node.remove_pod(&pod).await;
        assert_node_clean(&mut node, std::slice::from_ref(&pod.id)).await;
        // The slices are kubelet's to remove; this test made them.
        for root in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/cpuacct",
        ] {
            let base = std::path::Path::new(root).join("kubepods.slice");
            let pod_dir = base.join("kubepods-besteffort.slice").join(&pod_slice);
            assert!(
                !pod_dir
                    .join(format!("cri-containerd-{}.scope", pod.id))
                    .exists(),
                "the VMM's scope is left under {root}"
            );
            let _ = std::fs::remove_dir(&pod_dir);
            let _ = std::fs::remove_dir(base.join("kubepods-besteffort.slice"));
            let _ = std::fs::remove_dir(&base);
        }
    });
}

/// utime + stime (clock ticks) of the pod's shim and everything below it,
/// and of whatever works in scute's state dir for it.
fn cpu_ticks(pod: &str) -> u64 {
    scute_lab::measure::sandbox_pids(pod)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s[s.rfind(')')? + 1..].to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Benchmark (not run by `make test`): RunPodSandbox, time to the first
/// container running, and host PSS of an idle pod with 1 and 3 containers,
/// runc and scute in the same run. The figures behind the RuntimeClass
/// `overhead` in deploy/kubernetes/runtimeclass.yaml.
///
/// `cargo test --release -p scute-shim --test cri -- --ignored bench_pods --nocapture`
/// With `SCUTE_BENCH_POOL_CONFIG=/etc/scute/config.toml` (the config of a
/// running `scute pool`) a third row takes the pods' VMs from that pool.
#[test]
#[ignore]
fn bench_pods() {
    let runs: usize = std::env::var("SCUTE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    rt().block_on(async {
        let mut node = Node::new(9).await;
        let pool_config = std::env::var("SCUTE_BENCH_POOL_CONFIG").ok();
        let mut pool_node = match &pool_config {
            Some(c) => Some(Node::with_env(10, &[("SCUTE_CONFIG", c)]).await),
            None => None,
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let mut rows = Vec::new();
        for (name, h, pooled) in [
            ("runc", Handler::Runc, false),
            ("scute", Handler::Scute, false),
            ("scute, pool VM", Handler::Scute, true),
        ] {
            let node = match (pooled, pool_node.as_mut()) {
                (false, _) => &mut node,
                (true, Some(n)) => n,
                (true, None) => continue,
            };
            let (mut sandbox, mut first, mut pss1, mut pss3) = (vec![], vec![], vec![], vec![]);
            let mut idle_cpu = vec![];
            for i in 0..runs {
                let t = Instant::now();
                let pod = node
                    .run_pod(h, &PodSpec::new(&format!("bench-{}-{i}", name.replace([',', ' '], ""))))
                    .await
                    .expect("run pod");
                sandbox.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                let a = node.run(&pod, &Ctr::sh("a", "exec sleep 100000")).await;
                node.wait_state(&a, CONTAINER_RUNNING, MINUTE).await;
                first.push(t.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_secs(3)).await;
                pss1.push(scute_lab::measure::container_pss(&pod.id).0 as f64 / 1024.0);
                for c in ["b", "c"] {
                    node.run(&pod, &Ctr::sh(c, "exec sleep 100000")).await;
                }
                let cpu0 = cpu_ticks(&pod.id);
                tokio::time::sleep(Duration::from_secs(3)).await;
                // Millicores: CPU ticks (1/100 s) over 3 s, as a fraction of one CPU.
                idle_cpu.push((cpu_ticks(&pod.id) - cpu0) as f64 * 10.0 / 3.0);
                pss3.push(scute_lab::measure::container_pss(&pod.id).0 as f64 / 1024.0);
                node.remove_pod(&pod).await;
            }
            rows.push((
                name,
                median(sandbox),
                median(first),
                median(pss1),
                median(pss3),
                median(idle_cpu),
            ));
        }
        println!("\n{runs} runs each, medians");
        println!("| runtime | RunPodSandbox ms | first container running ms | PSS idle pod, 1 container MiB | PSS idle pod, 3 containers MiB | CPU of the idle 3-container pod, millicores |");
        println!("|---|---|---|---|---|---|");
        for (h, s, f, p1, p3, c) in &rows {
            println!("| {h} | {s:.0} | {f:.0} | {p1:.1} | {p3:.1} | {c:.0} |");
        }
        let (r, s) = (&rows[0], &rows[1]);
        println!(
            "| scute / runc | {:.1}× | {:.1}× | {:.1}× | {:.1}× |",
            s.1 / r.1,
            s.2 / r.2,
            s.3 / r.3,
            s.4 / r.4
        );
    });
}
