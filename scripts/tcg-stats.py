#!/usr/bin/env python3
"""TCG's own statistics for a running sandbox, from QEMU's monitor.

The monitor exists only when scute runs with `debug = true` (it controls
the whole VM): each VMM then serves it on `vmm/monitor.sock` in its state
dir. Give a sandbox id (a pool VM's too); prints the answer to `info jit`
(translated blocks, translation-cache size and flushes, invalidations by
self-modifying code), or to the HMP command given.

usage: scripts/tcg-stats.py ID [HMP COMMAND...]     e.g. ... ID info profile
"""
import json
import os
import re
import socket
import sys


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


def ask(path, command):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    buf = b""
    while not buf.endswith(b"(qemu) "):
        buf += s.recv(4096)
    s.sendall(command.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    text = buf.decode(errors="replace").replace("\r", "")
    lines = text.split("\n")[1:]  # the echoed command
    return "\n".join(l for l in lines if not l.startswith("(qemu)")).strip()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    command = " ".join(sys.argv[2:]) or "info jit"
    print(ask(monitor_of(sys.argv[1]), command))


if __name__ == "__main__":
    main()
