// Origin: a hand-built output tree served over real HTTP (cpp-httplib's client,
// curl for raw paths a client would normalise, and a raw socket), then a real
// player (hls.js in headless Chromium, tests/player/play.mjs) on ffmpeg's HLS.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "khls/origin.h"
#include "test_util.h"

using namespace khls;
using namespace khls::origin;
namespace fs = std::filesystem;

namespace {

constexpr char kSecret[] = "TOP-SECRET-origin-must-not-serve-this";
constexpr size_t kSegmentSize = 4096;

void Write(const fs::path& p, std::string_view data) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string FakeSegment(uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(kSegmentSize, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  for (size_t i = 0; i < s.size(); i += 188) s[i] = 0x47;  // looks like TS packets
  return s;
}

constexpr char kMaster[] =
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001e\"\nv1/index.m3u8\n";
constexpr char kVod[] =
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    "#EXTINF:4.000,\nseg-000000.ts\n#EXT-X-ENDLIST\n";
constexpr char kEvent[] =
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:EVENT\n"
    "#EXTINF:4.000,\nseg-000000.ts\n";

/// tmp/secret.txt next to tmp/root, the served tree:
///   done/  complete title (state says complete, VOD playlist)
///   live/  incomplete title (EVENT playlist)
///   bare/  no .state.json at all
/// plus dotfiles, temp files, a FIFO, and symlinks in and out of the root.
struct Tree {
  test::TempDir tmp;
  fs::path root = tmp.path() / "root";
  fs::path secret = tmp.path() / "secret.txt";
  std::string segment = FakeSegment(1);

  Tree() {
    Write(secret, kSecret);
    for (const char* title : {"done", "live", "bare"}) {
      bool complete = std::string(title) != "live";
      if (std::string(title) != "bare") {
        Write(root / title / ".state.json",
              std::string(R"({"title":")") + title + R"(","version":1,"complete":)" +
                  (complete ? "true" : "false") + "}");
      }
      Write(root / title / "v1" / "index.m3u8", complete ? kVod : kEvent);
      Write(root / title / "v1" / "seg-000000.ts", segment);
      Write(root / title / "v1" / "subs-en" / "seg-000000.vtt", "WEBVTT\n\n");
      Write(root / title / "v1" / "video-cmaf" / "init.mp4", std::string("\0\0\0\x08ftyp", 8));
      Write(root / title / "v1" / "video-cmaf" / "seg-000000.m4s", std::string("\0\0\0\x08moof", 8));
      Write(root / title / "master.m3u8", kMaster);  // after the state, as the packager writes it
    }
    Write(root / "done" / "v1" / ".index.m3u8.1234.tmp", kSecret);
    Write(root / "live" / ".hidden" / "x.ts", kSecret);
    Write(root / "done" / "v1" / "empty.ts", "");
    fs::create_directories(root / "emptydir");
    fs::create_symlink("../../../secret.txt", root / "done" / "v1" / "leak.ts");
    fs::create_symlink(secret, root / "done" / "v1" / "abs-leak.ts");
    fs::create_symlink(tmp.path(), root / "escape");
    fs::create_symlink("seg-000000.ts", root / "done" / "v1" / "alias.ts");
    fs::create_symlink("../.state.json", root / "done" / "v1" / "state.ts");
    REQUIRE(::mkfifo((root / "done" / "v1" / "pipe.ts").c_str(), 0600) == 0);
  }
};

struct Served {
  Tree tree;
  std::unique_ptr<Origin> origin;
  Served() {
    OriginParams p;
    p.root = tree.root.string();
    p.port = 0;
    p.threads = 4;
    auto o = Origin::Start(p);
    REQUIRE_MESSAGE(o.ok(), o.status().message());
    origin = std::move(*o);
  }
  httplib::Client Client() const {
    httplib::Client c("127.0.0.1", origin->port());
    c.set_connection_timeout(5);
    c.set_read_timeout(10);
    c.set_tcp_nodelay(true);
    return c;
  }
};

/// curl with the target sent exactly as written (no dot-segment squashing, no globbing).
struct Raw {
  int status = 0;
  std::string body;
};
Raw Curl(const Served& s, const std::string& path_or_args) {
  fs::path body = s.tree.tmp.path() / "curl-body";
  fs::remove(body);
  auto r = test::RunStdout("curl --path-as-is -g -sS --max-time 10 -o " + test::Quote(body.string()) +
                           " -w '%{http_code}' " + path_or_args);
  Raw raw;
  raw.status = std::atoi(r.output.c_str());
  raw.body = test::ReadFile(body);
  return raw;
}
Raw CurlPath(const Served& s, const std::string& target) {
  return Curl(s, test::Quote("http://127.0.0.1:" + std::to_string(s.origin->port()) + target));
}

/// Sends `request` verbatim on a fresh TCP connection and returns everything until EOF
/// or `timeout_s` of silence. (Not a half-close to end the request: cpp-httplib then
/// considers the peer gone and writes no response at all.)
std::string RawExchange(int port, const std::string& request, int timeout_s = 10) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

bool InCi() {
  const char* ci = std::getenv("CI");
  return ci && (std::string(ci) == "true" || std::string(ci) == "1");
}

}  // namespace

TEST_CASE("origin: start, port 0, url, port taken, stop") {
  Served s;
  CHECK(s.origin->port() > 0);
  CHECK(s.origin->url() == "http://127.0.0.1:" + std::to_string(s.origin->port()) + "/");

  OriginParams p;
  p.root = s.tree.root.string();
  p.port = s.origin->port();
  auto second = Origin::Start(p);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == ErrorCode::kIo);
  CHECK(second.status().message().find(std::to_string(p.port)) != std::string::npos);
  MESSAGE("port taken: " << second.status().message());

  p.root = (s.tree.root / "missing").string();
  p.port = 0;
  auto bad = Origin::Start(p);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == ErrorCode::kInvalidArgument);

  auto c = s.Client();
  CHECK(c.Get("/done/master.m3u8")->status == 200);
  int port = s.origin->port();
  s.origin->Stop();
  s.origin->Stop();  // idempotent
  httplib::Client after("127.0.0.1", port);
  after.set_connection_timeout(2);
  CHECK_FALSE(after.Get("/done/master.m3u8"));

  // The port is free again once stopped.
  p.port = port;
  p.root = s.tree.root.string();
  auto again = Origin::Start(p);
  REQUIRE_MESSAGE(again.ok(), again.status().message());
  CHECK((*again)->port() == port);
}

TEST_CASE("origin: MIME types, CORS and Cache-Control") {
  Served s;
  auto c = s.Client();
  struct Case {
    const char* path;
    const char* mime;
    const char* cache;
  };
  const Case cases[] = {
      {"/done/master.m3u8", "application/vnd.apple.mpegurl", "public, max-age=3600"},
      {"/done/v1/index.m3u8", "application/vnd.apple.mpegurl", "public, max-age=3600"},
      {"/done/v1/seg-000000.ts", "video/mp2t", "public, max-age=31536000, immutable"},
      {"/live/master.m3u8", "application/vnd.apple.mpegurl", "no-cache"},
      {"/live/v1/index.m3u8", "application/vnd.apple.mpegurl", "no-cache"},
      {"/live/v1/seg-000000.ts", "video/mp2t", "public, max-age=31536000, immutable"},
      {"/bare/master.m3u8", "application/vnd.apple.mpegurl", "no-cache"},      // no state: not known complete
      {"/bare/v1/index.m3u8", "application/vnd.apple.mpegurl", "public, max-age=3600"},  // has ENDLIST
      {"/done/v1/alias.ts", "video/mp2t", "public, max-age=31536000, immutable"},      // symlink inside root
      {"/live/v1/subs-en/seg-000000.vtt", "text/vtt; charset=utf-8", "public, max-age=31536000, immutable"},
      {"/live/v1/video-cmaf/init.mp4", "video/mp4", "public, max-age=31536000, immutable"},
      {"/live/v1/video-cmaf/seg-000000.m4s", "video/mp4", "public, max-age=31536000, immutable"},
  };
  for (const auto& k : cases) {
    CAPTURE(k.path);
    auto r = c.Get(k.path);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type") == k.mime);
    CHECK(r->get_header_value("Cache-Control") == k.cache);
    CHECK(r->get_header_value("Access-Control-Allow-Origin") == "*");
  }
  CHECK(c.Get("/done/v1/seg-000000.ts")->body == s.tree.segment);
  CHECK(c.Get("/done/v1/alias.ts")->body == s.tree.segment);
  CHECK(c.Get("/done/master.m3u8")->body == kMaster);

  auto empty = c.Get("/done/v1/empty.ts");
  CHECK(empty->status == 200);
  CHECK(empty->body.empty());
  CHECK(empty->get_header_value("Content-Length") == "0");

  // The packager writes .state.json before the master: a master older than a
  // state that says complete is the pre-completion one, still no-cache.
  auto state = s.tree.root / "done" / ".state.json";
  fs::last_write_time(state, fs::last_write_time(s.tree.root / "done" / "master.m3u8") + std::chrono::seconds(5));
  CHECK(c.Get("/done/master.m3u8")->get_header_value("Cache-Control") == "no-cache");

  // CORS on errors and on the preflight.
  auto missing = c.Get("/nope/master.m3u8");
  CHECK(missing->status == 404);
  CHECK(missing->get_header_value("Access-Control-Allow-Origin") == "*");
  auto pre = c.Options("/done/v1/seg-000000.ts",
                       {{"Origin", "http://example.com"}, {"Access-Control-Request-Method", "GET"},
                        {"Access-Control-Request-Headers", "range"}});
  REQUIRE(pre);
  CHECK(pre->status == 204);
  CHECK(pre->get_header_value("Access-Control-Allow-Origin") == "*");
  CHECK(pre->get_header_value("Access-Control-Allow-Methods").find("GET") != std::string::npos);
  CHECK(pre->get_header_value("Access-Control-Allow-Headers").find("Range") != std::string::npos);
  CHECK(c.Post("/done/master.m3u8", "x", "text/plain")->status == 405);
}

TEST_CASE("origin: HEAD") {
  Served s;
  auto c = s.Client();
  auto r = c.Head("/done/v1/seg-000000.ts");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body.empty());
  CHECK(r->get_header_value("Content-Length") == std::to_string(kSegmentSize));
  CHECK(r->get_header_value("Content-Type") == "video/mp2t");
  CHECK(r->get_header_value("Access-Control-Allow-Origin") == "*");
  auto pl = c.Head("/live/v1/index.m3u8");
  CHECK(pl->get_header_value("Content-Length") == std::to_string(std::string_view(kEvent).size()));
  CHECK(pl->get_header_value("Cache-Control") == "no-cache");
  CHECK(c.Head("/done/.state.json")->status == 404);

  // On the wire: headers, then nothing (a client would not read a stray body).
  for (const char* path : {"/done/v1/seg-000000.ts", "/done/master.m3u8", "/", "/api/titles"}) {
    CAPTURE(path);
    std::string wire = RawExchange(s.origin->port(), std::string("HEAD ") + path +
                                                         " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(wire.rfind("HTTP/1.1 200", 0) == 0);
    auto end = wire.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    CHECK(end + 4 == wire.size());
  }
}

