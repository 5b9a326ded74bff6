#!/usr/bin/env node
// Plays an HLS stream with hls.js in headless Chromium and reports whether it played cleanly.
//
//   node tests/player/play.mjs --url http://127.0.0.1:PORT/<title>/master.m3u8 \
//        [--page http://127.0.0.1:PORT/] [--until-time 10] [--timeout 90] \
//        [--screenshot out.png] [--expect-ended]
//
// Opens --page (default: the origin of --url), which must load hls.js (the kafka-hls
// origin serves it at /hls.min.js), then plays --url through hls.js explicitly (never the
// browser's native HLS), muted. Every hls.js ERROR event is recorded, fatal or not.
// Success (exit 0): zero hls.js errors, no page or media errors, and video.currentTime
// reached --until-time, or, with --expect-ended, the media playlist ended (#EXT-X-ENDLIST)
// and the video fired 'ended'. Anything else, or --timeout seconds, exits 1; bad usage 2.
// stdout gets one JSON summary line:
//   {"ok":bool,"currentTime":s,"errors":[...],"ended":bool,"elapsed_ms":ms,"playlist_type":..., ...}
//
// Environment: KHLS_NODE_MODULES (dir holding playwright-core; default
// $KHLS_CACHE/node/node_modules, then ~/.cache/kafka-hls/node/node_modules),
// KHLS_CHROMIUM (default /usr/bin/chromium).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function usage(msg) {
  process.stderr.write(`play.mjs: ${msg}\n` +
    'usage: node play.mjs --url URL [--page URL] [--until-time S] [--timeout S] [--screenshot FILE] [--expect-ended]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { url: null, page: null, untilTime: 10, timeout: 90, screenshot: null, expectEnded: false };
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
      case '--expect-ended': o.expectEnded = true; break;
      case '-h': case '--help': usage('help');
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.url) usage('--url is required');
  if (!o.page) o.page = new URL('/', o.url).href;
  return o;
}

function loadPlaywright() {
  const home = os.homedir();
  const dirs = [
    process.env.KHLS_NODE_MODULES,
    process.env.KHLS_CACHE && path.join(process.env.KHLS_CACHE, 'node', 'node_modules'),
    path.join(home, '.cache', 'kafka-hls', 'node', 'node_modules'),
  ].filter(Boolean);
  for (const dir of dirs) {
    try {
      return createRequire(path.join(path.resolve(dir), 'noop.js'))('playwright-core');
    } catch (err) {
      if (err.code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(`playwright-core not found in ${dirs.join(', ')} (run scripts/setup.sh)`);
}

const log = (msg) => process.stderr.write(`play.mjs: ${msg}\n`);

async function main() {
  const opt = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const summary = {
    ok: false, currentTime: 0, errors: [], ended: false, elapsed_ms: 0, playlist_type: null,
    live: null, hlsjs_version: null, page_errors: [], media_error: null, failure: null, url: opt.url,
  };
  const finish = (code) => {
    summary.elapsed_ms = Date.now() - started;
    process.stdout.write(JSON.stringify(summary) + '\n');
    process.exitCode = code;
  };

  let playwright;
  try {
    playwright = loadPlaywright();
  } catch (err) {
    summary.failure = err.message;
    return finish(1);
  }

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'khls-player-'));
  let context = null;
  let page = null;
  try {
    context = await playwright.chromium.launchPersistentContext(profile, {
      executablePath: process.env.KHLS_CHROMIUM || '/usr/bin/chromium',
      headless: true,
      viewport: { width: 960, height: 540 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required'],
    });
    page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (err) => summary.page_errors.push(String(err.message || err)));
    page.on('console', (m) => { if (m.type() === 'error') log(`console: ${m.text()}`); });

    const resp = await page.goto(opt.page, { waitUntil: 'load', timeout: 30000 });
    if (!resp || !resp.ok()) throw new Error(`page ${opt.page}: HTTP ${resp ? resp.status() : 'no response'}`);

    // hls.js, explicitly: Chromium would also play the m3u8 natively, which is not what we test.
    const setup = await page.evaluate((url) => {
      if (typeof window.Hls === 'undefined') return { error: 'hls.js is not loaded by the page (is /hls.min.js served?)' };
      if (!window.Hls.isSupported()) return { error: 'hls.js reports no MSE support in this browser' };
      let video = document.querySelector('video');
      if (!video) {
        video = document.createElement('video');
        document.body.prepend(video);
      }
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      const st = { errors: [], ended: false, playlistType: null, live: null, mediaError: null, playError: null };
      window.__khlsPlayer = st;
      const hls = new window.Hls();
      window.__khlsHls = hls;
      hls.on(window.Hls.Events.ERROR, (event, d) => {
        st.errors.push({
          type: d.type, details: d.details, fatal: !!d.fatal,
          reason: d.reason || (d.error && d.error.message) || null,
          url: (d.frag && d.frag.url) || (d.context && d.context.url) || d.url || null,
          code: (d.response && d.response.code) || null,
          t: video.currentTime,
        });
      });
      hls.on(window.Hls.Events.LEVEL_LOADED, (event, d) => {
        st.playlistType = d.details.type || null;
        st.live = !!d.details.live;
      });
      hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
        video.play().catch((err) => { st.playError = String(err.message || err); });
      });
      video.addEventListener('ended', () => { st.ended = true; });
      video.addEventListener('error', () => {
        st.mediaError = video.error ? `${video.error.code}: ${video.error.message}` : 'unknown';
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      return { version: window.Hls.version };
    }, opt.url);
    if (setup.error) throw new Error(setup.error);
    summary.hlsjs_version = setup.version;
    log(`hls.js ${setup.version}: playing ${opt.url}`);

    const deadline = started + opt.timeout * 1000;
    let lastLogged = -1;
    while (true) {
      const st = await page.evaluate(() => ({
        ...window.__khlsPlayer, currentTime: document.querySelector('video').currentTime,
      }));
      summary.currentTime = st.currentTime;
      summary.errors = st.errors;
      summary.ended = st.ended;
      summary.playlist_type = st.playlistType;
      summary.live = st.live;
      summary.media_error = st.mediaError;
      if (Math.floor(st.currentTime / 5) !== lastLogged) {
        lastLogged = Math.floor(st.currentTime / 5);
        log(`t=${st.currentTime.toFixed(1)} s (${((Date.now() - started) / 1000).toFixed(1)} s elapsed)`);
      }
      if (st.errors.length || summary.page_errors.length || st.mediaError || st.playError) {
        summary.failure = st.playError ? `play() refused: ${st.playError}` : 'errors during playback';
        break;
      }
      if (opt.expectEnded ? (st.ended && st.live === false) : st.currentTime >= opt.untilTime) {
        summary.ok = true;
        break;
      }
      if (opt.expectEnded && st.ended && st.live !== false) {
        summary.failure = 'video ended before the playlist had #EXT-X-ENDLIST';
        break;
      }
      if (Date.now() > deadline) {
        summary.failure = `timeout after ${opt.timeout} s at currentTime ${st.currentTime.toFixed(2)}` +
          (opt.expectEnded ? ` (ended: ${st.ended})` : '');
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
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  if (!summary.ok) log(`FAILED: ${summary.failure}`);
  finish(summary.ok ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`play.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
