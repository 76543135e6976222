#!/usr/bin/env bash
# Side-by-side proxy comparison: ringgate vs nginx vs HAProxy in front of the
# same origin, on one machine, in one run.
#
#   perf/compare.sh [--reps N] [--duration SECONDS] [--connections N]
#                   [--scenarios "small 16k 1m post64k newconn"] [--no-latency] [--no-idle]
#                   [--observability] [--baseline PATH-TO-RINGGATE-BINARY]
#                   [--ip-list N] [--rate-limit] [--jwt RS256|ES256] [--tls]
#                   [--upstream-tls] [--baseline-driver auto|io_uring|epoll]
#                   [--baseline-server "KEY = VALUE"]
#                   [--everything] [--floor]
#
# The default scenarios are the ones in the brackets; "post1m" (1 MiB
# uploads) runs when named.
#
# --observability adds the target ringgate-obs: the same build with the
# access log on (to a file) besides the always-on metrics. --baseline adds
# ringgate-base: another ringgate binary (e.g. built from an earlier commit)
# with the plain config, for before/after comparisons in the same run.
# ringgate-obs takes part in the throughput phase only; ringgate-base also
# in the latency phase, so one run compares two builds' tails, rep by rep
# (a table of ringgate's p50, p99 and p99.9 over the baseline's follows
# the latency table). --baseline-driver runs the
# baseline on the given event loop (e.g. --baseline target/release/ringgate
# --baseline-driver epoll compares the two drivers of one build).
# --baseline-server adds a line to the baseline's [server] table (e.g.
# --baseline target/release/ringgate --baseline-server
# "io_uring_wait_batch = 1" compares one build's two wait modes; it may be
# given more than once). --ip-list N gives every ringgate
# target except the baseline a global deny list file of N entries;
# --rate-limit puts them behind a per-client policy far above the load.
# --jwt ALG makes their route require a JWT (keys from tests/fixtures/auth)
# and adds the scenario "jwt": small GETs carrying one valid token (so the
# verified-token cache is warm after the first request); peers and the
# baseline get the same header and ignore it. --tls makes every target
# (peers included) terminate TLS 1.3 with one ECDSA P-256 certificate made
# for the run, and runs the scenarios "tls" (small GETs over keep-alive
# TLS connections) and "tlsnew" (a new TLS connection, full handshake, per
# request); the origin stays plain HTTP. --upstream-tls instead makes the
# origin serve TLS 1.3 and every target connect to it over TLS, verifying
# its certificate (a CA and a leaf for bench.test made for the run) from a
# keep-alive pool, and runs "upsmall" and "up16k" (plain clients, small and
# 16 KiB GETs, TLS between proxy and origin). --everything turns every
# edge stage on at once: TLS 1.3 termination, an ES256 JWT on every request
# (cached after the first), a per-client rate limit far above the load, a
# deny list of 1,000 addresses (unless --ip-list says otherwise) and the
# access log to a file, besides the always-on metrics, latency histograms
# and security headers; it runs the scenario "everything" (small GETs with
# the token over keep-alive TLS). Peers terminate TLS and get the same
# header; --baseline with the same binary then measures ringgate with TLS
# only, so the difference is the cost of the other stages. --floor adds
# the target floor: perf/floor, the least a keep-alive proxy on ringgate's
# runtime and ring can do per request (two reads, two writes, no HTTP work
# beyond framing), in the scenarios small, 16k and 1m; what ringgate spends
# above it is its own work. It also adds floor-raw (perf/floor's second
# binary): a forwarder that drives io_uring by hand with what monoio does
# not offer (multishot receives into provided buffers, registered files),
# the least any io_uring proxy could spend.
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
#   user / sys   the same split into user and kernel time
#   p50/p99 ms   wrk's latency percentiles (closed loop, for orientation only)
#   conn/1k      upstream connections opened per 1000 requests (kernel
#                TcpActiveOpens delta minus wrk's own connections)
#   errors       socket errors + non-2xx responses (must be 0)
#
# Then, unless disabled:
#   latency      open-loop constant-rate load (perf/loadgen, coordinated
#                omission corrected, hdrhistogram) at half of nginx's
#                saturated small-GET rate from this run: p50/p90/p99/p99.9/max,
#                .hgrm files and latency.svg with every target's curve
#   idle         resident memory of each proxy holding 10,000 idle
#                keep-alive client connections (fewer where the descriptor
#                hard limit cannot hold them; the table says how many),
#                measured after they have been idle for 2 s
#
# Output: a markdown table on stdout and in perf/results/<time>/summary.md,
# with every raw wrk output and the configs that ran (configs/) beside it.
set -euo pipefail

