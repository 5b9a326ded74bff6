// origin: an event-driven HTTP/1.1 server that hands the packager's output tree to
// players (Boost.Asio event loops, Boost.Beast's parser, sendfile for bodies).
//
//   GET/HEAD /<title>/master.m3u8, /<title>/v<N>/<rendition>/index.m3u8, .../seg-*.ts|.m4s|.vtt,
//            LL-HLS parts .../seg-*.p<K>.m4s|.ts
//   GET/HEAD /  and /index.html   a self-contained page listing titles, playing them with hls.js
//   GET/HEAD /hls.min.js          hls.js, embedded at build time (404 when the build had none)
//   GET/HEAD /api/titles          [{"title": ..., "complete": bool, "url": "/<title>/master.m3u8"}]
//   GET/HEAD /<...>/<name>.key    a key from the key store, to Authorization: Bearer <key_token> only
//   OPTIONS  *                    CORS preflight (204; allows the Authorization header)
//
// Every response is counted in OriginParams::metrics: requests by kind and
// status code, and body bytes sent by kind (see Origin::Start).
//
// Every response carries `Access-Control-Allow-Origin: *`. Caching follows what
// can still change: segments and LL-HLS parts (.ts, .m4s, .vtt, .mp4) are
// immutable; a media playlist is cacheable only once it has #EXT-X-ENDLIST, a
// master only once .state.json says the title is complete (and the master was
// rewritten after that); everything else is `no-cache`. Single byte ranges are
// answered with 206 / 416. Files carry ETag and Last-Modified, and If-None-Match
// / If-Modified-Since get 304.
//
// Keep-alive and pipelining as HTTP/1.1 has them. A connection costs no thread:
// thousands of idle or waiting clients are held by `threads` event loops, each with
// bounded memory per connection (a 16 KiB header buffer, at most one 64 KiB
// playlist; larger files are never read into memory). Slow clients are cut off by
// the timeouts below without holding up others.
//
// Low-latency HLS (RFC 8216bis): delivery directives on a media playlist (not on
// master.m3u8, where they are ignored) and preload hints. A request that waits
// costs no thread and no timer: each event loop holds one inotify watch per
// directory that has waiters, reads and parses a changed playlist once (and
// keeps the parsed copy per version of the file), and wakes only the waiters it
// answers.
//
// - Blocking reload (6.2.5.2): `?_HLS_msn=M` is held until the playlist lists
//   segment M (its #EXTINF) or a later one; `&_HLS_part=P` until it lists part
//   P of segment M (EXT-X-PART), or segment M is complete, or a later segment
//   has begun. A P past the last part of a complete segment M is part 0 of
//   M+1. An #EXT-X-ENDLIST answers any of them at once. 400 when M is more than
//   two past the last segment listed (the one in progress counts once one of
//   its parts is listed), or P is more than the Advance Part Limit past the last
//   part listed: 3 / PART-TARGET parts when PART-TARGET is under a second, 3
//   otherwise (for a later segment, at least one part per segment between is
//   counted). `_HLS_part` without `_HLS_msn`, or not a number, is 400. On a
//   playlist without #EXT-X-PART-INF `_HLS_part` is ignored: the request waits
//   for segment M. 503 (`no-cache`, Retry-After: 1) after three target
//   durations. The answer is the whole playlist with the Cache-Control and
//   validators a plain GET gets.
// - Delta update (6.2.5.1): `?_HLS_skip=YES` (or `v2`: there are no
//   EXT-X-DATERANGE tags to skip, so the same) on a playlist whose
//   EXT-X-SERVER-CONTROL has CAN-SKIP-UNTIL=X and no #EXT-X-ENDLIST: the
//   segments that end more than X seconds before the end of the playlist (the
//   parts of the segment in progress included) are replaced by one
//   `#EXT-X-SKIP:SKIPPED-SEGMENTS=n` where the first of them was; with them go
//   their EXTINF, URI, PROGRAM-DATE-TIME, BYTERANGE, BITRATE, DISCONTINUITY and
//   EXT-X-PART lines. The last EXT-X-MAP and EXT-X-KEY before the first kept
//   segment stay (after the EXT-X-SKIP) unless that segment has its own, and
//   EXT-X-VERSION is raised to 9 (added when missing). A delta is `no-cache`
//   without ETag or Last-Modified (If-None-Match never makes it a 304). When
//   nothing would be skipped, without CAN-SKIP-UNTIL, or once ended, the whole
//   playlist is the answer. With `_HLS_msn` the request blocks first, and the
//   delta is made from the playlist that answered it.
// - Preload hints (6.2.6): a GET/HEAD of a segment-like file (.m4s, .ts, ...)
//   that does not exist, whose name is the URI of the EXT-X-PRELOAD-HINT
//   TYPE=PART of index.m3u8 in the same directory, is held until the file
//   appears (renamed into place or closed after writing), then answered like
//   any file (200 and the whole body; a Range is honoured once the whole part
//   is there). 503 (`no-cache`) after three target durations; 404 when the
//   playlist gets #EXT-X-ENDLIST, or hints another part, without the file
//   having come (a withdrawn hint). Any other missing file is a 404 at once.
//
// Only regular files under the root whose every path component is a plain,
// non-dot name are served; anything else (encoded "..", absolute paths,
// backslashes, NUL, dotfiles such as .state.json and temp files, symlinks that
// resolve outside the root) is an indistinguishable 404. A request line over
// 16 KiB is answered 414, a header over 16 KiB 431, and the connection closed.
//
// Keys (RFC 8216 METHOD=AES-128): a GET/HEAD whose last path component ends in
// ".key" is never looked up in the served tree. It is answered from the key
// store at the same relative path (the packager writes the key of
// /<title>/v<N>/<rendition>/index.m3u8's "key-000000.key" to
// <key_store>/<title>/v<N>/<rendition>/key-000000.key), by the same path rules
// and with no symlink followed, and only to `Authorization: Bearer <key_token>`
// (the scheme in any case): no key_token, 403 with a line saying how to serve
// keys; no Authorization, 401 with `WWW-Authenticate: Bearer realm="kafka-hls keys"`;
// another token or scheme, 403; no such key, 404; a file there that is not 16
// bytes, 500 (logged with its name). A key is 200 `application/octet-stream`,
// `Cache-Control: private, no-store`, always whole (Range is ignored), without
// ETag or Last-Modified. Every key answer is `no-store`.
#pragma once

