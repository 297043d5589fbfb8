#!/usr/bin/env bash
# The demo lab until `scute lab` exists: host check, the same bundle under runc
# and under scute, and the start-time benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scute=${SCUTE:-/usr/local/bin/scute}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== scute check"
"$scute" check

echo
echo "== the same bundle under runc and under scute"
target/release/scute-make-bundle "$work/b" sh -c 'echo "kernel:  $(uname -r)"; echo "cpu:     $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)"; echo "procs:   $(ls /proc | grep -c "^[0-9]")"'
echo "-- host"
echo "kernel:  $(uname -r)"
echo "-- runc"
runc run --bundle "$work/b" "lab-runc-$$"
echo "-- scute"
"$scute" run --bundle "$work/b" "lab-scute-$$"

echo
echo "== cold start of true, 10 runs each"
"$scute" bench start --runs 10
