#!/usr/bin/env bash
# TFTP benchmark: Bootfabric against tftpd-hpa and dnsmasq's TFTP in the same run, with atftp
# as the client (it speaks blksize and windowsize; servers that do not know windowsize leave it
# out of their OACK and atftp falls back to lock-step).
#
# Every row (file size, blksize, windowsize, concurrent clients) runs REPEAT times per server;
# within a repeat the servers take turns on the row (each started fresh), and the order rotates
# from one repeat to the next, so a machine that drifts drifts for all of them. For each row and
# server it reports the median and the spread (min-max) of:
#   - throughput: file bytes delivered to all clients / wall time;
#   - the server's CPU time per GiB served, from a cgroup holding the server and everything
#     it forks (tftpd-hpa forks per transfer), plus the run time of its BPF programs
#     (kernel.bpf_stats_enabled, on for the run), which run in whatever context receives a
#     frame and are no cgroup's;
# then Bootfabric's ratios (of the medians) to each peer, and the failed transfers of every
# pass. Every client repeats its transfer until the row has moved at least MIN_BYTES, so that
# short rows still measure more than a clock tick. Each transfer lands in a file of its own;
# all of them are checked (size and SHA-256 against the source) after the clock has stopped.
#
# With JUMBO_MTU set (default 9000) the blksize 8192 rows also run Bootfabric with that
# tftp.mtu (it then sends 8 KiB blocks that the IP layer fragments, as the peers do), in the
# same turns as the others.
#
# Memory per transfer (MEM_ROWS): a fresh server, one warm-up transfer, then its memory at
# rest, then N clients at once, sampled while every one of the N downloads is mid-flight
# (its file has some bytes and not all): (peak - rest) / N, from the server's memory cgroup
# and from the sum of the PSS of its processes. These rows are not timed.
#
# Everything runs in two network namespaces this script creates (server: fabric0 10.77.0.1/24,
# client: cli0 10.77.0.2/24, a veth pair born inside them) and removes on exit, also on
# failure; processes are killed by PID. The output, table.md and meta.txt are kept in
# bench/results/tftp/<date>-<commit>/ (RESULTS_DIR=<folder> for runs not to be kept).
#
# Usage: bench/tftp/run.sh          (as root; `cargo xtask setup` installs the peers)
# Knobs: SIZES="1 32" (MiB) BLKSIZES="512 1468 8192" WINDOWS="1 8 32" CLIENTS="1 16 64"
#        ROWS="32:8192:1:64 ..." (size:blksize:window:clients, replaces the matrix)
#        SERVERS="bootfabric tftpd-hpa dnsmasq" REPEAT=3 MIN_BYTES=67108864 MTU=1500
#        BOOTFABRIC_BIN=target/release/bootfabric KEEP=1 (keep the work folder)
#        BOOTFABRIC_TFTP_MTU=$MTU (tftp.mtu for Bootfabric)
#        JUMBO_MTU=9000 (tftp.mtu of the extra Bootfabric on blksize > 1468 rows; 0: none)
#        MEM_ROWS="4:1468:1:64 4:1468:32:64" (size:blksize:window:clients; "" skips them)
#        PIN=1 (server on CPU 0, clients on the others; 0 lets the scheduler place them)
#        KERNEL=1 (also run Bootfabric with TFTP in the kernel on the rows it carries: blocks
#        that fit a frame, windows of at most 8; 0: not)
#        RPS=0 (1: Receive Packet Steering on the server's interface, every core in its mask:
#        a one-queue NIC's software RSS, spreading each transfer's receive path, TC included,
#        over the cores by its four-tuple; for every server alike)
#        XSK=0 (1: also run bench/tftp/xsk, the AF_XDP way to carry windows, built here with
#        cc against libxdp (apt install libxdp-dev libbpf-dev), on the same rows; a
#        measurement prototype, not a server)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
SIZES=${SIZES:-"1 32"}
BLKSIZES=${BLKSIZES:-"512 1468 8192"}
WINDOWS=${WINDOWS:-"1 8 32"}
CLIENTS=${CLIENTS:-"1 16 64"}
ROWS=${ROWS:-}
SERVERS=${SERVERS:-"bootfabric tftpd-hpa dnsmasq"}
REPEAT=${REPEAT:-3}
MIN_BYTES=${MIN_BYTES:-67108864}
MTU=${MTU:-1500}
BOOTFABRIC_TFTP_MTU=${BOOTFABRIC_TFTP_MTU:-$MTU}
JUMBO_MTU=${JUMBO_MTU:-9000}
MEM_ROWS=${MEM_ROWS-"4:1468:1:64 4:1468:32:64"}
PIN=${PIN:-1}
KERNEL=${KERNEL:-1}
XSK=${XSK:-0}
RPS=${RPS:-0}
# Lock-step rows measure wake-up latency, which swings with where the scheduler puts the
# server and the client; pinning them to different cores makes runs comparable.
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  SERVER_CPUS=(taskset -c 0)
  CLIENT_CPUS=(taskset -c "1-$(($(nproc) - 1))")
