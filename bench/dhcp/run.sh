#!/usr/bin/env bash
# DHCP benchmark: perfdhcp (Kea's load generator, acting as a relay) against Bootfabric with
# its XDP fast path on and off, kea-dhcp4 and dnsmasq, one after the other in the same run,
# with the same clients, every one of them reserved in each server. For each server it prints:
#   - the highest offered rate (4-way DORA exchanges/s) at which perfdhcp lost no exchange;
#   - the server core's whole busy time per 10,000 completed exchanges at one fixed rate: core 0
#     holds the server, and RPS steers there the kernel's work for every packet reaching it
#     (receive path, generic XDP's skb work, the XDP program, XDP_TX or the server's sendmsg),
#     so the core's busy time (wall time minus its idle time in /proc/stat) minus an idle
#     baseline measured the same way is what serving cost, for every server alike; the
#     server process's own CPU and the XDP program's run time are shown as parts of it.
# Everything runs in two network namespaces this script creates (server: fabric0 10.77.0.1/16,
# client: cli0 10.77.0.2/16, one veth pair created directly inside them, nothing on the host's
# interfaces) and removes on exit, also on failure; processes are killed by PID.
#
# Usage: bench/dhcp/run.sh        (as root; `cargo xtask setup` installs the peers)
# Knobs: RATES="250 500 1000 2000 4000 6000 8000 12000 16000 24000" DURATION=10 CLIENTS=1000
#        FIXED_RATE=250 FIXED_DURATION=60 SERVERS="bootfabric-xdp bootfabric kea dnsmasq"
#        TRIES=2 (attempts per rate step; the step passes when one loses nothing)
#        GENERATORS=1 (perfdhcp instances in parallel, each its own relay address and MAC range)
#        BASE_DURATION=15 (each idle baseline of the server core, in seconds: one before each
#        server's fixed-rate window and one after the last)
#        RESULTS_DIR=/tmp/x (keep this run's results out of bench/results: smoke runs)
#        BOOTFABRIC_BIN=target/release/bootfabric
#        TMPDIR=/dev/shm (lease state on tmpfs)   KEEP=1 (keep the work folder with all logs)
#        IDLE_WAIT=300 (seconds to wait at most for the cores to be >= 90% idle before starting)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
RATES=${RATES:-"250 500 1000 2000 4000 6000 8000 12000 16000 24000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1000}
FIXED_RATE=${FIXED_RATE:-250}
FIXED_DURATION=${FIXED_DURATION:-60}
SERVERS=${SERVERS:-"bootfabric-xdp bootfabric kea dnsmasq"}
GENERATORS=${GENERATORS:-1}
TRIES=${TRIES:-2}
BASE_DURATION=${BASE_DURATION:-15}
IDLE_WAIT=${IDLE_WAIT:-300}
TICK=$(getconf CLK_TCK)

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in perfdhcp kea-dhcp4 dnsmasq ip ss timeout; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
# Reservations take 10.77.1.0 onwards, the pool starts on the /24 after the last one (Kea's
# `reservations-out-of-pool` needs every reservation outside the pool).
[ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 32768 ] || { echo "CLIENTS must be 1..32768" >&2; exit 2; }
[ "$TRIES" -ge 1 ] || { echo "TRIES must be at least 1" >&2; exit 2; }
[ "$GENERATORS" -ge 1 ] && [ "$GENERATORS" -le 8 ] || { echo "GENERATORS must be 1..8" >&2; exit 2; }
[ $((CLIENTS % GENERATORS)) = 0 ] || { echo "CLIENTS must be a multiple of GENERATORS" >&2; exit 2; }
POOL_FIRST=10.77.$((2 + (CLIENTS - 1) / 256)).0
POOL_LAST=10.77.200.255
for s in $SERVERS; do
  case $s in bootfabric-xdp | bootfabric | kea | dnsmasq) ;; *) echo "unknown server $s" >&2; exit 2 ;; esac
done
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi

