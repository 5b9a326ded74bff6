// The origin: an event-driven HTTP/1.1 server on Boost.Asio (one event loop per
// thread, all accepting on one listening socket) with Boost.Beast's request
// parser. Bodies of files go out with sendfile(2) from the page cache; small
// playlists are read whole and written with the header in one call.
//
// Per connection the server holds a parser, a header buffer of at most
// kMaxHeaderBytes, the response header and at most one playlist of
// kMaxMemoryBody bytes (larger files are never in memory). A connection waiting
// for a request costs no thread and no timer: each loop keeps its connections in
// a list and sweeps it for missed deadlines every kSweepInterval:
//   idle      (keep-alive, waiting for the first byte of a request)  idle_timeout
//   header    (from the first byte until the header is complete)    header_timeout
//   sending   (since the last byte the client accepted)              send_timeout
// so a client sending one byte per second, or reading nothing, is cut off without
// holding up anyone else.
#include "khls/origin.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <fmt/format.h>

#include <openssl/crypto.h>

#include "index_page.h"
#include "key_route.h"
#include "khls/log.h"
#include "khls/title_state.h"
#include "origin_assets.h"
#include "tree.h"

namespace khls::origin {
namespace fs = std::filesystem;
namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

constexpr size_t kMaxHeaderBytes = 16 << 10;  ///< request line + headers (nginx: 4 x 8 KiB)
constexpr size_t kReadSize = 4096;             ///< bytes asked of the socket per read
constexpr size_t kMaxMemoryBody = 64 << 10;    ///< playlists up to this size are read whole
constexpr size_t kKeepBufferBytes = 16 << 10;  ///< larger per-connection buffers are freed after use
constexpr size_t kSendfileChunk = 4 << 20;     ///< per call, so one fast reader cannot hog a loop
constexpr auto kSweepInterval = std::chrono::milliseconds(250);
constexpr auto kLingerTime = std::chrono::seconds(2);  ///< reading (and dropping) input after a close
constexpr auto kStopGrace = std::chrono::seconds(2);   ///< for responses in flight when stopping
constexpr size_t kMaxScanBytes = 8 << 20;  ///< a blocking reload reads the playlist whole, up to this
constexpr double kDefaultTargetDuration = 6;  ///< when a playlist has none
// Parsed playlists a loop keeps (then it starts over): every loop has its own,
// so this is per thread. A larger playlist is parsed for each request.
constexpr size_t kMaxCachedPlaylists = 4096;
constexpr size_t kMaxCachedPlaylistBytes = 16 << 20;
constexpr size_t kMaxCachedPlaylistSize = 1 << 20;

constexpr std::string_view kNoCache = packager::kCacheRevalidate;
constexpr std::string_view kImmutable = packager::kCacheImmutable;

/// What a request asked for, for the metrics: from its path alone, so a 404 is
/// counted with the kind it asked for.
enum Kind { kPlaylist = 0, kSegment = 1, kKey = 2, kOther = 3 };
constexpr const char* kKindNames[] = {"playlist", "segment", "key", "other"};
constexpr size_t kKinds = std::size(kKindNames);

Kind KindOf(std::string_view path) {
  if (KeyRoute::IsKeyPath(path)) return kKey;
  const auto dot = path.rfind('.');
  if (dot == std::string_view::npos || path.find('/', dot) != std::string_view::npos) return kOther;
  const std::string_view ext = path.substr(dot);
  if (ext == ".m3u8") return kPlaylist;
  if (ext == ".ts" || ext == ".m4s" || ext == ".vtt" || ext == ".mp4" || ext == ".aac") return kSegment;
  return kOther;
}

std::string_view Reason(int code) {
  switch (code) {
    case 200: return "OK";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

/// "Sun, 06 Dec 2026 05:00:00 GMT" (RFC 9110 IMF-fixdate; no locale involved).
void HttpDate(time_t t, std::string& out) {
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm g {};
  ::gmtime_r(&t, &g);
  out.clear();
  fmt::format_to(std::back_inserter(out), "{}, {:02} {} {} {:02}:{:02}:{:02} GMT", kDays[g.tm_wday], g.tm_mday,
                 kMonths[g.tm_mon], g.tm_year + 1900, g.tm_hour, g.tm_min, g.tm_sec);
}

std::string Printable(std::string_view s) {
  std::string out(s.substr(0, 256));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return out;
}

bool ParseSize(std::string_view s, size_t& out) {
  if (s.empty() || s.size() > 18) return false;
  size_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<size_t>(c - '0');
  }
  out = v;
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

enum class RangeKind { kWhole, kPart, kUnsatisfiable };
struct ByteRange {
  RangeKind kind = RangeKind::kWhole;
  size_t start = 0;
  size_t length = 0;
};

/// Interprets a Range header for a body of `size` bytes (RFC 9110 14.1.2). Several
/// ranges are answered with the whole body and a header that is not a byte range
/// is ignored, both of which the RFC allows; a range ending before it starts, or
/// starting past the end, is unsatisfiable.
ByteRange PickRange(std::string_view header, size_t size) {
  const ByteRange whole{RangeKind::kWhole, 0, size};
  header = Trim(header);
  if (header.substr(0, 6) != "bytes=") return whole;
  std::string_view spec = Trim(header.substr(6));
  if (spec.find(',') != std::string_view::npos) return whole;
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return whole;
  std::string_view first_s = Trim(spec.substr(0, dash));
  std::string_view last_s = Trim(spec.substr(dash + 1));
  size_t first = 0;
  size_t last = 0;
  if (first_s.empty()) {  // suffix: the last `last` bytes
    if (!ParseSize(last_s, last)) return whole;
    if (last == 0 || size == 0) return {RangeKind::kUnsatisfiable};
    last = std::min(last, size);
    return {RangeKind::kPart, size - last, last};
  }
  if (!ParseSize(first_s, first)) return whole;
  if (!last_s.empty()) {
    if (!ParseSize(last_s, last)) return whole;
    if (last < first) return {RangeKind::kUnsatisfiable};
  }
  if (first >= size) return {RangeKind::kUnsatisfiable};
  const size_t end = (last_s.empty() || last >= size) ? size - 1 : last;
  return {RangeKind::kPart, first, end - first + 1};
}

/// The origin's request accounting (OriginParams::metrics, or a registry of its own).
class Accounting {
 public:
  explicit Accounting(metrics::Registry* shared)
      : own_(shared ? nullptr : std::make_unique<metrics::Registry>()),
        registry_(shared ? *shared : *own_),
        requests_(registry_.AddCounterFamily(
            "khls_origin_requests_total",
            "HTTP requests answered, by kind (playlist, segment, key, other) and status code", {"kind", "code"})),
        bytes_(registry_.AddCounterFamily("khls_origin_sent_bytes_total", "Response body bytes sent, by kind",
                                          {"kind"})) {
    for (size_t k = 0; k < kKinds; ++k) sent_[k] = &bytes_.With({kKindNames[k]});
  }
  metrics::Counter& Requests(Kind kind, int code) { return requests_.With({kKindNames[kind], std::to_string(code)}); }
  metrics::Counter& Sent(Kind kind) { return *sent_[kind]; }

 private:
  std::unique_ptr<metrics::Registry> own_;
  metrics::Registry& registry_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Counter>& bytes_;
  std::array<metrics::Counter*, kKinds> sent_{};
};

struct Limits {
  Clock::duration idle;
  Clock::duration header;
  Clock::duration send;
  size_t max_connections_per_loop;
};

class Session;

/// A media playlist as read and parsed once, shared by every request that
/// answers from (or waits on) that version of the file. A file is one version
/// as long as its device, inode, mtime and size stay (the packager replaces
/// playlists by rename, which makes a new inode).
struct Snapshot {
  struct Id {
    dev_t device = 0;
    ino_t inode = 0;
    int64_t mtime_ns = 0;
    size_t size = 0;
    bool operator==(const Id&) const = default;
  };
  static Id IdOf(const OpenFile& f) {
    return {f.device, f.inode, static_cast<int64_t>(f.mtime.tv_sec) * 1000000000 + f.mtime.tv_nsec, f.size};
  }
  Id id;
  std::string text;
  PlaylistPosition pos;
  /// Its delta update (_HLS_skip), built by the first request that asks (one
  /// loop's thread only touches it): nothing inside when it skips nothing.
  mutable std::optional<std::optional<std::string>> delta;
  const std::optional<std::string>& Delta() const {
    if (!delta) delta = DeltaUpdate(text, pos);
    return *delta;
  }
};

/// One event loop (one thread): accepts on its copy of the listening socket and
/// serves the connections it accepted.
class Loop {
 public:
  /// Takes ownership of `listen_fd`.
  Loop(const Tree& tree, const KeyRoute& keys, Accounting& accounting, const Limits& limits, const tcp& protocol,
       int listen_fd)
      : tree_(tree),
        keys_(keys),
        accounting_(accounting),
        limits_(limits),
        acceptor_(ioc_),
        sweep_(ioc_),
        retry_(ioc_) {
    error_code ec;
    acceptor_.assign(protocol, listen_fd, ec);
    if (ec) {
      ::close(listen_fd);
      log::Error("origin: cannot use the listening socket: {}", ec.message());
    }
    acceptor_.non_blocking(true, ec);
    const int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (in >= 0) {
      inotify_.assign(in, ec);
    } else {
      log::Warn("origin: inotify unavailable ({}): blocking playlist reloads are answered at once, "
                "requests for preload-hinted parts that do not exist yet with 404",
                std::generic_category().message(errno));
    }
  }

  /// Sessions parked in watches_ go first, while the io_context they belong to lives.
  ~Loop() {
    watches_.clear();
    watch_by_dir_.clear();
    playlists_.clear();
  }

  void Run() {
    Accept();
    Sweep();
    if (inotify_.is_open()) WatchEvents();
    while (true) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {  // a handler failed (out of memory): that connection is dropped
        log::Error("origin: {}", e.what());
      }
    }
  }
  /// From any thread: stop accepting, close idle connections, let responses in
  /// flight finish within kStopGrace, then return from Run().
  void RequestStop() {
    net::post(ioc_, [this] { BeginStop(); });
  }

  bool stopping() const { return stopping_; }
  const Tree& tree() const { return tree_; }
  const KeyRoute& keys() const { return keys_; }
  const Limits& limits() const { return limits_; }
  Clock::time_point now() const { return now_; }
  void Tick() { now_ = Clock::now(); }

  /// The current Date header value (recomputed once a second).
  std::string_view Date() {
    const time_t t = ::time(nullptr);
    if (t != date_time_) {
      date_time_ = t;
      HttpDate(t, date_);
    }
    return date_;
  }

  /// Counts a response. Counts are kept per loop and added to the shared
  /// counters at every sweep: no contended atomic per request.
  void Count(Kind kind, int code, size_t body_bytes) {
    sent_pending_[kind] += body_bytes;
    for (auto& p : request_counts_[kind]) {
      if (p.code == code) {
        ++p.pending;
        return;
      }
    }
    request_counts_[kind].push_back({code, &accounting_.Requests(kind, code), 1});
  }

  std::list<Session*>::iterator Add(Session* s) { return sessions_.insert(sessions_.end(), s); }
  void Remove(std::list<Session*>::iterator it) { sessions_.erase(it); }

  /// Holds `session` (a blocking playlist reload, RFC 8216bis 6.2.5.2, or a
  /// request for a preload-hinted part, 6.2.6) until one of `names` in `dir`
  /// is replaced or written and its Wakes() says that may answer it; then
  /// calls its Retry(). False when the directory cannot be watched (the caller
  /// answers at once).
  bool Park(const std::string& dir, std::initializer_list<std::string_view> names,
            const std::shared_ptr<Session>& session, uint64_t gen);

  /// The parsed playlist `f` (opened as `key`: its directory and name), from
  /// the cache when that version was read before; null when it cannot be read
  /// whole (over kMaxScanBytes, or truncated under us).
  std::shared_ptr<const Snapshot> Playlist(const std::string& key, const OpenFile& f);

 private:
  void Accept();
  void Sweep();
  void BeginStop();
  void WatchEvents();
  /// Drops waiters that are no longer parked and watches nobody waits on.
  void PruneWaiters();
  /// Playlist() of the file at `path` (a watched directory and a name).
  std::shared_ptr<const Snapshot> PlaylistAt(const std::string& path);

  const Tree& tree_;
  const KeyRoute& keys_;
  Accounting& accounting_;
  const Limits& limits_;
  std::list<Session*> sessions_;  ///< before ioc_ and waiters: sessions leave it when destroyed

  // Parked blocking reloads: inotify watch descriptor -> directory and, per file
  // name, the sessions waiting on it (with the park generation they were parked in).
  struct Waiting {
    std::shared_ptr<Session> session;
    uint64_t gen;
  };
  struct Watch {
    std::string dir;
    /// Every path it was asked for: one directory reached through a symlink is
    /// the same watch (inotify gives the inode one descriptor).
    std::vector<std::string> aliases;
    std::unordered_map<std::string, std::vector<Waiting>> files;
  };
  std::unordered_map<int, Watch> watches_;
  std::unordered_map<std::string, int> watch_by_dir_;
  /// Parsed playlists by path (directory + name), for requests and for waking
  /// waiters: one read and parse per version of a file, not one per request.
  std::unordered_map<std::string, std::shared_ptr<const Snapshot>> playlists_;
  size_t playlist_bytes_ = 0;

  // One thread runs it and only that thread touches its sockets: no locking in the
  // reactor (RequestStop's post still goes through the locked scheduler queue).
  net::io_context ioc_{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  tcp::acceptor acceptor_;
  net::steady_timer sweep_;
  net::steady_timer retry_;
  net::posix::stream_descriptor inotify_{ioc_};
  bool stopping_ = false;
  Clock::time_point stop_deadline_{};
  Clock::time_point now_ = Clock::now();
  time_t date_time_ = 0;
  std::string date_;
  struct PendingCount {
    int code;
    metrics::Counter* counter;
    uint64_t pending;
  };
  std::array<std::vector<PendingCount>, kKinds> request_counts_;
  std::array<uint64_t, kKinds> sent_pending_{};

  void FlushCounts() {
    for (size_t k = 0; k < kKinds; ++k) {
      for (auto& p : request_counts_[k]) {
        if (p.pending > 0) p.counter->Inc(static_cast<double>(std::exchange(p.pending, 0)));
      }
      if (sent_pending_[k] > 0) {
        accounting_.Sent(static_cast<Kind>(k)).Inc(static_cast<double>(std::exchange(sent_pending_[k], 0)));
      }
    }
  }
};

/// One connection: reads requests (keep-alive, pipelined) and writes responses.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Loop& loop, tcp::socket socket) : loop_(loop), socket_(std::move(socket)), buffer_(kMaxHeaderBytes) {
    pos_ = loop_.Add(this);
  }
  ~Session() {
    ForgetKey();
    loop_.Remove(pos_);
  }

  void Start() {
    error_code ec;
    socket_.non_blocking(true, ec);
    socket_.set_option(tcp::no_delay(true), ec);
    ::fcntl(socket_.native_handle(), F_SETFD, FD_CLOEXEC);
    ReadRequest();
  }

  /// Closes the connection now: its pending operation ends with operation_aborted
  /// and releases the session. `abort`: reset it (a stalled client's unsent data
  /// is dropped at once instead of lingering in the kernel).
  void Close(bool abort = false) {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kClosed;
    error_code ec;
    if (abort) socket_.set_option(net::socket_base::linger(true, 0), ec);
    socket_.close(ec);
  }
  bool Expired(Clock::time_point now) const { return phase_ != Phase::kClosed && now >= deadline_; }
  bool Busy() const { return phase_ == Phase::kWriting; }
  /// Past its deadline: a parked reload is answered 503, anything else cut off.
  void OnDeadline() {
    if (phase_ == Phase::kParked) {
      ++park_gen_;
      return Simple(503, "Cache-Control: no-cache\r\nRetry-After: 1\r\n");
    }
    Close(/*abort=*/phase_ != Phase::kLingering);
  }
  bool ParkedWith(uint64_t gen) const { return phase_ == Phase::kParked && park_gen_ == gen; }
  /// Parked: whether the change of `name` (in the directory it waits on) may
  /// answer it. `playlist` reads and parses that file (once for all waiters; null
  /// when it cannot be read, and then the waiter looks itself).
  bool Wakes(std::string_view name, const std::function<const Snapshot*()>& playlist) const;
  /// What a parked request waits on changed: look again.
  void Retry() {
    ++park_gen_;  // (still kParked: ServeTree keeps the first wait's deadline)
    ServeTree();
  }

 private:
  enum class Phase { kIdle, kHeader, kWriting, kParked, kLingering, kClosed };

  void ReadRequest();
  void Parse();
  void AwaitInput();
  void ParseError(const error_code& ec);
  void Handle();
  void ServeTree();
  /// A media playlist with delivery directives (_HLS_msn, _HLS_part, _HLS_skip).
  void ServeDirectives(OpenFile file, std::string_view mime);
  /// A file that is not there: held when it is the preload hint of the media
  /// playlist beside it, else 404.
  void ServeMissing();
  /// Parks until `names` in the directory of path_ change; false when it cannot
  /// (the caller answers at once). `target_duration` sets the deadline of the
  /// first wait: three of them (RFC 8216bis 6.2.5.2).
  bool ParkOn(std::initializer_list<std::string_view> names, double target_duration);
  /// The cache key (and watch path) of `name` beside path_.
  std::string DirOfPath() const;
  void ServeKey();
  /// Overwrites a key this session sent (owned_), so it does not linger in freed
  /// or reused memory.
  void ForgetKey();
  void Linger();

  // Response building.
  void BeginHead(int code);
  void EndHead();
  /// A response without content: an empty body, or `text` as text/plain (a
  /// static string: it is sent from where it is).
  void Simple(int code, std::string_view extra_headers = {}, std::string_view text = {});
  /// `validators`: the bytes are the file's (etag_, last_modified_) as they are.
  void SendBytes(std::string_view data, std::string_view mime, std::string_view cache_control,
                 bool validators = false);
  void SendFile(OpenFile file, std::string_view mime, std::string_view cache_control);
  /// Range/conditional handling shared by bytes and files; false when the
  /// response (304/416) is complete without a body.
  bool Negotiate(size_t size, const std::string* etag, const std::string* last_modified, ByteRange& range);
  bool ContentHead(size_t size, bool validators, std::string_view mime, std::string_view cache_control,
                   ByteRange& range);
  void Count(int code, size_t body_bytes);
  void Write();
  void Finish();

  Loop& loop_;
  tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  std::list<Session*>::iterator pos_;
  Phase phase_ = Phase::kIdle;
  Clock::time_point deadline_{};

  // The request being answered.
  std::string path_;  ///< decoded
  // Delivery directives (RFC 8216bis 6.2.5), and what a parked request waits for.
  std::optional<uint64_t> hls_msn_;   ///< _HLS_msn: a blocking playlist reload
  std::optional<uint64_t> hls_part_;  ///< _HLS_part (only with _HLS_msn)
  bool hls_skip_ = false;             ///< _HLS_skip=YES or v2: a delta update
  enum class Wait { kReload, kHint } wait_ = Wait::kReload;
  uint64_t park_gen_ = 0;
  std::shared_ptr<const Snapshot> snapshot_;  ///< the playlist body_ points into
  Kind kind_ = kOther;
  bool head_only_ = false;
  bool keep_alive_ = true;
  int code_ = 0;

  // The response: head_[head_off_..], then body_ (memory) or file_ from file_off_.
  std::string head_;
  size_t head_off_ = 0;
  std::string owned_;  ///< a body this session owns (a playlist, /api/titles, a key)
  bool owned_key_ = false;  ///< owned_ holds a key
  std::string_view body_;
  Fd file_;
  off_t file_off_ = 0;
  size_t file_left_ = 0;
  std::string etag_;
  std::string last_modified_;
  time_t last_modified_time_ = -1;  ///< what last_modified_ shows
};

void Session::ReadRequest() {
  phase_ = Phase::kIdle;
  parser_.emplace();
  parser_->header_limit(kMaxHeaderBytes);
  deadline_ = loop_.now() + loop_.limits().idle;
  Parse();
}

// Parses what is buffered (a pipelined request may already be there); asks the
// socket for more only when the header is incomplete.
void Session::Parse() {
  if (buffer_.size() > 0) {
    error_code ec;
    const size_t used = parser_->put(buffer_.data(), ec);
    buffer_.consume(used);
    if (ec && ec != http::error::need_more) return ParseError(ec);
    if (parser_->is_header_done()) {
      try {
        return Handle();
      } catch (const std::exception& e) {
        log::Warn("origin: {}: {}", Printable(path_), e.what());
        keep_alive_ = false;
        return Simple(500);
      }
    }
    if (phase_ == Phase::kIdle) {  // the first bytes of a request: its header must now come quickly
      phase_ = Phase::kHeader;
      deadline_ = std::min(deadline_, loop_.now() + loop_.limits().header);
    }
  }
  AwaitInput();
}

void Session::AwaitInput() {
  if (buffer_.size() >= buffer_.max_size()) return ParseError(http::error::header_limit);
  auto space = buffer_.prepare(std::min(kReadSize, buffer_.max_size() - buffer_.size()));
  socket_.async_read_some(space, [self = shared_from_this()](const error_code& ec, size_t n) {
    if (self->phase_ == Phase::kClosed || ec == net::error::operation_aborted) return;
    self->loop_.Tick();
    if (ec) return self->Close();  // EOF, reset: the client is gone
    self->buffer_.commit(n);
    self->Parse();
  });
}

void Session::ParseError(const error_code& ec) {
  keep_alive_ = false;
  head_only_ = false;
  kind_ = kOther;
  path_.clear();
  const bool too_large = ec == http::error::header_limit || ec == http::error::buffer_overflow;
  log::Debug("origin: bad request: {}", ec.message());
  // The parser keeps the target once the request line is complete: without one,
  // the request line alone was over the limit (a URL of more than ~16 KiB).
  const bool long_url = too_large && parser_ && parser_->get().target().empty();
  Simple(long_url ? 414 : too_large ? 431 : 400);
}

void Session::Handle() {
  const auto& req = parser_->get();
  // A request with a body is answered, then the connection is closed: bodies are
  // never read (nothing here takes one).
  const bool has_body = !parser_->is_done();
  keep_alive_ = req.keep_alive() && !has_body && !loop_.stopping();
  head_only_ = req.method() == http::verb::head;
  const std::string_view target(req.target().data(), req.target().size());
  const size_t question = target.find('?');
  const std::string_view raw_path = target.substr(0, question);
  PercentDecode(raw_path, path_);
  kind_ = KindOf(path_);  // (before any answer: a refused query is counted with its kind)
  hls_msn_.reset();
  hls_part_.reset();
  hls_skip_ = false;
  if (question != std::string_view::npos) {
    std::string_view query = target.substr(question + 1);
    while (!query.empty()) {
      const size_t amp = query.find('&');
      const std::string_view param = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      size_t n = 0;
      if (param.substr(0, 9) == "_HLS_msn=") {
        if (!ParseSize(param.substr(9), n)) return Simple(400, "Cache-Control: no-cache\r\n");
        hls_msn_ = n;
      } else if (param.substr(0, 10) == "_HLS_part=") {
        if (!ParseSize(param.substr(10), n)) return Simple(400, "Cache-Control: no-cache\r\n");
        hls_part_ = n;
      } else if (param == "_HLS_skip=YES" || param == "_HLS_skip=v2") {
        hls_skip_ = true;  // v2 may also skip old EXT-X-DATERANGE tags: the packager writes none
      }
    }
    // RFC 8216bis 6.2.5.2: a part index means nothing without its segment.
    if (hls_part_ && !hls_msn_) return Simple(400, "Cache-Control: no-cache\r\n");
  }
  if (log::GetLevel() <= log::Level::kDebug) {
    log::Debug("origin: {} {}", std::string_view(req.method_string().data(), req.method_string().size()),
               Printable(target));
  }

  switch (req.method()) {
    case http::verb::get:
    case http::verb::head:
      break;
    case http::verb::options:
      return Simple(204,
                    "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
                    "Access-Control-Allow-Headers: Range, If-None-Match, If-Modified-Since, Accept, Origin, "
                    "Authorization\r\n"
                    "Access-Control-Max-Age: 86400\r\n"
                    "Allow: GET, HEAD, OPTIONS\r\n");
    default:
      return Simple(405, "Allow: GET, HEAD, OPTIONS\r\n");
  }
  if (target.empty() || target.front() != '/') return Simple(400);  // only origin-form targets
  if (kind_ == kKey) return ServeKey();  // never from the served tree, whatever is there
  if (path_ == "/" || path_ == "/index.html") return SendBytes(kIndexPage, "text/html; charset=utf-8", kNoCache);
  if (path_ == "/hls.min.js") {
    std::string_view js = origin_assets::HlsJs();
    if (js.empty()) return Simple(404, "Cache-Control: no-cache\r\n");
    return SendBytes(js, "application/javascript", "public, max-age=3600");
  }
  if (path_ == "/api/titles") {
    owned_ = loop_.tree().TitlesJson();
    return SendBytes(owned_, "application/json", "no-store");
  }
  ServeTree();
}

void Session::ServeTree() {
  auto file = loop_.tree().Open(path_);
  if (!file) return ServeMissing();
  const std::string_view mime = MimeType(file->extension);
  etag_.clear();
  fmt::format_to(std::back_inserter(etag_), "\"{:x}-{:x}-{:x}\"", file->inode,
                 static_cast<uint64_t>(file->mtime.tv_sec) * 1000000000ull + static_cast<uint64_t>(file->mtime.tv_nsec),
                 file->size);
  if (file->mtime.tv_sec != last_modified_time_) {
    last_modified_time_ = file->mtime.tv_sec;
    HttpDate(last_modified_time_, last_modified_);
  }
  if (mime == packager::kPlaylistMime) {
    if ((hls_msn_ || hls_skip_) && !file->is_master) return ServeDirectives(std::move(*file), mime);
    if (file->size <= kMaxMemoryBody) {
      owned_.resize(file->size);
      size_t done = 0;
      while (done < owned_.size()) {
        ssize_t n = ::pread(file->fd.get(), owned_.data() + done, owned_.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += static_cast<size_t>(n);
      }
      if (done != owned_.size()) return Simple(404, "Cache-Control: no-cache\r\n");  // truncated under us
      const std::string_view cache = loop_.tree().PlaylistCacheControl(path_, *file, owned_);
      return SendBytes(owned_, mime, cache, /*validators=*/true);
    }
    const std::string_view cache = loop_.tree().PlaylistCacheControl(path_, *file, {});
    return SendFile(std::move(*file), mime, cache);
  }
  // Segments (MPEG-TS, WebVTT, fMP4) and init segments are never rewritten: a new
  // source is a new v<N>/, a new codec configuration a new init file name. Parts
  // (seg-000012.p1.m4s / .ts) neither: they appear whole, by rename.
  const std::string& ext = file->extension;
  const bool segment = mime == packager::kSegmentMime || mime == packager::kSubtitleMime || ext == ".m4s" ||
                       ext == ".mp4";
  SendFile(std::move(*file), mime, segment ? kImmutable : kNoCache);
}

std::string Session::DirOfPath() const {
  return (loop_.tree().root() / path_.substr(1, path_.rfind('/'))).string();
}

bool Session::ParkOn(std::initializer_list<std::string_view> names, double target_duration) {
  if (phase_ != Phase::kParked) {  // the first wait: the deadline is 3 target durations
    const double td = target_duration > 0 ? target_duration : kDefaultTargetDuration;
    deadline_ = loop_.now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(3 * td));
  }
  if (!loop_.Park(DirOfPath(), names, shared_from_this(), park_gen_)) return false;
  phase_ = Phase::kParked;
  snapshot_.reset();
  if (owned_.capacity() > kKeepBufferBytes) std::string().swap(owned_);
  return true;
}

// Blocking reload first (RFC 8216bis 6.2.5.2: answered once the playlist has
// segment _HLS_msn, or part _HLS_part of it, or ended; too far ahead is a client
// error), then the delta update (6.2.5.1) of the playlist that satisfied it.
// Both answer from the loop's parsed copy of this version of the file.
void Session::ServeDirectives(OpenFile file, std::string_view mime) {
  const std::string dir = DirOfPath();
  const std::string_view name = std::string_view(path_).substr(path_.rfind('/') + 1);
  auto snap = loop_.Playlist(dir + std::string(name), file);
  if (!snap) {
    // Too large to scan: a delta update is only an optimisation, the file will do;
    // a blocking reload cannot tell what it waits for.
    if (!hls_msn_ && file.size > kMaxScanBytes) {
      const std::string_view cache = loop_.tree().PlaylistCacheControl(path_, file, {});
      return SendFile(std::move(file), mime, cache);
    }
    return Simple(404, "Cache-Control: no-cache\r\n");
  }
  if (hls_msn_) {
    switch (BlockingReload(snap->pos, *hls_msn_, hls_part_)) {
      case Reload::kTooFar:
        return Simple(400, "Cache-Control: no-cache\r\n");
      case Reload::kWait:
        wait_ = Wait::kReload;
        if (ParkOn({name}, snap->pos.target_duration)) return;
        break;  // cannot wait (no inotify): the playlist as it is
      case Reload::kReady:
        break;
    }
  }
  snapshot_ = std::move(snap);
  if (hls_skip_) {
    if (const auto& delta = snapshot_->Delta()) {
      // Not the file's bytes: no validators (a 304 against the file's ETag would
      // confirm the wrong body), and never cached.
      return SendBytes(*delta, mime, kNoCache);
    }
  }
  const std::string_view cache = loop_.tree().PlaylistCacheControl(path_, file, snapshot_->text);
  SendBytes(snapshot_->text, mime, cache, /*validators=*/true);
}

// RFC 8216bis 6.2.6: a client may ask for the part named by the playlist's
// EXT-X-PRELOAD-HINT before it exists; the request is held until the packager
// renames it into place (then answered like any file), and refused (404) once
// the playlist ended or hints another part without it having come (a hint the
// packager withdrew). Only TYPE=PART hints in the media playlist of the same
// directory count; any other missing file is a 404 at once.
void Session::ServeMissing() {
  if (kind_ != kSegment) return Simple(404, "Cache-Control: no-cache\r\n");
  const size_t slash = path_.rfind('/');
  const std::string_view name = std::string_view(path_).substr(slash + 1);
  const std::string playlist_path = path_.substr(0, slash + 1) + packager::kMediaPlaylistName;
  auto playlist = loop_.tree().Open(playlist_path);
  if (!playlist) return Simple(404, "Cache-Control: no-cache\r\n");
  auto snap = loop_.Playlist(DirOfPath() + packager::kMediaPlaylistName, *playlist);
  if (!snap || snap->pos.ended || snap->pos.preload_part != name) return Simple(404, "Cache-Control: no-cache\r\n");
  wait_ = Wait::kHint;
  if (ParkOn({name, packager::kMediaPlaylistName}, snap->pos.target_duration)) return;
  Simple(404, "Cache-Control: no-cache\r\n");  // cannot wait (no inotify)
}

bool Session::Wakes(std::string_view name, const std::function<const Snapshot*()>& playlist) const {
  const std::string_view own = std::string_view(path_).substr(path_.rfind('/') + 1);
  if (wait_ == Wait::kHint && name == own) return true;  // the part came
  const Snapshot* snap = playlist();
  if (!snap) return true;
  if (wait_ == Wait::kReload) return BlockingReload(snap->pos, *hls_msn_, hls_part_) != Reload::kWait;
  return snap->pos.ended || snap->pos.preload_part != own;
}

constexpr std::string_view kKeysNotServed =
    "keys are not served by this origin: start 'kafka-hls serve' with --key-token TOKEN "
    "(and --key-store DIR if the keys are not in <root>.keys)\n";
constexpr std::string_view kKeyNeedsToken = "a key needs the header Authorization: Bearer <the origin's key token>\n";
constexpr std::string_view kKeyWrongToken = "the Authorization header does not carry this origin's key token\n";

// Keys are for the holders of the token only: no answer about them may be kept
// by a shared cache, and none carries validators (nothing to revalidate).
void Session::ServeKey() {
  const auto& req = parser_->get();
  std::array<std::string_view, 2> auth;  // a second field is enough to refuse
  size_t fields = 0;
  for (auto [it, end] = req.equal_range(http::field::authorization); it != end && fields < auth.size(); ++it) {
    auth[fields++] = std::string_view(it->value().data(), it->value().size());
  }
  switch (loop_.keys().Check(std::span<const std::string_view>(auth.data(), fields))) {
    case KeyRoute::Access::kNotServed:
      return Simple(403, "Cache-Control: no-store\r\n", kKeysNotServed);
    case KeyRoute::Access::kNoCredentials:
      return Simple(401, "WWW-Authenticate: Bearer realm=\"kafka-hls keys\"\r\nCache-Control: no-store\r\n",
                    kKeyNeedsToken);
    case KeyRoute::Access::kRefused:
      return Simple(403, "Cache-Control: no-store\r\n", kKeyWrongToken);
    case KeyRoute::Access::kGranted:
      break;
  }
  auto key = loop_.keys().Read(path_);
  if (!key.ok()) {
    log::Error("origin: {}", key.status().message());
    return Simple(500, "Cache-Control: no-store\r\n");
  }
  if (!*key) return Simple(404, "Cache-Control: no-store\r\n");
  // A Range is ignored (RFC 9110 14.2 allows it): a key is used whole.
  ForgetKey();
  owned_.assign((*key)->data(), (*key)->size());
  owned_key_ = true;
  OPENSSL_cleanse((*key)->data(), (*key)->size());
  BeginHead(200);
  fmt::format_to(std::back_inserter(head_),
                 "Content-Type: application/octet-stream\r\nContent-Length: {}\r\nCache-Control: private, no-store\r\n",
                 owned_.size());
  EndHead();
  body_ = head_only_ ? std::string_view() : std::string_view(owned_);
  Count(code_, body_.size());
  Write();
}

void Session::ForgetKey() {
  if (!owned_key_) return;
  OPENSSL_cleanse(owned_.data(), owned_.size());
  owned_.clear();
  owned_key_ = false;
}

void Session::BeginHead(int code) {
  code_ = code;
  head_.clear();
  head_off_ = 0;
  head_ += "HTTP/1.1 ";
  head_ += std::to_string(code);
  head_ += ' ';
  head_ += Reason(code);
  head_ += "\r\nDate: ";
  head_ += loop_.Date();
  head_ +=
      "\r\nAccess-Control-Allow-Origin: *\r\n"
      "Access-Control-Expose-Headers: Content-Length, Content-Range, Accept-Ranges\r\n"
      "X-Content-Type-Options: nosniff\r\n";
}

void Session::EndHead() {
  head_ += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
}

void Session::Simple(int code, std::string_view extra_headers, std::string_view text) {
  BeginHead(code);
  head_ += extra_headers;
  if (!text.empty()) {
    fmt::format_to(std::back_inserter(head_), "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
                   text.size());
  } else if (code != 204 && code != 304) {
    head_ += "Content-Length: 0\r\n";
  }
  EndHead();
  body_ = head_only_ ? std::string_view() : text;
  Count(code, body_.size());
  Write();
}

bool Session::Negotiate(size_t size, const std::string* etag, const std::string* last_modified, ByteRange& range) {
  const auto& req = parser_->get();
  if (etag) {
    auto inm = req.find(http::field::if_none_match);
    auto ims = req.find(http::field::if_modified_since);
    bool not_modified = false;
    if (inm != req.end()) {
      const std::string_view v(inm->value().data(), inm->value().size());
      not_modified = Trim(v) == "*" || v.find(*etag) != std::string_view::npos;
    } else if (ims != req.end()) {
      not_modified = Trim(std::string_view(ims->value().data(), ims->value().size())) == *last_modified;
    }
    if (not_modified) {
      BeginHead(304);
      fmt::format_to(std::back_inserter(head_), "ETag: {}\r\nLast-Modified: {}\r\n", *etag, *last_modified);
      return false;
    }
  }
  range = {RangeKind::kWhole, 0, size};
  auto r = req.find(http::field::range);
  if (r == req.end()) return true;
  auto if_range = req.find(http::field::if_range);
  if (if_range != req.end()) {
    const std::string_view v = Trim(std::string_view(if_range->value().data(), if_range->value().size()));
    if (!etag || (v != *etag && v != *last_modified)) return true;  // changed since: the whole body
  }
  range = PickRange(std::string_view(r->value().data(), r->value().size()), size);
  if (range.kind == RangeKind::kUnsatisfiable) {
    BeginHead(416);
    fmt::format_to(std::back_inserter(head_), "Content-Range: bytes */{}\r\nContent-Length: 0\r\n", size);
    return false;
  }
  return true;
}

// Negotiates (304, 416, ranges) and builds the head of a content response of
// `size` bytes; false when the response is complete without a body and on its way.
bool Session::ContentHead(size_t size, bool validators, std::string_view mime, std::string_view cache_control,
                          ByteRange& range) {
  if (!Negotiate(size, validators ? &etag_ : nullptr, &last_modified_, range)) {
    fmt::format_to(std::back_inserter(head_), "Cache-Control: {}\r\n", cache_control);
    EndHead();
    body_ = {};
    Count(code_, 0);
    Write();
    return false;
  }
  BeginHead(range.kind == RangeKind::kPart ? 206 : 200);
  fmt::format_to(std::back_inserter(head_),
                 "Content-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\nAccept-Ranges: bytes\r\n", mime,
                 range.length, cache_control);
  if (range.kind == RangeKind::kPart) {
    fmt::format_to(std::back_inserter(head_), "Content-Range: bytes {}-{}/{}\r\n", range.start,
                   range.start + range.length - 1, size);
  }
  if (validators) fmt::format_to(std::back_inserter(head_), "ETag: {}\r\nLast-Modified: {}\r\n", etag_, last_modified_);
  EndHead();
  return true;
}

void Session::SendBytes(std::string_view data, std::string_view mime, std::string_view cache_control,
                        bool validators) {
  validators = validators && !etag_.empty();
  ByteRange range;
  if (!ContentHead(data.size(), validators, mime, cache_control, range)) return;
  body_ = head_only_ ? std::string_view() : data.substr(range.start, range.length);
  Count(code_, body_.size());
  Write();
}

void Session::SendFile(OpenFile file, std::string_view mime, std::string_view cache_control) {
  ByteRange range;
  if (!ContentHead(file.size, /*validators=*/true, mime, cache_control, range)) return;
  body_ = {};
  file_left_ = head_only_ ? 0 : range.length;
  if (file_left_ > 0) {
    file_ = std::move(file.fd);
    file_off_ = static_cast<off_t>(range.start);
  }
  Count(code_, file_left_);
  Write();
}

void Session::Count(int code, size_t body_bytes) { loop_.Count(kind_, code, body_bytes); }

// Writes as much as the socket takes now; waits for it to drain otherwise. The
// header goes with a memory body in one call, or ahead of sendfile with MSG_MORE
// (one segment on the wire for both).
void Session::Write() {
  phase_ = Phase::kWriting;
  deadline_ = loop_.now() + loop_.limits().send;
  while (true) {
    error_code ec;
    size_t n = 0;
    if (head_off_ < head_.size()) {
      const net::const_buffer head(head_.data() + head_off_, head_.size() - head_off_);
      if (file_left_ > 0) {
        n = socket_.send(head, MSG_MORE, ec);
        head_off_ += n;
      } else {
        const std::array<net::const_buffer, 2> bufs{head, net::buffer(body_.data(), body_.size())};
        n = socket_.send(bufs, 0, ec);
        const size_t from_head = std::min(n, head_.size() - head_off_);
        head_off_ += from_head;
        body_.remove_prefix(n - from_head);
      }
    } else if (!body_.empty()) {
      n = socket_.send(net::buffer(body_.data(), body_.size()), 0, ec);
      body_.remove_prefix(n);
    } else if (file_left_ > 0) {
      const ssize_t sent = ::sendfile(socket_.native_handle(), file_.get(), &file_off_, std::min(file_left_, kSendfileChunk));
      if (sent < 0) {
        if (errno == EINTR) continue;
        ec = error_code(errno, boost::system::system_category());
      } else if (sent == 0) {
        log::Warn("origin: {} shrank while being sent; connection closed", Printable(path_));
        return Close();  // the length promised cannot be kept
      } else {
        n = static_cast<size_t>(sent);
        file_left_ -= n;
      }
    } else {
      return Finish();
    }
    if (ec == net::error::would_block || ec == net::error::try_again) {
      socket_.async_wait(tcp::socket::wait_write, [self = shared_from_this()](const error_code& e) {
        if (self->phase_ == Phase::kClosed || e == net::error::operation_aborted) return;
        self->loop_.Tick();
        if (e) return self->Close();
        self->Write();
      });
      return;
    }
    if (ec) return Close();  // reset by the client, broken pipe
    if (n > 0) deadline_ = loop_.now() + loop_.limits().send;
  }
}

void Session::Finish() {
  file_.reset();
  body_ = {};
  snapshot_.reset();
  ForgetKey();
  if (owned_.capacity() > kKeepBufferBytes) std::string().swap(owned_);
  if (head_.capacity() > kKeepBufferBytes) std::string().swap(head_);
  etag_.clear();
  if (!keep_alive_ || loop_.stopping()) return Linger();
  ReadRequest();
}

// A close with unread input makes the kernel send a reset, which can destroy the
// response before the client read it: half-close, then read and drop what the
// client still sends, for at most kLingerTime.
void Session::Linger() {
  phase_ = Phase::kLingering;
  deadline_ = loop_.now() + kLingerTime;
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return Close();
  buffer_.clear();
  auto space = buffer_.prepare(std::min(kReadSize, buffer_.max_size()));
  socket_.async_read_some(space, [self = shared_from_this()](const error_code& e, size_t) {
    if (self->phase_ == Phase::kClosed || e == net::error::operation_aborted) return;
    self->loop_.Tick();
    if (e) return self->Close();
    self->Linger();
  });
}

void Loop::Accept() {
  if (stopping_) return;
  if (sessions_.size() >= limits_.max_connections_per_loop) {  // full: try again shortly
    retry_.expires_after(std::chrono::milliseconds(20));
    retry_.async_wait([this](const error_code& ec) {
      if (!ec) Accept();
    });
    return;
  }
  acceptor_.async_accept([this](const error_code& ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || stopping_) return;
    Tick();
    if (ec) {
      // EMFILE/ENFILE/ENOBUFS: back off instead of spinning on a ready listener.
      log::Warn("origin: accept failed: {}", ec.message());
      retry_.expires_after(std::chrono::milliseconds(100));
      retry_.async_wait([this](const error_code& e) {
        if (!e) Accept();
      });
      return;
    }
    std::make_shared<Session>(*this, std::move(socket))->Start();
    Accept();
  });
}

