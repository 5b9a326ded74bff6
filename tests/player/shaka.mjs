#!/usr/bin/env node
// Plays an HLS stream with Shaka Player in headless Chromium and reports whether it played
// cleanly, with the audio, text and variant tracks Shaka found.
//
//   node tests/player/shaka.mjs --url http://127.0.0.1:PORT/<title>/master.m3u8 \
//        [--page http://127.0.0.1:PORT/] [--until-time 10] [--timeout 90] [--screenshot out.png] \
//        [--expect-audio LANG ...] [--expect-text LANG ...] [--expect-variants N] \
//        [--play-for S] [--low-latency]
//
// Opens --page (default: the origin of --url), injects shaka-player's compiled build from
// node_modules, installs its polyfills, attaches a Player to a muted autoplay <video>, loads
// --url and plays it. Every Player 'error' event is recorded, whatever its severity, and so is a
// rejected load(). Success (exit 0): zero errors, no page or media errors, and video.currentTime
// reached --until-time. Anything else, or --timeout seconds, exits 1; bad usage 2.
// --play-for S: instead of --until-time, S seconds of playback from where it started (a live
// stream starts near its live edge, not at 0, and never fires 'ended'). For a live stream
// (player.isLive(): "live") the summary has, sampled every 500 ms while the video plays,
// "latency_s" {median, max, n}: seekRange().end - video.currentTime (Shaka's seek range ends its
// presentation delay before the live edge, so this is the distance beyond that delay), and
// "pdt_latency_s": Date.now() - player.getPlayheadTimeAsDate() (the wall-clock delay behind
// #EXT-X-PROGRAM-DATE-TIME, as play.mjs reports it).
// --low-latency: player.configure({streaming: {lowLatencyMode: true}}) before load(): Shaka then
// loads LL-HLS parts, follows preload hints and reloads the playlist with blocking requests.
// Without it lowLatencyMode is set to false (Shaka 5's own default is true), so that the two can
// be compared; Shaka then ignores parts. The summary counts, for every run, the requests
// Chromium made for LL-HLS part files (*.pN.m4s / *.pN.ts: "part_requests"), blocking playlist
// reloads (_HLS_msn=: "blocking_requests"), delta updates (_HLS_skip=: "skip_requests"), and
// lists the HTTP responses >= 400 ("http_errors": "STATUS URL", at most 20).
// Expectations, checked once load() has resolved (a miss fails the run at once):
//   --expect-audio LANG   (repeatable) getAudioTracks() has a track with language LANG
//   --expect-text LANG    (repeatable) getTextTracks() has a track with language LANG
//   --expect-variants N   getVariantTracks() has exactly N tracks
// Shaka reports languages normalized (BCP 47, ISO 639-2 codes as 639-1: "fre" -> "fr").
// stdout gets one JSON summary line (tests/player/README.md lists every field):
//   {"ok":bool,"currentTime":s,"errors":[...],"shaka_version":"5.x","audio_tracks":[...],
//    "text_tracks":[...],"variant_tracks":[...],"failure":null|"...","elapsed_ms":ms, ...}
//
// Environment: KHLS_NODE_MODULES (dir holding playwright-core and shaka-player; default
// $KHLS_CACHE/node/node_modules, then ~/.cache/kafka-hls/node/node_modules),
// KHLS_CHROMIUM (default /usr/bin/chromium).
import { loadPlaywright, netCounters, openPage } from './browser.mjs';

