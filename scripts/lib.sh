# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/demo. Source it; don't run it.
#
#   berth_need_root        fail loudly unless running as uid 0
#   berth_apt_packages     install the Debian packages berth's tests/demo need
#   berth_need_cargo       find cargo (rustup toolchain) or fail with a hint
#   berth_need_lint_tools  rustfmt and clippy (rustup components), added if missing
#   berth_load_modules     modprobe the kernel modules tests use (best effort)
#   berth_target_dir       print cargo's target directory for this workspace

# The Debian packages the test suite and the demo use:
#   iproute2 nftables iptables   ip/nft at run time; iptables for the reference
#                                plugins' ipMasq
#   containernetworking-plugins  the reference plugins in /usr/lib/cni
#   busybox-static               ping/nc inside namespaces; rootfs for images
#   iperf3                       datapath throughput between namespaces
#   jq                           JSON in scripts
#   kmod                         modprobe (br_netfilter for the Docker-host test)
#   e2fsprogs                    mkfs.ext4 for berthd's size-limited volumes
#   docker.io                    a real Docker engine for tests/docker_volumes.rs
#                                (started by the test itself, privately)
#   podman runc                  a real CNI client (libcni) for tests/podman.rs;
#                                runc named explicitly, as --no-install-recommends
#                                would pick crun, which fails on hybrid cgroups
#   etcd-server etcd-client      etcd for berth-overlay's cluster store; etcdctl
#                                (only suggested by etcd-server) for the tests
#   procps                       pgrep/pkill in the portmap tests (absent from
#                                minimal images)
#   containerd                   containerd 1.6 with its CRI plugin for
#                                tests/cri.rs (started by the test itself,
#                                privately; also pulled in by docker.io)
#   protobuf-compiler            protoc, run by the k8s-cri crate's build (the
#                                CRI gRPC client of tests/cri.rs)
#   openssl ca-certificates      the certificates of the TLS etcd tests and the
#                                bench's etcd part; the system's trusted roots
#   prometheus                   promtool check metrics, on berth's metrics
#                                (its server is never started)
#   strace                       shows that berth's plugins and reconciler
#                                exec nothing (tests/no_exec.rs)
BERTH_APT_PACKAGES=(iproute2 nftables iptables containernetworking-plugins
    busybox-static iperf3 jq kmod podman runc e2fsprogs docker.io etcd-server
    etcd-client procps containerd protobuf-compiler openssl ca-certificates
    prometheus strace)

berth_log() {
    printf '==> %s\n' "$*" >&2
}

berth_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

berth_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        berth_die "$(basename "$0") must run as root (it creates network namespaces,
bridges, veths and nftables rules, and installs apt packages).
Run it as root, or with sudo keeping your Rust toolchain reachable, e.g.:
    sudo -E env \"PATH=\$PATH\" $0"
    fi
}

# Installs the packages that are not installed yet. A warm machine (all
# present) never touches apt.
berth_apt_packages() {
    local missing=() pkg status
    if ! command -v dpkg-query >/dev/null 2>&1; then
        berth_log "dpkg-query not found: not a Debian system; not installing packages"
        berth_log "make sure these (or equivalents) are installed: ${BERTH_APT_PACKAGES[*]}"
        return 0
    fi
    for pkg in "${BERTH_APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [ "$status" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        berth_log "apt packages present: ${BERTH_APT_PACKAGES[*]}"
        return 0
    fi
    berth_log "installing missing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || berth_die "apt-get update failed"
    # Packages with services (docker.io) must not start them: tests start
    # their own, privately. policy-rc.d answering 101 is Debian's way.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
    fi
    local rc=0
    apt-get install -y --no-install-recommends "${missing[@]}" || rc=$?
    if [ "$made_policy" = 1 ]; then
        rm -f "$policy"
    fi
    [ "$rc" -eq 0 ] || berth_die "apt-get install failed for: ${missing[*]}"
}

# Makes `cargo` callable. The toolchain comes from rustup (Debian's own cargo
# is older than the workspace's rust-version). Under sudo, PATH is reset, so
# also look in root's and the invoking user's ~/.cargo/bin.
berth_need_cargo() {
    local home user_home=""
    if [ -n "${SUDO_USER:-}" ]; then
        user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6 || true)
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        for home in "${HOME:-}" /root "$user_home"; do
            if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
                berth_log "using the rustup toolchain in $home"
                export PATH="$home/.cargo/bin:$PATH"
                if [ "$home" != "${HOME:-}" ]; then
                    export CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
                    export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
                fi
                break
            fi
        done
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        berth_die "cargo not found. berth builds with a rustup-managed Rust toolchain
(Debian's packaged cargo is too old for this workspace). Install it with rustup
(see https://rustup.rs), e.g.
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
then put ~/.cargo/bin on PATH (or run: . ~/.cargo/env) and try again."
    fi
    if ! cargo --version >/dev/null 2>&1; then
        berth_die "cargo is on PATH but does not run (no default toolchain?). Try: rustup default stable"
    fi
    berth_log "toolchain: $(cargo --version), $(rustc --version 2>/dev/null || echo 'rustc ?')"
}

# The house style is checked by cargo fmt and cargo clippy: both are rustup
# components a minimal toolchain may lack.
berth_need_lint_tools() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    command -v rustup >/dev/null 2>&1 ||
        berth_die "cargo ${missing[*]} missing and no rustup to add them: install the ${missing[*]} component(s)"
    berth_log "adding toolchain components: ${missing[*]}"
    rustup component add "${missing[@]}" || berth_die "rustup component add ${missing[*]} failed"
}

# veth, bridge, nf_tables and vxlan may be built into the kernel (or modprobe
# may be absent): failures are fine. br_netfilter is deliberately NOT loaded:
# it would push bridged traffic through the host's iptables/nftables.
berth_load_modules() {
    if command -v modprobe >/dev/null 2>&1; then
        modprobe -a veth bridge nf_tables vxlan nf_conntrack_netlink >/dev/null 2>&1 || true
        # The Docker-host test needs br_netfilter, as dockerd loads it. Bridged
        # traffic in the host's namespace then passes the host's forward
        # hooks too, which accept it on a test machine (no dockerd runs there).
        modprobe br_netfilter >/dev/null 2>&1 || true
    fi
}

berth_target_dir() {
    cargo metadata --format-version 1 --no-deps | jq -r .target_directory
}