void Loop::Sweep() {
  Tick();
  FlushCounts();
  // Close() never destroys a session synchronously (its pending handler holds it),
  // so the list stays valid while it is walked.
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    Session* s = *it++;  // (nothing here destroys a session synchronously)
    if (stopping_ && (!s->Busy() || now_ >= stop_deadline_)) {
      s->Close();
    } else if (s->Expired(now_)) {
      s->OnDeadline();
    }
  }
  PruneWaiters();
  if (stopping_ && sessions_.empty()) {
    ioc_.stop();
    return;
  }
  sweep_.expires_after(stopping_ ? std::chrono::milliseconds(20) : kSweepInterval);
  sweep_.async_wait([this](const error_code& ec) {
    if (!ec) Sweep();
  });
}

bool Loop::Park(const std::string& dir, std::initializer_list<std::string_view> names,
                const std::shared_ptr<Session>& session, uint64_t gen) {
  if (!inotify_.is_open() || stopping_) return false;
  auto known = watch_by_dir_.find(dir);
  int wd;
  bool fresh = false;
  if (known != watch_by_dir_.end()) {
    wd = known->second;
  } else {
    wd = ::inotify_add_watch(inotify_.native_handle(), dir.c_str(),
                             IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
    if (wd < 0) {
      log::Warn("origin: cannot watch '{}' for a blocking request: {}", dir, std::generic_category().message(errno));
      return false;
    }
    fresh = true;
    watch_by_dir_[dir] = wd;
    Watch& w = watches_[wd];
    if (w.dir.empty()) w.dir = dir;
    w.aliases.push_back(dir);
  }
  for (std::string_view name : names) watches_[wd].files[std::string(name)].push_back({session, gen});
  // A change between the caller's look at the files and this new watch made no
  // event: look once more (an existing watch has queued any such event already).
  if (fresh) {
    net::post(ioc_, [session, gen] {
      if (session->ParkedWith(gen)) session->Retry();
    });
  }
  return true;
}

std::shared_ptr<const Snapshot> Loop::Playlist(const std::string& key, const OpenFile& f) {
  const Snapshot::Id id = Snapshot::IdOf(f);
  auto it = playlists_.find(key);
  if (it != playlists_.end() && it->second->id == id) return it->second;
  auto text = Tree::ReadWhole(f, kMaxScanBytes);
  if (!text) return nullptr;
  auto snap = std::make_shared<Snapshot>();
  snap->id = id;
  snap->pos = ScanPlaylist(*text);
  snap->text = std::move(*text);
  if (it != playlists_.end()) {
    playlist_bytes_ -= it->second->text.size();
    playlists_.erase(it);
  }
  if (snap->text.size() > kMaxCachedPlaylistSize) return snap;
  if (playlists_.size() >= kMaxCachedPlaylists || playlist_bytes_ + snap->text.size() > kMaxCachedPlaylistBytes) {
    playlists_.clear();  // (responses in flight keep theirs)
    playlist_bytes_ = 0;
  }
  playlist_bytes_ += snap->text.size();
  playlists_.emplace(key, snap);
  return snap;
}

std::shared_ptr<const Snapshot> Loop::PlaylistAt(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return nullptr;
  auto f = RegularFile(std::move(fd));
  return f ? Playlist(path, *f) : nullptr;
}

// A change of a file with waiters is read and parsed once (per loop), and only
// the waiters it may answer are woken: the others stay parked without a look
// at the file. When the file cannot be read here, every waiter looks itself.
void Loop::WatchEvents() {
  inotify_.async_wait(net::posix::stream_descriptor::wait_read, [this](const error_code& ec) {
    if (ec) return;
    Tick();
    std::vector<Waiting> wake;
    auto take_all = [&wake](Watch& w) {
      for (auto& [name, list] : w.files) {
        for (auto& x : list) wake.push_back(std::move(x));
      }
      w.files.clear();
    };
    std::vector<std::pair<int, std::string>> changed;  // files with waiters, once each
    alignas(struct inotify_event) char buf[16384];
    while (true) {
      const ssize_t n = ::read(inotify_.native_handle(), buf, sizeof(buf));
      if (n <= 0) break;
      for (const char* p = buf; p < buf + n;) {
        const auto* e = reinterpret_cast<const struct inotify_event*>(p);
        p += sizeof(struct inotify_event) + e->len;
        if (e->mask & IN_Q_OVERFLOW) {  // events were lost: everybody looks again
          for (auto& [wd, w] : watches_) take_all(w);
          continue;
        }
        auto w = watches_.find(e->wd);
        if (w == watches_.end()) continue;
        if (e->len == 0) {  // the directory itself went away
          take_all(w->second);
          continue;
        }
        const std::string_view name(e->name);
        if (w->second.files.find(std::string(name)) == w->second.files.end()) continue;
        if (std::find_if(changed.begin(), changed.end(), [&](const auto& c) {
              return c.first == e->wd && c.second == name;
            }) == changed.end()) {
          changed.emplace_back(e->wd, name);
        }
      }
    }
    for (const auto& [wd, name] : changed) {
      auto w = watches_.find(wd);
      if (w == watches_.end()) continue;
      auto f = w->second.files.find(name);
      if (f == w->second.files.end()) continue;
      std::shared_ptr<const Snapshot> snap;
      bool read = false;
      const std::string path = w->second.dir + name;
      const std::function<const Snapshot*()> playlist = [&]() -> const Snapshot* {
        if (!read) {
          read = true;
          snap = PlaylistAt(path);
        }
        return snap.get();
      };
      std::vector<Waiting> still;
      for (auto& x : f->second) {
        if (!x.session->ParkedWith(x.gen)) continue;
        (x.session->Wakes(name, playlist) ? wake : still).push_back(std::move(x));
      }
      if (still.empty()) {
        w->second.files.erase(f);
      } else {
        f->second = std::move(still);
      }
    }
    // Retry() may park again (and touch watches_): only after the maps are done with.
    for (auto& x : wake) {
      if (x.session->ParkedWith(x.gen)) x.session->Retry();
    }
    WatchEvents();
  });
}

void Loop::PruneWaiters() {
  for (auto w = watches_.begin(); w != watches_.end();) {
    for (auto f = w->second.files.begin(); f != w->second.files.end();) {
      auto& list = f->second;
      list.erase(std::remove_if(list.begin(), list.end(),
                                [](const Waiting& x) { return !x.session->ParkedWith(x.gen); }),
                 list.end());
      f = list.empty() ? w->second.files.erase(f) : std::next(f);
    }
    if (w->second.files.empty()) {
      ::inotify_rm_watch(inotify_.native_handle(), w->first);
      for (const std::string& dir : w->second.aliases) watch_by_dir_.erase(dir);
      w = watches_.erase(w);
    } else {
      ++w;
    }
  }
}

void Loop::BeginStop() {
  stopping_ = true;
  stop_deadline_ = Clock::now() + kStopGrace;
  error_code ec;
  acceptor_.close(ec);
  retry_.cancel();
  sweep_.cancel();  // its handler sees operation_aborted; sweep now
  Sweep();
}

/// Raises the soft limit on open files to the hard one: every connection is a
/// descriptor, and the default soft limit (1024) is below what one origin holds.
void RaiseFileLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
}

}  // namespace

