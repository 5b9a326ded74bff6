// origin: a small HTTP server that hands the packager's output tree to players.
//
//   GET/HEAD /<title>/master.m3u8, /<title>/v<N>/<rendition>/index.m3u8, .../seg-*.ts|.vtt
//   GET/HEAD /  and /index.html   a self-contained page listing titles, playing them with hls.js
//   GET/HEAD /hls.min.js          hls.js, embedded at build time (404 when the build had none)
//   GET/HEAD /api/titles          [{"title": ..., "complete": bool, "url": "/<title>/master.m3u8"}]
//   OPTIONS  *                    CORS preflight (204)
//
// Every response is counted in OriginParams::metrics: requests by kind and
// status code, and body bytes sent by kind (see Origin::Start).
//
// Every response carries `Access-Control-Allow-Origin: *`. Caching follows what
// can still change: segments (.ts, .vtt) are immutable; a media playlist is
// cacheable only once it has #EXT-X-ENDLIST, a master only once .state.json says
// the title is complete (and the master was rewritten after that); everything
// else is `no-cache`. Single byte ranges are answered with 206 / 416.
//
// Only regular files under the root whose every path component is a plain,
// non-dot name are served; anything else (encoded "..", absolute paths,
// backslashes, NUL, dotfiles such as .state.json and temp files, symlinks that
// resolve outside the root) is an indistinguishable 404.
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
  int threads = 8;              ///< worker threads (concurrent connections served)
  /// Where requests are counted (must outlive the Origin; null = nowhere).
  metrics::Registry* metrics = nullptr;
};

class Origin {
 public:
  /// Binds and starts serving on a background thread. Registers in
  /// params.metrics `khls_origin_requests_total{kind,code}` and
  /// `khls_origin_sent_bytes_total{kind}`, where kind is "playlist" (.m3u8),
  /// "segment" (.ts, .m4s, .vtt, .mp4 init segments, .aac) or "other", from the
  /// request's path whatever the answer; bytes are the bodies' (HEAD sends none).
  /// Fails (kIo) when the
  /// address cannot be bound, e.g. the port is taken by another process
  /// (including another Origin: the socket is not shared with SO_REUSEPORT),
  /// and (kInvalidArgument) on a bad root, port or thread count.
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

  /// Stops listening, finishes in-flight requests and joins the server thread.
  /// Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit Origin(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace khls::origin
