#!/usr/bin/env bash
# Micro-benchmark of the XDP program: BPF_PROG_TEST_RUN on DHCP frames (iPXE and UEFI PXE
# DISCOVER and REQUEST from a reserved host, a relayed DISCOVER, an unknown MAC, a non-DHCP
# datagram), printing the kernel's own measure of nanoseconds per packet. Runs inside a
# network namespace the benchmark creates and removes; nothing is sent anywhere.
#
# Usage: bench/xdp/run.sh [RUNS]     (as root; RUNS per frame, default 200000)
# Knobs: CPU=0 (core to pin the runs to), REPEAT=3 (runs of the whole benchmark in a row; the
#        table gives the median of their figures and the spread of the means),
#        RESULTS_DIR=/tmp/x (keep this run's results out of bench/results: smoke runs)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-200000}
CPU=${CPU:-0}
REPEAT=${REPEAT:-3}
[ "$(id -u)" = 0 ] || { echo "run as root (BPF_PROG_TEST_RUN, network namespaces)" >&2; exit 2; }
[ "$REPEAT" -ge 1 ] || { echo "REPEAT must be at least 1" >&2; exit 2; }
cd "$ROOT"
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"
# The eBPF object first, then the benchmark with it embedded (as `cargo xtask build` does).
cargo xtask build --release >/dev/null
BOOTFABRIC_EBPF_OBJECT="$ROOT/target/bpf/bpfel-unknown-none/release/bootfabric-xdp" \
  cargo build --release --quiet -p bootfabric-lab --bin xdp_prog_bench
results_open xdp RUNS CPU REPEAT
echo "$(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/bootfabric-xdp-bench.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
for i in $(seq 1 "$REPEAT"); do
  echo "run $i of $REPEAT:"
  taskset -c "$CPU" "$ROOT/target/release/xdp_prog_bench" "$RUNS" | tee "$OUT/run-$i.txt"
done
# One row per frame: the median over the runs of each figure, and the range of the means.
# xdp_prog_bench prints "<frame name> <mean> <median> <p99>" under a "frame ..." header.
{
  echo "| frame | mean ns | median ns | p99 ns | mean ns, range over $REPEAT runs |"
  echo "|---|---|---|---|---|"
  awk '
    function med(s,   a, n, i, j, t) {
      n = split(s, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    /^frame / { go = 1; next }
    go && NF >= 4 && $NF ~ /^[0-9]+$/ {
      name = $1; for (i = 2; i <= NF - 3; i++) name = name " " $i
      if (!(name in seen)) { seen[name] = 1; order[++k] = name; lo[name] = $(NF - 2); hi[name] = $(NF - 2) }
      mean[name] = mean[name] " " $(NF - 2); medn[name] = medn[name] " " $(NF - 1); p99[name] = p99[name] " " $NF
      if ($(NF - 2) + 0 < lo[name] + 0) lo[name] = $(NF - 2)
      if ($(NF - 2) + 0 > hi[name] + 0) hi[name] = $(NF - 2)
    }
    END {
      for (i = 1; i <= k; i++) { n = order[i]
        printf "| %s | %.0f | %.0f | %.0f | %s-%s |\n", n, med(mean[n]), med(medn[n]), med(p99[n]), lo[n], hi[n] }
    }' "$OUT"/run-*.txt
} >"$RESULTS/table.md"
echo
cat "$RESULTS/table.md"
