#!/usr/bin/env python3
"""TCG's own statistics for a running sandbox, from QEMU's monitor.

The monitor exists only when scute runs with `debug = true` (it controls
the whole VM): each VMM then serves it on `vmm/monitor.sock` in its state
dir. Give a sandbox id (a pool VM's too).

  scripts/tcg-stats.py ID [HMP COMMAND...]
      the answer to `info jit` (translated blocks, translation-cache size
      and flushes, invalidations by self-modifying code) or to the command
  scripts/tcg-stats.py ID sample SECONDS [SYSTEM_MAP]
      samples the vCPU through `info registers` and counts user mode,
      kernel mode and halted (idle: waiting for I/O); with a System.map
      (scute's kernel build leaves one in /var/cache/scute/kernel/
      linux-source-*/) also the kernel samples by function. Samples land
      where TCG writes the guest's RIP back (helpers, MMIO, exceptions),
      so MMIO sites are over-counted.
"""
import bisect
import collections
import json
import os
import re
import socket
import sys
import time


def monitor_of(sid):
    own = f"/run/scute/{sid}/vmm/monitor.sock"
    if os.path.exists(own):
        return own
    # A sandbox that adopted a pool VM: its VMM's command line names it.
    try:
        pid = json.load(open(f"/run/scute/{sid}/state.json"))["vmm_pid"]
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"no sandbox {sid}: {e}")
    for a, b in zip(cmd, cmd[1:]):
        if a == b"-monitor":
            m = re.match(rb"unix:([^,]+)", b)
            if m:
                return m.group(1).decode()
    sys.exit(f"sandbox {sid}'s VMM has no monitor: set debug = true in the scute config")


class Monitor:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self._prompt()

    def _prompt(self):
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = self.s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace").replace("\r", "")

    def ask(self, command):
        self.s.sendall(command.encode() + b"\n")
        lines = self._prompt().split("\n")[1:]  # the echoed command
        return "\n".join(l for l in lines if not l.startswith("(qemu)")).strip()


def symbols(path):
    addrs, names = [], []
    for line in open(path):
        a, t, name = line.split()[:3]
        if t in "tTwW":
            addrs.append(int(a, 16))
            names.append(name)
    return addrs, names


def sample(mon, secs, syms):
    modes, funcs, n = collections.Counter(), collections.Counter(), 0
    t0 = time.time()
    while time.time() - t0 < secs:
        m = re.search(r"RIP=([0-9a-f]+).*?CPL=(\d).*?HLT=(\d)", mon.ask("info registers"), re.S)
        if not m:
            continue
        rip, cpl, hlt = int(m.group(1), 16), m.group(2), m.group(3)
        n += 1
        if hlt == "1":
            modes["idle"] += 1
        elif cpl == "0":
            modes["kernel"] += 1
            if syms:
                i = bisect.bisect_right(syms[0], rip) - 1
                funcs[syms[1][i] if i >= 0 else "?"] += 1
        else:
            modes["user"] += 1
        time.sleep(0.005)
    if not n:
        sys.exit("no samples")
    print(f"{n} samples: " + ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in modes.most_common()))
    for name, v in funcs.most_common(25):
        print(f"{100 * v / n:5.1f}%  {name}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    mon = Monitor(monitor_of(sys.argv[1]))
    rest = sys.argv[2:]
    if rest[:1] == ["sample"] and len(rest) >= 2:
        syms = symbols(rest[2]) if len(rest) > 2 else None
        sample(mon, float(rest[1]), syms)
    else:
        print(mon.ask(" ".join(rest) or "info jit"))


if __name__ == "__main__":
    main()