TEST_CASE("origin: byte ranges") {
  Served s;
  auto c = s.Client();
  const std::string& seg = s.tree.segment;
  const std::string size = std::to_string(seg.size());
  struct Case {
    const char* range;
    size_t start, length;
  };
  const Case cases[] = {
      {"bytes=10-19", 10, 10},
      {"bytes=0-0", 0, 1},
      {"bytes=-100", kSegmentSize - 100, 100},
      {"bytes=4000-", 4000, kSegmentSize - 4000},
      {"bytes=4000-999999", 4000, kSegmentSize - 4000},  // end clamped to the size
      {"bytes=-999999", 0, kSegmentSize},
  };
  for (const auto& k : cases) {
    CAPTURE(k.range);
    auto r = c.Get("/done/v1/seg-000000.ts", {{"Range", k.range}});
    REQUIRE(r);
    CHECK(r->status == 206);
    CHECK(r->body == seg.substr(k.start, k.length));
    CHECK(r->get_header_value("Content-Length") == std::to_string(k.length));
    CHECK(r->get_header_value("Content-Range") ==
          "bytes " + std::to_string(k.start) + "-" + std::to_string(k.start + k.length - 1) + "/" + size);
    CHECK(r->get_header_value("Access-Control-Allow-Origin") == "*");
  }
  for (const char* range : {"bytes=4096-", "bytes=5000-6000", "bytes=-0"}) {
    CAPTURE(range);
    auto r = c.Get("/done/v1/seg-000000.ts", {{"Range", range}});
    REQUIRE(r);
    CHECK(r->status == 416);
    CHECK(r->get_header_value("Content-Range") == "bytes */" + size);
    CHECK(r->body.empty());
  }
  CHECK(c.Get("/done/v1/seg-000000.ts", {{"Range", "bytes=9-1"}})->status == 416);  // rejected by the library
  CHECK(c.Get("/done/v1/empty.ts", {{"Range", "bytes=0-"}})->status == 416);

  // Several ranges: the whole file (allowed by RFC 9110).
  auto multi = c.Get("/done/v1/seg-000000.ts", {{"Range", "bytes=0-1,5-6"}});
  CHECK(multi->status == 200);
  CHECK(multi->body == seg);

  // Playlists (served from memory) take ranges too; HEAD with a range.
  auto pl = c.Get("/done/v1/index.m3u8", {{"Range", "bytes=0-6"}});
  CHECK(pl->status == 206);
  CHECK(pl->body == "#EXTM3U");
  // A part is never compressed (cpp-httplib gzips whole text/JS/JSON bodies when asked).
  for (const char* path : {"/api/titles", "/"}) {
    CAPTURE(path);
    auto part = c.Get(path, {{"Range", "bytes=0-0"}, {"Accept-Encoding", "gzip, br"}});
    CHECK(part->status == 206);
    CHECK_FALSE(part->has_header("Content-Encoding"));
    CHECK(part->get_header_value("Content-Length") == "1");
    CHECK(part->body.size() == 1);
  }
  auto head = c.Head("/done/v1/seg-000000.ts", {{"Range", "bytes=100-199"}});
  CHECK(head->status == 206);
  CHECK(head->get_header_value("Content-Length") == "100");
  CHECK(head->get_header_value("Content-Range") == "bytes 100-199/" + size);
}

TEST_CASE("origin: nothing outside the tree, no dotfiles, no special files") {
  Served s;
  const std::string secret_abs = s.tree.secret.string();
  const std::vector<std::string> targets = {
      "/../secret.txt",
      "/done/../../secret.txt",
      "/done/v1/../../../secret.txt",
      "/%2e%2e/secret.txt",
      "/%2E%2E/secret.txt",
      "/%2E%2E%2Fsecret.txt",
      "/done/%2e%2e/%2e%2e/secret.txt",
      "/..%2fsecret.txt",
      "/..%2Fsecret.txt",
      "/done/..%2f..%2fsecret.txt",
      "/%252e%252e/secret.txt",            // double-encoded
      "/%252e%252e%252fsecret.txt",
      "/%u002e%u002e/secret.txt",          // cpp-httplib decodes %uXXXX too
      "/..\\secret.txt",                   // raw backslash
      "/done\\..\\..\\secret.txt",
      "/..%5csecret.txt",                  // encoded backslash
      "/done/..%5c..%5csecret.txt",
      "/" + secret_abs,                    // absolute path: "//tmp/..."
      "/%2F" + secret_abs.substr(1),
      "/done/v1/seg-000000.ts%00.m3u8",    // NUL
      "/done/v1/leak.ts%00",
      "/escape/secret.txt",                // directory symlink out of the root
      "/done/v1/leak.ts",                  // relative symlink out
      "/done/v1/abs-leak.ts",              // absolute symlink out
      "/done/v1/state.ts",                 // symlink to a dotfile inside
      "/done/.state.json",
      "/done/%2estate.json",
      "/done/v1/.index.m3u8.1234.tmp",
      "/live/.hidden/x.ts",
      "/live/%2ehidden/x.ts",
      "/done/./master.m3u8",
      "/done//master.m3u8",
      "/done/v1/pipe.ts",                  // FIFO: not a regular file (and must not block)
      "/done",                             // directories
      "/done/",
      "/emptydir/",
      "/nope/master.m3u8",
      "/done/v1/seg-000099.ts",
  };
  for (const auto& t : targets) {
    CAPTURE(t);
    Raw r = CurlPath(s, t);
    CHECK(r.status == 404);
    CHECK(r.body.find(kSecret) == std::string::npos);
  }
  // Request targets that are not origin-form paths.
  const std::string base = "http://127.0.0.1:" + std::to_string(s.origin->port()) + "/";
  for (const char* target : {"secret.txt", "../secret.txt", "*", "http://evil.example/../secret.txt"}) {
    CAPTURE(target);
    Raw r = Curl(s, "--request-target " + test::Quote(target) + " " + test::Quote(base));
    CHECK((r.status == 404 || r.status == 400));
    CHECK(r.body.find(kSecret) == std::string::npos);
  }
  // Raw bytes the URL parsers of curl would not send: a literal NUL in the target
  // (cpp-httplib drops the connection without an answer).
  std::string wire = RawExchange(s.origin->port(), std::string("GET /done/v1/seg-000000.ts") + '\0' + "/../../../secret.txt" +
                                                       " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                             /*timeout_s=*/1);
  CHECK(wire.find(kSecret) == std::string::npos);
  CHECK(wire.rfind("HTTP/1.1 200", 0) != 0);

  // The server still serves after all that (the FIFO did not block a worker).
  CHECK(CurlPath(s, "/done/master.m3u8").status == 200);
}

TEST_CASE("origin: /api/titles, the page and hls.js") {
  Served s;
  auto c = s.Client();
  auto r = c.Get("/api/titles");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  CHECK(r->get_header_value("Access-Control-Allow-Origin") == "*");
  auto j = nlohmann::json::parse(r->body);
  auto expected = nlohmann::json::parse(R"([
    {"title": "bare", "complete": false, "url": "/bare/master.m3u8"},
    {"title": "done", "complete": true, "url": "/done/master.m3u8"},
    {"title": "live", "complete": false, "url": "/live/master.m3u8"}])");
  CHECK(j == expected);

  for (const char* path : {"/", "/index.html"}) {
    CAPTURE(path);
    auto page = c.Get(path);
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->get_header_value("Content-Type").rfind("text/html", 0) == 0);
    CHECK(page->body.find("<video") != std::string::npos);
    CHECK(page->body.find("src=\"/hls.min.js\"") != std::string::npos);
    CHECK(page->body.find("/api/titles") != std::string::npos);
    CHECK(page->body.find("http://") == std::string::npos);  // self-contained
    CHECK(page->body.find("https://") == std::string::npos);
  }

  auto js = c.Get("/hls.min.js");
  REQUIRE(js);
  if (js->status == 404) {
    if (InCi()) FAIL("hls.js is not embedded in this build (CMake found no hls.min.js; run scripts/setup.sh)");
    MESSAGE("hls.js is not embedded in this build: /hls.min.js is 404 (the page falls back to native HLS)");
  } else {
    CHECK(js->status == 200);
    CHECK(js->get_header_value("Content-Type") == "application/javascript");
    CHECK(js->body.size() > 100000);
    CHECK(js->body.find("Hls") != std::string::npos);
  }
}

TEST_CASE("origin: concurrent clients") {
  Served s;  // 4 workers
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      auto c = s.Client();
      for (int i = 0; i < 25; ++i) {
        auto r = c.Get(i % 2 ? "/done/v1/seg-000000.ts" : "/live/v1/index.m3u8");
        if (r && r->status == 200 && (i % 2 ? r->body == s.tree.segment : r->body == kEvent)) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(good == 16 * 25);
  // A burst of connects must not overflow the listen backlog (dropped SYNs are
  // retried after 1 s); 400 local requests take a few ms each at most.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(900));
}

// ---------------------------------------------------------------------------------
// Connections: keep-alive, pipelining, slow clients, thousands at once, blocking reloads.

namespace {

/// A raw client connection (so tests control exactly what is sent and when).
class Conn {
 public:
  explicit Conn(int port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }

  /// False when the peer is gone.
  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  /// Whether bytes (or EOF) can be read within `ms`.
  bool Readable(int ms) {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, ms) == 1;
  }
  /// True when the server closed the connection (EOF or reset) within `ms`,
  /// dropping whatever data came first.
  bool ClosedWithin(int ms, size_t* received = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    char buf[65536];
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Readable(50)) continue;
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return true;
      if (received) *received += static_cast<size_t>(n);
    }
    return false;
  }

  struct Response {
    int status = 0;
    std::string head;  ///< status line and headers, lower-cased names as sent
    std::string body;
    std::string Header(const std::string& name) const {
      auto at = head.find("\r\n" + name + ": ");
      if (at == std::string::npos) return "";
      at += name.size() + 4;
      return head.substr(at, head.find("\r\n", at) - at);
    }
  };
  /// Reads one response (Content-Length framed; `head_only`: no body) within `ms`;
  /// status 0 when the connection ended or the time ran out first.
  Response Read(int ms = 10000, bool head_only = false) {
    Response r;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    size_t end;
    while ((end = pending_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(deadline)) return r;
    }
    r.head = pending_.substr(0, end + 2);
    pending_.erase(0, end + 4);
    r.status = std::atoi(r.head.c_str() + 9);
    size_t length = head_only ? 0 : std::strtoull(r.Header("Content-Length").c_str(), nullptr, 10);
    while (pending_.size() < length) {
      if (!Fill(deadline)) return Response{};
    }
    r.body = pending_.substr(0, length);
    pending_.erase(0, length);
    return r;
  }
  int fd() const { return fd_; }

 private:
  bool Fill(std::chrono::steady_clock::time_point deadline) {
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Readable(20)) continue;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      pending_.append(buf, static_cast<size_t>(n));
      return true;
    }
    return false;
  }
  int fd_ = -1;
  std::string pending_;
};

