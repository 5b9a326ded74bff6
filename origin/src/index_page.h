// The origin's player page: lists titles from /api/titles and plays one with
// hls.js loaded from the origin itself (/hls.min.js). Self-contained: no CDN,
// no request to any other host. Without hls.js it falls back to the browser's
// native HLS playback and says so.
//
// Hooks for scripts: the <video id="video"> element; location.hash
// "#play=<url>" plays that URL on load. Quality (hls.js levels), audio language
// and subtitle track can be chosen in three <select>s under the video.
#pragma once

#include <string_view>

namespace khls::origin {

inline constexpr std::string_view kIndexPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kafka-hls origin</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #111; color: #ddd; }
  h1 { font-size: 18px; margin: 0 0 12px; }
  #layout { display: flex; gap: 16px; flex-wrap: wrap; }
  video { width: 640px; height: 360px; background: #000; }
  #titles { list-style: none; padding: 0; margin: 0; min-width: 220px; }
  #titles li { margin: 2px 0; }
  #titles button { font: inherit; background: #222; color: #ddd; border: 1px solid #444; padding: 2px 8px; cursor: pointer; }
  #titles button.current { border-color: #6af; color: #fff; }
  .tag { font-size: 12px; color: #999; margin-left: 6px; }
  #status { font-family: monospace; white-space: pre-wrap; margin-top: 8px; }
  #note { color: #fc6; margin: 8px 0; }
  #tracks { margin-top: 8px; display: flex; gap: 12px; }
  #tracks select { font: inherit; background: #222; color: #ddd; border: 1px solid #444; }
</style>
</head>
<body>
<h1>kafka-hls origin</h1>
<div id="note" hidden></div>
<div id="layout">
  <div>
    <video id="video" controls muted autoplay playsinline></video>
    <div id="tracks">
      <label>quality <select id="levels"></select></label>
      <label>audio <select id="audio"></select></label>
      <label>subtitles <select id="subtitles"></select></label>
    </div>
    <div id="status">choose a title</div>
  </div>
  <ul id="titles"><li>loading titles&hellip;</li></ul>
</div>
<script src="/hls.min.js"></script>
<script>
'use strict';
const video = document.getElementById('video');
const statusEl = document.getElementById('status');
const noteEl = document.getElementById('note');
const listEl = document.getElementById('titles');
const levelsEl = document.getElementById('levels');
const audioEl = document.getElementById('audio');
const subtitlesEl = document.getElementById('subtitles');

// Fills a <select> with `items` ({value, label}) and marks `selected`.
function fill(select, items, selected) {
  select.replaceChildren(...items.map(({value, label}) => {
    const o = document.createElement('option');
    o.value = String(value);
    o.textContent = label;
    o.selected = value === selected;
    return o;
  }));
  select.disabled = items.length < 2;
}
const trackLabel = (t) => t.name + (t.lang ? ` (${t.lang})` : '');
function fillTracks() {
  if (!hls) return;
  fill(levelsEl, [{value: -1, label: 'auto'}, ...hls.levels.map((l, i) => ({value: i,
    label: `${l.height || '?'}p ${(l.bitrate / 1e6).toFixed(2)} Mb/s`}))], hls.autoLevelEnabled ? -1 : hls.currentLevel);
  fill(audioEl, hls.audioTracks.map((t, i) => ({value: i, label: trackLabel(t)})), hls.audioTrack);
  fill(subtitlesEl, [{value: -1, label: 'off'}, ...hls.subtitleTracks.map((t, i) => ({value: i, label: trackLabel(t)}))],
    hls.subtitleTrack);
}
levelsEl.onchange = () => { if (hls) hls.currentLevel = Number(levelsEl.value); };
audioEl.onchange = () => { if (hls) hls.audioTrack = Number(audioEl.value); };
subtitlesEl.onchange = () => { if (hls) { hls.subtitleTrack = Number(subtitlesEl.value); hls.subtitleDisplay = true; } };
let hls = null;
let current = null;
let lastEvent = '';
let playlistType = '';

const hlsJs = typeof Hls !== 'undefined' && Hls.isSupported();
if (!hlsJs) {
  noteEl.hidden = false;
  noteEl.textContent = (typeof Hls === 'undefined'
      ? 'hls.js is not available from this origin (built without it)'
      : 'hls.js is loaded but this browser lacks Media Source Extensions') +
    ': using the browser\'s native HLS playback, if it has any.';
}

function setEvent(text) { lastEvent = text; render(); }

function render() {
  if (!current) return;
  const b = video.buffered;
  const ahead = b.length ? (b.end(b.length - 1) - video.currentTime).toFixed(1) : '0.0';
  statusEl.textContent =
    `${current}\nplayer: ${hls ? 'hls.js ' + Hls.version : 'native'}` +
    (playlistType ? `  playlist: ${playlistType}` : '') +
    `\ntime: ${video.currentTime.toFixed(1)} s  buffered ahead: ${ahead} s` +
    (video.ended ? '  (ended)' : video.paused ? '  (paused)' : '') +
    (lastEvent ? `\n${lastEvent}` : '');
}

function play(url) {
  current = url;
  playlistType = '';
  lastEvent = '';
  if (hls) { hls.destroy(); hls = null; }
  video.removeAttribute('src');
  video.muted = true;
  if (hlsJs) {
    hls = new Hls();
    hls.on(Hls.Events.MANIFEST_PARSED, (e, d) => {
      setEvent(`manifest: ${d.levels.length} level(s)`);
      video.play().catch(err => setEvent('play() refused: ' + err.message));
    });
    for (const ev of [Hls.Events.MANIFEST_PARSED, Hls.Events.AUDIO_TRACKS_UPDATED, Hls.Events.AUDIO_TRACK_SWITCHED,
                      Hls.Events.SUBTITLE_TRACKS_UPDATED, Hls.Events.SUBTITLE_TRACK_SWITCH, Hls.Events.LEVEL_SWITCHED])
      hls.on(ev, fillTracks);
    hls.on(Hls.Events.LEVEL_LOADED, (e, d) => {
      playlistType = (d.details.type || '?') + (d.details.live ? ' (live)' : ' (ended list)');
      render();
    });
    hls.on(Hls.Events.ERROR, (e, d) => {
      setEvent(`hls.js ${d.fatal ? 'FATAL ' : ''}error: ${d.type} / ${d.details}`);
      if (!d.fatal) return;
      if (d.type === Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
      else if (d.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = url;
    video.play().catch(err => setEvent('play() refused: ' + err.message));
  } else {
    setEvent('this browser cannot play HLS without hls.js');
  }
  for (const btn of listEl.querySelectorAll('button')) btn.classList.toggle('current', btn.dataset.url === url);
  render();
}

async function refresh() {
  try {
    const r = await fetch('/api/titles', {cache: 'no-store'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const titles = await r.json();
    listEl.replaceChildren();
    if (!titles.length) {
      const li = document.createElement('li');
      li.textContent = 'no titles yet';
      listEl.append(li);
    }
    for (const t of titles) {
      const li = document.createElement('li');
      const btn = document.createElement('button');
      btn.textContent = t.title;
      btn.dataset.url = t.url;
      btn.classList.toggle('current', t.url === current);
      btn.onclick = () => { location.hash = 'play=' + encodeURIComponent(t.url); };
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = t.complete ? 'complete' : 'live';
      li.append(btn, tag);
      listEl.append(li);
    }
  } catch (err) {
    listEl.replaceChildren();
    const li = document.createElement('li');
    li.textContent = 'cannot list titles: ' + err.message;
    listEl.append(li);
  }
}

function playFromHash() {
  const m = /^#play=(.+)$/.exec(location.hash);
  if (m) play(decodeURIComponent(m[1]));
}

video.addEventListener('ended', () => setEvent('ended'));
video.addEventListener('error', () => setEvent('video error: ' + (video.error ? video.error.message || video.error.code : '?')));
window.addEventListener('hashchange', playFromHash);
setInterval(render, 500);
setInterval(refresh, 5000);
refresh();
playFromHash();
</script>
</body>
</html>
)HTML";

}  // namespace khls::origin
