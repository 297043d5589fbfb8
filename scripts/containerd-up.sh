#!/usr/bin/env bash
# Makes sure a containerd answers on the default socket: systemd's if there is
# one, else one started in the background with the system config.
set -euo pipefail
sock=/run/containerd/containerd.sock
if ctr --address "$sock" --timeout 2s version >/dev/null 2>&1; then
  exit 0
fi
if systemctl is-system-running >/dev/null 2>&1 || [ -d /run/systemd/system ]; then
  systemctl restart containerd
else
  echo "containerd-up: starting containerd in the background (log: /var/log/scute-containerd.log)"
  nohup containerd >>/var/log/scute-containerd.log 2>&1 &
fi
for _ in $(seq 1 100); do
  ctr --address "$sock" --timeout 2s version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "containerd-up: containerd did not come up; see /var/log/scute-containerd.log" >&2
exit 1
