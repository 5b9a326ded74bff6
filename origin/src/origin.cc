#include "khls/origin.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "index_page.h"
#include "khls/log.h"
#include "khls/title_state.h"
#include "origin_assets.h"

namespace khls::origin {
namespace fs = std::filesystem;
using packager::kMasterPlaylistName;
using packager::kStateFileName;

namespace {

using packager::kPlaylistMime;
using packager::kSegmentMime;
using packager::kSubtitleMime;
constexpr const char* kNoCache = packager::kCacheRevalidate;
constexpr const char* kImmutable = packager::kCacheImmutable;
constexpr const char* kCompletePlaylist = packager::kCacheEndedPlaylist;
constexpr size_t kMaxPlaylistBytes = 64 << 20;  // a playlist is read whole; refuse absurd ones
constexpr size_t kReadChunk = 64 << 10;

std::string_view MimeType(const fs::path& file) {
  const std::string ext = file.extension().string();
  if (const std::string_view tree = packager::TreeFileMime(ext); !tree.empty()) return tree;
  if (ext == ".html" || ext == ".htm") return "text/html; charset=utf-8";
  if (ext == ".js" || ext == ".mjs") return "application/javascript";
  if (ext == ".json") return "application/json";
  if (ext == ".aac") return "audio/aac";
  if (ext == ".txt") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

bool IsPlainName(std::string_view c) { return !c.empty() && c.front() != '.'; }

/// Maps a decoded URL path to a regular-file candidate under `root` (canonical),
/// or nothing. Every component must be a plain, non-dot name (so "..", ".",
/// dotfiles and dot-directories are out, whatever encoding they arrived in);
/// symlinks are followed, and the result must still be under the root, through
/// plain names only.
std::optional<fs::path> Resolve(const fs::path& root, std::string_view url_path) {
  if (url_path.size() < 2 || url_path.front() != '/') return std::nullopt;
  if (url_path.find('\0') != std::string_view::npos || url_path.find('\\') != std::string_view::npos) {
    return std::nullopt;
  }
  fs::path p = root;
  size_t pos = 1;
  while (true) {
    size_t slash = url_path.find('/', pos);
    std::string_view c = url_path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    if (!IsPlainName(c)) return std::nullopt;  // also "//" and a trailing "/"
    p /= std::string(c);
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  std::error_code ec;
  fs::path canon = fs::canonical(p, ec);
  if (ec) return std::nullopt;
  fs::path rel = canon.lexically_relative(root);
  if (rel.empty()) return std::nullopt;
  for (const auto& c : rel) {
    if (!IsPlainName(c.native())) return std::nullopt;  // "..": outside; ".x": a hidden target
  }
  return canon;
}

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_;
};

struct OpenFile {
  Fd fd;
  size_t size = 0;
  struct timespec mtime {};
};

/// Opens `path` if it is a regular file (O_NONBLOCK: a FIFO must not block us).
std::optional<OpenFile> OpenRegular(const fs::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return std::nullopt;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return OpenFile{std::move(fd), static_cast<size_t>(st.st_size), st.st_mtim};
}

std::optional<std::string> ReadAll(const OpenFile& f) {
  if (f.size > kMaxPlaylistBytes) return std::nullopt;
  std::string data(f.size, '\0');
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pread(f.fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    done += static_cast<size_t>(n);
  }
  return data;
}

bool NotOlder(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec >= b.tv_nsec);
}

/// What .state.json of a title says: complete or not, and when it was written.
struct TitleInfo {
  bool complete = false;
  struct timespec state_mtime {};
};

std::optional<TitleInfo> ReadTitleInfo(const fs::path& title_dir) {
  auto f = OpenRegular(title_dir / kStateFileName);
  if (!f) return std::nullopt;
  auto text = ReadAll(*f);
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto it = j.find("complete");
  return TitleInfo{it != j.end() && it->is_boolean() && it->get<bool>(), f->mtime};
}

enum class RangeKind { kWhole, kPart, kUnsatisfiable };
struct ByteRange {
  RangeKind kind = RangeKind::kWhole;
  size_t start = 0;
  size_t length = 0;
};

/// Interprets the request's Range for a body of `size` bytes (RFC 9110 14.1.2).
/// Several ranges are answered with the whole body, which the RFC allows.
ByteRange PickRange(const httplib::Request& req, size_t size) {
  if (req.ranges.size() != 1) return {RangeKind::kWhole, 0, size};
  auto [first, last] = req.ranges.front();
  if (first < 0 && last < 0) return {RangeKind::kWhole, 0, size};  // "bytes=-": invalid, ignored
  if (first < 0) {  // suffix: the last `last` bytes
    auto n = static_cast<size_t>(last);
    if (n == 0 || size == 0) return {RangeKind::kUnsatisfiable};
    n = std::min(n, size);
    return {RangeKind::kPart, size - n, n};
  }
  auto start = static_cast<size_t>(first);
  if (start >= size) return {RangeKind::kUnsatisfiable};
  size_t end = (last < 0 || static_cast<size_t>(last) >= size) ? size - 1 : static_cast<size_t>(last);
  return {RangeKind::kPart, start, end - start + 1};
}

/// Applies the Range of `req` to a response of `size` bytes: sets status and
/// Content-Range, and returns the part to send (nothing for 416).
///
/// cpp-httplib 0.11.4 would apply the parsed ranges itself after the handler,
/// but it neither clamps the end of a range to the size nor answers 416 when a
/// content provider is used, so ranges are handled here and the parsed list is
/// cleared to keep the library from applying them a second time (the server's
/// Request is a mutable object, only handed to handlers as const).
std::optional<ByteRange> ApplyRange(const httplib::Request& req, httplib::Response& res, size_t size) {
  ByteRange r = PickRange(req, size);
  const_cast<httplib::Request&>(req).ranges.clear();
  res.set_header("Accept-Ranges", "bytes");
  switch (r.kind) {
    case RangeKind::kWhole:
      res.status = 200;
      return r;
    case RangeKind::kPart:
      res.status = 206;
      res.set_header("Content-Range", fmt::format("bytes {}-{}/{}", r.start, r.start + r.length - 1, size));
      return r;
    case RangeKind::kUnsatisfiable:
      res.status = 416;
      res.set_header("Content-Range", fmt::format("bytes */{}", size));
      return std::nullopt;
  }
  return std::nullopt;
}

/// Sends in-memory content. A whole body may be compressed by cpp-httplib (it
/// gzips text, JavaScript and JSON for clients that accept it), hence Vary; a
/// part is sent through a fixed-length content provider, which the library never
/// compresses, so Content-Range keeps describing the bytes on the wire.
void SendBytes(const httplib::Request& req, httplib::Response& res, std::string_view data, std::string_view mime,
               std::string_view cache_control) {
  res.set_header("Cache-Control", std::string(cache_control));
  res.set_header("Vary", "Accept-Encoding");
  auto r = ApplyRange(req, res, data.size());
  if (!r) return;
  if (r->kind == RangeKind::kWhole) {
    res.set_content(data.data(), data.size(), std::string(mime));
    return;
  }
  auto part = std::make_shared<std::string>(data.substr(r->start, r->length));
  res.set_content_provider(part->size(), std::string(mime),
                           [part](size_t offset, size_t length, httplib::DataSink& sink) {
                             return sink.write(part->data() + offset, std::min(length, part->size() - offset));
                           });
}

/// Streams (part of) an open file: only kReadChunk bytes are in memory at a time,
/// and HEAD reads nothing.
void SendFile(const httplib::Request& req, httplib::Response& res, OpenFile file, std::string_view mime,
              std::string_view cache_control) {
  res.set_header("Cache-Control", std::string(cache_control));
  auto r = ApplyRange(req, res, file.size);
  if (!r) return;
  if (r->length == 0) {  // an empty file: the library wants a body or a non-zero length
    res.set_content("", 0, std::string(mime));
    return;
  }
  struct Source {
    Fd fd;
    size_t start;
    std::vector<char> buf;
  };
  auto src = std::make_shared<Source>(Source{std::move(file.fd), r->start, {}});
  res.set_content_provider(r->length, std::string(mime),
                           [src](size_t offset, size_t length, httplib::DataSink& sink) {
                             if (src->buf.empty()) src->buf.resize(kReadChunk);
                             size_t want = std::min(length, src->buf.size());
                             ssize_t n;
                             do {
                               n = ::pread(src->fd.get(), src->buf.data(), want,
                                           static_cast<off_t>(src->start + offset));
                             } while (n < 0 && errno == EINTR);
                             if (n <= 0) return false;  // truncated under us: abort the response
                             return sink.write(src->buf.data(), static_cast<size_t>(n));
                           });
}

void NotFound(httplib::Response& res) {
  res.status = 404;
  res.set_header("Cache-Control", kNoCache);
}

std::string Printable(std::string_view s) {
  std::string out(s.substr(0, 256));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return out;
}

/// What a request asked for, for the metrics: from its path alone, so a 404 is
/// counted with the kind it asked for.
std::string_view RequestKind(std::string_view path) {
  const auto dot = path.rfind('.');
  if (dot == std::string_view::npos || path.find('/', dot) != std::string_view::npos) return "other";
  const std::string_view ext = path.substr(dot);
  if (ext == ".m3u8") return "playlist";
  if (ext == ".ts" || ext == ".m4s" || ext == ".vtt" || ext == ".mp4" || ext == ".aac") return "segment";
  return "other";
}

/// The origin's request accounting (OriginParams::metrics, or a registry of its own).
class Accounting {
 public:
  explicit Accounting(metrics::Registry* shared)
      : own_(shared ? nullptr : std::make_unique<metrics::Registry>()),
        registry_(shared ? *shared : *own_),
        requests_(registry_.AddCounterFamily("khls_origin_requests_total",
                                             "HTTP requests answered, by kind (playlist, segment, other) and status code",
                                             {"kind", "code"})),
        bytes_(registry_.AddCounterFamily("khls_origin_sent_bytes_total", "Response body bytes sent, by kind",
                                          {"kind"})) {
    for (const char* kind : {"playlist", "segment", "other"}) bytes_.With({kind});
  }

