#!/bin/bash
# usage: nst.sh <workdir> <bootfabric-bin> <rounds>: image:1 pinned under RPS, Bootfabric and
# nginx alternating; per run the rate and each namespace's TCP counters (/proc/net/snmp and
# /proc/net/netstat: Tcp and TcpExt) that moved, per GiB, from a second into wrk's DUR to its end.
set -u
W=$1; BIN=$2; ROUNDS=$3; DUR=${DUR:-8}; OUT=${OUT:-/tmp/probe/nst}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
# "name value" lines of every Tcp and TcpExt counter of a namespace
counters() {
  ip netns exec "$1" cat /proc/net/snmp /proc/net/netstat | awk '
    $1=="Tcp:" || $1=="TcpExt:" { if (!(($1) in hdr)) { hdr[$1]=$0; next } n=split(hdr[$1], h, " "); split($0, v, " "); for (i=2; i<=n; i++) print $1 h[i], v[i] }'
}
one() { # name round, start command...
  local name=$1 round=$2; shift 2
  "$@" & local P=$!
  sleep 2
  ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${DUR}s" --timeout 40s http://10.77.0.1/rack/image.bin >"$OUT/wrk-$name-$round.txt" 2>&1 &
  local wp=$!
  sleep 1
  counters $C >"$OUT/c0"; counters $S >"$OUT/s0"
  sleep $((DUR - 1))
  counters $C >"$OUT/c1"; counters $S >"$OUT/s1"
  wait $wp
  local gib
  gib=$(awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}' "$OUT/wrk-$name-$round.txt")
  for side in c s; do
    awk -v n="$name" -v side=$side -v g="$gib" -v d="$DUR" 'FNR==NR {a[$1]=$2; next} { x=$2-a[$1]; if (x != 0 && $1 !~ /RtoMin|RtoMax|MaxConn|CurrEstab/) printf "%s %s %s %.0f\n", n, side, $1, x/(g*(d-1)/d) }' "$OUT/${side}0" "$OUT/${side}1"
  done >"$OUT/$name-$round.txt"
  printf "%-10s %.3f GiB/s\n" "$name" "$(echo "$gib $DUR" | awk '{print $1/$2}')"
  if [ "$name" = bootfabric ]; then kill $P; wait $P 2>/dev/null; else kill "$(cat "$W/nginx/nginx.pid")"; wait $P 2>/dev/null; sleep 0.5; fi
}
for r in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:-bootfabric nginx}; do
    if [ "$v" = bootfabric ]; then
      rm -rf "$W"/state/*
      one bootfabric "$r" ip netns exec $S taskset -c 0 "$BIN" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log"
    else
      one nginx "$r" ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-pin1.conf" 2>"$W/nginx.log"
    fi
  done
done
# one table: counter, then per round Bootfabric's and nginx's value per GiB
cat "$OUT"/bootfabric-*.txt "$OUT"/nginx-*.txt | awk '{k=$2" "$3; v[k, $1]=v[k, $1] " " $4; keys[k]=1} END {for (k in keys) printf "%-40s bootfabric%s | nginx%s\n", k, v[k,"bootfabric"], v[k,"nginx"]}' | sort