REPS=3
DURATION=10
CONNS=50
SCENARIOS="small 16k 1m post64k newconn"
LATENCY=1
IDLE=1
EXTRA=""
BASELINE=""
BASE_DRIVER=""
BASE_SERVER=()
IP_LIST=0
RATE_LIMIT=0
JWT_ALG=""
TLS=0
UPSTREAM_TLS=0
EVERYTHING=0
while [ $# -gt 0 ]; do
  case "$1" in
    --observability) EXTRA="$EXTRA ringgate-obs"; shift ;;
    --ip-list) IP_LIST=$2; shift 2 ;;
    --rate-limit) RATE_LIMIT=1; shift ;;
    --jwt) JWT_ALG=$2; shift 2 ;;
    --tls) TLS=1; shift ;;
    --upstream-tls) UPSTREAM_TLS=1; shift ;;
    --everything) EVERYTHING=1; shift ;;
    --floor) EXTRA="$EXTRA floor floor-raw"; shift ;;
    --baseline) BASELINE=$(realpath "$2"); EXTRA="$EXTRA ringgate-base"; shift 2 ;;
    --baseline-driver) BASE_DRIVER=$2; shift 2 ;;
    --baseline-server) BASE_SERVER+=("$2"); shift 2 ;;
    --no-latency) LATENCY=0; shift ;;
    --no-idle) IDLE=0; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if [ "$EVERYTHING" = 1 ]; then
  TLS=1; RATE_LIMIT=1; JWT_ALG=${JWT_ALG:-ES256}
  [ "$IP_LIST" -gt 0 ] || IP_LIST=1000
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/perf/configs.sh"
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
(cd "$ROOT/perf/loadgen" && cargo build --release --quiet)
case "$EXTRA" in *floor*) (cd "$ROOT/perf/floor" && cargo build --release --quiet) ;; esac
RINGGATE="$ROOT/target/release/ringgate"
LOADGEN="$ROOT/perf/loadgen/target/release/ringgate-loadgen"
# Idle client connections need descriptors: 10,000 where the hard limit
# allows. HAProxy reserves two descriptors per connection of its maxconn, so
# the count is capped at half the hard limit, less headroom.
ulimit -n "$(ulimit -Hn)"
IDLE_CONNS=$(( $(ulimit -n) / 2 - 500 ))
[ "$IDLE_CONNS" -gt 10000 ] && IDLE_CONNS=10000

ORIGIN=18080; P_RINGGATE=18081; P_NGINX=18082; P_HAPROXY=18083
P_RINGGATE_OBS=18084; P_RINGGATE_BASE=18085; P_FLOOR=18086; P_FLOOR_RAW=18087

# ---- origin: nginx on core 1 serving fixed bodies
mkdir -p "$WORK/www" "$WORK/logs"
printf 'hello world\n' > "$WORK/www/small"
head -c 16384 /dev/zero | tr '\0' 'a' > "$WORK/www/16k"
head -c 1048576 /dev/zero | tr '\0' 'b' > "$WORK/www/1m"
head -c 65536 /dev/zero | tr '\0' 'c' > "$WORK/post64k.body"
head -c 1048576 /dev/zero | tr '\0' 'd' > "$WORK/post1m.body"
chmod -R a+rX "$WORK"  # nginx workers run unprivileged
origin_conf "$WORK" $ORIGIN > "$WORK/origin.conf"

# ---- peers, configured the way their docs recommend for reverse proxying
nginx_proxy_conf "$WORK" $P_NGINX $ORIGIN > "$WORK/nginx.conf"
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((IDLE_CONNS + 100))
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
ringgate_conf $P_RINGGATE $ORIGIN > "$WORK/ringgate.toml"
# The baseline gets the plain config; the others an IP deny list if asked.
sed -e "s/:$P_RINGGATE\"/:$P_RINGGATE_BASE\"/" "$WORK/ringgate.toml" > "$WORK/ringgate-base.toml"
if [ -n "$BASE_DRIVER" ]; then
  sed -i -e "s/^pin_workers = false$/&\ndriver = \"$BASE_DRIVER\"/" "$WORK/ringgate-base.toml"
