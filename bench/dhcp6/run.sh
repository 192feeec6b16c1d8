#!/usr/bin/env bash
# DHCPv6 benchmark: perfdhcp -6 (Kea's load generator, acting as one relay agent) against
# Bootfabric, kea-dhcp6 and dnsmasq, one after the other in the same run, with the same
# clients, every one of them reserved in each server. The DHCPv4 bench (bench/dhcp/run.sh) is
# its model: same isolation, pinning, idle baselines and per-core accounting. For each server
# it prints:
#   - whether every Reply carried the client's reserved address (a short captured run);
#   - the highest offered rate (4-way Solicit/Advertise/Request/Reply exchanges/s) at which
#     perfdhcp lost no exchange and had no lease rejected;
#   - the server core's whole busy time per 10,000 completed exchanges at one fixed rate: core
#     0 holds the server, and RPS steers there the kernel's work for every packet reaching it,
#     so the core's busy time (wall time minus its idle time in /proc/stat) minus an idle
#     baseline measured the same way is what serving cost, for every server alike; the server
#     process's own CPU and any XDP program's run time are shown as parts of it.
# Everything runs in two network namespaces this script creates (server: fabric0
# 2001:db8:77::1/64, client: cli0 2001:db8:77::2/64, one veth pair created directly inside
# them, nothing on the host's interfaces) and removes on exit, also on failure; processes are
# killed by PID.
#
# Usage: bench/dhcp6/run.sh        (as root; `cargo xtask setup` installs the peers)
# Knobs: RATES="250 500 1000 2000 4000 6000 8000 12000" DURATION=10 CLIENTS=1000
#        FIXED_RATE=250 FIXED_DURATION=60 SERVERS="bootfabric kea dnsmasq"
#        TRIES=2 (attempts per rate step; the step passes when one loses nothing)
#        BASE_DURATION=15 (each idle baseline of the server core, in seconds: one before each
#        server's fixed-rate window and one after the last)
#        CHECK_RATE=100 CHECK_DURATION=3 (the captured reservation check; CHECK=0 skips it)
#        RESULTS_DIR=/tmp/x (keep this run's results out of bench/results: smoke runs)
#        BOOTFABRIC_BIN=target/release/bootfabric (never built by this script)
#        BF_XDP_MODE=generic (Bootfabric's [xdp] mode)   BF_DHCP6_EXTRA='key = value' (lines
#        added to Bootfabric's [dhcp6] section, e.g. to lift a rate limit)
#        TMPDIR=/dev/shm (lease state on tmpfs)   KEEP=1 (keep the work folder with all logs)
#        IDLE_WAIT=300 (seconds to wait at most for the cores to be >= 90% idle before starting)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
RATES=${RATES:-"250 500 1000 2000 4000 6000 8000 12000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1000}
FIXED_RATE=${FIXED_RATE:-250}
FIXED_DURATION=${FIXED_DURATION:-60}
SERVERS=${SERVERS:-"bootfabric kea dnsmasq"}
TRIES=${TRIES:-2}
BASE_DURATION=${BASE_DURATION:-15}
IDLE_WAIT=${IDLE_WAIT:-300}
CHECK=${CHECK:-1}
CHECK_RATE=${CHECK_RATE:-100}
CHECK_DURATION=${CHECK_DURATION:-3}
BF_XDP_MODE=${BF_XDP_MODE:-generic}
BF_DHCP6_EXTRA=${BF_DHCP6_EXTRA:-}
TICK=$(getconf CLK_TCK)

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in perfdhcp ip ss timeout taskset; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
for s in $SERVERS; do
  case $s in
    bootfabric) ;;
    kea) command -v kea-dhcp6 >/dev/null || { echo "kea-dhcp6 is missing: apt-get install kea-dhcp6-server (cargo xtask setup)" >&2; exit 2; } ;;
    dnsmasq) command -v dnsmasq >/dev/null || { echo "dnsmasq is missing: run cargo xtask setup" >&2; exit 2; } ;;
    *) echo "unknown server $s (bootfabric, kea, dnsmasq)" >&2; exit 2 ;;
  esac
done
if [ "$CHECK" = 1 ] && ! command -v tcpdump >/dev/null; then
  echo "tcpdump is missing: the reservation check needs it (CHECK=0 skips the check)" >&2; exit 2
