#!/usr/bin/env python3
"""Where the host's CPU goes while a container serves HTTP.

Usage: scripts/thread-cpu.py RUNTIME PORT [docker run options...]

Starts busybox httpd under `docker run --runtime RUNTIME -p
127.0.0.1:PORT:8080` (the test kit's scute-busybox image), waits for it,
then runs `wrk -t1 -c8 -d10s` against it (127.0.0.1 only, 10 s) and
prints the CPU seconds each thread of the container's processes (the
shim's tree: for scute the keeper, QEMU's vCPU and main threads,
virtiofsd) and of Docker's port proxy used meanwhile, with the host's
total and idle time. Removes the container afterwards.
"""
import collections
import os
import subprocess
import sys
import time

# IMAGE=... CPORT=... run that image's own command instead (e.g. the
# Node.js app of scripts/node-app-image.sh: IMAGE=scute-node:test CPORT=3000).
IMAGE = os.environ.get("IMAGE", "docker.io/library/scute-busybox:latest")
CPORT = int(os.environ.get("CPORT", "8080"))
HTTPD = ([] if "IMAGE" in os.environ else
         ["sh", "-c", "mkdir -p /w && echo hi > /w/index.html && exec httpd -f -p 8080 -h /w"])


def ppid(p):
    try:
        return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def tree(root):
    kids = collections.defaultdict(list)
    for p in os.listdir("/proc"):
        if p.isdigit():
            kids[ppid(int(p))].append(int(p))
    out, i = [root], 0
    while i < len(out):
        out += kids[out[i]]
        i += 1
    return out


def proxies(port):
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            c = open(f"/proc/{p}/cmdline").read()
        except OSError:
            continue
        if "docker-proxy" in c and f"-host-port\0{port}\0" in c:
            found.append(int(p))
    return found


def snapshot(shim, port):
    d = collections.Counter()
    for p in tree(shim) + proxies(port):
        try:
            comm = open(f"/proc/{p}/comm").read().strip()
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                st = open(f"/proc/{p}/task/{t}/stat").read()
            except OSError:
                continue
            name = st[st.index("(") + 1 : st.rindex(")")]
            f = st.rsplit(")", 1)[1].split()
            d[f"{comm}/{name}"] += int(f[11]) + int(f[12])
    cpu = open("/proc/stat").readline().split()[1:]
    d["_total"] = sum(map(int, cpu))
    d["_idle"] = int(cpu[3]) + int(cpu[4])
    return d


def main():
    rt, port, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    name = f"thread-cpu-{rt}-{os.getpid()}"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--runtime", rt, *extra,
         "-p", f"127.0.0.1:{port}:{CPORT}", IMAGE, *HTTPD],
        check=True, capture_output=True)
    started = time.time()
    ready = None
    try:
        for _ in range(300):
            if subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/"],
                              capture_output=True).returncode == 0:
                ready = time.time() - started
                break
            time.sleep(0.2)
        time.sleep(2)
        pid = int(subprocess.check_output(
            ["docker", "inspect", "-f", "{{.State.Pid}}", name]).strip())
        shim = ppid(pid)
        a = snapshot(shim, port)
        out = subprocess.run(["wrk", "-t1", "-c8", "-d10s", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=60).stdout
        b = snapshot(shim, port)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    hz = os.sysconf("SC_CLK_TCK")
    rps = [l.split()[-1] for l in out.splitlines() if "Requests/sec" in l]
    print(f"{rt} {' '.join(extra)}: ready after {ready or float('nan'):.2f} s, "
          f"{rps[0] if rps else '?'} req/s")
    print(f"  host: {(b['_total'] - a['_total']) / hz:.1f} CPU-s in 10 s, "
          f"idle {(b['_idle'] - a['_idle']) / hz:.1f}")
    for k in sorted(b, key=lambda k: a[k] - b[k]):
        v = (b[k] - a[k]) / hz
        if not k.startswith("_") and v >= 0.05:
            print(f"  {k:40s} {v:5.2f} CPU-s")


if __name__ == "__main__":
    main()
