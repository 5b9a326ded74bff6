// LL-HLS through Kafka, watched as it happens: a UDP feed from ffmpeg (-re,
// testsrc2 + sine, 1 s GOP) into `kafka-hls ingest --part-duration 0.5`, a
// `package --low-latency` and a `serve` origin, each its own process.
// hls.js (lowLatencyMode) plays at the live edge at <= 3 s of latency with zero
// errors, loading parts and using blocking reloads; Shaka Player plays it too;
// the origin holds a blocking reload until the part exists and refuses one too
// far ahead; a packager killed mid-segment and restarted lists no part that is
// not complete and continues the window; the title ends with the feed.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <regex>
#include <set>
#include <sstream>

#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

double JsonNumber(const std::string& json, const std::string& path_regex) {
  std::smatch m;
  return std::regex_search(json, m, std::regex(path_regex)) ? std::stod(m[1]) : -1;
}

long Number(const std::string& text, const std::string& pattern) {
  std::smatch m;
  return std::regex_search(text, m, std::regex(pattern)) ? std::stol(m[1]) : -1;
}

// The URIs of EXT-X-PART lines and of segments, in order.
std::vector<std::string> PartUris(const std::string& playlist) {
  std::vector<std::string> out;
  const std::regex part(R"re(#EXT-X-PART:.*URI="([^"]+)")re");
  std::istringstream in(playlist);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, part)) out.push_back(m[1]);
  }
  return out;
}

// The MSN and part index of the last part listed ("in progress" parts after the last EXTINF).
std::pair<long, long> LastPart(const std::string& playlist) {
  const long msn0 = Number(playlist, R"(#EXT-X-MEDIA-SEQUENCE:(\d+))");
  long segments = 0, parts = 0;
  std::istringstream in(playlist);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("#EXTINF:")) {
      ++segments;
      parts = 0;
    } else if (line.starts_with("#EXT-X-PART:")) {
      ++parts;
    }
  }
  return {msn0 + segments, parts - 1};
}

// curl: status code, and seconds the answer took.
std::pair<std::string, double> Get(const std::string& url) {
  auto r = RunStdout("curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 20 " + Quote(url));
  std::istringstream in(r.output);
  std::string code;
  double t = -1;
  in >> code >> t;
  return {code, t};
}

}  // namespace

