#!/bin/bash
# usage: pads.sh <workdir> <bootfabric-bin> <rounds> <pad>...: as alt.sh (image:1 pinned under
# RPS, every server up at once on CPU 0, wrk on CPU 1 for SLICE seconds a turn), with
# Bootfabric (port 80), nginx (8080) and for each <pad> nginx again with its response head
# <pad> bytes longer (an X-Pad header; ports 8081...). The order turns each round. Whether
# where the body's bytes fall against wrk's buffer moves the client's cost: the head's length
# decides it for a connection's whole stream. Prints each turn, then per target the medians
# of rate and CPU 1's busy time per GiB, and both over nginx's within each round.
set -u
W=$1; BIN=$2; ROUNDS=$3; shift 3; PADS=("$@"); SLICE=${SLICE:-2}; OUT=${OUT:-/tmp/probe/pads}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
# nginx-pin1.conf's plain-HTTP server on 8080, and a padded copy of it per pad; no HTTPS
# block (Bootfabric holds port 443)
{
  awk '/^  server \{/ { exit } { print }' "$W/nginx/nginx-pin1.conf"
  echo "  server { listen 10.77.0.1:8080 reuseport; root $W/images; }"
  port=8081
  for pad in "${PADS[@]}"; do
    v=$(head -c $((pad - 9)) /dev/zero | tr '\0' x)
    echo "  server { listen 10.77.0.1:$port reuseport; root $W/images; add_header X-Pad $v; }"
    port=$((port + 1))
  done
  echo "}"
} >"$W/nginx/nginx-pads.conf"
rm -rf "$W"/state/*
ip netns exec $S taskset -c 0 "$BIN" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log" & BP=$!
ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-pads.conf" 2>"$W/nginx.log" & NP=$!
stop() { kill $BP 2>/dev/null; [ -s "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null; wait $BP $NP 2>/dev/null; cleanup; }
trap stop EXIT
sleep 2
T=("bootfabric=http://10.77.0.1/rack/image.bin" "nginx=http://10.77.0.1:8080/rack/image.bin")
port=8081
for pad in "${PADS[@]}"; do T+=("nginx+$pad=http://10.77.0.1:$port/rack/image.bin"); port=$((port + 1)); done
for t in "${T[@]}"; do # every target answers, with the head length it should
  h=$(ip netns exec $C curl -sS -r 0-0 -D - -o /dev/null "${t#*=}" | wc -c) || exit 1
  echo "${t%%=*}: head $h bytes (of a 206; the 200's differs by the Content-Range line)"
done
ticks() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8, $9}' /proc/stat; }
rx() { ip netns exec $C cat /sys/class/net/cli0/statistics/rx_bytes; }
n=${#T[@]}
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    t=${T[$(( (i + r - 1) % n ))]}
    read -r b0 s0 <<<"$(ticks)"; x0=$(rx); t0=$(date +%s%N)
    ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${SLICE}s" --timeout 40s "${t#*=}" >/dev/null 2>&1
    t1=$(date +%s%N); read -r b1 s1 <<<"$(ticks)"; x1=$(rx)
    awk -v r="$r" -v n="${t%%=*}" -v m=$(((x1 - x0) / 1048576)) -v ms=$(((t1 - t0) / 1000000)) -v b=$((b1 - b0)) -v s=$((s1 - s0)) \
      'BEGIN { printf "round %d %-10s %.3f GiB/s; CPU 1 per GiB %.3f; steal %.2f s; %d MiB in %d ms\n", r, n, m/1024/(ms/1000), b/100/(m/1024), s/100, m, ms }'
  done
done | tee "$OUT/turns.txt"
awk '{ rate[$3, $2] = $4; cost[$3, $2] = $10 + 0; names[$3] = 1; n = ($2 > n) ? $2 : n }
  function med(a, k,   i, j, t) { for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  END { for (x in names) { for (r = 1; r <= n; r++) { a[r] = rate[x, r]; b[r] = cost[x, r]; c[r] = rate[x, r] / rate["nginx", r]; d[r] = cost[x, r] / cost["nginx", r] }
      printf "%-10s rate median %.3f GiB/s, CPU 1 per GiB median %.3f; over nginx in the same round: rate %.3f, CPU 1 per GiB %.3f\n", x, med(a, n), med(b, n), med(c, n), med(d, n) } }' "$OUT/turns.txt" | sort
