#!/bin/sh
# Builds the Node.js workload image the lab's figures for the seed's
# workload use: the host's node with its libraries, json-server 0.17 from
# npm (a REST app on port 3000 serving a small db.json), busybox for a
# shell. Loads it into Docker (and, with --ctr, containerd's default
# namespace) as scute-node:test. Needs node, npm (npm's registry) and
# busybox on the host.
#   scripts/node-app-image.sh [--ctr]
#   scute lab --engine docker --image scute-node:test --port 3000 ...
set -eu
IMAGE=scute-node:test
work=$(mktemp -d /var/tmp/scute-node-XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/app" "$root/tmp" "$root/etc"
node=$(command -v node) || { echo "node not found: apt-get install nodejs" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found: apt-get install npm" >&2; exit 1; }
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh ls cat echo sleep wget; do ln -s busybox "$root/bin/$a"; done
mkdir -p "$root/usr/bin"
cp "$node" "$root/usr/bin/node"
# node's shared libraries and the loader, at the paths ldd names.
ldd "$node" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
(cd "$root/app" && npm install --no-audit --no-fund --loglevel=error json-server@0.17.4 >/dev/null)
cat > "$root/app/db.json" <<'JSON'
{ "posts": [ { "id": 1, "title": "scute", "author": "lab" } ], "comments": [], "profile": { "name": "lab" } }
JSON
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import \
    --change 'WORKDIR /app' \
    --change 'ENV PATH=/usr/bin:/bin' \
    --change 'EXPOSE 3000' \
    --change 'CMD ["/usr/bin/node", "/app/node_modules/json-server/lib/cli/bin.js", "--host", "0.0.0.0", "--port", "3000", "/app/db.json"]' \
    - "$IMAGE" >/dev/null
echo "built $IMAGE ($(du -sh "$root" | cut -f1)): $("$node" --version), json-server 0.17.4"
if [ "${1:-}" = "--ctr" ]; then
    docker save "$IMAGE" | ctr -n default images import - >/dev/null
    echo "imported into containerd as docker.io/library/$IMAGE"
fi
