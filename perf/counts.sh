#!/usr/bin/env bash
# Kernel events per request for two ringgate builds side by side, on small
# GETs: system calls, context switches, io_uring submissions and
# completions, counted on each build's threads with perf stat.
#
#   perf/counts.sh NEW_BINARY BASE_BINARY SECONDS wrk|RATE
#
# Both run perf/compare.sh's ringgate config (perf/configs.sh) on core 0;
# the origin (nginx, small body) and the load on core 1. The load runs
# against NEW, BASE, NEW, BASE (wrk -t1 -c50, or perf/loadgen at RATE
# requests/s over 64 connections) and each run prints one line: requests,
# then each event's count per request. Assumes nginx, wrk, taskset,
# perf (linux-perf) and perf/loadgen built.
set -euo pipefail

[ $# -eq 4 ] || { sed -n 2,13p "$0" >&2; exit 2; }
NEW=$1 BASE=$2 DUR=$3 LOAD=$4
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/perf/configs.sh"
LOADGEN="$ROOT/perf/loadgen/target/release/ringgate-loadgen"
EVENTS='raw_syscalls:sys_enter,sched:sched_switch,io_uring:io_uring_submit_req,io_uring:io_uring_complete'
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$W" 2>/dev/null || true; rm -rf "$W"' EXIT
ORIGIN=19480

start_two_builds "$W" "$NEW" "$BASE" $ORIGIN

for t in new:19490 base:19491 new:19490 base:19491; do
  name=${t%%:*}; url="http://127.0.0.1:${t#*:}/small"
  pid=$(pgrep -f "$W/$name.toml")
  tids=$(ls "/proc/$pid/task" | paste -sd,)
  perf stat -x, -t "$tids" -e "$EVENTS" -o "$W/stat" &
  stat=$!
  # perf stat attaches to the threads before the load starts.
  for _ in $(seq 100); do [ -s "$W/stat" ] && break; sleep 0.05; done
  if [ "$LOAD" = wrk ]; then
    reqs=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}s" "$url" | awk '/requests in/ {print $1}')
  else
    out=$(taskset -c 1 "$LOADGEN" "$url" "$LOAD" "$DUR" 64)
    reqs=$(grep -o 'requests=[0-9]*' <<< "$out" | cut -d= -f2)
  fi
  kill -INT $stat; wait $stat || true
  echo "$name requests=$reqs $(awk -F, -v r="$reqs" '/^[0-9]/ {printf "%s=%.3f ", $3, $1 / r}' "$W/stat")"
done
