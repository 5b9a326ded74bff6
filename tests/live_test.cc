// Live inputs through the real binary and the real broker: a UDP feed and a
// pipe that end their title (#EXT-X-ENDLIST) when they stop, a live address
// that never sends anything, and a feed whose keyframes are too far apart for
// the target duration a live title declares up front.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <regex>
#include <thread>

#include <fmt/format.h>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kFeedSeconds = 12;

/// Some process has a UDP socket bound to `port` (/proc/net/udp lists it).
bool UdpPortBound(int port) {
  const std::string table = ReadFile("/proc/net/udp");
  return table.find(fmt::format(":{:04X} 00000000:0000", port)) != std::string::npos;
}

/// Waits up to 60 s until the process logging to `log` has bound UDP `port` (a
/// datagram sent before it binds is lost); fails the test with its log otherwise.
void WaitUntilBound(int port, const fs::path& log) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (!UdpPortBound(port) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE_MESSAGE(UdpPortBound(port), "kafka-hls never bound UDP port " << port << ": " << ReadFile(log));
}

/// The test feed: testsrc2 + a sine, `seconds` long, H.264 with a keyframe every
/// `gop` frames (25 fps) and AAC, as MPEG-TS to `out`.
std::string FeedCommand(const std::string& out, int gop, bool realtime, double seconds = kFeedSeconds) {
  return fmt::format(
      "ffmpeg -nostdin -v error {}-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine=frequency=440:"
      "sample_rate=48000 -t {} -c:v libx264 -preset ultrafast -g {} -c:a aac -f mpegts {}",
      realtime ? "-re " : "", seconds, gop, Quote(out));
}

std::vector<std::string> RunArgs(const std::string& input, const std::string& title, const fs::path& out,
                                 const std::string& topic, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {kBin,    "run",   input,        "--title", title,   "--out",
                                out.string(), "--brokers", Brokers(), "--topic", topic};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::string RunCommand(const std::string& input, const std::string& title, const fs::path& out,
                       const std::string& topic, const std::vector<std::string>& extra) {
  std::string cmd;
  for (const std::string& arg : RunArgs(input, title, out, topic, extra)) {
    if (!cmd.empty()) cmd += ' ';
    cmd += Quote(arg);
  }
  return cmd;
}

/// Waits for `c` up to `limit`; its exit code, or -1 (then it is killed) when it is still running.
int WaitFor(Child& c, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (const int rc = c.Poll(); rc >= 0) return rc;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  c.Kill();
  c.Wait();
  return -1;
}

/// The checks every ended live title passes: every media playlist is complete
/// (#EXT-X-ENDLIST; a live title's playlists are a sliding window, longer than
/// these feeds, so they list every segment) with TARGETDURATION = the segment
/// duration, no EXTINF rounds above it, the video lasts about the feed, and
/// ffmpeg decodes the master playlist without a word at -v error.
void CheckEndedTitle(const fs::path& title_dir, int target, double seconds) {
  const fs::path master_path = title_dir / "master.m3u8";
  REQUIRE(fs::exists(master_path));
  const Master master = ParseMaster(ReadFile(master_path));
  REQUIRE(!master.variants.empty());
  const std::regex extinf(R"(#EXTINF:([0-9.]+),)");
  for (const std::string& uri : master.Playlists()) {
    CAPTURE(uri);
    const std::string pl = ReadFile(title_dir / uri);
    CHECK(pl.ends_with("#EXT-X-ENDLIST\n"));
    CHECK(pl.find("#EXT-X-MEDIA-SEQUENCE:0\n") != std::string::npos);
    CHECK(pl.find(fmt::format("#EXT-X-TARGETDURATION:{}\n", target)) != std::string::npos);
    int segments = 0;
    for (std::sregex_iterator it(pl.begin(), pl.end(), extinf), end; it != end; ++it, ++segments)
      CHECK_MESSAGE(std::lround(std::stod((*it)[1])) <= target, "EXTINF " << (*it)[1] << " above the target " << target);
    CHECK(segments >= 2);
  }
  const double video = PlaylistDuration(ReadFile(title_dir / master.variants.front().uri));
  CHECK_MESSAGE(std::abs(video - seconds) <= 2.0, "the video lasts " << video << " s, the feed " << seconds << " s");
  auto decoded = Run(fmt::format("ffmpeg -nostdin -v error -i {} -map 0 -f null -", Quote(master_path.string())));
  CHECK_MESSAGE(decoded.exit_code == 0, decoded.output);
  CHECK_MESSAGE(decoded.output.empty(), decoded.output);
}

/// No record of any title in `topic` or its index (the topics may not even exist).
void CheckNothingPublished(const std::string& topic) {
  for (const std::string& t : {topic, topic + ".titles"}) {
    auto r = RunStdout(fmt::format("kcat -b {} -t {} -C -e -q -f 'record\\n' 2>/dev/null", Brokers(), t));
    CHECK_MESSAGE(r.output.find("record") == std::string::npos, t << " holds records: " << r.output);
  }
}

}  // namespace

