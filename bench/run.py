#!/usr/bin/env python3
"""Gatehouse against nginx, side by side, on the same machine, in the same run.

See bench/README.md. Everything targets 127.0.0.1. Prints a Markdown table and writes it to
bench/results/<date>-<host>.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from free_ports import free_port  # bench/free_ports.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
# The Gatehouse binary measured: the PGO build (scripts/pgo-build.sh), as shipped for production,
# or the plain release build with --no-pgo. The examples (upstream, idle client) are plain builds.
GATEHOUSE = ROOT / "target" / "pgo" / "gatehouse"


def pick_ports(preferred):
    """A free loopback port for each preferred one: that port if nothing listens on it, else the
    next free one above it. They stay below the ephemeral range (32768 and up on Linux), where
    the run's own client and upstream connections (tens of thousands a second in scenario 3)
    would take them between rounds."""
    chosen = []
    for want in preferred:
        chosen.append(free_port(want, chosen, want + 2000))
    return chosen


UP, GH_HTTP, GH_HTTPS, GH_ADMIN, NG_HTTP, NG_HTTPS = pick_ports([18080, 18081, 18443, 18901, 18082, 18444])
HOST = "bench.local"
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    need = []
    for tool, pkg in [("nginx", "nginx-light"), ("wrk", "wrk"), ("h2load", "nghttp2-client"), ("openssl", "openssl")]:
        if shutil.which(tool) is None:
            need.append(pkg)
    if need:
        log("installing", " ".join(need))
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=False)
        sh(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + need, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        # The package starts a system nginx on port 80; it is not ours.
        subprocess.run(sudo + ["systemctl", "stop", "nginx"], check=False, stderr=subprocess.DEVNULL)


def build(pgo):
    """Builds the examples and the plain binary, then the PGO binary unless told not to.
    Returns False when the PGO build failed (no llvm-tools, say): the run then measures the
    plain build and its results say so, rather than measuring nothing or a stale binary."""
    log("building gatehouse (release)")
    sh(["cargo", "build", "--release", "--locked", "--bin", "gatehouse", "--example", "bench_upstream", "--example", "bench_idle"], cwd=ROOT)
    if not pgo:
        return True
    log("building gatehouse with profile-guided optimisation (scripts/pgo-build.sh)")
    if subprocess.run([str(ROOT / "scripts" / "pgo-build.sh")], cwd=ROOT).returncode != 0:
        log("warning: the PGO build failed (see above); measuring the plain release build instead")
        return False
    return True


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


class Proc:
    """A proxy under test: its process tree's CPU time and memory."""

    def __init__(self, name, cmd, port, env=None):
        self.name = name
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        wait_port(port)
        time.sleep(0.2)

    def pids(self):
        return [self.p.pid] + children(self.p.pid)

    def cpu(self):
        total = 0
        for pid in self.pids():
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime + stime, plus cutime + cstime: nginx's master reaps the workers a reload
                # replaces, and their CPU time must count too.
                total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if pid == self.p.pid else 0)
            except OSError:
                pass
        return total / TICK

    def mem(self, field):
        kb = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        kb += int(line.split()[1])
            except OSError:
                pass
        return kb

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk(port, path="/", conns=64, secs=10, threads=1, extra_lua="", headers=()):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(extra_lua + WRK_LUA)
        script = f.name
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "-s", script, "-H", f"Host: {HOST}"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    os.unlink(script)
    line = next((l for l in out.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out}")
    req, dur, errs, non2xx, p50, p99, p999 = map(int, line.split()[1:])
    return {"requests": req, "rps": req / (dur / 1e6), "errors": errs + non2xx, "p50": p50 / 1000, "p99": p99 / 1000, "p999": p999 / 1000}


def h2load(port, n=200000, conns=32, streams=10):
    out = subprocess.run(["h2load", "-t1", f"-n{n}", f"-c{conns}", f"-m{streams}", "-H", f":authority: {HOST}", f"https://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    rps = float(next(l for l in out.splitlines() if l.startswith("finished in")).split(",")[1].split()[0])
    status = next(l for l in out.splitlines() if l.startswith("requests:"))
    failed = int(status.split("failed")[0].split(",")[-1].split()[0])
    errored = int(status.split("errored")[0].split(",")[-1].split()[0])
    lat = next(l for l in out.splitlines() if l.strip().startswith("time for request:")).split()
    return {"requests": n, "rps": rps, "errors": failed + errored, "p50": None, "p99": None, "p999": None, "mean_req": lat[5] if len(lat) > 5 else ""}


def s_time(port, secs=10):
    out = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3", "-time", str(secs)], capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if "connections in" in l and "real seconds" in l)
    n, secs_real = line.split()[0], line.split("connections in")[1].split()[0]
    return {"requests": int(n), "rps": int(n) / float(secs_real), "errors": 0, "p50": None, "p99": None, "p999": None}


def measure(proc, run):
    c0 = proc.cpu()
    r = run()
    r["cpu_per_10k"] = (proc.cpu() - c0) / max(r["requests"], 1) * 10000
    r["peak_rss_mb"] = proc.mem("VmHWM") / 1024
    return r


# === configurations ===

def gatehouse_config(d, workers, sites=1, tls=False, log=False):
    lines = ["[server]", f'http = "127.0.0.1:{GH_HTTP}"', f'admin = "127.0.0.1:{GH_ADMIN}"', f"workers = {workers}", 'max_body = "100MiB"', 'idle_timeout = "120s"', "max_connections = 100000"]
    if tls:
        lines.append(f'https = "127.0.0.1:{GH_HTTPS}"')
    if log:
        lines += ["[log]", 'access_log = "/dev/null"']
    for i in range(sites):
        host = HOST if i == sites // 2 or sites == 1 else f"site{i}.example.com"
        lines += ["[[site]]", f'hosts = ["{host}"]']
        if host == HOST:
            # h2load and s_time connect by IP: no SNI, so the default site's certificate.
            lines.append("default = true")
        if tls:
            lines.append(f'tls = {{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}')
        for r in ["/api", "/static", "/admin", "/auth"]:
            lines += ["  [[site.route]]", f'  prefix = "{r}"', f'  upstream = "http://127.0.0.1:{UP}"']
        lines += ["  [[site.route]]", '  prefix = "/"', f'  upstream = "http://127.0.0.1:{UP}"']
    path = Path(d) / "gatehouse.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def nginx_config(d, workers, sites=1, tls=False):
    servers = []
    for i in range(sites):
        host = HOST if i == sites // 2 or sites == 1 else f"site{i}.example.com"
        listen = f"listen 127.0.0.1:{NG_HTTP};"
        if tls:
            listen += f"\n listen 127.0.0.1:{NG_HTTPS} ssl http2;\n ssl_certificate {d}/cert.pem;\n ssl_certificate_key {d}/key.pem;"
        locs = "".join(f" location {r} {{ proxy_pass http://up; }}\n" for r in ["/api/", "/static/", "/admin/", "/auth/", "/"])
        if host == HOST:
            listen = listen.replace(f"listen 127.0.0.1:{NG_HTTP};", f"listen 127.0.0.1:{NG_HTTP} default_server;").replace("ssl http2;", "ssl http2 default_server;")
        servers.append(f"server {{\n {listen}\n server_name {host};\n{locs}}}\n")
    conf = f"""
worker_processes {workers};
worker_rlimit_nofile 200000;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 100000; }}
http {{
  access_log off;
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  client_max_body_size 100m;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  # The forwarding fields Gatehouse sends by default (README, "Coming from nginx"), as the nginx
  # configurations it replaces set them: the same work on both sides (nginx: 17.6k -> 18.8k
  # instructions per request under callgrind, bench/callgrind.sh).
  proxy_set_header X-Forwarded-For $remote_addr;
  proxy_set_header X-Real-IP $remote_addr;
  proxy_set_header X-Forwarded-Proto $scheme;
  proxy_set_header X-Forwarded-Host $host;
  proxy_buffering on;
  ssl_protocols TLSv1.2 TLSv1.3;
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; keepalive_requests 1000000; }}
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
{''.join(servers)}
}}
"""
    path = Path(d) / "nginx.conf"
    path.write_text(conf)
    return path


def start_gatehouse(d, workers, **kw):
    cfg = gatehouse_config(d, workers, **kw)
    return Proc("gatehouse", [str(GATEHOUSE), "run", "-c", str(cfg)], GH_HTTP, env={"RUST_LOG": "error"})


def start_nginx(d, workers, **kw):
    cfg = nginx_config(d, workers, **kw)
    return Proc("nginx", ["nginx", "-p", d, "-c", str(cfg), "-e", f"{d}/error.log", "-g", "daemon off;"], NG_HTTP)


REPEAT = 3


def both(d, workers, fn, tls_port=False, **kw):
    """Runs `fn(proc, port, name)` on Gatehouse, then on nginx, each with `workers` workers, a fresh
    process each time; REPEAT rounds, and every figure is the median of its rounds (errors: the sum;
    peak RSS: the largest), because one round on a shared machine is noise."""
    return interleaved(d, workers, fn, [kw], tls_port)[0]


def interleaved(d, workers, fn, variants, tls_port=False):
    """As `both`, for several configurations (one keyword set each) whose ratio is the figure:
    every round runs every variant, so a machine that slows down during the run (it does, by
    20% within minutes) slows them alike, instead of the first variant's rounds all coming before
    the second's."""
    rounds = [{"gatehouse": [], "nginx": []} for _ in variants]
    for i in range(REPEAT):
        for kw, rs in zip(variants, rounds):
            pair = [("gatehouse", start_gatehouse, GH_HTTPS if tls_port else GH_HTTP),
                    ("nginx", start_nginx, NG_HTTPS if tls_port else NG_HTTP)]
            # Who goes first alternates (A B, B A, ...): whatever the first of a pair meets (the
            # machine settling after the previous scenario, say) falls on both alike.
            if i % 2:
                pair.reverse()
            for name, start, port in pair:
                p = start(d, workers, **kw)
                try:
                    r = fn(p, port, name)
                    rs[name].append(r)
                    # Every round on stderr: the table keeps medians, and the spread is what tells
                    # noise from a difference.
                    what = f" {kw}" if len(variants) > 1 else ""
                    if "kib_per_conn" in r:
                        log(f"  round {len(rs[name])} {name}{what}: {r['kib_per_conn']:.2f} KiB per idle connection")
                    else:
                        p99 = f", p99 {r['p99']:.2f} ms" if r.get("p99") is not None else ""
                        log(f"  round {len(rs[name])} {name}{what}: {r['rps']:.0f} rps, CPU {r.get('cpu_per_10k', 0):.3f} s/10k{p99}")
                finally:
                    p.stop()
                time.sleep(0.5)
    out = [{name: combine(rs) for name, rs in r.items()} for r in rounds]
    for res, r in zip(out, rounds):
        for name, rs in r.items():
            res[name]["rps_rounds"] = [x["rps"] for x in rs]
            res[name]["cpu_rounds"] = [x.get("cpu_per_10k") for x in rs]
            res[name]["p99_rounds"] = [x.get("p99") for x in rs]
    return out


def per_round(top, bottom, key):
    """`top`'s figure over `bottom`'s, round by round (the two run back to back in every round,
    see `interleaved`): what a slow stretch of the machine moves, it moves for both. A median of
    these is steadier than the ratio of two medians taken each on its own when the machine's
    speed drifts from round to round (37k to 50k requests per second for the same binary, one
    day)."""
    return [x / y for x, y in zip(top.get(key) or [], bottom.get(key) or []) if x is not None and y]


def paired_ratio(a, b, name):
    """The median over rounds of b's requests per second over a's (variants from `interleaved`)."""
    return statistics.median(per_round(b[name], a[name], "rps_rounds"))


def round_ratios(g, n, key, higher_is_better):
    """Gatehouse over nginx round by round: the median, the range, and in how many rounds
    Gatehouse was ahead (a count the median hides: with a round-to-round spread of +-20%, a
    median of 1.05 over seven rounds can hold three rounds ahead or none), or None."""
    pairs = per_round(g, n, key)
    if not pairs:
        return None
    ahead = sum(1 for r in pairs if (r > 1 if higher_is_better else r < 1))
    return statistics.median(pairs), min(pairs), max(pairs), ahead, len(pairs)


def combine(rs):
    out = {}
    for k, v in rs[0].items():
        vals = [r[k] for r in rs]
        if k == "errors":
            out[k] = sum(vals)
        elif k == "peak_rss_mb":
            out[k] = max(vals)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(vals)
        else:
            out[k] = v
    return out


def make_cert(d):
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "30", "-nodes",
        "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
        # Not a CA: bench_idle trusts this very certificate as its root, and webpki refuses a
        # CA certificate as the server's own.
        "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


UPLOAD_LUA = """
wrk.method = "POST"
wrk.path = "/upload"
wrk.body = string.rep("x", 10 * 1024 * 1024)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--secs", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers to run (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per scenario; figures are medians")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-pgo", action="store_true", help="measure the plain release build, not the PGO build (scripts/pgo-build.sh)")
    args = ap.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)
    only = set(args.only.split(",")) if args.only else None
    want = lambda n: only is None or str(n) in only
    ensure_tools()
    global GATEHOUSE
    if not args.no_build and not build(not args.no_pgo):
        args.no_pgo = True
    if args.no_pgo:
        GATEHOUSE = REL / "gatehouse"
    if not GATEHOUSE.exists():
        sys.exit(f"no {GATEHOUSE}: run without --no-build")
    try:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        log("warning: cannot raise the open-files limit; scenario 5 may fail")
    d = tempfile.mkdtemp(prefix="gatehouse-bench-")
    # nginx's workers run as nobody when started by root: they must write request bodies here.
    os.chmod(d, 0o777)
    make_cert(d)
    upstream = subprocess.Popen([str(REL / "examples" / "bench_upstream"), f"127.0.0.1:{UP}", "1"])
    wait_port(UP)
    rows = []
    S = args.secs

    def row(scenario, res, note=""):
        rows.append((scenario, res["gatehouse"], res["nginx"], note))
        g, n = res["gatehouse"], res["nginx"]
        log(f"{scenario}: gatehouse {g['rps']:.0f} rps, nginx {n['rps']:.0f} rps, ratio {g['rps'] / max(n['rps'], 1e-9):.2f}")

    try:
        if want(1):
            for w in (1, 2):
                row(f"1. h1 keep-alive, small, {w} worker{'s' if w > 1 else ''}", both(d, w, lambda p, port, _n: measure(p, lambda: wrk(port, "/", 64, S)), tls=False))
        if want(2):
            row("2a. h1 keep-alive, 64 KiB response", both(d, 1, lambda p, port, _n: measure(p, lambda: wrk(port, "/bytes/65536", 32, S))))
            row("2b. h1 keep-alive, 1 MiB response", both(d, 1, lambda p, port, _n: measure(p, lambda: wrk(port, "/bytes/1048576", 16, S))))
            row("2c. h1 10 MiB upload", both(d, 1, lambda p, port, _n: measure(p, lambda: wrk(port, "/upload", 8, S, extra_lua=UPLOAD_LUA))))
        if want(3):
            row("3. new connection per request", both(d, 1, lambda p, port, _n: measure(p, lambda: wrk(port, "/", 32, S, headers=["Connection: close"]))))
        if want(4):
            row("4a. TLS 1.3 + h2 (h2load), ECDSA P-256", both(d, 1, lambda p, port, _n: measure(p, lambda: h2load(port, n=50000 * S // 10)), tls_port=True, tls=True))
            row("4b. TLS 1.3 full handshakes/s (openssl s_time -new)", both(d, 1, lambda p, port, _n: measure(p, lambda: s_time(port, S)), tls_port=True, tls=True))
        if want(5):
            def idle(n, tls_alpn=None):
                """Holds `n` connections (TLS with this ALPN when given) and reads the proxy's
                resident memory before and after."""
                extra = [tls_alpn, f"{d}/cert.pem"] if tls_alpn else []

                def run(p, port, _name):
                    def hold(count):
                        """bench_idle holding `count` connections until its stdin closes."""
                        return subprocess.Popen([str(REL / "examples" / "bench_idle"), f"127.0.0.1:{port}", str(count), HOST, *extra],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

                    # Warm up first (a few connections, opened and closed), so the figure is the
                    # cost of a connection and not the proxy's one-time set-up on its first ones.
                    warm = hold(200)
                    warm.stdout.readline()
                    warm.stdin.close()
                    warm.wait()
                    time.sleep(1)
                    before = p.mem("VmRSS")
                    held = hold(n)
                    status = held.stdout.readline().split()
                    time.sleep(1)
                    after = p.mem("VmRSS")
                    held.stdin.close()
                    held.wait()
                    opened = int(status[1])
                    return {"requests": opened, "rps": 0, "errors": int(status[3]), "p50": None, "p99": None, "p999": None,
                            "cpu_per_10k": 0, "peak_rss_mb": after / 1024, "kib_per_conn": (after - before) / max(opened, 1)}
                return run

            for name, n, kw in [("5. 10,000 idle keep-alive connections", 10000, {}),
                                # What browsers hold open: TLS, mostly h2. 2,000, as a
                                # handshake each costs the client as much as the proxy.
                                ("5b. 2,000 idle TLS connections, HTTP/1.1", 2000, {"tls_alpn": "http/1.1"}),
                                ("5c. 2,000 idle TLS connections, h2 (one request each)", 2000, {"tls_alpn": "h2"})]:
                tls = "tls_alpn" in kw
                res = both(d, 1, idle(n, **kw), tls_port=tls, tls=tls)
                rows.append((name, res["gatehouse"], res["nginx"], "memory"))
                log(f"{name}: gatehouse {res['gatehouse']['kib_per_conn']:.1f} KiB/conn, nginx {res['nginx']['kib_per_conn']:.1f} KiB/conn")
        if want(6):
            # The two tables' rounds alternate (see `interleaved`): their ratio is the figure.
            one, many = interleaved(d, 1, lambda p, port, _n: measure(p, lambda: wrk(port, "/api/x", 64, S)),
                                    [{"sites": 1}, {"sites": 10000}])
            row("6a. route table: 1 site", one)
            row("6b. route table: 10,000 sites", many,
                "10k/1, the median of the rounds' ratios (each round runs both tables): "
                f"gatehouse {paired_ratio(one, many, 'gatehouse'):.3f}, nginx {paired_ratio(one, many, 'nginx'):.3f}; "
                f"ratio of the medians: gatehouse {many['gatehouse']['rps'] / one['gatehouse']['rps']:.3f}, "
                f"nginx {many['nginx']['rps'] / one['nginx']['rps']:.3f}")
        if want(7):
            import threading

            def reloading(p, port, name):
                stop = [False]
                reloads = [0]

                def reloader():
                    cfg = Path(d) / ("gatehouse.toml" if name == "gatehouse" else "nginx.conf")
                    text = cfg.read_text()
                    while not stop[0]:
                        time.sleep(0.1)
                        reloads[0] += 1
                        cfg.write_text(text + f"\n# reload {reloads[0]}\n")
                        if name == "gatehouse":
                            p.p.send_signal(signal.SIGHUP)
                        else:
                            subprocess.run(["nginx", "-p", d, "-c", str(cfg), "-s", "reload"], stderr=subprocess.DEVNULL)

                t = threading.Thread(target=reloader)
                t.start()
                try:
                    r = measure(p, lambda: wrk(port, "/", 64, S))
                finally:
                    stop[0] = True
                    t.join()
                r["reloads"] = reloads[0]
                return r

            res = both(d, 1, reloading)
            row("7. reload every 100 ms during load", res, f"reloads per round (median): gatehouse {res['gatehouse']['reloads']:.0f}, nginx {res['nginx']['reloads']:.0f}; errors summed over rounds")
    finally:
        upstream.terminate()
    report = render(rows, args)
    print(report)
    host = platform.node() or "host"
    out = ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}-{host}.md"
    out.write_text(report)
    log(f"wrote {out}")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def ratio(g, n):
    if g is None or n is None or n == 0:
        return "-"
    return f"{g / n:.2f}"


def render(rows, args):
    ver = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    head = [
        f"# Gatehouse vs nginx, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu_model()}; {platform.system()} {platform.release()}. {ver}. "
        f"Load from wrk/h2load/openssl on the same machine; {args.secs}s per measurement; rounds per scenario: {args.repeat} "
        f"(figures are medians of the rounds; errors summed; peak RSS the largest); upstream: bench_upstream (1 thread). "
        f"Gatehouse: {'plain release build' if args.no_pgo else 'release build with profile-guided optimisation (scripts/pgo-build.sh)'}; nginx: the distribution's package, "
        f"setting the forwarding fields Gatehouse sends by default (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host).",
        "",
        "| scenario | metric | gatehouse | nginx | gatehouse / nginx |",
        "|---|---|---:|---:|---:|",
    ]
    body = []
    for scenario, g, n, note in rows:
        if "kib_per_conn" in g:
            body.append(f"| {scenario} | RSS per idle connection (KiB) | {g['kib_per_conn']:.1f} | {n['kib_per_conn']:.1f} | {ratio(g['kib_per_conn'], n['kib_per_conn'])} |")
            body.append(f"| | connections held / failed | {g['requests']:.0f} / {g['errors']} | {n['requests']:.0f} / {n['errors']} | |")
            continue
        body.append(f"| {scenario} | requests/s | {fmt(g['rps'])} | {fmt(n['rps'])} | {ratio(g['rps'], n['rps'])} |")
        if g.get("p50") is not None:
            body.append(f"| | p50 / p99 / p99.9 (ms) | {g['p50']:.2f} / {g['p99']:.2f} / {g['p999']:.2f} | {n['p50']:.2f} / {n['p99']:.2f} / {n['p999']:.2f} | {ratio(g['p99'], n['p99'])} (p99) |")
        body.append(f"| | CPU s per 10k requests | {g['cpu_per_10k']:.3f} | {n['cpu_per_10k']:.3f} | {ratio(g['cpu_per_10k'], n['cpu_per_10k'])} |")
        body.append(f"| | peak RSS (MiB) / errors | {g['peak_rss_mb']:.1f} / {g['errors']} | {n['peak_rss_mb']:.1f} / {n['errors']} | |")
        if note:
            body.append(f"| | | {note} | | |")
    paired = [
        "",
        "Round by round: Gatehouse / nginx within each round, the median of the rounds, their range,",
        "and the rounds in which Gatehouse was ahead (more requests per second, less CPU, lower p99).",
        "",
        "| scenario | requests/s | CPU per request | p99 |",
        "|---|---:|---:|---:|",
    ]
    for scenario, g, n, _ in rows:
        cells = []
        for key, higher_is_better in (("rps_rounds", True), ("cpu_rounds", False), ("p99_rounds", False)):
            r = round_ratios(g, n, key, higher_is_better)
            cells.append("-" if r is None else f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f}), {r[3]} of {r[4]}")
        if cells[:2] != ["-", "-"]:
            paired.append(f"| {scenario} | {' | '.join(cells)} |")
    return "\n".join(head + body + paired) + "\n"


if __name__ == "__main__":
    main()
