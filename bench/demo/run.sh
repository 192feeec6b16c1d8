#!/usr/bin/env bash
# The boot-time budget of docs/demo.md: the 4-machine demo (`cargo xtask demo`: QEMU machines as
# libvirt domains, Redfish BMCs from sushy-emulator, rebooted by `bootfabric reboot --all`)
# run once per daemon variant, and each machine's booted time and the makespan taken from the
# demo's report. Variants: neither of iPXE's waits removed (router advertisements off,
# no-pxedhcp off), router advertisements only, both (the default). Also the phase table of the
# first UEFI PXE machine of the default variant's first run, from its ledger.
# Everything runs in the namespaces the demo creates and removes; nothing touches the host's
# interfaces. Boot times depend on the CPU (TCG here): publish only through the quiet
# protocol.
#
# Usage: bench/demo/run.sh      (as root)
# Knobs: HOSTS=4 (machines per run), REPEAT=1 (runs per variant), RESULTS_DIR.
# Results: bench/results/demo/<stamp>-<commit>/{raw.txt,table.md,meta.txt,<variant>-<run>.txt}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, XDP, VMs)" >&2; exit 2; }
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
HOSTS=${HOSTS:-4}
REPEAT=${REPEAT:-1}
# Built before the run, so that the demo's own build step finds nothing to do.
cargo xtask build --release >/dev/null
cargo build --quiet --package xtask

results_open demo HOSTS REPEAT
results_note "qemu: $(qemu-system-x86_64 --version | head -1)"
results_note "libvirt: $(libvirtd --version 2>/dev/null | head -1)"
results_note "method: one 'cargo xtask demo --no-wait' per variant and run; booted times and the makespan are the report's (seconds since the reboot run started); variants in this order, not interleaved"

# Variant name, its `cargo xtask demo` flags, and the row label in table.md.
VARIANTS=(
  "neither|--router-advertisements off --ipxe-no-pxedhcp false|neither"
  "ra|--router-advertisements auto --ipxe-no-pxedhcp false|router advertisements"
  "ra-nopxedhcp|--router-advertisements auto --ipxe-no-pxedhcp true|router advertisements + no-pxedhcp (default)"
)

# booted_cells <output>: "BIOS | UEFI PXE | UEFI iPXE | UEFI HTTP | makespan" cells of one run, booted
# times in node order ("-" for a machine that did not boot).
booted_cells() {
  awk '
    # The rack listing: "    node01  52:54:00:..  10.77.0.x  bios-ipxe"
    /^    node[0-9]+  / && NF == 4 { fw[$1] = $4; order[++n] = $1 }
    # The progress lines: "    15.2 s  node01               booted"
    $2 == "s" && $3 ~ /^node[0-9]+$/ && $4 == "booted" { at[$3] = $1 }
    /^  makespan / { makespan = $2 }
    END {
      split("bios-ipxe uefi-pxe uefi-ipxe uefi-http", kinds, " ")
      line = ""
      for (k = 1; k <= 4; k++) {
        cell = ""
        for (i = 1; i <= n; i++) {
          h = order[i]
          if (fw[h] != kinds[k]) continue
          t = (h in at) ? at[h] " s" : "-"
          cell = cell == "" ? t : cell ", " t
        }
        line = line (cell == "" ? "-" : cell) " | "
      }
      printf "%s%s\n", line, (makespan == "" ? "-" : makespan " s")
    }' "$1"
}

# phase_rows <output>: the "Where the seconds go" rows for the first UEFI PXE machine, from
# its reset acceptance (report) and its ledger (seconds after its reset).
phase_rows() {
  awk '
    /^    node[0-9]+  / && NF == 4 && $4 == "uefi-pxe" && host == "" { host = $1 }
    # Report row: HOST RACK RESET ACCEPT ...
    host != "" && $1 == host && NF >= 11 && $3 ~ /^[0-9.]+$/ { accept = $4 - $3 }
    # Ledger header of that machine: "    node02 (uefi-pxe)"
    /^    node[0-9]+ \(/ { inside = ($1 == host) ; next }
    inside && $2 == "s" {
      t = $1; p = $3
      if (p == "dhcp_offer" && first_offer == "") first_offer = t
      if (p == "tftp_sent" && tftp == "") tftp = t
      if (p == "ipxe_script" && script == "") script = t
      if (p == "http_sent") last_http = t
      if (p == "dhcp_offer" && last_http != "" && os_offer == "") os_offer = t
      if (p == "booted") booted = t
    }
    /^==> / && inside { inside = 0 }
    END {
      if (host == "" || booted == "" || os_offer == "" || script == "" || tftp == "") {
        print "phase table: the ledger of the UEFI PXE machine lacks an event" > "/dev/stderr"
        exit 1
      }
      printf "| override + reset | `bmc_reset` | %.1f | from the run'"'"'s start: the override set over Redfish, the reset accepted (sushy starts the domain) |\n", accept
      printf "| firmware POST | → first `dhcp_offer` | %.1f | OVMF initialises and starts its PXE client |\n", first_offer
      printf "| firmware DHCP + TFTP | `dhcp_offer`, `dhcp_ack`, `tftp_sent ipxe.efi` | %.1f | OVMF'"'"'s DHCP (the kernel answers it via XDP), its size probe, the download of `ipxe.efi` |\n", tftp - first_offer
      printf "| iPXE start + DHCP | `dhcp_offer`, `dhcp_ack`, `ipxe_script` | %.1f | iPXE initialises, asks DHCP again as user class iPXE, fetches its script (after the admission gate, if it held it) |\n", script - tftp
      printf "| kernel, initrd | `http_sent` ×2 | %.1f | the kernel and initramfs over HTTP |\n", last_http - script
      printf "| kernel boot | → `dhcp_offer` (the OS) | %.1f | Linux boots, the init loads virtio-net and runs udhcpc |\n", os_offer - last_http
      printf "| callback | `booted` | %.1f | the init'"'"'s `POST /booted` |\n", booted - os_offer
      printf "machine: %s\n", host > "/dev/stderr"
    }' "$1"
}

rows=()
phases=""
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name flags label <<< "$v"
  for run in $(seq 1 "$REPEAT"); do
    out="$RESULTS/$name-$run.txt"
    echo "==> variant $name, run $run: cargo xtask demo --no-wait --hosts $HOSTS $flags"
    # shellcheck disable=SC2086 # the flags are words
    if ! cargo xtask demo --no-wait --hosts "$HOSTS" $flags > "$out" 2>&1; then
      echo "    the demo failed (kept in $out); its row shows what booted"
    fi
    cat "$out"
    row_label=$label
    [ "$REPEAT" = 1 ] || row_label="$label (run $run)"
    rows+=("| $row_label | $(booted_cells "$out") |")
    if [ "$name" = ra-nopxedhcp ] && [ "$run" = 1 ]; then
      phases=$(phase_rows "$out") || phases=""
    fi
  done
done

{
  echo "| | BIOS booted | UEFI PXE booted | UEFI iPXE booted | UEFI HTTP booted | makespan |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [ -n "$phases" ]; then
    echo
    echo "| phase | ledger events | seconds | what happens |"
    echo "|---|---|---|---|"
    echo "$phases"
  fi
} > "$RESULTS/table.md"
echo
cat "$RESULTS/table.md"
