#!/usr/bin/env python3
"""N idle scute containers at once: host memory and CPU per sandbox.

Starts N detached `sleep` containers (scute-busybox) through ctr one after
the other, lets them idle 30 s, then prints the PSS of everything each
sandbox holds on the host (its shim's process tree and, for a sandbox on a
VM from the pool, the pool member's tree that runs its QEMU and
virtiofsd), the CPU all of it uses over 20 s idle, and whether every
tenth container still answers `ctr task exec`. Removes them all at the
end, also when interrupted.

usage: scripts/density.py N      (containerd and `scute install` done)
"""
import glob
import json
import os
import subprocess
import sys
import time

RUNTIME = "io.containerd.scute.v2"
IMAGE = "docker.io/library/scute-busybox:latest"


def ppid_of(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children():
    kids = {}
    for p in glob.glob("/proc/[0-9]*"):
        pid = int(p.rsplit("/", 1)[1])
        pp = ppid_of(pid)
        if pp is not None:
            kids.setdefault(pp, []).append(pid)
    return kids


def tree(pid, kids):
    out, todo = [], [pid]
    while todo:
        x = todo.pop()
        out.append(x)
        todo += kids.get(x, [])
    return out


def shim_of(cid):
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            c = open(p, "rb").read().split(b"\0")
        except OSError:
            continue
        if c and c[0].endswith(b"containerd-shim-scute-v2") and cid.encode() in c:
            return int(p.split("/")[2])
    return None


def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        return 0


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit() or not 0 < int(sys.argv[1]) <= 500:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    ids = [f"density-{os.getpid()}-{i}" for i in range(n)]
    try:
        t0 = time.time()
        for i, cid in enumerate(ids):
            subprocess.run(["ctr", "run", "-d", "--runtime", RUNTIME, IMAGE, cid, "sleep", "100000"],
                           check=True, stdout=subprocess.DEVNULL, timeout=120)
            if (i + 1) % 10 == 0 or i + 1 == n:
                print(f"{i + 1}/{n} started, {time.time() - t0:.0f} s", flush=True)
        print(f"started at {n / (time.time() - t0):.2f}/s; idling 30 s", flush=True)
        time.sleep(30)
        kids = children()
        pids, pooled = set(), 0
        for cid in ids:
            shim = shim_of(cid)
            if shim is None:
                sys.exit(f"no shim for {cid}")
            mine = set(tree(shim, kids))
            vmm = json.load(open(f"/run/scute/{cid}/state.json"))["vmm_pid"]
            if vmm not in mine:
                # A VM from the pool: its member process holds QEMU and virtiofsd.
                pooled += 1
                mine |= set(tree(ppid_of(vmm), kids))
            pids |= mine
        total = sum(pss_kib(p) for p in pids) / 1024
        print(f"{n} sandboxes ({pooled} on pool VMs), {len(pids)} host processes")
        print(f"PSS {total:.1f} MiB, {total / n:.1f} MiB per sandbox")
        c0 = sum(cpu_ticks(p) for p in pids)
        time.sleep(20)
        c1 = sum(cpu_ticks(p) for p in pids)
        hz = os.sysconf("SC_CLK_TCK")
        print(f"idle CPU {(c1 - c0) / hz / 20 * 1000 / n:.2f} millicores per sandbox")
        probe = ids[:: max(1, n // 10)]
        ok = sum(subprocess.run(["ctr", "task", "exec", "--exec-id", "probe", cid, "true"],
                                capture_output=True, timeout=60).returncode == 0 for cid in probe)
        print(f"exec answered in {ok} of {len(probe)}")
    finally:
        for cid in ids:
            subprocess.run(["ctr", "task", "kill", "-s", "KILL", cid], capture_output=True, timeout=60)
        for cid in ids:
            subprocess.run(["ctr", "task", "rm", "-f", cid], capture_output=True, timeout=60)
            subprocess.run(["ctr", "container", "rm", cid], capture_output=True, timeout=60)
        print("removed", flush=True)


if __name__ == "__main__":
    main()