else
  SERVER_CPUS=()
  CLIENT_CPUS=()
fi

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
for p in atftp in.tftpd dnsmasq ip ss sha256sum stat timeout; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
for s in $SERVERS; do
  case $s in bootfabric | tftpd-hpa | dnsmasq) ;; *) echo "unknown server $s" >&2; exit 2 ;; esac
done
[ "$REPEAT" -ge 1 ] || { echo "REPEAT must be at least 1" >&2; exit 2; }
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi
if [ "$XSK" = 1 ]; then
  [ -f /usr/include/xdp/xsk.h ] || { echo "XSK=1 needs libxdp-dev and libbpf-dev" >&2; exit 2; }
fi

ID=bft-$$
SRV=$ID-srv
CLI=$ID-cli
# Files and downloads live in memory: the benchmark measures servers, not disks.
WORK=$(mktemp -d /dev/shm/bootfabric-tftp-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
MEMCG=""
# BPF run-time statistics for the run (restored on exit): the kernel path's programs are
# server work that no cgroup sees.
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo "")
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"

stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  cgroup_kill
  # An XDP program a killed server left attached (libxdp's, attached by netlink) would take
  # the next server's frames.
  [ -n "${SRV:-}" ] && ip -n "$SRV" link set dev fabric0 xdp off 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_server
  lab_down
  [ -n "$BPF_STATS_WAS" ] && sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" || true
  # A v1 memory cgroup of our own (v2 uses the CPU one); lab_down has emptied it.
  if [ -n "$MEMCG" ] && [ "$MEMCG" != "$CG" ]; then rmdir "$MEMCG" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

results_open tftp SIZES BLKSIZES WINDOWS CLIENTS ROWS SERVERS REPEAT MIN_BYTES MTU \
  BOOTFABRIC_TFTP_MTU JUMBO_MTU MEM_ROWS PIN KERNEL XSK RPS BOOTFABRIC_BIN

# The server runs in a cgroup of its own: its CPU time then includes every process it forks
# (tftpd-hpa forks a child per transfer and does not wait for them, so /proc/<pid>/stat's
# children's time misses them).
cgroup_setup
if [ -n "$BPF_STATS_WAS" ]; then
  sysctl -qw kernel.bpf_stats_enabled=1
  results_note "kernel.bpf_stats_enabled=1 for the run: server CPU includes its BPF programs' run time"
fi
# Memory: on cgroup v1 the memory controller is a hierarchy of its own, so the server joins a
# second cgroup there; on v2 the one cgroup has both.
if [ -d /sys/fs/cgroup/memory ] && [ "$CG" != "/sys/fs/cgroup/$ID" ]; then
  MEMCG=/sys/fs/cgroup/memory/$ID
  mkdir "$MEMCG"
  cg_mem_bytes() { cat "$MEMCG/memory.usage_in_bytes"; }
  cg_kernel_bytes() { cat "$MEMCG/memory.kmem.usage_in_bytes"; }
else
  MEMCG=$CG
  cg_mem_bytes() { cat "$MEMCG/memory.current"; }
  cg_kernel_bytes() {
    awk '$1 ~ /^(kernel_stack|pagetables|sec_pagetables|percpu|sock|slab)$/ { s += $2 } END { print s + 0 }' "$MEMCG/memory.stat"
  }
fi
# Moves the shell into both cgroups, then becomes the command ($! stays the server's PID).
IN_CGROUPS=(sh -c 'echo $$ > "$0/cgroup.procs" && echo $$ > "$1/cgroup.procs" && shift && exec "$@"' "$CG" "$MEMCG")
lab_up "$MTU"
if [ "$RPS" = 1 ]; then
  mask=$(printf '%x' $(((1 << $(nproc)) - 1)))
  ip netns exec "$SRV" sh -c "echo $mask > /sys/class/net/fabric0/queues/rx-0/rps_cpus"
  results_note "RPS: fabric0 rx-0 rps_cpus=$(ip netns exec "$SRV" cat /sys/class/net/fabric0/queues/rx-0/rps_cpus)"
fi

mkdir -p "$WORK/root" "$WORK/out" "$WORK/res"

if [ -n "$ROWS" ]; then
  MATRIX=$ROWS
else
  MATRIX=""
  for size in $SIZES; do for blk in $BLKSIZES; do for win in $WINDOWS; do for n in $CLIENTS; do
    MATRIX="$MATRIX $size:$blk:$win:$n"
  done; done; done; done
fi
for spec in $MATRIX $MEM_ROWS; do
  IFS=: read -r size _ <<<"$spec"
  f=$WORK/root/f$size.bin
  [ -e "$f" ] || head -c $((size * 1048576 + 123)) /dev/urandom >"$f"
