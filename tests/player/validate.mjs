#!/usr/bin/env node
// Parses HLS playlists with npm hls-parser in strict mode (it throws on many RFC 8216
// MUST violations) and checks that a multivariant playlist's media playlists exist.
//
//   node tests/player/validate.mjs FILE.m3u8 ...
//
// Prints one line per file ("ok FILE master|media" or "FAIL FILE: reason"); exit 0 when
// every file passes, 1 otherwise, 2 on bad usage. hls-parser comes from KHLS_NODE_MODULES,
// else ~/.cache/kafka-hls/node/node_modules (scripts/setup.sh installs it).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const files = process.argv.slice(2);
if (!files.length) {
  process.stderr.write('usage: node validate.mjs FILE.m3u8 ...\n');
  process.exit(2);
}
const dir = process.env.KHLS_NODE_MODULES || path.join(os.homedir(), '.cache', 'kafka-hls', 'node', 'node_modules');
const HLS = createRequire(path.join(path.resolve(dir), 'noop.js'))('hls-parser');
HLS.setOptions({ strictMode: true });
let failed = 0;
for (const file of files) {
  try {
    const p = HLS.parse(fs.readFileSync(file, 'utf8'));
    if (p.isMasterPlaylist) {
      const uris = [...p.variants.map((v) => v.uri), ...p.variants.flatMap((v) => [...v.audio, ...v.subtitles].map((r) => r.uri))];
      for (const uri of uris.filter(Boolean))
        if (!fs.existsSync(path.join(path.dirname(file), uri))) throw new Error(`names ${uri}, which does not exist`);
    }
    process.stdout.write(`ok ${file} ${p.isMasterPlaylist ? 'master' : 'media'}\n`);
  } catch (err) {
    ++failed;
    process.stdout.write(`FAIL ${file}: ${err.message}\n`);
  }
}
process.exit(failed ? 1 : 0);
