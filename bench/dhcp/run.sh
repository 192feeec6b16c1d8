#!/usr/bin/env bash
# DHCP benchmark: perfdhcp (Kea's load generator, acting as a relay) against Bootfabric with
# its XDP fast path on and off, kea-dhcp4 and dnsmasq, one after the other in the same run,
# with the same clients, every one of them reserved in each server. For each server it prints:
#   - the highest offered rate (4-way DORA exchanges/s) at which perfdhcp lost no exchange;
#   - the server's CPU time (user+sys, plus the XDP program's own run time for Bootfabric) per
#     10,000 completed exchanges at one fixed rate.
# Everything runs in two network namespaces this script creates (server: fabric0 10.77.0.1/16,
# client: cli0 10.77.0.2/16, one veth pair created directly inside them, nothing on the host's
# interfaces) and removes on exit, also on failure; processes are killed by PID.
#
# Usage: bench/dhcp/run.sh        (as root; `cargo xtask setup` installs the peers)
# Knobs: RATES="250 500 1000 2000 4000 8000 12000 16000 24000" DURATION=10 CLIENTS=1000
#        FIXED_RATE=250 FIXED_DURATION=40 SERVERS="bootfabric-xdp bootfabric kea dnsmasq"
#        BOOTFABRIC_BIN=target/release/bootfabric
#        TMPDIR=/dev/shm (lease state on tmpfs)   KEEP=1 (keep the work folder with all logs)
#        IDLE_WAIT=300 (seconds to wait at most for the cores to be >= 90% idle before starting)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
RATES=${RATES:-"250 500 1000 2000 4000 8000 12000 16000 24000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1000}
FIXED_RATE=${FIXED_RATE:-250}
FIXED_DURATION=${FIXED_DURATION:-40}
SERVERS=${SERVERS:-"bootfabric-xdp bootfabric kea dnsmasq"}
IDLE_WAIT=${IDLE_WAIT:-300}
TICK=$(getconf CLK_TCK)
POOL_SIZE=$((200 * 256)) # 10.77.1.0 - 10.77.200.255

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in perfdhcp kea-dhcp4 dnsmasq ip ss timeout; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
[ "$CLIENTS" -le "$POOL_SIZE" ] || { echo "CLIENTS must not exceed the pool ($POOL_SIZE)" >&2; exit 2; }
[ "$CLIENTS" -le 65536 ] || { echo "CLIENTS must not exceed 65536 (two MAC octets)" >&2; exit 2; }
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
PERF_PID=""
# stop_pid (and NETNS_MADE); this script keeps its own /16 lab and /proc CPU accounting.
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }
BPF_STATS_WAS=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BPF_STATS_WAS" ]; then sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" || true; fi
  stop_pid "$PERF_PID"
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

NETNS_MADE=1
ip netns add "$SRV"
ip netns add "$CLI"
# The veth pair is born inside the two namespaces: no interface ever exists on the host side.
ip link add fabric0 netns "$SRV" type veth peer name cli0 netns "$CLI"
ip -n "$SRV" addr add 10.77.0.1/16 dev fabric0
ip -n "$CLI" addr add 10.77.0.2/16 dev cli0
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set fabric0 up
ip -n "$CLI" link set cli0 up
# One core for each side: the server and everything the kernel does for packets arriving at
# it (the stack's receive path, or the XDP program in generic mode, steered there by RPS) run
# on core 0, perfdhcp and the receive path of the answers on core 1. Without the split, veth
# runs the receiver's softirq in the sender's context, so the XDP program's work would land
# on perfdhcp's core and in its time slice.
SERVER_CPU=0
CLIENT_CPU=1
if [ "$(nproc)" -ge 2 ]; then
  ip netns exec "$SRV" sh -c "echo 1 > /sys/class/net/fabric0/queues/rx-0/rps_cpus"
  ip netns exec "$CLI" sh -c "echo 2 > /sys/class/net/cli0/queues/rx-0/rps_cpus"
  PIN_SERVER="taskset -c $SERVER_CPU"
  PIN_CLIENT="taskset -c $CLIENT_CPU"