done
chmod 644 "$WORK/root"/*
declare -A SUM
for f in "$WORK/root"/*; do SUM[$(basename "$f")]=$(sha256sum <"$f" | cut -d' ' -f1); done

wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -ulnH 'sport = :69' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited:" >&2; tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not start listening within 30 s" >&2; tail -20 "$WORK/$1.log" >&2; return 1
}

# Servers by name; bootfabric-mtuN is Bootfabric with tftp.mtu = N.
start_server() {
  local name=$1 mtu
  case $name in
    bootfabric | bootfabric-mtu* | bootfabric-kernel)
      mtu=$BOOTFABRIC_TFTP_MTU
      case $name in bootfabric-mtu*) mtu=${name#bootfabric-mtu} ;; esac
      # The kernel path: XDP and the TC program attached, every benchmark file hot.
      local xdp=off kernel_files="[]"
      if [ "$name" = bootfabric-kernel ]; then
        xdp=auto
        kernel_files="[$(cd "$WORK/root" && ls | sed 's/.*/"&"/' | paste -sd,)]"
      fi
      rm -rf "$WORK/state"
      cat >"$WORK/bootfabric.toml" <<TOML
[daemon]
state_dir = "$WORK/state"
log = "warn"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "$xdp"
[dhcp]
enabled = false
[tftp]
root = "$WORK/root"
transfer_ports = "50000-50999"
mtu = $mtu
kernel_files = $kernel_files
kernel_bytes = 268435456
# Every client runs from one address: the per-client caps are opened to the global ones.
max_transfers_per_client = 1000
requests_per_second_per_client = 5000
TOML
      "${IN_CGROUPS[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/$name.log" &
      ;;
    tftpd-hpa)
      # -L: stay in the foreground and listen; it forks a child per transfer.
      "${IN_CGROUPS[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" in.tftpd -L -u root -a 10.77.0.1:69 -s "$WORK/root" \
        >"$WORK/tftpd-hpa.log" 2>&1 &
      ;;
    xsk)
      "${IN_CGROUPS[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" "$WORK/xsk_tftp" fabric0 10.77.0.1 "$WORK/root" \
        >"$WORK/xsk.log" 2>&1 &
      SERVER_PID=$!
      # No UDP socket to wait for: it says when its AF_XDP socket is bound.
      for _ in $(seq 1 100); do grep -q 'ready on' "$WORK/xsk.log" && break; sleep 0.1; done
      grep -q 'ready on' "$WORK/xsk.log" || { echo "xsk_tftp did not start:" >&2; cat "$WORK/xsk.log" >&2; return 1; }
      [ "$(cat "/proc/$SERVER_PID/comm")" = xsk_tftp ] || { echo "PID $SERVER_PID is not xsk_tftp" >&2; return 1; }
      return 0
      ;;
    dnsmasq)
      "${IN_CGROUPS[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" dnsmasq --no-daemon --port=0 --conf-file=/dev/null \
        --interface=fabric0 --bind-interfaces --user=root --enable-tftp \
        --tftp-root="$WORK/root" --tftp-max=1000 --pid-file="$WORK/dnsmasq.pid" \
        >"$WORK/dnsmasq.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_listening "$name"
  local comm
  comm=$(cat "/proc/$SERVER_PID/comm")
  case $comm in
    bootfabric | in.tftpd | dnsmasq) ;;
    *) echo "PID $SERVER_PID is $comm, not the server" >&2; return 1 ;;
  esac
}

# Writes the client script for N clients each fetching f<size>.bin REPS times in a row, each
# transfer into a file of its own (out/c<client>-<rep>), its exit status into res/<client>.
# Nothing but atftp runs in the loop: the files are checked after the clock stops.
clients_script() {
  local size=$1 blk=$2 win=$3 n=$4 reps=$5 opts
  opts="--option 'blksize $blk'"
  [ "$win" -gt 1 ] && opts="$opts --option 'windowsize $win'"
  rm -rf "$WORK/out" "$WORK/res"
  mkdir -p "$WORK/out" "$WORK/res"
  cat >"$WORK/clients.sh" <<SH
#!/bin/bash
for i in \$(seq 1 $n); do
  (
    for r in \$(seq 1 $reps); do
      if timeout 300 atftp $opts -g -r f$size.bin -l $WORK/out/c\$i-\$r 10.77.0.1 >/dev/null 2>&1; then
        echo "c\$i-\$r 0"
      else
        echo "c\$i-\$r \$?"
      fi
    done
  ) >$WORK/res/\$i &
done
wait
SH
  chmod +x "$WORK/clients.sh"
}

