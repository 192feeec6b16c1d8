#!/usr/bin/env bash
# HTTP benchmark: Bootfabric's image streamer against nginx, one after the other in the same
# run, driven by wrk over a veth pair between two namespaces. Rows:
#   - image:N  a 256 MiB image to N keep-alive connections (whole-file GETs);
#   - range:N  1 MiB Range requests at random 1 MiB offsets of that image, as installers send;
#   - curl:1   that image downloaded whole by curl, one process (one connection) after another
#              for the run, as an installer or `curl -O` fetches it;
#   - https-image:N, https-range:N  the same over HTTPS (port 443; Bootfabric: rustls; nginx:
#              OpenSSL with `ssl_conf_command Options KTLS`, kernel TLS where the kernel has it);
#   - script:N the iPXE script (Bootfabric renders it for the asking host; nginx serves the
#              same text as a static file).
# Every row runs in two modes, servers alternating within each row, mode and repeat:
#   - pin=1: the server on CPU 0 (Bootfabric http.workers = 1, nginx worker_processes 1 with
#            worker_cpu_affinity), wrk on the other core(s);
#   - pin=0: nobody pinned, server and wrk sharing every core; the server gets as many workers
#            as there are cores.
# For each row and server it prints throughput (MiB/s; req/s for scripts), the slowest
# response wrk saw (a response held for a delayed ACK shows here as ~40 ms), CPU time per GiB
# (per request for scripts) from a cgroup holding the server and everything it starts, and
# the threads and cores the server really used: every task of every process in that cgroup
# is sampled from /proc every SAMPLE seconds during the run (io_uring's iou-wrk threads, nginx
# workers and tokio threads included).
#
# Usage: bench/http/run.sh        (as root; `cargo xtask setup` installs nginx and wrk)
# Knobs: DURATION=10 REPEAT=3 (medians) PINS="1 0" SERVERS="bootfabric nginx"
#        ROWS="image:1 image:32 image:256 curl:1 script:1 script:32 script:256 range:1 range:32
#              https-image:1 https-image:32 https-range:1 https-range:32"
#        SAMPLE=0.5
#        BACKEND=io_uring (or epoll) BOOTFABRIC_BIN=target/release/bootfabric KEEP=1
#        RESULTS_DIR=<folder> (smoke runs; default bench/results/http)
#        CC=<congestion control> for both namespaces (default: the host's; one other than reno
#           or the host's own must be in the host's net.ipv4.tcp_allowed_congestion_control)
#        RPS=1 (default): each side's received packets are processed on that side's cores, one
#           core per connection, as a NIC's receive queues do; RPS=0: on the core that sent them
#           (a bare veth pair, where one connection's packets can arrive out of order)
#        SERVERS="bootfabric nginx nginx2": nginx2 is nginx again, a third server in every turn,
#           so the run's paired table also shows nginx over itself (the host's noise)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
DURATION=${DURATION:-10}
SERVERS=${SERVERS:-"bootfabric nginx"}
ROWS=${ROWS:-"image:1 image:32 image:256 curl:1 script:1 script:32 script:256 range:1 range:32 https-image:1 https-image:32 https-range:1 https-range:32"}
PINS=${PINS:-"1 0"}
BACKEND=${BACKEND:-io_uring}
REPEAT=${REPEAT:-3}
SAMPLE=${SAMPLE:-0.5}
KEEP=${KEEP:-0}
case $KEEP in 0 | 1) ;; *) echo "KEEP=$KEEP: 1 (keep the work directory) or 0" >&2; exit 2 ;; esac

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in nginx wrk curl openssl ip ss tc nstat sysctl taskset sha256sum; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi
CORES=$(nproc)
[ "$CORES" -ge 2 ] || { echo "needs 2 cores (server and wrk on different ones)" >&2; exit 2; }

ID=bfh-$$
SRV=$ID-srv
CLI=$ID-cli
WORK=$(mktemp -d /dev/shm/bootfabric-http-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
SAMPLER_PID=""
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
  stop_pid "$SAMPLER_PID"
  stop_server
  lab_down
  if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_list <word> <words...>: whether the word is one of the words.
in_list() { local w=$1; shift; [[ " $* " == *" $w "* ]]; }
if [ -n "${CC:-}" ]; then
  available=$(sysctl -n net.ipv4.tcp_available_congestion_control)
  allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
  # shellcheck disable=SC2086 # the lists are words
  in_list "$CC" $available || { echo "CC=$CC: not available (net.ipv4.tcp_available_congestion_control: $available)" >&2; exit 2; }
  # shellcheck disable=SC2086
  in_list "$CC" reno $allowed "$(sysctl -n net.ipv4.tcp_congestion_control)" || {
    echo "CC=$CC: a namespace may only pick one the host allows; add it to" \
      "net.ipv4.tcp_allowed_congestion_control ($allowed)" >&2
    exit 2
  }
fi

RPS=${RPS:-1}
seen=" "
for s in $SERVERS; do
  case $s in bootfabric | nginx | nginx2) ;; *) echo "SERVERS: $s is none of bootfabric, nginx, nginx2" >&2; exit 2 ;; esac
  case $seen in *" $s "*) echo "SERVERS: $s twice" >&2; exit 2 ;; esac
  seen="$seen$s "
