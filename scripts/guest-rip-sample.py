#!/usr/bin/env python3
"""Where a TCG guest's vCPU is: samples `info registers` through QEMU's
monitor (scute with `debug = true`; see scripts/tcg-stats.py) and counts
user mode, kernel mode and halted (idle: waiting for I/O).

usage: scripts/guest-rip-sample.py MONITOR_SOCKET SECONDS
"""
import socket, sys, time, re, collections
path=sys.argv[1]; secs=float(sys.argv[2])
s=socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(5)
def rd():
    b=b""
    while not b.endswith(b"(qemu) "):
        b+=s.recv(65536)
    return b.decode(errors="replace")
rd()
c=collections.Counter(); n=0; t0=time.time()
while time.time()-t0<secs:
    s.sendall(b"info registers\n"); out=rd()
    m=re.search(r"RIP=([0-9a-f]+).*?CPL=(\d).*?HLT=(\d)", out, re.S)
    if not m: continue
    rip,cpl,hlt=m.groups(); n+=1
    if hlt=="1": c["idle"]+=1
    elif cpl=="0": c["kernel"]+=1
    else: c["user"]+=1
    time.sleep(0.005)
print(n, {k: f"{100*v/n:.0f}%" for k,v in c.items()})
