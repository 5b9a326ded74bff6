// objstore: the S3 client against a real S3 server (S3Proxy with its filesystem
// backend and SigV4 auth, started through scripts/s3proxy.sh once per binary and
// stopped at exit only if this binary started it), plus URL parsing and a fake
// server (cpp-httplib) for the retry rules.
//
// S3PROXY_PORT picks the server's port (default 9300); every run works under its
// own key prefix in the bucket khls-s3-test and removes what it wrote.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <httplib.h>

#include "khls/s3.h"
#include "s3proxy_util.h"
#include "test_util.h"

using namespace khls;
using namespace khls::s3;
namespace fs = std::filesystem;
using khls::test::Quote;
using khls::test::Run;
using khls::test::S3ProxyServer;

namespace {

constexpr char kBucket[] = "khls-s3-test";

S3ProxyServer& Server() {
  static S3ProxyServer server;
  REQUIRE_MESSAGE(server.error().empty(), server.error());
  return server;
}

/// A client of the test server, with the test bucket in place.
S3Client Client(S3Config config = Server().Config()) {
  auto c = S3Client::Create(std::move(config));
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  static bool bucket = false;
  if (!bucket) {
    Status s = c->CreateBucketIfMissing(kBucket);
    REQUIRE_MESSAGE(s.ok(), s.message());
    bucket = true;
  }
  return std::move(c).value();
}

/// This run's key prefix: runs never see each other's keys.
const std::string& RunPrefix() {
  static const std::string p = fmt::format("run-{}-{:x}/", ::getpid(), std::random_device{}());
  return p;
}

PutOptions Opts(std::string type, std::string cache = {}) {
  PutOptions o;
  o.content_type = std::move(type);
  o.cache_control = std::move(cache);
  return o;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

/// Removes every key under `prefix` at scope exit.
struct Cleanup {
  S3Client& client;
  std::string prefix;
  ~Cleanup() {
    auto keys = client.List(kBucket, prefix);
    if (!keys.ok()) return;
    for (const auto& e : *keys) (void)client.Delete(kBucket, e.key);
  }
};

#define REQUIRE_OK(expr)                                  \
  do {                                                    \
    auto&& khls_r_ = (expr);                              \
    REQUIRE_MESSAGE(khls_r_.ok(), khls_r_.status().message()); \
  } while (0)

}  // namespace

// --- names (no server) ---------------------------------------------------------------

TEST_CASE("s3:// URLs: good ones") {
  auto u = ParseS3Url("s3://media-origin/movies/season.1/ep_01-final");
  REQUIRE_MESSAGE(u.ok(), u.status().message());
  CHECK(u->bucket == "media-origin");
  CHECK(u->prefix == "movies/season.1/ep_01-final");
  CHECK(u->Key("master.m3u8") == "movies/season.1/ep_01-final/master.m3u8");
  CHECK(u->ToString() == "s3://media-origin/movies/season.1/ep_01-final");

  for (const char* url : {"s3://media", "s3://media/", "S3://media//"}) {
    auto b = ParseS3Url(url);
    REQUIRE_MESSAGE(b.ok(), url << ": " << b.status().message());
    CHECK(b->bucket == "media");
    CHECK(b->prefix.empty());
    CHECK(b->Key("t/.state.json") == "t/.state.json");
    CHECK(b->ToString() == "s3://media");
  }
  auto t = ParseS3Url("s3://my.bucket-1/a/b/");
  REQUIRE(t.ok());
  CHECK(t->prefix == "a/b");
  auto odd = ParseS3Url("s3://bkt/with space/ünï+&=?#");
  REQUIRE_MESSAGE(odd.ok(), odd.status().message());
  CHECK(odd->prefix == "with space/ünï+&=?#");
}

TEST_CASE("s3:// URLs: hostile ones") {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "not an s3:// URL"},
      {"/srv/hls", "not an s3:// URL"},
      {"http://bucket/x", "not an s3:// URL"},
      {"s3:/bucket/x", "not an s3:// URL"},
      {"s3://", "no bucket"},
      {"s3:///prefix", "no bucket"},
      {"s3://ab/x", "3 to 63"},
      {"s3://" + std::string(64, 'a'), "3 to 63"},
      {"s3://Media/x", "lower-case"},
      {"s3://my_bucket/x", "lower-case"},
      {"s3://-bucket/x", "start and end"},
      {"s3://bucket-/x", "start and end"},
      {"s3://b..c/x", "'..'"},
      {"s3://b.-c/x", "'..'"},
      {"s3://192.168.1.10/x", "IP address"},
      {"s3://xn--bucket/x", "reserved"},
      {"s3://bucket/../etc/passwd", "'.' or '..'"},
      {"s3://bucket/a/../../b", "'.' or '..'"},
      {"s3://bucket/a/./b", "'.' or '..'"},
      {"s3://bucket/..", "'.' or '..'"},
      {"s3://bucket//a", "empty path segment"},
      {"s3://bucket/a//b", "empty path segment"},
      {"s3://bucket/a\nb", "control characters"},
      {"s3://bucket/a\x7f", "control characters"},
      {std::string("s3://bucket/a\0b", 15), "control characters"},
      {"s3://bucket/\xff\xfe", "UTF-8"},
      {"s3://bucket/" + std::string(1025, 'k'), "1024"},
  };
  for (const auto& [url, why] : bad) {
    auto r = ParseS3Url(url);
    INFO("url: ", url);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidArgument);
    CHECK_MESSAGE(r.status().message().find(why) != std::string::npos, r.status().message());
  }
  // Messages show hostile bytes escaped, never raw.
  CHECK(ParseS3Url("s3://bucket/a\nb\xff").status().message() ==
        "'s3://bucket/a\\x0ab\\xff': prefix: invalid S3 key 'a\\x0ab\\xff': not valid UTF-8");
}

