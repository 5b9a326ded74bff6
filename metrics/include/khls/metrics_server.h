// The metrics and health endpoints of a kafka-hls process, on a port of their
// own (the origin serves titles at /<title>/..., so no path is shared with it):
//
//   GET/HEAD /metrics   the Registry in the Prometheus text format 0.0.4
//   GET/HEAD /healthz   200 "ok", or 503 with one "check: reason" line per failing check
//   anything else       404 (other methods: 405)
//
// It serves on a thread of its own (two workers: scrapes are small and rare)
// and stops cleanly: Stop() (or the destructor) finishes a scrape in flight
// and joins the thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "khls/metrics.h"
#include "khls/status.h"

namespace khls::metrics {

struct ServerParams {
  std::string bind = "127.0.0.1";  ///< address to listen on
  int port = 0;                    ///< TCP port; 0 = any free port (see Server::port())
};

class Server {
 public:
  /// Binds and starts serving. `registry` must outlive the server; `health` is
  /// called on the server's thread for every /healthz (null: always "ok").
  /// Fails (kIo) when the address cannot be bound, (kInvalidArgument) on a bad port.
  static Result<std::unique_ptr<Server>> Start(const ServerParams& params, const Registry& registry,
                                               std::function<HealthReport()> health);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  ///< stops

  /// The bound port (the chosen one when params.port was 0).
  int port() const;
  /// "http://<bind>:<port>/metrics" (0.0.0.0 / :: shown as 127.0.0.1 / [::1]).
  std::string url() const;

  /// Stops listening, finishes a request in flight and joins the thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace khls::metrics