  /// Called once per response, after it was written.
  void Count(const httplib::Request& req, const httplib::Response& res) {
    const std::string kind(RequestKind(req.path));
    requests_.With({kind, std::to_string(res.status)}).Inc();
    if (req.method == "HEAD") return;
    // The length of what was sent (the library sets it for every body, compressed or ranged).
    const std::string length = res.get_header_value("Content-Length");
    uint64_t n = 0;
    for (char c : length) {
      if (c < '0' || c > '9') return;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    bytes_.With({kind}).Inc(static_cast<double>(n));
  }

 private:
  std::unique_ptr<metrics::Registry> own_;
  metrics::Registry& registry_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Counter>& bytes_;
};

/// httplib::Server with access to its listening socket.
class Server : public httplib::Server {
 public:
  /// cpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed in
  /// Debian's shared library): a burst of connections (several players, a browser
  /// opening six at once) overflows it, and the dropped SYNs are retried only
  /// after a second. listen() again on the bound socket raises it.
  bool RaiseBacklog(int backlog) { return ::listen(svr_sock_, backlog) == 0; }
};

}  // namespace

struct Origin::Impl {
  explicit Impl(metrics::Registry* metrics) : accounting(metrics) {}
  fs::path root;  ///< canonical
  std::string bind;
  int port = 0;
  Accounting accounting;
  Server server;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  std::mutex stop_mutex;