done
case $seen in *" nginx2 "*) case $seen in *" nginx "*) ;; *) echo "SERVERS: nginx2 is measured against nginx, which is missing" >&2; exit 2 ;; esac ;; esac
case $RPS in 0 | 1) ;; *) echo "RPS=$RPS: 1 or 0" >&2; exit 2 ;; esac
results_open http DURATION REPEAT PINS SERVERS ROWS SAMPLE BACKEND BIN CC RPS
results_note "nginx: $(nginx -v 2>&1)"
results_note "wrk: $(wrk -v 2>&1 | head -1)"
results_note "curl: $(curl --version | head -1)"
results_note "bootfabric binary: $BIN, sha256 $(sha256sum "$BIN" | cut -c1-16), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)"
results_note "cores: $CORES; pin=1 gives each server 1 core (CPU 0), pin=0 gives it all $CORES, shared with wrk"

cgroup_setup
lab_up 1500
# The congestion control moves every row (docs/benchmarks.md, "Congestion control"): it is
# recorded with every run, and CC picks another for both namespaces (checked before the run).
if [ -n "${CC:-}" ]; then
  for ns in "$SRV" "$CLI"; do
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$CC" || exit 2
  done
fi
results_note "TCP congestion control: $(ip netns exec "$SRV" sysctl -n net.ipv4.tcp_congestion_control) in the namespaces (host default $(sysctl -n net.ipv4.tcp_congestion_control), CC=${CC:-unset}); fabric0 qdisc: $(tc -n "$SRV" qdisc show dev fabric0 | head -1)"

# steer <pin>: where each namespace's received packets are processed (receive packet steering
# on the veth's one queue). A veth hands a packet to the receive backlog of the core that sent
# it, so one connection's segments, sent from the server's thread and from ACK processing on
# the client's core, can land in two backlogs and arrive out of order: under bbr that gave
# thousands of spurious retransmissions per run, and the client's receive work ran on the
# server's core ("Congestion control" in docs/benchmarks.md). With RPS=1 a connection's packets
# go to one core, the client's (wrk's cores) for data and the server's (CPU 0) for ACKs when
# pinned, one of all the cores by flow hash when not: in order, as a NIC's queues deliver them.
# cpumask <first> <last>: those cores as sysfs writes a mask (32-bit hex words, commas between).
cpumask() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    for (w = int(b / 32); w >= 0; w--) {
      v = 0; for (c = 0; c < 32; c++) if (w * 32 + c >= a && w * 32 + c <= b) v += 2 ^ c
      m = m (m == "" ? "" : ",") sprintf("%08x", v)
    }
    print m }'
}
# Whether both veth ends take a receive steering mask (the kernel may lack RPS), asked once.
HAS_RPS=1
if ! ip netns exec "$CLI" test -w /sys/class/net/cli0/queues/rx-0/rps_cpus ||
  ! ip netns exec "$SRV" test -w /sys/class/net/fabric0/queues/rx-0/rps_cpus; then
  HAS_RPS=0
  if [ "$RPS" = 1 ]; then
    echo "RPS=1: this kernel has no receive packet steering (no rps_cpus); RPS=0 runs the bare veth" >&2
    exit 2
  fi
fi
steer() {
  local cli srv
  [ "$HAS_RPS" = 0 ] && return 0
  if [ "$RPS" = 0 ]; then cli=0 srv=0
  elif [ "$1" = 1 ]; then cli=$(cpumask 1 $((CORES - 1))) srv=$(cpumask 0 0)
  else cli=$(cpumask 0 $((CORES - 1))) srv=$cli; fi
  ip netns exec "$CLI" sh -c "echo $cli > /sys/class/net/cli0/queues/rx-0/rps_cpus"
  ip netns exec "$SRV" sh -c "echo $srv > /sys/class/net/fabric0/queues/rx-0/rps_cpus"
}
rps_masks() {
  echo "cli0 rps_cpus $(ip netns exec "$CLI" cat /sys/class/net/cli0/queues/rx-0/rps_cpus 2>/dev/null || echo none)," \
    "fabric0 $(ip netns exec "$SRV" cat /sys/class/net/fabric0/queues/rx-0/rps_cpus 2>/dev/null || echo none)"
}
steer 0
masks0=$(rps_masks)
steer 1
results_note "receive steering: RPS=$RPS (pin=1: $(rps_masks); pin=0: $masks0)"