struct Origin::Impl {
  Impl(fs::path root, KeyRoute key_route, metrics::Registry* metrics)
      : tree(std::move(root)), keys(std::move(key_route)), accounting(metrics) {}
  Tree tree;
  KeyRoute keys;
  Accounting accounting;
  Limits limits{};
  std::string bind;
  int port = 0;
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<std::thread> threads;
  std::mutex stop_mutex;
};

Origin::Origin(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Origin::~Origin() { Stop(); }

namespace {

/// Binds and listens; the descriptor, or an error naming the address.
Result<int> Listen(const std::string& bind, int port) {
  error_code ec;
  net::ip::address addr = net::ip::make_address(bind.empty() ? "0.0.0.0" : bind, ec);
  if (ec) {
    net::io_context ioc;
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(bind, std::to_string(port), ec);
    if (ec || results.empty()) {
      return Error(ErrorCode::kIo, "origin: cannot listen on {}:{}: {}", bind, port,
                   ec ? ec.message() : "no address");
    }
    addr = results.begin()->endpoint().address();
  }
  const int family = addr.is_v6() ? AF_INET6 : AF_INET;
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) {
    return Error(ErrorCode::kIo, "origin: cannot listen on {}:{}: socket: {}", bind, port,
                 std::generic_category().message(errno));
  }
  // SO_REUSEADDR only: rebinding over TIME_WAIT. Not SO_REUSEPORT, which would let a
  // second server silently share a port that is in use.
  int yes = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  if (::bind(fd.get(), ep.data(), static_cast<socklen_t>(ep.size())) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
    return Error(ErrorCode::kIo, "origin: cannot listen on {}:{}: {}", bind, port,
                 std::generic_category().message(errno));
  }
  return fd.release();
}

/// Whether `path` is `dir` or lies under it (both canonical).
bool Within(const fs::path& path, const fs::path& dir) {
  auto p = path.begin();
  for (auto d = dir.begin(); d != dir.end(); ++d, ++p) {
    if (d->empty()) continue;  // the empty last component of "dir/"
    if (p == path.end() || *p != *d) return false;
  }
  return true;
}

/// The key route of `params`, checked: served only with a token, from an
/// existing directory that is not (in) the served root.
Result<KeyRoute> MakeKeyRoute(const OriginParams& params, const fs::path& root) {
  for (unsigned char c : params.key_token) {
    if (c <= 0x20 || c >= 0x7f) {
      return Error(ErrorCode::kInvalidArgument,
                   "origin: the key token must be printable ASCII without spaces (it is sent as "
                   "'Authorization: Bearer TOKEN'); it has the byte 0x{:02x}",
                   c);
    }
  }
  if (params.key_store.empty()) {
    if (params.key_token.empty()) return KeyRoute();
    return Error(ErrorCode::kInvalidArgument,
                 "origin: a key token is set but no key store: name the directory holding the keys "
                 "(kafka-hls serve --key-store DIR; the packager's default is {}.keys)",
                 root.string());
  }
  std::error_code ec;
  const fs::path store = fs::canonical(params.key_store, ec);
  if (ec || !fs::is_directory(store, ec)) {
    // Without a token no key is served: a store that does not exist (yet) is fine.
    if (params.key_token.empty()) return KeyRoute();
    return Error(ErrorCode::kInvalidArgument, "origin: key store '{}' is not an existing directory{}{}",
                 params.key_store, ec ? ": " : "", ec ? ec.message() : "");
  }
  if (Within(store, root)) {
    return Error(ErrorCode::kInvalidArgument,
                 "origin: key store {} lies inside the served root {}: keys would be public files; "
                 "put it beside the root, e.g. {}.keys",
                 store.string(), root.string(), root.string());
  }
  if (params.key_token.empty()) return KeyRoute();
  KeyRoute keys(store, params.key_token);
  if (!keys.opened()) {
    return Error(ErrorCode::kIo, "origin: cannot open key store '{}': {}", store.string(),
                 std::generic_category().message(keys.open_error()));
  }
  return keys;
}

}  // namespace

