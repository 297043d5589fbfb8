#!/bin/bash
# A/B of what the guest runs on: QEMU's binary, its arguments, the guest
# kernel's parameters or the host's huge pages for guest memory.
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
#            sed=EXPR   (the system QEMU with every argument passed through
#                        `sed EXPR`, e.g. 's/^virtio-net-device,/&rx_queue_size=1024,/')
#            extra=ARGS (the system QEMU with ARGS, split at spaces, added to its
#                        command line, e.g. '-global virtio-mmio.ioeventfd=off')
#            kparams=S  (kernel_params = "S" in the config: the guest kernel's
#                        extra parameters, `sysctl.NAME=VALUE` among them)
#            thp=MODE   (the host's /sys/kernel/mm/transparent_hugepage/
#                        shmem_enabled: guest memory is a shared memfd, which
#                        gets huge pages only with advise/always)
#            base       (scute as configured)
# Needs: scute installed (/etc/scute/config.toml, a `[pool]`), containerd and
# dockerd running with the scute runtime, the two images, wrk. Restores
# qemu_path, kernel_params and shmem_enabled and restarts the pool at the end.
set -u
R=$1; A=$2; B=$3
cfg=/etc/scute/config.toml
orig=$(sed -n 's/^qemu_path = "\(.*\)"/\1/p' $cfg)
orig_kp=$(sed -n 's/^kernel_params = "\(.*\)"/\1/p' $cfg)
thp_file=/sys/kernel/mm/transparent_hugepage/shmem_enabled
orig_thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' $thp_file)
sys_qemu=${orig:-/usr/bin/qemu-system-x86_64}
wrap_dir=/usr/local/lib/scute-ab   # inside what the VMM's jail can read
here=$(cd "$(dirname "$0")" && pwd)

wrapper() { # name, what it changes, the line that runs QEMU -> its path
  mkdir -p $wrap_dir
  local w=$wrap_dir/qemu-$1-$(printf '%s' "$2" | md5sum | cut -c1-8)
  printf '#!/bin/sh\n# scripts/ab-guest.sh: %s with %s\n%s\n' "$sys_qemu" "$2" "$3" > "$w"
  chmod 755 "$w"; echo "$w"
}

sed_wrapper() { # sed expression -> a QEMU that gets every argument through it
  mkdir -p $wrap_dir
  local f; f=$wrap_dir/$(printf '%s' "$1" | md5sum | cut -c1-8).sed
  printf '%s\n' "$1" > "$f"
  wrapper sed "each argument through sed -f $f" 'n=$#
for a in "$@"; do set -- "$@" "$(printf "%s\\n" "$a" | sed -f '"$f"')"; done
shift $n
exec '"$sys_qemu"' "$@"'
}

qemu_for() { # variant -> QEMU path
  case $1 in
    qemu=*) echo "${1#qemu=}" ;;
    # TCG's -cpu value is `max` or `max,<features>` (KVM's is `host`).
    cpu=*) sed_wrapper "s/^max\(,.*\)\{0,1\}\$/${1#cpu=}/" ;;
    sed=*) sed_wrapper "${1#sed=}" ;;
    extra=*) wrapper extra "${1#extra=}" "exec $sys_qemu \"\$@\" ${1#extra=}" ;;
    kparams=*|thp=*|base) echo "$sys_qemu" ;;
    *) echo "variant $1: give qemu=, cpu=, sed=, extra=, kparams=, thp= or base" >&2; exit 2 ;;
  esac
}

host_for() { # variant: kernel_params and shmem_enabled for it
  local kp=$orig_kp thp=$orig_thp
  case $1 in kparams=*) kp=${1#kparams=} ;; thp=*) thp=${1#thp=} ;; esac
  sed -i "s#^kernel_params = .*#kernel_params = \"$kp\"#" $cfg
  echo "$thp" > $thp_file
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
    host_for "$v"
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
host_for base
pool "$sys_qemu"
sed -i "s#^qemu_path = .*#qemu_path = \"$orig\"#" $cfg