std::string Get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n";
}

/// Replaces `path` the way the packager does: a temp file renamed over it.
void Replace(const fs::path& path, std::string_view data) {
  std::string name = path.filename().string();
  name.insert(0, 1, '.');
  name += ".tmp";
  fs::path tmp = path.parent_path() / name;
  Write(tmp, data);
  fs::rename(tmp, path);
}

std::unique_ptr<Origin> StartWith(const Tree& tree, OriginParams p) {
  p.root = tree.root.string();
  p.port = 0;
  auto o = Origin::Start(p);
  REQUIRE_MESSAGE(o.ok(), o.status().message());
  return std::move(*o);
}

}  // namespace

TEST_CASE("origin: keep-alive, pipelining, Connection: close, idle timeout") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  p.idle_timeout_ms = 1000;
  auto origin = StartWith(tree, p);

  Conn c(origin->port());
  for (int i = 0; i < 3; ++i) {  // one connection, requests one after another
    REQUIRE(c.Send(Get("/done/v1/seg-000000.ts")));
    auto r = c.Read();
    CHECK(r.status == 200);
    CHECK(r.body == tree.segment);
    CHECK(r.Header("Connection") == "keep-alive");
  }
  // Three requests in one write: three responses, in order, on the same connection.
  REQUIRE(c.Send(Get("/done/master.m3u8") + "HEAD /done/v1/seg-000000.ts HTTP/1.1\r\nHost: x\r\n\r\n" +
                 Get("/live/v1/index.m3u8")));
  auto a = c.Read();
  auto b = c.Read(10000, /*head_only=*/true);
  auto d = c.Read();
  CHECK(a.status == 200);
  CHECK(a.body == kMaster);
  CHECK(b.status == 200);
  CHECK(b.Header("Content-Length") == std::to_string(kSegmentSize));
  CHECK(d.status == 200);
  CHECK(d.body == kEvent);

  // Idle past idle_timeout_ms: the server closes the connection.
  CHECK(c.ClosedWithin(5000));

  // Connection: close, and HTTP/1.0 without keep-alive: closed after the response.
  for (const std::string& req : {Get("/done/master.m3u8", "Connection: close\r\n"),
                                 std::string("GET /done/master.m3u8 HTTP/1.0\r\n\r\n")}) {
    CAPTURE(req);
    Conn once(origin->port());
    REQUIRE(once.Send(req));
    auto r = once.Read();
    CHECK(r.status == 200);
    CHECK(r.body == kMaster);
    CHECK(r.Header("Connection") == "close");
    CHECK(once.ClosedWithin(2000));
  }
  // HTTP/1.0 asking for keep-alive gets it.
  Conn ten(origin->port());
  for (int i = 0; i < 2; ++i) {
    REQUIRE(ten.Send("GET /done/master.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    auto r = ten.Read();
    CHECK(r.status == 200);
    CHECK(r.Header("Connection") == "keep-alive");
  }
  // A malformed request: 400, then closed. An oversized header: 431, then closed.
  Conn bad(origin->port());
  REQUIRE(bad.Send("GARBAGE\r\n\r\n"));
  CHECK(bad.Read().status == 400);
  CHECK(bad.ClosedWithin(2000));
  Conn huge(origin->port());
  REQUIRE(huge.Send("GET /done/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n"));
  CHECK(huge.Read().status == 431);
}

TEST_CASE("origin: ETag, Last-Modified and 304") {
  Tree tree;
  auto origin = StartWith(tree, {});
  Conn c(origin->port());
  for (const char* path : {"/done/v1/seg-000000.ts", "/live/v1/index.m3u8"}) {
    CAPTURE(path);
    REQUIRE(c.Send(Get(path)));
    auto first = c.Read();
    REQUIRE(first.status == 200);
    const std::string etag = first.Header("ETag");
    const std::string modified = first.Header("Last-Modified");
    CHECK(etag.size() > 2);
    CHECK(modified.find(" GMT") != std::string::npos);
    REQUIRE(c.Send(Get(path, "If-None-Match: " + etag + "\r\n")));
    auto same = c.Read(10000, /*head_only=*/true);
    CHECK(same.status == 304);
    CHECK(same.Header("ETag") == etag);
    CHECK(same.Header("Access-Control-Allow-Origin") == "*");
    REQUIRE(c.Send(Get(path, "If-Modified-Since: " + modified + "\r\n")));
    CHECK(c.Read(10000, true).status == 304);
    REQUIRE(c.Send(Get(path, "If-None-Match: \"other\"\r\n")));
    auto other = c.Read();
    CHECK(other.status == 200);
    CHECK(!other.body.empty());
  }
  // A playlist replaced (new inode): its old ETag no longer matches.
  REQUIRE(c.Send(Get("/live/v1/index.m3u8")));
  const std::string old_etag = c.Read().Header("ETag");
  const std::string grown = std::string(kEvent) + "#EXTINF:4.000,\nseg-000001.ts\n";
  Replace(tree.root / "live" / "v1" / "index.m3u8", grown);
  REQUIRE(c.Send(Get("/live/v1/index.m3u8", "If-None-Match: " + old_etag + "\r\n")));
  auto fresh = c.Read();
  CHECK(fresh.status == 200);
  CHECK(fresh.body == grown);
  CHECK(fresh.Header("ETag") != old_etag);
  // If-Range with a stale validator: the whole body, not the range.
  REQUIRE(c.Send(Get("/live/v1/index.m3u8", "Range: bytes=0-6\r\nIf-Range: " + old_etag + "\r\n")));
  auto whole = c.Read();
  CHECK(whole.status == 200);
  CHECK(whole.body == grown);
}

TEST_CASE("origin: slow clients are cut off and do not hold up others") {
  Tree tree;
  // A large file: more than the socket buffers of both ends hold.
  std::string big(48 << 20, '\0');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i / 4096);
  Write(tree.root / "done" / "v1" / "big.ts", big);
  OriginParams p;
  p.threads = 1;  // one event loop serves everyone: nothing may block it
  p.header_timeout_ms = 1500;
  p.send_timeout_ms = 1500;
  auto origin = StartWith(tree, p);
  const auto start = std::chrono::steady_clock::now();

  // A reader that asks for the big file and never reads.
  Conn stalled(origin->port(), /*rcvbuf=*/4096);
  REQUIRE(stalled.Send(Get("/done/v1/big.ts")));

  // Slowloris: a request header at one byte per second.
  std::atomic<bool> slow_cut{false};
  std::atomic<int> slow_sent{0};
  std::thread slowloris([&] {
    Conn slow(origin->port());
    const std::string req = Get("/done/master.m3u8");
    for (char ch : req) {
      if (!slow.Send(std::string_view(&ch, 1))) break;
      ++slow_sent;
      if (slow.ClosedWithin(1000)) {
        slow_cut = true;
        break;
      }
    }
  });

  // Meanwhile everyone else is served, on the same single loop.
  auto client = httplib::Client("127.0.0.1", origin->port());
  client.set_read_timeout(5);
  int served = 0;
  for (int i = 0; i < 30; ++i) {
    auto r = client.Get(i % 2 ? "/done/v1/seg-000000.ts" : "/live/v1/index.m3u8");
    if (r && r->status == 200) ++served;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(served == 30);
  slowloris.join();
  CHECK(slow_cut);
  CHECK(slow_sent < 10);  // cut after ~1.5 s, long before its header was complete
  MESSAGE("slowloris cut after " << slow_sent.load() << " bytes");

  // The stalled reader was cut off too: what it can still read ends early.
  size_t received = 0;
  CHECK(stalled.ClosedWithin(20000, &received));
  CHECK(received < big.size());
  MESSAGE("stalled reader got " << received << " of " << big.size() << " bytes before the cut");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
}

TEST_CASE("origin: 1,000 concurrent connections on one event loop") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  constexpr int kConns = 1000;
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < kConns; ++i) conns.push_back(std::make_unique<Conn>(origin->port()));
  // 1,000 idle connections do not keep a new client waiting.
  {
    Conn extra(origin->port());
    REQUIRE(extra.Send(Get("/done/master.m3u8")));
    CHECK(extra.Read(5000).status == 200);
  }
  // Every connection asks at once (two rounds, keep-alive), and every one is answered.
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    for (auto& c : conns) REQUIRE(c->Send(Get(round ? "/done/v1/seg-000000.ts" : "/live/v1/index.m3u8")));
    int ok = 0;
    for (auto& c : conns) {
      auto r = c->Read(20000);
      if (r.status == 200 && r.body == (round ? tree.segment : std::string(kEvent))) ++ok;
    }
    CHECK(ok == kConns);
  }
}

TEST_CASE("origin: blocking playlist reload holds 1,000 requests until the segment exists") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  const fs::path playlist = tree.root / "live" / "v1" / "index.m3u8";

  // kEvent lists segment 0: _HLS_msn=0 is answered at once, 1 waits, 3 (more than
  // two ahead) is refused, and an ended playlist never waits.
  Conn c(origin->port());
  REQUIRE(c.Send(Get("/live/v1/index.m3u8?_HLS_msn=0")));
  CHECK(c.Read(2000).body == kEvent);
  REQUIRE(c.Send(Get("/live/v1/index.m3u8?_HLS_msn=3")));
  CHECK(c.Read(2000).status == 400);
  REQUIRE(c.Send(Get("/done/v1/index.m3u8?_HLS_msn=5")));
  CHECK(c.Read(2000).body == kVod);
  REQUIRE(c.Send(Get("/live/v1/index.m3u8?_HLS_msn=x")));
  CHECK(c.Read(2000).status == 400);

  constexpr int kWaiting = 1000;
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < kWaiting; ++i) {
    conns.push_back(std::make_unique<Conn>(origin->port()));
    REQUIRE(conns.back()->Send(Get("/live/v1/index.m3u8?_HLS_msn=1&_HLS_part=0")));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int early = 0;
  for (auto& w : conns) early += w->Readable(0);
  CHECK(early == 0);  // all held
  // While they wait, the loop serves others.
  REQUIRE(c.Send(Get("/live/v1/index.m3u8")));
  CHECK(c.Read(2000).status == 200);

  // An unrelated file in the same directory changing wakes nobody.
  Replace(tree.root / "live" / "v1" / "seg-000009.ts", "x");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  early = 0;
  for (auto& w : conns) early += w->Readable(0);
  CHECK(early == 0);

  // The packager publishes segment 1: every waiting request gets the new playlist.
  const std::string grown = std::string(kEvent) + "#EXTINF:4.000,\nseg-000001.ts\n";
  Replace(playlist, grown);
  int answered = 0;
  for (auto& w : conns) {
    auto r = w->Read(10000);
    if (r.status == 200 && r.body == grown && r.Header("Cache-Control") == "no-cache") ++answered;
  }
  CHECK(answered == kWaiting);

  // A segment that does not come in 3 target durations: 503.
  Replace(playlist, "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:EVENT\n"
                    "#EXTINF:1.000,\nseg-000000.ts\n");
  const auto asked = std::chrono::steady_clock::now();
  REQUIRE(c.Send(Get("/live/v1/index.m3u8?_HLS_msn=1")));
  auto late = c.Read(10000);
  const auto waited = std::chrono::steady_clock::now() - asked;
  CHECK(late.status == 503);
  CHECK(waited >= std::chrono::milliseconds(2900));
  // And the connection goes on.
  REQUIRE(c.Send(Get("/done/master.m3u8")));
  CHECK(c.Read(2000).status == 200);
}

