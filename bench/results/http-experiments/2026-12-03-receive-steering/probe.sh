#!/bin/bash
# usage: probe.sh <bootfabric|nginx> <bin> ; env PIN=1|0 CONNS=N URL=... LUA=1 PERF=1 STRACE=1 XENV=...
#   CC=cubic|bbr (both namespaces; cubic must be in the host's tcp_allowed_congestion_control)
#   writes /tmp/probe/ss-srv.txt and ss-cli.txt (tcp_info 2 s before the end) and wrk.out
set -u
W=${W:-/dev/shm/bootfabric-http-bench.CR8PJz}
S=bfp-srv; C=bfp-cli
ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null
ip netns add $S; ip netns add $C
ip link add fabric0 netns $S type veth peer name cli0 netns $C
ip -n $S addr add 10.77.0.1/24 dev fabric0; ip -n $S link set fabric0 up; ip -n $S link set lo up
ip -n $C addr add 10.77.0.2/24 dev cli0; ip -n $C link set cli0 up; ip -n $C link set lo up
if [ -n "${RPS:-}" ]; then
  # data to the client: its core (1) pinned, hashed over both unpinned; ACKs to the server: core 0 pinned
  if [ "${PIN:-1}" = 1 ]; then cm=2; sm=1; else cm=3; sm=3; fi
  ip netns exec $C sh -c "echo $cm > /sys/class/net/cli0/queues/rx-0/rps_cpus"
  ip netns exec $S sh -c "echo $sm > /sys/class/net/fabric0/queues/rx-0/rps_cpus"
fi
[ -n "${CC:-}" ] && ip netns exec $S sysctl -qw net.ipv4.tcp_congestion_control=$CC && ip netns exec $C sysctl -qw net.ipv4.tcp_congestion_control=$CC
cd $W
PIN=${PIN:-1}; CONNS=${CONNS:-32}
srvpin=(); clipin=()
[ $PIN = 1 ] && srvpin=(taskset -c 0) && clipin=(taskset -c 1)
if [ "$1" = bootfabric ]; then
  rm -rf $W/state/*
  ip netns exec $S env ${XENV:-BF_X=1} "${srvpin[@]}" $2 serve --config $W/bootfabric-pin$PIN.toml 2>$W/bootfabric.log & P=$!
else
  ip netns exec $S "${srvpin[@]}" nginx -p $W/nginx -c $W/nginx/nginx-pin$PIN.conf 2>$W/nginx.log & P=$!
fi
sleep 2
if [ "$1" = nginx ]; then pids="$(pgrep -P $(cat $W/nginx/nginx.pid))"; else pids=$P; fi
# core 0 busy: user nice system irq softirq (not idle, iowait, steal), and softirq alone
core0() { awk '$1=="cpu0"{print $2+$3+$4+$7+$8, $8}' /proc/stat; }
cpu() { local t=0; for p in $pids; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
txp() { ip netns exec $S cat /sys/class/net/fabric0/statistics/tx_packets; }
rxp() { ip netns exec $S cat /sys/class/net/fabric0/statistics/rx_packets; }
lua=(); [ -n "${LUA:-}" ] && lua=(-s $W/range.lua)
th=$((CONNS < 2 ? 1 : 2))
if [ -n "${PERF:-}" ]; then (sleep 2; perf record ${PERFG:--g} -o /tmp/probe/perf-$1.data ${PERFT:--p $(echo $pids | tr " " ,)} -- sleep 3 >/dev/null 2>&1) & PP=$!; fi
if [ -n "${STRACE:-}" ]; then (sleep 2; timeout -s INT 3 perf stat -e 'syscalls:sys_enter_*' -p $(echo $pids | tr ' ' ,) -o /tmp/probe/sys-$1.txt >/dev/null 2>&1) & PS=$!; fi
c0=$(cpu); t0=$(txp); r0=$(rxp); k0=$(core0)
(sleep $(( ${DUR:-8} - 2 )); ip netns exec $S ss -tinH state established > /tmp/probe/ss-srv.txt; ip netns exec $C ss -tinH state established > /tmp/probe/ss-cli.txt) & SSP=$!
ip netns exec $C "${clipin[@]}" /usr/bin/time -f "wrk-cpu %U+%S" wrk --latency -t$th -c$CONNS -d${DUR:-8}s --timeout 40s "${lua[@]}" ${URL:-http://10.77.0.1/rack/image.bin} > /tmp/probe/wrk.out 2>&1
c1=$(cpu); t1=$(txp); r1=$(rxp); k1=$(core0)
wait $SSP
[ -n "${PERF:-}" ] && wait $PP
ns() { ip netns exec $1 nstat -asz 2>/dev/null | awk -v k="$2" '$1==k{print $2}'; }
NS="retr $(ns $S TcpRetransSegs) dsack $(ns $S TcpExtTCPDSACKRecvSegs) cliofo $(ns $C TcpExtTCPOFOQueue)"
[ -n "${STRACE:-}" ] && wait $PS
echo "$1 cc=${CC:-host} rps=${RPS:-0} ${XENV:-} pin=$PIN conns=$CONNS $(grep Requests/sec /tmp/probe/wrk.out) $(grep Transfer /tmp/probe/wrk.out) server-cpu $(( (c1-c0) ))ticks core0 $(( ${k1% *} - ${k0% *} ))ticks softirq0 $(( ${k1#* } - ${k0#* } )) txpk $((t1-t0)) rxpk $((r1-r0)) $(grep wrk-cpu /tmp/probe/wrk.out) $NS"
kill $P 2>/dev/null; [ "$1" = nginx ] && kill $(cat $W/nginx/nginx.pid 2>/dev/null) 2>/dev/null; sleep 1
ip netns del $S; ip netns del $C
