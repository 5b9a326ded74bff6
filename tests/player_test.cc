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

struct PlayResult {
  int exit_code = -1;
  std::string json;
};

PlayResult Play(const std::string& url, const std::string& extra, const char* script = "play.mjs") {
  auto r = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                     Quote((kSource / "tests/player" / script).string()) + " --url " + Quote(url) + " " + extra);
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
  const bool ingest_still_running = ReadFile(out / "live/v1/video-360p/index.m3u8").find("#EXT-X-ENDLIST") == std::string::npos;
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

TEST_CASE("hls.js and Shaka Player: audio languages, subtitles and a bitrate ladder") {
  RequireBroker();
  TempDir work;
  const fs::path out = work.path() / "out";
  const std::string topic = Unique("tracks");
  const auto m = [](const char* f) { return (kMedia / f).string(); };
  // Two languages, embedded and sidecar subtitles, two variants; and a three-variant ladder.
  REQUIRE(RunToEnd({kBin, "ingest", m("multilang.mkv"), m("ladder_b.mp4"), "--title", "movie", "--brokers", Brokers(),
                    "--topic", topic, "--segment-duration", "2", "--subtitles", m("sidecar.fr.vtt")},
                   work.path() / "ingest.log") == 0);
  REQUIRE(RunToEnd({kBin, "ingest", m("ladder_a.mp4"), m("ladder_b.mp4"), m("ladder_c.mp4"), "--title", "ladder",
                    "--brokers", Brokers(), "--topic", topic, "--segment-duration", "2"},
                   work.path() / "ingest.log") == 0);
  REQUIRE(RunToEnd(PackageArgs(out, topic, Unique("g"), {"movie", "ladder"}), work.path() / "package.log") == 0);
  const fs::path serve_log = work.path() / "serve.log";
  Child serve({kBin, "serve", out.string(), "--port", "0"}, serve_log);
  const std::string base = WaitForUrl(serve_log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(serve_log));

  // hls.js: both languages listed; switching to French mid-play goes on without an error; a
  // subtitle cue is shown at its time (cues are 1 s and 13 s after the first picture in
  // multilang.mkv's English track: media time = picture time, there is no B-frame delay).
  PlayResult tracks = Play(base + "movie/master.m3u8",
                           "--until-time 16 --timeout 90 --audio-lang fr@4 --subtitle-lang en "
                           "--expect-cue 'First cue@2' --expect-cue 'Late cue@14'");
  INFO("hls.js tracks: " << tracks.json);
  CHECK(tracks.exit_code == 0);
  CHECK(tracks.json.find("\"errors\":[]") != std::string::npos);
  CHECK(tracks.json.find("{\"id\":0,\"lang\":\"en\",\"name\":\"English\",\"default\":true") != std::string::npos);
  CHECK(tracks.json.find("{\"id\":1,\"lang\":\"fr\",\"name\":\"Français\",\"default\":false") != std::string::npos);
  CHECK(tracks.json.find("\"text\":\"Late cue\"") != std::string::npos);

  // hls.js on the ladder: three levels; a forced switch to the lowest plays on without an error.
  PlayResult ladder = Play(base + "ladder/master.m3u8", "--until-time 12 --timeout 90 --level 0@4");
  INFO("hls.js ladder: " << ladder.json);
  CHECK(ladder.exit_code == 0);
  CHECK(ladder.json.find("\"errors\":[]") != std::string::npos);
  CHECK(ladder.json.find("{\"bitrate\":") != std::string::npos);
  std::regex level(R"(\{"bitrate":\d+,"width":(\d+),"height":(\d+))");
  std::string text = ladder.json;
  CHECK(std::distance(std::sregex_iterator(text.begin(), text.end(), level), std::sregex_iterator()) == 3);

  // Shaka Player sees every rendition and plays with no error.
  PlayResult shaka = Play(base + "movie/master.m3u8",
                          "--until-time 8 --timeout 90 --expect-audio en --expect-audio fr --expect-text en "
                          "--expect-text fr --expect-variants 4",
                          "shaka.mjs");
  INFO("shaka: " << shaka.json);
  CHECK(shaka.exit_code == 0);
  CHECK(shaka.json.find("\"errors\":[]") != std::string::npos);
  serve.Kill(SIGTERM);
  CHECK(serve.Wait() == 0);

  // The same topic packaged as CMAF (fMP4) by another group: both players again, both
  // audio languages, the cue, the ladder's levels, and no error.
  const fs::path cmaf = work.path() / "cmaf";
  std::vector<std::string> package = PackageArgs(cmaf, topic, Unique("cmaf"), {"movie", "ladder"});
  package.insert(package.end(), {"--container", "fmp4"});
  REQUIRE(RunToEnd(package, work.path() / "cmaf.log") == 0);
  const fs::path cmaf_log = work.path() / "serve-cmaf.log";
  Child cmaf_serve({kBin, "serve", cmaf.string(), "--port", "0"}, cmaf_log);
  const std::string cmaf_base = WaitForUrl(cmaf_log);
  REQUIRE_MESSAGE(!cmaf_base.empty(), ReadFile(cmaf_log));
  CHECK(ReadFile(cmaf / "movie/v1/video-240p/index.m3u8").find("#EXT-X-MAP:URI=\"init.mp4\"") != std::string::npos);
  PlayResult cmaf_tracks = Play(cmaf_base + "movie/master.m3u8",
                                "--until-time 16 --timeout 90 --audio-lang fr@4 --subtitle-lang en "
                                "--expect-cue 'First cue@2' --expect-cue 'Late cue@14'");
  INFO("hls.js CMAF tracks: " << cmaf_tracks.json);
  CHECK(cmaf_tracks.exit_code == 0);
  CHECK(cmaf_tracks.json.find("\"errors\":[]") != std::string::npos);
  CHECK(cmaf_tracks.json.find("\"text\":\"Late cue\"") != std::string::npos);
  PlayResult cmaf_ladder = Play(cmaf_base + "ladder/master.m3u8", "--until-time 12 --timeout 90 --level 0@4");
  INFO("hls.js CMAF ladder: " << cmaf_ladder.json);
  CHECK(cmaf_ladder.exit_code == 0);
  CHECK(cmaf_ladder.json.find("\"errors\":[]") != std::string::npos);
  text = cmaf_ladder.json;
  CHECK(std::distance(std::sregex_iterator(text.begin(), text.end(), level), std::sregex_iterator()) == 3);
  PlayResult cmaf_shaka = Play(cmaf_base + "movie/master.m3u8",
                               "--until-time 8 --timeout 90 --expect-audio en --expect-audio fr --expect-text en "
                               "--expect-text fr --expect-variants 4",
                               "shaka.mjs");
  INFO("shaka CMAF: " << cmaf_shaka.json);
  CHECK(cmaf_shaka.exit_code == 0);
  CHECK(cmaf_shaka.json.find("\"errors\":[]") != std::string::npos);
  cmaf_serve.Kill(SIGTERM);
  CHECK(cmaf_serve.Wait() == 0);
}