TEST_CASE("a UDP feed that stops is a title that ends after the stall timeout") {
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();
  const std::string topic = Unique("live-udp");
  const fs::path log = dir.path() / "run.log";
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  // The ingest listens first (a datagram sent before it binds is lost), then the feed starts.
  Child run(RunArgs(input, "udp-feed", dir.path() / "out", topic, {"--segment-duration", "2", "--stall-timeout", "3"}),
            log);
  WaitUntilBound(port, log);
  const auto feed_start = Clock::now();
  auto feed = Run(FeedCommand(input + "?pkt_size=1316", 25, true));
  REQUIRE_MESSAGE(feed.exit_code == 0, feed.output);
  // The feed lasted 12 s; 3 s of silence end the title, and Kafka gets a generous margin.
  const int rc = WaitFor(run, std::chrono::seconds(90));
  const std::string text = ReadFile(log);
  REQUIRE_MESSAGE(rc == 0, "exit " << rc << " after " << std::chrono::duration<double>(Clock::now() - feed_start).count()
                                   << " s: " << text);
  CHECK_MESSAGE(text.find(fmt::format("live input '{}' stalled for 3 s: ending title 'udp-feed' after", input)) !=
                    std::string::npos,
                text);
  CheckEndedTitle(dir.path() / "out" / "udp-feed", 2, kFeedSeconds);
}

TEST_CASE("a pipe that closes ends its title") {
  RequireBroker();
  TempDir dir;
  const std::string topic = Unique("live-pipe");
  const fs::path out = dir.path() / "out";
  auto r = Run(fmt::format("timeout 180 sh -c {}",
                           Quote(FeedCommand("-", 25, false) + " | " +
                                 RunCommand("pipe:0", "pipe-feed", out, topic,
                                            {"--segment-duration", "2", "--stall-timeout", "3"}))));
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK_MESSAGE(r.output.find("live input 'pipe:0' ended: ending title 'pipe-feed' after") != std::string::npos, r.output);
  CheckEndedTitle(out / "pipe-feed", 2, kFeedSeconds);
}

TEST_CASE("a pipe that stays open but stalls ends its title after the stall timeout") {
  RequireBroker();
  TempDir dir;
  const std::string topic = Unique("live-pipe-stall");
  const fs::path out = dir.path() / "out";
  // The writer keeps the pipe open long after its 6 s of media (a sleep holds its end; it is
  // stopped, by its pid, once kafka-hls is done): only the timeout can end the title.
  const fs::path holder = dir.path() / "holder.pid";
  const auto started = Clock::now();
  auto r = Run(fmt::format(
      "timeout 180 sh -c {}",
      Quote(fmt::format("({}; sleep 120 & echo $! > {}; wait) | {{ {}; echo kafka-hls-exit=$?; kill $(cat {}); }}",
                        FeedCommand("-", 25, false, 6), Quote(holder.string()),
                        RunCommand("pipe:0", "pipe-stall", out, topic, {"--segment-duration", "2", "--stall-timeout", "2"}),
                        Quote(holder.string())))));
  CHECK_MESSAGE(r.output.find("kafka-hls-exit=0") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("live input 'pipe:0' stalled for 2 s: ending title 'pipe-stall' after") != std::string::npos,
                r.output);
  CHECK(Clock::now() - started < std::chrono::seconds(100));
  CheckEndedTitle(out / "pipe-stall", 2, 6);
}

TEST_CASE("a live address that never sends anything fails without publishing anything") {
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();
  const std::string topic = Unique("live-silent");
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  const auto started = Clock::now();
  auto r = Run("timeout 120 " + RunCommand(input, "silent", dir.path() / "out", topic, {"--stall-timeout", "2"}));
  const double took = std::chrono::duration<double>(Clock::now() - started).count();
  CHECK_MESSAGE(r.exit_code == 3, r.output);
  CHECK_MESSAGE(r.output.find(fmt::format("open input '{}': nothing arrived within 2 s", input)) != std::string::npos,
                r.output);
  CHECK_MESSAGE(took < 30, "took " << took << " s");
  CHECK_FALSE(fs::exists(dir.path() / "out" / "silent" / "master.m3u8"));
  CheckNothingPublished(topic);

  // The timeout is checked like every option: (0, 3600] seconds.
  for (const char* bad : {"0", "-1", "3601", "nan"}) {
    CAPTURE(bad);
    auto usage = Run(fmt::format("{} ingest {} --title silent --topic {} --stall-timeout {}", kBin, Quote(input), topic, bad));
    CHECK_MESSAGE(usage.exit_code == 2, usage.output);
    CHECK_MESSAGE(usage.output.find("--stall-timeout") != std::string::npos, usage.output);
  }
}

