# Shared by the benchmark scripts (sourced, not run): stopping processes by PID, a cgroup
# that accounts a server's CPU with everything it forks, and the two-namespace lab.
# The sourcing script sets ID, SRV and CLI first and calls lab_down from its EXIT trap.

NETNS_MADE=""
CG=""

# Stops one process we started, by PID: TERM, up to 5 s, then KILL.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Kills, by PID, whatever is left in the server cgroup (a forked worker that outlived its
# parent).
cgroup_kill() {
  [ -n "$CG" ] || return 0
  for pid in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
}

# Makes the cgroup $ID (v1 cpuacct, else v2), defines cg_usec (its CPU time so far, in
# microseconds) and IN_CGROUP, a command prefix that moves the shell into it and then becomes
# the command (so $! stays the server's PID).
cgroup_setup() {
  if [ -d /sys/fs/cgroup/cpuacct ]; then
    CG=/sys/fs/cgroup/cpuacct/$ID
    mkdir "$CG"
    cg_usec() { echo $(($(cat "$CG/cpuacct.usage") / 1000)); }
  elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/$ID
    mkdir "$CG"
    cg_usec() { awk '/^usage_usec/ { print $2 }' "$CG/cpu.stat"; }
  else
    echo "no cgroup (v1 cpuacct or v2) to account the servers' CPU in" >&2
    exit 2
  fi
  IN_CGROUP=(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG")
}

# Two namespaces joined by a veth pair born inside them: fabric0 10.77.0.1/24 in $SRV, cli0
# 10.77.0.2/24 in $CLI, both with MTU $1. Nothing touches the host's interfaces.
lab_up() {
  local mtu=$1
  NETNS_MADE=1
  ip netns add "$SRV"
  ip netns add "$CLI"
  ip link add fabric0 netns "$SRV" type veth peer name cli0 netns "$CLI"
  ip -n "$SRV" addr add 10.77.0.1/24 dev fabric0
  ip -n "$CLI" addr add 10.77.0.2/24 dev cli0
  for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
  ip -n "$SRV" link set fabric0 mtu "$mtu" up
  ip -n "$CLI" link set cli0 mtu "$mtu" up
}

# Removes the lab: anything still inside the namespaces was started by the script and is
# killed by PID first; then the namespaces and the cgroup go.
lab_down() {
  if [ -n "$NETNS_MADE" ]; then
    for ns in "$SRV" "$CLI"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
  fi
  cgroup_kill
  if [ -n "$CG" ]; then
    sleep 0.2
    rmdir "$CG" 2>/dev/null || true
  fi
}

# Results. Every run keeps what it printed, the table docs/benchmarks.md quotes and what it ran on in
# bench/results/<bench>/<UTC date>-<commit>/: raw.txt (everything the script printed, stderr
# included), table.md (written by the script) and meta.txt (commit, whether the tree had
# uncommitted changes, date, kernel, CPU, memory, the command and its knobs, peer versions
# added with results_note). A figure without these files is not a result.
# RESULTS_DIR=<folder> puts runs elsewhere (smoke runs that are not to be kept).
#
# results_open <bench> <knob names...>: makes the folder, writes meta.txt and sends the rest
# of the script's output through tee into raw.txt. Sets RESULTS.
results_open() {
  local bench=$1
  shift
  local commit short stamp dirty
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  short=${commit:0:12}
  stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
  dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
  RESULTS=${RESULTS_DIR:-$ROOT/bench/results/$bench}/$stamp-$short
  mkdir -p "$RESULTS"
  {
    echo "bench: $bench"
    echo "commit: $commit"
    if [ "$dirty" = 0 ]; then
      echo "tree: clean"
    else
      echo "tree: $dirty uncommitted file(s):"
      git -C "$ROOT" status --porcelain --untracked-files=no | sed 's/^/  /'
    fi
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1))," \
      "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "command: $0"
    local k
    for k in "$@"; do echo "knob: $k=${!k-}"; done
  } > "$RESULTS/meta.txt"
  exec > >(tee "$RESULTS/raw.txt") 2>&1
  echo "results: $RESULTS"
}

# results_note <line>: adds a line to meta.txt (peer versions, the binary's build, a caveat).
results_note() {
  echo "$*" >> "$RESULTS/meta.txt"
}
