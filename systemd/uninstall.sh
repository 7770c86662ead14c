#!/usr/bin/env bash
# Undoes systemd/install.sh: stops and disables the service, removes the unit and the binary.
# The config folder /etc/gatehouse and the user are kept unless --purge is given.
#
#   sudo systemd/uninstall.sh [--purge]
#   systemd/uninstall.sh --root DIR [--purge]     # the staged layout of install.sh --root
set -euo pipefail

root=""
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if [ -z "$root" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "uninstall.sh: run as root (sudo)" >&2; exit 1; fi
  systemctl disable --now gatehouse.service 2>/dev/null || true
fi
rm -f "$root/etc/systemd/system/gatehouse.service" "$root/usr/local/bin/gatehouse"
rm -rf "$root/usr/local/share/doc/gatehouse"
if [ -z "$root" ]; then systemctl daemon-reload; fi
if [ "$purge" -eq 1 ]; then
  rm -rf "$root/etc/gatehouse"
  if [ -z "$root" ]; then
    userdel gatehouse 2>/dev/null || true
    groupdel gatehouse 2>/dev/null || true
    rm -rf /var/log/gatehouse
  fi
fi
echo "uninstalled${root:+ from $root}"