TEST_CASE("Ctrl-C interrupts an ingest waiting on a live input at once") {
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();
  const fs::path log = dir.path() / "ingest.log";
  Child ingest(IngestArgs(fmt::format("udp://127.0.0.1:{}", port), "waiting", Unique("live-int"), {"--stall-timeout", "600"}),
               log);
  WaitUntilBound(port, log);
  ingest.Kill(SIGINT);
  CHECK(WaitFor(ingest, std::chrono::seconds(30)) == 130);
  CHECK_MESSAGE(ReadFile(log).find("interrupted") != std::string::npos, ReadFile(log));
}

TEST_CASE("an ingest interrupted before its first segment is cut has published nothing") {
  // The title start goes out with the first segment group: a feed that opens
  // but never completes a segment leaves no title behind, not even a start.
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();
  const std::string topic = Unique("live-early");
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  const fs::path log = dir.path() / "ingest.log";
  Child ingest(IngestArgs(input, "early", topic, {"--segment-duration", "4", "--stall-timeout", "600"}), log);
  WaitUntilBound(port, log);
  // 1.5 s of media: enough to open the feed, not a whole 4 s segment.
  auto feed = Run(FeedCommand(input + "?pkt_size=1316", 25, false, 1.5));
  REQUIRE_MESSAGE(feed.exit_code == 0, feed.output);
  // Past the input's open and the producer's set-up (it creates the topics), waiting for media.
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  auto topic_exists = [&] {
    return RunStdout(fmt::format("kcat -b {} -L -t {} 2>/dev/null", Brokers(), topic + ".titles")).output.find("partition 0") !=
           std::string::npos;
  };
  while (!topic_exists() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE_MESSAGE(topic_exists(), ReadFile(log));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ingest.Kill(SIGINT);
  CHECK(WaitFor(ingest, std::chrono::seconds(30)) == 130);
  const std::string text = ReadFile(log);
  CHECK_MESSAGE(text.find("interrupted before its first segment; nothing was published") != std::string::npos, text);
  CheckNothingPublished(topic);
}

TEST_CASE("a live feed whose keyframes are further apart than the target is refused, naming a target that works") {
  RequireBroker();
  TempDir dir;
  const fs::path out = dir.path() / "out";
  // A keyframe every 100 frames at 25 fps: every 4 s, for a 2 s target.
  auto refused = Run(fmt::format(
      "timeout 180 sh -c {}",
      Quote(FeedCommand("-", 100, false) + " 2>/dev/null | " +
            RunCommand("pipe:0", "long-gop", out, Unique("live-gop"), {"--segment-duration", "2", "--stall-timeout", "3"}))));
  CHECK_MESSAGE(refused.exit_code == 3, refused.output);
  CHECK_MESSAGE(refused.output.find("live input 'pipe:0': keyframes 4.000 s apart (at 0.000 s and 4.000 s) make "
                                    "segment 0 last 4.000 s, more than the target duration of 2 s declared for the "
                                    "live title") != std::string::npos,
                refused.output);
  CHECK_MESSAGE(refused.output.find("use --segment-duration 4 (a multiple of the keyframe interval)") != std::string::npos,
                refused.output);
  CHECK_FALSE(fs::exists(out / "long-gop" / "v1" / "video-240p" / "seg-000000.ts"));

  // The target it names works.
  const fs::path out4 = dir.path() / "out-4s";
  auto accepted = Run(fmt::format(
      "timeout 180 sh -c {}",
      Quote(FeedCommand("-", 100, false) + " | " +
            RunCommand("pipe:0", "long-gop", out4, Unique("live-gop"), {"--segment-duration", "4", "--stall-timeout", "3"}))));
  REQUIRE_MESSAGE(accepted.exit_code == 0, accepted.output);
  CheckEndedTitle(out4 / "long-gop", 4, kFeedSeconds);
}

TEST_CASE("an rtmp:// push accepted with --input-option listen=1 is a live title that ends with the connection") {
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();  // a port number that is free for TCP too, almost always
  const std::string url = fmt::format("rtmp://127.0.0.1:{}/live/feed", port);
  const fs::path out = dir.path() / "out", log = dir.path() / "run.log";
  // A topic of live channels: time-based retention (one hour), set when `run` creates it.
  const std::string topic = Unique("live-rtmp");
  Child run(RunArgs(url, "rtmp-feed", out, topic,
                    {"--segment-duration", "2", "--stall-timeout", "30", "--input-option", "listen=1", "--retention",
                     "3600"}),
            log);
  // Listening (state 0A in /proc/net/tcp) before the encoder connects; a probe connection would be the one accepted.
  const std::string listening = fmt::format(":{:04X} 00000000:0000 0A", port);
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (ReadFile("/proc/net/tcp").find(listening) == std::string::npos && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE_MESSAGE(ReadFile("/proc/net/tcp").find(listening) != std::string::npos, ReadFile(log));
  auto feed = Run(fmt::format(
      "ffmpeg -nostdin -v error -re -f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine=frequency=440:"
      "sample_rate=48000 -t {} -c:v libx264 -preset ultrafast -g 25 -c:a aac -f flv {}",
      kFeedSeconds, Quote(url)));
  REQUIRE_MESSAGE(feed.exit_code == 0, feed.output);
  const int rc = WaitFor(run, std::chrono::seconds(60));
  const std::string text = ReadFile(log);
  REQUIRE_MESSAGE(rc == 0, text);
  CHECK_MESSAGE(text.find(fmt::format("live input '{}'", url)) != std::string::npos, text);
  CheckEndedTitle(out / "rtmp-feed", 2, kFeedSeconds);
  auto described = Run(fmt::format("{} topic describe --brokers {} --topic {}", Quote(kBin), Brokers(), topic));
  CHECK_MESSAGE(described.output.find("retention.ms 3600000") != std::string::npos, described.output);

  // An option that is not KEY=VALUE, or that nothing recognises, is refused before anything is published.
  auto bad = Run(RunCommand(url, "rtmp-bad", out, Unique("live-rtmp"), {"--input-option", "listen"}));
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(bad.output.find("--input-option 'listen' is not KEY=VALUE") != std::string::npos, bad.output);
  auto unknown = Run(RunCommand((kMedia / "clip40.mp4").string(), "rtmp-bad", out, Unique("live-rtmp"),
                                {"--input-option", "no_such_option=1"}));
  CHECK(unknown.exit_code == 2);
  CHECK_MESSAGE(unknown.output.find("no_such_option") != std::string::npos, unknown.output);
}

TEST_CASE("a live ingest killed mid-feed and started again resumes its title after a discontinuity") {
  RequireBroker();
  TempDir dir;
  const int port = FreeUdpPort();
  const std::string topic = Unique("live-resume");
  const std::string input = fmt::format("udp://127.0.0.1:{}", port);
  const fs::path out = dir.path() / "out";
  const std::vector<std::string> options = {"--segment-duration", "2", "--stall-timeout", "3"};
  Child packager(PackageArgs(out, topic, Unique("resume"), {"resumed"}), dir.path() / "package.log");
  auto first = std::make_unique<Child>(IngestArgs(input, "resumed", topic, options), dir.path() / "ingest1.log");
  WaitUntilBound(port, dir.path() / "ingest1.log");
  // One feed for the whole test, as an encoder that keeps sending while its ingest is replaced.
  Child feed({"/bin/sh", "-c", FeedCommand(input + "?pkt_size=1316", 25, true, 26)}, dir.path() / "feed.log");
  const fs::path video = out / "resumed/v1/video-240p";
  const auto listed_deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < listed_deadline &&
         (!fs::exists(video / "index.m3u8") || PlaylistUris(ReadFile(video / "index.m3u8")).size() < 3))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE_MESSAGE(fs::exists(video / "index.m3u8"), ReadFile(dir.path() / "package.log"));

  // The ingest dies (no title end), and another is started on the same title a second later.
  first->Kill(SIGKILL);
  CHECK(first->Wait() == 128 + SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  Child second(IngestArgs(input, "resumed", topic, options), dir.path() / "ingest2.log");
  WaitUntilBound(port, dir.path() / "ingest2.log");

  // Meanwhile a live input of another layout (video only) is refused, and takes nothing down.
  auto other = Run(fmt::format(
      "timeout 120 sh -c {}",
      Quote("ffmpeg -nostdin -v error -f lavfi -i testsrc2=size=320x240:rate=25 -t 4 -c:v libx264 -preset ultrafast "
            "-g 25 -f mpegts - | " +
            fmt::format("{} ingest pipe:0 --title resumed --brokers {} --topic {} --segment-duration 2 "
                        "--stall-timeout 3",
                        Quote(kBin), Brokers(), topic))));
  CHECK_MESSAGE(other.exit_code == 2, other.output);
  CHECK_MESSAGE(other.output.find("title 'resumed' is a running live title (version 1") != std::string::npos,
                other.output);

  CHECK(feed.Wait() == 0);
  const int rc = WaitFor(second, std::chrono::seconds(60));
  const std::string log2 = ReadFile(dir.path() / "ingest2.log");
  REQUIRE_MESSAGE(rc == 0, log2);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(log2, m, std::regex(R"(this run resumes version 1 at segment (\d+))")), log2);
  const int resumed_at = std::stoi(m[1]);
  CHECK(resumed_at >= 3);
  CHECK(WaitFor(packager, std::chrono::seconds(60)) == 0);
  const std::string package_log = ReadFile(dir.path() / "package.log");
  CHECK_MESSAGE(package_log.find("skipped record") == std::string::npos, package_log);

  // One version, every segment in order, the discontinuity before the resumed run's first segment.
  CHECK_FALSE(fs::exists(out / "resumed/v2"));
  for (const char* rendition : {"video-240p", "audio-1"}) {
    CAPTURE(rendition);
    const fs::path dir_r = out / "resumed/v1" / rendition;
    REQUIRE(fs::exists(dir_r / "index.m3u8"));
    const std::string pl = ReadFile(dir_r / "index.m3u8");
    INFO(pl);
    CHECK(pl.ends_with("#EXT-X-ENDLIST\n"));
    CHECK(pl.find("#EXT-X-MEDIA-SEQUENCE:0\n") != std::string::npos);
    const std::vector<std::string> uris = PlaylistUris(pl);
    REQUIRE(static_cast<int>(uris.size()) > resumed_at + 3);
    for (size_t i = 0; i < uris.size(); ++i) CHECK(uris[i] == fmt::format("seg-{:06d}.ts", i));
    const size_t tag = pl.find("#EXT-X-DISCONTINUITY\n");
    REQUIRE(tag != std::string::npos);
    CHECK(pl.find("#EXT-X-DISCONTINUITY", tag + 1) == std::string::npos);
    CHECK(pl.find(fmt::format("seg-{:06d}.ts", resumed_at), tag) < pl.find(fmt::format("seg-{:06d}.ts", resumed_at + 1)));
    CHECK(pl.rfind(fmt::format("seg-{:06d}.ts", resumed_at - 1), tag) != std::string::npos);
    const std::regex extinf(R"(#EXTINF:([0-9.]+),)");
    for (std::sregex_iterator it(pl.begin(), pl.end(), extinf), end; it != end; ++it)
      CHECK(std::lround(std::stod((*it)[1])) <= 2);
  }
  // ffmpeg's HLS demuxer plays the whole title across the discontinuity without an error.
  auto decoded = Run(fmt::format("ffmpeg -nostdin -v error -i {} -map 0 -f null -",
                                 Quote((out / "resumed/master.m3u8").string())));
  CHECK_MESSAGE(decoded.exit_code == 0, decoded.output);
  CHECK_MESSAGE(decoded.output.empty(), decoded.output);

  // Re-packaging from the log gives the same segments and the same discontinuity; re-cutting is refused.
  const fs::path archive = dir.path() / "archive";
  REQUIRE(RunToEnd({kBin, "repackage", "--title", "resumed", "--out", archive.string(), "--brokers", Brokers(),
                    "--topic", topic},
                   dir.path() / "repackage.log") == 0);
  const std::string rebuilt = ReadFile(archive / "resumed/v1/video-240p/index.m3u8");
  CHECK(PlaylistUris(rebuilt) == PlaylistUris(ReadFile(video / "index.m3u8")));
  CHECK(rebuilt.find("#EXT-X-DISCONTINUITY\n") != std::string::npos);
  for (const std::string& name : PlaylistUris(rebuilt))
    CHECK(ReadFile(archive / "resumed/v1/video-240p" / name) == ReadFile(video / name));
  const fs::path recut = dir.path() / "recut";
  const int recut_rc = RunToEnd({kBin, "repackage", "--title", "resumed", "--out", recut.string(), "--brokers",
                                 Brokers(), "--topic", topic, "--segment-duration", "4"},
                                dir.path() / "recut.log");
  CHECK(recut_rc != 0);
  CHECK_MESSAGE(ReadFile(dir.path() / "recut.log").find("without --segment-duration") != std::string::npos,
                ReadFile(dir.path() / "recut.log"));
}