  void Configure(int threads);
  void ServeTree(const httplib::Request& req, httplib::Response& res) const;
  std::string_view PlaylistCacheControl(const fs::path& file, const OpenFile& f, std::string_view body) const;
  std::string TitlesJson() const;
};

void Origin::Impl::Configure(int threads) {
  server.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  // The library's default sets SO_REUSEPORT, which lets a second server bind a
  // port that is in use and silently share it; keep only SO_REUSEADDR (rebind
  // over TIME_WAIT), and do not leak the listening socket into child processes.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  });
  // Headers and body go out in separate writes: without TCP_NODELAY, Nagle and
  // the peer's delayed ACK add ~40 ms to every keep-alive response.
  server.set_tcp_nodelay(true);
  // Each open connection holds a worker thread for as long as it is kept alive;
  // a short idle timeout frees workers of players that fetch every few seconds.
  server.set_keep_alive_max_count(1000);
  server.set_keep_alive_timeout(2);
  server.set_default_headers({
      {"Access-Control-Allow-Origin", "*"},
      {"Access-Control-Expose-Headers", "Content-Length, Content-Range, Accept-Ranges"},
      {"X-Content-Type-Options", "nosniff"},
  });

  auto page = [](const httplib::Request& req, httplib::Response& res) {
    SendBytes(req, res, kIndexPage, "text/html; charset=utf-8", kNoCache);
  };
  server.Get("/", page);
  server.Get("/index.html", page);
  server.Get("/hls.min.js", [](const httplib::Request& req, httplib::Response& res) {
    std::string_view js = origin_assets::HlsJs();
    if (js.empty()) return NotFound(res);
    SendBytes(req, res, js, "application/javascript", "public, max-age=3600");
  });
  server.Get("/api/titles", [this](const httplib::Request& req, httplib::Response& res) {
    SendBytes(req, res, TitlesJson(), "application/json", "no-store");
  });
  server.Get(".*", [this](const httplib::Request& req, httplib::Response& res) { ServeTree(req, res); });

  server.Options(".*", [](const httplib::Request&, httplib::Response& res) {
    res.status = 204;
    res.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS");
    res.set_header("Access-Control-Allow-Headers", "Range, If-None-Match, If-Modified-Since, Accept, Origin");
    res.set_header("Access-Control-Max-Age", "86400");
    res.set_header("Allow", "GET, HEAD, OPTIONS");
  });
  auto not_allowed = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET, HEAD, OPTIONS");
  };
  server.Post(".*", not_allowed);
  server.Put(".*", not_allowed);
  server.Patch(".*", not_allowed);
  server.Delete(".*", not_allowed);

