#!/usr/bin/env bash
# HTTP benchmark: Bootfabric's image streamer against nginx (sendfile on), one after the other
# in the same run, driven by wrk over a veth pair between two namespaces. Rows:
#   - a 256 MiB image to 1, 32 and 256 concurrent connections (keep-alive, whole-file GETs);
#   - many small requests: the iPXE script (Bootfabric renders it for the asking host; nginx
#     serves the same text as a static file) to 32 and 256 connections.
# For each row and server it prints throughput (MiB/s), requests per second, and the server's
# CPU time per GiB served (from a cgroup holding the server and its workers), then
# Bootfabric's ratios to nginx.
#
# The server is pinned to CPU 0 with one worker (one io_uring ring; one nginx worker) and wrk
# to the other cores, so both servers get the same single core.
#
# Usage: bench/http/run.sh        (as root; `cargo xtask setup` installs nginx and wrk)
# Knobs: DURATION=10 REPEAT=3 (medians) SERVERS="bootfabric nginx" ROWS="image:1 image:32 image:256 script:32
#        script:256" BACKEND=io_uring (or epoll) BOOTFABRIC_BIN=target/release/bootfabric KEEP=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
DURATION=${DURATION:-10}
SERVERS=${SERVERS:-"bootfabric nginx"}
ROWS=${ROWS:-"image:1 image:32 image:256 script:32 script:256"}
BACKEND=${BACKEND:-io_uring}
REPEAT=${REPEAT:-3}

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in nginx wrk ip ss taskset; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (server and wrk on different ones)" >&2; exit 2; }

ID=bfh-$$
SRV=$ID-srv
CLI=$ID-cli
WORK=$(mktemp -d /dev/shm/bootfabric-http-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"

stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  # nginx's worker outlives a killed master for a moment.
  cgroup_kill
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_server
  lab_down
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cgroup_setup
lab_up 1500

mkdir -p "$WORK/images/rack" "$WORK/nginx/logs" "$WORK/state"
head -c $((256 * 1048576)) /dev/urandom >"$WORK/images/rack/image.bin"
cat >"$WORK/hosts.toml" <<'TOML'
[profiles.installer]
kernel = "rack/vmlinuz"
initrd = ["rack/initrd.img"]
cmdline = "console=ttyS0 ip=dhcp ignition.config.url={http_base}/configs/node.ign"
[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.2"
profile = "installer"
TOML
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
mode = "off"
[http]
root = "images"
backend = "$BACKEND"
workers = 1
max_connections_per_client = 1024
TOML
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 10.77.0.1:80;
    root $WORK/images;
  }
}
CONF

wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -tlnH 'sport = :80' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not listen within 30 s" >&2; return 1
}

start_server() {
  case $1 in
    bootfabric)
      "${IN_CGROUP[@]}" ip netns exec "$SRV" taskset -c 0 "$BIN" serve \
        --config "$WORK/bootfabric.toml" 2>"$WORK/bootfabric.log" &
      ;;
    nginx)
      "${IN_CGROUP[@]}" ip netns exec "$SRV" taskset -c 0 nginx -p "$WORK/nginx" \
        -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx.log" &
      ;;
  esac
  SERVER_PID=$!
  wait_listening "$1"
}

# The script both serve: Bootfabric renders it, nginx gets the rendered text as a file.
start_server bootfabric
ip netns exec "$CLI" curl -sS -o "$WORK/images/boot.ipxe" http://10.77.0.1/boot.ipxe
stop_server
[ -s "$WORK/images/boot.ipxe" ] || { echo "Bootfabric rendered no script" >&2; exit 1; }

to_mib() { # wrk's "Transfer/sec: 1.23GB" → MiB
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576;
    printf "%.1f", n * f }'
}

# One measurement: sets MIBS, RPS, CPU and ERRORS.
measure() {
  local server=$1 what=$2 conns=$3 url threads c0 c1 out tps
  case $what in
    image) url=http://10.77.0.1/rack/image.bin ;;
    script) url=http://10.77.0.1/boot.ipxe ;;
  esac
  threads=$((conns < 2 ? 1 : 2))
  c0=$(cg_usec)
  out=$(ip netns exec "$CLI" taskset -c 1-$(($(nproc) - 1)) \
    timeout $((DURATION + 60)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" "$url" 2>&1) || true
  c1=$(cg_usec)
  echo "$out" >>"$WORK/wrk-$server-$what-$conns.txt"
  RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  tps=$(awk '/^Transfer\/sec:/ { print $2 }' <<<"$out")
  ERRORS=$(awk '/Non-2xx/ { print }' <<<"$out" | tr '\n' ' ')
  MIBS=$(to_mib "${tps:-0B}")
  CPU=$(awk -v t=$((c1 - c0)) -v m="$MIBS" -v d="$DURATION" \
    'BEGIN { g = m * d / 1024; if (g <= 0) print "n/a"; else printf "%.2f", t / 1e6 / g }')
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "n/a") }'; }

# Servers alternate within every row and every repeat, so a machine that drifts (other load,
# frequency, page cache) drifts for both; each figure is the median of REPEAT runs.
declare -A M P C
for rep in $(seq 1 "$REPEAT"); do
  for row in $ROWS; do
    IFS=: read -r what conns <<<"$row"
    for server in $SERVERS; do
      start_server "$server"
      measure "$server" "$what" "$conns"
      stop_server
      M[$server,$row]="${M[$server,$row]:-} $MIBS"
      P[$server,$row]="${P[$server,$row]:-} ${RPS:-0}"
      C[$server,$row]="${C[$server,$row]:-} $CPU"
      printf 'run %d %-10s %-6s %3d conns: %9s MiB/s %10s req/s %8s CPU s/GiB %s\n' \
        "$rep" "$server" "$what" "$conns" "$MIBS" "${RPS:-0}" "$CPU" "$ERRORS"
    done
  done
done
declare -A R
for row in $ROWS; do
  for server in $SERVERS; do
    R[$server,$row]="$(median <<<"${M[$server,$row]}") $(median <<<"${P[$server,$row]}") $(median <<<"${C[$server,$row]}")"
  done
done

echo
echo "| request | connections | Bootfabric MiB/s | nginx MiB/s | ratio | Bootfabric req/s | nginx req/s | ratio | Bootfabric CPU s/GiB | nginx CPU s/GiB | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for row in $ROWS; do
  IFS=: read -r what conns <<<"$row"
  read -r bm br bc <<<"${R[bootfabric,$row]:-0 0 n/a}"
  read -r nm nr nc <<<"${R[nginx,$row]:-0 0 n/a}"
  awk -v w="$what" -v c="$conns" -v bm="$bm" -v nm="$nm" -v br="$br" -v nr="$nr" -v bc="$bc" -v nc="$nc" 'BEGIN {
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", w, c, bm, nm,
      (nm > 0 ? sprintf("%.2f", bm / nm) : "n/a"), br, nr, (nr > 0 ? sprintf("%.2f", br / nr) : "n/a"),
      bc, nc, ((nc + 0) > 0 && bc != "n/a" ? sprintf("%.2f", bc / nc) : "n/a") }'
done