fi
# Client r is reserved 2001:db8:77::1:<r in hex>; the dynamic pool is 2001:db8:77::2:0/112,
# outside every reservation (Kea's `reservations-out-of-pool` needs that).
[ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 65536 ] || { echo "CLIENTS must be 1..65536" >&2; exit 2; }
[ "$TRIES" -ge 1 ] || { echo "TRIES must be at least 1" >&2; exit 2; }
POOL_FIRST=2001:db8:77::2:0
POOL_LAST=2001:db8:77::2:ffff

ID=bfb6-$$
SRV=$ID-srv
CLI=$ID-cli
# State (Bootfabric's lease journal, Kea's memfile, dnsmasq's lease file) lives here:
# TMPDIR=/dev/shm measures the servers without the cost of reaching the disk.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bootfabric-bench6.XXXXXX")
SERVER_PID=""
PERF_PID=""
DUMP_PID=""
# stop_pid, lab_down (with NETNS_MADE), results_open and results_note come from lib.sh; the
# IPv6 lab and the per-core accounting are this script's own (lib.sh's lab_up is IPv4 /24,
# and the accounting lives in bench/dhcp/run.sh, which cannot be sourced).
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }
BPF_STATS_WAS=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BPF_STATS_WAS" ]; then sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" || true; fi
  stop_pid "$PERF_PID"
  stop_pid "$DUMP_PID"
  stop_server
  # Anything still inside our namespaces was started by this script: lab_down kills it by
  # PID, then deletes the namespaces.
  lab_down
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

results_open dhcp6 RATES DURATION TRIES CLIENTS FIXED_RATE FIXED_DURATION SERVERS BASE_DURATION \
  CHECK CHECK_RATE CHECK_DURATION BF_XDP_MODE BF_DHCP6_EXTRA TMPDIR IDLE_WAIT
CORES=$(getconf _NPROCESSORS_ONLN)

# The lab. IPv6 on, no DAD (the addresses are usable at once, and nothing else is on the
# link), no router advertisements accepted: the namespaces' own defaults, set before the veth
# pair is born in them, then once more on each device before it goes up.
NETNS_MADE=1
ip netns add "$SRV"
ip netns add "$CLI"
for ns in "$SRV" "$CLI"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
    net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
    net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0
