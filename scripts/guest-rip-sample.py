#!/usr/bin/env python3
"""Where a TCG guest's vCPU is: samples `info registers` through QEMU's
monitor (scute with `debug = true`; see scripts/tcg-stats.py) and counts
user mode, kernel mode and halted (idle: waiting for I/O). With a
System.map (scute's kernel build leaves one in
/var/cache/scute/kernel/linux-source-*/), the kernel samples are also
counted by function.

usage: scripts/guest-rip-sample.py MONITOR_SOCKET SECONDS [SYSTEM_MAP]
"""
import bisect
import collections
import re
import socket
import sys
import time


def symbols(path):
    addrs, names = [], []
    for line in open(path):
        a, t, name = line.split()[:3]
        if t in "tTwW":
            addrs.append(int(a, 16))
            names.append(name)
    return addrs, names


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, secs = sys.argv[1], float(sys.argv[2])
    syms = symbols(sys.argv[3]) if len(sys.argv) > 3 else None
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(5)

    def read_prompt():
        b = b""
        while not b.endswith(b"(qemu) "):
            b += s.recv(65536)
        return b.decode(errors="replace")

    read_prompt()
    modes, funcs, n = collections.Counter(), collections.Counter(), 0
    t0 = time.time()
    while time.time() - t0 < secs:
        s.sendall(b"info registers\n")
        m = re.search(r"RIP=([0-9a-f]+).*?CPL=(\d).*?HLT=(\d)", read_prompt(), re.S)
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


if __name__ == "__main__":
    main()