TEST_CASE("LL-HLS live channel: hls.js at <= 3 s latency, Shaka, blocking reloads, a packager restart") {
  RequireBroker();
  REQUIRE_MESSAGE(fs::exists(NodeModules() + "/playwright-core"), "playwright-core missing in " << NodeModules());
  TempDir work;
  const fs::path out = work.path() / "out";
  const int port = FreeUdpPort();
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  const std::string topic = Unique("ll"), group = Unique("ll-origin");
  auto package_args = [&] {
    return std::vector<std::string>{kBin,    "package", "--out",    out.string(), "--brokers",     Brokers(), "--topic",
                                    topic,   "--group", group,      "--container", "fmp4",        "--low-latency",
                                    "--window", "12",   "--until-complete", "channel"};
  };
  Child ingest({kBin, "ingest", input, "--title", "channel", "--brokers", Brokers(), "--topic", topic,
                "--segment-duration", "2", "--part-duration", "0.5", "--stall-timeout", "3"},
               work.path() / "ingest.log");
  auto packager = std::make_unique<Child>(package_args(), work.path() / "package.log");
  fs::create_directories(out);  // serve wants its root to exist; the packager may not have made it yet
  Child origin({kBin, "serve", out.string(), "--port", "0"}, work.path() / "serve.log");
  const std::string base = WaitForUrl(work.path() / "serve.log");
  REQUIRE_MESSAGE(!base.empty(), ReadFile(work.path() / "serve.log"));
  std::this_thread::sleep_for(1s);  // the ingest listens on the UDP port
  // 30 fps, a keyframe every second: 2 s segments of four 0.5 s parts.
  Child feed({"/usr/bin/ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
              "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "60", "-c:v", "libx264", "-preset",
              "ultrafast", "-tune", "zerolatency", "-g", "30", "-c:a", "aac", "-f", "mpegts", input + "?pkt_size=1316"},
             work.path() / "ffmpeg.log");
  const fs::path video = out / "channel/v1/video-240p";
  for (int i = 0; i < 400 && !fs::exists(video / "index.m3u8"); ++i) std::this_thread::sleep_for(50ms);
  REQUIRE_MESSAGE(fs::exists(video / "index.m3u8"), ReadFile(work.path() / "package.log"));

  // The playlist: LL-HLS tags, every part at most the part target, parts on disk before listed.
  {
    std::this_thread::sleep_for(3s);
    const std::string pl = ReadFile(video / "index.m3u8");
    INFO(pl);
    CHECK(pl.find("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,CAN-SKIP-UNTIL=12.000") !=
          std::string::npos);
    CHECK(pl.find("#EXT-X-PART-INF:PART-TARGET=0.500") != std::string::npos);
    CHECK(pl.find("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=") != std::string::npos);
    CHECK(pl.find("#EXT-X-RENDITION-REPORT:URI=\"../audio-1/index.m3u8\"") != std::string::npos);
    const std::regex duration(R"(#EXT-X-PART:DURATION=([0-9.]+))");
    for (std::sregex_iterator it(pl.begin(), pl.end(), duration), end; it != end; ++it)
      CHECK(std::stod((*it)[1]) <= 0.5);
    CHECK(pl.find("INDEPENDENT=YES") != std::string::npos);
    for (const std::string& uri : PartUris(pl)) CHECK(fs::exists(video / uri));
  }

  // A blocking reload for the next part is held until it is listed; one far ahead is refused.
  {
    const std::string pl = ReadFile(video / "index.m3u8");
    auto [msn, part] = LastPart(pl);
    REQUIRE(msn >= 0);
    const std::string url = base + "channel/v1/video-240p/index.m3u8";
    // The part after the last one listed: part+1 of this segment, or part 0 of the next.
    const auto next = part >= 3 ? std::pair<long, long>{msn + 1, 0} : std::pair<long, long>{msn, part + 1};
    auto [code, took] = Get(fmt::format("{}?_HLS_msn={}&_HLS_part={}", url, next.first, next.second));
    CHECK(code == "200");
    CHECK(took > 0.05);   // held: the part did not exist yet
    CHECK(took < 1.5);    // ... and answered once it did (parts of 0.5 s)
    MESSAGE("blocking reload for part " << next.first << "." << next.second << " answered after " << took << " s");
    CHECK(Get(fmt::format("{}?_HLS_msn={}&_HLS_part=0", url, msn + 5)).first == "400");
  }

  // hls.js with lowLatencyMode: 20 s at the live edge, no error, <= 3 s behind it, using parts.
  const std::string url = base + "channel/master.m3u8";
  const std::string node = "KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node ";
  auto play = RunStdout(node + Quote((kSource / "tests/player/play.mjs").string()) + " --url " + Quote(url) +
                        " --play-for 20 --low-latency --timeout 45");
  INFO("hls.js: " << play.output);
  CHECK(play.exit_code == 0);
  CHECK(play.output.find("\"errors\":[]") != std::string::npos);
  CHECK(play.output.find("\"live\":true") != std::string::npos);
  const double latency = JsonNumber(play.output, R"("latency_s":\{"median":([0-9.]+))");
  CHECK(latency > 0);
  CHECK(latency <= 3.0);
  CHECK(JsonNumber(play.output, R"("part_requests":([0-9]+))") > 10);
  CHECK(JsonNumber(play.output, R"("blocking_requests":([0-9]+))") > 5);
  MESSAGE("hls.js LL-HLS latency " << latency << " s (hls.latency median), PDT latency "
                                   << JsonNumber(play.output, R"("pdt_latency_s":\{"median":([0-9.]+))") << " s");

  // A packager of another group that starts at the end of the log (as if the topic's
  // retention had deleted the start): it learns the channel from the start the ingest
  // re-announces every 10 s, and joins at the next whole segment.
  const fs::path late_out = work.path() / "late";
  Child late({kBin, "package", "--out", late_out.string(), "--brokers", Brokers(), "--topic", topic, "--group",
              Unique("late"), "--container", "fmp4", "--low-latency", "--window", "12", "--until-complete", "channel",
              "-X", "auto.offset.reset=latest"},
             work.path() / "late.log");

  // Shaka Player in its low-latency mode plays it too.
  auto shaka = RunStdout(node + Quote((kSource / "tests/player/shaka.mjs").string()) + " --url " + Quote(url) +
                         " --play-for 8 --low-latency --timeout 40");
  INFO("shaka: " << shaka.output);
  CHECK(shaka.exit_code == 0);
  CHECK(shaka.output.find("\"errors\":[]") != std::string::npos);
  MESSAGE("Shaka LL-HLS latency " << JsonNumber(shaka.output, R"("latency_s":\{"median":([0-9.]+))") << " s");

  // The packager is killed mid-stream and restarted: nothing listed that is not
  // complete (every part and segment on disk at its final size), the window goes on.
  const long before = Number(ReadFile(video / "index.m3u8"), R"(#EXT-X-MEDIA-SEQUENCE:(\d+))");
  packager->Kill();
  packager->Wait();
  std::this_thread::sleep_for(1500ms);
  packager = std::make_unique<Child>(package_args(), work.path() / "package.log");
  std::this_thread::sleep_for(3s);
  for (int i = 0; i < 12; ++i) {
    const std::string pl = ReadFile(video / "index.m3u8");
    for (const std::string& uri : PartUris(pl)) CHECK_MESSAGE(fs::exists(video / uri), uri << "\n" << pl);
    for (const std::string& uri : PlaylistUris(pl)) CHECK_MESSAGE(fs::exists(video / uri), uri << "\n" << pl);
    // The window has slid past segment 0: its init segment is still named.
    CHECK_MESSAGE(pl.find("#EXT-X-MAP:URI=\"init.mp4\"") != std::string::npos, pl);
    std::this_thread::sleep_for(250ms);
  }
  const std::string after = ReadFile(video / "index.m3u8");
  CHECK(Number(after, R"(#EXT-X-MEDIA-SEQUENCE:(\d+))") > before);
  CHECK(after.find("#EXT-X-PRELOAD-HINT") != std::string::npos);
  CHECK(ReadFile(work.path() / "package.log").find("skipped record") == std::string::npos);

  // The feed ends: the title ends (ENDLIST, no hint), every process exits 0.
  CHECK(feed.Wait() == 0);
  int rc = -1;
  for (int i = 0; i < 400 && (rc = ingest.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  CHECK(rc == 0);
  for (int i = 0; i < 400 && (rc = packager->Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  INFO(ReadFile(work.path() / "package.log").substr(0, 6000));
  CHECK(rc == 0);
  const std::string last = ReadFile(video / "index.m3u8");
  CHECK(last.find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(last.find("#EXT-X-PRELOAD-HINT") == std::string::npos);

  // The late packager joined mid-channel, ended with it, and wrote the same segments.
  for (int i = 0; i < 400 && (rc = late.Poll()) < 0; ++i) std::this_thread::sleep_for(50ms);
  const std::string late_log = ReadFile(work.path() / "late.log");
  INFO(late_log.substr(0, 4000));
  CHECK(rc == 0);
  const long joined = Number(late_log, R"(live, joined at segment (\d+))");
  CHECK(joined > 0);
  const fs::path late_video = late_out / "channel/v1/video-240p";
  const std::string late_last = ReadFile(late_video / "index.m3u8");
  CHECK(late_last.find("#EXT-X-ENDLIST") != std::string::npos);
  // Its init segment is named after the first segment it wrote; the bytes are the same.
  const std::string late_init = fmt::format("init-{:06d}.mp4", joined);
  CHECK(late_last.find("#EXT-X-MAP:URI=\"" + late_init + "\"") != std::string::npos);
  CHECK(ReadFile(late_video / late_init) == ReadFile(video / "init.mp4"));
  CHECK(PlaylistUris(late_last) == PlaylistUris(last));
  for (const std::string& uri : PlaylistUris(late_last)) CHECK(ReadFile(late_video / uri) == ReadFile(video / uri));
  MESSAGE("a packager started at the end of the log joined at segment " << joined);
  origin.Kill(SIGTERM);

  // Re-packaging from the log puts the parts back together: the segments the
  // low-latency packager still holds are byte for byte the archive's.
  const fs::path archive = work.path() / "archive";
  REQUIRE(RunToEnd({kBin, "repackage", "--title", "channel", "--out", archive.string(), "--brokers", Brokers(),
                    "--topic", topic, "--container", "fmp4"},
                   work.path() / "repackage.log") == 0);
  const std::string full = ReadFile(archive / "channel/v1/video-240p/index.m3u8");
  CHECK(full.find("#EXT-X-PART") == std::string::npos);
  CHECK(full.find("#EXT-X-ENDLIST") != std::string::npos);
  size_t compared = 0;
  for (const std::string& uri : PlaylistUris(last)) {
    CHECK(ReadFile(archive / "channel/v1/video-240p" / uri) == ReadFile(video / uri));
    ++compared;
  }
  CHECK(compared >= 4);
  CHECK(PlaylistUris(full).size() >= 25);  // ~60 s of 2 s segments
  // And another segment length: 4 s segments re-cut from the parts.
  const fs::path recut = work.path() / "recut";
  REQUIRE(RunToEnd({kBin, "repackage", "--title", "channel", "--out", recut.string(), "--brokers", Brokers(),
                    "--topic", topic, "--segment-duration", "4"},
                   work.path() / "recut.log") == 0);
  const std::string four = ReadFile(recut / "channel/v1/video-240p/index.m3u8");
  CHECK(four.find("#EXT-X-TARGETDURATION:4") != std::string::npos);
  CHECK(PlaylistUris(four).size() * 2 >= PlaylistUris(full).size() - 1);
  CHECK(PlaylistUris(four).size() * 2 <= PlaylistUris(full).size() + 2);
}