ID=bfb-$$
SRV=$ID-srv
CLI=$ID-cli
# State (the lease journal, Kea's memfile, dnsmasq's lease file) lives here: TMPDIR=/dev/shm
# measures the servers without the cost of reaching the disk.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bootfabric-bench.XXXXXX")
SERVER_PID=""
PERF_PIDS=""
# stop_pid, results_open/results_note (and NETNS_MADE); this script keeps its own /16 lab
# and its per-core CPU accounting.
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }
BPF_STATS_WAS=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BPF_STATS_WAS" ]; then sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" || true; fi
  local p
  for p in $PERF_PIDS; do stop_pid "$p"; done
  stop_server
  if [ -n "$NETNS_MADE" ]; then
    # Anything still inside our namespaces was started by this script (perfdhcp's child
    # under timeout, say): kill it by PID before the namespaces go.
    for ns in "$SRV" "$CLI"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

results_open dhcp RATES DURATION TRIES CLIENTS FIXED_RATE FIXED_DURATION SERVERS GENERATORS BASE_DURATION TMPDIR IDLE_WAIT
# Cores online (not `nproc`, which counts those this script may use: one, once pinned below).
CORES=$(getconf _NPROCESSORS_ONLN)

NETNS_MADE=1
ip netns add "$SRV"
ip netns add "$CLI"
# The veth pair is born inside the two namespaces: no interface ever exists on the host side.
ip link add fabric0 netns "$SRV" type veth peer name cli0 netns "$CLI"
ip -n "$SRV" addr add 10.77.0.1/16 dev fabric0
# One relay address per perfdhcp instance: 10.77.0.2, 10.77.0.3, ...
for g in $(seq 0 $((GENERATORS - 1))); do
  ip -n "$CLI" addr add "10.77.0.$((2 + g))/16" dev cli0
done
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set fabric0 up
ip -n "$CLI" link set cli0 up
# One core for each side: the server and everything the kernel does for packets arriving at
# it (the stack's receive path, or the XDP program in generic mode with its XDP_TX, steered
# there by RPS) run on core 0, perfdhcp and the receive path of the answers on core 1. Without
# the split, veth runs the receiver's softirq in the sender's context, so the server's packet
# work would land on perfdhcp's core and in its time slice.
SERVER_CPU=0
CLIENT_CPU=1
if [ "$CORES" -ge 2 ]; then
  # This script (its awk, ip, sleep) keeps to core 1 too, so that core 0's busy time is the
  # server's.
  taskset -pc "$CLIENT_CPU" $$ >/dev/null
  ip netns exec "$SRV" sh -c "echo 1 > /sys/class/net/fabric0/queues/rx-0/rps_cpus"
  ip netns exec "$CLI" sh -c "echo 2 > /sys/class/net/cli0/queues/rx-0/rps_cpus"
  PIN_SERVER="taskset -c $SERVER_CPU"
  PIN_CLIENT="taskset -c $CLIENT_CPU"
else
  echo "warning: one core: the server core's busy time includes perfdhcp" >&2
  PIN_SERVER=""
  PIN_CLIENT=""
fi

# Every simulated client is reserved in every server. perfdhcp with `-b mac=02:00:00:00:00:00`
# and `-R N` draws client r in [0, N) and adds r to the base MAC from the last octet up, so
# client r is 02:00:00:00:HI:LO with HI:LO = r; it gets 10.77.(1 + r/256).(r%256). Generator g
# of G starts its base MAC at client g*N/G and draws from N/G clients: distinct ranges, all
# reserved.
mac_of() { printf '02:00:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }
ip_of() { printf '10.77.%d.%d' $((1 + $1 / 256)) $(($1 % 256)); }
{
  printf '[profiles.bench]\nkernel = "bench/vmlinuz"\n'
  for r in $(seq 0 $((CLIENTS - 1))); do
    printf '[[hosts]]\nname = "n%d"\nmac = "%s"\nip = "%s"\nprofile = "bench"\n' "$r" "$(mac_of "$r")" "$(ip_of "$r")"
  done
} >"$WORK/hosts.toml"
for r in $(seq 0 $((CLIENTS - 1))); do
  printf '%s,%s\n' "$(mac_of "$r")" "$(ip_of "$r")"
done >"$WORK/dnsmasq.hosts"
KEA_RESERVATIONS=$(for r in $(seq 0 $((CLIENTS - 1))); do
  printf '{ "hw-address": "%s", "ip-address": "%s" },' "$(mac_of "$r")" "$(ip_of "$r")"
done)
KEA_RESERVATIONS="[${KEA_RESERVATIONS%,}]"
# The XDP program's own run time is read from its fd's fdinfo, which needs BPF run-time
# statistics on for the length of the run.
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1

# Waits (at most 30 s) until the server listens on UDP port 67 in its namespace. (Bootfabric's
# "DHCP server listening" line is at info level, which the bench's log = "warn" hides.)
wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -ulnH 'sport = :67' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited:" >&2; tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not start listening within 30 s" >&2; tail -20 "$WORK/$1.log" >&2; return 1
}

