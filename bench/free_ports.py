#!/usr/bin/env python3
"""Prints COUNT loopback ports that are free now, the first at or above FROM.

Usage: bench/free_ports.py COUNT FROM

The ports are picked below the ephemeral range (32768 and up on Linux), as bench/run.py picks
its own: a port from bind(:0) is an ephemeral one, and a connection still closing from a
previous run can hold it, so an upstream's bind then fails. Used by bench/callgrind.sh and
scripts/pgo-build.sh.
"""

import socket
import sys


def main():
    count, start = int(sys.argv[1]), int(sys.argv[2])
    ports = []
    for port in range(start, 32768):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            print(*ports)
            return
    sys.exit(f"fewer than {count} free loopback ports from {start} up")


if __name__ == "__main__":
    main()
