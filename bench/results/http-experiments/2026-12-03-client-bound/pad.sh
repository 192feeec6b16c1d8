#!/bin/bash
# usage: pad.sh <workdir> <bootfabric-bin> <rounds> ; runs image:1 pinned under RPS with
# nginx heads of several lengths (X-Pad header) and Bootfabric, alternating; prints a line each
set -u
W=$1; BIN=$2; ROUNDS=$3; DUR=${DUR:-8}
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd $W
ticks() { awk '$1=="cpu0"{b0=$2+$3+$4+$7+$8} $1=="cpu1"{b1=$2+$3+$4+$7+$8; s1=$8; y1=$4; i1=$7} END{print b0,b1,s1,y1,i1}' /proc/stat; }
one() { # name, start command...
  local name=$1; shift
  "$@" & local P=$!
  sleep 2
  local hl
  hl=$(ip netns exec $C python3 -c '
import socket
s=socket.create_connection(("10.77.0.1",80)); s.sendall(b"GET /rack/image.bin HTTP/1.1\r\nHost: 10.77.0.1\r\n\r\n")
d=b""
while b"\r\n\r\n" not in d: d+=s.recv(65536)
print(d.index(b"\r\n\r\n")+4)')
  read -r a0 b0 s0 y0 i0 <<<"$(ticks)"
  out=$(ip netns exec $C taskset -c 1 wrk -t1 -c1 -d${DUR}s --timeout 40s http://10.77.0.1/rack/image.bin 2>&1)
  read -r a1 b1 s1 y1 i1 <<<"$(ticks)"
  local gib
  gib=$(echo "$out" | awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}')
  awk -v n="$name" -v h="$hl" -v g="$gib" -v d="$DUR" -v a=$((a1-a0)) -v b=$((b1-b0)) -v s=$((s1-s0)) -v y=$((y1-y0)) -v i=$((i1-i0)) 'BEGIN{
    printf "%-12s head %3d (mod 8 %d, mod 64 %2d) %.3f GiB/s; per GiB: cpu0 %.3f cpu1 %.3f (softirq %.3f sys %.3f irq %.3f)\n", n, h, h%8, h%64, g/d, a/100/g, b/100/g, s/100/g, y/100/g, i/100/g }'
  if [ "$name" = bootfabric ]; then kill $P; wait $P 2>/dev/null; else kill "$(cat $W/nginx/nginx.pid)"; wait $P 2>/dev/null; sleep 0.5; fi
}
mkconf() { # pad bytes of value → conf path
  local f=$W/nginx/pad-$1.conf
  if [ "$1" = 0 ]; then cp $W/nginx/nginx-pin1.conf $f; else
    sed "s|^  default_type application/octet-stream;|&\n  add_header X-Pad $(printf '%*s' $1 '' | tr ' ' a);|" $W/nginx/nginx-pin1.conf > $f; fi
  echo $f
}
for r in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:-bootfabric 0 41}; do
    if [ "$v" = bootfabric ]; then
      rm -rf $W/state/*
      one bootfabric ip netns exec $S taskset -c 0 $BIN serve --config $W/bootfabric-pin1.toml 2>$W/bootfabric.log
    else
      one "nginx+$v" ip netns exec $S taskset -c 0 nginx -p $W/nginx -c "$(mkconf $v)" 2>$W/nginx.log
    fi
  done
done
