#!/usr/bin/env bash
# Rate-limit accuracy under sustained overload: how many requests a limit
# admits, against what it is configured to, for
#   one      one gateway, 2 workers (reconciliation across cores)
#   two      two gateways sharing one redis-server (cluster mode)
#   two-solo two gateways without Redis (what a per-instance limit gives)
#
#   perf/ratelimit_accuracy.sh [--rate N] [--burst N] [--duration SECONDS] [--reps N]
#
# One policy keyed by route (every request counts against one key), a
# direct-response route (no origin), wrk with 8 connections per gateway.
# Configured = rate * (seconds wrk ran) + burst; accuracy = admitted /
# configured.
# Prints one line per rep and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=2000
BURST=100
DURATION=5
REPS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --burst) BURST=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in wrk redis-server; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release -q
BIN=target/release/ringgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis-server --port 0 --unixsocket "$WORK/redis.sock" --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" &
PIDS+=($!)
until redis-cli -s "$WORK/redis.sock" ping >/dev/null 2>&1; do sleep 0.05; done

# gateway NAME PORT REDIS(yes/no) PREFIX
gateway() {
  local name=$1 port=$2 redis=$3 prefix=$4
  {
    printf '[server]\nworkers = 2\n\n[admin]\naddress = "127.0.0.1:0"\n\n'
    printf '[[listeners]]\nname = "l"\naddress = "127.0.0.1:%s"\n\n' "$port"
    printf '[rate_limit]\nheaders = false\n\n'
    if [ "$redis" = yes ]; then
      printf '[rate_limit.redis]\nurl = "unix://%s/redis.sock"\nkey_prefix = "%s"\n\n' "$WORK" "$prefix"
    fi
    printf '[[rate_limit.policies]]\nname = "p"\nrate = %s\nper = "1s"\nburst = %s\nkey = ["route"]\n\n' "$RATE" "$BURST"
    printf '[[routes]]\nname = "all"\nrate_limits = ["p"]\nrespond = { status = 200, body = "ok" }\n'
  } >"$WORK/$name.toml"
  RUST_LOG=warn "$BIN" run -c "$WORK/$name.toml" 2>"$WORK/$name.log" &
  PIDS+=($!)
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.05; done
}

# admitted PORT...: runs wrk on every port at once, prints the admitted
# total and the longest run's measured seconds
admitted() {
  local files=() total=0 secs=0
  for port in "$@"; do
    wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$WORK/wrk.$port" 2>&1 &
    files+=("$WORK/wrk.$port")
  done
  wait_wrk
  for f in "${files[@]}"; do
    local req non
    req=$(awk '/requests in/ {print $1}' "$f")
    non=$(awk '/Non-2xx/ {print $NF}' "$f")
    total=$((total + req - ${non:-0}))
    secs=$(awk -v s="$secs" '/requests in/ {t=$4; sub(/s,?$/, "", t); print (t > s ? t : s)}' "$f")
  done
  echo "$total $secs"
}
wait_wrk() { while pgrep -x wrk >/dev/null; do sleep 0.1; done; }

declare -A results
rep_prefix=0
for rep in $(seq 1 "$REPS"); do
  for mode in one two two-solo; do
    rep_prefix=$((rep_prefix + 1))
    p1=$(free_port); p2=$(free_port)
    case $mode in
      one) gateway a "$p1" no x; ports=("$p1") ;;
      two) gateway a "$p1" yes "rg$rep_prefix:"; gateway b "$p2" yes "rg$rep_prefix:"; ports=("$p1" "$p2") ;;
      two-solo) gateway a "$p1" no x; gateway b "$p2" no x; ports=("$p1" "$p2") ;;
    esac
    # The probes above spent one request per gateway; wait a full refill.
    sleep 1
    read -r n secs < <(admitted "${ports[@]}")
    # Configured over the time wrk actually ran.
    configured=$(python3 -c "print(round($RATE * $secs + $BURST))")
    ratio=$(python3 -c "print(f'{$n/$configured:.3f}')")
    echo "rep $rep $mode: admitted $n of $configured configured ($ratio)"
    results[$mode]+="$ratio "
    for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait "${PIDS[@]:1}" 2>/dev/null || true
    PIDS=("${PIDS[0]}")
  done
done
for mode in one two two-solo; do
  median=$(python3 -c "import statistics; print(statistics.median([float(x) for x in '${results[$mode]}'.split()]))")
  echo "median $mode: $median"
done
