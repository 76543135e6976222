# Configs shared by the perf/ scripts, so every harness runs
# the origin and the peers the same way. Sourced; each function prints one
# file. WORK is the run's scratch directory (pid files, logs, temp paths).

# The origin: nginx serving the files in $WORK/www, keep-alive on.
origin_conf() { # WORK PORT
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/origin.pid;
error_log $1/logs/origin.err;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $1/origin_body;
  server {
    listen 127.0.0.1:$2 backlog=4096;
    root $1/www;
    location /post { client_max_body_size 10m; return 200 "posted\n"; }
  }
}
EOF
}

# nginx as a reverse proxy, as its documentation recommends: an upstream
# keepalive pool, HTTP/1.1 and an empty Connection header.
nginx_proxy_conf() { # WORK PORT ORIGIN_PORT
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/nginx.err;
events { worker_connections 30000; }
worker_rlimit_nofile 65536;
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $1/nginx_body;
  proxy_temp_path $1/nginx_proxy;
  upstream origin { server 127.0.0.1:$3; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    client_max_body_size 10m;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}

# ringgate with one unpinned worker and one route to the origin.
ringgate_conf() { # PORT ORIGIN_PORT
  cat <<EOF
[server]
workers = 1
pin_workers = false
[admin]
enabled = false
[log]
level = "warn"
[[listeners]]
name = "bench"
address = "127.0.0.1:$1"
max_connections = 30000
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$2"]
[[routes]]
name = "all"
proxy = { cluster = "origin" }
EOF
}

# The worker processes of the nginx started with config file $1.
nginx_workers() { # CONF
  pgrep -f "nginx: worker process" | while read -r p; do
    grep -q "$1" "/proc/$(ps -o ppid= -p "$p" | tr -d ' ')/cmdline" 2>/dev/null && echo "$p"
  done
}

# Starts the origin (nginx, small body) on core 1 and two ringgate builds
# with ringgate_conf on core 0, NEW on port 19490 and BASE on 19491, and
# waits until all three accept. For perf/ab.sh and perf/counts.sh.
start_two_builds() { # WORK NEW BASE ORIGIN_PORT
  mkdir -p "$1/www" "$1/logs"; printf 'hello world\n' > "$1/www/small"; chmod -R a+rX "$1"
  origin_conf "$1" "$4" > "$1/origin.conf"
  taskset -c 1 nginx -c "$1/origin.conf" &
  ringgate_conf 19490 "$4" > "$1/new.toml"
  ringgate_conf 19491 "$4" > "$1/base.toml"
  taskset -c 0 "$2" run -c "$1/new.toml" 2> "$1/logs/new.err" &
  taskset -c 0 "$3" run -c "$1/base.toml" 2> "$1/logs/base.err" &
  local port
  for port in "$4" 19490 19491; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  done
}