fi
for line in "${BASE_SERVER[@]}"; do
  python3 - "$WORK/ringgate-base.toml" "$line" <<'PY'
import sys
path, line = sys.argv[1], sys.argv[2]
text = open(path).read()
open(path, "w").write(text.replace("[server]\n", f"[server]\n{line}\n", 1))
PY
done
# Adds a key to the route (the file's last table is the route until the
# tables below are appended).
route_key() { sed -i -e "s|^proxy = { cluster = \"origin\" }\$|&\n$1|" "$WORK/ringgate.toml"; }
if [ -n "$JWT_ALG" ]; then
  case "$JWT_ALG" in
    RS256) key=rsa ;; ES256) key=ec256 ;;
    *) echo "--jwt takes RS256 or ES256" >&2; exit 2 ;;
  esac
  fixtures="$ROOT/tests/fixtures/auth"
  # A token signed with openssl (ES256 signatures converted from DER to r||s).
  token=$(python3 - "$JWT_ALG" "$fixtures/$key.key.pem" <<'PY'
import base64, json, subprocess, sys, time
alg, key = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400, "scope": "read"}).encode())
msg = f"{head}.{body}".encode()
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=msg, capture_output=True, check=True).stdout
if alg == "ES256":
    def ints(der):
        i, out = 2, []
        while i < len(der):
            n = der[i + 1]; out.append(int.from_bytes(der[i + 2:i + 2 + n], "big")); i += 2 + n
        return out
    r, s = ints(sig)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
print(f"{head}.{body}.{b64(sig)}")
PY
)
  route_key 'auth = { methods = ["jwt"] }'
  printf '[[auth.jwt]]
name = "bench"
algorithms = ["%s"]
pem_files = [{ file = "%s" }]
' \
    "$JWT_ALG" "$fixtures/$key.pub.pem" >> "$WORK/ringgate.toml"
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$token" > "$WORK/jwt.lua"
  SCENARIOS="jwt"
fi
if [ "$RATE_LIMIT" = 1 ]; then
  route_key 'rate_limits = ["bench"]'
  printf '[[rate_limit.policies]]\nname = "bench"\nrate = 100000000\nper = "1s"\nkey = ["client_ip"]\n' >> "$WORK/ringgate.toml"
fi
if [ "$IP_LIST" -gt 0 ]; then
  python3 -c "
for i in range($IP_LIST):
    n = 0x0a000000 + i * 7
    print(f'{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}')" > "$WORK/deny.txt"
  printf '[security.ip_filter]\ndeny_files = ["%s"]\n' "$WORK/deny.txt" >> "$WORK/ringgate.toml"
fi
if [ "$TLS" = 1 ] || [ "$UPSTREAM_TLS" = 1 ]; then
  # A CA and an ECDSA P-256 leaf for bench.test (a verifying client refuses
  # a self-signed CA certificate as the server's own).
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $ec -days 2 -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
  openssl req $ec -subj /CN=bench.test -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$WORK/leaf.ext"
  openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/leaf.ext" -out "$WORK/tls.crt" 2>/dev/null
  cat "$WORK/tls.crt" "$WORK/tls.key" > "$WORK/tls.pem"
  chmod a+r "$WORK"/tls.* "$WORK/ca.crt"
fi
if [ "$UPSTREAM_TLS" = 1 ]; then
  sed -i -e "s|listen 127.0.0.1:$ORIGIN backlog=4096;|listen 127.0.0.1:$ORIGIN ssl backlog=4096;\n    ssl_certificate $WORK/tls.crt;\n    ssl_certificate_key $WORK/tls.key;\n    ssl_protocols TLSv1.3;|" "$WORK/origin.conf"
  sed -i -e "s|proxy_pass http://origin;|proxy_pass https://origin;\n      proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate $WORK/ca.crt;\n      proxy_ssl_name bench.test;\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n      proxy_ssl_protocols TLSv1.3;|" "$WORK/nginx.conf"
  sed -i -e "s|server o 127.0.0.1:$ORIGIN maxconn 1000|server o 127.0.0.1:$ORIGIN maxconn 1000 ssl verify required ca-file $WORK/ca.crt sni str(bench.test) verifyhost bench.test ssl-min-ver TLSv1.3|" "$WORK/haproxy.cfg"
  for f in "$WORK/ringgate.toml" "$WORK/ringgate-base.toml"; do
    sed -i -e "s|^endpoints = \[\"127.0.0.1:$ORIGIN\"\]|&\ntls = { server_name = \"bench.test\", ca_file = \"$WORK/ca.crt\", min_version = \"1.3\" }|" "$f"
  done
  SCENARIOS="upsmall up16k"
  LATENCY=0; IDLE=0