done
ip link add fabric0 netns "$SRV" type veth peer name cli0 netns "$CLI"
ip netns exec "$SRV" sysctl -qw net.ipv6.conf.fabric0.disable_ipv6=0 net.ipv6.conf.fabric0.accept_dad=0 net.ipv6.conf.fabric0.accept_ra=0
ip netns exec "$CLI" sysctl -qw net.ipv6.conf.cli0.disable_ipv6=0 net.ipv6.conf.cli0.accept_dad=0 net.ipv6.conf.cli0.accept_ra=0
ip -n "$SRV" addr add 2001:db8:77::1/64 dev fabric0 nodad
ip -n "$CLI" addr add 2001:db8:77::2/64 dev cli0 nodad
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set fabric0 up
ip -n "$CLI" link set cli0 up
# Both ends need their link-local address (Kea opens its sockets on it, answers to the
# All_DHCP_Relay_Agents_and_Servers group come from it) and nothing tentative: at most 5 s.
lab_ready() {
  local ns dev
  for ns in "$SRV:fabric0" "$CLI:cli0"; do
    dev=${ns#*:}
    ns=${ns%%:*}
    ip -n "$ns" -6 addr show dev "$dev" scope link | grep -q 'inet6 fe80' || return 1
    ! ip -n "$ns" -6 addr show dev "$dev" | grep -q tentative || return 1
  done
}
for _ in $(seq 1 50); do lab_ready && break; sleep 0.1; done
lab_ready || { echo "the lab's IPv6 addresses did not become usable within 5 s" >&2; exit 1; }
# One core for each side, as in the DHCPv4 bench: the server and the kernel's work for every
# packet reaching it (RPS on fabric0) on core 0; perfdhcp, this script and the receive path of
# the answers (RPS on cli0) on core 1.
SERVER_CPU=0
CLIENT_CPU=1
if [ "$CORES" -ge 2 ]; then
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

# Every simulated client is reserved in every server. perfdhcp -6 builds each client's DUID
# from the DUID template (`-b duid=`) by overwriting its last 6 bytes with the client's MAC,
# and with `-b mac=02:00:00:00:00:00 -R N` draws client r in [0, N) and adds r to the base MAC
# from the last octet up (as for DHCPv4). So with the DUID-LL template 00030001 + 6 bytes,
# client r sends the client identifier DUID-LL, hardware type 1 (Ethernet), MAC
# 02:00:00:00:HI:LO with HI:LO = r: 00:03:00:01:02:00:00:00:HI:LO. (Without `-b duid`,
# perfdhcp sends a DUID-LLT whose time field is the current time: a new DUID every run.)
# It gets 2001:db8:77::1:<r in hex>. Kea reserves by that DUID, dnsmasq too (`id:`),
# Bootfabric by the MAC inside it (its inventory is keyed by MAC).
PERF_DUID=00030001020000000000
PERF_MAC=02:00:00:00:00:00
mac_of() { printf '02:00:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }
ip6_of() { printf '2001:db8:77::1:%x' "$1"; }
{
  printf '[profiles.bench]\nkernel = "bench/vmlinuz"\n'
  for r in $(seq 0 $((CLIENTS - 1))); do
    printf '[[hosts]]\nname = "n%d"\nmac = "%s"\nipv6 = "%s"\nprofile = "bench"\n' "$r" "$(mac_of "$r")" "$(ip6_of "$r")"
  done
} >"$WORK/hosts.toml"
for r in $(seq 0 $((CLIENTS - 1))); do
  printf 'id:00:03:00:01:%s,[%s]\n' "$(mac_of "$r")" "$(ip6_of "$r")"
done >"$WORK/dnsmasq.hosts"
KEA_RESERVATIONS=$(for r in $(seq 0 $((CLIENTS - 1))); do
  printf '{ "duid": "00:03:00:01:%s", "ip-addresses": [ "%s" ] },' "$(mac_of "$r")" "$(ip6_of "$r")"
done)
KEA_RESERVATIONS="[${KEA_RESERVATIONS%,}]"
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1

# Waits (at most 30 s) until the server listens on UDP port 547 in its namespace.
wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -ulnH 'sport = :547' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited:" >&2; tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not start listening on UDP 547 within 30 s" >&2; tail -20 "$WORK/$1.log" >&2; return 1
}

# The XDP mode the kernel reports for fabric0, or "none".
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

# Starts one server with empty lease state; returns non-zero (never exits) when it does not
# come up, so the caller can skip that server.
start_server() {
  local name=$1
  rm -rf "$WORK/state" "$WORK"/*.leases "$WORK"/*.csv* "$WORK"/*.log "$WORK"/*.pid "$WORK"/kea-dhcp6-serverid
  SERVER_PID=""
  case $name in
    bootfabric)
      if [ ! -x "$BIN" ]; then
        echo "bootfabric: $BIN is missing (build it with cargo xtask build --release; this script never builds)" >&2
        return 1
      fi
      # Router advertisements off: perfdhcp needs none, and nothing should change cli0's
      # addresses mid-run. The [dhcp6] section as the DHCPv6 server reads it; relayed packets
      # pick the subnet by the relay's link-address (2001:db8:77::2, inside the prefix). The
      # per-client (DUID) rate limit is lifted as the DHCPv4 bench lifts its shield's: at
      # 12000 exchanges/s each of 1000 clients sends 24 messages/s on average, above the
      # default 20. No `relays` list: any relay is trusted.
      {
        cat <<TOML
[daemon]
state_dir = "state"
log = "warn"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
router_advertisements = "off"
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "$BF_XDP_MODE"
[dhcp6]
preferred_lifetime_s = 3600
valid_lifetime_s = 7200
rapid_commit = false
rate_limit = 100000
TOML
        [ -z "$BF_DHCP6_EXTRA" ] || printf '%s\n' "$BF_DHCP6_EXTRA"
        cat <<TOML
[[dhcp6.subnets]]
cidr = "2001:db8:77::/64"
interface = "fabric0"
pools = ["$POOL_FIRST-$POOL_LAST"]
TOML
      } >"$WORK/bootfabric.toml"
      ip netns exec "$SRV" $PIN_SERVER "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/$name.log" &
      ;;
    kea)
      # As in the DHCPv4 bench, tuned for reservations as Kea's manual advises: only the
      # identifier in use (the DUID), in-subnet reservations only, every reservation outside
      # the pool. Kea listens on the link-local address and ff02::1:2 by default; the
      # `fabric0/2001:db8:77::1` form adds the unicast socket the relay sends to. The server
      # identifier is a DUID-LL from fabric0's MAC, not written to disk (`persist: false`,
      # data-directory in the work folder anyway). memfile with persist appends each lease to
      # its CSV and never fsyncs.
      cat >"$WORK/kea.json" <<JSON
{ "Dhcp6": {
  "interfaces-config": { "interfaces": [ "fabric0/2001:db8:77::1" ] },
  "server-id": { "type": "LL", "persist": false },
  "data-directory": "$WORK",
  "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                      "name": "$WORK/kea-leases6.csv" },
  "host-reservation-identifiers": [ "duid" ],
  "reservations-global": false,
  "reservations-in-subnet": true,
  "reservations-out-of-pool": true,
  "preferred-lifetime": 3600,
  "valid-lifetime": 7200,
  "subnet6": [ { "id": 1, "subnet": "2001:db8:77::/64", "interface": "fabric0",
                 "rapid-commit": false,
                 "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
                 "reservations": $KEA_RESERVATIONS } ],
  "loggers": [ { "name": "kea-dhcp6", "severity": "WARN",
                 "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
JSON
      KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK \
        ip netns exec "$SRV" $PIN_SERVER kea-dhcp6 -c "$WORK/kea.json" >>"$WORK/kea.log" 2>&1 &
      ;;
    dnsmasq)
      # DHCPv6 only (no IPv4 range, DNS off). Its socket is [::]:547 bound to fabric0, so it
      # takes the relay's unicast; it picks the range by the relay's link-address.
      ip netns exec "$SRV" $PIN_SERVER dnsmasq --no-daemon --port=0 --conf-file=/dev/null \
        --interface=fabric0 --bind-interfaces \
        --dhcp-range="$POOL_FIRST,$POOL_LAST,64,2h" \
        --dhcp-authoritative --dhcp-lease-max=200000 --quiet-dhcp6 \
        --dhcp-hostsfile="$WORK/dnsmasq.hosts" \
        --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" \
        >"$WORK/dnsmasq.log" 2>&1 &
      ;;
  esac
  # `ip netns exec` and taskset exec the server, so $! is the server's own PID (checked below).
  SERVER_PID=$!
  wait_listening "$name" || { stop_server; return 1; }
  local comm
  comm=$(cat "/proc/$SERVER_PID/comm")
  case $comm in
    bootfabric | kea-dhcp6 | dnsmasq) ;;
    *) echo "PID $SERVER_PID is $comm, not the server" >&2; stop_server; return 1 ;;
  esac
}

# utime + stime of the whole server process (all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
# Nanoseconds the server's XDP programs ran (0 when it has none).
xdp_ns() {
  local total=0 f v
  for f in /proc/"$SERVER_PID"/fdinfo/*; do
    v=$(awk '/^prog_type:/ { t = $2 } /^run_time_ns:/ { n = $2 } END { if (t == 6) print n + 0 }' "$f" 2>/dev/null)
    [ -n "$v" ] && total=$((total + v))
  done
  echo "$total"
}
# The server core's idle time since boot, in clock ticks (idle + iowait of its /proc/stat
# line): with NO_HZ the kernel measures it from the moments the core enters and leaves idle,
# so wall time minus idle time is the core's busy time whatever ran on it (see the DHCPv4
# bench's README).
core_idle_ticks() { awk -v c="cpu$SERVER_CPU" '$1 == c { print $5 + $6 }' /proc/stat; }
busy_cores() {
  awk -v w=$(($3 - $1)) -v i=$(($4 - $2)) -v hz="$TICK" \
    'BEGIN { v = (w / 1e9 - i / hz) / (w / 1e9); if (v < 0) v = 0; printf "%.4f", v }'
}
# Datagrams a namespace's UDP/IPv6 sockets dropped because their receive buffer was full.
rcvbuf_errors() { ip netns exec "$1" awk '$1 == "Udp6RcvbufErrors" { print $2 }' /proc/net/snmp6; }

# The perfdhcp command line: one relay agent (-A 1) on cli0, its Relay-forward sent to the
# server's unicast address from [2001:db8:77::2]:547 (link-address and peer-address both
# 2001:db8:77::2), the clients' DUIDs as above. -W gives answers to the last requests one
# second to arrive.
perf_cmd() {
  echo perfdhcp -6 -l cli0 -A 1 -r "$1" -R "$CLIENTS" -b "duid=$PERF_DUID" -b "mac=$PERF_MAC" \
    -p "$2" -W 1000000 2001:db8:77::1
}

# Runs perfdhcp at RATE exchanges/s during SECS s and sets SENT (Solicits sent), DONE
# (Request-Reply exchanges completed), LOST (drops of both exchanges), REJ (Advertises or
# Replies without an IA_NA holding an IAADDR: perfdhcp calls them rejected leases and sends
# no Request for such an Advertise), MAXDELAY (perfdhcp's longest wait for an answer, ms),
# SRV_DROPS / CLI_DROPS (datagrams dropped by full socket buffers in the server / client
# namespace), and over the window from its start to its exit: WALL_S (seconds), CORE_S (busy
# seconds of the server core), PROC_T (the server process's CPU ticks) and XDP_NS (ns its XDP
# programs ran). perfdhcp's output stays in $WORK/perfdhcp-<server>-<label>.out.
perf() {
  local server=$1 label=$2 rate=$3 secs=$4 out sd0 cd0 s0 s1 x0 x1 t0 t1 i0 i1
  out="$WORK/perfdhcp-$server-$label.out"
  sd0=$(rcvbuf_errors "$SRV")
  cd0=$(rcvbuf_errors "$CLI")
  x0=$(xdp_ns)
  s0=$(cpu_ticks)
  t0=$(date +%s%N)
  i0=$(core_idle_ticks)
  # shellcheck disable=SC2046
  ip netns exec "$CLI" timeout -k 5 $((secs + 30)) $PIN_CLIENT $(perf_cmd "$rate" "$secs") >"$out" 2>&1 &
  PERF_PID=$!
  wait "$PERF_PID" || true # exit 3 = some exchanges lost
  PERF_PID=""
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
  read -r SENT DONE LOST REJ MAXDELAY < <(awk '
    /Statistics for: SOLICIT-ADVERTISE/ { s = "sa" }
    /Statistics for: REQUEST-REPLY/     { s = "rr" }
    /^sent packets:/     { if (s == "sa") sent += $3 }
    /^drops:/            { lost += $2 }
    /^rejected leases:/  { rej += $3 }
    /^received packets:/ { if (s == "rr") done += $3 }
    /^max delay:/        { if ($3 + 0 > md) md = $3 + 0 }
    END { printf "%d %d %d %d %.1f\n", sent, done, lost, rej, md }' "$out")
}

# Shows what a failing step looked like: perfdhcp's counters and the server's log tail.
show_failure() {
  local server=$1 label=$2 f="$WORK/perfdhcp-$1-$2.out"
  echo "---- $(basename "$f"):" >&2
  if [ -f "$f" ]; then
    grep -E '^(Rate:|\*\*\*Statistics|sent packets|received packets|drops|orphans|rejected|avg delay|max delay)' \
      "$f" >&2 || tail -20 "$f" >&2 || true
  fi
  echo "---- $server log tail:" >&2
  tail -20 "$WORK/$server.log" >&2 2>/dev/null || true
  echo "----" >&2
}

# The reservation check: a short run at CHECK_RATE, every packet captured on cli0, then every
# Reply's client DUID-LL and IAADDR compared with the reservation. Sets CHECKED (Replies
# seen), WRONG (Replies with another address or none). Prints the first mismatches.
check_reservations() {
  local server=$1 pcap="$WORK/check-$1.pcap"
  ip netns exec "$CLI" timeout -k 2 $((CHECK_DURATION + 30)) $PIN_CLIENT \
    tcpdump -i cli0 -n -s 0 -U -w "$pcap" 'udp port 547' 2>"$WORK/tcpdump-$server.log" &
  DUMP_PID=$!
  for _ in $(seq 1 50); do grep -q listening "$WORK/tcpdump-$server.log" 2>/dev/null && break; sleep 0.1; done
  perf "$server" check "$CHECK_RATE" "$CHECK_DURATION"
  sleep 0.3
  stop_pid "$DUMP_PID"
  DUMP_PID=""
  read -r CHECKED WRONG < <(tcpdump -r "$pcap" -n -vv 2>/dev/null | awk '
    /dhcp6 reply \(/ {
      n++
      mac = ""; addr = ""
      if (match($0, /client-ID hwaddr type 1 [0-9a-f]+/)) { mac = substr($0, RSTART + 24, RLENGTH - 24) }
      if (match($0, /IA_ADDR [0-9a-f:]+/)) { addr = substr($0, RSTART + 8, RLENGTH - 8) }
      want = "?"
      if (length(mac) == 12 && substr(mac, 1, 8) == "02000000") {
        r = substr(mac, 9, 4); sub(/^0+/, "", r); if (r == "") r = "0"
        want = "2001:db8:77::1:" r
      }
      if (addr != want) {
        bad++
        if (bad <= 5) printf "  mismatch: client %s got %s, reserved %s\n", mac, (addr == "" ? "no IA_ADDR" : addr), want > "/dev/stderr"
      }
    }
    END { printf "%d %d\n", n, bad }')
}

# Share of the two cores that was idle over one second.
idle_pct() {
  local a b
  a=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%d", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

# The server core's busy share with no server and no generator running.
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
if [ -x "$BIN" ] && [ -n "$(find "$ROOT/boot-userspace" "$ROOT/boot-ebpf" -name '*.rs' -newer "$BIN" 2>/dev/null | head -1)" ]; then
  echo "warning: $BIN is older than some sources: rebuild with cargo xtask build --release" >&2
fi
KEA_V=$(kea-dhcp6 -v 2>/dev/null || echo none)
DNSMASQ_V=$(dnsmasq -v 2>/dev/null | head -1 | awk '{print $3}')
PERFDHCP_V=$(perfdhcp -v 2>&1 | awk '/VERSION/ { print $2 }')
if [ -x "$BIN" ]; then
  results_note "bootfabric: $BIN, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M')"
else
  results_note "bootfabric: $BIN missing"
fi
results_note "kea-dhcp6: $KEA_V"
results_note "dnsmasq: ${DNSMASQ_V:-none}"
results_note "perfdhcp: $PERFDHCP_V: $(perf_cmd RATE SECS)"
results_note "state: $WORK ($(df --output=fstype "$WORK" | tail -1))"
echo "bootfabric $BIN, kea-dhcp6 $KEA_V, dnsmasq ${DNSMASQ_V:-none}, perfdhcp $PERFDHCP_V"
echo "perfdhcp: $(perf_cmd RATE SECS)"
echo "state in $WORK ($(df --output=fstype "$WORK" | tail -1)), $CORES cores, ${IDLE}% idle at start"
echo "rates: $RATES, $DURATION s each, $CLIENTS clients; CPU at $FIXED_RATE/s for $FIXED_DURATION s"
echo

declare -A SKIP MAXRATE BUSY CPU PROC XDP REST XDPNS MODE FIXED FIXED_REJ CHECKS
# Phase 0: does every Reply carry the client's reservation? A server that does not start is
# skipped for the rest of the run.
for server in $SERVERS; do
  if ! start_server "$server"; then
    SKIP[$server]="did not start"
    echo "$server: did not start: skipped for the rest of the run" >&2
    continue
  fi
  [ "$server" = bootfabric ] && MODE[$server]=$(xdp_mode)
  if [ "$CHECK" = 1 ]; then
    check_reservations "$server"
    stop_server
    CHECKS[$server]="$((CHECKED - WRONG))/$CHECKED"
    printf '%-10s reservation check at %d/s for %d s: %d Replies, %d with the reserved address; %d completed, %d lost, %d rejected\n' \
      "$server" "$CHECK_RATE" "$CHECK_DURATION" "$CHECKED" $((CHECKED - WRONG)) "$DONE" "$LOST" "$REJ"
    if [ "$CHECKED" -eq 0 ]; then
      show_failure "$server" check
    fi
  else
    stop_server
    CHECKS[$server]="not checked"
  fi
done

# Phase 1: step the rate up, a fresh server with empty lease state per attempt, until a step
# loses (or has rejected) an exchange in each of its TRIES attempts, or perfdhcp itself cannot
# send at the rate.
for server in $SERVERS; do
  [ -z "${SKIP[$server]:-}" ] || continue
  best=0
  all=1
  for rate in $RATES; do
    want=$((rate * DURATION))
    passed=0
    for try in $(seq 1 "$TRIES"); do
      if ! start_server "$server"; then
        echo "$server: did not start at rate $rate try $try" >&2
        SENT=0 DONE=0 LOST=0 REJ=0 SRV_DROPS=0 CLI_DROPS=0 MAXDELAY=0 WALL_S=1 CORE_S=0
        continue
      fi
      perf "$server" "$rate-$try" "$rate" "$DURATION"
      stop_server
      printf '%-10s rate %6d/s try %d: %7d sent (%3d%%), %7d completed, %5d lost, %d rejected; rcvbuf drops srv %d cli %d; max delay %s ms; server core busy %s\n' \
        "$server" "$rate" "$try" "$SENT" $((SENT * 100 / want)) "$DONE" "$LOST" "$REJ" "$SRV_DROPS" "$CLI_DROPS" "$MAXDELAY" \
        "$(awk -v c="$CORE_S" -v w="$WALL_S" 'BEGIN { printf "%.0f%%", 100 * c / w }')"
      if [ "$DONE" -gt 0 ] && [ "$LOST" -eq 0 ] && [ "$REJ" -eq 0 ] && [ $((SENT * 100)) -ge $((want * 95)) ]; then
        passed=1
        break
      fi
    done
    if [ "$passed" = 1 ]; then
      best=$rate
      BUSY[$server]=$(awk -v c="$CORE_S" -v w="$WALL_S" 'BEGIN { printf "%.0f%%", 100 * c / w }')
    else
      all=0
      # The generator's limit: perfdhcp could not send at the rate, or every lost answer was
      # dropped at its own socket (none rejected, none dropped at the server's).
      if [ "$SENT" -gt 0 ] && { [ $((SENT * 100)) -lt $((want * 95)) ] ||
        { [ "$REJ" -eq 0 ] && [ "$SRV_DROPS" -eq 0 ] && [ "$CLI_DROPS" -ge "$LOST" ]; }; }; then
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
  if [ "$server" = bootfabric ] && [ -z "${SKIP[$server]:-}" ]; then
    echo "$server: XDP attached to fabric0 in ${MODE[$server]:-none} mode (ip link)"
    results_note "xdp mode ($server): ${MODE[$server]:-none}"
  fi
done

# Phase 2: the server core's busy time per 10,000 completed exchanges at one fixed rate, less
# the median idle baseline (one before each server's window and one after the last).
BASES=""
for server in $SERVERS; do
  [ -z "${SKIP[$server]:-}" ] || continue
  b=$(baseline)
  echo "idle baseline of core $SERVER_CPU before $server: $b cores over $BASE_DURATION s"
  BASES="$BASES $b"
  if ! start_server "$server"; then
    FIXED[$server]="0 0 1 0 0 0"
    continue
  fi
  perf "$server" fixed "$FIXED_RATE" "$FIXED_DURATION"
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$server died during the fixed-rate run" >&2
    DONE=0
  fi
  stop_server
  FIXED[$server]="$DONE $LOST $WALL_S $CORE_S $PROC_T $XDP_NS"
  FIXED_REJ[$server]=$REJ
done
b=$(baseline)
echo "idle baseline of core $SERVER_CPU after the last: $b cores over $BASE_DURATION s"
BASES="$BASES $b"
BASE=$(tr ' ' '\n' <<<"$BASES" | grep . | sort -g | awk '{ v[NR] = $1 }
  END { printf "%.4f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
results_note "idle baselines of the server core (cores):$BASES; median $BASE"
for server in $SERVERS; do
  [ -z "${SKIP[$server]:-}" ] || continue
  read -r done lost wall core ptick xns <<<"${FIXED[$server]}"
  if [ "$done" -gt 0 ]; then
    read -r "CPU[$server]" "PROC[$server]" "XDP[$server]" "REST[$server]" "XDPNS[$server]" < <(awk \
      -v n="$done" -v w="$wall" -v c="$core" -v b="$BASE" -v t="$ptick" -v hz="$TICK" -v x="$xns" 'BEGIN {
        k = 10000 / n; whole = (c - b * w) * k; proc = t / hz * k; xdp = x / 1e9 * k
        printf "%.3f %.3f %.3f %.3f %s\n", whole, proc, xdp, whole - proc - xdp,
          (x > 0 ? sprintf("%.0f", x / n / 2) : "-") }')
  else
    CPU[$server]="n/a"; PROC[$server]="n/a"; XDP[$server]="n/a"; REST[$server]="n/a"; XDPNS[$server]="-"
  fi
  printf '%-10s fixed %d/s for %ds: %d completed, %d lost, %d rejected; server core busy %s s of %s s; process %d ticks, XDP %.3f s (%s ns per packet); per 10k: whole %s, process %s, XDP program %s, rest %s\n' \
    "$server" "$FIXED_RATE" "$FIXED_DURATION" "$done" "$lost" "${FIXED_REJ[$server]:-0}" "$core" "$wall" "$ptick" \
    "$(awk -v x="$xns" 'BEGIN { print x / 1e9 }')" "${XDPNS[$server]}" \
    "${CPU[$server]}" "${PROC[$server]}" "${XDP[$server]}" "${REST[$server]}"
  if awk -v r="${REST[$server]}" 'BEGIN { exit !(r + 0 < -0.05) }'; then
    echo "warning: $server: the core's busy time is below its own parts: the baseline moved; rerun on a quiet machine" >&2
  fi
  if [ "$lost" -gt 0 ] || [ "${FIXED_REJ[$server]:-0}" -gt 0 ]; then
    CPU[$server]="${CPU[$server]} ($lost lost, ${FIXED_REJ[$server]:-0} rejected)"
    show_failure "$server" fixed
  fi
done

label() {
  case $1 in
    bootfabric) if [ -n "${MODE[$1]:-}" ]; then echo "Bootfabric (XDP on fabric0: ${MODE[$1]})"; else echo "Bootfabric"; fi ;;
    kea) echo "kea-dhcp6 $KEA_V, memfile" ;;
    dnsmasq) echo "dnsmasq $DNSMASQ_V" ;;
  esac
}
{
  echo "| server | Replies with the reserved address | max rate, no loss (ex/s) | server core busy at that rate | server core CPU s per 10k exchanges @ ${FIXED_RATE}/s | of which the server process | of which XDP programs | of which the rest (kernel) | vs kea-dhcp6 |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for server in $SERVERS; do
    if [ -n "${SKIP[$server]:-}" ]; then
      echo "| $(label "$server") | ${SKIP[$server]} | - | - | - | - | - | - | - |"
      continue
    fi
    ratio=$(awk -v a="${CPU[$server]}" -v b="${CPU[kea]:-}" 'BEGIN {
      split(a, x, " "); split(b, y, " ")
      if (x[1] + 0 > 0 && y[1] + 0 > 0) printf "%.3f", x[1] / y[1]; else print "-" }')
    xdp=${XDP[$server]}
    [ "${XDPNS[$server]}" = - ] && xdp="-"
    echo "| $(label "$server") | ${CHECKS[$server]} | ${MAXRATE[$server]} | ${BUSY[$server]:--} | ${CPU[$server]} | ${PROC[$server]} | $xdp | ${REST[$server]} | $ratio |"
  done
} >"$RESULTS/table.md"
echo
echo "DHCPv6 benchmark $(date -u '+%Y-%m-%d %H:%M UTC'), $CLIENTS clients, perfdhcp -6 (one relay) on core $CLIENT_CPU, server on core $SERVER_CPU, idle baseline $BASE cores, ${IDLE}% idle at start / $(idle_pct)% at end"
cat "$RESULTS/table.md"
if awk -v b="$BASE" 'BEGIN { exit !(b > 0.1) }'; then
  echo "warning: the idle server core was $BASE busy: something else ran there; rerun on a quiet machine" >&2
fi