#include <memory>
#include <string>

#include "khls/metrics.h"
#include "khls/status.h"

namespace khls::origin {

struct OriginParams {
  std::string root;             ///< output root to serve (must be an existing directory)
  std::string bind = "127.0.0.1";  ///< address to listen on
  int port = 8080;              ///< TCP port; 0 = any free port (see Origin::port())
  int threads = 0;              ///< event loops (threads); 0 = one per core
  int idle_timeout_ms = 60000;  ///< keep-alive: waiting for the next request's first byte
  int header_timeout_ms = 10000;  ///< from a request's first byte until its header is complete
  int send_timeout_ms = 30000;  ///< a response making no progress (the client reads nothing)
  int max_connections = 50000;  ///< open connections; more wait in the listen backlog
  /// Directory of the AES-128 keys ("" = none): laid out like the root, and never
  /// the root or inside it (a file there would be public to any other server of
  /// the tree). Must exist when key_token is set; may be missing otherwise.
  std::string key_store;
  /// The bearer token that key requests must present ("" = keys are not served:
  /// every key request is 403). Printable ASCII without spaces; only its
  /// SHA-256 is kept, and tokens are compared in constant time.
  std::string key_token;
  /// Where requests are counted (must outlive the Origin; null = nowhere).
  metrics::Registry* metrics = nullptr;
};

class Origin {
 public:
  /// Binds and starts serving on `threads` event loops. Raises the process's soft
  /// limit of open files to its hard limit (every connection is a descriptor) and
  /// ignores SIGPIPE if it had the default action. Registers in
  /// params.metrics `khls_origin_requests_total{kind,code}` and
  /// `khls_origin_sent_bytes_total{kind}`, where kind is "playlist" (.m3u8),
  /// "segment" (.ts, .m4s, .vtt, .mp4 init segments, .aac), "key" (.key, in any
  /// case) or "other", from the request's path whatever the answer; bytes are
  /// the bodies' (HEAD sends none). Each loop adds its counts to these every
  /// 250 ms. Fails (kIo) when the address cannot be bound, e.g. the port is
  /// taken by another process (including another Origin: the socket is not
  /// shared with SO_REUSEPORT), or the key store cannot be opened, and
  /// (kInvalidArgument) on a bad root, port, thread count, timeout or limit, a
  /// key_token without an existing key_store directory, a key_token that is
  /// not printable ASCII, or a key_store that is the root or lies inside it.
  static Result<std::unique_ptr<Origin>> Start(const OriginParams& params);

  Origin(const Origin&) = delete;
  Origin& operator=(const Origin&) = delete;
  ~Origin();  ///< stops

  /// The bound port (the chosen one when params.port was 0).
  int port() const;
  /// "http://<bind>:<port>/" (IPv6 binds in brackets; 0.0.0.0 / :: shown as 127.0.0.1 / [::1]).
  std::string url() const;
  /// Ok while the root is a directory this process can list (for /healthz), else
  /// kIo naming the root and the cause.
  Status CheckRoot() const;

  /// Stops listening, closes idle connections and waiting requests, gives responses
  /// in flight up to 2 s to finish, and joins the loops' threads. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit Origin(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace khls::origin