TEST_CASE("origin: Stop() with connections open and requests waiting") {
  Tree tree;
  OriginParams p;
  p.threads = 2;
  auto origin = StartWith(tree, p);
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < 50; ++i) {
    conns.push_back(std::make_unique<Conn>(origin->port()));
    if (i % 2) REQUIRE(conns.back()->Send(Get("/live/v1/index.m3u8?_HLS_msn=1")));
  }
  const auto t0 = std::chrono::steady_clock::now();
  origin->Stop();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  int closed = 0;
  for (auto& c : conns) closed += c->ClosedWithin(2000);
  CHECK(closed == 50);
}

// ---------------------------------------------------------------------------------
// LL-HLS (RFC 8216bis): blocking reloads for parts, delta updates, preload hints.

namespace {

using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

std::string PartName(int msn, int part) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "seg-%06d.p%d.m4s", msn, part);
  return buf;
}

/// An LL-HLS media playlist as the packager writes it: TARGETDURATION `td`,
/// PART-TARGET td/4, complete segments first..first+complete-1 of td seconds
/// (the 4 parts of the last one listed before its EXTINF), `trailing` parts of
/// the segment in progress and the hint of its next part, or #EXT-X-ENDLIST
/// instead of the hint.
std::string LlPlaylist(int first, int complete, int trailing, bool ended = false, int td = 2,
                       bool can_skip = true) {
  const double part = td / 4.0;
  std::string out = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:" + std::to_string(td) + "\n";
  char buf[200];
  std::snprintf(buf, sizeof(buf), "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=%.3f%s\n", 3 * part,
                can_skip ? (",CAN-SKIP-UNTIL=" + std::to_string(6 * td) + ".000").c_str() : "");
  out += buf;
  std::snprintf(buf, sizeof(buf), "#EXT-X-PART-INF:PART-TARGET=%.3f\n#EXT-X-MEDIA-SEQUENCE:%d\n", part, first);
  out += buf;
  out += "#EXT-X-MAP:URI=\"init.mp4\"\n";
  auto parts = [&](int msn, int n) {
    for (int k = 0; k < n; ++k) {
      std::snprintf(buf, sizeof(buf), "#EXT-X-PART:DURATION=%.6f,URI=\"%s\"%s\n", part, PartName(msn, k).c_str(),
                    k == 0 ? ",INDEPENDENT=YES" : "");
      out += buf;
    }
  };
  for (int msn = first; msn < first + complete; ++msn) {
    if (msn == first + complete - 1) parts(msn, 4);
    std::snprintf(buf, sizeof(buf), "#EXTINF:%d.000000,\nseg-%06d.m4s\n", td, msn);
    out += buf;
  }
  const int next = first + complete;
  parts(next, trailing);
  if (ended) {
    out += "#EXT-X-ENDLIST\n";
  } else {
    out += "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"" + PartName(next, trailing) + "\"\n";
    std::snprintf(buf, sizeof(buf), "#EXT-X-RENDITION-REPORT:URI=\"../audio-en/index.m3u8\",LAST-MSN=%d\n", next);
    out += buf;
  }
  return out;
}

/// The LL rendition of a Tree: live/v1/ll/ with init.mp4 and `playlist`.
fs::path LlDir(const Tree& tree, const std::string& playlist) {
  const fs::path dir = tree.root / "live" / "v1" / "ll";
  Write(dir / "init.mp4", std::string("\0\0\0\x08ftyp", 8));
  Replace(dir / "index.m3u8", playlist);
  return dir;
}

constexpr char kLl[] = "/live/v1/ll/index.m3u8";

/// Not answered within `ms` (a held request).
bool Held(Conn& c, int ms = 300) { return !c.Readable(ms); }

}  // namespace

TEST_CASE("origin: LL-HLS _HLS_msn + _HLS_part waits until the part is listed") {
  Tree tree;
  OriginParams p;
  p.threads = 2;
  auto origin = StartWith(tree, p);
  // Segments 10-12 complete (12 with 4 parts), segment 13 in progress with part 0.
  const std::string now = LlPlaylist(10, 3, 1);
  const fs::path dir = LlDir(tree, now);
  Conn c(origin->port());
  auto ask = [&](const std::string& query) {
    REQUIRE(c.Send(Get(std::string(kLl) + query)));
    return c.Read(2000);
  };
  // Listed already (or later ones are): answered at once.
  for (const char* q : {"?_HLS_msn=13&_HLS_part=0", "?_HLS_msn=12&_HLS_part=3", "?_HLS_msn=11&_HLS_part=9",
                        "?_HLS_msn=12", "?_HLS_msn=5&_HLS_part=0"}) {
    CAPTURE(q);
    auto r = ask(q);
    CHECK(r.status == 200);
    CHECK(r.body == now);
    CHECK(r.Header("Cache-Control") == "no-cache");
  }
  // Part 4 of segment 12, which ended with 4 parts, is part 0 of segment 13 (6.2.5.2): listed.
  CHECK(ask("?_HLS_msn=12&_HLS_part=4").status == 200);

  // Part 1 of segment 13 is not listed yet: held until the packager lists it.
  Conn part1(origin->port());
  REQUIRE(part1.Send(Get(std::string(kLl) + "?_HLS_msn=13&_HLS_part=1")));
  Conn segment13(origin->port());  // the whole segment: still held after part 1
  REQUIRE(segment13.Send(Get(std::string(kLl) + "?_HLS_msn=13")));
  CHECK(Held(part1, 500));
  const std::string with_p1 = LlPlaylist(10, 3, 2);
  Write(dir / PartName(13, 1), "part 13.1");
  const auto written = SteadyClock::now();
  Replace(dir / "index.m3u8", with_p1);
  auto r = part1.Read(3000);
  const auto latency = SteadyClock::now() - written;
  CHECK(r.status == 200);
  CHECK(r.body == with_p1);
  CHECK(r.Header("Cache-Control") == "no-cache");
  CHECK(latency < Ms(1000));
  MESSAGE("part listed -> answer: " << std::chrono::duration_cast<std::chrono::microseconds>(latency).count()
                                    << " us");
  CHECK(Held(segment13, 200));

  // Segment 13 completes with 4 parts: the segment waiter is answered; a waiter for
  // part 4 of it waits for part 0 of segment 14.
  const std::string done13 = LlPlaylist(10, 4, 0);
  Replace(dir / "index.m3u8", done13);
  CHECK(segment13.Read(3000).body == done13);
  Conn part4(origin->port());
  REQUIRE(part4.Send(Get(std::string(kLl) + "?_HLS_msn=13&_HLS_part=4")));
  CHECK(Held(part4, 400));
  const std::string with_14 = LlPlaylist(10, 4, 1);
  Replace(dir / "index.m3u8", with_14);
  CHECK(part4.Read(3000).body == with_14);

  // An ended playlist answers whatever is asked.
  const std::string ended = LlPlaylist(10, 4, 1, /*ended=*/true);
  Replace(dir / "index.m3u8", ended);
  auto e = ask("?_HLS_msn=15&_HLS_part=2");
  CHECK(e.status == 200);
  CHECK(e.body == ended);
  CHECK(e.Header("Cache-Control") == "public, max-age=3600");
}

TEST_CASE("origin: LL-HLS refuses parts too far ahead, and _HLS_part without _HLS_msn") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  LlDir(tree, LlPlaylist(10, 3, 1));  // segment 13 in progress with part 0; PART-TARGET 0.5 s
  Conn c(origin->port());
  auto status = [&](const std::string& target, const std::string& method = "GET") {
    REQUIRE(c.Send(method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    return c.Read(2000, method == "HEAD").status;
  };
  // The Advance Part Limit is 3 s of parts (3 / PART-TARGET = 6 parts past part 0 of 13).
  CHECK(status(std::string(kLl) + "?_HLS_msn=13&_HLS_part=7") == 400);
  CHECK(status(std::string(kLl) + "?_HLS_msn=15&_HLS_part=5") == 400);  // at least 7 parts ahead
  // More than two segments past the one in progress.
  CHECK(status(std::string(kLl) + "?_HLS_msn=16") == 400);
  CHECK(status(std::string(kLl) + "?_HLS_msn=16&_HLS_part=0") == 400);
  // A part index without its segment, or not a number.
  CHECK(status(std::string(kLl) + "?_HLS_part=1") == 400);
  CHECK(status(std::string(kLl) + "?_HLS_part=1", "HEAD") == 400);
  CHECK(status(std::string(kLl) + "?_HLS_msn=13&_HLS_part=x") == 400);
  CHECK(status("/live/v1/index.m3u8?_HLS_part=0") == 400);
  // Within the limits: held.
  for (const char* q : {"?_HLS_msn=13&_HLS_part=6", "?_HLS_msn=15&_HLS_part=0", "?_HLS_msn=15"}) {
    CAPTURE(q);
    Conn w(origin->port());
    REQUIRE(w.Send(Get(std::string(kLl) + q)));
    CHECK(Held(w, 300));
  }
  // The connection that was refused goes on.
  CHECK(status(std::string(kLl)) == 200);
}

TEST_CASE("origin: _HLS_part on a playlist without parts waits for the whole segment") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  const fs::path playlist = tree.root / "live" / "v1" / "index.m3u8";  // kEvent: segment 0, no PART-INF
  Conn a(origin->port());
  Conn b(origin->port());
  REQUIRE(a.Send(Get("/live/v1/index.m3u8?_HLS_msn=1&_HLS_part=0")));
  REQUIRE(b.Send(Get("/live/v1/index.m3u8?_HLS_msn=1&_HLS_part=9")));  // no part limit without parts
  CHECK(Held(a, 300));
  // A rewrite without segment 1 answers nobody.
  Replace(playlist, std::string(kEvent) + "## still segment 0\n");
  CHECK(Held(a, 300));
  CHECK(Held(b, 0));
  const std::string grown = std::string(kEvent) + "#EXTINF:4.000,\nseg-000001.ts\n";
  Replace(playlist, grown);
  CHECK(a.Read(3000).body == grown);
  CHECK(b.Read(3000).body == grown);
}