else
  PIN_SERVER=""
  PIN_CLIENT=""
fi

# Every simulated client is reserved in every server. perfdhcp with `-b mac=02:00:00:00:00:00`
# and `-R N` draws client r in [0, N) and adds r to the base MAC from the last octet up, so
# client r is 02:00:00:00:HI:LO with HI:LO = r; it gets 10.77.(1 + r/256).(r%256).
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
# The XDP program's own run time (what it costs in softirq, charged to no process) is read
# from its fd's fdinfo, which needs BPF run-time statistics on for the length of the run.
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

start_server() {
  local name=$1
  rm -rf "$WORK/state" "$WORK"/*.leases "$WORK"/*.csv* "$WORK"/*.log "$WORK"/*.pid
  case $name in
    bootfabric | bootfabric-xdp)
      local fast=false
      [ "$name" = bootfabric-xdp ] && fast=true
      # The shield's per-client and per-relay rates are lifted: perfdhcp is one relay
      # carrying every client, which the defaults would (rightly) throttle.
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
mode = "auto"
dhcp_fast_path = $fast
relay_rate_limit = 10000000
[dhcp]
rate_limit = 100000
[dhcp.options]
lease_time = 3600
[[dhcp.subnets]]
cidr = "10.77.0.0/16"
interface = "fabric0"
pools = ["10.77.1.0-10.77.200.255"]
TOML
      ip netns exec "$SRV" $PIN_SERVER "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/$name.log" &
      ;;
    kea)
      cat >"$WORK/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "fabric0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                      "name": "$WORK/kea-leases.csv" },
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.77.0.0/16",
                 "pools": [ { "pool": "10.77.1.0 - 10.77.200.255" } ],
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
        --dhcp-range=10.77.1.0,10.77.200.255,255.255.0.0,1h \
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

# Busy ticks of the whole machine (all cores) since boot.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# CPU ticks of this shell's waited-for children (perfdhcp under timeout, once it is reaped).
child_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# Datagrams a namespace's UDP sockets dropped because their receive buffer was full.
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp; }

# Runs perfdhcp for RATE exchanges/s during SECS s and sets SENT (DISCOVERs sent), DONE
# (REQUEST-ACK exchanges completed), LOST (drops of both exchanges), SRV_DROPS / CLI_DROPS
# (datagrams dropped by full socket buffers in the server / client namespace) and OTHER
# (cores' worth of CPU used by anything but the server and perfdhcp: kernel softirq work plus
# whatever else runs on the machine; well above the idle-machine baseline means noise). -W
# gives answers to the last requests one second to arrive, so a server that batches its disk
# syncs (a few ms) is not charged with exchanges that were merely in flight when the sending
# stopped. The output stays in $WORK/perfdhcp-<server>-<label>.out.
perf() {
  local server=$1 label=$2 rate=$3 secs=$4 out b0 c0 s0 t0 sd0 cd0 b1 c1 s1 t1
  out="$WORK/perfdhcp-$server-$label.out"
  sd0=$(rcvbuf_errors "$SRV")
  cd0=$(rcvbuf_errors "$CLI")
  s0=$(cpu_ticks)
  c0=$(child_ticks)
  b0=$(busy_ticks)
  t0=$(date +%s%N)
  ip netns exec "$CLI" timeout -k 5 $((secs + 30)) $PIN_CLIENT perfdhcp -4 -l cli0 -r "$rate" \
    -R "$CLIENTS" -b mac=02:00:00:00:00:00 -p "$secs" -W 1000000 10.77.0.1 >"$out" 2>&1 &
  PERF_PID=$!
  wait "$PERF_PID" || true # exit 3 = some exchanges lost
  PERF_PID=""
  b1=$(busy_ticks)
  t1=$(date +%s%N)
  c1=$(child_ticks)
  s1=$(cpu_ticks 2>/dev/null || echo "$s0")
  SRV_DROPS=$(($(rcvbuf_errors "$SRV") - sd0))
  CLI_DROPS=$(($(rcvbuf_errors "$CLI") - cd0))
  OTHER=$(awk -v t=$((b1 - b0 - (s1 - s0) - (c1 - c0))) -v hz="$TICK" -v ns=$((t1 - t0)) \
    'BEGIN { v = t / hz / (ns / 1e9); if (v < 0) v = 0; printf "%.2f", v }')
  read -r SENT DONE LOST < <(awk '
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/    { s = "ra" }
    /^sent packets:/     { if (s == "do") sent = $3 }
    /^drops:/            { lost += $2 }
    /^received packets:/ { if (s == "ra") done = $3 }
    END { printf "%d %d %d\n", sent, done, lost }' "$out")
}

# Shows what a failing step looked like: perfdhcp's counters and the server's log tail.
show_failure() {
  local server=$1 label=$2
  echo "---- perfdhcp, $server, $label:" >&2
  grep -E '^(Rate:|\*\*\*Statistics|sent packets|received packets|drops|orphans|rejected|avg delay|max delay)' \
    "$WORK/perfdhcp-$server-$label.out" >&2 || tail -20 "$WORK/perfdhcp-$server-$label.out" >&2
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
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- boot-userspace boot-ebpf 2>/dev/null)" ]; then
  REV="$REV+dirty"
fi
if [ -n "$(find "$ROOT/boot-userspace" "$ROOT/boot-ebpf" -name '*.rs' -newer "$BIN" 2>/dev/null | head -1)" ]; then
  echo "warning: $BIN is older than some sources: rebuild with cargo xtask build --release" >&2
fi
echo "bootfabric $BIN (tree now $REV, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M')), $(kea-dhcp4 -v), $(dnsmasq -v | head -1 | awk '{print $1, $3}')"
echo "state in $WORK ($(df --output=fstype "$WORK" | tail -1)), $(nproc) cores, ${IDLE}% idle at start"
echo "rates: $RATES, $DURATION s each, $CLIENTS clients; CPU at $FIXED_RATE/s for $FIXED_DURATION s"
echo

declare -A MAXRATE CPU XDPNS NOISE
# Highest "other load" seen for a server in any of its runs.
note_noise() {
  NOISE[$1]=$(awk -v a="${NOISE[$1]:-0}" -v b="$OTHER" 'BEGIN { print (b > a ? b : a) }')
}
# Phase 1: step the rate up, a fresh server with empty lease state per step, until a step
# loses an exchange (or perfdhcp itself cannot send at the rate).
for server in $SERVERS; do
  best=0
  all=1
  for rate in $RATES; do
    start_server "$server"
    perf "$server" "$rate" "$rate" "$DURATION"
    stop_server
    note_noise "$server"
    want=$((rate * DURATION))
    printf '%-14s rate %6d/s: %7d sent (%3d%%), %7d completed, %5d lost; rcvbuf drops srv %d cli %d; other load %s cores\n' \
      "$server" "$rate" "$SENT" $((SENT * 100 / want)) "$DONE" "$LOST" "$SRV_DROPS" "$CLI_DROPS" "$OTHER"
    if [ "$DONE" -gt 0 ] && [ "$LOST" -eq 0 ] && [ $((SENT * 100)) -ge $((want * 95)) ]; then
      best=$rate
    else
      all=0
      # The step failed on perfdhcp's side when it could not send at the rate or every
      # lost answer was dropped at its own socket: the server's limit lies higher.
      if [ $((SENT * 100)) -lt $((want * 95)) ] || { [ "$SRV_DROPS" -eq 0 ] && [ "$CLI_DROPS" -ge "$LOST" ]; }; then
        all=generator
        echo "$server at $rate/s: perfdhcp's limit (sent $SENT of $want, its socket dropped $CLI_DROPS)" >&2
      else
        show_failure "$server" "$rate"
      fi
      break
    fi
  done
  case $all in
    1) MAXRATE[$server]=">= $best (top step)" ;;
    generator) MAXRATE[$server]=">= $best (perfdhcp's limit)" ;;
    *) MAXRATE[$server]=$best ;;
  esac
done

# Phase 2: CPU time of each server per 10,000 completed exchanges at one fixed rate.
for server in $SERVERS; do
  start_server "$server"
  t0=$(cpu_ticks)
  x0=$(xdp_ns)
  perf "$server" fixed "$FIXED_RATE" "$FIXED_DURATION"
  x1=$(xdp_ns)
  note_noise "$server"
  if ! t1=$(cpu_ticks 2>/dev/null); then
    echo "$server died during the fixed-rate run" >&2
    t1=$t0
    DONE=0
  fi
  stop_server
  if [ "$DONE" -gt 0 ]; then
    CPU[$server]=$(awk -v t=$((t1 - t0)) -v x=$((x1 - x0)) -v hz="$TICK" -v n="$DONE" \
      'BEGIN { printf "%.3f", (t / hz + x / 1e9) / n * 10000 }')
    # Two packets reach the server per exchange (DISCOVER, REQUEST).
    XDPNS[$server]=$(awk -v x=$((x1 - x0)) -v n="$DONE" 'BEGIN { if (x > 0) printf "%.0f", x / n / 2; else print "-" }')
  else
    CPU[$server]="n/a"
    XDPNS[$server]="-"
  fi
  printf '%-14s fixed %d/s for %ds: %d completed, %d lost, %d CPU ticks + %.3f s in XDP, %s CPU s per 10k; XDP %s ns per packet; other load %s cores\n' \
    "$server" "$FIXED_RATE" "$FIXED_DURATION" "$DONE" "$LOST" $((t1 - t0)) \
    "$(awk -v x=$((x1 - x0)) 'BEGIN { print x / 1e9 }')" "${CPU[$server]}" "${XDPNS[$server]}" "$OTHER"
  if [ "$LOST" -gt 0 ]; then
    # The figure still divides by completed exchanges, but the rate was not sustained.
    CPU[$server]="${CPU[$server]} ($LOST lost)"
    show_failure "$server" fixed
  fi
done

echo
echo "DHCP benchmark $(date -u '+%Y-%m-%d %H:%M UTC'), $CLIENTS clients, $(nproc) cores shared with perfdhcp, ${IDLE}% idle at start / $(idle_pct)% at end"
printf '%-15s %-30s %-32s %-22s %s\n' server "max rate no loss (ex/s)" "server CPU s/10k @ ${FIXED_RATE}/s" "XDP ns per packet" "other load (cores, max)"
for server in $SERVERS; do
  name=$server
  [ "$server" = kea ] && name=kea-dhcp4
  printf '%-15s %-30s %-32s %-22s %s\n' "$name" "${MAXRATE[$server]}" "${CPU[$server]}" "${XDPNS[$server]}" "${NOISE[$server]}"
done
# Ratios, the figures to compare across machines: each Bootfabric path over each peer.
for mine in bootfabric-xdp bootfabric; do
  [ -n "${MAXRATE[$mine]:-}" ] || continue
  for peer in $SERVERS; do
    case $peer in bootfabric*) continue ;; esac
    awk -v m="$mine" -v p="$peer" -v r1="${MAXRATE[$mine]}" -v r2="${MAXRATE[$peer]}" \
        -v c1="${CPU[$mine]}" -v c2="${CPU[$peer]}" 'BEGIN {
      gsub(/[^0-9.]/, "", r1); gsub(/[^0-9.]/, "", r2)
      split(c1, a, " "); split(c2, b, " ")
      if (p == "kea") p = "kea-dhcp4"
      printf "%-14s / %-10s max rate %s, server CPU per exchange %s\n", m, p,
        (r2 > 0 ? sprintf("x%.2f", r1 / r2) : "n/a"),
        (a[1] + 0 > 0 && b[1] + 0 > 0 ? sprintf("x%.3f", a[1] / b[1]) : "n/a") }'
  done
done
for server in $SERVERS; do
  if awk -v n="${NOISE[$server]}" 'BEGIN { exit !(n > 0.5) }'; then
    echo "warning: something else used up to ${NOISE[$server]} cores during the $server runs: rerun on a quiet machine" >&2
  fi
done
