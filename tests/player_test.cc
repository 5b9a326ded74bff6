// Real players against a title that is still being ingested: hls.js in
// Debian's Chromium (tests/player/play.mjs) and ffmpeg's HLS demuxer, both over
// HTTP from `kafka-hls serve` / `kafka-hls run --serve`.
#include <doctest/doctest.h>

#include <future>
#include <regex>

#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

std::string NodeModules() {
  if (const char* d = std::getenv("KHLS_NODE_MODULES"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/kafka-hls/node/node_modules";
}

// The URL a kafka-hls process announced in its log ("... at http://127.0.0.1:PORT/").
std::string WaitForUrl(const fs::path& log, std::chrono::seconds timeout = 30s) {
  std::regex url(R"((http://127\.0\.0\.1:\d+/))");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    std::string text = ReadFile(log);
    if (std::regex_search(text, m, url)) return m[1];
    std::this_thread::sleep_for(50ms);
  }
  return "";
}

struct PlayResult {
  int exit_code = -1;
  std::string json;
};

PlayResult Play(const std::string& url, const std::string& extra) {
  auto r = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                     Quote((kSource / "tests/player/play.mjs").string()) + " --url " + Quote(url) + " " + extra);
  return {r.exit_code, r.output};
}

}  // namespace

TEST_CASE("hls.js plays a title while it is ingested at media speed, then to its end; ffmpeg decodes it over HTTP") {
  RequireBroker();
  REQUIRE_MESSAGE(fs::exists(NodeModules() + "/playwright-core"), "playwright-core missing in " << NodeModules()
                                                                                                << " (scripts/setup.sh)");
  TempDir work;
  const fs::path out = work.path() / "out";
  const fs::path log = work.path() / "run.log";
  const fs::path artifacts = fs::path(KHLS_ARTIFACT_DIR);
  fs::create_directories(artifacts);

  // The newcomer's command: ingest + package + serve in one process, at media speed.
  Child run({kBin, "run", (kMedia / "clip40.mp4").string(), "--title", "live", "--out", out.string(), "--brokers",
             Brokers(), "--topic", Unique("player"), "--serve", "0", "--realtime",
             "--segment-duration", "2"},
            log);
  const std::string base = WaitForUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  const std::string master = base + "live/master.m3u8";
  for (int i = 0; i < 300 && !fs::exists(out / "live/master.m3u8"); ++i) std::this_thread::sleep_for(50ms);
  REQUIRE(fs::exists(out / "live/master.m3u8"));
  const auto first_listed = std::chrono::steady_clock::now();

  // One viewer watches from the start to the end; another checks the early start.
  auto to_the_end = std::async(std::launch::async, [&] {
    return Play(master, "--expect-ended --timeout 120 --screenshot " + Quote((artifacts / "hlsjs-ended.png").string()));
  });
  PlayResult early = Play(master, "--until-time 10 --timeout 60 --screenshot " +
                                      Quote((artifacts / "hlsjs-10s.png").string()));
  const bool ingest_still_running = ReadFile(out / "live/v1/index.m3u8").find("#EXT-X-ENDLIST") == std::string::npos;
  INFO("early viewer: " << early.json);
  CHECK(early.exit_code == 0);
  CHECK(early.json.find("\"ok\":true") != std::string::npos);
  CHECK(early.json.find("\"errors\":[]") != std::string::npos);
  CHECK(early.json.find("\"playlist_type\":\"EVENT\"") != std::string::npos);
  // 10 s of the title were watched before its 40 s ingest was over.
  CHECK(ingest_still_running);
  CHECK(std::chrono::steady_clock::now() - first_listed < 30s);

  PlayResult whole = to_the_end.get();
  INFO("whole-title viewer: " << whole.json);
  CHECK(whole.exit_code == 0);
  CHECK(whole.json.find("\"ended\":true") != std::string::npos);
  CHECK(whole.json.find("\"errors\":[]") != std::string::npos);
  CHECK(ReadFile(log).find("title 'live' is ready") != std::string::npos);
  run.Kill(SIGTERM);  // it keeps serving after the title is complete, until stopped
  CHECK(run.Wait() == 0);
  CHECK(fs::exists(artifacts / "hlsjs-10s.png"));
  CHECK(fs::file_size(artifacts / "hlsjs-10s.png") > 10000);

  // ffmpeg's HLS demuxer over HTTP decodes the whole (now complete) title without an error.
  const fs::path serve_log = work.path() / "serve.log";
  Child serve({kBin, "serve", out.string(), "--port", "0"}, serve_log);
  const std::string served = WaitForUrl(serve_log);
  REQUIRE_MESSAGE(!served.empty(), ReadFile(serve_log));
  auto decode = Run("ffmpeg -nostdin -v error -i " + Quote(served + "live/master.m3u8") + " -f null -");
  CHECK(decode.exit_code == 0);
  CHECK_MESSAGE(decode.output.empty(), decode.output);
  auto frames = RunStdout("ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames "
                          "-of csv=p=0 " + Quote(served + "live/master.m3u8"));
  CHECK(std::stol(frames.output) == 1000);  // clip40: 40 s at 25 fps
  serve.Kill(SIGTERM);
  CHECK(serve.Wait() == 0);
}