TEST_CASE("origin: LL-HLS delta updates (_HLS_skip)") {
  Tree tree;
  OriginParams p;
  p.threads = 2;
  auto origin = StartWith(tree, p);
  // 9 segments of 2 s (10-18) and 0.5 s of segment 19: the playlist ends at 18.5 s.
  // CAN-SKIP-UNTIL=12: segments ending before 6.5 s (10, 11, 12) are skipped.
  const std::string head =
      "#EXTM3U\n"
      "#EXT-X-TARGETDURATION:2\n"
      "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,CAN-SKIP-UNTIL=12.000\n"
      "#EXT-X-PART-INF:PART-TARGET=0.500\n"
      "#EXT-X-MEDIA-SEQUENCE:10\n";
  const std::string skipped =
      "#EXT-X-MAP:URI=\"init.mp4\"\n"
      "#EXT-X-PROGRAM-DATE-TIME:2026-12-06T22:00:00.000Z\n"
      "#EXTINF:2.000000,\n"
      "seg-000010.m4s\n"
      "#EXT-X-BITRATE:800\n"
      "#EXT-X-PROGRAM-DATE-TIME:2026-12-06T22:00:02.000Z\n"
      "#EXTINF:2.000000,\n"
      "#EXT-X-BYTERANGE:1000@0\n"
      "seg-000011.m4s\n"
      "#EXT-X-PROGRAM-DATE-TIME:2026-12-06T22:00:04.000Z\n"
      "#EXTINF:2.000000,\n"
      "seg-000012.m4s\n";
  auto tail = [](int trailing) {
    std::string t;
    char buf[200];
    for (int msn = 13; msn <= 18; ++msn) {
      if (msn == 18) {
        for (int k = 0; k < 4; ++k) {
          std::snprintf(buf, sizeof(buf), "#EXT-X-PART:DURATION=0.500000,URI=\"%s\"%s\n", PartName(18, k).c_str(),
                        k == 0 ? ",INDEPENDENT=YES" : "");
          t += buf;
        }
      }
      std::snprintf(buf, sizeof(buf), "#EXT-X-PROGRAM-DATE-TIME:2026-12-06T22:00:%02d.000Z\n#EXTINF:2.000000,\nseg-%06d.m4s\n",
                    (msn - 10) * 2, msn);
      t += buf;
    }
    for (int k = 0; k < trailing; ++k) t += "#EXT-X-PART:DURATION=0.500000,URI=\"" + PartName(19, k) + "\"\n";
    t += "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"" + PartName(19, trailing) + "\"\n";
    t += "#EXT-X-RENDITION-REPORT:URI=\"../audio-en/index.m3u8\",LAST-MSN=19,LAST-PART=0\n";
    return t;
  };
  const std::string full = "#EXTM3U\n#EXT-X-VERSION:6\n" + head.substr(8) + skipped + tail(1);
  const std::string delta = "#EXTM3U\n#EXT-X-VERSION:9\n" + head.substr(8) +
                            "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n"
                            "#EXT-X-MAP:URI=\"init.mp4\"\n" +
                            tail(1);
  const fs::path dir = LlDir(tree, full);
  Conn c(origin->port());
  for (const char* q : {"?_HLS_skip=YES", "?_HLS_skip=v2"}) {
    CAPTURE(q);
    REQUIRE(c.Send(Get(std::string(kLl) + q)));
    auto r = c.Read(2000);
    CHECK(r.status == 200);
    CHECK(r.body == delta);
    CHECK(r.Header("Cache-Control") == "no-cache");
    CHECK(r.Header("ETag").empty());
    CHECK(r.Header("Last-Modified").empty());
  }
  // The full playlist carries an ETag; presenting it with _HLS_skip still gets the delta, not a 304.
  REQUIRE(c.Send(Get(kLl)));
  auto whole = c.Read(2000);
  CHECK(whole.body == full);
  REQUIRE_FALSE(whole.Header("ETag").empty());
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=YES", "If-None-Match: " + whole.Header("ETag") + "\r\n")));
  auto conditional = c.Read(2000);
  CHECK(conditional.status == 200);
  CHECK(conditional.body == delta);
  // Other values of _HLS_skip are not a delta request.
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=NO")));
  CHECK(c.Read(2000).body == full);

  // With a blocking reload: held first, then the delta of the playlist that satisfied it.
  Conn held(origin->port());
  REQUIRE(held.Send(Get(std::string(kLl) + "?_HLS_msn=19&_HLS_part=1&_HLS_skip=YES")));
  CHECK(Held(held, 300));
  const std::string full2 = "#EXTM3U\n#EXT-X-VERSION:6\n" + head.substr(8) + skipped + tail(2);
  Replace(dir / "index.m3u8", full2);
  auto r = held.Read(3000);
  CHECK(r.status == 200);
  CHECK(r.body == "#EXTM3U\n#EXT-X-VERSION:9\n" + head.substr(8) +
                      "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXT-X-MAP:URI=\"init.mp4\"\n" + tail(2));
  CHECK(r.Header("Cache-Control") == "no-cache");

  // Nothing old enough to skip: the playlist as it is (with its validators).
  const std::string short_one = LlPlaylist(10, 3, 1);  // 6.5 s, CAN-SKIP-UNTIL=12
  Replace(dir / "index.m3u8", short_one);
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=YES")));
  auto s = c.Read(2000);
  CHECK(s.body == short_one);
  CHECK_FALSE(s.Header("ETag").empty());
  // Ended: never a delta.
  const std::string ended = full + "#EXT-X-ENDLIST\n";
  Replace(dir / "index.m3u8", ended);
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=YES")));
  CHECK(c.Read(2000).body == ended);
}

TEST_CASE("origin: a delta update keeps the EXT-X-KEY and EXT-X-MAP its first segment needs") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  // 10 segments of 2 s, no parts: CAN-SKIP-UNTIL=12 skips 0-2 (ending before 8 s).
  // Segment 3 has a MAP of its own but inherits key-000002.key; no EXT-X-VERSION.
  const std::string head =
      "#EXTM3U\n"
      "#EXT-X-TARGETDURATION:2\n"
      "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.000\n"
      "#EXT-X-MEDIA-SEQUENCE:0\n";
  const std::string old =
      "#EXT-X-KEY:METHOD=AES-128,URI=\"key-000000.key\",IV=0x0\n"
      "#EXT-X-MAP:URI=\"init-a.mp4\"\n"
      "#EXTINF:2.000000,\n"
      "seg-000000.m4s\n"
      "#EXT-X-DISCONTINUITY\n"
      "#EXT-X-MAP:URI=\"init-b.mp4\"\n"
      "#EXTINF:2.000000,\n"
      "seg-000001.m4s\n"
      "#EXT-X-KEY:METHOD=AES-128,URI=\"key-000002.key\",IV=0x2\n"
      "#EXTINF:2.000000,\n"
      "seg-000002.m4s\n";
  std::string kept = "#EXT-X-MAP:URI=\"init-c.mp4\"\n";
  for (int i = 3; i < 10; ++i) kept += "#EXTINF:2.000000,\nseg-00000" + std::to_string(i) + ".m4s\n";
  LlDir(tree, head + old + kept);
  Conn c(origin->port());
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=YES")));
  auto r = c.Read(2000);
  CHECK(r.status == 200);
  CHECK(r.body == "#EXTM3U\n#EXT-X-VERSION:9\n" + head.substr(8) +
                      "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n"
                      "#EXT-X-KEY:METHOD=AES-128,URI=\"key-000002.key\",IV=0x2\n" +
                      kept);
}

TEST_CASE("origin: _HLS_skip without CAN-SKIP-UNTIL is the full playlist") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  const std::string no_skip = LlPlaylist(10, 9, 1, false, 2, /*can_skip=*/false);
  LlDir(tree, no_skip);
  Conn c(origin->port());
  REQUIRE(c.Send(Get(std::string(kLl) + "?_HLS_skip=YES")));
  auto r = c.Read(2000);
  CHECK(r.status == 200);
  CHECK(r.body == no_skip);
  CHECK_FALSE(r.Header("ETag").empty());
  REQUIRE(c.Send(Get("/live/v1/index.m3u8?_HLS_skip=YES")));
  CHECK(c.Read(2000).body == kEvent);
}

TEST_CASE("origin: a preload-hinted part is held until it is renamed into place") {
  Tree tree;
  OriginParams p;
  p.threads = 2;
  auto origin = StartWith(tree, p);
  const fs::path dir = LlDir(tree, LlPlaylist(10, 3, 1));  // hints seg-000013.p1.m4s
  const std::string hinted = "/live/v1/ll/" + PartName(13, 1);
  Conn c(origin->port());
  REQUIRE(c.Send(Get(hinted)));
  Conn head(origin->port());
  REQUIRE(head.Send("HEAD " + hinted + " HTTP/1.1\r\nHost: x\r\n\r\n"));
  CHECK(Held(c, 500));
  // A missing part that is not the hint, or a segment, is a 404 at once.
  Conn other(origin->port());
  for (const std::string& missing : {PartName(13, 2), PartName(14, 0), std::string("seg-000013.m4s")}) {
    CAPTURE(missing);
    const auto asked = SteadyClock::now();
    REQUIRE(other.Send(Get("/live/v1/ll/" + missing)));
    auto r = other.Read(2000);
    CHECK(r.status == 404);
    CHECK(SteadyClock::now() - asked < Ms(200));
  }
  CHECK(Held(c, 0));
  // The packager writes the part (temp file, then rename), then the playlist that lists it.
  const std::string bytes = FakeSegment(13);
  const auto written = SteadyClock::now();
  Replace(dir / PartName(13, 1), bytes);
  auto r = c.Read(3000);
  const auto latency = SteadyClock::now() - written;
  CHECK(r.status == 200);
  CHECK(r.body == bytes);
  CHECK(r.Header("Content-Type") == "video/mp4");
  CHECK(r.Header("Cache-Control") == "public, max-age=31536000, immutable");
  CHECK(latency < Ms(1000));
  MESSAGE("part renamed -> answer: " << std::chrono::duration_cast<std::chrono::microseconds>(latency).count()
                                     << " us");
  auto h = head.Read(3000, /*head_only=*/true);
  CHECK(h.status == 200);
  CHECK(h.Header("Content-Length") == std::to_string(bytes.size()));
  // Once there it is an ordinary file (ranges included).
  REQUIRE(c.Send(Get(hinted, "Range: bytes=0-9\r\n")));
  auto ranged = c.Read(2000);
  CHECK(ranged.status == 206);
  CHECK(ranged.body == bytes.substr(0, 10));
}

TEST_CASE("origin: a hinted part that never comes: 503 after 3 target durations, 404 when the playlist ends") {
  Tree tree;
  OriginParams p;
  p.threads = 1;
  auto origin = StartWith(tree, p);
  const fs::path dir = LlDir(tree, LlPlaylist(10, 3, 1, false, /*td=*/1));
  const std::string hinted = "/live/v1/ll/" + PartName(13, 1);
  {
    Conn c(origin->port());
    const auto asked = SteadyClock::now();
    REQUIRE(c.Send(Get(hinted)));
    auto r = c.Read(6000);
    const auto waited = SteadyClock::now() - asked;
    CHECK(r.status == 503);
    CHECK(r.Header("Cache-Control") == "no-cache");
    CHECK(waited >= Ms(2900));
    CHECK(waited < Ms(4500));
    // The connection goes on.
    REQUIRE(c.Send(Get(kLl)));
    CHECK(c.Read(2000).status == 200);
  }
  {
    // A playlist rewrite that still hints it keeps it waiting; #EXT-X-ENDLIST without it: 404.
    Conn c(origin->port());
    REQUIRE(c.Send(Get(hinted)));
    CHECK(Held(c, 300));
    Replace(dir / "index.m3u8", LlPlaylist(10, 3, 1, false, 1) + "## rewritten\n");
    CHECK(Held(c, 300));
    const auto ended = SteadyClock::now();
    Replace(dir / "index.m3u8", LlPlaylist(10, 3, 1, /*ended=*/true, 1));
    auto r = c.Read(3000);
    CHECK(r.status == 404);
    CHECK(SteadyClock::now() - ended < Ms(1000));
    // And nothing waits for a hint of an ended playlist.
    REQUIRE(c.Send(Get(hinted)));
    CHECK(c.Read(1000).status == 404);
  }
  {
    // A hint the packager withdrew (the playlist now hints another part, this one never came): 404.
    Replace(dir / "index.m3u8", LlPlaylist(10, 3, 1, false, 1));
    Conn c(origin->port());
    REQUIRE(c.Send(Get(hinted)));
    CHECK(Held(c, 300));
    Replace(dir / "index.m3u8", LlPlaylist(10, 4, 0, false, 1));  // segment 13 ended early: hints 14.p0
    CHECK(c.Read(3000).status == 404);
  }
}

