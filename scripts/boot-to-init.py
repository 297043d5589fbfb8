#!/usr/bin/env python3
"""Wall time from spawning QEMU to the guest kernel's "Run /init", with
scute's machine and kernel command line but no devices (the agent then
stops for want of its ports). For A/B tests of kernel parameters and CPU
flags under TCG, where one run moves by tens of ms:

  scripts/boot-to-init.py --runs 15 --cpu max,-erms,-fsrm --append "noreplace-smp"

Prints one line per run (wall s, guest s of "Run /init") and the medians.
"""
import argparse, os, re, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--cpu", default="max,-erms,-fsrm")
ap.add_argument("--append", default="", help="extra kernel parameters")
ap.add_argument("--assets", default="/var/lib/scute/assets")
ap.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary to A/B")
ap.add_argument("--timeout", type=float, default=10.0)
a = ap.parse_args()

khz = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            khz = f" tsc_early_khz={int(float(line.split(':')[1]) * 1000)}"
            break
except OSError:
    pass
params = ("console=ttyS0 reboot=t panic=-1 rdinit=/init tsc=reliable no_timer_check "
          "cryptomgr.notests random.trust_cpu=on i8042.noaux i8042.nopnp i8042.nokbd "
          "loglevel=7" + khz + " " + a.append).strip()
walls, guests = [], []
with tempfile.TemporaryDirectory() as d:
    log = os.path.join(d, "console.log")
    for i in range(a.runs):
        if os.path.exists(log):
            os.unlink(log)
        t0 = time.monotonic()
        p = subprocess.Popen(
            [a.qemu, "-machine",
             "microvm,x-option-roms=on,rtc=on,isa-serial=on,memory-backend=mem,acpi=off",
             "-accel", "tcg,tb-size=64", "-cpu", a.cpu, "-smp", "1", "-m", "256M",
             "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
             "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
             "-kernel", f"{a.assets}/vmlinux", "-initrd", f"{a.assets}/initrd-scute.img",
             "-append", params, "-serial", f"file:{log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = None
        try:
            while time.monotonic() - t0 < a.timeout:
                text = open(log, errors="replace").read() if os.path.exists(log) else ""
                m = re.search(r"\[ *([0-9.]+)\] Run /init", text)
                if m:
                    break
                time.sleep(0.002)
        finally:
            wall = time.monotonic() - t0
            p.kill()
            p.wait()
        if not m:
            raise SystemExit(f"run {i + 1}: no 'Run /init' within {a.timeout} s")
        walls.append(wall)
        guests.append(float(m.group(1)))
        print(f"run {i + 1}: wall {wall:.3f} s, guest {guests[-1]:.3f} s")
print(f"median: wall {statistics.median(walls):.3f} s, guest {statistics.median(guests):.3f} s "
      f"(qemu {a.qemu}, cpu {a.cpu}, extra: {a.append or 'none'})")