mkdir -p "$WORK/images/rack" "$WORK/nginx/logs" "$WORK/state" "$WORK/tls"
# One certificate for both servers (P-256, as an operator's CA would issue it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=10.77.0.1 -addext subjectAltName=IP:10.77.0.1 \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
results_note "kernel TLS (net.ipv4.tcp_available_ulp): $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
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
# One config per mode: the workers equal the cores the server is given.
for pin in 0 1; do
  if [ "$pin" = 1 ]; then workers=1; else workers=$CORES; fi
  cat >"$WORK/bootfabric-pin$pin.toml" <<TOML
[daemon]
state_dir = "state"
log = "warn,bootfabric::services::http=info"
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
workers = $workers
max_connections_per_client = 1024
tls_cert = "$WORK/tls/cert.pem"
tls_key = "$WORK/tls/key.pem"
tls_port = 443
TOML
  # nginx as its documentation recommends for static files: sendfile with tcp_nopush (full
  # packets) and tcp_nodelay, open_file_cache so a small file is not opened, stat'ed and
  # closed on every request, no access log, keep-alive for as many requests as wrk sends, and
  # one worker per core given (pinned to it when the server is pinned).
  if [ "$pin" = 1 ]; then affinity="worker_cpu_affinity 1;"; else affinity=""; fi
  cat >"$WORK/nginx/nginx-pin$pin.conf" <<CONF
worker_processes $workers;
$affinity
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_min_uses 1;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 10.77.0.1:80 reuseport;
    root $WORK/images;
  }
  server {
    listen 10.77.0.1:443 ssl reuseport;
    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_conf_command Options KTLS;
    root $WORK/images;
  }
}
CONF
done
# 1 MiB Range requests at random whole-MiB offsets of the 256 MiB image.
cat >"$WORK/range.lua" <<'LUA'
local mib = 1048576
request = function()
  local at = math.random(0, 255) * mib
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. at .. "-" .. (at + mib - 1) })
end
LUA

wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -tlnH 'sport = :80' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not listen within 30 s" >&2; return 1
}

# start_server <server> <pin>
start_server() {
  local pin=(taskset -c 0)
  [ "$2" = 1 ] || pin=()
  case $1 in
    bootfabric)
      "${IN_CGROUP[@]}" ip netns exec "$SRV" "${pin[@]}" "$BIN" serve \
        --config "$WORK/bootfabric-pin$2.toml" 2>"$WORK/bootfabric.log" &
      ;;
    nginx | nginx2)
      "${IN_CGROUP[@]}" ip netns exec "$SRV" "${pin[@]}" nginx -p "$WORK/nginx" \
        -c "$WORK/nginx/nginx-pin$2.conf" 2>"$WORK/nginx.log" &
      ;;
  esac
  SERVER_PID=$!
  wait_listening "$1"
}

# The script both serve: Bootfabric renders it, nginx gets the rendered text as a file.
start_server bootfabric 1
ip netns exec "$CLI" curl -sS -o "$WORK/images/boot.ipxe" http://10.77.0.1/boot.ipxe
# What the daemon says about its rings when pinned (the io-wq registration).
grep -h "io-wq\|rings" "$WORK/bootfabric.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/bootfabric log (pin=1): /' || true
# What each server says about TLS: the protocol and cipher a handshake agrees on.
tls_note() {
  results_note "$1 HTTPS: $(ip netns exec "$CLI" openssl s_client -connect 10.77.0.1:443 </dev/null 2>/dev/null |
    awk '/^New, / { print } /Cipher is|Protocol *:/ { print }' | sort -u | paste -sd' ' -)"
}
tls_note bootfabric
grep -h "HTTPS" "$WORK/bootfabric.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/bootfabric log: /' || true
stop_server
start_server nginx 1
tls_note nginx
stop_server
[ -s "$WORK/images/boot.ipxe" ] || { echo "Bootfabric rendered no script" >&2; exit 1; }

to_mib() { # wrk's "1.23GB" → MiB
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576;
    printf "%.1f", n * f }'
}

