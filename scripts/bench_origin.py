#!/usr/bin/env python3
"""The kafka-hls origin against nginx on one HLS tree, with wrk (run by scripts/bench_origin.sh,
which installs wrk and nginx, raises the open-files limit and builds the tree).

  bench_origin.py BINARY TREE NGINX

Starts nginx (its own config, pid, logs and temp paths in a temp dir; 2 workers, sendfile) and
`BINARY serve TREE`, checks that both answer a playlist and a segment with the file's exact bytes,
then runs each workload against nginx and the origin in turn (ROUNDS rounds, 2 s warm-up before each
run) and prints medians: req/s, MB/s, latency p50/p99, errors (socket connect/read/write, non-2xx/3xx)
and timeouts, summed over rounds, and the origin's peak RSS (VmHWM). Targets: origin req/s >= nginx
req/s (informational). Exits non-zero if a server does not start, answers wrongly or dies, or wrk
fails; never because of a target.

Environment: KHLS_BENCH_ORIGIN_ROUNDS (2), KHLS_BENCH_ORIGIN_DURATION (10 s per run),
KHLS_BENCH_ORIGIN_WARMUP (2 s), KHLS_BENCH_ORIGIN_JSON (also write the raw runs to this file),
KHLS_BENCH_ORIGIN_KEEP=1 (keep the temp dir: nginx config and logs, origin log, every wrk report).
"""
import glob, json, os, re, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "wrk", "paths.lua")
ROUNDS = int(os.environ.get("KHLS_BENCH_ORIGIN_ROUNDS", "2"))
DURATION = int(os.environ.get("KHLS_BENCH_ORIGIN_DURATION", "10"))
WARMUP = int(os.environ.get("KHLS_BENCH_ORIGIN_WARMUP", "2"))

# name, what the paths are, wrk arguments (besides -d, -s and the URL)
WORKLOADS = [
    ("segments", "video segments (~3.7 MB .ts)", ["-t2", "-c200", "--latency", "--timeout", "10s"]),
    ("playlists", "media playlists (.m3u8)", ["-t2", "-c1000", "--latency"]),
]


def say(msg):
    print(f"bench-origin: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_answers(url, proc, log, name, timeout=30):
    deadline = time.monotonic() + timeout
    err = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench-origin: {name} exited {proc.returncode} at start:\n{tail(log)}")
        try:
            status, _ = fetch(url, timeout=2)
            if status == 200:
                return
            err = f"HTTP {status}"
        except OSError as e:
            err = e
        time.sleep(0.1)
    raise SystemExit(f"bench-origin: {name} does not answer {url} within {timeout} s ({err}):\n{tail(log)}")


def tail(path, n=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def vm_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def children(pid):
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZES = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def parse_wrk_text(text):
    """wrk's own report (fallback if the script's WRK_JSON line is missing)."""
    def num(pattern, conv=float, default=0):
        m = re.search(pattern, text, re.M)
        return conv(m.group(1)) if m else default

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s|m|h)\s*$", text, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] * 1e6 if m else float("nan")

    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+)(B|KB|MB|GB|TB) read", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T, B read' line")
    secs = float(m.group(2)) * UNITS[m.group(3)]
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    c, r, w, t = (int(x) for x in se.groups()) if se else (0, 0, 0, 0)
    return {"duration_us": secs * 1e6, "requests": int(m.group(1)),
            "bytes": float(m.group(4)) * SIZES[m.group(5)], "connect": c, "read": r, "write": w, "timeout": t,
            "status": num(r"Non-2xx or 3xx responses: (\d+)", int), "p50_us": lat(50), "p99_us": lat(99)}


