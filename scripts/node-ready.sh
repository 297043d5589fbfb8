#!/bin/sh
# Runs inside a scute-node:test container (scripts/node-app-image.sh): starts
# json-server on 127.0.0.1:3000 and prints "ready T0 T1", the container's
# uptime clock at node's spawn and at the first 200 on / (polled every
# 0.2 s, at most 60 s). Measures the app's own start, without the
# container's; e.g.
#   ctr run --rm --runtime io.containerd.scute.v2 \
#     --mount type=bind,src=$PWD/scripts/node-ready.sh,dst=/nr.sh,options=rbind:ro \
#     docker.io/library/scute-node:test nr1 /nr.sh | awk '{print $3-$2}'
t0=$(cut -d' ' -f1 /proc/uptime)
/usr/bin/node /app/node_modules/json-server/lib/cli/bin.js --host 127.0.0.1 --port 3000 /app/db.json >/dev/null 2>&1 &
i=0
until wget -q -O /dev/null http://127.0.0.1:3000/ 2>/dev/null; do sleep 0.2; i=$((i+1)); [ $i -gt 300 ] && break; done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "ready $t0 $t1"
