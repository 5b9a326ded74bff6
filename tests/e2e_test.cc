// End to end through the real Kafka broker: ingest a generated movie, package
// it, and check the HLS output with ffmpeg/ffprobe as a player would see it.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <regex>
#include <thread>

#include <fmt/format.h>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

double ProbeDouble(const std::string& args) {
  auto r = RunStdout("ffprobe -v error " + args);
  REQUIRE_MESSAGE(r.exit_code == 0, "ffprobe " << args);
  return std::stod(r.output);
}

double SourceDuration(const fs::path& f) {
  return ProbeDouble("-show_entries format=duration -of csv=p=0 " + Quote(f.string()));
}

long long VideoFrames(const std::string& url) {
  return static_cast<long long>(ProbeDouble("-count_frames -select_streams v:0 -show_entries stream=nb_read_frames "
                                            "-of csv=p=0 " + Quote(url)));
}

struct Pipeline {
  std::string topic = Unique("e2e");
  std::string group = Unique("g");
  TempDir out;

  CommandResult Ingest(const fs::path& input, const std::string& title, const std::string& extra = "") {
    return Run(fmt::format("{} ingest {} --title {} --brokers {} --topic {} {}", kBin, Quote(input.string()),
                           Quote(title), Brokers(), topic, extra));
  }
  CommandResult Package(const std::string& title, const std::string& extra = "") {
    return Run(fmt::format("timeout 120 {} package --out {} --brokers {} --topic {} --group {} --until-complete {} {}",
                           kBin, Quote(out.path().string()), Brokers(), topic, group, Quote(title), extra));
  }
};

// ffmpeg reads `url` (a playlist) decoding everything, and again copying (which
// catches timestamps that go backwards); both must print nothing at -v error.
void CheckDecodes(const std::string& url) {
  for (const char* mode : {"-c:s webvtt ", "-c copy "}) {
    auto r = Run(fmt::format("ffmpeg -nostdin -v error -i {} -map 0 {}-f null -", Quote(url), mode));
    CHECK_MESSAGE(r.exit_code == 0, url << " " << mode << r.output);
    CHECK_MESSAGE(r.output.empty(), url << " " << mode << r.output);
  }
}

// The checks every packaged title must pass, rendition by rendition: each media
// playlist is complete, bounded by its target duration, decodes cleanly and lasts
// as long as its track in the source; video segments start with a keyframe and
// every source frame comes out.
void CheckTitle(const fs::path& source, const fs::path& title_dir) {
  const fs::path master_path = title_dir / "master.m3u8";
  REQUIRE(fs::exists(master_path));
  const Master master = ParseMaster(ReadFile(master_path));
  REQUIRE(!master.variants.empty());
  CheckDecodes(master_path.string());
  for (const std::string& uri : master.Playlists()) {
    CAPTURE(uri);
    const fs::path media = title_dir / uri;
    REQUIRE(fs::exists(media));
    const std::string pl = ReadFile(media);
    CHECK(pl.find("#EXT-X-PLAYLIST-TYPE:VOD") != std::string::npos);
    CHECK(pl.ends_with("#EXT-X-ENDLIST\n"));
    CheckDecodes(media.string());
    // TARGETDURATION bounds every segment (RFC 8216 4.3.3.1).
    std::smatch m;
    REQUIRE(std::regex_search(pl, m, std::regex(R"(#EXT-X-TARGETDURATION:(\d+))")));
    const int target = std::stoi(m[1]);
    std::regex extinf(R"(#EXTINF:([0-9.]+),)");
    for (std::sregex_iterator it(pl.begin(), pl.end(), extinf), end; it != end; ++it)
      CHECK(std::lround(std::stod((*it)[1])) <= target);
  }
  // Each rendition lasts as long as its track of the source (within 0.1 s).
  size_t audio_index = 0;
  for (const auto& a : master.Media("AUDIO")) {
    const double want = TrackDuration(source.string(), fmt::format("a:{}", audio_index++));
    const double got = PlaylistDuration(ReadFile(title_dir / a.at("URI")));
    CHECK_MESSAGE(std::abs(got - want) < 0.1, a.at("URI") << ": " << got << " s vs source " << want << " s");
  }
  std::set<std::string> videos;
  for (const auto& v : master.variants)
    if (v.attrs.count("RESOLUTION")) videos.insert(v.uri);
  for (const std::string& uri : videos) {
    CAPTURE(uri);
    const double want = TrackDuration(source.string(), "v:0");
    const double got = PlaylistDuration(ReadFile(title_dir / uri));
    CHECK_MESSAGE(std::abs(got - want) < 0.1, uri << ": " << got << " s vs source " << want << " s");
    const fs::path dir = (title_dir / uri).parent_path();
    for (const std::string& seg : PlaylistSegments(ReadFile(title_dir / uri))) {
      auto r = RunStdout("ffprobe -v error -select_streams v:0 -show_entries packet=flags -of csv=p=0 "
                         "-read_intervals %+#1 " + Quote((dir / seg).string()));
      CHECK_MESSAGE(r.output.rfind("K", 0) == 0, seg << " starts with flags " << r.output);
    }
    // Every frame of the source comes out.
    CHECK(VideoFrames((title_dir / uri).string()) == VideoFrames(source.string()));
  }
}

}  // namespace