# The sampler: every SAMPLE seconds, a line "sample <n>", then for every process in the
# server's cgroup the stat and Cpus_allowed_list of each of its tasks (as grep -H prints them:
# /proc/<pid>/task/<tid>/stat:<line>); and a line "tcpmem <pages>", the host's TCP memory
# from /proc/net/sockstat. Two processes per process and one awk per sample, so that the
# sampler stays light next to the server. Runs until killed (by PID, after wrk ends).
sampler() {
  local n=0 p
  while :; do
    n=$((n + 1))
    echo "sample $n"
    # The host's TCP memory (pages, every namespace's sockets): its peak goes on the tcp line.
    echo "tcpmem $(awk '$1 == "TCP:" { print $NF }' /proc/net/sockstat)"
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do
      grep -sH '' /proc/"$p"/task/*/stat || true
      grep -sH '^Cpus_allowed_list:' /proc/"$p"/task/*/status || true
    done
    sleep "$SAMPLE"
  done
}

# Reads a sampler file: prints "threads working cores allowed kinds working-kinds". Every task
# id seen counts (threads born during the run included). A thread is working if its CPU time
# (utime + stime, stat fields 14 and 15) grew by at least one tick during the run (its ticks
# count from 0 when it was born after the first sample): with 256 connections the work is
# spread over many io-wq workers, each with little of it. The kinds carry their CPU seconds. A core is used if a thread's ticks grew since the sample before
# while it was last seen on that core (stat field 39).
threads_of() {
  awk -v hz="$(getconf CLK_TCK)" -v dur="$DURATION" -v master="$2" '
    /^sample / { s = $2; next }
    /^tcpmem / { next }
    {
      split($0, pathrest, ":"); n = split(pathrest[1], parts, "/"); tid = parts[n - 1]
      if (parts[n] == "status") { a = $0; sub(/.*Cpus_allowed_list:[ \t]*/, "", a); allowed[a] = 1; next }
      line = $0
      comm = line; sub(/^[^(]*\(/, "", comm); sub(/\)[^)]*$/, "", comm)
      rest = line; sub(/^.*\) /, "", rest); split(rest, f, " ")
      # f[1] is field 3 (state): field N is f[N - 2].
      t = f[12] + f[13]; cpu = f[37]
      if (!(tid in first)) {
        first[tid] = (s == 1) ? t : 0
        k = comm; sub(/[-_:\/]?[0-9]+$/, "", k); gsub(/ /, "_", k)
        if (k == "nginx") k = (tid == master) ? "nginx-master" : "nginx-worker"
        kind[tid] = k
        if (s > 1 && t > 0) used[cpu] = 1
      } else if (t > last[tid]) {
        used[cpu] = 1
      }
      last[tid] = t
    }
    END {
      n = 0; b = 0
      for (tid in first) {
        n++; kinds[kind[tid]]++
        d = last[tid] - first[tid]; ck[kind[tid]] += d
        if (d >= 1) { b++; bk[kind[tid]]++ }
      }
      c = ""; for (i = 0; i < 4096; i++) if (i in used) c = c (c == "" ? "" : ",") i
      al = ""; for (x in allowed) al = al (al == "" ? "" : "|") x
      ks = ""; bs = ""
      for (k in kinds) {
        nb = (k in bk) ? bk[k] : 0
        ks = ks (ks == "" ? "" : ",") kinds[k] "x" k "(" nb "working," sprintf("%.2f", ck[k] / hz) "s)"
        if (nb > 0) bs = bs (bs == "" ? "" : ",") nb "_" k
      }
      printf "%d %d %s %s %s %s\n", n, b, (c == "" ? "-" : c), (al == "" ? "-" : al), (ks == "" ? "-" : ks), (bs == "" ? "-" : bs)
    }' "$1"
}

# curl downloads the image whole, one process after another, for DURATION seconds; prints
# wrk's lines that measure() reads: the bytes and the time, as "Transfer/sec" and "read".
curl_loop() {
  local end=$((SECONDS + DURATION)) out=() bytes=0 usec=0 n=0 line
  while [ "$SECONDS" -lt "$end" ]; do
    line=$(curl -sS -o /dev/null -w '%{size_download} %{time_total}' http://10.77.0.1/rack/image.bin) || break
    read -r b t <<<"$line"
    bytes=$((bytes + b)); usec=$((usec + $(awk -v t="$t" 'BEGIN { printf "%d", t * 1e6 }')))
    n=$((n + 1))
  done
  awk -v b="$bytes" -v u="$usec" -v n="$n" 'BEGIN {
    printf "  %d requests in %.2fs, %.2fMB read\n", n, u / 1e6, b / 1048576
    printf "Transfer/sec: %.2fMB\n", (u > 0 ? b / 1048576 / (u / 1e6) : 0) }'
}

