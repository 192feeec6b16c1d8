#!/usr/bin/env bash
# TFTP benchmark: Bootfabric against tftpd-hpa and dnsmasq's TFTP, one after the other in the
# same run, with atftp as the client (it speaks blksize and windowsize; servers that do not
# know windowsize leave it out of their OACK and atftp falls back to lock-step).
#
# For each row (file size, blksize, windowsize, concurrent clients) and server it prints:
#   - failed transfers (atftp exit status, or bytes that differ from the source);
#   - throughput: file bytes delivered to all clients / wall time;
#   - the server's CPU time per GiB served, from a cgroup holding the server and everything
#     it forks (tftpd-hpa forks per transfer);
# then Bootfabric's ratios to each peer. Every client repeats its transfer until the row has
# moved at least MIN_BYTES, so that short rows still give CPU figures above the tick.
#
# Everything runs in two network namespaces this script creates (server: fabric0 10.77.0.1/24,
# client: cli0 10.77.0.2/24, a veth pair born inside them) and removes on exit, also on
# failure; processes are killed by PID.
#
# Usage: bench/tftp/run.sh          (as root; `cargo xtask setup` installs the peers)
# Knobs: SIZES="1 32" (MiB) BLKSIZES="512 1468 8192" WINDOWS="1 8 32" CLIENTS="1 16 64"
#        SERVERS="bootfabric tftpd-hpa dnsmasq" MIN_BYTES=67108864 MTU=1500
#        BOOTFABRIC_BIN=target/release/bootfabric KEEP=1 (keep the work folder)
#        ROWS="32:8192:1:64 ..." (size:blksize:window:clients, replaces the matrix)
#        BOOTFABRIC_TFTP_MTU=$MTU (tftp.mtu for Bootfabric; 9000 lets it send 8192-byte
#        blocks that the IP layer fragments, as the peers do on a 1500 link)
#        PIN=1 (server on CPU 0, clients on the others; 0 lets the scheduler place them)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BOOTFABRIC_BIN:-$ROOT/target/release/bootfabric}
SIZES=${SIZES:-"1 32"}
BLKSIZES=${BLKSIZES:-"512 1468 8192"}
WINDOWS=${WINDOWS:-"1 8 32"}
CLIENTS=${CLIENTS:-"1 16 64"}
SERVERS=${SERVERS:-"bootfabric tftpd-hpa dnsmasq"}
MIN_BYTES=${MIN_BYTES:-67108864}
MTU=${MTU:-1500}
BF_MTU=${BOOTFABRIC_TFTP_MTU:-$MTU}
PIN=${PIN:-1}
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
for p in atftp in.tftpd dnsmasq ip ss cmp timeout; do
  command -v "$p" >/dev/null || { echo "$p is missing: run cargo xtask setup" >&2; exit 2; }
done
for s in $SERVERS; do
  case $s in bootfabric | tftpd-hpa | dnsmasq) ;; *) echo "unknown server $s" >&2; exit 2 ;; esac
done
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo xtask build --release >/dev/null)
fi

ID=bft-$$
SRV=$ID-srv
CLI=$ID-cli
# Files and downloads live in memory: the benchmark measures servers, not disks.
WORK=$(mktemp -d /dev/shm/bootfabric-tftp-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
# shellcheck source=../lib.sh
. "$ROOT/bench/lib.sh"

stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; cgroup_kill; }
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

# The server runs in a cgroup of its own: its CPU time then includes every process it forks
# (tftpd-hpa forks a child per transfer and does not wait for them, so /proc/<pid>/stat's
# children's time misses them).
cgroup_setup
lab_up "$MTU"

mkdir -p "$WORK/root" "$WORK/out"
for size in $SIZES; do
  head -c $((size * 1048576 + 123)) /dev/urandom >"$WORK/root/f$size.bin"
