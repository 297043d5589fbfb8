# scute — VM-isolated containers for containerd.
#   make lab    set up everything, install scute into containerd, run `scute lab`
#   make test   the whole test suite (what CI runs)

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
VIRTIOFSD_VERSION := 1.13.2
DEB_PACKAGES := qemu-system-x86 containerd runc linux-image-cloud-amd64 busybox-static \
	containernetworking-plugins iptables libseccomp-dev libcap-ng-dev pkg-config iproute2 wrk crun \
	protobuf-compiler linux-source-6.1 xz-utils build-essential flex bison bc libelf-dev patch \
	docker.io podman conmon netavark aardvark-dns
SCUTE := target/release/scute

.PHONY: setup build assets test lint lab install critest bench fuzz clean

## Installs what is missing: Debian packages, virtiofsd, the guest assets.
setup:
	@scripts/setup.sh "$(DEB_PACKAGES)" "$(VIRTIOFSD_VERSION)"
	@$(MAKE) --no-print-directory assets

## The guest agent also with the size-optimized `agent` profile, static and
## not position-independent (no dynamic loader, no relocations at boot):
## `make assets` and `scute install` take that one (install.rs AGENT_TARGET).
AGENT_TARGET := x86_64-unknown-linux-gnu
build:
	$(CARGO) build --release --workspace
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
		$(CARGO) build --profile agent -p scute-agent --target $(AGENT_TARGET)

## scute's minimal kernel (compiled once, then only when its source or
## config fragment change) and Debian's, each with the agent's initramfs.
assets: build
	$(SCUTE) assets build --kernel scute
	$(SCUTE) assets build --kernel debian

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

test: setup lint
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --release --workspace; \
	else \
		$(CARGO) test --release --workspace -- --test-threads=2; \
	fi

## Binaries into $(PREFIX)/bin, /etc/scute/config.toml, runtime entry in containerd's config.
install: setup
	$(SCUTE) install --prefix $(PREFIX)

## The lab: runc vs scute (and any other runtime found), report in lab-report/.
lab: install
	@scripts/containerd-up.sh
	$(PREFIX)/bin/scute lab --out lab-report

## Kubernetes' CRI validation suite (critest v1.26.1) under runc and scute
## side by side (docs/conformance.md); results in /tmp/critest-out.
critest: install
	scripts/critest.sh

bench: setup
	$(SCUTE) bench start --runs 10
	@scripts/containerd-up.sh
	$(SCUTE) bench ctr --runs 10

## Long fuzzing runs of both decoders (the deterministic version is in `make test`).
## cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP enables them on this stable toolchain.
FUZZ_RUNS ?= 10000000
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in host_decoder agent_decoder; do \
		mkdir -p corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --release $$t corpus/$$t -- -runs=$(FUZZ_RUNS) -max_len=4096 || exit 1; \
	done

clean:
	$(CARGO) clean
