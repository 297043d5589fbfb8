#!/usr/bin/env bash
# The demo lab until `scute lab` exists: setup evidence, the same image under
# runc and scute through containerd, and the start-time benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
scute=${SCUTE:-/usr/local/bin/scute}

echo "== setup evidence"
echo "shim:       $(command -v containerd-shim-scute-v2) ($(containerd-shim-scute-v2 --version))"
echo "containerd: $(containerd --version)"
echo "runtime entry in /etc/containerd/config.toml:"
grep -A1 'runtimes.scute\]' /etc/containerd/config.toml | sed 's/^/    /'
"$scute" check || true
scripts/containerd-up.sh

echo
echo "== the same image under runc and scute (ctr run --rm)"
image=docker.io/library/scute-busybox:latest
if ! ctr images ls -q | grep -qx "$image"; then
  tar=$(mktemp --suffix=.tar)
  target/release/scute-make-image "$tar" >/dev/null
  ctr images import "$tar" >/dev/null
  rm -f "$tar"
fi
probe='echo "kernel: $(uname -r)"; echo "cpu:   $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)"; echo "/proc entries: $(ls /proc | wc -l)"'
echo "-- host";  echo "kernel: $(uname -r)"
echo "-- runc";  ctr run --rm "$image" "lab-runc-$$" sh -c "$probe"
echo "-- scute"; ctr run --rm --runtime io.containerd.scute.v2 "$image" "lab-scute-$$" sh -c "$probe"

echo
echo "== start time, 10 runs each"
"$scute" bench start --runs 10
"$scute" bench ctr --runs 10