# The server's retransmitted segments, the DSACKs it got back (the client already had that
# segment: the retransmission was spurious) and the packets the client queued out of order;
# then the host's TCP memory pressure: the episodes that ended and their length in all, and
# the segments the client dropped for want of receive memory (TCPRcvQDrop and TCPOFODrop);
# "-" where nstat has no such counter. Pressure is one host-wide state (the host's tcp_mem,
# which both namespaces' sockets share: 256 connections' receive and send buffers on one
# host can reach it, where 256 clients on their own machines would not). The kernel counts
# an episode when it ends, in the namespace of the socket that ended it: both namespaces'
# counters are summed, and an episode still running at the second snapshot is counted in a
# later measurement. Printed, not tabled: they show what the kernel did to both servers'
# streams in that run.
tcp_counts() {
  {
    ip netns exec "$SRV" nstat -asz TcpRetransSegs TcpExtTCPDSACKRecvSegs TcpExtTCPMemoryPressures \
      TcpExtTCPMemoryPressuresChrono | sed 's/^/srv /'
    ip netns exec "$CLI" nstat -asz TcpExtTCPOFOQueue TcpExtTCPMemoryPressures \
      TcpExtTCPMemoryPressuresChrono TcpExtTCPRcvQDrop TcpExtTCPOFODrop | sed 's/^/cli /'
  } | awk '{ v[$1 " " $2] = $3 }
    # one counter, or "-"; the sum of two, or "-" if either is missing
    function one(k) { return (k in v) ? v[k] : "-" }
    function two(a, b) { return ((a in v) && (b in v)) ? v[a] + v[b] : "-" }
    END {
      print one("srv TcpRetransSegs"), one("srv TcpExtTCPDSACKRecvSegs"), one("cli TcpExtTCPOFOQueue"),
        two("cli TcpExtTCPMemoryPressures", "srv TcpExtTCPMemoryPressures"),
        two("cli TcpExtTCPMemoryPressuresChrono", "srv TcpExtTCPMemoryPressuresChrono"),
        two("cli TcpExtTCPRcvQDrop", "cli TcpExtTCPOFODrop")
    }'
}
# tcp_delta <six counts before> <six after>
tcp_delta() {
  local a=("${@:1:6}") b=("${@:7:6}") out=() i
  for i in 0 1 2 3 4 5; do
    if [[ ${a[i]} =~ ^[0-9]+$ && ${b[i]} =~ ^[0-9]+$ ]]; then out+=($((b[i] - a[i]))); else out+=(-); fi
  done
  echo "tcp: ${out[0]} segments retransmitted, ${out[1]} DSACKs, ${out[2]} out of order at the client;" \
    "${out[3]} episodes of host TCP memory pressure ended, ${out[4]} ms in all;" \
    "${out[5]} segments the client dropped for memory"
}

# tcp_peak_line <sampler file>: the host's TCP memory at its highest sample, against the
# pressure mark (tcp_mem's second value): where it reaches the mark, TCP prunes and drops.
tcp_peak_line() {
  awk -v mark="$(awk '{ print $2 }' /proc/sys/net/ipv4/tcp_mem 2>/dev/null)" -v page="$(getconf PAGESIZE)" \
    '/^tcpmem [0-9]+$/ { if ($2 > m) m = $2; seen = 1 }
    END { if (!seen) exit
      printf "tcp memory: peak %.0f MiB of the host'"'"'s pressure mark ", m * page / 1048576
      if (mark ~ /^[0-9]+$/) printf "%.0f MiB (sampled)\n", mark * page / 1048576; else print "- (sampled)" }' "$1"
}