# Checks every transfer of the last client script (EXPECTED of them) against the source:
# atftp's status, the size and the SHA-256. Sets OK and FAILED (a transfer that left no
# status fails too); prints a line per failed transfer.
verify() {
  local size=$1 expected=$2 want_sum want_size
  want_sum=${SUM[f$size.bin]}
  want_size=$((size * 1048576 + 123))
  local verdicts
  verdicts=$(
    { cat "$WORK/res"/* 2>/dev/null || true; } | while read -r name status; do
      f=$WORK/out/$name
      if [ "$status" != 0 ]; then echo "FAIL $name: atftp exited $status"; continue; fi
      if [ ! -f "$f" ]; then echo "FAIL $name: no file"; continue; fi
      got=$(stat -c %s "$f")
      if [ "$got" != "$want_size" ]; then echo "FAIL $name: $got bytes, not $want_size"; continue; fi
      echo "SIZE $name"
    done
  )
  # The checksums of all the files of the right size, in one pass.
  local sizes_ok sums_ok=""
  sizes_ok=$(awk '$1 == "SIZE" { printf "%s ", $2 }' <<<"$verdicts")
  if [ -n "$sizes_ok" ]; then
    sums_ok=$(cd "$WORK/out" && sha256sum $sizes_ok)
  fi
  OK=$(awk -v w="$want_sum" '$1 == w { n++ } END { print n + 0 }' <<<"$sums_ok")
  awk -v w="$want_sum" '$1 != w && NF { print "FAIL " $2 ": checksum differs" }' <<<"$sums_ok"
  grep '^FAIL' <<<"$verdicts" || true
  FAILED=$((expected - OK))
  rm -rf "$WORK/out" "$WORK/res"
}

# CPU time of the whole machine so far, in microseconds (every core's user, system, irq and
# softirq time from /proc/stat). The kernel path answers an ACK in the softirq of the
# datagram that carries it, which the kernel charges to whoever sent it (the client), so the
# server's cgroup alone would call it free: this column counts it wherever it falls, and the
# clients' own work, the same for every server.
sys_usec() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1e6 / hz }' /proc/stat
}

# Run time of the server's BPF programs so far, in microseconds: each program it holds open
# counted once (by id), from its descriptors' fdinfo.
bpf_usec() {
  [ -n "$SERVER_PID" ] || { echo 0; return; }
  awk 'FNR == 1 { id = "" } /^prog_id:/ { id = $2 } /^run_time_ns:/ && id != "" { t[id] = $2 }
    END { for (i in t) s += t[i]; printf "%.0f\n", s / 1000 }' "/proc/$SERVER_PID/fdinfo/"* 2>/dev/null || echo 0
}

# Busy microseconds of each core so far, one line "cpuN usec" per core.
cpu_usec() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu[0-9]/ { printf "%s %.0f\n", $1, ($2 + $3 + $4 + $7 + $8 + $9) * 1e6 / hz }' /proc/stat
}

# One timed pass of a row against the running server. Sets FAILED, MBPS, CPU_PER_GIB,
# SYS_PER_GIB and SPLIT (each core's share of the machine's busy time during the pass: where
# the work ran, the kernel path's included).
row() {
  local size=$1 blk=$2 win=$3 n=$4 reps=$5 t0 t1 c0 c1 s0 s1 bytes
  clients_script "$size" "$blk" "$win" "$n" "$reps"
  c0=$(($(cg_usec) + $(bpf_usec)))
  s0=$(sys_usec)
  local p0 p1
  p0=$(cpu_usec)
  t0=$(date +%s%N)
  ip netns exec "$CLI" "${CLIENT_CPUS[@]}" "$WORK/clients.sh"
  t1=$(date +%s%N)
  p1=$(cpu_usec)
  s1=$(sys_usec)
  c1=$(($(cg_usec) + $(bpf_usec)))
  SPLIT=$(join <(echo "$p0") <(echo "$p1") | awk '{ d[$1] = $3 - $2; t += $3 - $2 } END {
    for (c in d) printf "%s %.0f%% ", c, (t > 0 ? 100 * d[c] / t : 0) }' | tr ' ' '\n' | paste -d' ' - - | sort | paste -sd' ')
  verify "$size" $((n * reps))
  bytes=$((OK * (size * 1048576 + 123)))
  MBPS=$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", b / 1048576 / (ns / 1e9) }')
  WALL=$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }')
  CPU_PER_GIB=$(awk -v t=$((c1 - c0)) -v b="$bytes" \
    'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", t / 1e6 / (b / 1073741824) }')
  SYS_PER_GIB=$(awk -v t=$((s1 - s0)) -v b="$bytes" \
    'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", t / 1e6 / (b / 1073741824) }')
}

# The server's memory now: "<cgroup bytes> <PSS kB of all its processes> <kernel bytes>".
mem_now() {
  local pids pss
  pids=$(cat "$MEMCG/cgroup.procs")
  # A process may exit between the listing and the read (a tftpd-hpa child): it is skipped.
  # One cat for all of them, so that a sample of 65 processes stays short.
  # shellcheck disable=SC2086
  pss=$(cd /proc && printf '%s/smaps_rollup\n' $pids | { xargs cat 2>/dev/null || true; } | awk '/^Pss:/ { s += $2 } END { print s + 0 }')
  echo "$(cg_mem_bytes) $pss $(cg_kernel_bytes)"
}

# Memory per transfer for one row against the running server. Sets MEM (KiB per transfer:
# "<cgroup> <PSS> <kernel>") and MEM_LINE (what it saw).
mem_row() {
  local size=$1 blk=$2 win=$3 n=$4 full cl all=0 samples=0 m p k moving
  local rest=() peak=(0 0 0) cgs="" psss="" ks=""
  full=$((size * 1048576 + 123))
  # Warm-up: one transfer, so what the first one allocates once is counted as rest.
  clients_script "$size" "$blk" "$win" 1 1
  ip netns exec "$CLI" "${CLIENT_CPUS[@]}" "$WORK/clients.sh"
  verify "$size" 1
  [ "$FAILED" = 0 ] || echo "memory row warm-up: $FAILED failed"
  # At rest: the median of 9 readings.
  for _ in $(seq 1 9); do
    read -r m p k <<<"$(mem_now)"
    cgs="$cgs $m"; psss="$psss $p"; ks="$ks $k"
    sleep 0.05
  done
  rest=("$(median <<<"$cgs")" "$(median <<<"$psss")" "$(median <<<"$ks")")
  clients_script "$size" "$blk" "$win" "$n" 1
  ip netns exec "$CLI" "${CLIENT_CPUS[@]}" "$WORK/clients.sh" &
  cl=$!
  while kill -0 "$cl" 2>/dev/null; do
    # Mid-flight: the download has bytes and not all of them (atftp writes as blocks come).
    moving=$(cd "$WORK/out" && find . -maxdepth 1 -name 'c*' -size +0c -printf '%s\n' 2>/dev/null |
      awk -v full="$full" '$1 < full { k++ } END { print k + 0 }')
    read -r m p k <<<"$(mem_now)"
    samples=$((samples + 1))
    if [ "$moving" = "$n" ]; then
      all=$((all + 1))
      [ "$m" -gt "${peak[0]}" ] && peak[0]=$m
      [ "$p" -gt "${peak[1]}" ] && peak[1]=$p
      [ "$k" -gt "${peak[2]}" ] && peak[2]=$k
    fi
    sleep 0.02
  done
  wait "$cl" || true
  verify "$size" "$n"
  if [ "$all" = 0 ]; then
    MEM="n/a n/a n/a"
  else
    MEM=$(awk -v n="$n" -v c0="${rest[0]}" -v c1="${peak[0]}" -v p0="${rest[1]}" -v p1="${peak[1]}" \
      -v k0="${rest[2]}" -v k1="${peak[2]}" \
      'BEGIN { printf "%.1f %.1f %.1f", (c1 - c0) / 1024 / n, (p1 - p0) / n, (k1 - k0) / 1024 / n }')
  fi
  MEM_LINE="at rest: cgroup ${rest[0]} B, PSS ${rest[1]} kB, kernel ${rest[2]} B; peak with all $n in flight: cgroup ${peak[0]} B, PSS ${peak[1]} kB, kernel ${peak[2]} B; $all of $samples samples had all $n in flight; $FAILED failed"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "n/a") }'; }
# "median (min–max)" of a list, or the one value when all are equal; n/a when any is n/a.
spread() {
  local vals
  vals=$(tr ' ' '\n' | grep -v '^$' || true)
  if [ -z "$vals" ] || grep -q 'n/a' <<<"$vals"; then echo "n/a"; return; fi
  sort -g <<<"$vals" | awk '{ v[NR] = $1 } END {
    m = v[int((NR + 1) / 2)]; if (v[1] == v[NR]) print m; else printf "%s (%s–%s)\n", m, v[1], v[NR] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print ((a != "n/a" && (b + 0) > 0) ? sprintf("%.2f", a / b) : "n/a") }'; }

# The servers that run a row: SERVERS, plus Bootfabric at JUMBO_MTU where blocks exceed what
# fits in the link MTU.
JUMBO=""
if [ "${JUMBO_MTU:-0}" != 0 ] && [[ " $SERVERS " == *" bootfabric "* ]]; then JUMBO=bootfabric-mtu$JUMBO_MTU; fi
KERNEL_BF=""
if [ "$KERNEL" = 1 ] && [[ " $SERVERS " == *" bootfabric "* ]]; then KERNEL_BF=bootfabric-kernel; fi
XSK_S=""
if [ "$XSK" = 1 ]; then
  XSK_S=xsk
  cc -O2 -Wall -o "$WORK/xsk_tftp" "$ROOT/bench/tftp/xsk/xsk_tftp.c" -lxdp -lbpf
  results_note "xsk: bench/tftp/xsk/xsk_tftp.c, cc -O2, libxdp $(dpkg-query -W -f '${Version}' libxdp1 2>/dev/null)"
fi
row_servers() {
  local blk=$1 rep=$2 win=${3:-0} list=($SERVERS) k out=()
  [ -n "$JUMBO" ] && [ "$blk" -gt $((BOOTFABRIC_TFTP_MTU - 32)) ] && list+=("$JUMBO")
  # The kernel carries transfers of blocks that fit a frame, in windows of at most 8.
  [ -n "$KERNEL_BF" ] && [ "$win" -ge 1 ] && [ "$win" -le 8 ] && [ "$blk" -le $((BOOTFABRIC_TFTP_MTU - 32)) ] && list+=("$KERNEL_BF")
  # The AF_XDP prototype on the same rows (the memory rows, win 0, leave it out).
  [ -n "$XSK_S" ] && [ "$win" -ge 1 ] && [ "$win" -le 8 ] && [ "$blk" -le 1468 ] && list+=("$XSK_S")
  # Rotated by one per repeat: no server always goes first.
  for k in $(seq 0 $((${#list[@]} - 1))); do out+=("${list[$(((k + rep - 1) % ${#list[@]}))]}"); done
  echo "${out[@]}"
}

TFTPD_V=$(in.tftpd -V 2>&1 | awk '{ sub(/,$/, "", $2); print $2; exit }')
DNSMASQ_V=$(dnsmasq -v | awk 'NR == 1 { print $3 }')
ATFTP_V=$(atftp -V 2>&1 | awk 'NR == 1 { print $1 }')
results_note "bootfabric: $BIN, built $(date -u -r "$BIN" '+%Y-%m-%dT%H:%M:%SZ')"
results_note "peer: tftpd-hpa $TFTPD_V (in.tftpd -L, forks per transfer)"
results_note "peer: dnsmasq $DNSMASQ_V (--enable-tftp --tftp-max=1000)"
results_note "client: $ATFTP_V"
echo "bootfabric $BIN, tftpd-hpa $TFTPD_V, dnsmasq $DNSMASQ_V, $ATFTP_V client"
echo "$(nproc) cores, veth MTU $MTU, Bootfabric tftp.mtu $BOOTFABRIC_TFTP_MTU${JUMBO:+ (and $JUMBO on blksize > $((BOOTFABRIC_TFTP_MTU - 32)))}, pinned: $PIN, at least $((MIN_BYTES / 1048576)) MiB per row, $REPEAT repeats"
echo

declare -A M C S F W ALL
for rep in $(seq 1 "$REPEAT"); do
  for spec in $MATRIX; do
    IFS=: read -r size blk win n <<<"$spec"
    reps=$(((MIN_BYTES + size * 1048576 * n - 1) / (size * 1048576 * n)))
    for server in $(row_servers "$blk" "$rep" "$win"); do
      ALL[$server]=1
      start_server "$server"
      row "$size" "$blk" "$win" "$n" "$reps"
      if [ "$server" = bootfabric-kernel ]; then
        KBLOCKS=$(ip netns exec "$SRV" sh -c "curl -s http://\$(ss -tlnH | awk '/127.0.0.1/ { print \$4; exit }')/metrics" |
          awk '/^bootfabric_tftp_kernel_blocks_total / { print $2 }')
        echo "  bootfabric-kernel: ${KBLOCKS:-0} blocks sent by the kernel"
      fi
      stop_server
      M[$server,$spec]="${M[$server,$spec]:-} $MBPS"
      W[$server,$spec]="${W[$server,$spec]:-} $WALL"
      C[$server,$spec]="${C[$server,$spec]:-} $CPU_PER_GIB"
      S[$server,$spec]="${S[$server,$spec]:-} $SYS_PER_GIB"
      F[$server,$spec]=$((${F[$server,$spec]:-0} + FAILED))
      printf 'run %d %-18s %3d MiB blksize %5d window %2d clients %4d x%-3d: %3d failed, %8s MiB/s, %6s CPU s/GiB, %6s system CPU s/GiB; busy time by core: %s\n' \
        "$rep" "$server" "$size" "$blk" "$win" "$n" "$reps" "$FAILED" "$MBPS" "$CPU_PER_GIB" "$SYS_PER_GIB" "$SPLIT"
    done
  done
done

declare -A MC MP MK
for rep in $(seq 1 "$REPEAT"); do
  for spec in $MEM_ROWS; do
    IFS=: read -r size blk win n <<<"$spec"
    for server in $(row_servers 0 "$rep"); do
      start_server "$server"
      mem_row "$size" "$blk" "$win" "$n"
      stop_server
      read -r mc mp mk <<<"$MEM"
      MC[$server,$spec]="${MC[$server,$spec]:-} $mc"
      MP[$server,$spec]="${MP[$server,$spec]:-} $mp"
      MK[$server,$spec]="${MK[$server,$spec]:-} $mk"
      F[$server,mem,$spec]=$((${F[$server,mem,$spec]:-0} + FAILED))
      printf 'memory %d %-10s %3d MiB blksize %5d window %2d clients %2d: KiB per transfer %s (cgroup) %s (PSS) %s (kernel); %s\n' \
        "$rep" "$server" "$size" "$blk" "$win" "$n" "$mc" "$mp" "$mk" "$MEM_LINE"
    done
  done
done

# The tables, into raw.txt and table.md alike.
peers=()
for s in $SERVERS; do [ "$s" = bootfabric ] || peers+=("$s"); done
# One table: the first column group is $1 (a Bootfabric variant), against the peers.
throughput_table() {
  local bf=$1 title=$2 s spec size blk win n failed cells bm bc bs m c
  shift 2
  printf '| size | blksize | window | clients | %s MiB/s |' "$title"
  for s in "${peers[@]}"; do printf ' %s MiB/s |' "$s"; done
  printf ' %s CPU s/GiB |' "$title"
  for s in "${peers[@]}"; do printf ' %s CPU s/GiB |' "$s"; done
  printf ' %s system CPU s/GiB |' "$title"
  for s in "${peers[@]}"; do printf ' %s system CPU s/GiB |' "$s"; done
  for s in "${peers[@]}"; do printf ' MiB/s ratio vs %s |' "$s"; done
  for s in "${peers[@]}"; do printf ' CPU ratio vs %s |' "$s"; done
  for s in "${peers[@]}"; do printf ' system CPU ratio vs %s |' "$s"; done
  echo ' failed |'
  printf '|---|---|---|---|'
  for _ in $bf "${peers[@]}" $bf "${peers[@]}" $bf "${peers[@]}" "${peers[@]}" "${peers[@]}" "${peers[@]}"; do printf -- '---|'; done
  echo '---|'
  for spec in "$@"; do
    IFS=: read -r size blk win n <<<"$spec"
    printf '| %s MiB | %s | %s | %s |' "$size" "$blk" "$win" "$n"
    failed=0
    for s in $bf "${peers[@]}"; do printf ' %s |' "$(spread <<<"${M[$s,$spec]:-}")"; done
    for s in $bf "${peers[@]}"; do printf ' %s |' "$(spread <<<"${C[$s,$spec]:-}")"; done
    for s in $bf "${peers[@]}"; do printf ' %s |' "$(spread <<<"${S[$s,$spec]:-}")"; done
    bm=$(median <<<"${M[$bf,$spec]:-}")
    bc=$(median <<<"${C[$bf,$spec]:-}")
    bs=$(median <<<"${S[$bf,$spec]:-}")
    for s in "${peers[@]}"; do m=$(median <<<"${M[$s,$spec]:-}"); printf ' %s |' "$(ratio "$bm" "$m")"; done
    for s in "${peers[@]}"; do c=$(median <<<"${C[$s,$spec]:-}"); printf ' %s |' "$(ratio "$bc" "$c")"; done
    for s in "${peers[@]}"; do c=$(median <<<"${S[$s,$spec]:-}"); printf ' %s |' "$(ratio "$bs" "$c")"; done
    for s in $bf "${peers[@]}"; do failed=$((failed + ${F[$s,$spec]:-0})); done
    echo " $failed |"
  done
}

# Rows of many clients (a storm), every server of the pass in one table: wall time of the
# pass (all clients' transfers, one each), throughput, server CPU and the whole machine's.
storm_table() {
  local spec size blk win n s
  echo '| size | blksize | window | clients | server | wall time s | MiB/s | CPU s/GiB | system CPU s/GiB | failed |'
  echo '|---|---|---|---|---|---|---|---|---|---|'
  for spec in "$@"; do
    IFS=: read -r size blk win n <<<"$spec"
    for s in bootfabric $KERNEL_BF $XSK_S "${peers[@]}"; do
      [ -n "${M[$s,$spec]:-}" ] || continue
      printf '| %s MiB | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$blk" "$win" "$n" "$s" \
        "$(spread <<<"${W[$s,$spec]:-}")" "$(spread <<<"${M[$s,$spec]:-}")" \
        "$(spread <<<"${C[$s,$spec]:-}")" "$(spread <<<"${S[$s,$spec]:-}")" "${F[$s,$spec]:-0}"
    done
  done
}

memory_table() {
  local s spec size blk win n
  echo '| size | blksize | window | transfers in flight | server | KiB per transfer, cgroup | KiB per transfer, PSS | KiB per transfer, kernel | failed |'
  echo '|---|---|---|---|---|---|---|---|---|'
  for spec in $MEM_ROWS; do
    IFS=: read -r size blk win n <<<"$spec"
    for s in $SERVERS; do
      printf '| %s MiB | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$blk" "$win" "$n" "$s" \
        "$(spread <<<"${MC[$s,$spec]:-}")" "$(spread <<<"${MP[$s,$spec]:-}")" \
        "$(spread <<<"${MK[$s,$spec]:-}")" "${F[$s,mem,$spec]:-0}"
    done
  done
}

{
  echo
  echo "Throughput and server CPU per GiB: median (min-max) of $REPEAT passes per server;"
  echo "ratios are of the medians (Bootfabric / peer); failed counts every pass of every server."
  echo
  if [[ " $SERVERS " == *" bootfabric "* ]]; then
    # shellcheck disable=SC2086
    throughput_table bootfabric "Bootfabric" $MATRIX
  else
    first=${SERVERS%% *}
    peers=("${peers[@]:1}")
    # shellcheck disable=SC2086
    throughput_table "$first" "$first" $MATRIX
  fi
  if [ -n "$JUMBO" ] && [ -n "${ALL[$JUMBO]:-}" ]; then
    jrows=()
    for spec in $MATRIX; do
      IFS=: read -r _ blk _ <<<"$spec"
      [ "$blk" -gt $((BOOTFABRIC_TFTP_MTU - 32)) ] && jrows+=("$spec")
    done
    echo
    echo "Bootfabric with tftp.mtu = $JUMBO_MTU (8 KiB blocks, fragmented by the IP layer as the peers'"
    echo "are), in the same passes as the rows above; the peers' columns are the same passes as there:"
    echo
    throughput_table "$JUMBO" "Bootfabric tftp.mtu $JUMBO_MTU" "${jrows[@]}"
  fi
  if [ -n "$KERNEL_BF" ] && [ -n "${ALL[$KERNEL_BF]:-}" ]; then
    krows=()
    for spec in $MATRIX; do
      IFS=: read -r _ blk win _ <<<"$spec"
      [ "$win" -le 8 ] && [ "$blk" -le $((BOOTFABRIC_TFTP_MTU - 32)) ] && krows+=("$spec")
    done
    echo
    echo "Bootfabric with TFTP in the kernel (XDP and the TC program attached, the files hot), on the"
    echo "rows it carries, in the same passes as the rows above; the peers' columns are the same passes"
    echo "(the peers know no windowsize: their windowed rows are lock-step)."
    echo "Its server CPU is its process's and its BPF programs' run time (the TC program and XDP);"
    echo "the redirect's transmit after the program, in the receiving softirq, is in the system column."
    echo
    throughput_table "$KERNEL_BF" "Bootfabric kernel" "${krows[@]}"
    if [[ " $SERVERS " == *" bootfabric "* ]]; then
      echo
      echo "The ways measured, on the same rows: the TC program (Bootfabric kernel; a window's blocks"
      echo "but the last as clones) against userspace (Bootfabric: a window in one UDP GSO send) and,"
      echo "with XSK=1, an AF_XDP socket (xsk), the same passes as above:"
      echo
      saved=("${peers[@]}")
      peers=(bootfabric)
      [ -n "$XSK_S" ] && [ -n "${ALL[$XSK_S]:-}" ] && peers+=("$XSK_S")
      throughput_table "$KERNEL_BF" "Bootfabric kernel" "${krows[@]}"
      peers=("${saved[@]}")
    fi
    if [ -n "$XSK_S" ] && [ -n "${ALL[$XSK_S]:-}" ]; then
      echo
      echo "(xsk: bench/tftp/xsk/xsk_tftp.c, an AF_XDP read server built to measure that way: every"
      echo "frame of the queue to one AF_XDP socket in copy mode, each ACK answered with its window in"
      echo "one TX kick; no retransmission, UDP checksum 0.)"
    fi
  fi
  srows=()
  for spec in $MATRIX; do
    IFS=: read -r _ _ _ n <<<"$spec"
    [ "$n" -ge 1000 ] && srows+=("$spec")
  done
  if [ "${#srows[@]}" -gt 0 ] && [[ " $SERVERS " == *" bootfabric "* ]]; then
    echo
    echo "Storms (1,000 clients or more, each one transfer at once), every server of the same passes:"
    echo "the userspace path (bootfabric), the kernel path, the peers; wall time is the whole pass."
    echo
    storm_table "${srows[@]}"
  fi
  if [ -n "$MEM_ROWS" ]; then
    echo
    echo "Memory per transfer while every transfer moves data: (peak - at rest) / transfers,"
    echo "median (min-max) of $REPEAT passes per server (method in bench/tftp/README.md):"
    echo
    memory_table
  fi
} | tee "$RESULTS/table.md"
