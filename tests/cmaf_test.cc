// CMAF (fragmented MP4) output through the real broker: two consumer groups
// package one topic as MPEG-TS and as fMP4 at once; the fMP4 tree is what HLS
// asks of it (version 7, EXT-X-MAP, init segments, .m4s fragments), decodes
// without a word in ffmpeg, keeps every sample's timestamps, and is the same
// bytes on every run and after re-packaging from the log.
#include <doctest/doctest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

void WriteFile(const fs::path& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
  REQUIRE(f.good());
}

std::vector<std::string> Package(const fs::path& out, const std::string& topic, const std::string& container,
                                 const std::vector<std::string>& titles) {
  std::vector<std::string> a = PackageArgs(out, topic, Unique("g-" + container), titles);
  a.insert(a.end(), {"--container", container});
  return a;
}

// The rendition directories of a title's version 1 ("v1/video-240p", ...), from its master's URIs.
std::vector<std::string> RenditionDirs(const fs::path& title) {
  std::vector<std::string> dirs;
  const std::string master = ReadFile(title / "master.m3u8");
  std::regex uri(R"((v1/[a-z0-9_-]+)/index\.m3u8)");
  for (std::sregex_iterator m(master.begin(), master.end(), uri), e; m != e; ++m) {
    const std::string d = (*m)[1];
    if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  }
  return dirs;
}

