#!/usr/bin/env bash
# Settings sweep: one ringgate build under several [server] settings side by
# side with nginx, in one run, for tuning knobs such as io_uring_wait_batch.
#
#   perf/sweep.sh [--wrk] RATE REPS SECONDS NAME="KEY = VALUE\nKEY = VALUE" ...
#
# Every NAME is a ringgate worker with those lines added to its [server]
# table ("" for the defaults); nginx is always the first target. The
# origin's, nginx's and ringgate's configs are perf/compare.sh's
# (perf/configs.sh), and so is the layout: each proxy one worker on core 0, the origin (nginx, small body) and the load on core 1;
# targets alternate rep by rep. Each rep prints one line per target:
# perf/loadgen's figures at RATE requests/s over 64 connections (or, with
# --wrk, wrk -c50's saturated requests/s; RATE is then ignored) and the
# target's CPU µs per request (utime+stime over requests). The last lines
# give medians and, per target, the median over reps of its p99, p99.9 and
# CPU ratio to nginx's in the same rep.
#
# Assumes nginx, wrk, taskset and a release build (cargo build --release;
# cd perf/loadgen && cargo build --release).
set -euo pipefail

MODE=loadgen
if [ "${1:-}" = --wrk ]; then MODE=wrk; shift; fi
[ $# -ge 4 ] || { sed -n 2,19p "$0" >&2; exit 2; }
RATE=$1 REPS=$2 DUR=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/perf/configs.sh"
RINGGATE="$ROOT/target/release/ringgate"
LOADGEN="$ROOT/perf/loadgen/target/release/ringgate-loadgen"
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$W" 2>/dev/null || true; rm -rf "$W"' EXIT
ORIGIN=19180 P_NGINX=19181 port=19190

mkdir -p "$W/www" "$W/logs"; printf 'hello world\n' > "$W/www/small"; chmod -R a+rX "$W"
origin_conf "$W" $ORIGIN > "$W/origin.conf"
nginx_proxy_conf "$W" $P_NGINX $ORIGIN > "$W/nginx.conf"
taskset -c 1 nginx -c "$W/origin.conf" &
taskset -c 0 nginx -c "$W/nginx.conf" &
targets="nginx:$P_NGINX"
for spec in "$@"; do
  name=${spec%%=*}; lines=${spec#*=}
  # awk turns the \n of NAME="A\nB" into line breaks.
  ringgate_conf $port $ORIGIN |
    awk -v lines="$lines" '{ print } $0 == "[server]" { print lines }' > "$W/$name.toml"
  taskset -c 0 "$RINGGATE" run -c "$W/$name.toml" 2> "$W/logs/$name.err" &
  targets="$targets $name:$port"; port=$((port + 1))
done
for t in $targets; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${t#*:}") 2>/dev/null && break; sleep 0.1; done
done

pids_of() {
  if [ "$1" = nginx ]; then nginx_workers "$W/nginx.conf"; else pgrep -f "$W/$1.toml"; fi
}
ticks() { for p in $(pids_of "$1"); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s + 0}'; }

for rep in $(seq "$REPS"); do
  for t in $targets; do
    name=${t%%:*}; url="http://127.0.0.1:${t#*:}/small"
    before=$(ticks "$name")
    if [ "$MODE" = wrk ]; then
      out=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}s" "$url")
      requests=$(echo "$out" | awk '/requests in/ {print $1}')
      line="requests=$requests rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    else
      line=$(taskset -c 1 "$LOADGEN" "$url" "$RATE" "$DUR" 64)
      requests=$(echo "$line" | sed 's/.*requests=\([0-9]*\).*/\1/')
    fi
    after=$(ticks "$name")
    cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    echo "$name $rep $line cpu_us=$cpu"
  done
done | tee "$W/lines"
python3 - "$W/lines" <<'PY'
import collections, statistics as st, sys
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    p = l.split()
    rows[p[0]].append(dict(kv.split("=") for kv in p[2:]))
keys = [k for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "cpu_us") if k in rows["nginx"][0]]
print("\nmedians:")
for t, v in rows.items():
    print(f"  {t:12}", " ".join(f"{k}={st.median(float(x[k]) for x in v):.3f}" for k in keys))
print("median over reps of the ratio to nginx:")
for t, v in list(rows.items())[1:]:
    ratios = {k: st.median(float(a[k]) / max(float(b[k]), 1e-9) for a, b in zip(v, rows["nginx"]))
              for k in ("p99_ms", "p999_ms", "cpu_us") if k in keys}
    print(f"  {t:12}", " ".join(f"{k}={r:.2f}" for k, r in ratios.items()))
PY
