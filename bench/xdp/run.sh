#!/usr/bin/env bash
# Micro-benchmark of the XDP program: BPF_PROG_TEST_RUN on DHCP frames (iPXE and UEFI PXE
# DISCOVER and REQUEST from a reserved host, a relayed DISCOVER, an unknown MAC, a non-DHCP
# datagram), printing the kernel's own measure of nanoseconds per packet. Runs inside a
# network namespace the benchmark creates and removes; nothing is sent anywhere.
#
# Usage: bench/xdp/run.sh [RUNS]     (as root; RUNS per frame, default 200000)
# Knobs: CPU=0 (core to pin the runs to)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (BPF_PROG_TEST_RUN, network namespaces)" >&2; exit 2; }
cd "$ROOT"
# The eBPF object first, then the benchmark with it embedded (as `cargo xtask build` does).
cargo xtask build --release >/dev/null
BOOTFABRIC_EBPF_OBJECT="$ROOT/target/bpf/bpfel-unknown-none/release/bootfabric-xdp" \
  cargo build --release --quiet -p bootfabric-lab --bin xdp_prog_bench
echo "$(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
taskset -c "${CPU:-0}" "$ROOT/target/release/xdp_prog_bench" "${1:-200000}"
