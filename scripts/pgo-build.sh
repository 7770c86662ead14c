#!/bin/bash
# Builds the production binary with profile-guided optimisation (PGO): target/pgo/gatehouse.
#
#   scripts/pgo-build.sh                               # then, for the service:
#   sudo systemd/install.sh --binary target/pgo/gatehouse
#   (or both at once: sudo systemd/install.sh --pgo)
#
# Why: a proxy's hot path is a few thousand instructions spread over hyper, tokio, rustls and our
# own code. Without a profile the compiler lays that code out and inlines it blind; with one it
# puts the hot path together and the cold paths (errors, config) out of the way. Measured with
# callgrind on a small keep-alive request: 18.6k instructions and 1,290 instruction-cache misses
# per request plain, 14.5k and under 500 with PGO (bench/README.md).
#
# How: (1) build an instrumented binary; (2) run it on loopback under a mixed load: HTTP/1.1
# keep-alive and a new connection per request, small and large responses, uploads, TLS 1.3 with
# HTTP/2 and HTTP/1.1, full handshakes, and the Clerk, static and redirect targets (a path the
# training never takes is compiled as cold: small, not fast); (3) merge the counts; (4) build
# again with them, and check the result serves. Takes about two plain builds plus half a minute. The profile only steers layout and inlining: the
# binary behaves the same whatever the load was (same code, same tests).
#
# Needs: the llvm-tools component matching rustc (`rustup component add llvm-tools`, done here if
# missing), and wrk, h2load (nghttp2-client), curl, openssl (installed with apt-get if missing).
# Everything it starts listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
HOST_TRIPLE=$(rustc -vV | awk '/^host:/{print $2}')
OUT="$ROOT/target/pgo"
PROFILES="$OUT/profiles"

say() { echo "pgo-build: $*" >&2; }
# Whether URL answers with a 2xx within 10 s (a process just started: polled, it has no
# readiness signal to wait on).
answers() {
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}

# Tools. llvm-profdata must come from the same LLVM as rustc: profile formats differ by version.
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST_TRIPLE/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  say "adding the llvm-tools component (for llvm-profdata)"
  rustup component add llvm-tools >&2 || true
fi
[ -x "$PROFDATA" ] || { say "no $PROFDATA: install the llvm-tools component for $(rustc -V)"; exit 1; }
need=()
for t in wrk:wrk h2load:nghttp2-client curl:curl openssl:openssl; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# 1. Instrumented build, with exactly the optimised build's crate graph: an example in the same
# command would bring in dev-dependencies, change dependencies' features and so their symbol
# names, and the profile would then match almost nothing (measured: 17.5k instructions per
# request instead of 14.5k). `--target` keeps RUSTFLAGS off build scripts and proc macros, which
# would otherwise be instrumented too and write profiles of their own.
say "1/4 instrumented build"
rm -rf "$PROFILES"; mkdir -p "$PROFILES"
RUSTFLAGS="-Cprofile-generate=$PROFILES" cargo build --release --locked --target "$HOST_TRIPLE" \
  --target-dir "$OUT/instrumented" --bin gatehouse >&2
# The training upstream: a plain build, where bench/run.py builds it too.
cargo build --release --locked --example bench_upstream >&2

# 2. Training run, on loopback ports free now (below the ephemeral range, as bench/run.py picks).
say "2/4 training run"
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"' EXIT
read -r UP HTTP HTTPS < <(python3 "$ROOT/bench/free_ports.py" 3 18280)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=train.local \
  -addext subjectAltName=DNS:train.local -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat > "$W/gatehouse.toml" <<TOML
[server]
http = "127.0.0.1:$HTTP"
https = "127.0.0.1:$HTTPS"
workers = 1
max_body = "100MiB"
# Made-up keys: the Clerk route's Frontend API is the local upstream.
[clerk]
publishable_key = "pk_live_Y2xlcmsuZXhhbXBsZS5jb20k"
secret_key = { env = "TRAINING_CLERK_SECRET_KEY" }
fapi_url = "http://127.0.0.1:$UP/"
[[site]]
hosts = ["train.local"]
default = true
tls = { cert = "$W/cert.pem", key = "$W/key.pem" }
  [[site.route]]
  prefix = "/__clerk"
  clerk = true
  [[site.route]]
  prefix = "/assets"
  static = { root = "$W/public" }
  strip_prefix = true
  [[site.route]]
  exact = "/old"
  redirect = { to = "https://\$host/new", status = 301 }
  [[site.route]]
  prefix = "/api"
  upstream = "http://127.0.0.1:$UP"
  strip_prefix = true
  [[site.route]]
  prefix = "/"
  upstream = "http://127.0.0.1:$UP"
