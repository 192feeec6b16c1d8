#!/usr/bin/env python3
"""Figures read back out of bench/http runs' raw.txt that the table does not give.

Usage: bench/http/raw-stats.py idle <run folder>...
       bench/http/raw-stats.py collapses <run folder>...
       bench/http/raw-stats.py memory <run folder>...

idle: for each unpinned row, nginx's CPU per GiB against the cores' idle seconds in the run
(the `link:` line's "cores idle", from 008551b on), fitted by least squares over nginx's runs
(nginx and nginx2 together), and each server's CPU per GiB over that line at its own idle
time. This kernel charges receive work to the task it interrupts (no
CONFIG_IRQ_TIME_ACCOUNTING), so unpinned a server is charged more of it the busier the
cores are; the ratio to the line compares the servers at the same idle time.

collapses: the runs whose link carried more than COLLAPSE packets per MiB (21-25 in the
whole-file runs at 256 connections that do not collapse) with packets out of order at the client: their
segments shrank after real losses. Prints each run's counters, then each server's median
rate with and without them.

memory: each run's host TCP memory pressure (the length of the episodes that ended in it),
the client's drops for memory and the host's TCP memory peak (from the runs that print
them), with its rate.

Only the standard library: it runs wherever the bench does.
"""

import re
import statistics
import sys
from pathlib import Path

COLLAPSE = 40.0

RUN = re.compile(r"run (\d+) pin=(\d) (\S+) (\S+)")
TCP = re.compile(r"tcp: (\S+) segments retransmitted, (\S+) DSACKs, (\S+) out of order at the client")
# Runs of 6a0af01 and 4a46438 printed the pressure per namespace (the kernel credits an
# episode to the namespace whose socket ended it, so only the sum means anything); later runs
# print the sum and the number of episodes.
PRESSURE_OLD = re.compile(
    r"under memory pressure (\S+) ms at the client, (\S+) ms at the server; (\S+) segments"
)
PRESSURE = re.compile(r"(\S+) episodes of host TCP memory pressure ended, (\S+) ms in all; (\S+) segments")
LINK = re.compile(r"link: ([\d.]+) packets sent and ([\d.]+) received per MiB")
IDLE = re.compile(r"cores idle ([\d.]+) s")
DROPS = re.compile(r"receive backlogs dropped (\d+) packets")
PEAK = re.compile(r"tcp memory: peak (\d+) MiB of the host's pressure mark (\d+) MiB")
RESULT = re.compile(r"result .*?([\d.]+) MiB/s.*?CPU ([\d.]+) s/GiB")


def runs(folder):
    """Every measurement of a run folder's raw.txt, as a dict."""
    out = []
    cur = None
    for line in (Path(folder) / "raw.txt").read_text().splitlines():
        m = RUN.match(line)
        if m:
            cur = {
                "folder": Path(folder).name,
                "repeat": int(m[1]),
                "pin": m[2],
                "server": m[3],
                "row": m[4],
            }
            continue
        if cur is None:
            continue
        if m := TCP.search(line):
            counts = [number(v) for v in m.groups()]
            if None not in counts:
                cur["retrans"], cur["dsacks"], cur["ooo"] = counts
        if m := PRESSURE_OLD.search(line):
            client, server, drops = (number(v) for v in m.groups())
            total = None if client is None or server is None else client + server
            cur["pressure"] = total, drops
        if m := PRESSURE.search(line):
            cur["pressure"] = number(m[2]), number(m[3])
        if m := LINK.search(line):
            cur["packets"] = float(m[1])
        if m := IDLE.search(line):
            cur["idle"] = float(m[1])
        if m := DROPS.search(line):
            cur["backlog_drops"] = int(m[1])
        if m := PEAK.search(line):
            cur["tcp_peak"] = f"{m[1]}/{m[2]}"
        if m := RESULT.match(line):
            cur["rate"], cur["cpu"] = float(m[1]), float(m[2])
            out.append(cur)
            cur = None
    return out


def number(text):
    """A counter's value, or None for the "-" of one that could not be read."""
    return int(text) if text.isdigit() else None


