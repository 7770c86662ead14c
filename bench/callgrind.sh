#!/bin/bash
# Instructions per proxied request under callgrind (HTTP/1.1 keep-alive, small response, one
# worker): warm up, zero the counters, send N requests, dump. Stable where wall-clock is not.
# Needs valgrind and h2load; builds the release binary first. Loopback only.
set -euo pipefail
N=${N:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked --bin gatehouse --example bench_upstream >/dev/null
D=$(mktemp -d)
trap 'kill $GPID $UPID 2>/dev/null || true; rm -rf "$D"' EXIT
cat > "$D/gatehouse.toml" <<TOML
[server]
http = "127.0.0.1:18081"
workers = 1
idle_timeout = "120s"
[[site]]
hosts = ["bench.local"]
default = true
  [[site.route]]
  prefix = "/api"
  upstream = "http://127.0.0.1:18080"
  [[site.route]]
  prefix = "/"
  upstream = "http://127.0.0.1:18080"
TOML
target/release/examples/bench_upstream 127.0.0.1:18080 1 & UPID=$!
OUT="$ROOT/target/callgrind.out"
rm -f "$OUT" "$OUT".*
valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  target/release/gatehouse run -c "$D/gatehouse.toml" >/dev/null 2>&1 & GPID=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null -H "Host: bench.local" http://127.0.0.1:18081/ && break
  sleep 0.3
done
h2load --h1 -n 2000 -c 8 -H "Host: bench.local" http://127.0.0.1:18081/api/x >/dev/null
callgrind_control -z "$GPID" >/dev/null 2>&1
h2load --h1 -n "$N" -c 8 -H "Host: bench.local" http://127.0.0.1:18081/api/x | grep "requests:"
callgrind_control -d "$GPID" >/dev/null 2>&1
for _ in $(seq 1 50); do [ -s "$OUT.1" ] && break; sleep 0.2; done
T=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
echo "instructions per request: $((T / N))"
echo "profile: callgrind_annotate --inclusive=yes $OUT.1"
