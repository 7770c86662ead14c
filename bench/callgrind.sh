#!/bin/bash
# Instructions per proxied request under callgrind (HTTP/1.1 keep-alive, small response, one
# worker), for Gatehouse (default) or nginx (`bench/callgrind.sh nginx`), on the same request:
# warm up, zero the counters, send N requests, dump. Stable where wall-clock is not.
# Needs valgrind, h2load and (for nginx) nginx; builds the release binary first. Loopback only.
# NEW_CONN=1: a new connection per request instead (wrk with `Connection: close`; needs wrk).
# GATEHOUSE=target/pgo/gatehouse: measure that binary (the PGO build) instead of the plain one.
#
# The request is h2load's own (Host: 127.0.0.1:PORT, user-agent), answered by the default
# site: h2load's `-H Host:` adds a second Host field, which both proxies refuse with a 400.
set -euo pipefail
N=${N:-20000}
WHO=${1:-gatehouse}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked --bin gatehouse --example bench_upstream >/dev/null
D=$(mktemp -d)
PID=""
# Two loopback ports free now, the upstream's and the proxy's (see bench/free_ports.py).
read -r UP_PORT PORT < <(python3 bench/free_ports.py 2 18180)
trap 'kill $PID $UPID 2>/dev/null || true; rm -rf "$D"' EXIT
target/release/examples/bench_upstream 127.0.0.1:$UP_PORT 1 & UPID=$!
OUT="$ROOT/target/callgrind.$WHO.out"
rm -f "$OUT" "$OUT".*
case "$WHO" in
gatehouse)
  cat > "$D/gatehouse.toml" <<TOML
[server]
http = "127.0.0.1:$PORT"
workers = 1
idle_timeout = "120s"
[[site]]
hosts = ["bench.local"]
default = true
  [[site.route]]
  prefix = "/api"
  upstream = "http://127.0.0.1:$UP_PORT"
  [[site.route]]
  prefix = "/"
  upstream = "http://127.0.0.1:$UP_PORT"
TOML
  valgrind --tool=callgrind --callgrind-out-file="$OUT" \
    "${GATEHOUSE:-target/release/gatehouse}" run -c "$D/gatehouse.toml" >/dev/null 2>&1 & PID=$!
  ;;
nginx)
  mkdir -p "$D/body" "$D/proxy"
  cat > "$D/nginx.conf" <<CONF
worker_processes 1;
pid $D/nginx.pid;
error_log $D/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  # The forwarding fields Gatehouse always sends, as bench/run.py's nginx sets them: keep the two alike.
  proxy_set_header X-Forwarded-For \$remote_addr;
  proxy_set_header X-Real-IP \$remote_addr;
  proxy_set_header X-Forwarded-Proto \$scheme;
  proxy_set_header X-Forwarded-Host \$host;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }
  client_body_temp_path $D/body;
  proxy_temp_path $D/proxy;
  server { listen 127.0.0.1:$PORT default_server; server_name bench.local;
    location /api/ { proxy_pass http://up; }
    location / { proxy_pass http://up; } }
}
CONF
  valgrind --tool=callgrind --callgrind-out-file="$OUT" \
    nginx -p "$D" -c "$D/nginx.conf" -g "daemon off; master_process off;" >/dev/null 2>&1 & PID=$!
  ;;
*) echo "usage: $0 [gatehouse|nginx]" >&2; exit 2 ;;
esac
# Ready when a request gets a 2xx through the proxy: a 502 (the upstream could not bind its
# port) would be measured as the cost of an error answer and its log line.
for _ in $(seq 1 100); do
  curl -sf -o /dev/null http://127.0.0.1:$PORT/ && break
  sleep 0.3
done
if ! curl -sf -o /dev/null http://127.0.0.1:$PORT/; then
  echo "no 2xx answer through $WHO on port $PORT (upstream on $UP_PORT); run again" >&2
  exit 1
fi
if [ -n "${NEW_CONN:-}" ]; then
  # A new connection per request (scenario 3): wrk with `Connection: close`. wrk runs for a
  # time, so N is the count it reports.
  wrk -t1 -c8 -d2s -H "Connection: close" http://127.0.0.1:$PORT/api/x >/dev/null
  callgrind_control -z "$PID" >/dev/null 2>&1
  R=$(wrk -t1 -c8 -d10s -H "Connection: close" http://127.0.0.1:$PORT/api/x)
  if grep -q "Non-2xx" <<<"$R"; then
    echo "$R" >&2
    echo "some answers were not 2xx: not a measurement of the proxied request; run again" >&2
    exit 1
  fi
  N=$(awk '/requests in/{print $1}' <<<"$R")
  echo "requests: $N, each on a new connection"
else
  h2load --h1 -n 2000 -c 8 http://127.0.0.1:$PORT/api/x >/dev/null
  callgrind_control -z "$PID" >/dev/null 2>&1
  h2load --h1 -n "$N" -c 8 http://127.0.0.1:$PORT/api/x | grep -E "requests:|status codes:"
fi
callgrind_control -d "$PID" >/dev/null 2>&1
for _ in $(seq 1 50); do [ -s "$OUT.1" ] && break; sleep 0.2; done
T=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
echo "$WHO: instructions per request: $((T / N))"
echo "profile: callgrind_annotate --inclusive=yes $OUT.1"