  server.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log::Warn("origin: {} {}: {}", req.method, Printable(req.target), what);
    res.status = 500;
  });
  server.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    accounting.Count(req, res);
    log::Debug("origin: {} {} {} -> {} {}", req.remote_addr, req.method, Printable(req.target), res.status,
               res.get_header_value("Content-Length"));
  });
}

void Origin::Impl::ServeTree(const httplib::Request& req, httplib::Response& res) const {
  auto path = Resolve(root, req.path);
  if (!path) return NotFound(res);
  auto file = OpenRegular(*path);
  if (!file) return NotFound(res);
  std::string_view mime = MimeType(*path);
  if (mime == kPlaylistMime) {
    auto body = ReadAll(*file);
    if (!body) return NotFound(res);
    SendBytes(req, res, *body, mime, PlaylistCacheControl(*path, *file, *body));
    return;
  }
  // Segments (MPEG-TS, WebVTT, fMP4) and init segments are never rewritten: a new
  // source is a new v<N>/, a new codec configuration a new init file name.
  const std::string ext = path->extension().string();
  const bool segment = mime == kSegmentMime || mime == kSubtitleMime || ext == ".m4s" || ext == ".mp4";
  SendFile(req, res, std::move(*file), mime, segment ? kImmutable : kNoCache);
}

// A media playlist with #EXT-X-ENDLIST can no longer change (RFC 8216 4.3.3.4;
// the packager starts a new v<N>/ for a new source). The master is rewritten at
// completion after .state.json, so it is final only when the state says
// complete and the master is not older than that state. A new version of the
// title would change it again: one hour of caching bounds that staleness.
std::string_view Origin::Impl::PlaylistCacheControl(const fs::path& file, const OpenFile& f,
                                                    std::string_view body) const {
  if (file.filename() == kMasterPlaylistName) {
    auto info = ReadTitleInfo(file.parent_path());
    return info && info->complete && NotOlder(f.mtime, info->state_mtime) ? kCompletePlaylist : kNoCache;
  }
  return body.find("#EXT-X-ENDLIST") != std::string_view::npos ? kCompletePlaylist : kNoCache;
}

