#include "khls/metrics_server.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <system_error>
#include <thread>

#include <httplib.h>

#include "khls/log.h"

namespace khls::metrics {

struct Server::Impl {
  const Registry* registry = nullptr;
  std::function<HealthReport()> health;
  std::string bind;
  int port = 0;
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  std::mutex stop_mutex;

  void Configure();
};

void Server::Impl::Configure() {
  server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // As the origin: SO_REUSEADDR only (the library's SO_REUSEPORT would let a
  // second process share a port that is in use), and no socket leaked to children.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  });
  server.set_tcp_nodelay(true);
  server.set_keep_alive_timeout(2);
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    res.set_content(registry->Render(), kContentType);
  });
  server.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    HealthReport report = health ? health() : HealthReport{};
    if (report.text.empty() || report.text.back() != '\n') report.text += '\n';
    res.status = report.ok ? 200 : 503;
    res.set_header("Cache-Control", "no-store");
    res.set_content(report.text, "text/plain; charset=utf-8");
  });
  auto not_allowed = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
  };
  server.Post(".*", not_allowed);
  server.Put(".*", not_allowed);
  server.Patch(".*", not_allowed);
  server.Delete(".*", not_allowed);
  server.Options(".*", not_allowed);
  server.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log::Warn("metrics: {} {}: {}", req.method, req.path, what);
    res.status = 500;
  });
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Stop(); }

Result<std::unique_ptr<Server>> Server::Start(const ServerParams& params, const Registry& registry,
                                              std::function<HealthReport()> health) {
  if (params.port < 0 || params.port > 65535)
    return Error(ErrorCode::kInvalidArgument, "metrics: port {} is not in 0-65535", params.port);
  auto impl = std::make_unique<Impl>();
  impl->registry = &registry;
  impl->health = std::move(health);
  impl->bind = params.bind;
  impl->Configure();

  errno = 0;
  const int port = params.port == 0 ? impl->server.bind_to_any_port(params.bind)
                                    : (impl->server.bind_to_port(params.bind, params.port) ? params.port : -1);
  if (port <= 0) {
    const int err = errno;
    return Error(ErrorCode::kIo, "metrics: cannot listen on {}:{}: {}", params.bind, params.port,
                 err ? std::generic_category().message(err) : "address not available");
  }
  impl->port = port;
  Impl* raw = impl.get();
  raw->thread = std::thread([raw] {
    if (!raw->server.listen_after_bind()) log::Error("metrics: server on port {} stopped with an error", raw->port);
    raw->listen_returned = true;
  });
  // stop() is a no-op until the listen loop runs: wait for it, so Stop() always works.
  while (!raw->server.is_running()) {
    if (raw->listen_returned) {
      raw->thread.join();
      return Error(ErrorCode::kIo, "metrics: server on {}:{} did not start", params.bind, port);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

std::string Server::url() const {
  std::string host = impl_->bind;
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return fmt::format("http://{}:{}/metrics", host, impl_->port);
}

void Server::Stop() {
  if (!impl_) return;
  std::lock_guard lock(impl_->stop_mutex);
  if (!impl_->thread.joinable()) return;
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace khls::metrics
