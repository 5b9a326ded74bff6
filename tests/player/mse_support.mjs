#!/usr/bin/env node
// Asks Debian's headless Chromium which media types Media Source Extensions can play, as
// hls.js and Shaka do before they append anything.
//
//   node tests/player/mse_support.mjs 'video/mp4; codecs="hvc1.1.6.L63.90"' ...
//
// stdout: one JSON object, {"<type>": true|false, ...} from MediaSource.isTypeSupported.
// Exit 0 when the question was answered (whatever the answers), 1 when the browser could not
// be asked, 2 on bad usage. Environment as play.mjs (KHLS_NODE_MODULES, KHLS_CHROMIUM).
import { loadPlaywright, openPage } from './browser.mjs';

const types = process.argv.slice(2);
if (types.length === 0) {
  process.stderr.write('usage: node mse_support.mjs TYPE [TYPE ...]\n');
  process.exit(2);
}
const log = (m) => process.stderr.write(`mse_support.mjs: ${m}\n`);
let session = null;
try {
  const { playwright } = loadPlaywright();
  session = await openPage(playwright, 'data:text/html,<!doctype html><title>mse</title>', [], log);
  const answers = await session.page.evaluate((list) => {
    const out = {};
    for (const t of list) out[t] = typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(t);
    return out;
  }, types);
  process.stdout.write(`${JSON.stringify(answers)}\n`);
  await session.close();
  process.exit(0);
} catch (err) {
  log(`FAILED: ${err.message || err}`);
  if (session) await session.close();
  process.exit(1);
}