def run_wrk(url, paths_file, args, duration, log):
    env = dict(os.environ, WRK_PATHS=paths_file)
    cmd = ["wrk", *args, f"-d{duration}s", "-s", LUA, url]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench-origin: wrk did not finish: {' '.join(cmd)}")
    with open(log, "a") as f:
        f.write(f"$ WRK_PATHS={paths_file} {' '.join(cmd)}\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise SystemExit(f"bench-origin: wrk exited {r.returncode}: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    m = re.search(r"^WRK_JSON (\{.*\})$", r.stdout, re.M)
    res = json.loads(m.group(1)) if m else parse_wrk_text(r.stdout)
    secs = res["duration_us"] / 1e6
    res["rps"] = res["requests"] / secs if secs else 0.0
    res["mbps"] = res["bytes"] / secs / 1e6 if secs else 0.0
    res["socket_errors"] = res["connect"] + res["read"] + res["write"]
    # Cross-check against wrk's printed figure (the script's numbers are exact, wrk's are rounded).
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", r.stdout, re.M)
    if m and res["rps"] > 10 and abs(float(m.group(1)) - res["rps"]) > 0.05 * res["rps"]:
        raise SystemExit(f"bench-origin: wrk's Requests/sec {m.group(1)} disagrees with {res['rps']:.1f}")
    return res


NGINX_CONF = """\
worker_processes 2;
worker_rlimit_nofile {nofile};
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
user root;
events {{ worker_connections 8192; }}
http {{
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75;
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; text/vtt vtt; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def check_serves(base, tree, rel, name):
    """The server answers 200 with the file's exact bytes."""
    try:
        status, body = fetch(base + rel, timeout=10)
    except OSError as e:
        raise SystemExit(f"bench-origin: {name}: GET {rel} failed: {e}")
    with open(os.path.join(tree, rel.lstrip("/")), "rb") as f:
        want = f.read()
    if status != 200 or body != want:
        raise SystemExit(f"bench-origin: {name}: GET {rel} gave HTTP {status}, {len(body)} bytes "
                         f"({'same' if body == want else 'not the'} bytes of the {len(want)}-byte file)")


def main():
    binary, tree, nginx = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else nofile

    video = sorted(glob.glob(os.path.join(tree, "movie", "v*", "video-*", "seg-*.ts")))
    playlists = sorted(glob.glob(os.path.join(tree, "movie", "v*", "*", "index.m3u8")))
    if not video or not playlists:
        raise SystemExit(f"bench-origin: no video segments or media playlists under {tree}/movie")
    video_dirs = {os.path.dirname(p) for p in video}
    if len(video_dirs) > 1:  # a ladder: take the first video rendition's segments
        first = sorted(video_dirs)[0]
        video = [p for p in video if os.path.dirname(p) == first]
    rel = lambda p: "/" + os.path.relpath(p, tree)
    seg_mb = sum(os.path.getsize(p) for p in video) / len(video) / 1e6

    tmp = tempfile.mkdtemp(prefix="khls-bench-origin-", dir=os.environ.get("KHLS_BENCH_TMP"))
    procs = {}
    try:
        lists = {}
        for name, paths in (("segments", video), ("playlists", playlists)):
            lists[name] = os.path.join(tmp, f"{name}.txt")
            with open(lists[name], "w") as f:
                f.write("".join(rel(p) + "\n" for p in paths))

        # nginx
        nport, oport = free_port(), free_port()
        while oport == nport:
            oport = free_port()
        ndir = os.path.join(tmp, "nginx")
        os.makedirs(ndir)
        conf = os.path.join(ndir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(nofile=nofile, tmp=ndir, port=nport, root=tree))
        nlog = os.path.join(ndir, "nginx.out")
        t = subprocess.run([nginx, "-t", "-q", "-p", ndir, "-e", os.path.join(ndir, "error.log"), "-c", conf,
                            "-g", "daemon off; master_process on;"], capture_output=True, text=True)
        if t.returncode != 0:
            raise SystemExit(f"bench-origin: nginx -t refuses the config:\n{t.stdout}{t.stderr}")
        with open(nlog, "w") as lf:
            procs["nginx"] = subprocess.Popen([nginx, "-p", ndir, "-e", os.path.join(ndir, "error.log"), "-c", conf,
                                               "-g", "daemon off; master_process on;"], stdout=lf, stderr=lf)
        # the origin
        olog = os.path.join(tmp, "origin.log")
        with open(olog, "w") as lf:
            procs["origin"] = subprocess.Popen([binary, "serve", tree, "--port", str(oport), "--bind", "127.0.0.1"],
                                               stdout=lf, stderr=lf)
        logs = {"nginx": os.path.join(ndir, "error.log"), "origin": olog}
        bases = {"nginx": f"http://127.0.0.1:{nport}", "origin": f"http://127.0.0.1:{oport}"}
        for name in ("nginx", "origin"):
            wait_answers(bases[name] + rel(playlists[0]), procs[name], logs[name], name)
            check_serves(bases[name], tree, rel(playlists[0]), name)
            check_serves(bases[name], tree, rel(video[len(video) // 2]), name)
        say(f"nginx {nginx} on :{nport} (pid {procs['nginx'].pid}), origin {binary} serve on :{oport} "
            f"(pid {procs['origin'].pid}); {len(video)} video segments ({seg_mb:.1f} MB each), "
            f"{len(playlists)} media playlists; open files {nofile}")

        wlog = os.path.join(tmp, "wrk.log")
        runs = {}
        for wname, what, args in WORKLOADS:
            for r in range(1, ROUNDS + 1):
                for server in ("nginx", "origin"):
                    say(f"{wname}: {server}, round {r}/{ROUNDS} ({WARMUP} s warm-up + {DURATION} s)")
                    if WARMUP > 0:
                        run_wrk(bases[server], lists[wname], args, WARMUP, wlog)
                    res = run_wrk(bases[server], lists[wname], args, DURATION, wlog)
                    if procs[server].poll() is not None:
                        raise SystemExit(f"bench-origin: {server} died during {wname} "
                                         f"(exit {procs[server].returncode}):\n{tail(logs[server])}")
                    runs.setdefault((wname, server), []).append(res)
                    say(f"  {res['rps']:9.1f} req/s {res['mbps']:8.1f} MB/s, p50 {res['p50_us'] / 1000:.1f} ms, "
                        f"p99 {res['p99_us'] / 1000:.1f} ms, socket errors {res['socket_errors']}, "
                        f"timeouts {res['timeout']}, non-2xx/3xx {res['status']}")
        # Peak RSS: the origin process; nginx's master and workers added up.
        rss_origin = vm_kb(procs["origin"].pid, "VmHWM")
        npids = [procs["nginx"].pid] + children(procs["nginx"].pid)
        rss_nginx = sum(vm_kb(p, "VmHWM") or 0 for p in npids)
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        keep = os.environ.get("KHLS_BENCH_ORIGIN_KEEP")
        if keep:
            say(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if os.environ.get("KHLS_BENCH_ORIGIN_JSON"):
        with open(os.environ["KHLS_BENCH_ORIGIN_JSON"], "w") as f:
            json.dump({"runs": {f"{w}/{s}": v for (w, s), v in runs.items()}, "rss_origin_kb": rss_origin,
                       "rss_nginx_kb": rss_nginx}, f)

    med = statistics.median
    ok = lambda cond: "PASS" if cond else "MISS"
    print(f"origin vs nginx: {len(video)} video segments of {seg_mb:.1f} MB and {len(playlists)} media playlists, "
          f"wrk on the same {os.cpu_count()} cores; {ROUNDS} rounds of {DURATION} s, alternating, medians "
          f"(errors and timeouts: sums)")
    print(f"  {'workload':<28} {'server':<7} {'req/s':>9} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'timeouts':>8}")
    for wname, what, args in WORKLOADS:
        conns = next(a for a in args if a.startswith("-c"))[2:]
        rps = {}
        for server in ("nginx", "origin"):
            xs = runs[(wname, server)]
            rps[server] = med(x["rps"] for x in xs)
            label = f"{wname} ({conns} conns)" if server == "nginx" else ""
            print(f"  {label:<28} {server:<7} {rps[server]:9.1f} {med(x['mbps'] for x in xs):8.1f} "
                  f"{med(x['p50_us'] for x in xs) / 1000:8.2f} {med(x['p99_us'] for x in xs) / 1000:8.2f} "
                  f"{sum(x['socket_errors'] + x['status'] for x in xs):7d} {sum(x['timeout'] for x in xs):8d}")
        ratio = rps["origin"] / rps["nginx"] if rps["nginx"] else float("nan")
        print(f"  {'':<28} origin/nginx req/s {ratio:.2f}   target >= 1.0  {ok(ratio >= 1.0)}")
    print("  errors: socket connect/read/write errors + non-2xx/3xx responses; timeouts: wrk's "
          f"({WORKLOADS[0][2][-1]} for segments, 2 s for playlists)")
    print(f"  peak RSS (VmHWM): origin {rss_origin / 1024 if rss_origin else float('nan'):.1f} MB; "
          f"nginx master + 2 workers {rss_nginx / 1024:.1f} MB")

if __name__ == "__main__":
    main()
