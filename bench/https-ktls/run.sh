#!/usr/bin/env bash
# HTTPS with kernel TLS: Bootfabric against nginx, both handing their sessions to the kernel's
# TLS (kTLS) and sending file bodies with sendfile, in one QEMU guest on Debian 12's own kernel
# (6.1, `tls.ko`), since the host's kernel may have no kTLS (this machine's has none). The
# guest runs under TCG with one vCPU: the figures are the two servers' ratio on an emulated
# CPU, not the speed of real hardware. wrk fetches over the guest's tap from a namespace of
# the lab, the servers taking turns (the order flips every repeat). Rows:
#   - image:N  a 16 MiB image to N keep-alive connections (whole-file GETs);
#   - range:N  1 MiB Range requests at random 1 MiB offsets of that image.
# For each it prints MiB/s and the guest's busy CPU seconds per GiB (its /proc/stat, read
# before and after each measurement through a CGI of busybox's httpd in the guest); at the
# start, the kernel TX sessions one fetch from each server adds (`/proc/net/tls_stat`): both
# must be using kTLS, or the run stops.
#
# Usage: bench/https-ktls/run.sh   (as root; `cargo xtask setup` installs QEMU, nginx, wrk)
# Knobs: DURATION=15 REPEAT=3 (medians) ROWS="image:1 range:1 image:8 range:8"
#        BOOTFABRIC_BIN=target/release/bootfabric RESULTS_DIR=<folder> (smoke runs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
DURATION=${DURATION:-15}
REPEAT=${REPEAT:-3}
ROWS=${ROWS:-"image:1 range:1 image:8 range:8"}

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in nginx wrk curl openssl qemu-system-x86_64 strip ldd; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi
(cd "$ROOT" && cargo build -q -p bootfabric-lab --bin ktls_bench)
RUNNER=$ROOT/target/debug/ktls_bench

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
results_open https-ktls DURATION REPEAT ROWS BIN
results_note "nginx: $(nginx -v 2>&1)"
results_note "wrk: $(wrk -v 2>&1 | head -1)"
results_note "qemu: $(qemu-system-x86_64 --version | head -1), TCG, 1 vCPU, -cpu max, 1 GiB"
results_note "bootfabric binary: $BIN, sha256 $(sha256sum "$BIN" | cut -c1-16), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)"
results_note "guest kernel: Debian's linux-image-amd64 (the lab's boot image, target/lab-cache)"

# The runner boots the guest in a namespace it makes and kills it (by PID) when it ends.
"$RUNNER" "$RESULTS" "$BIN" "$DURATION" "$REPEAT" "$ROWS"
echo "results: $RESULTS"
