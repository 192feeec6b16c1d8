#!/usr/bin/env bash
# Fleet simulation: the real scheduler (boot-userspace/src/services/reboot) against a model of the
# fabric, next to "reboot all at once" and sweeps of fixed-batch strategies (rolling batches,
# waves, a batch on a timer; the best of each picked with hindsight), for 1,000 and 10,000
# hosts. Pure computation: no network, no root, deterministic (seeded): the figures do not
# depend on the machine's load, so the run needs no quiet machine (only the "wall" column of
# raw.txt does). Prints makespan, its ratio to the lower bound (total bytes / capacity + the
# shortest boot), booted hosts and the peak demand over capacity. Model and method:
# bench/scheduler/README.md.
#
# Usage: bench/scheduler/run.sh [HOSTS...]      (default: 1000 10000)
#        bench/scheduler/run.sh --racks R [--per-rack H]   (H default 100): R racks of H hosts,
#        each rack with its own link; the bound is the slowest rack's (rack bytes / rack
#        capacity + the shortest boot); the peak is per rack.
# Knobs: SIM_LOOKAHEAD=120 (scheduler's lookahead, s), SIM_TIMER_PERIOD=60 (s between the
#        timer strategy's batches), RESULTS_DIR (where the results folder goes).
# Results: bench/results/scheduler/<stamp>-<commit>/{raw.txt,table.md,meta.txt}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cargo build --release --quiet -p bootfabric-lab --bin fleet_sim
SIM_LOOKAHEAD=${SIM_LOOKAHEAD:-120}
SIM_TIMER_PERIOD=${SIM_TIMER_PERIOD:-60}
export SIM_LOOKAHEAD SIM_TIMER_PERIOD
results_open scheduler SIM_LOOKAHEAD SIM_TIMER_PERIOD
results_note "args: ${*:-1000 10000}"
results_note "timing: none of table.md depends on timing (a seeded simulation stepped every 0.25 s of model time); raw.txt's last column is wall time"
"$ROOT/target/release/fleet_sim" --table "$RESULTS/table.md" "$@"
echo
cat "$RESULTS/table.md"
