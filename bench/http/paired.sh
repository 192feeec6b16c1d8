#!/usr/bin/env bash
# Paired ratios of a kept HTTP run: `bench/http/paired.sh bench/results/http/<run>/raw.txt`.
#
# Within every row, mode and repeat the servers run one after the other, so they meet the
# same machine; across repeats the machine drifts (in one run `range:32` unpinned went from about
# 2300 to about 1800 MiB/s for both servers between the third and fourth repeat). The table's
# ratio is the ratio of two medians taken over different repeats, so drift can move it either
# way; the ratio within each repeat cannot be moved by drift between repeats. This prints,
# per row, Bootfabric's rate over nginx's within each repeat (the median, the range, and in
# how many repeats it was at or above), and the same for CPU per unit of work (lower is
# better). run.sh appends its output to the run's table.md; for a kept run made before that,
# run it on the run's raw.txt.
#
# A run with SERVERS="bootfabric nginx nginx2" also ran nginx a second time in every
# row, mode and repeat: two more columns give nginx2's rate over nginx's within each repeat,
# the same server against itself, so how far apart the same work lands on this host at that
# moment (a ratio of Bootfabric's inside that spread is not a difference this run can show),
# and three more Bootfabric's rate over nginx2's: a second pairing against an independent
# measurement of the same server, so one slow or fast nginx run does not decide the row.
set -euo pipefail
raw=${1:?usage: paired.sh raw.txt (or any file of run.sh result lines)}
awk '
  # result <rep> pin=<p> <server> <what> <conns> conns: <rate> <unit>, slowest ..., CPU <cpu> <cunit>; ...
  $1 == "result" && $7 == "conns:" {
    rep = $2; pin = substr($3, 5); server = $4; row = $5 ":" $6
    cpu = "n/a"
    for (i = 8; i < NF; i++) if ($i == "CPU") { cpu = $(i + 1); break }
    key = pin SUBSEP row
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    rate[server, key, rep] = $8; cost[server, key, rep] = cpu; unit[key] = $9
    if (server == "nginx2") control = 1
    reps[key] = (rep > reps[key]) ? rep : reps[key]
  }
  function median(a, k,    i, j, t) {
    for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
  }
  function spread(a, k,    i, lo, hi) {
    if (k == 0) return "n/a"
    lo = a[1]; hi = a[1]; for (i = 2; i <= k; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
    return sprintf("%.2f–%.2f", lo, hi)
  }
  function spread_median(a, k) { return (k == 0) ? "n/a" : sprintf("%.2f", median(a, k)) }
  END {
    if (control) {
      print "| pin | request | connections | repeats | rate ratio, median of repeats | range | repeats at or above nginx | CPU ratio, median of repeats | range | nginx again over nginx: rate, median | range | CPU, median | range | Bootfabric over nginx again: rate, median | range | repeats at or above |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    } else {
      print "| pin | request | connections | repeats | rate ratio, median of repeats | range | repeats at or above nginx | CPU ratio, median of repeats | range |"
      print "|---|---|---|---|---|---|---|---|---|"
    }
    for (o = 1; o <= n; o++) {
      key = order[o]; split(key, p, SUBSEP); split(p[2], w, ":")
      kr = 0; kc = 0; ka = 0; kac = 0; kb = 0; above = 0; above2 = 0
      for (r = 1; r <= reps[key]; r++) {
        b = rate["bootfabric", key, r]; g = rate["nginx", key, r]
        if (b != "" && g + 0 > 0) { rr[++kr] = b / g; if (b + 0 >= g + 0) above++ }
        bc = cost["bootfabric", key, r]; gc = cost["nginx", key, r]
        if (bc != "" && bc != "n/a" && gc != "n/a" && gc + 0 > 0) cc[++kc] = bc / gc
        a = rate["nginx2", key, r]
        if (a != "" && g + 0 > 0) ar[++ka] = a / g
        if (a != "" && b != "" && a + 0 > 0) { br[++kb] = b / a; if (b + 0 >= a + 0) above2++ }
        ac = cost["nginx2", key, r]
        if (ac != "" && ac != "n/a" && gc != "n/a" && gc + 0 > 0) acc[++kac] = ac / gc
      }
      if (kr == 0) continue
      rmin = rr[1]; rmax = rr[1]; for (i = 1; i <= kr; i++) { if (rr[i] < rmin) rmin = rr[i]; if (rr[i] > rmax) rmax = rr[i] }
      cm = "n/a"; crange = "n/a"
      if (kc > 0) {
        cmin = cc[1]; cmax = cc[1]; for (i = 1; i <= kc; i++) { if (cc[i] < cmin) cmin = cc[i]; if (cc[i] > cmax) cmax = cc[i] }
        crange = sprintf("%.2f–%.2f", cmin, cmax); cm = sprintf("%.2f", median(cc, kc))
      }
      printf "| %s | %s | %s | %d | %.2f | %.2f–%.2f | %d of %d | %s | %s |",
        (p[1] == 1 ? "1 core each" : "none"), w[1], w[2], kr, median(rr, kr), rmin, rmax, above, kr, cm, crange
      if (control) printf " %s | %s | %s | %s | %s | %s | %d of %d |", spread_median(ar, ka), spread(ar, ka), spread_median(acc, kac), spread(acc, kac), spread_median(br, kb), spread(br, kb), above2, kb
      printf "\n"
      delete rr; delete cc; delete ar; delete acc; delete br
    }
  }' "$raw"
