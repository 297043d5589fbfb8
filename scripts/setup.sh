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

have_virtiofsd() {
  for v in "$(command -v virtiofsd || true)" /usr/local/bin/virtiofsd "$HOME/.cargo/bin/virtiofsd"; do
    [ -n "$v" ] && [ -x "$v" ] && "$v" --version 2>/dev/null | grep -q "$virtiofsd_version" && return 0
  done
  return 1
}
if ! have_virtiofsd; then
  echo "setup: building virtiofsd $virtiofsd_version (cargo install, a few minutes)"
  cargo install virtiofsd --locked --version "$virtiofsd_version" --root /usr/local
fi
echo "setup: host packages and virtiofsd ready"