# The XDP mode the kernel reports for fabric0 (`ip link`: xdpgeneric = generic/skb mode, xdpdrv
# = native, xdpoffload), or "none".
xdp_mode() {
  local l
  l=$(ip -n "$SRV" -d link show dev fabric0)
  case $l in
    *xdpgeneric*) echo generic ;;
    *xdpoffload*) echo offload ;;
    *xdpdrv* | *"xdp "*) echo native ;;
    *) echo none ;;
  esac
}

start_server() {
  local name=$1
  rm -rf "$WORK/state" "$WORK"/*.leases "$WORK"/*.csv* "$WORK"/*.log "$WORK"/*.pid
  case $name in
    bootfabric | bootfabric-xdp)
      local fast=false
      [ "$name" = bootfabric-xdp ] && fast=true
      # The shield's per-client and per-relay rates are lifted: perfdhcp is one relay
      # carrying every client, which the defaults would (rightly) throttle. Generic XDP for
      # both paths: "auto" picks it for the fast path on a veth, but native mode for the
      # shield alone, and native XDP on a veth runs in the NAPI poll of the sending side,
      # perfdhcp's core, out of reach of RPS and of this bench's per-core accounting.
      cat >"$WORK/bootfabric.toml" <<TOML
[daemon]
state_dir = "state"
log = "warn"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "generic"
dhcp_fast_path = $fast
relay_rate_limit = 10000000
[dhcp]
rate_limit = 100000
[dhcp.options]
lease_time = 3600
[[dhcp.subnets]]
cidr = "10.77.0.0/16"
interface = "fabric0"
pools = ["$POOL_FIRST-$POOL_LAST"]
TOML
      ip netns exec "$SRV" $PIN_SERVER "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/$name.log" &
      ;;
    kea)
      # Tuned for reservations as Kea 2.2's ARM advises ("Fine-Tuning DHCPv4 Host
      # Reservation"): only the identifier in use, in-subnet reservations only (no global
      # lookup, so early-global-reservations-lookup has nothing to do), and every reservation
      # outside the pool, so that allocating from the pool skips the reservation check.
      # memfile with persist appends each lease to its CSV and never fsyncs (strace: 0 syncs).
      cat >"$WORK/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "fabric0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                      "name": "$WORK/kea-leases.csv" },
  "host-reservation-identifiers": [ "hw-address" ],
  "reservations-global": false,
  "reservations-in-subnet": true,
  "reservations-out-of-pool": true,
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.77.0.0/16",
                 "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
                 "reservations": $KEA_RESERVATIONS } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                 "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
JSON
      KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK \
        ip netns exec "$SRV" $PIN_SERVER kea-dhcp4 -c "$WORK/kea.json" >>"$WORK/kea.log" 2>&1 &
      ;;
    dnsmasq)
      ip netns exec "$SRV" $PIN_SERVER dnsmasq --no-daemon --port=0 --conf-file=/dev/null \
        --interface=fabric0 --bind-interfaces \
        --dhcp-range="$POOL_FIRST,$POOL_LAST,255.255.0.0,1h" \
        --dhcp-authoritative --no-ping --dhcp-lease-max=100000 --quiet-dhcp \
        --dhcp-hostsfile="$WORK/dnsmasq.hosts" \
        --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" \
        >"$WORK/dnsmasq.log" 2>&1 &
      ;;
  esac
  # `ip netns exec` and taskset exec the server, so $! is the server's own PID (checked below).
  SERVER_PID=$!
  wait_listening "$name"
  local comm
  comm=$(cat "/proc/$SERVER_PID/comm")
  case $comm in
    bootfabric | kea-dhcp4 | dnsmasq) ;;
    *) echo "PID $SERVER_PID is $comm, not the server" >&2; return 1 ;;
  esac
}

# utime + stime of the whole server process (all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
# Nanoseconds the server's XDP programs ran (0 when it has none): softirq time that
# /proc/PID/stat charges to whichever task the packet interrupted, not to the server.
xdp_ns() {
  local total=0 f v
  for f in /proc/"$SERVER_PID"/fdinfo/*; do
    v=$(awk '/^prog_type:/ { t = $2 } /^run_time_ns:/ { n = $2 } END { if (t == 6) print n + 0 }' "$f" 2>/dev/null)
    [ -n "$v" ] && total=$((total + v))
  done
  echo "$total"
}
# The server core's idle time since boot, in clock ticks (idle + iowait of its /proc/stat
# line). With NO_HZ (this kernel: CONFIG_NO_HZ_IDLE) the kernel measures idle time from the
# moments the core enters and leaves idle, not by sampling ticks, so wall time minus idle
# time is the core's busy time whatever ran on it: tasks, softirq, interrupts. (The busy
# fields themselves are tick samples, which miss short bursts: an earlier version of this
# bench read them and saw 17 ticks for a core whose server alone had used 135.)
core_idle_ticks() { awk -v c="cpu$SERVER_CPU" '$1 == c { print $5 + $6 }' /proc/stat; }
# Busy cores' worth on the server core between two (ns, idle ticks) readings.
busy_cores() {
  awk -v w=$(($3 - $1)) -v i=$(($4 - $2)) -v hz="$TICK" \
    'BEGIN { v = (w / 1e9 - i / hz) / (w / 1e9); if (v < 0) v = 0; printf "%.4f", v }'
}
# Datagrams a namespace's UDP sockets dropped because their receive buffer was full.
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp; }

# Runs GENERATORS perfdhcp instances in parallel, together RATE exchanges/s during SECS s,
# instance g relaying from 10.77.0.(2+g) for its own range of clients, and sets SENT
# (DISCOVERs sent), DONE (REQUEST-ACK exchanges completed), LOST (drops of both exchanges),
# MAXDELAY (perfdhcp's longest wait for an answer, ms),
# SRV_DROPS / CLI_DROPS (datagrams dropped by full socket buffers in the server / client
# namespace), and over the window from the first start to the last exit: WALL_S (seconds),
# CORE_S (busy seconds of the server core), PROC_T (the server process's CPU ticks) and
# XDP_NS (ns its XDP programs ran). -W gives answers to the last requests one second to
# arrive, so a server that batches its disk syncs (a few ms) is not charged with exchanges
# that were merely in flight when the sending stopped. Outputs stay in
# $WORK/perfdhcp-<server>-<label>-<g>.out.
perf() {
  local server=$1 label=$2 rate=$3 secs=$4 per g out sd0 cd0 s0 s1 x0 x1 t0 t1 i0 i1
  per=$((CLIENTS / GENERATORS))
  sd0=$(rcvbuf_errors "$SRV")
  cd0=$(rcvbuf_errors "$CLI")
  x0=$(xdp_ns)
  s0=$(cpu_ticks)
  t0=$(date +%s%N)
  i0=$(core_idle_ticks)
  PERF_PIDS=""
  for g in $(seq 0 $((GENERATORS - 1))); do
    out="$WORK/perfdhcp-$server-$label-$g.out"
    ip netns exec "$CLI" timeout -k 5 $((secs + 30)) $PIN_CLIENT perfdhcp -4 -l "10.77.0.$((2 + g))" \
      -r $((rate / GENERATORS)) -R "$per" -b "mac=$(mac_of $((g * per)))" -p "$secs" -W 1000000 \
      10.77.0.1 >"$out" 2>&1 &
    PERF_PIDS="$PERF_PIDS $!"
  done
  for g in $PERF_PIDS; do wait "$g" || true; done # exit 3 = some exchanges lost
  PERF_PIDS=""
  i1=$(core_idle_ticks)
  t1=$(date +%s%N)
  s1=$(cpu_ticks 2>/dev/null || echo "$s0")
  x1=$(xdp_ns 2>/dev/null || echo "$x0")
  SRV_DROPS=$(($(rcvbuf_errors "$SRV") - sd0))
  CLI_DROPS=$(($(rcvbuf_errors "$CLI") - cd0))
  WALL_S=$(awk -v w=$((t1 - t0)) 'BEGIN { printf "%.3f", w / 1e9 }')
  CORE_S=$(awk -v w=$((t1 - t0)) -v i=$((i1 - i0)) -v hz="$TICK" 'BEGIN { printf "%.3f", w / 1e9 - i / hz }')
  PROC_T=$((s1 - s0))
  XDP_NS=$((x1 - x0))
  read -r SENT DONE LOST MAXDELAY < <(cat "$WORK/perfdhcp-$server-$label"-*.out | awk '
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/    { s = "ra" }
    /^sent packets:/     { if (s == "do") sent += $3 }
    /^drops:/            { lost += $2 }
    /^received packets:/ { if (s == "ra") done += $3 }
    /^max delay:/        { if ($3 + 0 > md) md = $3 + 0 }
    END { printf "%d %d %d %.1f\n", sent, done, lost, md }')
}

# Shows what a failing step looked like: perfdhcp's counters and the server's log tail.
show_failure() {
  local server=$1 label=$2 f
  for f in "$WORK/perfdhcp-$server-$label"-*.out; do
    echo "---- $(basename "$f"):" >&2
    grep -E '^(Rate:|\*\*\*Statistics|sent packets|received packets|drops|orphans|rejected|avg delay|max delay)' \
      "$f" >&2 || tail -20 "$f" >&2
  done
  echo "---- $server log tail:" >&2
  tail -20 "$WORK/$server.log" >&2 2>/dev/null || true
  echo "----" >&2
}

# Share of the two cores that was idle over one second: the numbers mean little if something
# else (a build, CI) runs at the same time.
idle_pct() {
  local a b
  a=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%d", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

# The server core's busy share with no server and no generator running (kernel threads,
# timers, this script's readings): measured as every window is, and subtracted from them.
baseline() {
  local t0 t1 i0 i1
  t0=$(date +%s%N)
  i0=$(core_idle_ticks)
  sleep "$BASE_DURATION"
  i1=$(core_idle_ticks)
  t1=$(date +%s%N)
  busy_cores "$t0" "$i0" "$t1" "$i1"
}

IDLE=$(idle_pct)
for _ in $(seq 1 $((IDLE_WAIT / 10))); do
  [ "$IDLE" -lt 90 ] || break
  echo "the machine is only ${IDLE}% idle: waiting (up to ${IDLE_WAIT} s in all) for it to calm down" >&2
  sleep 9
  IDLE=$(idle_pct)
done
if [ "$IDLE" -lt 90 ]; then
  echo "warning: the machine is only ${IDLE}% idle before the run; results will be noisy" >&2
fi
if [ -n "$(find "$ROOT/boot-userspace" "$ROOT/boot-ebpf" -name '*.rs' -newer "$BIN" 2>/dev/null | head -1)" ]; then
  echo "warning: $BIN is older than some sources: rebuild with cargo xtask build --release" >&2
fi
KEA_V=$(kea-dhcp4 -v)
DNSMASQ_V=$(dnsmasq -v | head -1 | awk '{print $3}')
PERFDHCP_V=$(perfdhcp -v 2>&1 | awk '/VERSION/ { print $2 }')
results_note "bootfabric: $BIN, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M')"
results_note "kea-dhcp4: $KEA_V"
results_note "dnsmasq: $DNSMASQ_V"
results_note "perfdhcp: $PERFDHCP_V ($GENERATORS instances)"
results_note "state: $WORK ($(df --output=fstype "$WORK" | tail -1))"
echo "bootfabric $BIN, kea-dhcp4 $KEA_V, dnsmasq $DNSMASQ_V, perfdhcp $PERFDHCP_V x $GENERATORS"
echo "state in $WORK ($(df --output=fstype "$WORK" | tail -1)), $CORES cores, ${IDLE}% idle at start"
echo "rates: $RATES, $DURATION s each, $CLIENTS clients; CPU at $FIXED_RATE/s for $FIXED_DURATION s"
echo

declare -A MAXRATE BUSY CPU PROC XDP REST XDPNS MODE FIXED
# Phase 1: step the rate up, a fresh server with empty lease state per attempt, until a step
# loses an exchange in each of its TRIES attempts (or perfdhcp itself cannot send at the rate).
# A step passes when one attempt lost nothing: on this VM a single stall of ~30 ms (seen as
# perfdhcp's max delay) overflows a socket buffer at a few thousand exchanges/s, whichever
# server runs, and one such stall should not decide a server's maximum.
for server in $SERVERS; do
  best=0
  all=1
  for rate in $RATES; do
    want=$((rate / GENERATORS * GENERATORS * DURATION))
    passed=0
    for try in $(seq 1 "$TRIES"); do
      start_server "$server"
      case $server in bootfabric*) MODE[$server]=$(xdp_mode) ;; esac
      perf "$server" "$rate-$try" "$rate" "$DURATION"
      stop_server
      printf '%-14s rate %6d/s try %d: %7d sent (%3d%%), %7d completed, %5d lost; rcvbuf drops srv %d cli %d; max delay %s ms; server core busy %s\n' \
        "$server" "$rate" "$try" "$SENT" $((SENT * 100 / want)) "$DONE" "$LOST" "$SRV_DROPS" "$CLI_DROPS" "$MAXDELAY" \
        "$(awk -v c="$CORE_S" -v w="$WALL_S" 'BEGIN { printf "%.0f%%", 100 * c / w }')"
      if [ "$DONE" -gt 0 ] && [ "$LOST" -eq 0 ] && [ $((SENT * 100)) -ge $((want * 95)) ]; then
        passed=1
        break
      fi
    done
    if [ "$passed" = 1 ]; then
      best=$rate
      BUSY[$server]=$(awk -v c="$CORE_S" -v w="$WALL_S" 'BEGIN { printf "%.0f%%", 100 * c / w }')
    else
      all=0
      # The step failed on perfdhcp's side when (in its last attempt) it could not send at
      # the rate or every lost answer was dropped at its own socket: the server's limit lies
      # higher.
      if [ $((SENT * 100)) -lt $((want * 95)) ] || { [ "$SRV_DROPS" -eq 0 ] && [ "$CLI_DROPS" -ge "$LOST" ]; }; then
        all=generator
        echo "$server at $rate/s: the generator's limit (sent $SENT of $want, its sockets dropped $CLI_DROPS)" >&2
      else
        show_failure "$server" "$rate-$TRIES"
      fi
      break
    fi
  done
  case $all in
    1) MAXRATE[$server]="≥ $best (top step)" ;;
    generator) MAXRATE[$server]="≥ $best (generator's limit)" ;;
    *) if [ "$best" = 0 ]; then MAXRATE[$server]="< ${RATES%% *}"; else MAXRATE[$server]=$best; fi ;;
  esac
done
for server in $SERVERS; do
  case $server in bootfabric*)
    echo "$server: XDP attached to fabric0 in ${MODE[$server]:-none} mode (ip link)"
    results_note "xdp mode ($server): ${MODE[$server]:-none}" ;;
  esac
done

# Phase 2: the server core's busy time per 10,000 completed exchanges at one fixed rate, less
# the idle baseline: the median of the baselines taken before each server's window and after
# the last, so that one burst of unrelated work in one of them does not move every figure.
BASES=""
for server in $SERVERS; do
  b=$(baseline)
  echo "idle baseline of core $SERVER_CPU before $server: $b cores over $BASE_DURATION s"
  BASES="$BASES $b"
  start_server "$server"
  perf "$server" fixed "$FIXED_RATE" "$FIXED_DURATION"
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$server died during the fixed-rate run" >&2
    DONE=0
  fi
  stop_server
  FIXED[$server]="$DONE $LOST $WALL_S $CORE_S $PROC_T $XDP_NS"
done
b=$(baseline)
echo "idle baseline of core $SERVER_CPU after the last: $b cores over $BASE_DURATION s"
BASES="$BASES $b"
BASE=$(tr ' ' '\n' <<<"$BASES" | grep . | sort -g | awk '{ v[NR] = $1 }
  END { printf "%.4f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
results_note "idle baselines of the server core (cores):$BASES; median $BASE"
for server in $SERVERS; do
  read -r done lost wall core ptick xns <<<"${FIXED[$server]}"
  if [ "$done" -gt 0 ]; then
    # Whole: busy seconds on the server core minus the baseline's share of the same window.
    read -r "CPU[$server]" "PROC[$server]" "XDP[$server]" "REST[$server]" "XDPNS[$server]" < <(awk \
      -v n="$done" -v w="$wall" -v c="$core" -v b="$BASE" -v t="$ptick" -v hz="$TICK" -v x="$xns" 'BEGIN {
        k = 10000 / n; whole = (c - b * w) * k; proc = t / hz * k; xdp = x / 1e9 * k
        printf "%.3f %.3f %.3f %.3f %s\n", whole, proc, xdp, whole - proc - xdp,
          (x > 0 ? sprintf("%.0f", x / n / 2) : "-") }')
  else
    CPU[$server]="n/a"; PROC[$server]="n/a"; XDP[$server]="n/a"; REST[$server]="n/a"; XDPNS[$server]="-"
  fi
  printf '%-14s fixed %d/s for %ds: %d completed, %d lost; server core busy %s s of %s s; process %d ticks, XDP %.3f s (%s ns per packet); per 10k: whole %s, process %s, XDP program %s, rest %s\n' \
    "$server" "$FIXED_RATE" "$FIXED_DURATION" "$done" "$lost" "$core" "$wall" "$ptick" \
    "$(awk -v x="$xns" 'BEGIN { print x / 1e9 }')" "${XDPNS[$server]}" \
    "${CPU[$server]}" "${PROC[$server]}" "${XDP[$server]}" "${REST[$server]}"
  if awk -v r="${REST[$server]}" 'BEGIN { exit !(r + 0 < -0.05) }'; then
    echo "warning: $server: the core's busy time is below its own parts: the baseline moved; rerun on a quiet machine" >&2
  fi
  if [ "$lost" -gt 0 ]; then
    # The figure still divides by completed exchanges, but the rate was not sustained.
    CPU[$server]="${CPU[$server]} ($lost lost)"
    show_failure "$server" fixed
  fi
done

# The table, in the markdown docs/benchmarks.md quotes (rows copied from table.md, never retyped).
label() {
  case $1 in
    bootfabric-xdp) echo "Bootfabric, XDP fast path (${MODE[$1]:-no} XDP on a veth)" ;;
    bootfabric) echo "Bootfabric, userspace path (\`xdp.dhcp_fast_path = false\`)" ;;
    kea) echo "kea-dhcp4 $KEA_V, memfile" ;;
    dnsmasq) echo "dnsmasq $DNSMASQ_V, \`no-ping\`" ;;
  esac
}
{
  echo "| server | max rate, no loss (ex/s) | server core busy at that rate | server core CPU s per 10k exchanges @ ${FIXED_RATE}/s | of which the server process | of which the XDP program | of which the rest (kernel) | vs kea-dhcp4 |"
  echo "|---|---|---|---|---|---|---|---|"
  for server in $SERVERS; do
    ratio=$(awk -v a="${CPU[$server]}" -v b="${CPU[kea]:-}" 'BEGIN {
      split(a, x, " "); split(b, y, " ")
      if (x[1] + 0 > 0 && y[1] + 0 > 0) printf "%.3f", x[1] / y[1]; else print "-" }')
    xdp=${XDP[$server]}
    [ "${XDPNS[$server]}" = - ] && xdp="-"
    echo "| $(label "$server") | ${MAXRATE[$server]} | ${BUSY[$server]:--} | ${CPU[$server]} | ${PROC[$server]} | $xdp | ${REST[$server]} | $ratio |"
  done
} >"$RESULTS/table.md"
echo
echo "DHCP benchmark $(date -u '+%Y-%m-%d %H:%M UTC'), $CLIENTS clients, $GENERATORS perfdhcp on core $CLIENT_CPU, server on core $SERVER_CPU, idle baseline $BASE cores, ${IDLE}% idle at start / $(idle_pct)% at end"
cat "$RESULTS/table.md"
if awk -v b="$BASE" 'BEGIN { exit !(b > 0.1) }'; then
  echo "warning: the idle server core was $BASE busy: something else ran there; rerun on a quiet machine" >&2
fi
