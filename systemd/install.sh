#!/usr/bin/env bash
# Installs Gatehouse as a systemd service, from a fresh machine to a running service:
#   binary -> /usr/local/bin/gatehouse, user and group `gatehouse`, config folder /etc/gatehouse,
#   unit -> /etc/systemd/system/gatehouse.service, then enable and start it.
#
#   sudo systemd/install.sh                 # build in release mode and install
#   sudo systemd/install.sh --binary PATH   # install a binary you already built
#   sudo systemd/install.sh --pgo           # build with profile-guided optimisation (scripts/pgo-build.sh)
#   systemd/install.sh --root DIR           # stage into DIR only (no user, no systemctl): for packaging and tests
#
# An existing /etc/gatehouse/gatehouse.toml is never overwritten. Undo with systemd/uninstall.sh.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
root=""
binary=""
pgo=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --pgo) pgo=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or use --root DIR to stage files" >&2
  exit 1
fi

if [ -z "$binary" ] && [ -n "$pgo" ]; then
  "$repo/scripts/pgo-build.sh"
  binary="$repo/target/pgo/gatehouse"
elif [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked)
  binary="$repo/target/release/gatehouse"
fi

install -d "$root/usr/local/bin" "$root/etc/gatehouse" "$root/etc/gatehouse/credentials" \
  "$root/etc/systemd/system" "$root/usr/local/share/doc/gatehouse"
install -m 0755 "$binary" "$root/usr/local/bin/gatehouse"
install -m 0644 "$here/gatehouse.service" "$root/etc/systemd/system/gatehouse.service"
install -m 0644 "$repo/README.md" "$root/usr/local/share/doc/gatehouse/README.md"
if [ ! -e "$root/etc/gatehouse/gatehouse.toml" ]; then
  install -m 0640 "$repo/config/gatehouse.toml" "$root/etc/gatehouse/gatehouse.toml"
fi
if [ ! -e "$root/etc/gatehouse/env" ]; then
  printf '# Environment for gatehouse.service, e.g.\n# CLERK_SECRET_KEY=sk_live_...\n# CLERK_PUBLISHABLE_KEY=pk_live_...\n# RUST_LOG=info\n' > "$root/etc/gatehouse/env"
  chmod 0640 "$root/etc/gatehouse/env"
fi
# LoadCredential= needs the file to exist; an empty one is fine until a Clerk route uses it.
if [ ! -e "$root/etc/gatehouse/credentials/clerk-secret-key" ]; then
  : > "$root/etc/gatehouse/credentials/clerk-secret-key"
  chmod 0600 "$root/etc/gatehouse/credentials/clerk-secret-key"
fi

if [ -n "$root" ]; then
  echo "staged into $root"
  exit 0
fi

if ! getent group gatehouse >/dev/null; then groupadd --system gatehouse; fi
if ! getent passwd gatehouse >/dev/null; then
  useradd --system --gid gatehouse --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin gatehouse
fi
chgrp gatehouse /etc/gatehouse /etc/gatehouse/gatehouse.toml /etc/gatehouse/env
chmod 0750 /etc/gatehouse

/usr/local/bin/gatehouse check -c /etc/gatehouse/gatehouse.toml
systemctl daemon-reload
systemctl enable --now gatehouse.service
systemctl --no-pager status gatehouse.service || true
echo "installed: edit /etc/gatehouse/gatehouse.toml (changes apply on save), logs: journalctl -u gatehouse"
