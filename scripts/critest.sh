#!/usr/bin/env bash
# Runs Kubernetes' CRI validation suite (critest from cri-tools, v1.26.1 by
# default) against containerd's CRI plugin, once per runtime handler (runc and
# scute by default), and compares the results.
#
# As root on Debian 12:   scripts/critest.sh
#
# Everything it needs runs privately and goes away at the end: a containerd of
# its own (own config, root, state and socket; a system containerd is left
# alone), a local image registry on 127.0.0.1 (Debian's docker-registry) that
# serves critest's test images, built here from Debian's busybox, under their
# real names (registry.k8s.io/..., gcr.io/..., docker.io/... are mirrored to
# it: no traffic leaves the host), and a CNI bridge network. scute runs with
# the installed config (or $SCUTE_CONFIG) and its pool of ready VMs off, so
# every scute pod boots its own VM.
#
# At the end it removes every pod, stops containerd and the registry, and
# checks that nothing is left: no shim, QEMU or virtiofsd of its pods, no
# scute state dir, cgroup or mount of its state, no bridge, IPAM lease or
# cached CNI result (what it had to remove by force is listed in
# cleanup.txt). critest's HostIpc specs leave shared memory segments on the
# host (`ipcmk`); those are removed too.
#
# Settings (environment):
#   CRI_TOOLS_SRC   cri-tools source: a git directory (bare or not) holding tag
#                   $CRI_TOOLS_VERSION, or a checkout of it. Default: the
#                   mirror at /work/.mirror/kubernetes-sigs+cri-tools/repo if
#                   present, else a clone of github.com/kubernetes-sigs/cri-tools.
#   CRI_TOOLS_VERSION  default v1.26.1
#   RUNTIMES        runtime handlers to test, default "runc scute"
#   OUT             results directory, default /tmp/critest-out
#   CACHE           build cache (critest, crictl, image helpers, registry
#                   storage), default /var/cache/scute-critest
#   CRITEST_SKIP    ginkgo skip regex, default "Image Manager" (image
#                   service only, the same for every runtime; its images are
#                   built too, and CRITEST_SKIP='image with digest' runs all
#                   of it but the spec that pulls a digest of gcr.io's image)
#   CRITEST_FOCUS   ginkgo focus regex, default none (all specs)
#   CRITEST_TIMEOUT whole-suite timeout per runtime, default 4h
#   CRITEST_SEED    ginkgo seed (same order for every runtime), default 1
#   REGISTRY_PORT   first port tried for the local registry, default 5000
#   CNI_SUBNET      the pod network, default 10.97.0.0/24
#
# Results in $OUT:
#   <runtime>/critest.log     critest's full output (ginkgo -v)
#   <runtime>/report.json     ginkgo JSON report; <runtime>/junit.xml
#   <runtime>/summary.txt     passed/failed/skipped counts and failed specs
#                             with the first lines of their failure
#   <runtime>/leftovers.txt   what the runtime left after critest's pods were
#                             removed (empty when nothing)
#   comparison.txt            every spec side by side, and the specs that
#                             pass under the first runtime but not another
#   containerd.log, registry.log, cleanup.txt
#
# Exit status: 0 when the suite ran for every runtime (whatever the specs
# did), non-zero when the setup failed.

set -euo pipefail

CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.26.1}
MIRROR=/work/.mirror/kubernetes-sigs+cri-tools/repo
if [ -z "${CRI_TOOLS_SRC:-}" ] && [ -d "$MIRROR" ]; then CRI_TOOLS_SRC=$MIRROR; fi
CRI_TOOLS_SRC=${CRI_TOOLS_SRC:-https://github.com/kubernetes-sigs/cri-tools}
RUNTIMES=${RUNTIMES:-"runc scute"}
OUT=${OUT:-/tmp/critest-out}
CACHE=${CACHE:-/var/cache/scute-critest}
CRITEST_SKIP=${CRITEST_SKIP-Image Manager}
CRITEST_FOCUS=${CRITEST_FOCUS:-}
CRITEST_TIMEOUT=${CRITEST_TIMEOUT:-4h}
CRITEST_SEED=${CRITEST_SEED:-1}
REGISTRY_PORT=${REGISTRY_PORT:-5000}
CNI_SUBNET=${CNI_SUBNET:-10.97.0.0/24}

# Private state: runtime state in /run, images and snapshots on disk. Both
# are removed at the end.
WORK=/run/scute-critest
ROOT=/var/lib/scute-critest
SOCK=$WORK/containerd.sock
NET=scute-critest            # CNI network and bridge name (<= 15 chars)
PAUSE_IMAGE=registry.k8s.io/pause:3.6

TOOLS=$CACHE/cri-tools-$CRI_TOOLS_VERSION
CRITEST=$TOOLS/critest
CRICTL=$TOOLS/crictl

T0=$(date +%s)
exec 3>&1   # the terminal, also from functions whose output is redirected
log() { printf '[critest.sh %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&3; }
die() { printf '[critest.sh %4ss] ERROR: %s\n' "$(($(date +%s) - T0))" "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

crictl() { "$CRICTL" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 120s "$@"; }

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------

install_packages() {
  local want=(golang-go docker-registry skopeo busybox-static containerd runc
              containernetworking-plugins iptables iproute2 util-linux jq curl git
              ca-certificates tar)
  local missing=() p
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# ---------------------------------------------------------------------------
# critest and crictl
# ---------------------------------------------------------------------------

build_cri_tools() {
  if [ -x "$CRITEST" ] && [ -x "$CRICTL" ]; then
    log "critest $CRI_TOOLS_VERSION: cached in $TOOLS"
    return
  fi
  local src=$TOOLS/src
  rm -rf "$src" && mkdir -p "$src"
  if [ -d "$CRI_TOOLS_SRC/cmd/critest" ]; then
    log "cri-tools source: checkout $CRI_TOOLS_SRC"
    cp -a "$CRI_TOOLS_SRC/." "$src/"
  elif [ -d "$CRI_TOOLS_SRC" ] && git -C "$CRI_TOOLS_SRC" rev-parse --git-dir >/dev/null 2>&1; then
    log "cri-tools source: $CRI_TOOLS_VERSION from git dir $CRI_TOOLS_SRC"
    git -C "$CRI_TOOLS_SRC" archive "$CRI_TOOLS_VERSION" | tar -x -C "$src"
  else
    log "cri-tools source: cloning $CRI_TOOLS_SRC at $CRI_TOOLS_VERSION"
    rm -rf "$src"
    git clone -q --depth 1 --branch "$CRI_TOOLS_VERSION" "$CRI_TOOLS_SRC" "$src"
  fi
  log "building critest and crictl (go $(go env GOVERSION); a few minutes on 2 cores)"
  ( cd "$src"
    export GOFLAGS=-mod=vendor GOPROXY=off GOCACHE=$CACHE/gocache GOPATH=$CACHE/gopath
    go test -c -o "$CRITEST.tmp" ./cmd/critest
    go build -o "$CRICTL.tmp" ./cmd/crictl )
  mv "$CRITEST.tmp" "$CRITEST"
  mv "$CRICTL.tmp" "$CRICTL"
  rm -rf "$src"
}

# ---------------------------------------------------------------------------
# Test images
#
# critest v1.26.1 uses, outside "Image Manager":
#   registry.k8s.io/e2e-test-images/busybox:1.29-2     the default image
#   registry.k8s.io/e2e-test-images/nginx:1.14-2       web server on :80; tests
#       read /var/run/nginx.pid, `pidof nginx`, "master process" in /proc/1/cmdline
#   gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64   the same on :12003
#   registry.k8s.io/e2e-test-images/httpd:2.4.39-4     web server on :80 that
#       logs "httpd -D FOREGROUND"
#   registry.k8s.io/e2e-test-images/nonewprivs:1.3     setuid-root program
#       printing "Effective uid: N"
#   gcr.io/k8s-staging-cri-tools/test-image-predefined-group   user 1000 in
#       group 50000
# and containerd's sandbox image registry.k8s.io/pause:3.6. "Image Manager"
# also pulls gcr.io/k8s-staging-cri-tools/test-image-*; those are built too
# (all but test-image-digest, whose pinned digest can't be reproduced).
#
# Every image is busybox-static plus what the test looks at; the three
# programs busybox has no applet for (pause, the nginx stand-in, nnp) are
# small static Go programs written below.
# ---------------------------------------------------------------------------

HELPERS=$CACHE/helpers

build_helpers() {
  if [ -x "$HELPERS/pause" ] && [ -x "$HELPERS/nginx" ] && [ -x "$HELPERS/nnp" ]; then return; fi
  log "building image helpers (pause, nginx stand-in, nnp)"
  mkdir -p "$HELPERS/src"
  cat >"$HELPERS/src/pause.go" <<'EOF'
// pause: the pod sandbox's process. Reaps children, exits 0 on INT/TERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
EOF
  cat >"$HELPERS/src/nginx.go" <<'EOF'
// A stand-in for nginx in critest's images: its process is named nginx
// (pidof), its command line reads "nginx: master process ...", it writes
// /var/run/nginx.pid and answers HTTP GET with 200 on $NGINX_PORT (80).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

const title = "nginx: master process nginx -g daemon off;"

func main() {
	if os.Args[0] != title {
		exe, err := os.Executable()
		if err != nil {
			log.Fatal(err)
		}
		log.Fatal(syscall.Exec(exe, []string{title}, os.Environ()))
	}
	port := os.Getenv("NGINX_PORT")
	if port == "" {
		port = "80"
	}
	_ = os.MkdirAll("/var/run", 0o755)
	if err := os.WriteFile("/var/run/nginx.pid", []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
		log.Print(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	go func() {
		<-sigs
		os.Exit(0)
	}()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "<html><body><h1>Welcome to nginx!</h1></body></html>")
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
EOF
  cat >"$HELPERS/src/nnp.go" <<'EOF'
// nnp (Kubernetes' nonewprivs image): installed setuid root, prints its euid.
package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("Effective uid: %d\n", os.Geteuid()) }
EOF
  local p
  for p in pause nginx nnp; do
    ( cd "$HELPERS/src" && CGO_ENABLED=0 GOFLAGS='' GOPROXY=off GOCACHE=$CACHE/gocache \
        go build -trimpath -ldflags='-s -w' -o "$HELPERS/$p" "$p.go" )
  done
}

IMGWORK=$CACHE/images

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Adds file $1 to layout $2 as a blob; prints its sha256.
add_blob() {
  local d
  d=$(sha "$1")
  mkdir -p "$2/blobs/sha256"
  mv -f "$1" "$2/blobs/sha256/$d"
  echo "$d"
}

# An uncompressed, reproducible layer tar of directory $1, added to layout $2.
layer() {
  local tmp=$2/layer.tmp
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$tmp" .
  add_blob "$tmp" "$2"
}

# Debian's dynamically linked busybox (package busybox, only unpacked: it
# conflicts with busybox-static). busybox-static is built with the
# "standalone shell" (sh runs applets without looking at PATH), so
# `sh -c ls` would not notice that MaskedPaths masked /bin/ls; the image's
# busybox, like this one, runs /bin/ls.
BUSYBOX_DEB=$CACHE/busybox-deb

fetch_busybox() {
  [ -x "$BUSYBOX_DEB/root/bin/busybox" ] && return 0
  rm -rf "$BUSYBOX_DEB"; mkdir -p "$BUSYBOX_DEB"
  if ( cd "$BUSYBOX_DEB" && apt-get download -q busybox >/dev/null 2>&1 ); then
    dpkg -x "$BUSYBOX_DEB"/busybox_*.deb "$BUSYBOX_DEB/root"
  else
    log "warning: could not download Debian's busybox package; using busybox-static (MaskedPaths will fail)"
  fi
}

# The busybox base rootfs in $1, laid out as the busybox image: every
# applet a hard link of /bin/busybox in /bin (MaskedPaths masks /bin/ls and
# expects /bin/sh to keep working), and its users and groups (root,
# www-data, nobody, ...). Debian's busybox has no pgrep and no ipcs, which
# critest runs: small shell stand-ins over /proc take their place.
base_rootfs() {
  local r=$1 a l
  rm -rf "$r"
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,tmp,var/run,var/www,home,proc,sys,dev}
  chmod 1777 "$r/tmp"
  if [ -x "$BUSYBOX_DEB/root/bin/busybox" ]; then
    cp "$BUSYBOX_DEB/root/bin/busybox" "$r/bin/busybox"
    # its libraries (glibc), from the host
    for l in $(ldd "$r/bin/busybox" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      mkdir -p "$r$(dirname "$l")"; cp -L "$l" "$r$l"
    done
  else
    cp /bin/busybox "$r/bin/busybox"
  fi
  "$r/bin/busybox" --list | while read -r a; do
    [ -e "$r/bin/$a" ] || ln "$r/bin/busybox" "$r/bin/$a"
  done
  cat >"$r/bin/pgrep" <<'EOF'
#!/bin/sh
# pgrep PATTERN: pids of the processes whose name matches PATTERN.
found=1
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = $$ ] && continue
  name=$(cat "$d/comm" 2>/dev/null) || continue
  if echo "$name" | grep -q -e "$1"; then echo "$pid"; found=0; fi
done
exit $found
EOF
  cat >"$r/bin/ipcs" <<'EOF'
#!/bin/sh
# ipcs [-m]: the IPC namespace's shared memory segments.
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
  printf '%-10s %-10s %-10s %-10s %-10s %-10s\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
EOF
  chmod 755 "$r/bin/pgrep" "$r/bin/ipcs"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
EOF
  : >"$r/etc/hostname"; : >"$r/etc/hosts"; : >"$r/etc/resolv.conf"
}

PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# make_image NAME:TAG LAYOUT-DIR CONFIG-JSON LAYER-DIGEST...
# Writes an OCI layout holding one image whose config's "config" member is
# CONFIG-JSON, tagged TAG.
make_image() {
  local ref=$1 L=$2 cfg=$3; shift 3
  local tag=${ref##*:} diffs cfgd mand l
  diffs=$(printf '"sha256:%s",' "$@"); diffs="[${diffs%,}]"
  jq -n --argjson c "$cfg" --argjson d "$diffs" \
    '{architecture:"amd64", os:"linux", config:$c, rootfs:{type:"layers", diff_ids:$d}}' >"$L/c.tmp"
  local csize; csize=$(stat -c %s "$L/c.tmp"); cfgd=$(add_blob "$L/c.tmp" "$L")
  local layers="["
  for l in "$@"; do
    layers+=$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s},' \
      "$l" "$(stat -c %s "$L/blobs/sha256/$l")")
  done
  layers="${layers%,}]"
  jq -n --arg cd "sha256:$cfgd" --argjson cs "$csize" --argjson ls "$layers" \
    '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$cd, size:$cs},
      layers:$ls}' >"$L/m.tmp"
  local msize; msize=$(stat -c %s "$L/m.tmp"); mand=$(add_blob "$L/m.tmp" "$L")
  echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
  jq -n --arg d "sha256:$mand" --argjson s "$msize" --arg t "$tag" \
    '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",
      digest:$d, size:$s, annotations:{"org.opencontainers.image.ref.name":$t}}]}' >"$L/index.json"
}