fi
if [ "$TLS" = 1 ]; then
  sed -i -e "s|listen 127.0.0.1:$P_NGINX backlog=4096;|listen 127.0.0.1:$P_NGINX ssl backlog=4096;\n    ssl_certificate $WORK/tls.crt;\n    ssl_certificate_key $WORK/tls.key;\n    ssl_protocols TLSv1.3;\n    ssl_session_cache shared:SSL:10m;|" "$WORK/nginx.conf"
  sed -i -e "s|bind 127.0.0.1:$P_HAPROXY|bind 127.0.0.1:$P_HAPROXY ssl crt $WORK/tls.pem ssl-min-ver TLSv1.3 alpn http/1.1|" "$WORK/haproxy.cfg"
  for f in "$WORK/ringgate.toml" "$WORK/ringgate-base.toml"; do
    python3 - "$f" "$WORK" <<'PY'
import sys
path, work = sys.argv[1], sys.argv[2]
text = open(path).read()
at = text.index("[[clusters]]")
tls = (f'[listeners.tls]\nmin_version = "1.3"\n[[listeners.tls.certificates]]\n'
       f'cert_file = "{work}/tls.crt"\nkey_file = "{work}/tls.key"\n')
open(path, "w").write(text[:at] + tls + text[at:])
PY
  done
  SCENARIOS="tls tlsnew"
  # The latency generator and the idle phase speak plain HTTP.
  LATENCY=0; IDLE=0
fi
# The same config with the access log on.
sed -e "s/:$P_RINGGATE\"/:$P_RINGGATE_OBS\"/" "$WORK/ringgate.toml" > "$WORK/ringgate-obs.toml"
printf '[access_log]\ndestination = "%s"\n' "$WORK/logs/access.log" >> "$WORK/ringgate-obs.toml"
if [ "$EVERYTHING" = 1 ]; then
  printf '[access_log]\ndestination = "%s"\n' "$WORK/logs/access-everything.log" >> "$WORK/ringgate.toml"
  SCENARIOS="everything"