# The server link's packet counters ("sent received"), and busy ticks from /proc/stat (user,
# nice, system, irq and softirq time; steal and idle apart). Printed per measurement, not
# tabled: the packets each MiB (or request) took both ways, and in the pinned mode everything
# CPU 0 did for the server (its steered receive work included, also what ran while the server
# slept, which its cgroup's figure leaves out; the sampler's reads of /proc too) and what the
# client's cores did.
link_counts() {
  local c tx rx
  # One exec for both counters; a counter not read prints as "-".
  c=$(ip netns exec "$SRV" cat /sys/class/net/fabric0/statistics/{tx,rx}_packets 2>/dev/null) || c=""
  read -r tx rx <<<"${c//$'\n'/ }"
  echo "${tx:--} ${rx:--}"
}
# cpu_ticks: "busy softirq steal" of CPU 0, then "busy softirq user steal" of the other cores
# together (pinned, wrk's or curl's cores: the client's receive work and its copies), then
# the idle ticks of all cores (idle and iowait). Steal is time the hypervisor ran something
# else on a virtual CPU that had work.
cpu_ticks() {
  awk '$1 == "cpu0" { b0 = $2 + $3 + $4 + $7 + $8; s0 = $8; t0 = $9 }
    $1 ~ /^cpu[1-9][0-9]*$/ { b += $2 + $3 + $4 + $7 + $8; s += $8; u += $2 + $3; t += $9 }
    $1 ~ /^cpu[0-9]+$/ { i += $5 + $6 }
    END { print b0 + 0, s0 + 0, t0 + 0, b + 0, s + 0, u + 0, t + 0, i + 0 }' /proc/stat
}
# backlog_drops: packets every core's receive backlog refused (the second, hexadecimal,
# column of /proc/net/softnet_stat, summed), or "-" where it cannot be read. veth hands each
# packet to a core's receive backlog (the one receive steering picks with RPS=1, the sending
# core's with RPS=0); past net.core.netdev_max_backlog packets queued there it drops them,
# and TCP sees a loss. The counter is the host's, not one namespace's: the bench's veth
# carries nearly all of the host's packets while it runs.
backlog_drops() {
  local n=0 line f
  [ -r /proc/net/softnet_stat ] || { echo -; return; }
  while read -r line; do
    read -r _ f _ <<<"$line"
    [[ $f =~ ^[0-9a-fA-F]+$ ]] || { echo -; return; }
    n=$((n + 16#$f))
  done </proc/net/softnet_stat
  echo "$n"
}
# link_line <what> <pin> <MiB or requests> <tx0 rx0> <tx1 rx1> "<cpu_ticks before>" "<after>"
# <backlog drops before> <after> (pinned: the client cores' figures too, and the run's steal;
# not pinned: the cores' idle time).
link_line() {
  local unit="MiB" hz
  hz=$(getconf CLK_TCK)
  [ "$1" = script ] && unit="request"
  awk -v w="$1" -v pin="$2" -v n="$3" -v u="$unit" -v hz="$hz" \
    -v t0="$4" -v r0="$5" -v t1="$6" -v r1="$7" -v k0="$8" -v k1="$9" \
    -v d0="${10}" -v d1="${11}" 'BEGIN {
    # cpu_ticks order: busy, softirq and steal of CPU 0; busy, softirq, user and steal of the
    # rest; idle of all
    split(k0, a, " "); split(k1, z, " ")
    b0 = a[1]; s0 = a[2]; st0 = a[3]; cb0 = a[4]; cs0 = a[5]; cu0 = a[6]; cst0 = a[7]; i0 = a[8]
    b1 = z[1]; s1 = z[2]; st1 = z[3]; cb1 = z[4]; cs1 = z[5]; cu1 = z[6]; cst1 = z[7]; i1 = z[8]
    if (n <= 0) { print "link: nothing delivered"; exit }
    if (t0 !~ /^[0-9]+$/ || t1 !~ /^[0-9]+$/ || r0 !~ /^[0-9]+$/ || r1 !~ /^[0-9]+$/) {
      print "link: - (the link counters could not be read)"; exit
    }
    printf "link: %.2f packets sent and %.2f received per %s", (t1 - t0) / n, (r1 - r0) / n, u
    if (d0 ~ /^[0-9]+$/ && d1 ~ /^[0-9]+$/) printf "; receive backlogs dropped %d packets", d1 - d0
    else printf "; receive backlogs dropped - packets"
    if (pin != 1) printf "; cores idle %.2f s in the run", (i1 - i0) / hz
    if (pin == 1) {
      per = (u == "MiB") ? n / 1024 : n / 1e6
      printf "; CPU 0 busy %.3f %s, of which softirq %.3f", (b1 - b0) / hz / per,
        (u == "MiB") ? "s per GiB" : "µs per request", (s1 - s0) / hz / per
      printf "; client cores busy %.3f %s, of which softirq %.3f and user %.3f",
        (cb1 - cb0) / hz / per, (u == "MiB") ? "s per GiB" : "µs per request",
        (cs1 - cs0) / hz / per, (cu1 - cu0) / hz / per
      printf "; steal in the run %.2f s on CPU 0, %.2f s on the client cores together",
        (st1 - st0) / hz, (cst1 - cst0) / hz
    }
    printf "\n" }'
}

# One measurement: sets RATE (MiB/s, or req/s for scripts), CPU (s/GiB, or µs/req for scripts),
# SLOWEST (wrk's slowest response, ms), THREADS (threads, working, cores, allowed, kinds with
# CPU seconds, working kinds) and ERRORS.
measure() {
  local server=$1 what=$2 conns=$3 pin=$4 url threads c0 c1 tcp0 tcp1 out tps read reqs lua=() cpuset=()
  local lk0 lr0 lk1 lr1 k0 k1 d0 d1 n
  case $what in
    image|curl) url=http://10.77.0.1/rack/image.bin ;;
    range) url=http://10.77.0.1/rack/image.bin; lua=(-s "$WORK/range.lua") ;;
    https-image) url=https://10.77.0.1/rack/image.bin ;;
    https-range) url=https://10.77.0.1/rack/image.bin; lua=(-s "$WORK/range.lua") ;;
    script) url=http://10.77.0.1/boot.ipxe ;;
  esac
  [ "$pin" = 1 ] && cpuset=(taskset -c "1-$((CORES - 1))")
  threads=$((conns < 2 ? 1 : 2))
  : >"$WORK/samples"
  sampler >>"$WORK/samples" &
  SAMPLER_PID=$!
  tcp0=$(tcp_counts)
  read -r lk0 lr0 <<<"$(link_counts)"
  k0=$(cpu_ticks)
  d0=$(backlog_drops)
  c0=$(cg_usec)
  if [ "$what" = curl ]; then
    export -f curl_loop
    out=$(ip netns exec "$CLI" "${cpuset[@]}" timeout $((DURATION + 120)) \
      env DURATION="$DURATION" bash -c curl_loop 2>&1) || true
  else
    # wrk's timeout is longer than the run: a 256 MiB response shared by 256 connections
    # takes longer than wrk's default 2 s, and throughput counts the bytes delivered either
    # way. --latency: the slowest response is part of the result (a response held for a
    # delayed ACK shows as ~40 ms).
    out=$(ip netns exec "$CLI" "${cpuset[@]}" timeout $((DURATION + 60)) \
      wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout "$((DURATION + 30))s" --latency \
      "${lua[@]}" "$url" 2>&1) || true
  fi
  c1=$(cg_usec)
  d1=$(backlog_drops)
  k1=$(cpu_ticks)
  read -r lk1 lr1 <<<"$(link_counts)"
  tcp1=$(tcp_counts)
  stop_pid "$SAMPLER_PID"
  SAMPLER_PID=""
  echo "$out" | sed "s/^/  $what: /"
  # shellcheck disable=SC2086 # word splitting: six counters each
  tcp_delta $tcp0 $tcp1 | sed "s/^/  $what: /"
  tcp_peak_line "$WORK/samples" | sed "s/^/  $what: /"
  tps=$(awk '/^Transfer\/sec:/ { print $2 }' <<<"$out")
  read=$(awk '/ requests in .* read$/ { print $(NF - 1) }' <<<"$out")
  reqs=$(awk '/ requests in / { print $1 }' <<<"$out")
  # wrk's "Latency avg stdev max +/-": the max, in ms.
  SLOWEST=$(awk '$1 == "Latency" && NF >= 4 { v = $4; n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    f = (u == "us") ? 0.001 : (u == "s") ? 1000 : (u == "m") ? 60000 : 1; printf "%.1f", n * f }' <<<"$out")
  # No response completed (a 256 MiB body shared by many connections): no slowest one.
  [ "${reqs:-0}" -gt 0 ] 2>/dev/null || SLOWEST=""
  SLOWEST=${SLOWEST:--}
  ERRORS=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
  if [ "$what" = script ]; then
    RATE=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    CPU=$(awk -v t=$((c1 - c0)) -v r="${reqs:-0}" \
      'BEGIN { if (r <= 0) print "n/a"; else printf "%.1f", t / r }')
  else
    RATE=$(to_mib "${tps:-0B}")
    CPU=$(awk -v t=$((c1 - c0)) -v m="$(to_mib "${read:-0B}")" \
      'BEGIN { g = m / 1024; if (g <= 0) print "n/a"; else printf "%.2f", t / 1e6 / g }')
  fi
  if [ "$what" = script ]; then n=${reqs:-0}; else n=$(to_mib "${read:-0B}"); fi
  link_line "$what" "$pin" "$n" "$lk0" "$lr0" "$lk1" "$lr1" "$k0" "$k1" "$d0" "$d1" | sed "s/^/  $what: /"
  THREADS=$(threads_of "$WORK/samples" "$SERVER_PID")
}

