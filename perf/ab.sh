#!/usr/bin/env bash
# Two ringgate builds side by side on small GETs, interleaved rep by rep:
# for changes too small for perf/compare.sh's full run.
#
#   perf/ab.sh NEW_BINARY BASE_BINARY REPS SECONDS wrk|RATE
#
# Both run perf/compare.sh's ringgate config (perf/configs.sh) on core 0;
# the origin (nginx, small body) and the load on core 1. Each rep runs the
# load against NEW, then BASE, and prints one line per build: requests,
# CPU µs per request of the build's process (utime+stime over requests,
# with the user and system split) and, with a RATE, perf/loadgen's
# percentiles at that many requests/s over 64 connections (with wrk:
# wrk -t1 -c50, saturated). Assumes nginx, wrk, taskset, bc and perf/loadgen
# built (cd perf/loadgen && cargo build --release).
set -euo pipefail

[ $# -eq 5 ] || { sed -n 2,14p "$0" >&2; exit 2; }
NEW=$1 BASE=$2 REPS=$3 DUR=$4 LOAD=$5
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/perf/configs.sh"
LOADGEN="$ROOT/perf/loadgen/target/release/ringgate-loadgen"
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$W" 2>/dev/null || true; rm -rf "$W"' EXIT
ORIGIN=19480

start_two_builds "$W" "$NEW" "$BASE" $ORIGIN

ticks() { awk '{print $14 + $15, $14, $15}' "/proc/$1/stat"; }
per_req() { echo "scale=2; $1 * 1000000 / $(getconf CLK_TCK) / $2" | bc; }

for rep in $(seq "$REPS"); do
  for t in new:19490 base:19491; do
    name=${t%%:*}; url="http://127.0.0.1:${t#*:}/small"
    pid=$(pgrep -f "$W/$name.toml")
    read -r b bu bs < <(ticks "$pid")
    if [ "$LOAD" = wrk ]; then
      reqs=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}s" "$url" | awk '/requests in/ {print $1}')
      pct=""
    else
      out=$(taskset -c 1 "$LOADGEN" "$url" "$LOAD" "$DUR" 64)
      reqs=$(grep -o 'requests=[0-9]*' <<< "$out" | cut -d= -f2)
      pct=$(grep -o 'p50_ms=[0-9.]* p90_ms=[0-9.]* p99_ms=[0-9.]* p999_ms=[0-9.]*' <<< "$out")
    fi
    read -r a au as < <(ticks "$pid")
    echo "$rep $name requests=$reqs cpu_us=$(per_req $((a - b)) "$reqs")" \
      "user_us=$(per_req $((au - bu)) "$reqs") sys_us=$(per_req $((as - bs)) "$reqs") $pct"
  done
done