TEST_CASE("keys: validation and percent-encoding") {
  CHECK(ValidateKey("t/v1/video-720p/seg-000001.ts").ok());
  CHECK(ValidateKey("my.title_v2-final/.state.json").ok());
  CHECK(ValidateKey("a/...").ok());  // only exactly "." and ".." are path navigation
  CHECK(ValidateKey("x").ok());
  CHECK_FALSE(ValidateKey("").ok());
  CHECK_FALSE(ValidateKey("a/").ok());
  CHECK_FALSE(ValidateKey("/a").ok());
  CHECK_FALSE(ValidateKey("a/./b").ok());
  CHECK_FALSE(ValidateKey("a\tb").ok());

  CHECK(UriEncode("AZaz09-._~", false) == "AZaz09-._~");
  CHECK(UriEncode("a b/c+d%e", true) == "a%20b/c%2Bd%25e");
  CHECK(UriEncode("a b/c+d%e", false) == "a%20b%2Fc%2Bd%25e");
  CHECK(UriEncode("é=&?#*", false) == "%C3%A9%3D%26%3F%23%2A");
}

TEST_CASE("configuration: environment and checks") {
  const char* vars[] = {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                        "AWS_REGION",          "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"};
  std::map<std::string, std::optional<std::string>> saved;
  for (const char* v : vars) {
    const char* cur = std::getenv(v);
    saved[v] = cur ? std::optional<std::string>(cur) : std::nullopt;
    ::unsetenv(v);
  }

  auto none = S3Config::FromEnvironment();
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().code() == ErrorCode::kInvalidArgument);
  CHECK(none.status().message().find("AWS_ACCESS_KEY_ID") != std::string::npos);

  ::setenv("AWS_ACCESS_KEY_ID", "id", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);
  ::setenv("AWS_DEFAULT_REGION", "eu-west-3", 1);
  auto aws = S3Config::FromEnvironment();
  REQUIRE(aws.ok());
  CHECK(aws->endpoint == "https://s3.eu-west-3.amazonaws.com");
  CHECK(aws->region == "eu-west-3");

  ::setenv("AWS_REGION", "us-east-1", 1);
  ::setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/", 1);
  ::setenv("AWS_SESSION_TOKEN", "tok", 1);
  auto local = S3Config::FromEnvironment();
  REQUIRE(local.ok());
  CHECK(local->region == "us-east-1");
  CHECK(local->session_token == "tok");
  auto client = S3Client::Create(*local);
  REQUIRE_MESSAGE(client.ok(), client.status().message());
  CHECK(client->config().endpoint == "http://127.0.0.1:9");  // normalized
  ::setenv("AWS_ENDPOINT_URL_S3", "http://localhost:9000", 1);
  CHECK(S3Config::FromEnvironment()->endpoint == "http://localhost:9000");

  for (const auto& [v, value] : saved) {
    if (value) ::setenv(v.c_str(), value->c_str(), 1);
    else ::unsetenv(v.c_str());
  }

  S3Config base;
  base.endpoint = "http://127.0.0.1:9300";
  base.access_key_id = "id";
  base.secret_access_key = "secret";
  const std::vector<std::pair<std::function<void(S3Config&)>, std::string>> bad = {
      {[](S3Config& c) { c.endpoint = "ftp://host"; }, "http or https"},
      {[](S3Config& c) { c.endpoint = "http://host/some/path"; }, "scheme://host[:port] only"},
      {[](S3Config& c) { c.endpoint = "http://host?x=1"; }, "scheme://host[:port] only"},
      {[](S3Config& c) { c.endpoint = "http://user:pw@host"; }, "scheme://host[:port] only"},
      {[](S3Config& c) { c.endpoint = ""; }, "not a URL"},
      {[](S3Config& c) { c.region = "US_EAST"; }, "region"},
      {[](S3Config& c) { c.secret_access_key.clear(); }, "required"},
      {[](S3Config& c) { c.session_token = "a\r\nx-evil: 1"; }, "control characters"},
      {[](S3Config& c) { c.max_attempts = 0; }, "max_attempts"},
  };
  for (const auto& [mutate, why] : bad) {
    S3Config c = base;
    mutate(c);
    auto r = S3Client::Create(c);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidArgument);
    CHECK_MESSAGE(r.status().message().find(why) != std::string::npos, r.status().message());
  }
}