def collapsed(m):
    """Segments shrunk after real losses: many packets per MiB, and some out of order."""
    return m["packets"] > COLLAPSE and m["ooo"] > 0


def family(server):
    """nginx2 is nginx run again."""
    return "nginx" if server.startswith("nginx") else server


def idle(measurements):
    rows = sorted({(m["pin"], m["row"]) for m in measurements if "idle" in m})
    for pin, row in rows:
        ms = [m for m in measurements if (m["pin"], m["row"]) == (pin, row) and "idle" in m]
        ref = [m for m in ms if family(m["server"]) == "nginx"]
        if len(ref) < 3:
            continue
        x = [m["idle"] for m in ref]
        y = [m["cpu"] for m in ref]
        if len(set(x)) < 2:
            continue
        fit = statistics.linear_regression(x, y)
        corr = statistics.correlation(x, y)
        print(
            f"{row} pin={pin}: nginx CPU per GiB = {fit.intercept:.3f} "
            f"{fit.slope:+.4f} x idle s (correlation {corr:.2f}, {len(ref)} runs)"
        )
        for server in sorted({family(m["server"]) for m in ms}):
            mine = [m for m in ms if family(m["server"]) == server]
            over = [m["cpu"] / (fit.intercept + fit.slope * m["idle"]) for m in mine]
            print(
                f"  {server:<10} idle median {statistics.median(m['idle'] for m in mine):5.2f} s, "
                f"CPU median {statistics.median(m['cpu'] for m in mine):.2f} s/GiB, "
                f"over nginx's line at its idle: median {statistics.median(over):.2f} "
                f"({min(over):.2f}-{max(over):.2f})"
            )


def collapses(measurements):
    ms = [m for m in measurements if "packets" in m and "ooo" in m]
    for m in ms:
        if collapsed(m):
            print(
                f"{m['folder']} repeat {m['repeat']} pin={m['pin']} {m['row']} {m['server']}: "
                f"{m['rate']} MiB/s, {m['packets']} packets per MiB, {m['retrans']} retransmitted, "
                f"{m['dsacks']} DSACKs, {m['ooo']} out of order, backlog drops "
                f"{m.get('backlog_drops', '-')}, memory pressure ms and client memory drops "
                f"{'/'.join('-' if v is None else str(v) for v in m.get('pressure', ())) or '-'}, "
                f"TCP memory peak/mark MiB {m.get('tcp_peak', '-')}"
            )
    for pin, row in sorted({(m["pin"], m["row"]) for m in ms}):
        for server in sorted({family(m["server"]) for m in ms}):
            mine = [m for m in ms if (m["pin"], m["row"]) == (pin, row) and family(m["server"]) == server]
            if not mine:
                continue
            kept = [m["rate"] for m in mine if not collapsed(m)]
            without = f"{statistics.median(kept):.1f}" if kept else "- (every run collapsed)"
            print(
                f"{row} pin={pin} {server:<10} {len(mine)} runs, {len(mine) - len(kept)} collapsed; "
                f"median {statistics.median(m['rate'] for m in mine):.1f} MiB/s, without the "
                f"collapsed {without}"
            )


def memory(measurements):
    for m in measurements:
        if "pressure" not in m:
            continue
        ms, drops = ("-" if v is None else v for v in m["pressure"])
        packets = f"{m['packets']:6.2f}" if "packets" in m else "     -"
        print(
            f"{m['folder']} repeat {m['repeat']} pin={m['pin']} {m['row']} {m['server']:<10} "
            f"{m['rate']:7.1f} MiB/s, {packets} packets per MiB; host TCP memory pressure {ms} ms, "
            f"{drops} client drops; TCP memory peak/mark MiB {m.get('tcp_peak', '-')}"
        )


def main():
    reports = {"idle": idle, "collapses": collapses, "memory": memory}
    if len(sys.argv) < 3 or sys.argv[1] not in reports:
        sys.exit(__doc__)
    measurements = [m for folder in sys.argv[2:] for m in runs(folder)]
    reports[sys.argv[1]](measurements)


if __name__ == "__main__":
    main()