fi
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
local f = io.open("$WORK/post64k.body", "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
sed -e 's/post64k.body/post1m.body/' "$WORK/post.lua" > "$WORK/post1m.lua"
cat > "$WORK/close.lua" <<'EOF'
wrk.headers["Connection"] = "close"
EOF

# Keep the configs that ran beside the results.
mkdir -p "$OUT/configs"
cp "$WORK"/*.toml "$WORK/nginx.conf" "$WORK/haproxy.cfg" "$WORK/origin.conf" "$OUT/configs/"

taskset -c 1 nginx -c "$WORK/origin.conf" &
taskset -c 0 nginx -c "$WORK/nginx.conf" &
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db &
taskset -c 0 "$RINGGATE" run -c "$WORK/ringgate.toml" 2> "$WORK/logs/ringgate.err" &
ports="$ORIGIN $P_NGINX $P_HAPROXY $P_RINGGATE"
case "$EXTRA" in *ringgate-obs*)
  taskset -c 0 "$RINGGATE" run -c "$WORK/ringgate-obs.toml" 2> "$WORK/logs/ringgate-obs.err" &
  ports="$ports $P_RINGGATE_OBS" ;; esac
case "$EXTRA" in *floor*)
  taskset -c 0 "$ROOT/perf/floor/target/release/ringgate-floor" "127.0.0.1:$P_FLOOR" "127.0.0.1:$ORIGIN" 2> "$WORK/logs/floor.err" &
  taskset -c 0 "$ROOT/perf/floor/target/release/ringgate-floor-raw" "127.0.0.1:$P_FLOOR_RAW" "127.0.0.1:$ORIGIN" --fixed 2> "$WORK/logs/floor-raw.err" &
  ports="$ports $P_FLOOR $P_FLOOR_RAW" ;; esac
case "$EXTRA" in *ringgate-base*)
  taskset -c 0 "$BASELINE" run -c "$WORK/ringgate-base.toml" 2> "$WORK/logs/ringgate-base.err" &
  ports="$ports $P_RINGGATE_BASE" ;; esac
for port in $ports; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# The processes whose CPU time is the proxy's cost.
pids_of() {
  case "$1" in
    ringgate) pgrep -f "$WORK/ringgate.toml" ;;
    ringgate-obs) pgrep -f "$WORK/ringgate-obs.toml" ;;
    ringgate-base) pgrep -f "$WORK/ringgate-base.toml" ;;
    nginx) nginx_workers "$WORK/nginx.conf" ;;
    haproxy) pgrep -f "$WORK/haproxy.cfg" ;;
    floor) pgrep -f "ringgate-floor 127.0.0.1:$P_FLOOR" ;;
    floor-raw) pgrep -f "ringgate-floor-raw 127.0.0.1:$P_FLOOR_RAW" ;;
  esac
}
# User and kernel clock ticks of a target's processes: "user sys".
cpu_ticks() {
  local u=0 k=0 pu pk
  for p in $(pids_of "$1"); do
    read -r pu pk < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + pu)); k=$((k + pk))
  done
  echo "$u $k"
}
active_opens() { awk '/^Tcp:/ { if (h) { print $6; exit } h=1 }' /proc/net/snmp; }
port_of() {
  case "$1" in
    ringgate) echo $P_RINGGATE ;; nginx) echo $P_NGINX ;; haproxy) echo $P_HAPROXY ;;
    ringgate-obs) echo $P_RINGGATE_OBS ;; ringgate-base) echo $P_RINGGATE_BASE ;;
    floor) echo $P_FLOOR ;; floor-raw) echo $P_FLOOR_RAW ;;
  esac
}
HZ=$(getconf CLK_TCK)

wrk_args() {
  case "$1" in
    small) echo "/small" ;;
    16k) echo "/16k" ;;
    1m) echo "/1m" ;;
    post64k) echo "-s $WORK/post.lua /post" ;;
    post1m) echo "-s $WORK/post1m.lua /post" ;;
    newconn) echo "-s $WORK/close.lua /small" ;;
    jwt) echo "-s $WORK/jwt.lua /small" ;;
    everything) echo "-s $WORK/jwt.lua /small" ;;
    tls) echo "/small" ;;
    tlsnew) echo "-s $WORK/close.lua /small" ;;
    upsmall) echo "/small" ;;
    up16k) echo "/16k" ;;
  esac
}

TARGETS="ringgate nginx haproxy"
echo "target scenario rep rps cpu_us_per_req p50_ms p99_ms conn_per_1k errors user_us_per_req sys_us_per_req" > "$OUT/raw.tsv"
for scenario in $SCENARIOS; do
  conns=$CONNS; [ "$scenario" = 1m ] && conns=10
  for rep in $(seq "$REPS"); do
    for target in $TARGETS $EXTRA; do
      # The floor forwards bodiless plain-HTTP GETs only.
      if [ "${target#floor}" != "$target" ]; then
        case "$scenario" in small|16k|1m) ;; *) continue ;; esac
      fi
      read -r -a args <<< "$(wrk_args "$scenario")"
      path=${args[-1]}; unset 'args[-1]'
      scheme=http; [ "$TLS" = 1 ] && scheme=https
      url="$scheme://127.0.0.1:$(port_of "$target")$path"
      # warm-up: fill pools and caches
      taskset -c 1 wrk -t1 -c"$conns" -d1s "${args[@]}" "$url" > /dev/null
      read -r u0 k0 < <(cpu_ticks "$target"); o0=$(active_opens)
      taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "${args[@]}" "$url" > "$OUT/$target.$scenario.$rep.txt"
      read -r u1 k1 < <(cpu_ticks "$target"); o1=$(active_opens)
      python3 - "$OUT/$target.$scenario.$rep.txt" "$target" "$scenario" "$rep" $((u1 - u0)) $((k1 - k0)) "$HZ" $((o1 - o0)) "$conns" >> "$OUT/raw.tsv" <<'PY'
import re, sys
path, target, scenario, rep, uticks, kticks, hz, opens, conns = sys.argv[1:]
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
per_req = lambda ticks: int(ticks) * 1e6 / int(hz) / max(req, 1)
cpu_us, user_us, sys_us = per_req(int(uticks) + int(kticks)), per_req(uticks), per_req(kticks)
# wrk opens `conns` connections per run, or one per request with Connection: close
client_opens = req if scenario in ("newconn", "tlsnew") else int(conns)
up_opens = max(int(opens) - client_opens, 0)
print(f"{target} {scenario} {rep} {rps:.0f} {cpu_us:.2f} {ms('50'):.3f} {ms('99'):.3f} {up_opens * 1000 / max(req, 1):.2f} {errs} {user_us:.2f} {sys_us:.2f}")
PY
    done
  done
done

python3 - "$OUT/raw.tsv" <<'PY' | tee "$OUT/summary.md"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for t, s, rep, rps, cpu, p50, p99, conn, err, user, kern in rows:
    by.setdefault((s, t), []).append((float(rps), float(cpu), float(p50), float(p99), float(conn), int(err), float(user), float(kern)))
scen = list(dict.fromkeys(r[1] for r in rows))
targets = list(dict.fromkeys(r[0] for r in rows))
print("| scenario | target | rps | rps vs nginx | CPU µs/req | CPU vs nginx | user / sys µs | p50 ms | p99 ms | upstream conn/1k req | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
med = lambda v, i: statistics.median(x[i] for x in v)
for s in scen:
    base = by.get((s, "nginx"))
    for t in targets:
        v = by[(s, t)]
        rps, cpu = med(v, 0), med(v, 1)
        r_rps = rps / med(base, 0) if base else float("nan")
        r_cpu = cpu / med(base, 1) if base else float("nan")
        print(f"| {s} | {t} | {rps:,.0f} | {r_rps:.2f} | {cpu:.1f} | {r_cpu:.2f} | {med(v,6):.1f} / {med(v,7):.1f} | {med(v,2):.3f} | {med(v,3):.3f} | {med(v,4):.1f} | {sum(x[5] for x in v)} |")
PY

# ---- latency at a fixed rate, open loop
if [ "$LATENCY" = 1 ]; then
  RATE=$(python3 -c "
import statistics
rows = [l.split() for l in open('$OUT/raw.tsv').read().splitlines()[1:] if l.split()[:2] == ['nginx', 'small']]
print(int(statistics.median(float(r[3]) for r in rows) / 2) if rows else 10000)")
  echo "target rep p50 p90 p99 p999 max requests errors" > "$OUT/latency.tsv"
  LATENCY_TARGETS="$TARGETS"
  case "$EXTRA" in *ringgate-base*) LATENCY_TARGETS="$TARGETS ringgate-base" ;; esac
  for rep in $(seq "$REPS"); do
    for target in $LATENCY_TARGETS; do
      url="http://127.0.0.1:$(port_of "$target")/small"
      line=$(taskset -c 1 "$LOADGEN" "$url" "$RATE" "$DURATION" 64 "$OUT/$target.latency.$rep.hgrm")
      python3 -c "
import sys; kv = dict(x.split('=') for x in sys.argv[1].split())
print('$target', $rep, kv['p50_ms'], kv['p90_ms'], kv['p99_ms'], kv['p999_ms'], kv['max_ms'], kv['requests'], kv['errors'])" "$line" >> "$OUT/latency.tsv"
    done
  done
  python3 - "$OUT" "$RATE" <<'PY' | tee -a "$OUT/summary.md"
import statistics, sys, os
out, rate = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open(f"{out}/latency.tsv").read().splitlines()[1:]]
targets = list(dict.fromkeys(r[0] for r in rows))
print(f"\nOpen-loop latency at {int(rate):,} requests/s (half of nginx's saturated small-GET rate), 64 connections, ms, median of reps:\n")
print("| target | p50 | p90 | p99 | p99.9 | max | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
best = {}
for t in targets:
    v = [r for r in rows if r[0] == t]
    med = [statistics.median(float(r[i]) for r in v) for i in range(2, 7)]
    print(f"| {t} | " + " | ".join(f"{x:.3f}" for x in med) + f" | {sum(int(r[8]) for r in v)} |")
    # the rep with the median p99 is the one drawn
    v.sort(key=lambda r: float(r[4]))
    best[t] = v[len(v) // 2][1]
if "ringgate-base" in targets:
    # Paired by rep: both ran within the same minute, so drift that moves
    # one moves the other.
    by = {(r[0], r[1]): r for r in rows}
    print("\nringgate over ringgate-base, rep by rep (p50, p99, p99.9):\n")
    print("| rep | p50 | p99 | p99.9 |")
    print("|---:|---:|---:|---:|")
    ratios = []
    for rep in sorted({r[1] for r in rows}, key=int):
        a, b = by.get(("ringgate", rep)), by.get(("ringgate-base", rep))
        if a and b:
            q = [float(a[i]) / float(b[i]) for i in (2, 4, 5)]
            ratios.append(q)
            print(f"| {rep} | " + " | ".join(f"{x:.2f}" for x in q) + " |")
    if ratios:
        print("| median | " + " | ".join(f"{statistics.median(q[i] for q in ratios):.2f}" for i in range(3)) + " |")
# latency.svg: percentile curves, x = 1/(1-p) on a log scale
import math
curves = {}
for t, rep in best.items():
    pts = []
    for line in open(f"{out}/{t}.latency.{rep}.hgrm"):
        f = line.split()
        if len(f) == 4 and f[0][0].isdigit():
            pts.append((float(f[3]), float(f[0])))
    curves[t] = pts
W, H, L, B = 760, 420, 60, 40
xmax = 1e4
ymax = max(y for pts in curves.values() for x, y in pts if x <= xmax) * 1.1
sx = lambda x: L + (W - L - 20) * math.log10(max(x, 1)) / math.log10(xmax)
sy = lambda y: H - B - (H - B - 20) * y / ymax
colors = {"ringgate": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4", "ringgate-base": "#ff9896"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="14" text-anchor="middle">Latency by percentile at {int(rate):,} req/s (open loop)</text>']
for k, label in enumerate(["0%", "90%", "99%", "99.9%", "99.99%"]):
    x = sx(10 ** k)
    svg.append(f'<line x1="{x}" y1="20" x2="{x}" y2="{H-B}" stroke="#ddd"/><text x="{x}" y="{H-B+15}" text-anchor="middle">{label}</text>')
for k in range(6):
    y = ymax * k / 5
    svg.append(f'<line x1="{L}" y1="{sy(y)}" x2="{W-20}" y2="{sy(y)}" stroke="#eee"/><text x="{L-5}" y="{sy(y)+4}" text-anchor="end">{y:.2f}</text>')
svg.append(f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">ms</text>')
for i, (t, pts) in enumerate(curves.items()):
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if x <= xmax)
    c = colors.get(t, "#555")
    svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
    svg.append(f'<text x="{L+10}" y="{40+16*i}" fill="{c}">{t}</text>')
svg.append("</svg>")
open(f"{out}/latency.svg", "w").write("\n".join(svg))
print(f"\n(curves: {out}/latency.svg)")
PY
fi

# ---- memory with 10,000 idle keep-alive client connections
if [ "$IDLE" = 1 ]; then
  echo "" | tee -a "$OUT/summary.md"
  echo "| target | RSS before | RSS with $IDLE_CONNS idle keep-alive connections | per connection |" | tee -a "$OUT/summary.md"
  echo "|---|---:|---:|---:|" | tee -a "$OUT/summary.md"
  for target in $TARGETS; do
    rss() { local t=0; for p in $(pids_of "$target"); do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
    before=$(rss)
    taskset -c 1 python3 - "$(port_of "$target")" "$OUT/idle.$target.ready" "$IDLE_CONNS" <<'PY' &
import socket, sys, time
port, flag, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b"hello world\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"connection {i} closed")
        got += chunk
    conns.append(s)
open(flag, "w").write("ok")
time.sleep(600)
PY
    holder=$!
    for _ in $(seq 1200); do [ -f "$OUT/idle.$target.ready" ] && break; sleep 0.1; done
    # Idle for a while, as idle clients are: past ringgate's
    # keepalive_park_after (1 s), so its connections have parked. Every
    # target gets the same wait.
    sleep 2
    after=$(rss)
    kill $holder 2>/dev/null || true
    wait $holder 2>/dev/null || true
    python3 -c "print(f'| $target | {$before/1024:.1f} MiB | {$after/1024:.1f} MiB | {($after-$before)/$IDLE_CONNS:.2f} KiB |')" | tee -a "$OUT/summary.md"
  done
fi

echo
echo "raw results: $OUT"
