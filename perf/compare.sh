#!/usr/bin/env bash
# Side-by-side proxy comparison: ringgate vs nginx vs HAProxy in front of the
# same origin, on one machine, in one run.
#
#   perf/compare.sh [--reps N] [--duration SECONDS] [--connections N] [--scenarios "small 16k ..."]
#
# Layout (2 cores): every proxy runs ONE worker pinned to core 0; the origin
# (nginx serving fixed bodies) and the load generator (wrk) are pinned to
# core 1. Targets alternate rep by rep (A B C A B C ...) so machine drift hits
# all alike; medians over the reps are reported.
#
# Figures per target and scenario:
#   rps          requests/s measured by wrk
#   cpu_us/req   (utime+stime of the proxy processes) / requests: the most
#                stable figure on a noisy machine; per-core capacity = 1e6/it
#   p50/p99 ms   wrk's latency percentiles (closed loop, for orientation only)
#   conn/1k      upstream connections opened per 1000 requests (kernel
#                TcpActiveOpens delta minus wrk's own connections)
#   errors       socket errors + non-2xx responses (must be 0)
#
# Output: a markdown table on stdout and in perf/results/<time>/summary.md,
# with every raw wrk output beside it.
set -euo pipefail

REPS=3
DURATION=10
CONNS=50
SCENARIOS="small 16k 1m post64k newconn"
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/perf/results/$(date -u +%Y%m%dT%H%M%SZ)"
WORK=$(mktemp -d)
mkdir -p "$OUT"
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

need=()
for t in nginx haproxy wrk taskset; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx haproxy wrk util-linux
fi

(cd "$ROOT" && cargo build --release --quiet)
RINGGATE="$ROOT/target/release/ringgate"

ORIGIN=18080; P_RINGGATE=18081; P_NGINX=18082; P_HAPROXY=18083

# ---- origin: nginx on core 1 serving fixed bodies
mkdir -p "$WORK/www" "$WORK/logs"
printf 'hello world\n' > "$WORK/www/small"
head -c 16384 /dev/zero | tr '\0' 'a' > "$WORK/www/16k"
head -c 1048576 /dev/zero | tr '\0' 'b' > "$WORK/www/1m"
head -c 65536 /dev/zero | tr '\0' 'c' > "$WORK/post64k.body"
chmod -R a+rX "$WORK"  # nginx workers run unprivileged
cat > "$WORK/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/origin.pid;
error_log $WORK/logs/origin.err;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $WORK/origin_body;
  server {
    listen 127.0.0.1:$ORIGIN backlog=4096;
    root $WORK/www;
    location /post { client_max_body_size 10m; return 200 "posted\n"; }
  }
}
EOF

# ---- peers, configured the way their docs recommend for reverse proxying
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $WORK/nginx_body;
  proxy_temp_path $WORK/nginx_proxy;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    client_max_body_size 10m;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always
frontend f
  bind 127.0.0.1:$P_HAPROXY
  default_backend b
backend b
  server o 127.0.0.1:$ORIGIN maxconn 1000
EOF
cat > "$WORK/ringgate.toml" <<EOF
[server]
workers = 1
pin_workers = false
[admin]
enabled = false
[log]
level = "warn"
[[listeners]]
name = "bench"
address = "127.0.0.1:$P_RINGGATE"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "all"
proxy = { cluster = "origin" }
EOF
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
local f = io.open("$WORK/post64k.body", "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
cat > "$WORK/close.lua" <<'EOF'
wrk.headers["Connection"] = "close"
EOF

taskset -c 1 nginx -c "$WORK/origin.conf" &
taskset -c 0 nginx -c "$WORK/nginx.conf" &
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db &
taskset -c 0 "$RINGGATE" run -c "$WORK/ringgate.toml" 2> "$WORK/logs/ringgate.err" &
for port in $ORIGIN $P_NGINX $P_HAPROXY $P_RINGGATE; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# The processes whose CPU time is the proxy's cost.
pids_of() {
  case "$1" in
    ringgate) pgrep -f "$WORK/ringgate.toml" ;;
    nginx) pgrep -f "nginx: worker process" | while read -r p; do
             grep -q "$WORK/nginx.conf" "/proc/$(ps -o ppid= -p "$p" | tr -d ' ')/cmdline" 2>/dev/null && echo "$p"; done ;;
    haproxy) pgrep -f "$WORK/haproxy.cfg" ;;
  esac
}
cpu_ticks() { local t=0; for p in $(pids_of "$1"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
active_opens() { awk '/^Tcp:/ { if (h) { print $6; exit } h=1 }' /proc/net/snmp; }
port_of() { case "$1" in ringgate) echo $P_RINGGATE ;; nginx) echo $P_NGINX ;; haproxy) echo $P_HAPROXY ;; esac; }
HZ=$(getconf CLK_TCK)

