# Configs shared by perf/compare.sh and perf/sweep.sh, so every harness runs
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
