#!/usr/bin/env node
// Plays an HLS stream with hls.js in headless Chromium and reports whether it played cleanly.
//
//   node tests/player/play.mjs --url http://127.0.0.1:PORT/<title>/master.m3u8 \
//        [--page http://127.0.0.1:PORT/] [--until-time 10] [--timeout 90] \
//        [--screenshot out.png] [--expect-ended] \
//        [--audio-lang LANG@T] [--level I@T] [--subtitle-lang LANG] [--expect-cue 'TEXT@T' ...] \
//        [--bearer TOKEN] [--play-for S] [--low-latency]
//
// Opens --page (default: the origin of --url), which must load hls.js (the kafka-hls
// origin serves it at /hls.min.js), then plays --url through hls.js explicitly (never the
// browser's native HLS), muted. Every hls.js ERROR event is recorded, fatal or not.
// Success (exit 0): zero hls.js errors, no page or media errors, and video.currentTime
// reached --until-time, or, with --expect-ended, the media playlist ended (#EXT-X-ENDLIST)
// and the video fired 'ended'. Anything else, or --timeout seconds, exits 1; bad usage 2.
// --play-for S: instead of --until-time, S seconds of playback from where it started (a live
// stream starts near its live edge, not at 0). The summary reports, for live streams, hls.js's
// estimate of the distance to the live edge ("latency_s", hls.latency: median, max) and the
// wall-clock delay of what is shown behind its #EXT-X-PROGRAM-DATE-TIME ("pdt_latency_s":
// Date.now() - hls.playingDate; the origin's clock is this machine's).
// --low-latency: hls.js's lowLatencyMode: true (LL-HLS parts, preload hints, blocking playlist
// reloads), every other setting left at hls.js's default; without it lowLatencyMode is false, so
// that the two can be compared. The summary counts, for every run, the requests Chromium made
// for LL-HLS part files (*.pN.m4s / *.pN.ts: "part_requests"), blocking playlist reloads
// (_HLS_msn=: "blocking_requests"), delta updates (_HLS_skip=: "skip_requests"), and lists the
// HTTP responses >= 400 ("http_errors": "STATUS URL", at most 20).
// --bearer TOKEN: hls.js's xhrSetup adds "Authorization: Bearer TOKEN" to key requests
// (URLs ending in .key), as a player of AES-128 titles behind `serve --key-token` must.
// Track options (each adds a requirement; the run ends as soon as all of them are met):
//   --audio-lang LANG@T   at currentTime >= T, hls.audioTrack = the track whose lang is LANG;
//                         needs AUDIO_TRACK_SWITCHED for it, then 4 s more of playback
//   --level I@T           at currentTime >= T, hls.currentLevel = I (an index into hls.levels,
//                         which hls.js sorts by bitrate); needs LEVEL_SWITCHED to I, then 4 s more
//   --subtitle-lang LANG  selects that subtitle track (hls.subtitleTrack, subtitleDisplay = true)
//   --expect-cue TEXT@T   (repeatable) playback reaches T and a cue of a subtitles/captions
//                         text track has TEXT (tags stripped, whitespace runs and newlines
//                         collapsed to one space, trimmed) and start <= T <= end
// A language, level or cue that is missing fails the run at once (the cue: 5 s after T).
// stdout gets one JSON summary line (tests/player/README.md lists every field):
//   {"ok":bool,"currentTime":s,"errors":[...],"ended":bool,"elapsed_ms":ms,"playlist_type":..., ...}
//
// Environment: KHLS_NODE_MODULES (dir holding playwright-core; default
// $KHLS_CACHE/node/node_modules, then ~/.cache/kafka-hls/node/node_modules),
// KHLS_CHROMIUM (default /usr/bin/chromium).
import { loadPlaywright, netCounters, openPage } from './browser.mjs';

