// What play.mjs and shaka.mjs share: finding the npm modules scripts/setup.sh installs,
// and opening a page in Debian's headless Chromium through playwright-core.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/// Where the modules are: KHLS_NODE_MODULES, $KHLS_CACHE/node/node_modules, ~/.cache/kafka-hls/node/node_modules.
export function moduleDirs() {
  return [
    process.env.KHLS_NODE_MODULES,
    process.env.KHLS_CACHE && path.join(process.env.KHLS_CACHE, 'node', 'node_modules'),
    path.join(os.homedir(), '.cache', 'kafka-hls', 'node', 'node_modules'),
  ].filter(Boolean);
}

/// playwright-core, and a `require` rooted in the directory it came from (for modules beside it).
export function loadPlaywright() {
  const dirs = moduleDirs();
  for (const dir of dirs) {
    const req = createRequire(path.join(path.resolve(dir), 'noop.js'));
    try {
      return { playwright: req('playwright-core'), req, dir };
    } catch (err) {
      if (err.code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(`playwright-core not found in ${dirs.join(', ')} (run scripts/setup.sh)`);
}

/// Launches Chromium (KHLS_CHROMIUM or /usr/bin/chromium) with a fresh profile, opens `pageUrl`,
/// records page errors into `pageErrors`, logs console errors with `log`. Returns {context, page,
/// close()}; close() also removes the profile. The flags keep Chromium off the network (this
/// machine's is closed) and let a muted video autoplay.
export async function openPage(playwright, pageUrl, pageErrors, log) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'khls-player-'));
  let context = null;
  const close = async () => {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  };
  try {
    context = await playwright.chromium.launchPersistentContext(profile, {
      executablePath: process.env.KHLS_CHROMIUM || '/usr/bin/chromium',
      headless: true,
      viewport: { width: 960, height: 540 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required'],
    });
    const page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(String(err.message || err)));
    page.on('console', (m) => { if (m.type() === 'error') log(`console: ${m.text()}`); });
    const resp = await page.goto(pageUrl, { waitUntil: 'load', timeout: 30000 });
    // A data: or about: page has no HTTP response.
    const http = /^https?:/.test(pageUrl);
    if (http && (!resp || !resp.ok())) throw new Error(`page ${pageUrl}: HTTP ${resp ? resp.status() : 'no response'}`);
    return { context, page, close };
  } catch (err) {
    await close();
    throw err;
  }
}

// Counts the page's network requests into `summary` (play.mjs and shaka.mjs): every request
// ("requests"), LL-HLS part files, blocking playlist reloads, delta updates, and the responses
// with an HTTP status >= 400 ("STATUS URL", the first 20; "http_error_count" counts them all).
// Playwright reports the XHR and fetch requests of the page (hls.js and Shaka load with those).
// freeze() stops counting (the summary is final; closing the page cancels requests).
const PART_RE = /\.p\d+\.(m4s|ts)$/;
const HTTP_ERRORS_MAX = 20;
export function netCounters(summary) {
  let frozen = false;
  return {
    watch(page) {
      page.on('request', (req) => {
        if (frozen) return;
        let u;
        try { u = new URL(req.url()); } catch { return; }
        if (!/^https?:$/.test(u.protocol)) return;
        summary.requests++;
        if (PART_RE.test(u.pathname)) summary.part_requests++;
        if (u.search.includes('_HLS_msn=')) summary.blocking_requests++;
        if (u.search.includes('_HLS_skip=')) summary.skip_requests++;
      });
      page.on('response', (resp) => {
        if (frozen || resp.status() < 400) return;
        summary.http_error_count++;
        if (summary.http_errors.length < HTTP_ERRORS_MAX) summary.http_errors.push(`${resp.status()} ${resp.url()}`);
      });
    },
    freeze() { frozen = true; },
  };
}
