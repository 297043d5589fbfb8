#!/usr/bin/env bash
# Installs what scute needs on Debian 12, skipping what is already there.
# usage: setup.sh "<debian packages>" <virtiofsd version>
set -euo pipefail
packages=$1
virtiofsd_version=$2

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (installs Debian packages and writes /var/lib/scute)" >&2
  exit 1
fi

missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# virtiofsd links these native libraries: say which Debian package is missing
# now, rather than after a two-minute compile fails in the linker.
check_native_libs() {
  local lib pkg missing=()
  for pair in libseccomp:libseccomp-dev libcap-ng:libcap-ng-dev; do
    lib=${pair%%:*} pkg=${pair#*:}
    pkg-config --exists "$lib" 2>/dev/null || missing+=("$pkg (pkg-config: $lib)")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: virtiofsd cannot be built: missing ${missing[*]}" >&2
    echo "setup: install them with: apt-get install ${missing[*]%% *}, or add them to DEB_PACKAGES in the Makefile" >&2
    exit 1
  fi
}

have_virtiofsd() {
  for v in "$(command -v virtiofsd || true)" /usr/local/bin/virtiofsd "$HOME/.cargo/bin/virtiofsd"; do
    [ -n "$v" ] && [ -x "$v" ] && "$v" --version 2>/dev/null | grep -q "$virtiofsd_version" && return 0
  done
  return 1
}
if ! have_virtiofsd; then
  command -v pkg-config >/dev/null || { echo "setup: pkg-config is missing: apt-get install pkg-config" >&2; exit 1; }
  check_native_libs
  echo "setup: building virtiofsd $virtiofsd_version (cargo install, a few minutes)"
  cargo install virtiofsd --locked --version "$virtiofsd_version" --root /usr/local
fi
echo "setup: host packages and virtiofsd ready"
