// A live channel through Kafka, watched as it happens: a UDP feed from ffmpeg
// (-re, testsrc2 + sine, 1 s GOP) into `kafka-hls run udp://... --serve`,
// packaged as a sliding window. hls.js plays at the live edge with zero errors,
// the playlist slides (media sequence advances, a bounded list, old files
// removed), and the title ends with #EXT-X-ENDLIST when the feed ends. A channel
// whose ingest is killed and started again mid-feed goes on after an
// EXT-X-DISCONTINUITY: hls.js watching it live plays through, Shaka plays it
// through from the start once it has ended.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <regex>
#include <set>
#include <sstream>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> Listed(const std::string& playlist) { return khls::test::PlaylistUris(playlist); }

long MediaSequence(const std::string& playlist) {
  std::smatch m;
  return std::regex_search(playlist, m, std::regex(R"(#EXT-X-MEDIA-SEQUENCE:(\d+))")) ? std::stol(m[1]) : -1;
}

double JsonNumber(const std::string& json, const std::string& path_regex) {
  std::smatch m;
  return std::regex_search(json, m, std::regex(path_regex)) ? std::stod(m[1]) : -1;
}

}  // namespace

TEST_CASE("a live UDP channel: a sliding window hls.js plays at the live edge; the title ends with the feed") {
  RequireBroker();
  REQUIRE_MESSAGE(fs::exists(NodeModules() + "/playwright-core"), "playwright-core missing in " << NodeModules());
  TempDir work;
  const fs::path out = work.path() / "out", log = work.path() / "run.log";
  const int port = FreeUdpPort();
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  // 1 s segments, a 4 s window: over a 45 s feed the window slides ~40 times.
  Child run({kBin, "run", input, "--title", "channel", "--out", out.string(), "--brokers", Brokers(), "--topic",
             Unique("live"), "--segment-duration", "1", "--window", "4", "--stall-timeout", "3", "--serve", "0",
             "--exit-when-done"},
            log);
  const std::string base = WaitForUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  const auto feed_start = std::chrono::steady_clock::now();
  Child feed({"/usr/bin/ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i",
              "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "45",
              "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-f", "mpegts",
              input + "?pkt_size=1316"},
            work.path() / "ffmpeg.log");

  const fs::path video = out / "channel/v1/video-240p";
  for (int i = 0; i < 400 && !fs::exists(out / "channel/master.m3u8"); ++i) std::this_thread::sleep_for(50ms);
  REQUIRE_MESSAGE(fs::exists(out / "channel/master.m3u8"), ReadFile(log));

  // A viewer while the channel runs: 15 s of playback at the live edge, no error.
  const std::string url = base + "channel/master.m3u8";
  auto play = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                        Quote((kSource / "tests/player/play.mjs").string()) + " --url " + Quote(url) +
                        " --play-for 15 --timeout 40");
  INFO("hls.js: " << play.output);
  CHECK(play.exit_code == 0);
  CHECK(play.output.find("\"errors\":[]") != std::string::npos);
  CHECK(play.output.find("\"live\":true") != std::string::npos);
  const double latency = JsonNumber(play.output, R"("latency_s":\{"median":([0-9.]+))");
  const double pdt_latency = JsonNumber(play.output, R"("pdt_latency_s":\{"median":([0-9.]+))");
  CHECK(latency > 0);
  CHECK(latency < 8);  // a 4 s window of 1 s segments: hls.js sits about 3 target durations back
  MESSAGE("hls.js live latency " << latency << " s (hls.latency), " << pdt_latency << " s behind the PDT wall clock");

  // Meanwhile the window slides: a bounded list whose media sequence advances, old files removed.
  std::set<long> sequences;
  size_t most_listed = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string pl = ReadFile(video / "index.m3u8");
    sequences.insert(MediaSequence(pl));
    most_listed = std::max(most_listed, Listed(pl).size());
    CHECK(pl.find("#EXT-X-PLAYLIST-TYPE") == std::string::npos);
    CHECK(pl.find("#EXT-X-PROGRAM-DATE-TIME:") != std::string::npos);
    for (const std::string& name : Listed(pl)) CHECK(fs::exists(video / name));
    std::this_thread::sleep_for(250ms);
  }
  CHECK(sequences.size() >= 3);
  CHECK(most_listed <= 6);
  CHECK_FALSE(fs::exists(video / "seg-000000.ts"));  // left the window long ago, its grace is over

  // The feed ends; after the stall timeout the title ends, and `run --exit-when-done` exits 0.
  CHECK(feed.Wait() == 0);
  int rc = -1;
  for (int i = 0; i < 600 && (rc = run.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  INFO(ReadFile(log).substr(0, 6000));
  CHECK(rc == 0);
  const std::string last = ReadFile(video / "index.m3u8");
  CHECK(last.find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(Listed(last).size() <= 6);
  CHECK(MediaSequence(last) >= 35);  // ~45 segments of 1 s, the last ~4 listed
  const auto took = std::chrono::steady_clock::now() - feed_start;
  CHECK(took < 90s);
  // The files on disk stay bounded too: the window plus those in their grace period.
  size_t files = 0;
  for (auto& f : fs::directory_iterator(video)) files += f.path().extension() == ".ts";
  CHECK(files <= 16);
}

namespace {

// The JSON summary a player harness printed last in its log.
std::string Summary(const fs::path& log) {
  std::istringstream in(ReadFile(log));
  std::string last;
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("{")) last = line;
  return last;
}

}  // namespace

TEST_CASE("a live channel whose ingest is killed and started again plays on after a discontinuity") {
  RequireBroker();
  REQUIRE_MESSAGE(fs::exists(NodeModules() + "/playwright-core"), "playwright-core missing in " << NodeModules());
  TempDir work;
  const fs::path out = work.path() / "out";
  const int port = FreeUdpPort();
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  const std::string topic = Unique("live-resume");
  std::vector<std::string> package = PackageArgs(out, topic, Unique("resume-origin"), {"channel"});
  package.insert(package.end(), {"--window", "60"});  // the whole channel stays listed
  Child packager(package, work.path() / "package.log");
  fs::create_directories(out);
  Child origin({kBin, "serve", out.string(), "--port", "0"}, work.path() / "serve.log");
  const std::string base = WaitForUrl(work.path() / "serve.log");
  REQUIRE_MESSAGE(!base.empty(), ReadFile(work.path() / "serve.log"));
  const std::vector<std::string> ingest = {kBin, "ingest", input, "--title", "channel", "--brokers", Brokers(),
                                           "--topic", topic, "--segment-duration", "2", "--stall-timeout", "3"};
  auto first = std::make_unique<Child>(ingest, work.path() / "ingest1.log");
  std::this_thread::sleep_for(1s);  // the ingest binds the UDP port
  Child feed({"/usr/bin/ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
              "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "45", "-c:v", "libx264", "-preset",
              "ultrafast", "-g", "25", "-c:a", "aac", "-f", "mpegts", input + "?pkt_size=1316"},
             work.path() / "ffmpeg.log");
  const fs::path video = out / "channel/v1/video-240p";
  for (int i = 0; i < 600 && (!fs::exists(video / "index.m3u8") || Listed(ReadFile(video / "index.m3u8")).size() < 3);
       ++i)
    std::this_thread::sleep_for(50ms);
  REQUIRE_MESSAGE(fs::exists(out / "channel/master.m3u8"), ReadFile(work.path() / "package.log"));

  // A viewer at the live edge; 6 s into its playback the ingest dies, and a second one resumes the channel.
  Child viewer({"/usr/bin/env", "KHLS_NODE_MODULES=" + NodeModules(), "node",
                (kSource / "tests/player/play.mjs").string(), "--url", base + "channel/master.m3u8", "--play-for",
                "26", "--timeout", "70"},
               work.path() / "hlsjs.log");
  for (int i = 0; i < 400 && ReadFile(work.path() / "hlsjs.log").find("playing") == std::string::npos; ++i)
    std::this_thread::sleep_for(50ms);
  std::this_thread::sleep_for(6s);
  first->Kill(SIGKILL);
  first->Wait();
  std::this_thread::sleep_for(1s);
  Child second(ingest, work.path() / "ingest2.log");
  // The playlist shows the discontinuity once the second run's first segment is listed.
  bool discontinuity = false;
  for (int i = 0; i < 300 && !discontinuity; ++i) {
    discontinuity = ReadFile(video / "index.m3u8").find("#EXT-X-DISCONTINUITY\n") != std::string::npos;
    std::this_thread::sleep_for(50ms);
  }
  CHECK_MESSAGE(discontinuity, ReadFile(work.path() / "ingest2.log"));
  int rc = -1;
  for (int i = 0; i < 1400 && (rc = viewer.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  const std::string played = Summary(work.path() / "hlsjs.log");
  INFO("hls.js: " << played);
  CHECK(rc == 0);
  CHECK(played.find("\"errors\":[]") != std::string::npos);
  CHECK(played.find("\"live\":true") != std::string::npos);

  // The feed ends, the second run ends the title; Shaka plays it from the start across the discontinuity.
  CHECK(feed.Wait() == 0);
  for (int i = 0; i < 1200 && (rc = second.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  CHECK_MESSAGE(rc == 0, ReadFile(work.path() / "ingest2.log"));
  for (int i = 0; i < 1200 && (rc = packager.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  CHECK(rc == 0);
  const std::string pl = ReadFile(video / "index.m3u8");
  INFO(pl);
  CHECK(pl.ends_with("#EXT-X-ENDLIST\n"));
  const size_t tag = pl.find("#EXT-X-DISCONTINUITY\n");
  REQUIRE(tag != std::string::npos);
  // Where the second run starts, in the title's time (the window still holds the first segments).
  const double at = PlaylistDuration(pl.substr(0, tag));
  CHECK(at > 4);
  auto shaka = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                         Quote((kSource / "tests/player/shaka.mjs").string()) + " --url " +
                         Quote(base + "channel/master.m3u8") + fmt::format(" --until-time {:.0f}", at + 6) +
                         " --timeout 60");
  INFO("shaka: " << shaka.output);
  CHECK(shaka.exit_code == 0);
  CHECK(shaka.output.find("\"errors\":[]") != std::string::npos);
}