function usage(msg) {
  process.stderr.write(`play.mjs: ${msg}\n` +
    'usage: node play.mjs --url URL [--page URL] [--until-time S] [--timeout S] [--screenshot FILE] [--expect-ended]\n' +
    '                     [--audio-lang LANG@T] [--level I@T] [--subtitle-lang LANG] [--expect-cue TEXT@T ...]\n' +
    '                     [--bearer TOKEN] [--play-for S] [--low-latency]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    url: null, page: null, untilTime: 10, timeout: 90, screenshot: null, expectEnded: false,
    audio: null, level: null, subtitleLang: null, cues: [], bearer: null, playFor: null,
    lowLatency: false,
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
    // "X@T": X is everything before the last '@', T a non-negative number of seconds
    const at = (what) => {
      const v = value();
      const k = v.lastIndexOf('@');
      const t = k < 0 ? NaN : Number(v.slice(k + 1));
      if (k < 1 || !Number.isFinite(t) || t < 0 || v.slice(k + 1).trim() === '') usage(`${a} needs ${what}@SECONDS`);
      return { x: v.slice(0, k), t };
    };
    switch (a) {
      case '--url': o.url = value(); break;
      case '--page': o.page = value(); break;
      case '--until-time': o.untilTime = number(); break;
      case '--timeout': o.timeout = number(); break;
      case '--screenshot': o.screenshot = value(); break;
      case '--expect-ended': o.expectEnded = true; break;
      case '--audio-lang': { const v = at('LANG'); o.audio = { lang: v.x, t: v.t }; break; }
      case '--level': {
        const v = at('INDEX');
        const i = Number(v.x);
        if (!Number.isInteger(i) || i < 0) usage('--level needs INDEX@SECONDS with a level index >= 0');
        o.level = { index: i, t: v.t };
        break;
      }
      case '--subtitle-lang': o.subtitleLang = value(); break;
      case '--bearer': o.bearer = value(); break;
      case '--play-for': o.playFor = number(); break;
      case '--low-latency': o.lowLatency = true; break;
      case '--expect-cue': { const v = at('TEXT'); o.cues.push({ text: normCue(v.x), t: v.t }); break; }
      case '-h': case '--help': usage('help');
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.url) usage('--url is required');
  if (!o.page) o.page = new URL('/', o.url).href;
  return o;
}

const log = (msg) => process.stderr.write(`play.mjs: ${msg}\n`);


// Cue text as compared: tags (<i>, <c.x>, <v Name>...) removed, a few entities decoded,
// whitespace runs (newlines included) collapsed to one space, trimmed.
function normCue(text) {
  return String(text).replace(/<[^>]*>/g, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>')
    .replace(/&nbsp;/g, ' ').replace(/&amp;/g, '&').replace(/\s+/g, ' ').trim();
}
// The seconds a switch needs to play after its *_SWITCHED event, and how long after T a cue
// may still arrive before --expect-cue fails.
const SWITCH_PLAY_S = 4;
const CUE_GRACE_S = 5;

async function main() {
  const opt = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const summary = {
    ok: false, currentTime: 0, errors: [], ended: false, elapsed_ms: 0, playlist_type: null,
    live: null, hlsjs_version: null, page_errors: [], media_error: null, failure: null, url: opt.url,
    until_time: { target: opt.expectEnded ? null : opt.untilTime, reached: false },
    audio_tracks: [], subtitle_tracks: [], levels: [], level_switches: [], audio_switches: [], cues: [], text_tracks: [],
    requirements: [], audio_decoded_bytes: null, video_decoded_bytes: null,
    start_time: null, latency_s: null, pdt_latency_s: null,
    low_latency: opt.lowLatency, target_latency_s: null,
    requests: 0, part_requests: 0, blocking_requests: 0, skip_requests: 0, http_errors: [], http_error_count: 0,
  };
  const net = netCounters(summary);
  const latencies = [], pdtLatencies = [];
  const median = (xs) => { const v = [...xs].sort((a, b) => a - b); return v.length ? v[Math.floor(v.length / 2)] : null; };
  const finish = (code) => {
    summary.elapsed_ms = Date.now() - started;
    net.freeze();
    process.stdout.write(JSON.stringify(summary) + '\n');
    process.exitCode = code;
  };

  let playwright;
  try {
    ({ playwright } = loadPlaywright());
  } catch (err) {
    summary.failure = err.message;
    return finish(1);
  }

  let session = null;
  let page = null;
  try {
    session = await openPage(playwright, opt.page, summary.page_errors, log);
    page = session.page;
    net.watch(page);

    // hls.js, explicitly: Chromium would also play the m3u8 natively, which is not what we test.
    const setup = await page.evaluate(({ url, cfg }) => {
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
      const st = {
        errors: [], ended: false, playlistType: null, live: null, mediaError: null, playError: null,
        levelSwitches: [], audioSwitches: [], fatal: null, appendSuspects: [], quirks: [],
        // requests made by --audio-lang / --level / --subtitle-lang:
        // {index, t (currentTime when asked), already (was current), switchedAt (currentTime at *_SWITCHED)}
        audioReq: null, levelReq: null, subtitleReq: null, manifest: null,
      };
      window.__khlsPlayer = st;
      // lowLatencyMode is hls.js's default (true): passed either way, so a run without
      // --low-latency is a plain live client to compare with.
      const hls = new window.Hls({
        lowLatencyMode: !!cfg.lowLatency,
        ...(cfg.bearer ? {
          xhrSetup: (xhr, u) => {
            if (new URL(u, location.href).pathname.endsWith('.key')) xhr.setRequestHeader('Authorization', `Bearer ${cfg.bearer}`);
          },
        } : {}),
      });
      window.__khlsHls = hls;
      hls.on(window.Hls.Events.ERROR, (event, d) => {
        // hls.js 1.7 reports a non-fatal bufferAppendNoProgress for the first audio fragment of
        // demuxed audio whose video has B-frames (ffmpeg's own `-f hls` output with
        // var_stream_map does the same): the audio append is held back until video is buffered,
        // and the progress check runs before it. Held here, and counted as an error only if the
        // fragment is still not in the buffer 3 s later (checked in the polling loop).
        if (d.details === 'bufferAppendNoProgress' && !d.fatal && d.frag) {
          st.appendSuspects.push({ start: d.frag.start, end: d.frag.end, url: d.frag.url || null, at: performance.now(),
            t: video.currentTime });
          return;
        }
        // 'aborted' (ErrorDetails.INTERNAL_ABORTED) is hls.js cancelling a request of its own,
        // e.g. the in-flight subtitle fragment when the subtitle track selection changes; the
        // fragment is requested again when needed. Kept as a quirk, not an error: whether the
        // content then plays is what the requirements check.
        if (d.details === 'aborted' && !d.fatal) {
          st.quirks.push({ details: 'aborted', url: (d.frag && d.frag.url) || null, t: video.currentTime,
            note: 'request cancelled by hls.js itself' });
          return;
        }
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
      const langs = (tracks) => tracks.map((t) => JSON.stringify(t.lang === undefined ? null : t.lang)).join(', ') || 'none';
      // The subtitle track is picked from hls.subtitleTracks (the tracks of the current level's
      // group), which hls.js fills on the first level switch, after MANIFEST_PARSED; right after
      // SUBTITLE_TRACKS_UPDATED, hls.js resets the selection to its default, so the selection is
      // made (and made again if a group change reset it) from tick().
      const selectSubtitle = () => {
        if (!cfg.subtitleLang || st.fatal) return;
        const idx = hls.subtitleTracks.findIndex((t) => t.lang === cfg.subtitleLang);
        if (idx < 0 || hls.subtitleTrack === idx) return;
        hls.subtitleDisplay = true;
        hls.subtitleTrack = idx;
        if (!st.subtitleReq) st.subtitleReq = { index: idx, t: video.currentTime };
      };
      hls.on(window.Hls.Events.MANIFEST_PARSED, (event, d) => {
        st.manifest = { audio: (d.audioTracks || []).length, subtitles: (d.subtitleTracks || []).length };
        if (cfg.audio && !(d.audioTracks || []).some((t) => t.lang === cfg.audio.lang)) {
          st.fatal = `no audio track with lang ${JSON.stringify(cfg.audio.lang)} (audio langs: ${langs(d.audioTracks || [])})`;
        }
        if (cfg.subtitleLang && !(d.subtitleTracks || []).some((t) => t.lang === cfg.subtitleLang)) {
          st.fatal = `no subtitle track with lang ${JSON.stringify(cfg.subtitleLang)} (subtitle langs: ${langs(d.subtitleTracks || [])})`;
        }
        if (cfg.level && cfg.level.index >= d.levels.length) {
          st.fatal = `no level ${cfg.level.index} (the manifest has ${d.levels.length})`;
        }
        video.play().catch((err) => { st.playError = String(err.message || err); });
      });
      hls.on(window.Hls.Events.LEVEL_SWITCHED, (event, d) => {
        st.levelSwitches.push({ level: d.level, t: video.currentTime });
        const r = st.levelReq;
        if (r && r.switchedAt === null && d.level === r.index) r.switchedAt = video.currentTime;
      });
      hls.on(window.Hls.Events.AUDIO_TRACK_SWITCHED, (event, d) => {
        st.audioSwitches.push({ id: d.id, t: video.currentTime });
        const r = st.audioReq;
        if (r && r.switchedAt === null && d.id === r.index) r.switchedAt = video.currentTime;
      });
      // The timed switches, checked on every timeupdate (~4 per second) and every 100 ms.
      const tick = () => {
        const t = video.currentTime;
        if (st.fatal) return;
        selectSubtitle();
        if (cfg.audio && !st.audioReq && t >= cfg.audio.t) {
          const idx = hls.audioTracks.findIndex((a) => a.lang === cfg.audio.lang);
          if (idx < 0) {
            st.fatal = `no audio track with lang ${JSON.stringify(cfg.audio.lang)} in hls.audioTracks (${langs(hls.audioTracks)})`;
            return;
          }
          const already = hls.audioTrack === idx;
          st.audioReq = { index: idx, t, already, switchedAt: already ? t : null };
          if (!already) hls.audioTrack = idx;
        }
        if (cfg.level && !st.levelReq && t >= cfg.level.t) {
          if (cfg.level.index >= hls.levels.length) {
            st.fatal = `no level ${cfg.level.index} (hls.levels has ${hls.levels.length})`;
            return;
          }
          const already = hls.currentLevel === cfg.level.index;
          st.levelReq = { index: cfg.level.index, t, already, switchedAt: already ? t : null };
          if (!already) hls.currentLevel = cfg.level.index;
        }
      };
      video.addEventListener('timeupdate', tick);
      setInterval(tick, 100);
      video.addEventListener('ended', () => { st.ended = true; });
      video.addEventListener('error', () => {
        st.mediaError = video.error ? `${video.error.code}: ${video.error.message}` : 'unknown';
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      return { version: window.Hls.version };
    }, { url: opt.url, cfg: { audio: opt.audio, level: opt.level, subtitleLang: opt.subtitleLang, bearer: opt.bearer,
      lowLatency: opt.lowLatency } });
    if (setup.error) throw new Error(setup.error);
    summary.hlsjs_version = setup.version;
    log(`hls.js ${setup.version}: playing ${opt.url}`);

    const deadline = started + opt.timeout * 1000;
    let lastLogged = -1;
    const cueSeen = new Map();  // text|start|end -> {text, start, end}
    const trackOpts = !!(opt.audio || opt.level || opt.subtitleLang || opt.cues.length);
    while (true) {
      const st = await page.evaluate(() => {
        const hls = window.__khlsHls;
        const video = document.querySelector('video');
        const track = (t) => ({
          id: t.id, lang: t.lang === undefined ? null : t.lang, name: t.name === undefined ? null : t.name,
          default: !!t.default, groupId: t.groupId === undefined ? null : t.groupId,
        });
        // Every cue of every subtitles/captions text track (cues is null while a track is disabled).
        const cues = [];
        const textTracks = Array.from(video.textTracks).map((tt) => ({
          kind: tt.kind, label: tt.label, language: tt.language, mode: tt.mode, cues: tt.cues ? tt.cues.length : null,
        }));
        // A held bufferAppendNoProgress (see the ERROR handler): fine once the media element has
        // buffered the fragment's span, an error if it still has not after 3 s.
        const p = window.__khlsPlayer;
        p.appendSuspects = p.appendSuspects.filter((x) => {
          const b = video.buffered;
          let covered = false;
          for (let i = 0; i < b.length; ++i)
            if (b.start(i) <= x.start + 0.1 && b.end(i) >= Math.min(x.end, video.duration || x.end) - 0.1) covered = true;
          if (covered) {
            p.quirks.push({ details: 'bufferAppendNoProgress', url: x.url, t: x.t, note: 'fragment buffered afterwards' });
            return false;
          }
          if (performance.now() - x.at > 3000) {
            p.errors.push({ type: 'mediaError', details: 'bufferAppendNoProgress', fatal: false,
              reason: 'fragment still not buffered 3 s after hls.js reported no append progress', url: x.url, code: null, t: x.t });
            return false;
          }
          return true;
        });
        for (const tt of Array.from(video.textTracks)) {
          if ((tt.kind !== 'subtitles' && tt.kind !== 'captions') || !tt.cues) continue;
          for (const c of Array.from(tt.cues)) cues.push({ text: c.text, start: c.startTime, end: c.endTime });
        }
        return {
          ...window.__khlsPlayer, currentTime: video.currentTime, cues, textTracks, subtitleTrack: hls.subtitleTrack,
          // Chromium's decoded-byte counters: 0 audio bytes means no audio was played (hls.js drops
          // an audio codec MSE cannot play, e.g. AC-3, without any error)
          audioDecodedBytes: video.webkitAudioDecodedByteCount === undefined ? null : video.webkitAudioDecodedByteCount,
          videoDecodedBytes: video.webkitVideoDecodedByteCount === undefined ? null : video.webkitVideoDecodedByteCount,
          latency: Number.isFinite(hls.latency) ? hls.latency : null,
          targetLatency: Number.isFinite(hls.targetLatency) ? hls.targetLatency : null,
          playingDateMs: hls.playingDate ? hls.playingDate.getTime() : null,
          nowMs: Date.now(),
          paused: video.paused,
          audioTracks: hls.audioTracks.map(track),
          subtitleTracks: hls.subtitleTracks.map(track),
          levels: hls.levels.map((l) => ({
            bitrate: l.bitrate, width: l.width, height: l.height, codecs: (l.attrs && l.attrs.CODECS) || null,
          })),
        };
      });
      summary.currentTime = st.currentTime;
      if (summary.start_time === null && st.currentTime > 0 && !st.paused) summary.start_time = st.currentTime;
      if (st.live && summary.start_time !== null) {
        if (st.latency !== null) latencies.push(st.latency);
        if (st.playingDateMs !== null) pdtLatencies.push((st.nowMs - st.playingDateMs) / 1000);
        summary.latency_s = { median: median(latencies), max: latencies.length ? Math.max(...latencies) : null, n: latencies.length };
        summary.pdt_latency_s = { median: median(pdtLatencies), max: pdtLatencies.length ? Math.max(...pdtLatencies) : null,
          n: pdtLatencies.length };
      }
      // hls.targetLatency: where hls.js aims to play behind the live edge (it raises it after a
      // stall); hls.js computes one for VOD too, which means nothing there.
      summary.target_latency_s = st.live ? st.targetLatency : null;
      summary.errors = st.errors;
      summary.hlsjs_quirks = st.quirks;
      summary.ended = st.ended;
      summary.playlist_type = st.playlistType;
      summary.live = st.live;
      summary.media_error = st.mediaError;
      summary.audio_decoded_bytes = st.audioDecodedBytes;
      summary.video_decoded_bytes = st.videoDecodedBytes;
      summary.audio_tracks = st.audioTracks;
      summary.subtitle_tracks = st.subtitleTracks;
      summary.levels = st.levels;
      summary.level_switches = st.levelSwitches;
      summary.audio_switches = st.audioSwitches;
      summary.text_tracks = st.textTracks;
      for (const c of st.cues) {
        const key = `${c.text}|${c.start.toFixed(3)}|${c.end.toFixed(3)}`;
        if (!cueSeen.has(key)) cueSeen.set(key, { text: c.text, start: c.start, end: c.end });
      }
      summary.cues = [...cueSeen.values()].sort((a, b) => a.start - b.start || a.end - b.end);
      // The requirements of this run, met or not.
      const reqs = [];
      if (opt.expectEnded) reqs.push({ what: 'ended (#EXT-X-ENDLIST and the video ended)', met: st.ended && st.live === false });
      else if (opt.playFor !== null) {
        const played = summary.start_time === null ? 0 : st.currentTime - summary.start_time;
        reqs.push({ what: `${opt.playFor} s played from where playback started`, met: played >= opt.playFor });
      } else {
        summary.until_time.reached = st.currentTime >= opt.untilTime;
        reqs.push({ what: `currentTime >= ${opt.untilTime}`, met: summary.until_time.reached });
      }
      const switchReq = (what, r) => {
        const met = !!r && r.switchedAt !== null && st.currentTime >= r.switchedAt + SWITCH_PLAY_S;
        const state = !r ? 'not requested yet' : r.switchedAt === null ? `requested at ${r.t.toFixed(2)}, not switched yet`
          : `switched at ${r.switchedAt.toFixed(2)}${r.already ? ' (was already current)' : ''}`;
        reqs.push({ what: `${what}, then ${SWITCH_PLAY_S} s of playback (${state})`, met });
      };
      if (opt.audio) switchReq(`audio track ${JSON.stringify(opt.audio.lang)} at ${opt.audio.t}`, st.audioReq);
      if (opt.level) switchReq(`level ${opt.level.index} at ${opt.level.t}`, st.levelReq);
      if (opt.subtitleLang) {
        const cur = st.subtitleTracks[st.subtitleTrack];
        reqs.push({ what: `subtitle track ${JSON.stringify(opt.subtitleLang)} selected`, met: !!cur && cur.lang === opt.subtitleLang });
      }
      let cueMissed = null;
      for (const e of opt.cues) {
        const met = st.currentTime >= e.t &&
          summary.cues.some((c) => normCue(c.text) === e.text && c.start <= e.t && e.t <= c.end);
        reqs.push({ what: `cue ${JSON.stringify(e.text)} at ${e.t}`, met });
        if (!met && !cueMissed && (st.currentTime >= e.t + CUE_GRACE_S || st.ended)) cueMissed = e;
      }
      summary.requirements = reqs;
      const unmet = reqs.filter((r) => !r.met).map((r) => r.what);
      if (Math.floor(st.currentTime / 5) !== lastLogged) {
        lastLogged = Math.floor(st.currentTime / 5);
        log(`t=${st.currentTime.toFixed(1)} s (${((Date.now() - started) / 1000).toFixed(1)} s elapsed)`);
      }
      if (st.errors.length || summary.page_errors.length || st.mediaError || st.playError) {
        summary.failure = st.playError ? `play() refused: ${st.playError}` : 'errors during playback';
        break;
      }
      if (st.fatal) {
        summary.failure = st.fatal;
        break;
      }
      if (cueMissed) {
        const near = summary.cues.filter((c) => c.start <= cueMissed.t && cueMissed.t <= c.end).map((c) => JSON.stringify(normCue(c.text)));
        summary.failure = `no cue ${JSON.stringify(cueMissed.text)} at ${cueMissed.t} s ` +
          `(cues there: ${near.join(', ') || 'none'}; ${summary.cues.length} cues seen` +
          (summary.cues.length === 0 && !opt.subtitleLang ? '; no subtitle track enabled: use --subtitle-lang' : '') + ')';
        break;
      }
      if (unmet.length === 0) {
        summary.ok = true;
        break;
      }
      if (opt.expectEnded && st.ended && st.live !== false) {
        summary.failure = 'video ended before the playlist had #EXT-X-ENDLIST';
        break;
      }
      if (trackOpts && st.ended && st.live === false) {
        summary.failure = `the video ended with requirements unmet: ${unmet.join('; ')}`;
        break;
      }
      if (Date.now() > deadline) {
        summary.failure = `timeout after ${opt.timeout} s at currentTime ${st.currentTime.toFixed(2)}` +
          (opt.expectEnded ? ` (ended: ${st.ended})` : '') +
          (trackOpts ? `; unmet: ${unmet.join('; ')}` : '');
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
  process.stderr.write(`play.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