// --- against S3Proxy -------------------------------------------------------------------

TEST_CASE("S3Proxy: put, get and head keep the bytes, Content-Type and Cache-Control") {
  S3Client c = Client();
  const std::string prefix = RunPrefix() + "roundtrip/";
  Cleanup cleanup{c, prefix};
  CHECK(c.CreateBucketIfMissing(kBucket).ok());  // idempotent

  struct File {
    std::string key, data, type, cache;
  };
  const std::vector<File> files = {
      {prefix + "my.title_v2-final/master.m3u8", "#EXTM3U\n#EXT-X-VERSION:7\n", "application/vnd.apple.mpegurl",
       "max-age=2, no-transform"},
      {prefix + "my.title_v2-final/v1/video-720p/seg-000001.ts", RandomBytes(188 * 300, 1), "video/mp2t",
       "public, max-age=31536000, immutable"},
      {prefix + "my.title_v2-final/.state.json", R"({"segments": 1})", "application/json", ""},
      {prefix + "empty", "", "application/octet-stream", ""},
  };
  for (const auto& f : files) {
    INFO("key: ", f.key);
    auto put = c.Put(kBucket, f.key, f.data, Opts(f.type, f.cache));
    REQUIRE_MESSAGE(put.ok(), put.status().message());
    CHECK(put->etag.size() == 32);  // S3Proxy: the hex MD5, quotes stripped
    CHECK(put->etag.find('"') == std::string::npos);

    auto got = c.Get(kBucket, f.key);
    REQUIRE_MESSAGE(got.ok(), got.status().message());
    REQUIRE(got->has_value());
    const Object& o = **got;
    CHECK(o.data == f.data);
    CHECK(o.offset == 0);
    CHECK(o.info.size == f.data.size());
    CHECK(o.info.content_type == f.type);
    CHECK(o.info.cache_control == f.cache);
    CHECK(o.info.etag == put->etag);

    auto head = c.Head(kBucket, f.key);
    REQUIRE_MESSAGE(head.ok(), head.status().message());
    REQUIRE(head->has_value());
    CHECK((*head)->size == f.data.size());
    CHECK((*head)->content_type == f.type);
    CHECK((*head)->cache_control == f.cache);
    CHECK((*head)->etag == put->etag);
    CHECK_FALSE((*head)->last_modified.empty());
  }

  // Replacing an object replaces its bytes and its headers.
  const std::string& key = files[0].key;
  REQUIRE_OK(c.Put(kBucket, key, "#EXTM3U\n", Opts("application/vnd.apple.mpegurl")));
  auto again = c.Get(kBucket, key);
  REQUIRE(again.ok());
  REQUIRE(again->has_value());
  CHECK((*again)->data == "#EXTM3U\n");
  CHECK((*again)->info.cache_control.empty());

  // The client from the environment talks to the same server.
  for (const auto& [k, v] : Server().env()) ::setenv(k.c_str(), v.c_str(), 1);
  auto from_env = S3Client::FromEnvironment();
  REQUIRE_MESSAGE(from_env.ok(), from_env.status().message());
  auto h = from_env->Head(kBucket, key);
  REQUIRE_MESSAGE(h.ok(), h.status().message());
  CHECK(h->has_value());
}