wrk_args() {
  case "$1" in
    small) echo "/small" ;;
    16k) echo "/16k" ;;
    1m) echo "/1m" ;;
    post64k) echo "-s $WORK/post.lua /post" ;;
    newconn) echo "-s $WORK/close.lua /small" ;;
  esac
}

TARGETS="ringgate nginx haproxy"
echo "target scenario rep rps cpu_us_per_req p50_ms p99_ms conn_per_1k errors" > "$OUT/raw.tsv"
for scenario in $SCENARIOS; do
  conns=$CONNS; [ "$scenario" = 1m ] && conns=10
  for rep in $(seq "$REPS"); do
    for target in $TARGETS; do
      read -r -a args <<< "$(wrk_args "$scenario")"
      path=${args[-1]}; unset 'args[-1]'
      url="http://127.0.0.1:$(port_of "$target")$path"
      # warm-up: fill pools and caches
      taskset -c 1 wrk -t1 -c"$conns" -d1s "${args[@]}" "$url" > /dev/null
      c0=$(cpu_ticks "$target"); o0=$(active_opens)
      taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "${args[@]}" "$url" > "$OUT/$target.$scenario.$rep.txt"
      c1=$(cpu_ticks "$target"); o1=$(active_opens)
      python3 - "$OUT/$target.$scenario.$rep.txt" "$target" "$scenario" "$rep" $((c1 - c0)) "$HZ" $((o1 - o0)) "$conns" >> "$OUT/raw.tsv" <<'PY'
import re, sys
path, target, scenario, rep, ticks, hz, opens, conns = sys.argv[1:]
text = open(path).read()
req = int(re.search(r"(\d+) requests in", text).group(1))
secs = float(re.search(r"requests in ([\d.]+)(m?s)", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % label, text)
    if not m: return float("nan")
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errs += int(m.group(1)) if m else 0
cpu_us = int(ticks) * 1e6 / int(hz) / max(req, 1)
# wrk opens `conns` connections per run, or one per request with Connection: close
client_opens = req if scenario == "newconn" else int(conns)
up_opens = max(int(opens) - client_opens, 0)
print(f"{target} {scenario} {rep} {rps:.0f} {cpu_us:.2f} {ms('50'):.3f} {ms('99'):.3f} {up_opens * 1000 / max(req, 1):.2f} {errs}")
PY
    done
  done
done

python3 - "$OUT/raw.tsv" <<'PY' | tee "$OUT/summary.md"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for t, s, rep, rps, cpu, p50, p99, conn, err in rows:
    by.setdefault((s, t), []).append((float(rps), float(cpu), float(p50), float(p99), float(conn), int(err)))
scen = list(dict.fromkeys(r[1] for r in rows))
targets = list(dict.fromkeys(r[0] for r in rows))
print("| scenario | target | rps | rps vs nginx | CPU µs/req | CPU vs nginx | p50 ms | p99 ms | upstream conn/1k req | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
med = lambda v, i: statistics.median(x[i] for x in v)
for s in scen:
    base = by.get((s, "nginx"))
    for t in targets:
        v = by[(s, t)]
        rps, cpu = med(v, 0), med(v, 1)
        r_rps = rps / med(base, 0) if base else float("nan")
        r_cpu = cpu / med(base, 1) if base else float("nan")
        print(f"| {s} | {t} | {rps:,.0f} | {r_rps:.2f} | {cpu:.1f} | {r_cpu:.2f} | {med(v,2):.3f} | {med(v,3):.3f} | {med(v,4):.1f} | {sum(x[5] for x in v)} |")
PY
echo
echo "raw results: $OUT"
