#!/usr/bin/env python3
"""Where a container's start and teardown go, from the shim's log lines.

Reads containerd's log (the shim's lines land there) and prints, for each
sandbox whose id contains PATTERN, the ms between the shim's steps:
create -> VM ready (adopted or booted) -> created -> started -> exited ->
deleted -> shim gone. Medians at the end.

usage: scripts/shim-phases.py PATTERN [LOG]   (LOG: /var/log/scute-containerd.log)
"""
import re
import statistics
import sys
from datetime import datetime

STEPS = [
    ("create", r'msg="create sandbox_id=(\S+) '),
    ("vm", r'msg="sandbox ready: \S+ .*?sandbox_id=(\S+)'),
    ("created", r'msg="created sandbox_id=(\S+) '),
    ("started", r'msg="started sandbox_id=(\S+) '),
    ("exited", r'msg="exited sandbox_id=(\S+) container_id=\S+ exec_id=\\"\\" '),
    ("deleted", r'msg="deleted sandbox_id=(\S+) '),
    ("gone", r'msg="shim disconnected" id=(\S+)'),
]


def stamp(line):
    m = re.match(r'time="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z?"', line)
    if not m:
        return None
    frac = ((m.group(2) or "") + "000000")[:6]
    return datetime.fromisoformat(f"{m.group(1)}.{frac}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pattern = sys.argv[1]
    log = sys.argv[2] if len(sys.argv) > 2 else "/var/log/scute-containerd.log"
    runs = {}
    with open(log, errors="replace") as f:
        for line in f:
            if pattern not in line:
                continue
            t = stamp(line)
            for name, rx in STEPS:
                m = re.search(rx, line)
                if m and pattern in m.group(1) and t:
                    runs.setdefault(m.group(1), {}).setdefault(name, t)
    names = [n for n, _ in STEPS]
    gaps = {f"{a}->{b}": [] for a, b in zip(names, names[1:])}
    print("sandbox " + " ".join(f"{k:>17}" for k in gaps) + "    total")
    for sid, r in runs.items():
        row = []
        for a, b in zip(names, names[1:]):
            if a in r and b in r:
                ms = (r[b] - r[a]).total_seconds() * 1000
                gaps[f"{a}->{b}"].append(ms)
                row.append(f"{ms:17.1f}")
            else:
                row.append(f"{'-':>17}")
        total = (r["gone"] - r["create"]).total_seconds() * 1000 if "gone" in r and "create" in r else float("nan")
        print(f"{sid[-12:]:>12} " + " ".join(row) + f" {total:8.1f}")
    print("median       " + " ".join(
        f"{statistics.median(v):17.1f}" if v else f"{'-':>17}" for v in gaps.values()))


if __name__ == "__main__":
    main()
