#!/bin/bash
# usage: tp.sh <workdir> <bootfabric-bin> <rounds>: image:1 pinned under RPS (server CPU 0, wrk
# CPU 1), Bootfabric and nginx alternating. Per run: the rate, each core's idle and steal ticks
# (of DUR-1 seconds), and per GiB the kernel's tracepoint counts on each core (perf stat -a):
# skbs received (netif_receive_skb: data on CPU 1, ACKs on CPU 0), skbs sent (net_dev_xmit),
# copies to user (skb_copy_datagram_iovec), softirqs, context switches, read() calls.
# The counts run for DUR-1 seconds from a second into wrk's DUR; a run's GiB is scaled to that.
set -u
W=$1; BIN=$2; ROUNDS=$3; DUR=${DUR:-8}; OUT=${OUT:-/tmp/probe/tp}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
EV='net:netif_receive_skb,net:net_dev_xmit,skb:skb_copy_datagram_iovec,irq:softirq_entry,sched:sched_switch,syscalls:sys_enter_read'
idle() { awk '$1=="cpu0"||$1=="cpu1"{printf "%d %d ", $5+$6, $9}' /proc/stat; }
# Interrupts taken by each core: local timer, rescheduling, function call (RPS's kicks), TLB.
irqs() { awk '$1 ~ /^(LOC|RES|CAL|TLB):$/ {printf "%d %d ", $2, $3}' /proc/interrupts; }
one() { # name round, start command...
  local name=$1 round=$2; shift 2
  "$@" & local P=$!
  sleep 2
  ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${DUR}s" --timeout 40s http://10.77.0.1/rack/image.bin >"$OUT/wrk-$name-$round.txt" 2>&1 &
  local wp=$!
  sleep 1
  local i0 i1
  i0=$(idle); local q0 q1; q0=$(irqs)
  perf stat -x, -a -C 1 -e "$EV" -o "$OUT/c1-$name-$round.txt" -- sleep $((DUR - 1)) &
  local p1=$!
  perf stat -x, -a -C 0 -e "$EV" -o "$OUT/c0-$name-$round.txt" -- sleep $((DUR - 1))
  wait $p1
  i1=$(idle); q1=$(irqs)
  wait $wp
  local gib a0 b0 a1 b1 c0 d0 c1 d1
  gib=$(awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}' "$OUT/wrk-$name-$round.txt")
  read -r a0 b0 a1 b1 <<<"$i0"; read -r c0 d0 c1 d1 <<<"$i1"
  # LOC RES CAL TLB, CPU 0 and CPU 1 each: 8 numbers per snapshot
  local q; q=$(paste -d' ' <(echo $q0 | tr ' ' '\n') <(echo $q1 | tr ' ' '\n') | awk '{printf "%d ", $2-$1}')
  awk -F, -v n="$name" -v g="$gib" -v d="$DUR" -v id0=$((c0 - a0)) -v id1=$((c1 - a1)) -v st0=$((d0 - b0)) -v st1=$((d1 - b1)) -v q="$q" '
    FNR==1 {f++} /^[0-9]/ { split($3,a,":"); c[f, a[2]]=$1 }
    END { w=g*(d-1)/d; printf "%-10s %.3f GiB/s; idle/steal ticks of %d: cpu0 %d/%d cpu1 %d/%d |", n, g/d, (d-1)*100, id0, st0, id1, st1;
      printf " per GiB, cpu1: rx_skb %.0f tx_skb %.0f copies %.0f softirq %.0f csw %.0f reads %.0f |", c[1,"netif_receive_skb"]/w, c[1,"net_dev_xmit"]/w, c[1,"skb_copy_datagram_iovec"]/w, c[1,"softirq_entry"]/w, c[1,"sched_switch"]/w, c[1,"sys_enter_read"]/w;
      printf " cpu0: tx_skb %.0f rx_skb %.0f softirq %.0f csw %.0f |", c[2,"net_dev_xmit"]/w, c[2,"netif_receive_skb"]/w, c[2,"softirq_entry"]/w, c[2,"sched_switch"]/w;
      split(q, k, " "); printf " irqs per GiB cpu0/cpu1: LOC %.0f/%.0f RES %.0f/%.0f CAL %.0f/%.0f TLB %.0f/%.0f\n", k[1]/w, k[2]/w, k[3]/w, k[4]/w, k[5]/w, k[6]/w, k[7]/w, k[8]/w }' \
    "$OUT/c1-$name-$round.txt" "$OUT/c0-$name-$round.txt"
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
