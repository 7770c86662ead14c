#!/usr/bin/env python3
"""Prints COUNT loopback ports that are free now, the first at or above FROM.

Usage: bench/free_ports.py COUNT FROM

The ports are picked below the ephemeral range (32768 and up on Linux), as bench/run.py picks
its own: a port from bind(:0) is an ephemeral one, and a connection still closing from a
previous run can hold it, so an upstream's bind then fails. Used by bench/callgrind.sh and
scripts/pgo-build.sh, and imported by bench/run.py.
"""

import socket
import sys


def is_free(port):
    """Nothing holds `port` on 127.0.0.1 now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start, taken=(), span=32768):
    """The first free loopback port at or above `start` that is not in `taken`, below `span`."""
    for port in range(start, span):
        if port not in taken and is_free(port):
            return port
    sys.exit(f"no free loopback port from {start} up")


def main():
    count, start = int(sys.argv[1]), int(sys.argv[2])
    ports = []
    for _ in range(count):
        ports.append(free_port(ports[-1] + 1 if ports else start))
    print(*ports)


if __name__ == "__main__":
    main()