# push LAYOUT TAG REPO-PATH: pushes to the local registry as REPO-PATH:TAG.
push() {
  skopeo --insecure-policy copy -q --dest-tls-verify=false \
    "oci:$1:$2" "docker://127.0.0.1:$REG_PORT/$3:$2" >/dev/null
}

# image REF CONFIG-JSON [EXTRA-ROOTFS-DIR]: builds REF (busybox base, plus a
# layer of EXTRA-ROOTFS-DIR) and pushes it under REF's path in the registry
# (registry.k8s.io/a/b:t -> 127.0.0.1:PORT/a/b:t).
image() {
  local ref=$1 cfg=$2 extra=${3:-}
  local name=${ref%:*} tag=${ref##*:}
  local path=${name#*/}
  local L=$IMGWORK/layouts/${path//\//_}_$tag
  rm -rf "$L"; mkdir -p "$L/blobs/sha256"
  ln "$IMGWORK/base.tar" "$L/blobs/sha256/$BASE" 2>/dev/null || cp "$IMGWORK/base.tar" "$L/blobs/sha256/$BASE"
  if [ -n "$extra" ]; then
    local x; x=$(layer "$extra" "$L")
    make_image "$ref" "$L" "$cfg" "$BASE" "$x"
  else
    make_image "$ref" "$L" "$cfg" "$BASE"
  fi
  push "$L" "$tag" "$path"
}

cfg() { # cfg CMD-JSON [USER] [ENTRYPOINT-JSON] [EXTRA-ENV]
  local envs; envs=$(printf '%s\n' "$PATH_ENV" ${4:+"$4"} | jq -R . | jq -s .)
  jq -nc --argjson cmd "$1" --arg user "${2:-}" --argjson ep "${3:-null}" --argjson env "$envs" \
    '{Env:$env, Cmd:$cmd, WorkingDir:"/"} + (if $user != "" then {User:$user} else {} end)
     + (if $ep != null then {Entrypoint:$ep} else {} end)'
}

build_images() {
  log "building test images and pushing them to 127.0.0.1:$REG_PORT"
  mkdir -p "$IMGWORK"
  local R=$IMGWORK/rootfs X=$IMGWORK/extra
  base_rootfs "$R"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$R" -cf "$IMGWORK/base.tar" .
  BASE=$(sha "$IMGWORK/base.tar")

  local k8s=registry.k8s.io/e2e-test-images gcr=gcr.io/k8s-staging-cri-tools

  image "$k8s/busybox:1.29-2" "$(cfg '["sh"]')"
  image docker.io/library/busybox:latest "$(cfg '["sh"]')"

  # pause: /pause as 65535:65535, no environment, as the real one.
  rm -rf "$X"; mkdir -p "$X"; cp "$HELPERS/pause" "$X/pause"
  image "$PAUSE_IMAGE" '{"Entrypoint":["/pause"],"User":"65535:65535","WorkingDir":"/"}' "$X"

  rm -rf "$X"; mkdir -p "$X/usr/sbin" "$X/var/run"; cp "$HELPERS/nginx" "$X/usr/sbin/nginx"
  image "$k8s/nginx:1.14-2" "$(cfg '["nginx","-g","daemon off;"]')" "$X"
  image "$gcr/hostnet-nginx-amd64:latest" "$(cfg '["nginx","-g","daemon off;"]' "" null NGINX_PORT=12003)" "$X"

  rm -rf "$X"; mkdir -p "$X/usr/local/bin" "$X/usr/local/apache2/htdocs"
  echo '<html><body><h1>It works!</h1></body></html>' >"$X/usr/local/apache2/htdocs/index.html"
  cat >"$X/usr/local/bin/httpd-foreground" <<'EOF'
#!/bin/sh
# busybox httpd, logging what Apache's httpd image logs at start.
echo "[mpm_event:notice] [pid $$:tid 1] AH00489: Apache/2.4.39 (Unix) configured -- resuming normal operations" >&2
echo "[core:notice] [pid $$:tid 1] AH00094: Command line: 'httpd -D FOREGROUND'" >&2
exec httpd -f -p 80 -h /usr/local/apache2/htdocs
EOF
  chmod 755 "$X/usr/local/bin/httpd-foreground"
  image "$k8s/httpd:2.4.39-4" "$(cfg '["httpd-foreground"]')" "$X"

  rm -rf "$X"; mkdir -p "$X/usr/local/bin"; install -m 4755 "$HELPERS/nnp" "$X/usr/local/bin/nnp"
  image "$k8s/nonewprivs:1.3" "$(cfg null "" '["/usr/local/bin/nnp"]')" "$X"

  # user default-user (1000) in group group-defined-in-image (50000), USER 1000
  rm -rf "$X"; mkdir -p "$X/etc" "$X/home/default-user"
  cp "$R/etc/passwd" "$R/etc/group" "$X/etc/"
  echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$X/etc/passwd"
  printf '%s\n' 'default-user:x:1000:' 'group-defined-in-image:x:50000:default-user' >>"$X/etc/group"
  image "$gcr/test-image-predefined-group:latest" "$(cfg '["sh"]' 1000)" "$X"

  # "Image Manager"'s images (skipped by default).
  local u
  for u in test-image-user-uid=1002 test-image-user-username=www-data \
           test-image-user-uid-group=1003:1004 test-image-user-username-group=www-data:1004; do
    image "$gcr/${u%%=*}:latest" "$(cfg '["sh"]' "${u#*=}")"
  done
  local t
  for t in test-image-1:latest test-image-2:latest test-image-3:latest test-image-latest:latest \
           test-image-tag:test test-image-tag:all; do
    rm -rf "$X"; mkdir -p "$X"; echo "$t" >"$X/${t//:/-}"
    image "$gcr/$t" "$(cfg '["sh"]')" "$X"
  done
  rm -rf "$X"; mkdir -p "$X"; : >"$X/same-image"
  for t in 1 2 3; do image "$gcr/test-image-tags:$t" "$(cfg '["sh"]')" "$X"; done
  rm -rf "$X"
}

# ---------------------------------------------------------------------------
# Registry, containerd
# ---------------------------------------------------------------------------

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

start_registry() {
  REG_PORT=$REGISTRY_PORT
  while ! port_free "$REG_PORT"; do
    REG_PORT=$((REG_PORT + 1))
    [ "$REG_PORT" -lt $((REGISTRY_PORT + 100)) ] || die "no free port for the registry from $REGISTRY_PORT"
  done
  mkdir -p "$CACHE/registry"
  cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $CACHE/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOF
  docker-registry serve "$WORK/registry.yml" >>"$OUT/registry.log" 2>&1 &
  echo $! >"$WORK/registry.pid"
  local _
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && { log "registry on 127.0.0.1:$REG_PORT (pid $(cat "$WORK/registry.pid"))"; return; }
    sleep 0.2
  done
  die "registry did not come up; see $OUT/registry.log"
}

write_containerd_config() {
  mkdir -p "$WORK/cni" "$WORK/certs.d" "$ROOT"
  local h
  # Every registry critest names is served by ours, and only by ours (the
  # [host] table is what 1.6 reads; `server`, its fallback, is ours too).
  for h in registry.k8s.io gcr.io docker.io k8s.gcr.io; do
    mkdir -p "$WORK/certs.d/$h"
    cat >"$WORK/certs.d/$h/hosts.toml" <<EOF
server = "http://127.0.0.1:$REG_PORT"
[host."http://127.0.0.1:$REG_PORT"]
  capabilities = ["pull", "resolve"]
EOF
  done
  jq -n --arg n "$NET" --arg s "$CNI_SUBNET" '{
    cniVersion:"1.0.0", name:$n,
    plugins:[
      {type:"bridge", bridge:$n, isGateway:true, ipMasq:false, hairpinMode:true,
       ipam:{type:"host-local", ranges:[[{subnet:$s}]], routes:[{dst:"0.0.0.0/0"}]}},
      {type:"portmap", capabilities:{portMappings:true}}]}' >"$WORK/cni/10-$NET.conflist"
  # restrict_oom_score_adj: some hosts refuse lowering oom_score_adj, which
  # the CRI plugin does for sandboxes otherwise.
  cat >"$WORK/config.toml" <<EOF
version = 2
root = "$ROOT/root"
state = "$WORK/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ROOT/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$WORK/runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.scute]
      runtime_type = "io.containerd.scute.v2"
      pod_annotations = ["io.scute.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$WORK/certs.d"
EOF
  # scute: the installed config, with its pool of ready VMs off: every pod
  # boots its own VM, and no VM of a system pool is handed to these pods.
  local base=${SCUTE_CONFIG:-/etc/scute/config.toml}
  if [ -f "$base" ]; then
    awk '/^\[/ { skip = ($0 ~ /^\[pool(\]|\.)/) } !skip' "$base" >"$WORK/scute.toml"
  else
    : >"$WORK/scute.toml"
  fi
  printf '\n[pool]\nsize = 0\n' >>"$WORK/scute.toml"
}

start_containerd() {
  write_containerd_config
  log "starting containerd $(containerd --version | awk '{print $3}') on $SOCK"
  SCUTE_CONFIG=$WORK/scute.toml PATH=/usr/local/bin:$PATH \
    containerd --config "$WORK/config.toml" >>"$WORK/containerd.log" 2>&1 &
  echo $! >"$WORK/containerd.pid"
  local _
  for _ in $(seq 1 150); do
    crictl info >/dev/null 2>&1 && return
    kill -0 "$(cat "$WORK/containerd.pid")" 2>/dev/null || die "containerd exited; see $WORK/containerd.log (copied to $OUT)"
    sleep 0.2
  done
  die "containerd did not come up; see $WORK/containerd.log (copied to $OUT)"
}

# ---------------------------------------------------------------------------
# Cleanup and leftovers
# ---------------------------------------------------------------------------

# Every process as "pid command line", into file $1 (a snapshot: nothing
# that later greps it shows up in it).
ps_snapshot() { ps -ww -eo pid=,args= | sed 's/^ *//' >"$1"; }

# Pids in snapshot $1 whose command line contains $2.
pids_in() { grep -F -- "$2" "$1" | cut -d' ' -f1 || true; }

# Sandbox and container ids the private containerd has handed out: the
# 64-hex-digit words of its log (not digests, which follow "sha256:"), and
# the task directories in its state.
sandbox_ids() {
  {
    grep -o '\(^\|[^:0-9a-f]\)[0-9a-f]\{64\}' "$WORK/containerd.log" 2>/dev/null | grep -o '[0-9a-f]\{64\}$'
    ls "$WORK/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null
  } | grep -x '[0-9a-f]\{64\}' | sort -u
  return 0
}

# scute's state_dir in the config its shims get.
scute_state_dir() {
  local d
  d=$(sed -n 's/^state_dir *= *"\(.*\)"/\1/p' "$WORK/scute.toml" 2>/dev/null | tail -1)
  echo "${d:-/run/scute}"
}

# cgroup directories named after those ids (runc's, and scute's VMM's).
id_cgroups() {
  local id c
  for id in $(sandbox_ids); do
    for c in /sys/fs/cgroup/k8s.io/"$id" /sys/fs/cgroup/*/k8s.io/"$id"; do
      [ -d "$c" ] && echo "$c"
    done
  done
  return 0
}

# Prints what is left of pods, containers and VMs (none when clean).
leftovers() {
  local ps=$WORK/ps.txt ids=$WORK/ids.txt id
  if [ -S "$SOCK" ] && [ -e "$WORK/containerd.pid" ] && kill -0 "$(cat "$WORK/containerd.pid")" 2>/dev/null; then
    crictl pods -q 2>/dev/null | sed 's/^/pod (CRI): /' || true
    crictl ps -aq 2>/dev/null | sed 's/^/container (CRI): /' || true
  fi
  ps_snapshot "$ps"
  sandbox_ids >"$ids"
  # Shims (a runc shim's containers are its children), then any other
  # process naming one of our pods or containers (scute's QEMU, virtiofsd).
  grep -F -- "-address $SOCK" "$ps" | cut -c1-200 | sed 's/^/shim: /' || true
  if [ -s "$ids" ]; then
    grep -F -f "$ids" "$ps" | grep -vF -- "-address $SOCK" | cut -c1-200 | sed 's/^/process of our pods: /' || true
  fi
  local st; st=$(scute_state_dir)
  while read -r id; do
    if [ -e "$st/$id" ]; then echo "scute state dir: $st/$id"; fi
  done <"$ids"
  id_cgroups | sed 's/^/cgroup: /'
  awk -v w="$WORK" -v r="$ROOT" '$5 ~ "^(" w "|" r ")/" { print "mount: " $5 }' /proc/self/mountinfo | sort -u | head -50
  return 0
}

kill_pids() { # SIGTERM, then SIGKILL after $1 seconds
  local secs=$1; shift
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  local _
  for _ in $(seq 1 $((secs * 5))); do
    local alive=0 p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.2
  done
  kill -9 "$@" 2>/dev/null || true
}

# The CNI portmap plugin's shared nat chains: created on first use and never
# removed. Removed here when they did not exist before this run and hold no
# mapping any more.
HOSTPORT_CHAINS="CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ"
note_hostport_chains() {
  iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && touch "$WORK/hostport-chains.existed"
  return 0
}
remove_hostport_chains() {
  [ -e "$WORK/hostport-chains.existed" ] && return 0
  iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 || return 0
  if [ "$(iptables -t nat -S CNI-HOSTPORT-DNAT | wc -l)" -gt 1 ]; then
    echo "kept portmap's chains: CNI-HOSTPORT-DNAT still holds mappings"; return 0
  fi
  iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
  iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
  iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
  local c
  for c in $HOSTPORT_CHAINS; do iptables -t nat -F "$c"; done
  for c in $HOSTPORT_CHAINS; do iptables -t nat -X "$c"; done
  echo "removed portmap's chains ($HOSTPORT_CHAINS)"
}

remove_pods() {
  crictl rmp --force --all >/dev/null 2>&1 || true
  crictl rm --force --all >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -d "$WORK" ] || { exit "$rc"; }
  mkdir -p "$OUT"
  local report=$OUT/cleanup.txt
  log "cleaning up"
  {
    echo "# cleanup $(date -Is)"
    if [ -e "$WORK/containerd.pid" ] && kill -0 "$(cat "$WORK/containerd.pid")" 2>/dev/null; then
      remove_pods
      kill_pids 10 "$(cat "$WORK/containerd.pid")"
    fi
    echo "## left after removing every pod and stopping containerd:"
    leftovers
    # Forced cleanup of whatever is left: shims (scute's are asked to
    # delete their sandbox, as containerd does for a dead shim), the
    # processes of our sandboxes, mounts, network.
    local p id ps=$WORK/ps.txt
    ps_snapshot "$ps"
    for p in $(pids_in "$ps" "-address $SOCK"); do
      local cmd; cmd=$(grep "^$p " "$ps" | cut -d' ' -f2-)
      local d; for d in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill -9 "$d" 2>/dev/null; done
      kill -9 "$p" 2>/dev/null
      if [[ $cmd == *containerd-shim-scute-v2* ]]; then
        local sid ns; sid=$(sed -n 's/.* -id \([^ ]*\).*/\1/p' <<<"$cmd"); ns=$(sed -n 's/.* -namespace \([^ ]*\).*/\1/p' <<<"$cmd")
        local b=$WORK/state/io.containerd.runtime.v2.task/$ns/$sid
        ( cd "$([ -d "$b" ] && echo "$b" || echo /)" && NAMESPACE=$ns GRPC_ADDRESS=$SOCK TTRPC_ADDRESS=$SOCK.ttrpc \
            SCUTE_CONFIG=$WORK/scute.toml containerd-shim-scute-v2 -namespace "$ns" -address "$SOCK" -id "$sid" -bundle "$b" delete ) >/dev/null 2>&1 \
          && echo "forced: scute shim delete for $sid" || echo "forced: scute shim delete for $sid FAILED"
      fi
    done
    ps_snapshot "$ps"
    for id in $(sandbox_ids); do
      for p in $(pids_in "$ps" "$id"); do echo "forced: kill $(grep "^$p " "$ps" | cut -c1-200)"; kill -9 "$p" 2>/dev/null; done
    done
    awk -v w="$WORK" -v r="$ROOT" '$5 ~ "^(" w "|" r ")(/|$)" { print $5 }' /proc/self/mountinfo | sort -ru \
      | while read -r m; do umount -l "$m" 2>/dev/null; done
    ip link del "$NET" 2>/dev/null && echo "removed bridge $NET"
    # CNI's on-disk state: host-local's leases, cached results (left when
    # a pod was never torn down), and portmap's chains if they are ours.
    rm -rf "/var/lib/cni/networks/$NET" "/var/lib/cni/results/$NET-"* 2>/dev/null
    for id in $(sandbox_ids); do rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null; done
    remove_hostport_chains
    # critest's HostIpc specs create shared memory segments on the host
    # (`ipcmk -M 1048576`) and never remove them.
    if [ -e "$WORK/shm.before" ]; then
      ipcs -m | awk '$6 == 0 && $5 == 1048576 { print $2 }' | sort >"$WORK/shm.after"
      for id in $(comm -13 "$WORK/shm.before" "$WORK/shm.after"); do ipcrm -m "$id" && echo "removed critest's shm segment $id"; done
    fi
    if [ -e "$WORK/registry.pid" ]; then kill_pids 5 "$(cat "$WORK/registry.pid")"; fi
    for c in $(id_cgroups); do rmdir "$c" 2>/dev/null && echo "removed cgroup $c"; done
    local ids st; ids=$(sandbox_ids); st=$(scute_state_dir)
    cp "$WORK/containerd.log" "$OUT/containerd.log" 2>/dev/null
    rm -rf "$WORK" "$ROOT"
    echo "## after forced cleanup:"
    local left=0
    ps_snapshot /tmp/critest-ps.$$
    for id in $ids; do
      for p in $(pids_in /tmp/critest-ps.$$ "$id"); do echo "STILL RUNNING: $p"; left=1; done
      if [ -e "$st/$id" ]; then echo "STILL THERE: $st/$id"; left=1; fi
    done
    rm -f /tmp/critest-ps.$$
    [ -e "$WORK" ] && { echo "STILL THERE: $WORK"; left=1; }
    grep -q " $WORK\| $ROOT" /proc/self/mountinfo && { echo "STILL MOUNTED under $WORK or $ROOT"; left=1; }
    [ $left = 0 ] && echo "nothing left"
  } >>"$report" 2>&1
  sed 's/^/    /' "$report" | tail -n +2 >&3
  exit "$rc"
}

# ---------------------------------------------------------------------------
# Running critest, summaries
# ---------------------------------------------------------------------------

# Reads a ginkgo -v stream; prints one line per finished spec.
progress() {
  awk -v rt="$1" '
    /^\[k8s\.io\]/ { name = $0; next }
    /^• \[FAILED\]|^• \[PANICKED\]|^• \[TIMEDOUT\]|^• \[INTERRUPTED\]/ { n++; printf "  %-5s %3d %-7s %s\n", rt, n, "FAIL", name; fflush(); next }
    /^• \[[0-9.]+ seconds\]/ { n++; t = $2; gsub(/\[/, "", t); printf "  %-5s %3d %-7s %s (%d s)\n", rt, n, "ok", name, t; fflush(); next }
    /^S \[SKIPPED\]/ { n++; printf "  %-5s %3d %-7s %s\n", rt, n, "skipped", name; fflush(); next }
  '
}

# Spec states from a ginkgo JSON report, as "state<TAB>name<TAB>message".
spec_states() {
  jq -r '.[0].SpecReports[] | select(.LeafNodeType == "It")
    | [ (if .State == "passed" or .State == "skipped" or .State == "pending" then .State else "failed" end),
        ((.ContainerHierarchyTexts + [.LeafNodeText]) | join(" ")),
        ((.Failure.Message // "") | gsub("\\s+"; " ") | .[0:400]) ] | @tsv' "$1"
}

summarize() {
  local rt=$1 d=$OUT/$1
  [ -s "$d/report.json" ] || { echo "no report for $rt" >"$d/summary.txt"; return; }
  spec_states "$d/report.json" | sort -t$'\t' -k2 >"$d/states.tsv"
  {
    echo "runtime handler: $rt"
    printf 'passed %d  failed %d  skipped %d  (%d specs; skipped includes the ones filtered out)\n' \
      "$(grep -c '^passed' "$d/states.tsv")" "$(grep -c '^failed' "$d/states.tsv")" \
      "$(grep -c '^skipped' "$d/states.tsv")" "$(wc -l <"$d/states.tsv")"
    echo
    echo "failed specs:"
    awk -F'\t' '$1 == "failed" { print "- " $2; print "    " $3 }' "$d/states.tsv"
  } >"$d/summary.txt"
}

compare() {
  local first=${RT_LIST[0]} rt
  {
    echo "# critest $CRI_TOOLS_VERSION: ${RT_LIST[*]}"
    for rt in "${RT_LIST[@]}"; do sed -n 2p "$OUT/$rt/summary.txt" | sed "s/^/$rt: /"; done
    echo
    echo "## every spec (ok / FAIL / skip)"
    local files=() hdr="spec"
    for rt in "${RT_LIST[@]}"; do files+=("$OUT/$rt/states.tsv"); hdr+=$'\t'$rt; done
    echo "$hdr"
    awk -F'\t' -v n="${#RT_LIST[@]}" '
      FNR == 1 { f++ }
      { st[$2, f] = ($1 == "passed" ? "ok" : $1 == "failed" ? "FAIL" : "skip"); names[$2] = 1 }
      END { for (s in names) { line = s; for (i = 1; i <= n; i++) line = line "\t" ((s, i) in st ? st[s, i] : "-"); print line } }
    ' "${files[@]}" | sort
    # Specs in state $2 under runtime $1 and failed under $3, with $3's
    # failure line.
    failed_against() {
      join -t$'\t' -j1 \
        <(awk -F'\t' -v s="$2" '$1 == s { print $2 }' "$OUT/$1/states.tsv" | sort) \
        <(awk -F'\t' '$1 == "failed" { print $2 "\t" $3 }' "$OUT/$3/states.tsv" | sort) \
        | awk -F'\t' '{ print "- " $1; print "    " $2 }'
    }
    for rt in "${RT_LIST[@]:1}"; do
      echo
      echo "## pass under $first, fail under $rt"
      failed_against "$first" passed "$rt"
      echo
      echo "## fail under both $first and $rt"
      failed_against "$first" failed "$rt"
      echo
      echo "## fail under $first, pass under $rt"
      join -t$'\t' -j1 \
        <(awk -F'\t' '$1 == "failed" { print $2 }' "$OUT/$first/states.tsv" | sort) \
        <(awk -F'\t' '$1 == "passed" { print $2 }' "$OUT/$rt/states.tsv" | sort) | sed 's/^/- /'
    done
  } >"$OUT/comparison.txt"
}

run_critest() {
  local rt=$1 d=$OUT/$1
  rm -rf "$d"; mkdir -p "$d"
  local args=(
    -runtime-endpoint "unix://$SOCK" -image-endpoint "unix://$SOCK"
    -runtime-handler "$rt"
    -ginkgo.v -ginkgo.no-color -ginkgo.seed "$CRITEST_SEED" -ginkgo.timeout "$CRITEST_TIMEOUT"
    -ginkgo.poll-progress-after 5m -ginkgo.poll-progress-interval 5m
    -ginkgo.json-report "$d/report.json" -ginkgo.junit-report "$d/junit.xml"
  )
  [ -n "$CRITEST_SKIP" ] && args+=(-ginkgo.skip "$CRITEST_SKIP")
  [ -n "$CRITEST_FOCUS" ] && args+=(-ginkgo.focus "$CRITEST_FOCUS")
  printf '%q ' "$CRITEST" "${args[@]}" >"$d/command.txt"; echo >>"$d/command.txt"
  log "critest, runtime handler $rt (log: $d/critest.log)"
  local t; t=$(date +%s)
  # critest's http.Get must reach pod IPs directly. It runs in the OUT dir:
  # some specs write files in the working directory.
  set +e
  ( cd "$d" && env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY \
      "$CRITEST" "${args[@]}" ) 2>&1 | tee "$d/critest.log" | progress "$rt"
  local rc=${PIPESTATUS[0]}
  set -e
  log "critest $rt finished in $(($(date +%s) - t)) s (exit status $rc)"
  summarize "$rt"
  sed -n 2p "$d/summary.txt" | sed "s/^/    $rt: /"
  # What the runtime left once critest removed its pods, then a clean slate
  # for the next runtime.
  sleep 2
  leftovers >"$d/leftovers.txt"
  if [ -s "$d/leftovers.txt" ]; then
    log "left behind by $rt after critest (see $d/leftovers.txt):"; sed 's/^/    /' "$d/leftovers.txt" | head -20
  fi
  remove_pods
}

# ---------------------------------------------------------------------------

main() {
  install_packages
  mkdir -p "$OUT" "$CACHE"
  # A previous run that was killed: clean its remains first.
  if [ -d "$WORK" ] || [ -d "$ROOT" ]; then
    log "cleaning up after an earlier run"
    rm -rf "$OUT/earlier-run"
    # cleanup writes into $OUT: point it elsewhere for this one call only.
    mkdir -p "$OUT/earlier-run"
    ( OUT=$OUT/earlier-run cleanup ) || true
  fi
  rm -rf "$OUT"/{containerd.log,registry.log,cleanup.txt,comparison.txt}
  mkdir -p "$WORK"
  note_hostport_chains
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM

  RT_LIST=()
  local rt
  for rt in $RUNTIMES; do
    case $rt in
      runc) command -v containerd-shim-runc-v2 >/dev/null || { log "skipping runc: containerd-shim-runc-v2 not found"; continue; } ;;
      scute) [ -x /usr/local/bin/containerd-shim-scute-v2 ] || command -v containerd-shim-scute-v2 >/dev/null \
               || { log "skipping scute: containerd-shim-scute-v2 not installed (scute install)"; continue; } ;;
      *) log "unknown runtime handler $rt: containerd's config has runc and scute"; continue ;;
    esac
    RT_LIST+=("$rt")
  done
  [ ${#RT_LIST[@]} -gt 0 ] || die "no runtime to test"

  local port
  for port in 12000 12001 12002 12003; do
    port_free "$port" || log "warning: port $port is in use; critest's port-mapping specs need it"
  done

  build_cri_tools
  build_helpers
  fetch_busybox
  start_registry
  build_images
  start_containerd
  log "pre-pulling the pause image"
  crictl pull "$PAUSE_IMAGE" >/dev/null
  ipcs -m | awk '$6 == 0 && $5 == 1048576 { print $2 }' | sort >"$WORK/shm.before"

  for rt in "${RT_LIST[@]}"; do run_critest "$rt"; done

  compare
  log "results in $OUT: per runtime summary.txt, comparison.txt"
  for rt in "${RT_LIST[@]}"; do sed -n 2p "$OUT/$rt/summary.txt" | sed "s/^/    $rt: /"; done
  if [ ${#RT_LIST[@]} -gt 1 ]; then
    local n; n=$(awk '/^## pass under/ { on = 1; next } /^## / { on = 0 } on && /^- / { c++ } END { print c + 0 }' "$OUT/comparison.txt")
    log "$n spec(s) pass under ${RT_LIST[0]} and fail under another runtime (comparison.txt)"
  fi
}

main "$@"