# Of no values "n/a" (a server the run left out): grep's "no line" must not stop it (pipefail).
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "n/a") }'; }

# Servers alternate within every row, mode and repeat, so a machine that drifts (other load,
# frequency, page cache) drifts for both; each figure is the median of REPEAT runs. The order
# turns by one server at every row and mode, and each repeat starts one turn further than the
# one before, so no server always meets the machine first after the mode changes; a row's
# turns are even across its repeats when REPEAT is a multiple of the number of servers. Threads:
# the most seen in one repeat (working: the repeat with the most); cores: every core used in
# any repeat.
declare -A V C T B U K S
read -ra BASE <<<"$SERVERS"
turn() { ORDER=("${ORDER[@]:1}" "${ORDER[0]}"); }
for rep in $(seq 1 "$REPEAT"); do
  ORDER=("${BASE[@]}")
  for _ in $(seq 2 "$rep"); do turn; done
  for row in $ROWS; do
    IFS=: read -r what conns <<<"$row"
    for pin in $PINS; do
      steer "$pin"
      turn
      for server in "${ORDER[@]}"; do
        start_server "$server" "$pin"
        echo "run $rep pin=$pin $server $what:$conns"
        measure "$server" "$what" "$conns" "$pin"
        stop_server
        k="$server,$pin,$row"
        V[$k]="${V[$k]:-} ${RATE:-0}"
        # The slowest response of every repeat: the worst one is reported.
        S[$k]=$(awk -v a="${S[$k]:--}" -v b="$SLOWEST" 'BEGIN {
          if (b == "-") print a; else if (a == "-" || b + 0 > a + 0) print b; else print a }')
        C[$k]="${C[$k]:-} $CPU"
        read -r nt nb cores allowed kinds busy <<<"$THREADS"
        [ "$nt" -gt "${T[$k]:-0}" ] && T[$k]=$nt
        if [ "$nb" -gt "${B[$k]:-0}" ]; then B[$k]=$nb; K[$k]=$busy; fi
        U[$k]=$(tr ', ' '\n\n' <<<"${U[$k]:-} $cores" | grep -E '^[0-9]+$' | sort -un | paste -sd, -)
        if [ "$what" = script ]; then unit="req/s"; cunit="µs/req"; else unit="MiB/s"; cunit="s/GiB"; fi
        printf 'result %d pin=%s %-10s %-6s %3d conns: %9s %s, slowest %s ms, CPU %s %s; threads %s (%s working), cores used %s, allowed %s; %s %s\n' \
          "$rep" "$pin" "$server" "$what" "$conns" "$RATE" "$unit" "$SLOWEST" "$CPU" "$cunit" "$nt" "$nb" "$cores" "$allowed" "$kinds" "$ERRORS" |
          tee -a "$WORK/results"
      done
    done
  done