Result<std::unique_ptr<Origin>> Origin::Start(const OriginParams& params) {
  if (params.port < 0 || params.port > 65535) {
    return Error(ErrorCode::kInvalidArgument, "origin: port {} is not in 0-65535", params.port);
  }
  if (params.threads < 0) {
    return Error(ErrorCode::kInvalidArgument, "origin: threads must be at least 0 (0: one per core), got {}",
                 params.threads);
  }
  if (params.idle_timeout_ms <= 0 || params.header_timeout_ms <= 0 || params.send_timeout_ms <= 0 ||
      params.max_connections <= 0) {
    return Error(ErrorCode::kInvalidArgument, "origin: timeouts and max_connections must be positive");
  }
  std::error_code fec;
  fs::path root = fs::canonical(params.root, fec);
  if (fec) return Error(ErrorCode::kInvalidArgument, "origin: root '{}': {}", params.root, fec.message());
  if (!fs::is_directory(root, fec)) {
    return Error(ErrorCode::kInvalidArgument, "origin: root '{}' is not a directory", params.root);
  }
  auto keys = MakeKeyRoute(params, root);
  if (!keys.ok()) return keys.status();

  // A client that goes away mid-sendfile must not kill the process (send() has
  // MSG_NOSIGNAL; sendfile has no such flag).
  struct sigaction old {};
  if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();

  auto listen_fd = Listen(params.bind, params.port);
  if (!listen_fd.ok()) return listen_fd.status();
  Fd listener(*listen_fd);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  const int port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                            : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);

  auto impl = std::make_unique<Impl>(root, std::move(*keys), params.metrics);
  impl->bind = params.bind;
  impl->port = port;
  const int threads = params.threads > 0 ? params.threads
                                         : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl->limits = Limits{std::chrono::milliseconds(params.idle_timeout_ms),
                        std::chrono::milliseconds(params.header_timeout_ms),
                        std::chrono::milliseconds(params.send_timeout_ms),
                        static_cast<size_t>(std::max(1, params.max_connections / threads))};
  // Every loop accepts on its own descriptor of the one listening socket; the
  // kernel hands each connection to one of them.
  const tcp protocol = ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
  for (int i = 0; i < threads; ++i) {
    Fd fd(::fcntl(listener.get(), F_DUPFD_CLOEXEC, 0));
    if (!fd.valid()) {
      return Error(ErrorCode::kIo, "origin: cannot share the listening socket of port {}: {}", port,
                   std::generic_category().message(errno));
    }
    impl->loops.push_back(std::make_unique<Loop>(impl->tree, impl->keys, impl->accounting, impl->limits, protocol,
                                                  fd.release()));
  }
  listener.reset();
  for (auto& loop : impl->loops) {
    Loop* l = loop.get();
    impl->threads.emplace_back([l] { l->Run(); });
  }
  log::Debug("origin: serving '{}' on {}:{} with {} event loops", root.string(), params.bind, port, threads);
  if (impl->keys.serving()) log::Debug("origin: serving keys from '{}' to the key token", impl->keys.store().string());
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
  std::unique_ptr<DIR, CloseDir> dir(::opendir(impl_->tree.root().c_str()));
  int err = dir ? 0 : errno;
  if (dir) {
    errno = 0;
    if (!::readdir(dir.get())) err = errno;  // 0: an empty directory (never: it has . and ..)
  }
  if (err) {
    return Error(ErrorCode::kIo, "root '{}': {}", impl_->tree.root().string(), std::generic_category().message(err));
  }
  return Status::Ok();
}

void Origin::Stop() {
  if (!impl_) return;
  std::lock_guard<std::mutex> lock(impl_->stop_mutex);
  if (impl_->threads.empty()) return;
  for (auto& loop : impl_->loops) loop->RequestStop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  // Destroying the loops closes what they still own: connections accepted by the
  // kernel whose handlers never ran, sockets held by pending handlers.
  impl_->loops.clear();
}

}  // namespace khls::origin
