#!/bin/bash
# A/B of what the guest runs on: QEMU's binary or its TCG `-cpu` string.
# For each variant in turn (ROUNDS rounds, interleaved), the pool is
# restarted so that its VMs boot with it, then:
#   node_ready_s  the Node.js app's own start in a pool VM (scripts/node-ready.sh
#                 through `ctr run --rm`, image scute-node:test)
#   node_req_s    that app through Docker (`-p 127.0.0.1:3999:3000`), `wrk -t1 -c8
#                 -d10s` after a 10 s warm-up of the same load
#   httpd_req_s   busybox httpd the same way (scute-busybox, 127.0.0.1:3998)
# Traffic goes to 127.0.0.1 only; each load is 10 s.
#
# usage: scripts/ab-guest.sh ROUNDS VARIANT_A VARIANT_B
#   VARIANT: qemu=PATH  (a QEMU binary; qemu_path for the pool and the runs)
#            cpu=STRING (the system QEMU with TCG's `-cpu STRING` instead of
#                        scute's; done by a wrapper that rewrites the argument)
# Needs: scute installed (/etc/scute/config.toml, a `[pool]`), containerd and
# dockerd running with the scute runtime, the two images, wrk. Restores
# qemu_path and restarts the pool with it at the end.
set -u
R=$1; A=$2; B=$3
cfg=/etc/scute/config.toml
orig=$(sed -n 's/^qemu_path = "\(.*\)"/\1/p' $cfg)
sys_qemu=${orig:-/usr/bin/qemu-system-x86_64}
wrap_dir=/usr/local/lib/scute-ab   # inside what the VMM's jail can read
here=$(cd "$(dirname "$0")" && pwd)

qemu_for() { # variant -> QEMU path
  case $1 in
    qemu=*) echo "${1#qemu=}" ;;
    cpu=*)
      mkdir -p $wrap_dir
      local w=$wrap_dir/qemu-cpu-$(echo "${1#cpu=}" | md5sum | cut -c1-8)
      cat > "$w" <<W
#!/bin/sh
# scripts/ab-guest.sh: $sys_qemu with -cpu ${1#cpu=} under TCG
n=\$#; i=0; prev=
for a in "\$@"; do
  i=\$((i+1))
  if [ "\$prev" = "-cpu" ] && [ "\$a" != host ]; then a="${1#cpu=}"; fi
  prev=\$a; set -- "\$@" "\$a"
done
shift \$n
exec $sys_qemu "\$@"
W
      chmod 755 "$w"; echo "$w" ;;
    *) echo "variant $1: give qemu=PATH or cpu=STRING" >&2; exit 2 ;;
  esac
}

pool() { # qemu path
  pkill -TERM -f "scute --config $cfg pool$"; sleep 2
  sed -i "s#^qemu_path = .*#qemu_path = \"$1\"#" $cfg
  local n0; n0=$(wc -l </var/log/scute-pool.log)
  (setsid nohup /usr/local/bin/scute --config $cfg pool >>/var/log/scute-pool.log 2>&1 &)
  for _ in $(seq 60); do
    [ "$(tail -n +$((n0+1)) /var/log/scute-pool.log | grep -c 'ready in')" -ge 2 ] && break
    sleep 1
  done
  sleep 2
}

serve() { # name host:container-port image [args]; prints req/s
  local n=$1 p=$2; shift 2
  local hp=${p%%:*}
  docker rm -f "$n" >/dev/null 2>&1
  docker run -d --name "$n" --runtime scute -p "127.0.0.1:$p" "$@" >/dev/null
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$hp/" && break; sleep 0.3; done
  wrk -t1 -c8 -d10s "http://127.0.0.1:$hp/" >/dev/null 2>&1
  wrk -t1 -c8 -d10s "http://127.0.0.1:$hp/" | awk '/Requests\/sec/{print $2}'
  docker rm -f "$n" >/dev/null 2>&1
}

for r in $(seq "$R"); do
  for v in "$A" "$B"; do
    q=$(qemu_for "$v") || exit 2
    pool "$q"
    rd=$(ctr run --rm --runtime io.containerd.scute.v2 \
      --mount "type=bind,src=$here/node-ready.sh,dst=/nr.sh,options=rbind:ro" \
      docker.io/library/scute-node:test "ab-$$-$r" /nr.sh | awk '{print $3-$2}')
    node=$(serve ab-node 3999:3000 scute-node:test)
    pool "$q"
    httpd=$(serve ab-httpd 3998:8080 scute-busybox sh -c \
      "mkdir -p /w && echo hi > /w/index.html && exec httpd -f -p 8080 -h /w")
    echo "round $r $v node_ready_s=${rd:-failed} node_req_s=$node httpd_req_s=$httpd"
  done
done
pool "$sys_qemu"
sed -i "s#^qemu_path = .*#qemu_path = \"$orig\"#" $cfg
