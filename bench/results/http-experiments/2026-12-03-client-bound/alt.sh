#!/bin/bash
# usage: alt.sh <workdir> <bootfabric-bin> <pairs>: image:1 pinned under RPS with both servers
# up at once on CPU 0 (Bootfabric on port 80, nginx on 8080; the one not asked sits idle), and
# wrk on CPU 1 asking one then the other for SLICE seconds (default 2), the order turning each
# pair. Pairs a fraction of a minute apart meet nearly the same host, so the paired ratio
# carries little of the host's drift (steal came and went by the minute in this session).
# Per slice: rate, CPU 1's busy time per GiB and steal; at the end the paired ratios.
# PERF=1: a profile of CPU 1 per slice (perf record, $OUT/perf-<server>-<pair>.data).
set -u
W=$1; BIN=$2; PAIRS=$3; SLICE=${SLICE:-2}; OUT=${OUT:-/tmp/probe/alt}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
# nginx-pin1.conf on port 8080, without its HTTPS server block (Bootfabric holds port 443)
awk '/^  server \{/ { blk = $0 "\n"; inb = 1; next }
  inb { blk = blk $0 "\n"; if ($0 ~ /^  \}/) { inb = 0; if (blk !~ /:443/) printf "%s", blk }; next }
  { print }' "$W/nginx/nginx-pin1.conf" | sed 's/listen 10.77.0.1:80 reuseport;/listen 10.77.0.1:8080 reuseport;/' >"$W/nginx/nginx-alt.conf"
grep -q 'listen 10.77.0.1:8080' "$W/nginx/nginx-alt.conf" || { echo "nginx-alt.conf: no port 8080" >&2; exit 1; }
# PAD=n: nginx's response head n bytes longer (an X-Pad header; n >= 10)
if [ -n "${PAD:-}" ]; then
  v=$(head -c $((PAD - 9)) /dev/zero | tr '\0' x)
  sed -i "s/^  server {\$/  server {\n    add_header X-Pad $v;/" "$W/nginx/nginx-alt.conf"
fi
rm -rf "$W"/state/*
ip netns exec $S taskset -c 0 "$BIN" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log" & BP=$!
ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-alt.conf" 2>"$W/nginx.log" & NP=$!
stop() { kill $BP 2>/dev/null; [ -s "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null; wait $BP $NP 2>/dev/null; cleanup; }
trap stop EXIT
sleep 2
ticks() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8, $9}' /proc/stat; }
# Function-call interrupts taken by CPU 0 (RPS's kicks from CPU 1: the client's ACKs) and by
# CPU 1 (the server's data), and CPU 0's idle ticks.
kicks() { awk '$1=="CAL:"{a=$2; b=$3} END{printf "%d %d ", a, b}' /proc/interrupts; awk '$1=="cpu0"{print $5+$6}' /proc/stat; }
# Bytes the client's link received over the time wrk ran: wrk ends a run only at the end of a
# response, so a slice is whole 256 MiB responses and lasts a little longer than SLICE.
rx() { ip netns exec $C cat /sys/class/net/cli0/statistics/rx_bytes; }
slice() { # name url
  local b0 s0 b1 s1 x0 x1 t0 t1 k00 k10 i0 k01 k11 i1
  read -r b0 s0 <<<"$(ticks)"; read -r k00 k10 i0 <<<"$(kicks)"; x0=$(rx); t0=$(date +%s%N)
  if [ "${PERF:-0}" = 1 ]; then # a profile of CPU 1 for the slice, one file per slice
    perf record -q -C 1 -o "$OUT/perf-$1-$p.data" -- ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${SLICE}s" --timeout 40s "$2" >/dev/null 2>&1
  else
    ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${SLICE}s" --timeout 40s "$2" >/dev/null 2>&1
  fi
  t1=$(date +%s%N); read -r b1 s1 <<<"$(ticks)"; read -r k01 k11 i1 <<<"$(kicks)"; x1=$(rx)
  echo "$1 $(((x1 - x0) / 1048576)) $((b1 - b0)) $((s1 - s0)) $(((t1 - t0) / 1000000)) $((k01 - k00)) $((k11 - k10)) $((i1 - i0))"
}
for p in $(seq "$PAIRS"); do
  if [ $((p % 2)) = 1 ]; then order="bootfabric nginx"; else order="nginx bootfabric"; fi
  for v in $order; do
    if [ $v = bootfabric ]; then slice $v http://10.77.0.1/rack/image.bin; else slice $v http://10.77.0.1:8080/rack/image.bin; fi
  done | awk -v p="$p" -v d="$SLICE" '{ printf "pair %d %-10s %.3f GiB/s; CPU 1 per GiB %.3f; steal %.2f s; per GiB: kicks to CPU 0 %.0f, to CPU 1 %.0f; CPU 0 idle %.3f s; %d MiB in %d ms\n", p, $1, $2/1024/($5/1000), $3/100/($2/1024), $4/100, $6/($2/1024), $7/($2/1024), $8/100/($2/1024), $2, $5 }'
done | tee "$OUT/slices.txt"
awk '{ r[$2, $3] = $4; c[$2, $3] = $10 + 0; n = ($2 > n) ? $2 : n }
  function med(a, k,   i, j, t) { for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  END { for (p = 1; p <= n; p++) { q[p] = r[p, "bootfabric"] / r[p, "nginx"]; if (q[p] >= 1) up++; x[p] = c[p, "bootfabric"] / c[p, "nginx"] }
    printf "%d pairs: Bootfabric over nginx, rate: median %.3f, at or above in %d; CPU 1 per GiB: median %.3f\n", n, med(q, n), up, med(x, n) }' "$OUT/slices.txt"