std::string Origin::Impl::TitlesJson() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!IsPlainName(name)) continue;
    auto master = Resolve(root, "/" + name + "/" + kMasterPlaylistName);
    if (master && OpenRegular(*master)) names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  auto list = nlohmann::json::array();
  for (const auto& name : names) {
    auto info = ReadTitleInfo(root / name);
    list.push_back({{"title", name}, {"complete", info && info->complete}, {"url", "/" + name + "/" + kMasterPlaylistName}});
  }
  return list.dump();
}

Origin::Origin(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Origin::~Origin() { Stop(); }

Result<std::unique_ptr<Origin>> Origin::Start(const OriginParams& params) {
  if (params.port < 0 || params.port > 65535) {
    return Error(ErrorCode::kInvalidArgument, "origin: port {} is not in 0-65535", params.port);
  }
  if (params.threads < 1) {
    return Error(ErrorCode::kInvalidArgument, "origin: threads must be at least 1, got {}", params.threads);
  }
  std::error_code ec;
  fs::path root = fs::canonical(params.root, ec);
  if (ec) return Error(ErrorCode::kInvalidArgument, "origin: root '{}': {}", params.root, ec.message());
  if (!fs::is_directory(root, ec)) {
    return Error(ErrorCode::kInvalidArgument, "origin: root '{}' is not a directory", params.root);
  }

  auto impl = std::make_unique<Impl>(params.metrics);
  impl->root = root;
  impl->bind = params.bind;
  impl->Configure(params.threads);

  errno = 0;
  int port = params.port == 0 ? impl->server.bind_to_any_port(params.bind)
                              : (impl->server.bind_to_port(params.bind, params.port) ? params.port : -1);
  if (port <= 0) {
    int err = errno;
    return Error(ErrorCode::kIo, "origin: cannot listen on {}:{}: {}", params.bind, params.port,
                 err ? std::generic_category().message(err) : "address not available");
  }
  impl->port = port;
  if (!impl->server.RaiseBacklog(SOMAXCONN)) log::Warn("origin: cannot raise the listen backlog of port {}", port);

  Impl* raw = impl.get();
  raw->thread = std::thread([raw] {
    if (!raw->server.listen_after_bind()) log::Error("origin: server on port {} stopped with an error", raw->port);
    raw->listen_returned = true;
  });
  // stop() is a no-op until the listen loop runs; wait for it so Stop() always works.
  while (!raw->server.is_running()) {
    if (raw->listen_returned) {
      raw->thread.join();
      return Error(ErrorCode::kIo, "origin: server on {}:{} did not start", params.bind, port);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  log::Debug("origin: serving '{}' on {}:{}", root.string(), params.bind, port);
  return std::unique_ptr<Origin>(new Origin(std::move(impl)));
}

int Origin::port() const { return impl_->port; }

std::string Origin::url() const {
  std::string host = impl_->bind;
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return fmt::format("http://{}:{}/", host, impl_->port);
}

Status Origin::CheckRoot() const {
  struct CloseDir {
    void operator()(DIR* d) const { ::closedir(d); }
  };
  std::unique_ptr<DIR, CloseDir> dir(::opendir(impl_->root.c_str()));
  int err = dir ? 0 : errno;
  if (dir) {
    errno = 0;
    if (!::readdir(dir.get())) err = errno;  // 0: an empty directory (never: it has . and ..)
  }
  if (err) return Error(ErrorCode::kIo, "root '{}': {}", impl_->root.string(), std::generic_category().message(err));
  return Status::Ok();
}

void Origin::Stop() {
  if (!impl_) return;
  std::lock_guard<std::mutex> lock(impl_->stop_mutex);
  if (!impl_->thread.joinable()) return;
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace khls::origin