TEST_CASE("origin: 1,000 pending LL-HLS requests on one playlist are all answered after one write") {
  Tree tree;
  OriginParams p;
  p.threads = 2;
  auto origin = StartWith(tree, p);
  const fs::path dir = LlDir(tree, LlPlaylist(10, 3, 1));
  constexpr int kReloads = 1000;
  constexpr int kHints = 200;
  std::vector<std::unique_ptr<Conn>> reloads;
  std::vector<std::unique_ptr<Conn>> hints;
  const auto start = SteadyClock::now();
  for (int i = 0; i < kReloads; ++i) {
    reloads.push_back(std::make_unique<Conn>(origin->port()));
    REQUIRE(reloads.back()->Send(
        Get(std::string(kLl) + (i % 2 ? "?_HLS_msn=13&_HLS_part=1" : "?_HLS_msn=13&_HLS_part=1&_HLS_skip=YES"))));
  }
  for (int i = 0; i < kHints; ++i) {
    hints.push_back(std::make_unique<Conn>(origin->port()));
    REQUIRE(hints.back()->Send(Get("/live/v1/ll/" + PartName(13, 1))));
  }
  std::this_thread::sleep_for(Ms(500));
  int early = 0;
  for (auto& w : reloads) early += w->Readable(0);
  for (auto& w : hints) early += w->Readable(0);
  CHECK(early == 0);
  // Unrelated writes in the directory (another part, a temp file) answer nobody.
  Replace(dir / PartName(12, 9), "x");
  std::this_thread::sleep_for(Ms(200));
  for (auto& w : reloads) early += w->Readable(0);
  CHECK(early == 0);

  const std::string bytes = FakeSegment(131);
  const std::string next = LlPlaylist(10, 3, 2);
  const auto written = SteadyClock::now();
  Replace(dir / PartName(13, 1), bytes);  // the part, then the playlist listing it: two writes, as the packager does
  Replace(dir / "index.m3u8", next);
  int answered = 0;
  for (auto& w : reloads) {
    auto r = w->Read(10000);
    if (r.status == 200 && r.body == next && r.Header("Cache-Control") == "no-cache") ++answered;
  }
  int parts = 0;
  for (auto& w : hints) {
    auto r = w->Read(10000);
    if (r.status == 200 && r.body == bytes) ++parts;
  }
  const auto all = SteadyClock::now() - written;
  CHECK(answered == kReloads);
  CHECK(parts == kHints);
  MESSAGE(kReloads << " reloads and " << kHints << " hinted parts answered within "
                   << std::chrono::duration_cast<Ms>(all).count() << " ms of the write ("
                   << std::chrono::duration_cast<Ms>(SteadyClock::now() - start).count() << " ms in all)");
}

// ---------------------------------------------------------------------------------
// Keys (AES-128): served from the key store beside the root, to the key token only;
// no request path reaches the store as a file; bounded request lines and headers.

namespace {

constexpr char kKeyPath[] = "/t/v1/video-240p/key-000000.key";
constexpr char kKeyToken[] = "k3y-Token_0123456789abcdef";
constexpr char kKeysNotServed[] =
    "keys are not served by this origin: start 'kafka-hls serve' with --key-token TOKEN "
    "(and --key-store DIR if the keys are not in <root>.keys)\n";

/// tmp/root, the served tree, and beside it tmp/root.keys, the key store (as the
/// packager lays them out), plus what must never be served as a key:
///   a decoy key-000000.key (and only-in-tree.key, UPPER.KEY) in the served tree,
///   a 17-byte "key", a dotfile, a symlink inside the store and one out of it,
///   symlinks from the tree into the store.
struct KeyTree {
  test::TempDir tmp;
  fs::path root = tmp.path() / "root";
  fs::path store = tmp.path() / "root.keys";
  fs::path rendition = fs::path("t") / "v1" / "video-240p";
  std::string key = std::string("\x00\x01\r\n\xff\xfe", 6) + "0123456789";  // 16 raw bytes, some not text
  std::string outside_key = "OUTSIDE-16-bytes";

