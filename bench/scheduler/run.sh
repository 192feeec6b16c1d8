#!/usr/bin/env bash
# Fleet simulation: the real scheduler (boot-userspace/src/scheduler) against a model of the
# fabric, next to "reboot all at once" and fixed batch sizes, for 1,000 and 10,000 hosts.
# Pure computation: no network, no root. Prints makespan, its ratio to the lower bound
# (total bytes / capacity + the shortest boot), booted hosts and the peak demand over
# capacity. Model and method: bench/scheduler/README.md.
#
# Usage: bench/scheduler/run.sh [HOSTS...]      Knob: SIM_LOOKAHEAD=120
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release --quiet -p bootfabric-lab --bin fleet_sim
"$ROOT/target/release/fleet_sim" "$@"