TEST_CASE("S3Proxy: a 20 MB object, whole and in byte ranges") {
  S3Client c = Client();
  const std::string prefix = RunPrefix() + "large/";
  Cleanup cleanup{c, prefix};
  const std::string data = RandomBytes(20 * 1024 * 1024, 20);
  const std::string key = prefix + "title/v1/video-1080p/seg-000000.ts";

  const auto t0 = std::chrono::steady_clock::now();
  auto put = c.Put(kBucket, key, data, Opts("video/mp2t"));
  REQUIRE_MESSAGE(put.ok(), put.status().message());
  auto got = c.Get(kBucket, key);
  REQUIRE_MESSAGE(got.ok(), got.status().message());
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  MESSAGE("20 MB put + get: ", ms.count(), " ms");
  REQUIRE(got->has_value());
  CHECK((*got)->data.size() == data.size());
  CHECK((*got)->data == data);
  auto head = c.Head(kBucket, key);
  REQUIRE(head.ok());
  REQUIRE(head->has_value());
  CHECK((*head)->size == data.size());

  struct Case {
    ByteRange range;
    uint64_t want_offset, want_size;
  };
  const uint64_t n = data.size();
  const std::vector<Case> cases = {
      {{0, 1}, 0, 1},
      {{188, 188 * 7}, 188, 188 * 7},
      {{n - 10, std::nullopt}, n - 10, 10},   // to the end
      {{n - 5, 100}, n - 5, 5},               // cut at the end, as HTTP does
      {{12345678, 1024 * 1024}, 12345678, 1024 * 1024},
  };
  for (const auto& tc : cases) {
    INFO("range offset ", tc.range.offset, " length ", tc.range.length.value_or(0));
    auto r = c.Get(kBucket, key, tc.range);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    REQUIRE(r->has_value());
    CHECK((*r)->offset == tc.want_offset);
    CHECK((*r)->info.size == n);  // the whole object's size
    CHECK((*r)->data == data.substr(tc.want_offset, tc.want_size));
  }

  auto past = c.Get(kBucket, key, ByteRange{n, 1});
  REQUIRE_FALSE(past.ok());
  CHECK(past.status().code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(past.status().message().find("HTTP 416 InvalidRange") != std::string::npos, past.status().message());
  auto zero = c.Get(kBucket, key, ByteRange{0, 0});
  REQUIRE_FALSE(zero.ok());
  CHECK(zero.status().code() == ErrorCode::kInvalidArgument);

  // A bound on what Get holds in memory.
  S3Config small = Server().Config();
  small.max_object_bytes = 1024 * 1024;
  S3Client bounded = Client(small);
  auto big = bounded.Get(kBucket, key);
  REQUIRE_FALSE(big.ok());
  CHECK(big.status().code() == ErrorCode::kResourceLimit);
  auto part = bounded.Get(kBucket, key, ByteRange{0, 1024});
  REQUIRE_MESSAGE(part.ok(), part.status().message());
  CHECK((*part)->data == data.substr(0, 1024));
}

TEST_CASE("S3Proxy: list follows pages to the end, in key order, under the prefix only") {
  S3Client c = Client();
  const std::string prefix = RunPrefix() + "list/";
  Cleanup cleanup{c, prefix};
  std::vector<std::string> keys;
  for (int i = 0; i < 23; ++i) keys.push_back(fmt::format("{}t/v1/seg-{:06}.ts", prefix, i));
  keys.push_back(prefix + "t/.state.json");
  keys.push_back(prefix + "t/master.m3u8");
  for (const auto& k : keys) REQUIRE_OK(c.Put(kBucket, k, k, Opts("video/mp2t")));
  REQUIRE_OK(c.Put(kBucket, RunPrefix() + "list2/t/outside", "x"));  // shares "list" but not "list/"
  Cleanup cleanup2{c, RunPrefix() + "list2/"};
  std::sort(keys.begin(), keys.end());

  for (int page : {1, 7, 1000}) {
    INFO("page size ", page);
    auto all = c.List(kBucket, prefix, {.page_size = page});
    REQUIRE_MESSAGE(all.ok(), all.status().message());
    std::vector<std::string> got;
    for (const auto& e : *all) {
      got.push_back(e.key);
      CHECK(e.size == e.key.size());
      CHECK(e.etag.size() == 32);
    }
    CHECK(got == keys);
  }
  auto sub = c.List(kBucket, prefix + "t/v1/seg-00001", {.page_size = 4});
  REQUIRE(sub.ok());
  CHECK(sub->size() == 10);  // seg-000010 .. seg-000019

  // ListEach stops at the callback's error and returns it.
  int seen = 0;
  Status s = c.ListEach(
      kBucket, prefix,
      [&](const ListEntry&) {
        return ++seen == 9 ? Error(ErrorCode::kCancelled, "enough") : Status::Ok();
      },
      {.page_size = 4});
  CHECK(s.code() == ErrorCode::kCancelled);
  CHECK(seen == 9);

  auto nothing = c.List(kBucket, prefix + "no-such-prefix/");
  REQUIRE(nothing.ok());
  CHECK(nothing->empty());
  CHECK(c.List(kBucket, prefix, {.page_size = 0}).status().code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("S3Proxy: delete, and a missing key is not found (not an error)") {
  S3Client c = Client();
  const std::string prefix = RunPrefix() + "delete/";
  Cleanup cleanup{c, prefix};
  const std::string key = prefix + "t/v1/seg-000000.ts";
  REQUIRE_OK(c.Put(kBucket, key, "bytes"));
  REQUIRE(c.Delete(kBucket, key).ok());

  auto head = c.Head(kBucket, key);
  REQUIRE_MESSAGE(head.ok(), head.status().message());
  CHECK_FALSE(head->has_value());
  auto get = c.Get(kBucket, key);
  REQUIRE_MESSAGE(get.ok(), get.status().message());
  CHECK_FALSE(get->has_value());
  auto range = c.Get(kBucket, key, ByteRange{10, 10});
  REQUIRE(range.ok());
  CHECK_FALSE(range->has_value());
  CHECK(c.Delete(kBucket, key).ok());  // deleting again succeeds
  auto listed = c.List(kBucket, prefix);
  REQUIRE(listed.ok());
  CHECK(listed->empty());

  // A missing bucket is an error, not a missing key.
  auto no_bucket = c.Get("khls-no-such-bucket", "x");
  REQUIRE_FALSE(no_bucket.ok());
  CHECK(no_bucket.status().code() == ErrorCode::kIo);
  CHECK_MESSAGE(no_bucket.status().message().find("HTTP 404 NoSuchBucket") != std::string::npos,
                no_bucket.status().message());
  auto no_bucket_list = c.List("khls-no-such-bucket", "");
  REQUIRE_FALSE(no_bucket_list.ok());
  CHECK(no_bucket_list.status().message().find("NoSuchBucket") != std::string::npos);

  // Hostile keys never reach the server.
  for (const char* bad : {"../etc/passwd", "a/../../b", "", "a//b"}) {
    CHECK(c.Put(kBucket, bad, "x").status().code() == ErrorCode::kInvalidArgument);
    CHECK(c.Get(kBucket, bad).status().code() == ErrorCode::kInvalidArgument);
    CHECK(c.Delete(kBucket, bad).code() == ErrorCode::kInvalidArgument);
  }
  CHECK(c.Put("Bad_Bucket", "k", "x").status().code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("S3Proxy: wrong credentials fail clearly, naming the status and the S3 code") {
  Client();  // the bucket exists
  S3Config wrong_secret = Server().Config();
  wrong_secret.secret_access_key = "not-the-secret";
  auto c = S3Client::Create(wrong_secret);
  REQUIRE(c.ok());
  auto put = c->Put(kBucket, RunPrefix() + "denied", "x");
  REQUIRE_FALSE(put.ok());
  CHECK(put.status().code() == ErrorCode::kIo);
  const std::string m = put.status().message();
  CHECK_MESSAGE(m.find("s3 PUT khls-s3-test/" + RunPrefix() + "denied: HTTP 403 SignatureDoesNotMatch") !=
                    std::string::npos,
                m);
  CHECK_MESSAGE(m.find("attempts") == std::string::npos, m);  // 4xx is not retried
  auto get = c->Get(kBucket, "x");
  REQUIRE_FALSE(get.ok());
  CHECK(get.status().message().find("HTTP 403 SignatureDoesNotMatch") != std::string::npos);

  S3Config wrong_id = Server().Config();
  wrong_id.access_key_id = "nobody";
  auto c2 = S3Client::Create(wrong_id);
  REQUIRE(c2.ok());
  auto list = c2->List(kBucket, "");
  REQUIRE_FALSE(list.ok());
  CHECK_MESSAGE(list.status().message().find("HTTP 403 InvalidAccessKeyId") != std::string::npos,
                list.status().message());
  auto head = c2->Head(kBucket, "x");  // HEAD has no body: the status names it
  REQUIRE_FALSE(head.ok());
  CHECK_MESSAGE(head.status().message().find("HTTP 403 Forbidden") != std::string::npos, head.status().message());

  // Nothing was written.
  S3Client good = Client();
  auto h = good.Head(kBucket, RunPrefix() + "denied");
  REQUIRE(h.ok());
  CHECK_FALSE(h->has_value());
}

TEST_CASE("S3Proxy: keys with characters that need encoding") {
  S3Client c = Client();
  const std::string prefix = RunPrefix() + "enc/";
  Cleanup cleanup{c, prefix};
  const std::vector<std::string> keys = {
      prefix + "a b+c%d&e=f?g#h",
      prefix + "semi;colon,comma@at!(paren)*'quote'$dollar",
      prefix + "ünïcødé/片段-000001.ts",
      prefix + "tilde~and...dots/x_y-z.m3u8",
      prefix + "brackets[1]{2}<3>\"q\"|pipe^caret`tick\\back",
  };
  for (const auto& k : keys) {
    INFO("key: ", k);
    auto put = c.Put(kBucket, k, "data:" + k, Opts("text/plain"));
    REQUIRE_MESSAGE(put.ok(), put.status().message());
    auto got = c.Get(kBucket, k);
    REQUIRE_MESSAGE(got.ok(), got.status().message());
    REQUIRE(got->has_value());
    CHECK((*got)->data == "data:" + k);
    auto head = c.Head(kBucket, k);
    REQUIRE(head.ok());
    CHECK(head->has_value());
  }
  auto listed = c.List(kBucket, prefix, {.page_size = 2});
  REQUIRE_MESSAGE(listed.ok(), listed.status().message());
  std::vector<std::string> got, want = keys;
  for (const auto& e : *listed) got.push_back(e.key);
  std::sort(want.begin(), want.end());
  CHECK(got == want);
  auto one = c.List(kBucket, prefix + "a b+c%d&");  // a prefix that needs encoding too
  REQUIRE_MESSAGE(one.ok(), one.status().message());
  REQUIRE(one->size() == 1);
  CHECK(one->front().key == keys[0]);
  for (const auto& k : keys) CHECK(c.Delete(kBucket, k).ok());
  auto after = c.List(kBucket, prefix);
  REQUIRE(after.ok());
  CHECK(after->empty());
}

// --- retries, against a fake server ----------------------------------------------------

namespace {

/// A local HTTP server answering every request with `respond(n)` (n = 1, 2, ...).
class FakeS3 {
 public:
  using Responder = std::function<void(int n, httplib::Response&)>;
  explicit FakeS3(Responder respond) : respond_(std::move(respond)) {
    auto handler = [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_ = req;
      }
      respond_(++hits_, res);
    };
    server_.Get(".*", handler);
    server_.Put(".*", handler);
    server_.Delete(".*", handler);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeS3() {
    server_.stop();
    thread_.join();
  }
  int hits() const { return hits_; }
  httplib::Request Last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }
  S3Config Config() const {
    S3Config c;
    c.endpoint = fmt::format("http://127.0.0.1:{}", port_);
    c.access_key_id = "id";
    c.secret_access_key = "secret";
    c.max_attempts = 3;
    c.initial_backoff = std::chrono::milliseconds(5);
    c.max_backoff = std::chrono::milliseconds(20);
    return c;
  }

 private:
  Responder respond_;
  httplib::Server server_;
  std::thread thread_;
  std::atomic<int> hits_{0};
  int port_ = 0;
  std::mutex mu_;
  httplib::Request last_;
};

void S3ErrorBody(httplib::Response& res, int status, const char* code, const char* message) {
  res.status = status;
  res.set_content(fmt::format("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code>"
                              "<Message>{}</Message><RequestId>REQ{}</RequestId></Error>",
                              code, message, status),
                  "application/xml");
}

}  // namespace

TEST_CASE("retries: 5xx, 429 and SlowDown are retried with backoff, then succeed") {
  FakeS3 fake([](int n, httplib::Response& res) {
    if (n == 1) return S3ErrorBody(res, 503, "SlowDown", "Please reduce your request rate.");
    if (n == 2) return S3ErrorBody(res, 429, "TooManyRequests", "Slow down");
    res.status = 200;
    res.set_header("ETag", "\"abc\"");
    res.set_content("payload", "video/mp2t");
  });
  auto c = S3Client::Create(fake.Config());
  REQUIRE(c.ok());
  auto got = c->Get("bucket", "k");
  REQUIRE_MESSAGE(got.ok(), got.status().message());
  REQUIRE(got->has_value());
  CHECK((*got)->data == "payload");
  CHECK((*got)->info.etag == "abc");
  CHECK(fake.hits() == 3);
}

TEST_CASE("retries: bounded, and the error tells how many attempts were made") {
  FakeS3 fake([](int, httplib::Response& res) {
    S3ErrorBody(res, 500, "InternalError", "We encountered an internal error &amp; gave up.");
  });
  auto c = S3Client::Create(fake.Config());
  REQUIRE(c.ok());
  auto put = c->Put("bucket", "t/seg.ts", "xyz");
  REQUIRE_FALSE(put.ok());
  CHECK(fake.hits() == 3);
  CHECK(put.status().code() == ErrorCode::kIo);
  CHECK(put.status().message() ==
        "s3 PUT bucket/t/seg.ts: HTTP 500 InternalError: We encountered an internal error & gave up. "
        "(request id REQ500; 3 attempts)");
}

TEST_CASE("retries: other 4xx are not retried") {
  FakeS3 fake([](int, httplib::Response& res) { S3ErrorBody(res, 403, "AccessDenied", "Access Denied"); });
  auto c = S3Client::Create(fake.Config());
  REQUIRE(c.ok());
  auto del = c->Delete("bucket", "k");
  CHECK(fake.hits() == 1);
  CHECK(del.message() == "s3 DELETE bucket/k: HTTP 403 AccessDenied: Access Denied (request id REQ403)");
}

TEST_CASE("retries: transport errors are retried, then reported with the endpoint") {
  // A port nobody listens on: bind one (no listen), read its number, close it.
  int port = 0;
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
    ::close(fd);
  }
  S3Config c = FakeS3([](int, httplib::Response&) {}).Config();
  c.endpoint = fmt::format("http://127.0.0.1:{}", port);
  auto client = S3Client::Create(c);
  REQUIRE(client.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto head = client->Head("bucket", "k");
  REQUIRE_FALSE(head.ok());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(head.status().code() == ErrorCode::kIo);
  const std::string m = head.status().message();
  CHECK_MESSAGE(m.find("s3 HEAD bucket/k: Couldn't connect to server: Failed to connect to 127.0.0.1 port") == 0, m);
  CHECK_MESSAGE(m.find(c.endpoint + ") after 3 attempts") != std::string::npos, m);
}

TEST_CASE("requests: path-style, encoded, signed, with the payload's digests") {
  FakeS3 fake([](int, httplib::Response& res) {
    res.status = 200;
    res.set_header("ETag", "\"d16fb36f0911f878998c136191af705e\"");
  });
  S3Config config = fake.Config();
  config.session_token = "session-token";
  auto c = S3Client::Create(config);
  REQUIRE(c.ok());
  auto put = c->Put("bucket", "ti.tle_1-x/a b+c/.state.json", "xyz",
                    Opts("application/vnd.apple.mpegurl", "max-age=1"));
  REQUIRE_MESSAGE(put.ok(), put.status().message());
  CHECK(put->etag == "d16fb36f0911f878998c136191af705e");
  const httplib::Request req = fake.Last();
  CHECK(req.method == "PUT");
  CHECK(req.target == "/bucket/ti.tle_1-x/a%20b%2Bc/.state.json");
  CHECK(req.body == "xyz");
  CHECK(req.get_header_value("x-amz-content-sha256") ==
        "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282");
  CHECK(req.get_header_value("Content-MD5") == "0W+zbwkR+HiZjBNhka9wXg==");
  CHECK(req.get_header_value("Content-Type") == "application/vnd.apple.mpegurl");
  CHECK(req.get_header_value("Cache-Control") == "max-age=1");
  CHECK(req.get_header_value("x-amz-security-token") == "session-token");
  CHECK(req.get_header_value("x-amz-date").size() == 16);  // 20260101T000000Z
  const std::string auth = req.get_header_value("Authorization");
  CHECK_MESSAGE(auth.find("AWS4-HMAC-SHA256 Credential=id/") == 0, auth);
  CHECK_MESSAGE(auth.find("/us-east-1/s3/aws4_request") != std::string::npos, auth);
  CHECK_MESSAGE(auth.find("x-amz-content-sha256") != std::string::npos, auth);  // signed
  CHECK_MESSAGE(auth.find("content-md5") != std::string::npos, auth);

  // A list's query is canonical (sorted, strictly encoded): older libcurl signs it as given.
  (void)c->List("bucket", "a b/c=d");
  CHECK(fake.Last().target == "/bucket?list-type=2&max-keys=1000&prefix=a%20b%2Fc%3Dd");
}

TEST_CASE("list: a truncated page without a new continuation token is an error, not a loop") {
  FakeS3 fake([](int, httplib::Response& res) {
    res.status = 200;
    res.set_content(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/"
        "2006-03-01/\"><Name>bucket</Name><IsTruncated>true</IsTruncated>"
        "<NextContinuationToken>same/token+=</NextContinuationToken>"
        "<Contents><Key>a&amp;b&lt;&#233;&#x7247;</Key><Size>3</Size><ETag>&quot;e&quot;</ETag></Contents>"
        "</ListBucketResult>",
        "application/xml");
  });
  auto c = S3Client::Create(fake.Config());
  REQUIRE(c.ok());
  std::vector<std::string> keys;
  Status s = c->ListEach("bucket", "", [&](const ListEntry& e) {
    keys.push_back(e.key);
    CHECK(e.size == 3);
    CHECK(e.etag == "e");
    return Status::Ok();
  });
  CHECK(s.code() == ErrorCode::kIo);
  CHECK_MESSAGE(s.message().find("page 2 is truncated but has no new continuation token") != std::string::npos,
                s.message());
  CHECK(fake.hits() == 2);
  CHECK(fake.Last().target == "/bucket?continuation-token=same%2Ftoken%2B%3D&list-type=2&max-keys=1000");
  CHECK(keys == std::vector<std::string>{"a&b<\u00e9\u7247", "a&b<\u00e9\u7247"});
}
