#!/usr/bin/env node
// Plays an HLS stream with Shaka Player in headless Chromium and reports whether it played
// cleanly, with the audio, text and variant tracks Shaka found.
//
//   node tests/player/shaka.mjs --url http://127.0.0.1:PORT/<title>/master.m3u8 \
//        [--page http://127.0.0.1:PORT/] [--until-time 10] [--timeout 90] [--screenshot out.png] \
//        [--expect-audio LANG ...] [--expect-text LANG ...] [--expect-variants N]
//
// Opens --page (default: the origin of --url), injects shaka-player's compiled build from
// node_modules, installs its polyfills, attaches a Player to a muted autoplay <video>, loads
// --url and plays it. Every Player 'error' event is recorded, whatever its severity, and so is a
// rejected load(). Success (exit 0): zero errors, no page or media errors, and video.currentTime
// reached --until-time. Anything else, or --timeout seconds, exits 1; bad usage 2.
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
import { loadPlaywright, openPage } from './browser.mjs';

function usage(msg) {
  process.stderr.write(`shaka.mjs: ${msg}\n` +
    'usage: node shaka.mjs --url URL [--page URL] [--until-time S] [--timeout S] [--screenshot FILE]\n' +
    '                      [--expect-audio LANG ...] [--expect-text LANG ...] [--expect-variants N]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    url: null, page: null, untilTime: 10, timeout: 90, screenshot: null,
    expectAudio: [], expectText: [], expectVariants: null,
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
  };
  const finish = (code) => {
    summary.elapsed_ms = Date.now() - started;
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
    await page.addScriptTag({ path: mods.shaka });

    const setup = await page.evaluate((url) => {
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
      const st = { errors: [], ended: false, mediaError: null, playError: null, loaded: false };
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
    }, opt.url);
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
      summary.errors = st.errors;
      summary.ended = st.ended;
      summary.media_error = st.mediaError;
      summary.audio_decoded_bytes = st.audioDecodedBytes;
      summary.video_decoded_bytes = st.videoDecodedBytes;
      summary.audio_tracks = st.audioTracks;
      summary.text_tracks = st.textTracks;
      summary.variant_tracks = st.variantTracks;
      summary.until_time.reached = st.currentTime >= opt.untilTime;
      if (Math.floor(st.currentTime / 5) !== lastLogged) {
        lastLogged = Math.floor(st.currentTime / 5);
        log(`t=${st.currentTime.toFixed(1)} s (${((Date.now() - started) / 1000).toFixed(1)} s elapsed)`);
      }
      if (st.errors.length || summary.page_errors.length || st.mediaError || st.playError) {
        summary.failure = st.playError ? `play() refused: ${st.playError}`
          : st.errors.length ? `Shaka error ${st.errors[0].code} (category ${st.errors[0].category}, ${st.errors[0].where})`
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
      if (st.loaded && summary.until_time.reached) {
        summary.ok = true;
        break;
      }
      if (st.ended) {
        summary.failure = `the video ended at currentTime ${st.currentTime.toFixed(2)}, before --until-time ${opt.untilTime}`;
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
