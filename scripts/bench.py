#!/usr/bin/env python3
"""Benchmark rounds for scripts/bench.sh: ffmpeg -f hls vs kafka-hls (ingest + package through the
local broker) vs cp, on one input. Prints one JSON line of raw measurements per round to stdout.

Definitions (see BENCHMARKS.md):
  wall (b)         from spawning ingest until the media playlist contains #EXT-X-ENDLIST
                   (the packager was started first and has joined its group)
  first listed     from spawning ingest until the media playlist first lists a segment
  segment latency  for segment i: time the playlist first lists it (polled every 2 ms) minus the
                   time ingest logged cutting it ("segment i cut at t s", relative to its own start;
                   with --realtime, when the segment's last frame is due, as from a live encoder)
  peak RSS         "Maximum resident set size" from /usr/bin/time -v
  CPU seconds      user + system time of each process (/usr/bin/time -v; ffmpeg and cp from
                   getrusage), and of the broker (its /proc/PID/stat before and after the round)
"""
import glob, json, os, re, shutil, subprocess, sys, tempfile, time, uuid


def max_rss_kb(path):
    with open(path) as f:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
    return int(m.group(1)) if m else None


def cpu_seconds(path):
    """User + system seconds from a /usr/bin/time -v report."""
    text = open(path).read()
    return sum(float(re.search(p + r" \(seconds\): ([0-9.]+)", text).group(1)) for p in ("User time", "System time"))


def broker_cpu():
    """CPU seconds used so far by the local broker (scripts/kafka.sh), or None."""
    port = os.environ.get("KAFKA_PORT", "9092")
    pidfile = os.path.join(os.environ.get("KHLS_CACHE", os.path.expanduser("~/.cache/kafka-hls")),
                           f"kafka-run-{port}", "kafka.pid")
    try:
        pid = open(pidfile).read().strip()
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def children_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_for(path, pattern, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if pattern in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    return False


def run_ffmpeg(inp, work):
    out = os.path.join(work, "ffmpeg")
    os.makedirs(out)
    c0 = children_cpu()
    t0 = time.monotonic()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", inp, "-c", "copy", "-f", "hls", "-hls_time", "6",
                    "-hls_playlist_type", "vod", "-hls_segment_filename", os.path.join(out, "seg-%05d.ts"),
                    os.path.join(out, "index.m3u8")], check=True)
    return time.monotonic() - t0, children_cpu() - c0


def run_cp(inp, work):
    t0 = time.monotonic()
    shutil.copy(inp, os.path.join(work, "copy.bin"))
    return time.monotonic() - t0


def run_pipeline(binary, inp, work, brokers, ingest_args=()):
    topic = "bench-" + uuid.uuid4().hex[:10]
    out = os.path.join(work, "hls")
    plog, ilog = os.path.join(work, "package.log"), os.path.join(work, "ingest.log")
    ptime, itime = os.path.join(work, "package.time"), os.path.join(work, "ingest.time")
    common = ["--brokers", brokers, "--topic", topic]
    with open(plog, "w") as pl:
        packager = subprocess.Popen(["/usr/bin/time", "-v", "-o", ptime, binary, "package", "--out", out, "--group",
                                     topic, "--until-complete", "bench"] + common, stdout=pl, stderr=pl)
    if not wait_for(plog, "assigned partitions", 60):
        packager.kill()
        raise RuntimeError("packager did not join its group: " + open(plog).read()[-2000:])
    # The video rendition's media playlist (v1/video-<height>p/, named by the source's height).
    # (kafka-hls 0.1 wrote one muxed playlist directly in v1/: kept for A/B runs against it.)
    media_globs = [os.path.join(out, "bench", "v1", "video-*", "index.m3u8"), os.path.join(out, "bench", "v1", "index.m3u8")]
    media = None
    listed = {}
    seen = None
    b0 = broker_cpu()
    with open(ilog, "w") as il:
        t0 = time.monotonic()
        ingest = subprocess.Popen(["/usr/bin/time", "-v", "-o", itime, binary, "-v", "ingest", inp, "--title", "bench"]
                                  + list(ingest_args) + common, stdout=il, stderr=il)
        ended = None
        while ended is None:
            now = time.monotonic()
            # Re-read the playlist only when it changed (it is replaced by rename), so this
            # loop takes little CPU from the processes it measures.
            if media is None:
                found = [f for g in media_globs for f in glob.glob(g)]
                media = found[0] if found else None
            try:
                st = os.stat(media) if media else None
                key = (st.st_ino, st.st_size, st.st_mtime_ns) if st else None
            except FileNotFoundError:
                key = None
            text = ""
            if key is not None and key != seen:
                try:
                    with open(media) as f:
                        text = f.read()
                    seen = key
                except FileNotFoundError:
                    pass
            for m in re.finditer(r"seg-(\d+)\.ts", text):
                listed.setdefault(int(m.group(1)), now - t0)
            if "#EXT-X-ENDLIST" in text:
                ended = now - t0
            elif ingest.poll() not in (None, 0) or now - t0 > 1800:
                raise RuntimeError("ingest failed: " + open(ilog).read()[-2000:])
            else:
                time.sleep(0.002)
    if ingest.wait() != 0 or packager.wait(timeout=120) != 0:
        raise RuntimeError("ingest or packager failed: " + open(ilog).read()[-1000:] + open(plog).read()[-1000:])
    b1 = broker_cpu()
    cut = {int(m.group(1)): float(m.group(2))
           for m in re.finditer(r"segment (\d+) cut at ([0-9.]+) s", open(ilog).read())}
    committed = {int(m.group(1)): float(m.group(2))
                 for m in re.finditer(r"segment (\d+) committed at ([0-9.]+) s", open(ilog).read())}
    latency = [listed[i] - cut[i] for i in sorted(listed) if i in cut]
    # The two halves: in ingest (cut -> transaction committed) and after (committed -> listed).
    in_ingest = [committed[i] - cut[i] for i in sorted(listed) if i in cut and i in committed]
    after_commit = [listed[i] - committed[i] for i in sorted(listed) if i in committed]
    subprocess.run(["bash", "scripts/kafka.sh", "topics", "--delete", "--topic", topic],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"wall": ended, "first_listed": min(listed.values()) if listed else None, "latency": latency,
            "latency_ingest": in_ingest, "latency_after_commit": after_commit,
            "segments": len(listed), "rss_ingest_kb": max_rss_kb(itime), "rss_package_kb": max_rss_kb(ptime),
            "cpu_ingest": cpu_seconds(itime), "cpu_package": cpu_seconds(ptime),
            "cpu_broker": None if b0 is None or b1 is None else b1 - b0}


def main():
    binary, inp, brokers, kinds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    work = tempfile.mkdtemp(prefix="khls-bench-", dir=os.environ.get("KHLS_BENCH_TMP"))
    try:
        result = {"input": inp, "bytes": os.path.getsize(inp)}
        # Each contender starts with no writeback left over from the one before.
        if "ffmpeg" in kinds:
            os.sync()
            result["ffmpeg"], result["cpu_ffmpeg"] = run_ffmpeg(inp, work)
        if "kafka" in kinds:
            os.sync()
            result["kafka"] = run_pipeline(binary, inp, work, brokers)
        if "live" in kinds:
            os.sync()
            # A live source: segments arrive at media speed (2 s segments), so nothing queues.
            result["live"] = run_pipeline(binary, inp, work, brokers,
                                          ["--realtime", "--segment-duration", "2"])
        if "cp" in kinds:
            os.sync()
            result["cp"] = run_cp(inp, work)
        print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
