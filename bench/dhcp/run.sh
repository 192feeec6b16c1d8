#!/usr/bin/env bash
# DHCP benchmark: perfdhcp (Kea's load generator, acting as a relay) against Bootfabric,
# kea-dhcp4 and dnsmasq, one after the other in the same run, with the same client count and
# pool. For each server it prints:
#   - the highest offered rate (4-way exchanges/s) at which perfdhcp lost no exchange;
#   - the server's CPU time (user+sys) per 10,000 completed exchanges at one fixed rate.
# Everything runs in two network namespaces this script creates (server: fabric0 10.77.0.1/16,
# client: cli0 10.77.0.2/16) and removes on exit; processes are killed by PID.
#
# Usage: bench/dhcp/run.sh        (as root; `cargo xtask setup` installs the peers)
# Knobs: RATES="250 500 1000 2000 4000" DURATION=10 CLIENTS=1000 FIXED_RATE=500 FIXED_DURATION=20
#        BOOTFABRIC_BIN=target/release/bootfabric SERVERS="bootfabric kea dnsmasq"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
RATES=${RATES:-"250 500 1000 2000 4000 8000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1000}
FIXED_RATE=${FIXED_RATE:-500}
FIXED_DURATION=${FIXED_DURATION:-20}
SERVERS=${SERVERS:-"bootfabric kea dnsmasq"}
TICK=$(getconf CLK_TCK)

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in perfdhcp kea-dhcp4 dnsmasq; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
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

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
cleanup() {
  stop_server
  ip netns del "$SRV" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$SRV"
ip netns add "$CLI"
ip link add fabric0 netns "$SRV" type veth peer name cli0 netns "$CLI"
ip -n "$SRV" addr add 10.77.0.1/16 dev fabric0
ip -n "$CLI" addr add 10.77.0.2/16 dev cli0
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set fabric0 up
ip -n "$CLI" link set cli0 up

# Waits (at most 30 s) until something in the server namespace listens on UDP port 67.
wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -uln 2>/dev/null | grep -q ':67 '; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:" >&2; tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not start" >&2; return 1
}

start_server() {
  local name=$1
  rm -rf "$WORK/state" "$WORK"/*.leases "$WORK"/*.csv* "$WORK"/*.log
  case $name in
    bootfabric)
      cat >"$WORK/bootfabric.toml" <<TOML
[daemon]
state_dir = "state"
log = "warn"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "off"
[dhcp]
rate_limit = 100000
[dhcp.options]
lease_time = 3600
[[dhcp.subnets]]
cidr = "10.77.0.0/16"
interface = "fabric0"
pools = ["10.77.1.0-10.77.200.255"]
TOML
      ip netns exec "$SRV" "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/bootfabric.log" &
      ;;
    kea)
      cat >"$WORK/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "fabric0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                      "name": "$WORK/kea-leases.csv" },
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.77.0.0/16",
                 "pools": [ { "pool": "10.77.1.0 - 10.77.200.255" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                 "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
JSON
      KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK \
        ip netns exec "$SRV" kea-dhcp4 -c "$WORK/kea.json" >>"$WORK/kea.log" 2>&1 &
      ;;
    dnsmasq)
      ip netns exec "$SRV" dnsmasq --no-daemon --port=0 --conf-file=/dev/null \
        --interface=fabric0 --bind-interfaces \
        --dhcp-range=10.77.1.0,10.77.200.255,255.255.0.0,1h \
        --dhcp-authoritative --no-ping --dhcp-lease-max=100000 --quiet-dhcp \
        --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" \
        >"$WORK/dnsmasq.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_listening "$name"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

# Runs perfdhcp; prints "<completed exchanges> <lost exchanges>". -W gives answers to the last
# requests one second to arrive, so a server that batches its disk syncs (a few ms) is not
# charged with exchanges that were merely in flight when the sending stopped.
perf() {
  local rate=$1 secs=$2 out
  out=$(ip netns exec "$CLI" timeout $((secs + 30)) perfdhcp -4 -l cli0 -r "$rate" \
        -R "$CLIENTS" -p "$secs" -W 1000000 10.77.0.1 2>&1 || true)
  echo "$out" >"$WORK/perfdhcp.last"
  awk '
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/    { s = "ra" }
    /^drops:/            { lost += $2 }
    /^received packets:/ { if (s == "ra") done = $3 }
    END { printf "%d %d\n", done, lost }' <<<"$out"
}

declare -A MAXRATE CPU
for server in $SERVERS; do
  best=0
  for rate in $RATES; do
    start_server "$server"
    read -r done lost < <(perf "$rate" "$DURATION")
    stop_server
    printf '%-11s rate %6d/s: %7d exchanges completed, %5d lost\n' "$server" "$rate" "$done" "$lost"
    if [ "$done" -gt 0 ] && [ "$lost" -eq 0 ]; then best=$rate; else break; fi
  done
  MAXRATE[$server]=$best

  start_server "$server"
  t0=$(cpu_ticks)
  read -r done lost < <(perf "$FIXED_RATE" "$FIXED_DURATION")
  t1=$(cpu_ticks)
  stop_server
  if [ "$done" -gt 0 ]; then
    CPU[$server]=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v n="$done" 'BEGIN { printf "%.3f", t / hz / n * 10000 }')
  else
    CPU[$server]="n/a"
  fi
  printf '%-11s fixed %d/s for %ds: %d exchanges, %d lost, %s CPU s per 10k\n' \
    "$server" "$FIXED_RATE" "$FIXED_DURATION" "$done" "$lost" "${CPU[$server]}"
done

echo
echo "DHCP benchmark $(date -u +%Y-%m-%d), $CLIENTS clients, $(nproc) cores shared with perfdhcp"
printf '%-12s %-26s %s\n' server "max rate, no loss (ex/s)" "CPU s per 10k exchanges @ ${FIXED_RATE}/s"
for server in $SERVERS; do
  printf '%-12s %-26s %s\n' "$server" "${MAXRATE[$server]}" "${CPU[$server]}"
done