done
chmod 644 "$WORK/root"/*

wait_listening() {
  for _ in $(seq 1 300); do
    if ip netns exec "$SRV" ss -ulnH 'sport = :69' 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 exited:" >&2; tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not start listening within 30 s" >&2; tail -20 "$WORK/$1.log" >&2; return 1
}


start_server() {
  local name=$1
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
enabled = false
[tftp]
root = "$WORK/root"
transfer_ports = "50000-50999"
mtu = $BF_MTU
# Every client runs from one address: the per-client caps are opened to the global ones.
max_transfers_per_client = 1000
requests_per_second_per_client = 5000
TOML
      "${IN_CGROUP[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" "$BIN" serve --config "$WORK/bootfabric.toml" 2>"$WORK/bootfabric.log" &
      ;;
    tftpd-hpa)
      # -L: stay in the foreground and listen; it forks a child per transfer.
      "${IN_CGROUP[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" in.tftpd -L -u root -a 10.77.0.1:69 -s "$WORK/root" \
        >"$WORK/tftpd-hpa.log" 2>&1 &
      ;;
    dnsmasq)
      "${IN_CGROUP[@]}" ip netns exec "$SRV" "${SERVER_CPUS[@]}" dnsmasq --no-daemon --port=0 --conf-file=/dev/null \
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


# One row against the running server: CLIENTS_N clients at once, each fetching the file REPS
# times in a row. Sets FAILED, MBPS and CPU_PER_GIB.
row() {
  local size=$1 blk=$2 win=$3 n=$4 reps=$5 opts t0 t1 c0 c1 bytes
  opts="--option 'blksize $blk'"
  [ "$win" -gt 1 ] && opts="$opts --option 'windowsize $win'"
  rm -f "$WORK/out"/*
  cat >"$WORK/clients.sh" <<SH
#!/bin/bash
for i in \$(seq 1 $n); do
  (
    for r in \$(seq 1 $reps); do
      out=$WORK/out/c\$i
      if timeout 300 atftp $opts -g -r f$size.bin -l \$out 10.77.0.1 >/dev/null 2>&1 \
          && cmp -s \$out $WORK/root/f$size.bin; then echo ok; else echo FAIL; fi
      rm -f \$out
    done
  ) >$WORK/out/result\$i &
done
wait
SH
  chmod +x "$WORK/clients.sh"
  c0=$(cg_usec)
  t0=$(date +%s%N)
  ip netns exec "$CLI" "${CLIENT_CPUS[@]}" "$WORK/clients.sh"
  t1=$(date +%s%N)
  c1=$(cg_usec)
  FAILED=$(cat "$WORK/out"/result* | grep -c FAIL || true)
  local done_n
  done_n=$(cat "$WORK/out"/result* | grep -c ok || true)
  bytes=$(( done_n * (size * 1048576 + 123) ))
  MBPS=$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", b / 1048576 / (ns / 1e9) }')
  CPU_PER_GIB=$(awk -v t=$((c1 - c0)) -v b="$bytes" \
    'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", t / 1e6 / (b / 1073741824) }')
}

REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "bootfabric $BIN (tree $REV, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M')), tftpd-hpa $(in.tftpd -V 2>&1 | awk '{print $2; exit}'), $(dnsmasq -v | head -1 | awk '{print $1, $3}'), atftp client"
echo "$(nproc) cores, veth MTU $MTU, Bootfabric tftp.mtu $BF_MTU, pinned: $PIN, at least $((MIN_BYTES / 1048576)) MiB per row"
echo

if [ -n "${ROWS:-}" ]; then
  MATRIX=$ROWS
else
  MATRIX=""
  for size in $SIZES; do for blk in $BLKSIZES; do for win in $WINDOWS; do for n in $CLIENTS; do
    MATRIX="$MATRIX $size:$blk:$win:$n"
  done; done; done; done
fi

declare -A R
for server in $SERVERS; do
  start_server "$server"
  for spec in $MATRIX; do
    IFS=: read -r size blk win n <<<"$spec"
    reps=$(( (MIN_BYTES + size * 1048576 * n - 1) / (size * 1048576 * n) ))
    row "$size" "$blk" "$win" "$n" "$reps"
    R[$server,$spec]="$FAILED $MBPS $CPU_PER_GIB"
    printf '%-10s %3d MiB blksize %5d window %2d clients %2d x%-3d: %3d failed, %8s MiB/s, %6s CPU s/GiB\n' \
      "$server" "$size" "$blk" "$win" "$n" "$reps" "$FAILED" "$MBPS" "$CPU_PER_GIB"
  done
  stop_server
done

echo
printf '| size | blksize | window | clients |'
for s in $SERVERS; do printf ' %s MiB/s | %s CPU s/GiB |' "$s" "$s"; done
for s in $SERVERS; do [ "$s" = bootfabric ] || printf ' MiB/s ratio vs %s | CPU ratio vs %s |' "$s" "$s"; done
echo ' failed |'
printf '|---|---|---|---|'
for s in $SERVERS; do printf -- '---|---|'; done
for s in $SERVERS; do [ "$s" = bootfabric ] || printf -- '---|---|'; done
echo '---|'
for spec in $MATRIX; do
  IFS=: read -r size blk win n <<<"$spec"
  printf '| %s MiB | %s | %s | %s |' "$size" "$blk" "$win" "$n"
  failed=0
  for s in $SERVERS; do
    read -r f m c <<<"${R[$s,$spec]}"
    failed=$((failed + f))
    printf ' %s | %s |' "$m" "$c"
  done
  if [[ " $SERVERS " == *" bootfabric "* ]]; then
    read -r _ bm bc <<<"${R[bootfabric,$spec]}"
    for s in $SERVERS; do
      [ "$s" = bootfabric ] && continue
      read -r _ m c <<<"${R[$s,$spec]}"
      awk -v a="$bm" -v b="$m" -v x="$bc" -v y="$c" 'BEGIN {
        printf " %s | %s |", (b > 0 ? sprintf("%.2f", a / b) : "n/a"),
          ((y + 0) > 0 && x != "n/a" ? sprintf("%.2f", x / y) : "n/a") }'
    done
  fi
  echo " $failed |"
done