  KeyTree() {
    REQUIRE(key.size() == 16);
    Write(store / rendition / "key-000000.key", key);
    Write(store / rendition / "key-000010.key", key + "x");  // not a key: 17 bytes
    Write(store / rendition / ".key-000000.key", key);
    fs::create_symlink("key-000000.key", store / rendition / "link.key");
    Write(tmp.path() / "outside.key", outside_key);
    fs::create_symlink(tmp.path() / "outside.key", store / rendition / "out.key");
    Write(root / rendition / "index.m3u8",
          "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-KEY:METHOD=AES-128,URI=\"key-000000.key\","
          "IV=0x00000000000000000000000000000000\n#EXTINF:4.000,\nseg-000000.ts\n#EXT-X-ENDLIST\n");
    Write(root / rendition / "seg-000000.ts", FakeSegment(2));
    Write(root / rendition / "key-000000.key", kSecret);  // a decoy in the tree: never served
    Write(root / rendition / "only-in-tree.key", kSecret);
    Write(root / rendition / "UPPER.KEY", kSecret);
    fs::create_symlink("../../../../root.keys/t/v1/video-240p/key-000000.key", root / rendition / "leak.ts");
    fs::create_symlink("../../../../root.keys/t/v1/video-240p/key-000000.key", root / rendition / "leak.key");
    fs::create_symlink("../root.keys", root / "keys");
  }
};

std::unique_ptr<Origin> StartKeys(const KeyTree& k, const std::string& token, OriginParams p = {}) {
  p.root = k.root.string();
  p.port = 0;
  p.key_store = k.store.string();
  p.key_token = token;
  auto o = Origin::Start(p);
  REQUIRE_MESSAGE(o.ok(), o.status().message());
  return std::move(*o);
}

std::string Bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

/// The status code of a raw exchange ("HTTP/1.1 404 ..." -> 404; 0 when none).
int StatusOf(const std::string& wire) { return wire.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(wire.c_str() + 9) : 0; }

/// What this process writes to stderr (the log) while it lives.
class StderrCapture {
 public:
  explicit StderrCapture(fs::path file) : file_(std::move(file)) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrCapture() { Restore(); }
  std::string Text() {
    Restore();
    return test::ReadFile(file_);
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  fs::path file_;
  int saved_ = -1;
};

}  // namespace

TEST_CASE("origin: keys are not served without a key token") {
  KeyTree k;
  // A store that exists, a store that does not, and none at all: no token, no keys.
  for (const std::string& store : {k.store.string(), (k.tmp.path() / "missing.keys").string(), std::string()}) {
    CAPTURE(store);
    OriginParams p;
    p.root = k.root.string();
    p.port = 0;
    p.key_store = store;
    auto o = Origin::Start(p);
    REQUIRE_MESSAGE(o.ok(), o.status().message());
    Conn c((*o)->port());
    for (const std::string& extra : {std::string(), Bearer(kKeyToken), Bearer("anything")}) {
      CAPTURE(extra);
      REQUIRE(c.Send(Get(kKeyPath, extra)));
      auto r = c.Read();
      CHECK(r.status == 403);
      CHECK(r.body == kKeysNotServed);
      CHECK(r.Header("Content-Type") == "text/plain; charset=utf-8");
      CHECK(r.Header("Cache-Control") == "no-store");
      CHECK(r.Header("Access-Control-Allow-Origin") == "*");
      CHECK(r.head.find("WWW-Authenticate") == std::string::npos);
    }
    // The decoy key in the served tree stays unserved, whatever it is called.
    for (const char* path : {"/t/v1/video-240p/only-in-tree.key", "/t/v1/video-240p/UPPER.KEY",
                             "/t/v1/video-240p/key-000000%2ekey"}) {
      CAPTURE(path);
      REQUIRE(c.Send(Get(path)));
      auto r = c.Read();
      CHECK(r.status == 403);
      CHECK(r.body.find(kSecret) == std::string::npos);
    }
    // HEAD: the same head, no body (the connection goes on with the next answer).
    REQUIRE(c.Send(std::string("HEAD ") + kKeyPath + " HTTP/1.1\r\nHost: x\r\n\r\n" +
                   Get("/t/v1/video-240p/index.m3u8")));
    auto head = c.Read(10000, /*head_only=*/true);
    CHECK(head.status == 403);
    CHECK(head.Header("Content-Length") == std::to_string(std::string_view(kKeysNotServed).size()));
    auto next = c.Read();
    CHECK(next.status == 200);
    CHECK(next.body.rfind("#EXTM3U", 0) == 0);
  }
}

TEST_CASE("origin: keys go to Authorization: Bearer <key token> only") {
  KeyTree k;
  metrics::Registry registry;
  OriginParams p;
  p.metrics = &registry;
  p.threads = 2;
  auto origin = StartKeys(k, kKeyToken, p);
  Conn c(origin->port());
  size_t key_bytes = 0;  // body bytes of the key requests' answers, for the metrics

  // No credentials: 401 with the challenge.
  REQUIRE(c.Send(Get(kKeyPath)));
  auto none = c.Read();
  key_bytes += none.body.size();
  CHECK(none.status == 401);
  CHECK(none.Header("WWW-Authenticate") == "Bearer realm=\"kafka-hls keys\"");
  CHECK(none.Header("Cache-Control") == "no-store");
  CHECK(none.Header("Access-Control-Allow-Origin") == "*");
  CHECK(none.body.find(k.key) == std::string::npos);

  // Anything but exactly the token, in the Bearer scheme: 403.
  const std::string token = kKeyToken;
  for (const std::string& extra :
       {Bearer("wrong"), Bearer(token.substr(0, token.size() - 1)), Bearer(token + "x"), Bearer("x" + token),
        Bearer(std::string(token.size(), 'a')), Bearer(""), std::string("Authorization: Bearer\r\n"),
        "Authorization: " + token + "\r\n", "Authorization: Basic " + token + "\r\n",
        "Authorization: Bearertoken " + token + "\r\n", "Authorization: Bearer " + token + " extra\r\n",
        Bearer(token) + Bearer(token),  // two fields: ambiguous
        Bearer(token) + Bearer("wrong")}) {
    CAPTURE(extra);
    REQUIRE(c.Send(Get(kKeyPath, extra)));
    auto r = c.Read();
    key_bytes += r.body.size();
    CHECK(r.status == 403);
    CHECK(r.Header("Cache-Control") == "no-store");
    CHECK(r.body.find(k.key) == std::string::npos);
    CHECK(r.head.find("WWW-Authenticate") == std::string::npos);
  }

  // The token, the scheme in any case (RFC 9110 11.1): the store's 16 bytes,
  // never the decoy of the served tree; a Range is ignored.
  for (const std::string& extra :
       {"Authorization: bearer " + token + "\r\n", "Authorization: BEARER " + token + "\r\n", Bearer(token),
        "Authorization: Bearer   " + token + "  \r\n", Bearer(token) + "Range: bytes=0-3\r\n",
        Bearer(token) + "If-None-Match: *\r\n"}) {
    CAPTURE(extra);
    REQUIRE(c.Send(Get(kKeyPath, extra)));
    auto r = c.Read();
    key_bytes += r.body.size();
    CHECK(r.status == 200);
    CHECK(r.body == k.key);
    CHECK(r.Header("Content-Type") == "application/octet-stream");
    CHECK(r.Header("Content-Length") == "16");
    CHECK(r.Header("Cache-Control") == "private, no-store");
    CHECK(r.Header("Access-Control-Allow-Origin") == "*");
    CHECK(r.Header("Connection") == "keep-alive");
    for (const char* absent : {"ETag", "Last-Modified", "Content-Range", "Accept-Ranges"}) {
      CAPTURE(absent);
      CHECK(r.head.find(std::string("\r\n") + absent + ":") == std::string::npos);
    }
  }
  // Keys and the tree on one connection, one after another: the same request path.
  REQUIRE(c.Send(Get("/t/v1/video-240p/index.m3u8") + Get(kKeyPath, Bearer(token)) +
                 Get("/t/v1/video-240p/seg-000000.ts")));
  CHECK(c.Read().status == 200);
  CHECK(c.Read().body == k.key);
  key_bytes += k.key.size();
  CHECK(c.Read().body == FakeSegment(2));

  // HEAD: the head only.
  std::string wire = RawExchange(origin->port(), std::string("HEAD ") + kKeyPath + " HTTP/1.1\r\nHost: x\r\n" +
                                                     Bearer(token) + "Connection: close\r\n\r\n");
  CHECK(StatusOf(wire) == 200);
  CHECK(wire.find("\r\nContent-Length: 16\r\n") != std::string::npos);
  CHECK(wire.find("\r\nCache-Control: private, no-store\r\n") != std::string::npos);
  auto end = wire.find("\r\n\r\n");
  REQUIRE(end != std::string::npos);
  CHECK(end + 4 == wire.size());

  // Not in the store: 404, whatever the served tree has under that name.
  for (const char* path : {"/t/v1/video-240p/only-in-tree.key", "/t/v1/video-240p/UPPER.KEY",
                           "/t/v1/video-240p/key-000001.key", "/t/v2/video-240p/key-000000.key", "/x.key"}) {
    CAPTURE(path);
    REQUIRE(c.Send(Get(path, Bearer(token))));
    auto r = c.Read();
    CHECK(r.status == 404);
    CHECK(r.Header("Cache-Control") == "no-store");
    CHECK(r.body.find(kSecret) == std::string::npos);
  }
  // A file in the store that is not a key: 500, and the log names it.
  {
    StderrCapture log(k.tmp.path() / "stderr.log");
    REQUIRE(c.Send(Get("/t/v1/video-240p/key-000010.key", Bearer(token))));
    auto r = c.Read();
    CHECK(r.status == 500);
    CHECK(r.body.find(k.key) == std::string::npos);
    const std::string text = log.Text();
    CHECK_MESSAGE(text.find((k.store / k.rendition / "key-000010.key").string()) != std::string::npos, text);
    CHECK(text.find("17 bytes") != std::string::npos);
    CHECK(text.find(token) == std::string::npos);
  }

  // The preflight a browser sends before a GET carrying Authorization allows it.
  REQUIRE(c.Send("OPTIONS " + std::string(kKeyPath) +
                 " HTTP/1.1\r\nHost: x\r\nOrigin: http://example.com\r\nAccess-Control-Request-Method: GET\r\n"
                 "Access-Control-Request-Headers: authorization\r\n\r\n"));
  auto pre = c.Read(10000, /*head_only=*/true);
  CHECK(pre.status == 204);
  CHECK(pre.Header("Access-Control-Allow-Origin") == "*");
  CHECK(pre.Header("Access-Control-Allow-Headers").find("Authorization") != std::string::npos);
  CHECK(pre.Header("Access-Control-Allow-Methods").find("GET") != std::string::npos);

  // Counted as kind "key".
  std::string text;
  for (int i = 0; i < 100; ++i) {
    text = registry.Render();
    if (text.find("khls_origin_requests_total{kind=\"key\",code=\"500\"} 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK_MESSAGE(text.find("khls_origin_requests_total{kind=\"key\",code=\"401\"} 1") != std::string::npos, text);
  CHECK_MESSAGE(text.find("khls_origin_requests_total{kind=\"key\",code=\"403\"} 13") != std::string::npos, text);
  CHECK_MESSAGE(text.find("khls_origin_requests_total{kind=\"key\",code=\"200\"} 8") != std::string::npos, text);
  CHECK_MESSAGE(text.find("khls_origin_requests_total{kind=\"key\",code=\"404\"} 5") != std::string::npos, text);
  // Bodies: 7 keys of 16 bytes (HEAD sends none) and the refusals' one-line texts.
  CHECK(key_bytes > 7 * 16);
  CHECK_MESSAGE(text.find("khls_origin_sent_bytes_total{kind=\"key\"} " + std::to_string(key_bytes) + "\n") !=
                    std::string::npos,
                text);
}

TEST_CASE("origin: no request path reaches the key store as a file") {
  KeyTree k;
  auto origin = StartKeys(k, kKeyToken);
  const std::string store_abs = (k.store / k.rendition / "key-000000.key").string();
  const std::vector<std::string> targets = {
      "/../root.keys/t/v1/video-240p/key-000000.key",
      "/t/v1/video-240p/../../../../root.keys/t/v1/video-240p/key-000000.key",
      "/%2e%2e/root.keys/t/v1/video-240p/key-000000.key",
      "/%2E%2E%2Froot.keys%2Ft%2Fv1%2Fvideo-240p%2Fkey-000000.key",
      "/..%2froot.keys/t/v1/video-240p/key-000000.key",
      "/t/%2e%2e/%2e%2e/%2e%2e/%2e%2e/root.keys/t/v1/video-240p/key-000000.key",
      "/%252e%252e/root.keys/t/v1/video-240p/key-000000.key",  // double-encoded
      "/%252e%252e%252froot.keys%252ft%252fv1%252fvideo-240p%252fkey-000000.key",
      "/..\\root.keys\\t\\v1\\video-240p\\key-000000.key",  // raw backslashes
      "/..%5croot.keys%5ct%5cv1%5cvideo-240p%5ckey-000000.key",
      "/" + store_abs,                                  // "//tmp/.../root.keys/..."
      "/%2F" + store_abs.substr(1),
      "/keys/t/v1/video-240p/key-000000.key",           // a directory symlink in the tree to the store
      "/t/v1/video-240p/leak.ts",                       // a symlink in the tree to the key, not named .key
      "/t/v1/video-240p/leak.key",                      // ... and named .key (looked up in the store)
      "/t/v1/video-240p/link.key",                      // a symlink inside the store
      "/t/v1/video-240p/out.key",                       // a symlink out of the store
      "/t/v1/video-240p/.key-000000.key",               // a dotfile in the store
      "/t/v1/video-240p/%2ekey-000000.key",
      "/t/./v1/video-240p/key-000000.key",
      "/t//v1/video-240p/key-000000.key",
      "/t/v1/video-240p/key-000000.key/",               // not a key request: a directory of the tree
      "/t/v1/video-240p/key-000000.key%00",             // not a key request: NUL
      "/t/v1/video-240p/key-000000.key%00.ts",
      "/root.keys/t/v1/video-240p/key-000000.key",
  };
  for (const auto& t : targets) {
    CAPTURE(t);
    // With the token: an authorised client cannot leave the store either.
    const std::string wire = RawExchange(origin->port(), "GET " + t + " HTTP/1.1\r\nHost: x\r\n" + Bearer(kKeyToken) +
                                                             "Connection: close\r\n\r\n");
    CHECK(StatusOf(wire) == 404);
    CHECK(wire.find(k.key) == std::string::npos);
    CHECK(wire.find(k.outside_key) == std::string::npos);
    CHECK(wire.find(kSecret) == std::string::npos);
  }
  // The origin still serves the key itself and the tree after all that.
  CHECK(StatusOf(RawExchange(origin->port(), Get(kKeyPath, Bearer(kKeyToken) + "Connection: close\r\n"))) == 200);
  CHECK(StatusOf(RawExchange(origin->port(), Get("/t/v1/video-240p/index.m3u8", "Connection: close\r\n"))) == 200);
}

TEST_CASE("origin: Start checks the key store and the key token") {
  KeyTree k;
  auto start = [&](const std::string& store, const std::string& token) {
    OriginParams p;
    p.root = k.root.string();
    p.port = 0;
    p.key_store = store;
    p.key_token = token;
    return Origin::Start(p);
  };
  auto refused = [&](const std::string& store, const std::string& token, const std::string& says) {
    CAPTURE(store);
    CAPTURE(token);
    auto o = start(store, token);
    REQUIRE_FALSE(o.ok());
    CHECK(o.status().code() == ErrorCode::kInvalidArgument);
    CHECK_MESSAGE(o.status().message().find(says) != std::string::npos, o.status().message());
    MESSAGE(o.status().message());
  };
  const std::string root = fs::canonical(k.root).string();
  fs::create_directories(k.root / "keys-inside");
  fs::create_symlink(k.root / "keys-inside", k.tmp.path() / "alias.keys");  // a path outside, a store inside
  Write(k.tmp.path() / "a-file", "x");

  refused("", kKeyToken, "no key store");
  refused((k.tmp.path() / "missing.keys").string(), kKeyToken, "missing.keys");
  refused((k.tmp.path() / "a-file").string(), kKeyToken, "a-file");
  for (const std::string& token : {std::string(kKeyToken), std::string()}) {
    refused(k.root.string(), token, "lies inside the served root " + root);
    refused((k.root / "keys-inside").string(), token, "lies inside the served root " + root);
    refused((k.tmp.path() / "alias.keys").string(), token, "lies inside the served root");
    refused((k.root / "t").string(), token, "put it beside the root, e.g. " + root + ".keys");
  }
  refused(k.store.string(), "two words", "printable ASCII");
  refused(k.store.string(), "tab\there", "printable ASCII");

  // Beside the root (a name the root's is a prefix of), or missing without a token: fine.
  CHECK(start(k.store.string(), kKeyToken).ok());
  CHECK(start((k.tmp.path() / "missing.keys").string(), "").ok());
  CHECK(start("", "").ok());
}

TEST_CASE("origin: an over-long request line or header is refused, and the connection closed") {
  KeyTree k;
  OriginParams p;
  p.threads = 1;
  auto origin = StartKeys(k, kKeyToken, p);
  struct Case {
    std::string request;
    int status;
  };
  const std::string big(20 << 10, 'a');
  const Case cases[] = {
      {"GET /" + big + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
      {"GET /t/v1/video-240p/" + big + ".key HTTP/1.1\r\nHost: x\r\n" + Bearer(kKeyToken) + "\r\n", 414},
      {"GET /t/v1/video-240p/" + big + ".key HTTP/1.1\r\n", 414},  // and the header never ends
      {Get("/t/v1/video-240p/index.m3u8", "X-Big: " + big + "\r\n"), 431},
      {Get(kKeyPath, "Authorization: Bearer " + big + "\r\n"), 431},
      {Get(kKeyPath, Bearer(kKeyToken) + "a line without a colon\r\n"), 400},  // a malformed header
  };
  for (const auto& t : cases) {
    CAPTURE(t.request.substr(0, 60));
    Conn c(origin->port());
    REQUIRE(c.Send(t.request));
    auto r = c.Read(5000);
    CHECK(r.status == t.status);
    CHECK(r.Header("Connection") == "close");
    CHECK(r.body.find(k.key) == std::string::npos);
    CHECK(c.ClosedWithin(3000));
  }
  // And the loop is not hurt.
  CHECK(StatusOf(RawExchange(origin->port(), Get(kKeyPath, Bearer(kKeyToken) + "Connection: close\r\n"))) == 200);
}

// ---------------------------------------------------------------------------------
// A real player: hls.js (served by the origin) in headless Chromium, via playwright-core.

namespace {

std::string NodeModulesDir() {
  if (const char* d = std::getenv("KHLS_NODE_MODULES"); d && *d) return d;
  if (const char* c = std::getenv("KHLS_CACHE"); c && *c) return std::string(c) + "/node/node_modules";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/kafka-hls/node/node_modules";
}

/// Empty when the player can run here; otherwise what is missing.
std::string PlayerMissing() {
  std::string missing;
  std::string modules = NodeModulesDir();
  if (!fs::exists(fs::path(modules) / "playwright-core" / "package.json")) {
    missing += "playwright-core (in " + modules + "); ";
  }
  const char* chromium = std::getenv("KHLS_CHROMIUM");
  if (!fs::exists(chromium && *chromium ? chromium : "/usr/bin/chromium")) missing += "chromium; ";
  if (test::Run("node --version").exit_code != 0) missing += "node; ";
  if (test::Run("ffmpeg -version").exit_code != 0) missing += "ffmpeg; ";
  return missing;
}

/// Checks that the player can run against `origin`; false (skip) only outside CI.
bool PlayerAvailable(const Origin& origin) {
  std::string missing = PlayerMissing();
  httplib::Client c("127.0.0.1", origin.port());
  auto js = c.Head("/hls.min.js");
  if (!js || js->status != 200) missing += "hls.js embedded in the origin (CMake found no hls.min.js); ";
  if (missing.empty()) return true;
  if (InCi()) FAIL("player test cannot run under CI: missing " << missing << "(run scripts/setup.sh)");
  MESSAGE("player test skipped: missing " << missing << "(run scripts/setup.sh)");
  return false;
}

/// ffmpeg's own HLS output (640x360 H.264 High@3.0 + AAC, 4 s segments) as DIR/<title>/v1/,
/// with a master naming its codecs.
///
/// Audio and video start at the same instant: hls.js puts time 0 at the earliest
/// timestamp, and a track starting later (B-frames put the first video PTS 80 ms
/// after its DTS; AAC priming puts audio 1024 samples before the video) leaves a
/// start gap that hls.js 1.7 jumps with a non-fatal bufferSeekOverHole ERROR event
/// in about half of the runs. Hence no B-frames, and audio delayed by its priming.
void MakeClip(const fs::path& title_dir, int seconds, const char* playlist_type) {
  fs::create_directories(title_dir / "v1");
  std::string cmd = "ffmpeg -nostdin -hide_banner -loglevel error -y"
                    " -f lavfi -i testsrc2=size=640x360:rate=25"
                    " -itsoffset 0.021333 -f lavfi -i sine=frequency=440:sample_rate=48000"
                    " -t " + std::to_string(seconds) +
                    " -c:v libx264 -profile:v high -level 3.0 -bf 0 -pix_fmt yuv420p -g 50 -c:a aac -b:a 96k"
                    " -f hls -hls_time 4 -hls_playlist_type " + playlist_type +
                    " -hls_segment_filename " + test::Quote((title_dir / "v1" / "seg-%06d.ts").string()) + " " +
                    test::Quote((title_dir / "v1" / "index.m3u8").string());
  auto r = test::Run(cmd);
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  Write(title_dir / "master.m3u8",
        "#EXTM3U\n#EXT-X-VERSION:3\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=1500000,RESOLUTION=640x360,CODECS=\"avc1.64001e,mp4a.40.2\"\n"
        "v1/index.m3u8\n");
}

/// An origin on a free port serving `root` (created).
std::unique_ptr<Origin> StartOrigin(const fs::path& root) {
  fs::create_directories(root);
  OriginParams p;
  p.root = root.string();
  p.port = 0;
  auto origin = Origin::Start(p);
  REQUIRE_MESSAGE(origin.ok(), origin.status().message());
  return std::move(*origin);
}

struct PlayResult {
  int exit_code = -1;
  nlohmann::json summary;
};

PlayResult Play(const Origin& origin, const std::string& title, const std::string& args) {
  std::string cmd = "KHLS_NODE_MODULES=" + test::Quote(NodeModulesDir()) + " node " +
                    test::Quote(std::string(KHLS_SOURCE_DIR) + "/tests/player/play.mjs") + " --url " +
                    test::Quote(origin.url() + title + "/master.m3u8") + " --page " + test::Quote(origin.url()) +
                    " " + args;
  MESSAGE(cmd);
  auto r = test::RunStdout(cmd);
  PlayResult p;
  p.exit_code = r.exit_code;
  std::string out = r.output;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  auto nl = out.rfind('\n');
  p.summary = nlohmann::json::parse(nl == std::string::npos ? out : out.substr(nl + 1), nullptr, false);
  MESSAGE("player: " << r.output);
  return p;
}

}  // namespace

TEST_CASE("origin: hls.js in Chromium plays a VOD title to the end") {
  test::TempDir tmp;
  fs::path root = tmp.path() / "root";
  std::unique_ptr<Origin> origin = StartOrigin(root);
  if (!PlayerAvailable(*origin)) return;
  MakeClip(root / "clip", 12, "vod");
  Write(root / "clip" / ".state.json", R"({"title":"clip","complete":true})");

  fs::path shot = tmp.path() / "vod.png";
  auto r = Play(*origin, "clip", "--until-time 10 --expect-ended --timeout 90 --screenshot " + test::Quote(shot.string()));
  CHECK(r.exit_code == 0);
  REQUIRE(r.summary.is_object());
  CHECK(r.summary["ok"] == true);
  CHECK(r.summary["errors"].empty());
  CHECK(r.summary["ended"] == true);
  CHECK(r.summary["playlist_type"] == "VOD");
  CHECK(r.summary["currentTime"].get<double>() >= 11.5);
  CHECK(fs::exists(shot));
  if (const char* keep = std::getenv("KHLS_PLAYER_SCREENSHOT_DIR"); keep && *keep) {
    fs::copy_file(shot, fs::path(keep) / "origin_vod.png", fs::copy_options::overwrite_existing);
  }
}

TEST_CASE("origin: hls.js follows a growing EVENT playlist until #EXT-X-ENDLIST") {
  test::TempDir tmp;
  fs::path root = tmp.path() / "root";
  std::unique_ptr<Origin> origin = StartOrigin(root);
  if (!PlayerAvailable(*origin)) return;

  // Cut a 16 s clip, then publish it the way the packager does: segment, then the
  // playlist (atomically renamed) listing it, one segment every 2 s, ENDLIST last.
  fs::path src = tmp.path() / "src";
  MakeClip(src / "clip", 16, "event");
  std::string full = test::ReadFile(src / "clip" / "v1" / "index.m3u8");
  fs::path dir = root / "clip";
  fs::create_directories(dir / "v1");
  fs::copy_file(src / "clip" / "master.m3u8", dir / "master.m3u8");
  Write(dir / ".state.json", R"({"title":"clip","complete":false})");

  std::vector<std::string> header_and_segments;  // [0] = header lines, then "#EXTINF..\nseg" blocks
  {
    std::istringstream in(full);
    std::string line, block;
    header_and_segments.emplace_back();
    while (std::getline(in, line)) {
      if (line == "#EXT-X-ENDLIST") continue;
      if (line.rfind("#EXTINF", 0) == 0) {
        block = line + "\n";
      } else if (!block.empty()) {
        header_and_segments.push_back(block + line + "\n");
        block.clear();
      } else {
        header_and_segments[0] += line + "\n";
      }
    }
  }
  REQUIRE(header_and_segments.size() >= 4);
  auto publish = [&](size_t n, bool end) {
    std::string text = header_and_segments[0];
    for (size_t i = 1; i <= n; ++i) text += header_and_segments[i];
    if (end) text += "#EXT-X-ENDLIST\n";
    Write(dir / "v1" / ".index.m3u8.tmp", text);
    fs::rename(dir / "v1" / ".index.m3u8.tmp", dir / "v1" / "index.m3u8");
  };
  auto copy_segment = [&](size_t i) {
    std::string name = "seg-" + std::string(6 - std::to_string(i).size(), '0') + std::to_string(i) + ".ts";
    fs::copy_file(src / "clip" / "v1" / name, dir / "v1" / name);
  };
  copy_segment(0);
  copy_segment(1);
  publish(2, false);

  std::atomic<bool> stop{false};
  std::thread packager([&] {
    for (size_t n = 3; n < header_and_segments.size() && !stop; ++n) {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      copy_segment(n - 1);
      publish(n, false);
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
    publish(header_and_segments.size() - 1, true);
    Write(dir / ".state.json", R"({"title":"clip","complete":true})");
  });

  fs::path shot = tmp.path() / "event.png";
  auto r = Play(*origin, "clip", "--expect-ended --timeout 90 --screenshot " + test::Quote(shot.string()));
  stop = true;
  packager.join();
  CHECK(r.exit_code == 0);
  REQUIRE(r.summary.is_object());
  CHECK(r.summary["ok"] == true);
  CHECK(r.summary["errors"].empty());
  CHECK(r.summary["ended"] == true);
  CHECK(r.summary["playlist_type"] == "EVENT");
  if (const char* keep = std::getenv("KHLS_PLAYER_SCREENSHOT_DIR"); keep && *keep) {
    fs::copy_file(shot, fs::path(keep) / "origin_event.png", fs::copy_options::overwrite_existing);
  }
}