TOML
mkdir -p "$W/public"
head -c 20000 /dev/zero | tr '\0' 'x' > "$W/public/app.js"
"$ROOT/target/release/examples/bench_upstream" "127.0.0.1:$UP" 1 >/dev/null 2>&1 &
PIDS+=($!)
LLVM_PROFILE_FILE="$PROFILES/gatehouse-%p.profraw" RUST_LOG=error TRAINING_CLERK_SECRET_KEY=sk_live_training \
  "$OUT/instrumented/$HOST_TRIPLE/release/gatehouse" run -c "$W/gatehouse.toml" >/dev/null 2>&1 &
GH=$!
PIDS+=($GH)
answers "http://127.0.0.1:$HTTP/" || { say "the instrumented gatehouse did not answer"; exit 1; }
H="http://127.0.0.1:$HTTP"
wrk -t1 -c64 -d4s "$H/" >/dev/null
wrk -t1 -c64 -d2s -H "X-Request: one" "$H/api/items?page=2" >/dev/null
wrk -t1 -c32 -d2s -H "Connection: close" "$H/" >/dev/null
# The other targets, less often, as a site's traffic would have them: Clerk, files, redirects.
wrk -t1 -c16 -d1s -H "Cookie: __session=x" "$H/__clerk/v1/client?_clerk_js_version=5" >/dev/null
wrk -t1 -c16 -d1s "$H/assets/app.js" >/dev/null
wrk -t1 -c8 -d1s "$H/old" >/dev/null
wrk -t1 -c16 -d2s "$H/bytes/65536" >/dev/null
wrk -t1 -c4 -d2s "$H/bytes/1048576" >/dev/null
head -c 10485760 /dev/zero > "$W/upload"
for _ in 1 2 3 4 5; do curl -sf -o /dev/null -T "$W/upload" "$H/upload"; done
h2load -t1 -n60000 -c32 -m10 "https://127.0.0.1:$HTTPS/" >/dev/null
h2load -t1 -n20000 -c16 --h1 "https://127.0.0.1:$HTTPS/" >/dev/null
openssl s_time -connect "127.0.0.1:$HTTPS" -new -tls1_3 -time 2 >/dev/null 2>&1 || true
# A clean exit writes the profile.
kill -TERM "$GH"
wait "$GH" || true
ls "$PROFILES"/gatehouse-*.profraw >/dev/null 2>&1 || { say "the training run wrote no profile"; exit 1; }

# 3. Merge.
say "3/4 merging the profile"
"$PROFDATA" merge -o "$OUT/gatehouse.profdata" "$PROFILES"/gatehouse-*.profraw

# 4. Optimised build.
say "4/4 optimised build"
RUSTFLAGS="-Cprofile-use=$OUT/gatehouse.profdata" cargo build --release --locked \
  --target "$HOST_TRIPLE" --target-dir "$OUT/optimized" --bin gatehouse >&2
# A last look: the optimised binary serves the training config over HTTP and HTTPS (the upstream
# still runs). Only then does it replace target/pgo/gatehouse.
NEW="$OUT/optimized/$HOST_TRIPLE/release/gatehouse"
RUST_LOG=error TRAINING_CLERK_SECRET_KEY=sk_live_training "$NEW" run -c "$W/gatehouse.toml" >/dev/null 2>&1 &
GH=$!
PIDS+=($GH)
answers "http://127.0.0.1:$HTTP/api/x" &&
  curl -sf -o /dev/null "http://127.0.0.1:$HTTP/__clerk/v1/client" &&
  curl -sf -o /dev/null "http://127.0.0.1:$HTTP/assets/app.js" &&
  curl -sfk -o /dev/null --resolve "train.local:$HTTPS:127.0.0.1" "https://train.local:$HTTPS/" ||
  { say "the optimised binary did not serve the training config"; exit 1; }
kill -TERM "$GH"
wait "$GH" || true
cp "$NEW" "$OUT/gatehouse"
say "done: $OUT/gatehouse"