// A rendition's media as one file: the TS segments back to back, or the init
// segment followed by every fragment (what a player appends to its buffer).
fs::path Joined(const fs::path& dir, const fs::path& into) {
  const std::string playlist = ReadFile(dir / "index.m3u8");
  std::string all;
  std::smatch map;
  if (std::regex_search(playlist, map, std::regex(R"re(#EXT-X-MAP:URI="([^"]+)")re"))) all += ReadFile(dir / map[1].str());
  for (const std::string& seg : PlaylistSegments(playlist)) all += ReadFile(dir / seg);
  WriteFile(into, all);
  return into;
}

// Every packet's pts and dts (seconds, as ffprobe prints them) of stream `select`.
std::string PacketTimes(const fs::path& file, const std::string& select) {
  const std::string raw = RunStdout("ffprobe -v error -select_streams " + select +
                                    " -show_entries packet=pts_time,dts_time -of csv=p=0 " + Quote(file.string()))
                              .output;
  // "pts,dts" per packet (ffprobe adds an empty field and a blank line where a TS packet has side data).
  std::string out;
  std::istringstream in(raw);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && line.back() == ',') line.pop_back();
    if (!line.empty()) out += line + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("one topic, two groups: an MPEG-TS tree and a CMAF tree of the same title at once") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("cmaf");
  // Two variants, two audio languages, embedded and sidecar subtitles.
  REQUIRE(RunToEnd({kBin, "ingest", (kMedia / "multilang.mkv").string(), (kMedia / "ladder_b.mp4").string(), "--title",
                    "movie", "--brokers", Brokers(), "--topic", topic, "--segment-duration", "2", "--subtitles",
                    (kMedia / "sidecar.fr.vtt").string()},
                   work.path() / "ingest.log") == 0);
  const fs::path ts_out = work.path() / "ts", cmaf_out = work.path() / "cmaf";
  Child ts_packager(Package(ts_out, topic, "ts", {"movie"}), work.path() / "ts.log");
  Child cmaf_packager(Package(cmaf_out, topic, "fmp4", {"movie"}), work.path() / "cmaf.log");
  CHECK(ts_packager.Wait() == 0);
  REQUIRE_MESSAGE(cmaf_packager.Wait() == 0, ReadFile(work.path() / "cmaf.log"));

  const fs::path ts_title = ts_out / "movie", cmaf_title = cmaf_out / "movie";
  // The same renditions, rates aside (fragments are not TS packets): CODECS, groups and names match.
  const Master ts_master = ParseMaster(ReadFile(ts_title / "master.m3u8"));
  const Master cmaf_master = ParseMaster(ReadFile(cmaf_title / "master.m3u8"));
  REQUIRE(ts_master.variants.size() == cmaf_master.variants.size());
  for (size_t i = 0; i < ts_master.variants.size(); ++i) {
    CHECK(ts_master.variants[i].attrs.at("CODECS") == cmaf_master.variants[i].attrs.at("CODECS"));
    CHECK(ts_master.variants[i].uri == cmaf_master.variants[i].uri);
  }
  CHECK(ts_master.media.size() == cmaf_master.media.size());

  const std::vector<std::string> dirs = RenditionDirs(cmaf_title);
  REQUIRE(dirs.size() == 7);  // 2 video, 2 audio, 3 subtitles
  for (const std::string& d : dirs) {
    CAPTURE(d);
    const std::string playlist = ReadFile(cmaf_title / d / "index.m3u8");
    const std::string ts_playlist = ReadFile(ts_title / d / "index.m3u8");
    const std::vector<std::string> segments = PlaylistSegments(playlist);
    REQUIRE(!segments.empty());
    CHECK(segments.size() == PlaylistSegments(ts_playlist).size());
    CHECK(PlaylistDuration(playlist) == doctest::Approx(PlaylistDuration(ts_playlist)).epsilon(1e-9));
    if (d.find("subs-") != std::string::npos) {
      // Subtitles stay WebVTT, byte for byte.
      CHECK(playlist.find("#EXT-X-MAP") == std::string::npos);
      for (const std::string& s : segments) CHECK(ReadFile(cmaf_title / d / s) == ReadFile(ts_title / d / s));
      continue;
    }
    CHECK(playlist.find("#EXT-X-VERSION:7\n") != std::string::npos);
    // One init segment, named before the first fragment.
    const auto map = playlist.find("#EXT-X-MAP:URI=\"init.mp4\"\n");
    REQUIRE(map != std::string::npos);
    CHECK(map < playlist.find("#EXTINF"));
    CHECK(playlist.find("#EXT-X-MAP", map + 1) == std::string::npos);
    CHECK(ReadFile(cmaf_title / d / "init.mp4").substr(4, 4) == "ftyp");
    for (size_t i = 0; i < segments.size(); ++i) {
      CHECK(segments[i] == fmt::format("seg-{:06d}.m4s", i));
      const std::string frag = ReadFile(cmaf_title / d / segments[i]);
      REQUIRE(frag.size() > 16);
      CHECK(frag.substr(4, 4) == "moof");
    }
    // ffmpeg decodes the rendition without a word, and (copying) sees timestamps only go forward.
    for (const char* mode : {"", "-c copy "}) {
      auto r = Run(fmt::format("ffmpeg -nostdin -v error -i {} -map 0 {}-f null -",
                               Quote((cmaf_title / d / "index.m3u8").string()), mode));
      CHECK_MESSAGE(r.exit_code == 0, r.output);
      CHECK_MESSAGE(r.output.empty(), r.output);
    }
    // Every sample keeps its decode and presentation time: the fMP4 rendition is the TS
    // rendition's timeline exactly, so audio and video stay in sync across containers.
    const std::string slug = d.substr(3);
    const fs::path joined_cmaf = Joined(cmaf_title / d, work.path() / (slug + ".mp4"));
    const fs::path joined_ts = Joined(ts_title / d, work.path() / (slug + ".ts"));
    const std::string select = d.find("video-") != std::string::npos ? "v:0" : "a:0";
    const std::string cmaf_times = PacketTimes(joined_cmaf, select), ts_times = PacketTimes(joined_ts, select);
    CHECK(!cmaf_times.empty());
    CHECK(cmaf_times == ts_times);
    CHECK(TrackDuration(joined_cmaf.string(), select) ==
          doctest::Approx(TrackDuration(joined_ts.string(), select)).epsilon(0.0001));
  }
  // The whole title through the master, as a player opens it.
  auto r = Run("ffmpeg -nostdin -v error -i " + Quote((cmaf_title / "master.m3u8").string()) + " -map 0 -f null -");
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK_MESSAGE(r.output.empty(), r.output);

  // Determinism: re-packaging from the log gives the same bytes, state included.
  const fs::path again = work.path() / "again";
  auto re = Run(fmt::format("{} repackage --title movie --out {} --brokers {} --topic {} --container fmp4", kBin,
                            Quote(again.string()), Brokers(), topic));
  REQUIRE_MESSAGE(re.exit_code == 0, re.output);
  CHECK(TreeDigest(again) == TreeDigest(cmaf_out));

  // One tree holds one container: packaging fMP4 into the TS tree is refused, and says why.
  auto mixed = Run(fmt::format("timeout 60 {} package --out {} --brokers {} --topic {} --group {} --until-complete "
                               "movie --container fmp4",
                               kBin, Quote(ts_out.string()), Brokers(), topic, Unique("mixed")));
  CHECK(mixed.exit_code != 0);
  CHECK_MESSAGE(mixed.output.find("title 'movie' in '" + ts_out.string() + "' is packaged as ts; this packager "
                                  "writes fmp4") != std::string::npos,
                mixed.output);
}