TEST_CASE("movies of every container kind become playable VOD titles") {
  RequireBroker();
  struct Case {
    const char* file;
    bool video;
  };
  for (Case c : {Case{"h264_aac.mp4", true}, Case{"faststart.mp4", true}, Case{"h264_aac.mkv", true},
                 Case{"h264_aac.mov", true}, Case{"h264_aac.ts", true}, Case{"h264_aac.flv", true},
                 Case{"longgop.mp4", true}, Case{"ntsc.mp4", true}, Case{"wrap.ts", true},
                 Case{"audio_only.m4a", false}, Case{"mp3_audio.mp3", false}}) {
    CAPTURE(c.file);
    fs::path input = kMedia / c.file;
    REQUIRE_MESSAGE(fs::exists(input), input.string());
    Pipeline p;
    std::string title = fs::path(c.file).stem().string();
    auto ing = p.Ingest(input, title);
    REQUIRE_MESSAGE(ing.exit_code == 0, ing.output);
    auto pkg = p.Package(title);
    REQUIRE_MESSAGE(pkg.exit_code == 0, pkg.output);
    CheckTitle(input, p.out.path() / title);
    CHECK(c.video == fs::exists(p.out.path() / title / "v1/video-240p"));
  }
}

TEST_CASE("master playlist describes the stream") {
  RequireBroker();
  Pipeline p;
  auto ing = p.Ingest(kMedia / "ntsc.mp4", "ntsc");
  REQUIRE_MESSAGE(ing.exit_code == 0, ing.output);
  REQUIRE_MESSAGE(p.Package("ntsc").exit_code == 0, "package");
  std::string master = ReadFile(p.out.path() / "ntsc/master.m3u8");
  CHECK(std::regex_search(master, std::regex(R"(BANDWIDTH=\d+,AVERAGE-BANDWIDTH=\d+,CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.2",RESOLUTION=\d+x\d+,FRAME-RATE=29\.970,AUDIO="audio-mp4a\.40\.2")")));
  CHECK(master.find("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-mp4a.40.2\",NAME=\"Audio 1\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"v1/audio-1/index.m3u8\"") != std::string::npos);
}

TEST_CASE("packaging while the ingest runs, with titles interleaved") {
  RequireBroker();
  Pipeline p;
  // The packager starts first and waits for the titles.
  std::thread packager([&] {
    auto r = Run(fmt::format("timeout 180 {} package --out {} --brokers {} --topic {} --group {} --until-complete a "
                             "--until-complete b --until-complete c",
                             kBin, Quote(p.out.path().string()), Brokers(), p.topic, p.group));
    CHECK_MESSAGE(r.exit_code == 0, r.output);
  });
  std::vector<std::thread> ingests;
  std::vector<CommandResult> results(3);
  const char* files[] = {"h264_aac.mp4", "h264_aac.mkv", "longgop.mp4"};
  const char* titles[] = {"a", "b", "c"};
  for (int i = 0; i < 3; ++i)
    ingests.emplace_back([&, i] { results[i] = p.Ingest(kMedia / files[i], titles[i], "--chunk-size 65536"); });
  for (auto& t : ingests) t.join();
  packager.join();
  for (int i = 0; i < 3; ++i) {
    CAPTURE(titles[i]);
    REQUIRE_MESSAGE(results[i].exit_code == 0, results[i].output);
    CheckTitle(kMedia / files[i], p.out.path() / titles[i]);
  }
}

TEST_CASE("bad inputs fail clearly and publish nothing") {
  RequireBroker();
  for (const char* f : {"empty.mp4", "random.bin", "text.mp4", "truncated.mp4", "vp9.webm", "h264_opus.mkv",
                        "does-not-exist.mp4"}) {
    CAPTURE(f);
    Pipeline p;
    auto r = p.Ingest(kMedia / f, "bad");
    CHECK(r.exit_code != 0);
    CHECK_MESSAGE(r.output.find(f) != std::string::npos, "the message names the file: " << r.output);
    CHECK(r.output.find("error") != std::string::npos);
    // Nothing reached the topic: it was never even created.
    auto topic = Run("kcat -b " + Brokers() + " -L -t " + p.topic + " -m 5");
    CHECK(topic.output.find("partition 0") == std::string::npos);
  }
  Pipeline p;
  auto hostile = p.Ingest(kMedia / "h264_aac.mp4", "../../etc");
  CHECK(hostile.exit_code == 2);
  CHECK(hostile.output.find("invalid title id") != std::string::npos);
}

TEST_CASE("run: ingest + package in one process, again into a fresh directory, prints the playlist") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("run");
  std::string first_tree;
  for (const char* dir : {"first", "second", "second"}) {
    // The second run finds the title complete in the topic: it publishes nothing and still packages it.
    auto r = RunStdout(fmt::format("timeout 120 {} run {} --title movie --out {} --brokers {} --topic {} 2>/dev/null",
                                   kBin, Quote((kMedia / "h264_aac.mp4").string()), Quote((work.path() / dir).string()),
                                   Brokers(), topic));
    CAPTURE(dir);
    REQUIRE(r.exit_code == 0);
    CHECK(r.output == (work.path() / dir / "movie/master.m3u8").string() + "\n");
    std::string tree = TreeDigest(work.path() / dir);
    if (first_tree.empty()) first_tree = tree;
    CHECK(tree == first_tree);
  }
}