function usage(msg) {
  process.stderr.write(`shaka.mjs: ${msg}\n` +
    'usage: node shaka.mjs --url URL [--page URL] [--until-time S] [--timeout S] [--screenshot FILE]\n' +
    '                      [--expect-audio LANG ...] [--expect-text LANG ...] [--expect-variants N]\n' +
    '                      [--play-for S] [--low-latency]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    url: null, page: null, untilTime: 10, timeout: 90, screenshot: null,
    expectAudio: [], expectText: [], expectVariants: null, playFor: null, lowLatency: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const number = () => {
      const v = Number(value());
      if (!Number.isFinite(v) || v < 0) usage(`${a} needs a non-negative number`);
      return v;
    };
    switch (a) {
      case '--url': o.url = value(); break;
      case '--page': o.page = value(); break;
      case '--until-time': o.untilTime = number(); break;
      case '--timeout': o.timeout = number(); break;
      case '--screenshot': o.screenshot = value(); break;
      case '--play-for': o.playFor = number(); break;
      case '--low-latency': o.lowLatency = true; break;
      case '--expect-audio': o.expectAudio.push(value()); break;
      case '--expect-text': o.expectText.push(value()); break;
      case '--expect-variants': {
        const n = number();
        if (!Number.isInteger(n)) usage('--expect-variants needs a whole number');
        o.expectVariants = n;
        break;
      }
      case '-h': case '--help': usage('help');
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.url) usage('--url is required');
  if (!o.page) o.page = new URL('/', o.url).href;
  return o;
}

// The first node_modules directory that holds playwright-core (as in play.mjs); returns
// playwright and the path of shaka-player's compiled build there.
// playwright-core, and shaka-player's compiled build beside it.
function loadModules() {
  const { playwright, req, dir } = loadPlaywright();
  try {
    return { playwright, shaka: req.resolve('shaka-player/dist/shaka-player.compiled.js') };
  } catch (err) {
    throw new Error(`shaka-player not found next to playwright-core in ${dir} (run scripts/setup.sh)`);
  }
}

const log = (msg) => process.stderr.write(`shaka.mjs: ${msg}\n`);


async function main() {
  const opt = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const summary = {
    ok: false, currentTime: 0, errors: [], shaka_version: null, audio_tracks: [], text_tracks: [],
    variant_tracks: [], failure: null, elapsed_ms: 0, ended: false, page_errors: [], media_error: null,
    until_time: { target: opt.untilTime, reached: false }, audio_decoded_bytes: null, video_decoded_bytes: null,
    url: opt.url,
    live: null, low_latency: opt.lowLatency, start_time: null, latency_s: null, pdt_latency_s: null,
    requests: 0, part_requests: 0, blocking_requests: 0, skip_requests: 0, http_errors: [], http_error_count: 0,
  };
  const net = netCounters(summary);
  const median = (xs) => { const v = [...xs].sort((a, b) => a - b); return v.length ? v[Math.floor(v.length / 2)] : null; };
  const finish = (code) => {
    summary.elapsed_ms = Date.now() - started;
    net.freeze();
    process.stdout.write(JSON.stringify(summary) + '\n');
    process.exitCode = code;
  };

  let mods;
  try {
    mods = loadModules();
  } catch (err) {
    summary.failure = err.message;
    return finish(1);
  }

  let session = null;
  let page = null;
  try {
    session = await openPage(mods.playwright, opt.page, summary.page_errors, log);
    page = session.page;
    net.watch(page);
    await page.addScriptTag({ path: mods.shaka });

    const setup = await page.evaluate(({ url, lowLatency }) => {
      if (typeof window.shaka === 'undefined') return { error: 'shaka-player did not load in the page' };
      window.shaka.polyfill.installAll();
      if (!window.shaka.Player.isBrowserSupported()) return { error: 'shaka.Player.isBrowserSupported() is false' };
      let video = document.querySelector('video');
      if (!video) {
        video = document.createElement('video');
        document.body.prepend(video);
      }
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      const st = { errors: [], ended: false, mediaError: null, playError: null, loaded: false, latencies: [], pdtLatencies: [] };
      window.__khlsShaka = st;
      const errorOf = (e, where) => ({
        where,
        code: e && e.code !== undefined ? e.code : null,
        category: e && e.category !== undefined ? e.category : null,
        severity: e && e.severity !== undefined ? e.severity : null,
        message: String((e && e.message) || e),
        data: (() => { try { return JSON.stringify(e && e.data).slice(0, 500); } catch { return null; } })(),
        t: video.currentTime,
      });
      const player = new window.shaka.Player();
      window.__khlsShakaPlayer = player;
      // Set either way: Shaka 5's default is lowLatencyMode: true (parts are ignored without it).
      player.configure({ streaming: { lowLatencyMode: !!lowLatency } });
      // Every 500 ms while a live stream plays: the distance to the end of Shaka's seek range,
      // and the wall-clock delay behind the playhead's #EXT-X-PROGRAM-DATE-TIME.
      setInterval(() => {
        if (!st.loaded || video.paused || video.currentTime <= 0 || !player.isLive()) return;
        const end = player.seekRange().end;
        if (Number.isFinite(end)) st.latencies.push(end - video.currentTime);
        const date = player.getPlayheadTimeAsDate();
        if (date && Number.isFinite(date.getTime())) st.pdtLatencies.push((Date.now() - date.getTime()) / 1000);
      }, 500);
      player.addEventListener('error', (ev) => st.errors.push(errorOf(ev.detail, 'error event')));
      // Shaka also throws some errors out of its own callbacks (uncaught, with a minified
      // class name as the page error): keep their code and category too.
      window.addEventListener('error', (ev) => {
        if (ev.error && ev.error.code !== undefined) st.errors.push(errorOf(ev.error, 'uncaught'));
      });
      window.addEventListener('unhandledrejection', (ev) => {
        if (ev.reason && ev.reason.code !== undefined) st.errors.push(errorOf(ev.reason, 'unhandled rejection'));
      });
      video.addEventListener('ended', () => { st.ended = true; });
      video.addEventListener('error', () => {
        st.mediaError = video.error ? `${video.error.code}: ${video.error.message}` : 'unknown';
      });
      (async () => {
        try {
          await player.attach(video);
          await player.load(url);
          st.loaded = true;
          await video.play().catch((err) => { st.playError = String(err.message || err); });
        } catch (err) {
          st.errors.push(errorOf(err, 'load'));
        }
      })();
      return { version: window.shaka.Player.version };
    }, { url: opt.url, lowLatency: opt.lowLatency });
    if (setup.error) throw new Error(setup.error);
    summary.shaka_version = setup.version;
    log(`Shaka Player ${setup.version}: playing ${opt.url}`);

    const deadline = started + opt.timeout * 1000;
    let lastLogged = -1;
    while (true) {
      const st = await page.evaluate(() => {
        const player = window.__khlsShakaPlayer;
        const video = document.querySelector('video');
        const orNull = (v) => (v === undefined ? null : v);
        return {
          ...window.__khlsShaka,
          currentTime: video.currentTime,
          paused: video.paused,
          live: window.__khlsShaka.loaded ? player.isLive() : null,
          // Chromium's decoded-byte counters: 0 audio bytes means no audio was played (hls.js drops
          // an audio codec MSE cannot play, e.g. AC-3, without any error)
          audioDecodedBytes: video.webkitAudioDecodedByteCount === undefined ? null : video.webkitAudioDecodedByteCount,
          videoDecodedBytes: video.webkitVideoDecodedByteCount === undefined ? null : video.webkitVideoDecodedByteCount,
          audioTracks: player.getAudioTracks().map((t) => ({
            language: orNull(t.language), label: orNull(t.label), roles: t.roles || [],
            channelsCount: orNull(t.channelsCount), active: !!t.active,
          })),
          textTracks: player.getTextTracks().map((t) => ({
            language: orNull(t.language), label: orNull(t.label), kind: orNull(t.kind), active: !!t.active,
          })),
          variantTracks: player.getVariantTracks().map((t) => ({
            bandwidth: orNull(t.bandwidth), width: orNull(t.width), height: orNull(t.height),
            videoCodec: orNull(t.videoCodec), audioCodec: orNull(t.audioCodec), language: orNull(t.language),
            active: !!t.active,
          })),
        };
      });
      summary.currentTime = st.currentTime;
      if (summary.start_time === null && st.loaded && st.currentTime > 0 && !st.paused) summary.start_time = st.currentTime;
      summary.live = st.live;
      const stats = (xs) => (xs.length ? { median: median(xs), max: Math.max(...xs), n: xs.length } : null);
      summary.latency_s = stats(st.latencies);
      summary.pdt_latency_s = stats(st.pdtLatencies);
      summary.errors = st.errors;
      summary.ended = st.ended;
      summary.media_error = st.mediaError;
      summary.audio_decoded_bytes = st.audioDecodedBytes;
      summary.video_decoded_bytes = st.videoDecodedBytes;
      summary.audio_tracks = st.audioTracks;
      summary.text_tracks = st.textTracks;
      summary.variant_tracks = st.variantTracks;
      let goal;  // the playback requirement met, and what it is
      if (opt.playFor !== null) {
        const played = summary.start_time === null ? 0 : st.currentTime - summary.start_time;
        goal = { met: played >= opt.playFor, what: `--play-for ${opt.playFor} (played ${played.toFixed(2)} s)` };
      } else {
        summary.until_time.reached = st.currentTime >= opt.untilTime;
        goal = { met: summary.until_time.reached, what: `--until-time ${opt.untilTime}` };
      }
      if (Math.floor(st.currentTime / 5) !== lastLogged) {
        lastLogged = Math.floor(st.currentTime / 5);
        log(`t=${st.currentTime.toFixed(1)} s (${((Date.now() - started) / 1000).toFixed(1)} s elapsed)`);
      }
      if (st.errors.length || summary.page_errors.length || st.mediaError || st.playError) {
        // A Shaka error first: Shaka reloading after one also interrupts play().
        summary.failure = st.errors.length ? `Shaka error ${st.errors[0].code} (category ${st.errors[0].category}, ${st.errors[0].where})`
          : st.playError ? `play() refused: ${st.playError}`
            : summary.page_errors.length ? `page error: ${summary.page_errors[0]}`
              : `media error: ${st.mediaError}`;
        break;
      }
      if (st.loaded) {
        const langs = (tracks) => tracks.map((t) => JSON.stringify(t.language)).join(', ') || 'none';
        const noAudio = opt.expectAudio.find((l) => !st.audioTracks.some((t) => t.language === l));
        const noText = opt.expectText.find((l) => !st.textTracks.some((t) => t.language === l));
        if (noAudio !== undefined) {
          summary.failure = `no audio track with language ${JSON.stringify(noAudio)} (audio languages: ${langs(st.audioTracks)})`;
          break;
        }
        if (noText !== undefined) {
          summary.failure = `no text track with language ${JSON.stringify(noText)} (text languages: ${langs(st.textTracks)})`;
          break;
        }
        if (opt.expectVariants !== null && st.variantTracks.length !== opt.expectVariants) {
          summary.failure = `${st.variantTracks.length} variant tracks, expected ${opt.expectVariants}`;
          break;
        }
      }
      if (st.loaded && goal.met) {
        summary.ok = true;
        break;
      }
      if (st.ended) {
        summary.failure = `the video ended at currentTime ${st.currentTime.toFixed(2)}, before ${goal.what}`;
        break;
      }
      if (Date.now() > deadline) {
        summary.failure = `timeout after ${opt.timeout} s at currentTime ${st.currentTime.toFixed(2)}` +
          (st.loaded ? '' : ' (load() had not finished)');
        break;
      }
      await page.waitForTimeout(250);
    }
  } catch (err) {
    summary.ok = false;
    summary.failure = String(err.message || err);
  } finally {
    net.freeze();
    if (page && opt.screenshot) {
      await page.screenshot({ path: opt.screenshot }).catch((err) => log(`screenshot: ${err.message}`));
    }
    if (session) await session.close();
  }
  if (!summary.ok) log(`FAILED: ${summary.failure}`);
  finish(summary.ok ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`shaka.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
