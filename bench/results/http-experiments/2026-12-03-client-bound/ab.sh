#!/bin/bash
# usage: ab.sh <workdir> <rounds> <name=binary|nginx>... ; env CONNS (32) DUR (8) LUA=1 (ranges)
# pinned under RPS (server CPU 0, wrk CPU 1); the variants alternate, the order turning each round.
# Per run: rate, CPU 0 and CPU 1 busy per GiB, packets the server's link sent/received per MiB, steal.
set -u
W=$1; ROUNDS=$2; shift 2; VARS=("$@"); DUR=${DUR:-8}; CONNS=${CONNS:-32}
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
lua=(); [ -n "${LUA:-}" ] && lua=(-s "$W/range.lua")
th=$((CONNS < 2 ? 1 : 2))
ticks() { awk '$1=="cpu0"{a=$2+$3+$4+$7+$8; st0=$9} $1=="cpu1"{b=$2+$3+$4+$7+$8; st1=$9} END{print a,b,st0,st1}' /proc/stat; }
link() { ip netns exec $S cat /sys/class/net/fabric0/statistics/tx_packets /sys/class/net/fabric0/statistics/rx_packets | tr '\n' ' '; }
n=${#VARS[@]}
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    v=${VARS[$(( (i + r - 1) % n ))]}; name=${v%%=*}; bin=${v#*=}
    if [ "$bin" = nginx ]; then
      ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-pin1.conf" 2>"$W/nginx.log" & P=$!
    else
      rm -rf "$W"/state/*
      ip netns exec $S taskset -c 0 "$bin" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log" & P=$!
    fi
    sleep 2
    read -r a0 b0 s00 s10 <<<"$(ticks)"; read -r t0 x0 <<<"$(link)"
    out=$(ip netns exec $C taskset -c 1 wrk -t$th -c"$CONNS" -d"${DUR}s" --timeout 40s "${lua[@]}" http://10.77.0.1/rack/image.bin 2>&1)
    read -r a1 b1 s01 s11 <<<"$(ticks)"; read -r t1 x1 <<<"$(link)"
    gib=$(echo "$out" | awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}')
    awk -v n="$name" -v g="$gib" -v d="$DUR" -v a=$((a1-a0)) -v b=$((b1-b0)) -v tx=$((t1-t0)) -v rx=$((x1-x0)) -v s0=$((s01-s00)) -v s1=$((s11-s10)) -v r="$r" 'BEGIN{
      printf "round %d %-8s %.3f GiB/s; per GiB: CPU 0 %.3f CPU 1 %.3f; per MiB: sent %.2f received %.2f; steal %.2f %.2f s\n", r, n, g/d, a/100/g, b/100/g, tx/g/1024, rx/g/1024, s0/100, s1/100 }'
    if [ "$bin" = nginx ]; then kill "$(cat $W/nginx/nginx.pid)"; wait $P 2>/dev/null; sleep 0.5; else kill $P; wait $P 2>/dev/null; fi
  done
done
