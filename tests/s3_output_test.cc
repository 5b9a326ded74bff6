// The packager writing to object storage (`--out s3://BUCKET/PREFIX`) through
// the real broker and a real S3 server (S3Proxy, tests/s3proxy_util.h): the
// bucket ends up holding exactly the bytes a packager writes to a directory,
// also when the packager is killed mid-title and restarted (its state is in
// the bucket), every object with the Content-Type and Cache-Control a CDN
// should pass on, and no temporary object ever.
#include <doctest/doctest.h>

#include <map>

#include "khls/s3.h"
#include "pipeline_util.h"
#include "s3proxy_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

constexpr char kBucket[] = "khls-output-test";

S3ProxyServer& Server() {
  static S3ProxyServer server;
  REQUIRE_MESSAGE(server.error().empty(), server.error());
  return server;
}

khls::s3::S3Client Client() {
  auto c = khls::s3::S3Client::Create(Server().Config());
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  auto made = c->CreateBucketIfMissing(kBucket);
  REQUIRE_MESSAGE(made.ok(), made.message());
  return std::move(c).value();
}

// Every regular file under `root`, by its path relative to it ("m/v1/video-240p/seg-000000.ts").
std::map<std::string, std::string> Files(const fs::path& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) out[fs::relative(e.path(), root).generic_string()] = ReadFile(e.path());
  return out;
}

}  // namespace

TEST_CASE("package --out s3://: the bucket holds the directory tree's bytes, after a SIGKILL and a restart too") {
  RequireBroker();
  Server().Export();
  khls::s3::S3Client s3 = Client();
  TempDir work;
  const std::string topic = Unique("s3out"), prefix = Unique("run");
  const std::string url = fmt::format("s3://{}/{}", kBucket, prefix);

  // A title published at media speed; the packager writes to the bucket while it grows.
  Child ingest(IngestArgs(kMedia / "h264_aac.mp4", "movie", topic, {"--realtime"}), work.path() / "ingest.log");
  const std::string group = Unique("g");
  const std::vector<std::string> args = {kBin, "package", "--out", url, "--brokers", Brokers(), "--topic", topic,
                                         "--group", group, "--until-complete", "movie"};
  {
    Child first(args, work.path() / "package1.log");
    // Killed once its first segment group is listed.
    bool listed = false;
    for (int i = 0; i < 300 && !listed; ++i) {
      auto head = s3.Head(kBucket, prefix + "/movie/master.m3u8");
      listed = head.ok() && head->has_value();
      if (!listed) std::this_thread::sleep_for(100ms);
    }
    REQUIRE_MESSAGE(listed, ReadFile(work.path() / "package1.log"));
    first.Kill(SIGKILL);
    CHECK(first.Wait() == 128 + SIGKILL);
  }
  // The restarted packager continues from the state in the bucket.
  CHECK_MESSAGE(RunToEnd(args, work.path() / "package2.log", 120s) == 0, ReadFile(work.path() / "package2.log"));
  CHECK(ingest.Wait() == 0);

  // The same records packaged into a directory, undisturbed.
  const fs::path local = work.path() / "local";
  REQUIRE(RunToEnd(PackageArgs(local, topic, Unique("g"), {"movie"}), work.path() / "local.log") == 0);
  const std::map<std::string, std::string> want = Files(local);
  REQUIRE(want.count("movie/master.m3u8"));

  auto listed = s3.List(kBucket, prefix + "/");
  REQUIRE_MESSAGE(listed.ok(), listed.status().message());
  std::map<std::string, uint64_t> have;
  for (const auto& e : *listed) have[e.key.substr(prefix.size() + 1)] = e.size;
  std::vector<std::string> want_keys, have_keys;
  for (const auto& [k, v] : want) want_keys.push_back(k);
  for (const auto& [k, v] : have) have_keys.push_back(k);
  CHECK(have_keys == want_keys);  // nothing missing, nothing extra (no temp objects)
  for (const auto& [key, bytes] : want) {
    CAPTURE(key);
    auto object = s3.Get(kBucket, prefix + "/" + key);
    REQUIRE(object.ok());
    REQUIRE(object->has_value());
    CHECK((*object)->data == bytes);
    const std::string ext = fs::path(key).extension().string();
    const std::string type = (*object)->info.content_type, cache = (*object)->info.cache_control;
    if (ext == ".m3u8") {
      CHECK(type == "application/vnd.apple.mpegurl");
      const bool ended = bytes.find("#EXT-X-ENDLIST") != std::string::npos;
      CHECK(cache == (ended ? "public, max-age=3600" : "no-cache"));
    } else if (ext == ".ts") {
      CHECK(type == "video/mp2t");
      CHECK(cache == "public, max-age=31536000, immutable");
    } else if (fs::path(key).filename() == ".state.json") {
      CHECK(type == "application/json");
      CHECK(cache == "no-store");
    }
  }
  // The run's objects are removed; the bucket stays for the next run.
  for (const auto& e : *listed) CHECK(s3.Delete(kBucket, e.key).ok());
}

TEST_CASE("package --out s3:// to a bucket that does not exist fails at once, naming it") {
  Server().Export();
  auto r = Run(fmt::format("timeout 60 {} package --out s3://khls-no-such-bucket/x --brokers {} --topic {} --group {}",
                           kBin, Brokers(), Unique("t"), Unique("g")));
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("khls-no-such-bucket") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("NoSuchBucket") != std::string::npos, r.output);
}