done

# "261 threads (40 working: 1 http-ring, 39 iou-wrk), cores 0" for the key $1.
threads_cell() {
  local busy=${K[$1]:--}
  # A server the run left out has nothing: grep's "no line" must not stop the table (pipefail).
  busy=$(tr ',_' '\n ' <<<"$busy" | { grep -v '^-$' || true; } | sort -k2 | paste -sd, - | sed 's/,/, /g')
  echo "${T[$1]:-0} threads (${B[$1]:-0} working${busy:+: $busy}), cores ${U[$1]:-none}"
}

# The table (docs/benchmarks.md rows are copied from it): figures are medians; ratios are Bootfabric's
# over nginx's (higher is better for the rate, lower for CPU).
{
  echo "| pin | request | connections | Bootfabric | nginx | ratio | Bootfabric CPU | nginx CPU | ratio | slowest response, Bootfabric / nginx | Bootfabric threads, cores used | nginx threads, cores used |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for row in $ROWS; do
    IFS=: read -r what conns <<<"$row"
    if [ "$what" = script ]; then unit="req/s"; cunit="µs/req"; else unit="MiB/s"; cunit="s/GiB"; fi
    for pin in $PINS; do
      if [ "$pin" = 1 ]; then mode="1 core each"; else mode="none"; fi
      b="bootfabric,$pin,$row" n="nginx,$pin,$row"
      bv=$(median <<<"${V[$b]:-}") nv=$(median <<<"${V[$n]:-}")
      bc=$(median <<<"${C[$b]:-}") nc=$(median <<<"${C[$n]:-}")
      awk -v mode="$mode" -v w="$what" -v c="$conns" -v u="$unit" -v cu="$cunit" \
        -v bv="$bv" -v nv="$nv" -v bc="$bc" -v nc="$nc" -v bs="${S[$b]:--}" -v ns="${S[$n]:--}" \
        -v bt="$(threads_cell "$b")" -v nt="$(threads_cell "$n")" 'BEGIN {
        slow = (bs == "-" && ns == "-") ? "n/a" : bs " / " ns " ms"
        printf "| %s | %s | %s | %s %s | %s %s | %s | %s %s | %s %s | %s | %s | %s | %s |\n", mode, w, c,
          bv, u, nv, u, ((nv + 0) > 0 ? sprintf("%.2f", bv / nv) : "n/a"),
          bc, cu, nc, cu, ((nc + 0) > 0 && bc != "n/a" ? sprintf("%.2f", bc / nc) : "n/a"), slow, bt, nt }'
    done
  done
} >"$RESULTS/table.md"
# The same rows as ratios within each repeat (paired.sh says why), from this run's raw output.
{ echo; "$ROOT/bench/http/paired.sh" "$WORK/results"; } >>"$RESULTS/table.md"
echo
cat "$RESULTS/table.md"
