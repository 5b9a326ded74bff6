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

namespace {

// The pictures ffprobe decodes from `file` (its video), as pict_type letters.
std::vector<std::string> PictureTypes(const fs::path& file, std::string* errors) {
  auto r = RunStdout("ffprobe -v error -select_streams v -show_entries frame=pict_type -of csv=p=0 " +
                     Quote(file.string()) + " 2>" + Quote(file.string() + ".err"));
  *errors = ReadFile(file.string() + ".err");
  std::vector<std::string> out;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    line = line.substr(0, line.find(','));  // side data adds fields
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

// Keyframes of the video of a rendition's TS segments (ffprobe's K flag), per segment.
size_t KeyPackets(const fs::path& ts) {
  auto r = RunStdout("ffprobe -v error -select_streams v:0 -show_entries packet=flags -of csv=p=0 " +
                     Quote(ts.string()));
  size_t n = 0;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) n += line.find('K') != std::string::npos;
  return n;
}

std::string Slice(const std::string& data, uint64_t offset, uint64_t length) {
  REQUIRE(offset + length <= data.size());
  return data.substr(offset, length);
}

}  // namespace

TEST_CASE("HEVC in fMP4, segment independence, and I-frame playlists in both containers") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("iframes");
  // H.264 (closed GOPs, IDR every 2 s); HEVC with closed GOPs; HEVC with open GOPs (CRA + RASL
  // pictures that reference the GOP before: its segments after the first are not independent).
  for (const char* name : {"h264_aac", "hevc_closed", "hevc_open"})
    REQUIRE(RunToEnd({kBin, "ingest", (kMedia / (std::string(name) + ".mp4")).string(), "--title", name, "--brokers",
                      Brokers(), "--topic", topic},
                     work.path() / (std::string(name) + ".log")) == 0);
  const fs::path ts_out = work.path() / "ts", cmaf_out = work.path() / "cmaf";
  for (const auto& [out, container] : {std::pair{ts_out, "ts"}, std::pair{cmaf_out, "fmp4"}}) {
    auto r = Run(fmt::format("{} repackage --all --out {} --brokers {} --topic {} --container {}", kBin,
                             Quote(out.string()), Brokers(), topic, container));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    if (std::string(container) == "ts")
      CHECK_MESSAGE(r.output.find("is HEVC (hvc1.1.6.L63.90) in MPEG-TS, which Safari and hls.js do not play") !=
                        std::string::npos,
                    r.output);
    CHECK_MESSAGE(r.output.find("title 'hevc_open' rendition 'video-360p' segment 1 does not start with a picture "
                                "that decodes alone (first picture's NAL type 21") != std::string::npos,
                  r.output);
  }

  for (const fs::path& out : {ts_out, cmaf_out}) {
    const bool cmaf = out == cmaf_out;
    for (const char* title : {"h264_aac", "hevc_closed", "hevc_open"}) {
      CAPTURE(out);
      CAPTURE(title);
      const std::string master_text = ReadFile(out / title / "master.m3u8");
      const Master master = ParseMaster(master_text);
      const std::string media = ReadFile(out / title / master.variants.at(0).uri);
      // Only the open-GOP title loses the claim, in the master and in every media playlist.
      const bool open_gop = std::string(title) == "hevc_open";
      CHECK((master_text.find("#EXT-X-INDEPENDENT-SEGMENTS") == std::string::npos) == open_gop);
      CHECK((media.find("#EXT-X-INDEPENDENT-SEGMENTS") == std::string::npos) == open_gop);

      // One I-frame stream per video variant, with the video's codec and resolution.
      REQUIRE(master.iframe_variants.size() == 1);
      const auto& iv = master.iframe_variants[0];
      CHECK(iv.at("CODECS") == master.variants[0].attrs.at("CODECS").substr(0, iv.at("CODECS").size()));
      CHECK(iv.at("CODECS").find("mp4a") == std::string::npos);
      CHECK(iv.at("RESOLUTION") == master.variants[0].attrs.at("RESOLUTION"));
      const fs::path iframes_path = out / title / iv.at("URI");
      const fs::path dir = iframes_path.parent_path();
      const std::string text = ReadFile(iframes_path);
      CHECK(text.find("#EXT-X-I-FRAMES-ONLY\n") != std::string::npos);
      CHECK(text.find(cmaf ? "#EXT-X-VERSION:7\n" : "#EXT-X-VERSION:5\n") != std::string::npos);
      CHECK(text.find("#EXT-X-ENDLIST") != std::string::npos);
      const std::vector<IFrameEntry> entries = ParseIFramePlaylist(text);
      REQUIRE(!entries.empty());
      // The I-frames cover the timeline: their durations add up to the media playlist's.
      double total = 0, peak = 0;
      for (const IFrameEntry& e : entries) {
        total += e.duration;
        peak = std::max(peak, e.length * 8 / e.duration);
      }
      CHECK(total == doctest::Approx(PlaylistDuration(media)).epsilon(1e-6));
      CHECK(std::stod(iv.at("BANDWIDTH")) == doctest::Approx(peak).epsilon(0.001));

      // Every byte range, after its map, decodes to exactly one picture, an I picture.
      size_t n = 0;
      for (const IFrameEntry& e : entries) {
        CAPTURE(e.uri);
        CAPTURE(e.offset);
        const std::string file = ReadFile(dir / e.uri);
        std::string map = ReadFile(dir / e.map_uri);
        if (e.map_range) map = Slice(map, e.map_range->second, e.map_range->first);
        std::string range = Slice(file, e.offset, e.length);
        if (!cmaf) {
          // TS: whole packets, the map is the segment's own PAT and PMT, the range starts the picture's PES.
          REQUIRE(e.map_range);
          CHECK(e.map_uri == e.uri);
          CHECK(e.map_range->second == 0);
          CHECK(e.map_range->first % 188 == 0);
          CHECK(e.offset % 188 == 0);
          CHECK(e.length % 188 == 0);
          CHECK((static_cast<uint8_t>(range[1]) & 0x40) != 0);  // payload_unit_start_indicator
        } else {
          CHECK(e.map_uri.starts_with("init"));
          CHECK(range.substr(4, 4) == "moof");
        }
        const fs::path probe = work.path() / fmt::format("probe-{}", n++);
        {
          std::ofstream f(probe, std::ios::binary);
          f << map << range;
        }
        std::string errors;
        CHECK(PictureTypes(probe, &errors) == std::vector<std::string>{"I"});
        // An fMP4 I-frame is cut after its fragment's first sample (as HLS means it to be): the
        // MP4 demuxer says the rest of the fragment is missing, and that is all it may say.
        std::istringstream lines(errors);
        for (std::string line; std::getline(lines, line);)
          CHECK_MESSAGE((cmaf && line.find("partial file") != std::string::npos), line);
      }
      if (!cmaf) {
        // TS: every keyframe of the rendition is an I-frame of the playlist.
        size_t keys = 0;
        for (const std::string& seg : PlaylistSegments(media)) keys += KeyPackets(dir / seg);
        CHECK(entries.size() == keys);
        CHECK(entries.size() > PlaylistSegments(media).size());
      } else {
        CHECK(entries.size() == PlaylistSegments(media).size());  // one fragment per segment
      }
    }
  }

  // HEVC as CMAF: hvc1 sample entries, and players decode it to the end. This Chromium has no
  // HEVC decoder (MediaSource.isTypeSupported says so below), so hls.js and Shaka cannot be
  // the judges here: ffmpeg and GStreamer are.
  for (const char* title : {"hevc_closed", "hevc_open"}) {
    CAPTURE(title);
    const fs::path t = cmaf_out / title;
    const Master master = ParseMaster(ReadFile(t / "master.m3u8"));
    CHECK(master.variants.at(0).attrs.at("CODECS") == "hvc1.1.6.L63.90,mp4a.40.2");
    const std::string init = ReadFile(t / "v1/video-360p/init.mp4");
    CHECK(init.find("hvc1") != std::string::npos);
    CHECK(init.find("hvcC") != std::string::npos);
    auto r = Run("ffmpeg -nostdin -v error -i " + Quote((t / "master.m3u8").string()) + " -map 0 -f null -");
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    CHECK_MESSAGE(r.output.empty(), r.output);
    // playbin3 + hlsdemux2 over HTTP, to EOS, every frame identical to ffmpeg's decode of the source.
    auto g = Run("bash " + Quote((kSource / "tests/player/gst_play.sh").string()) + " --ref " +
                 Quote((kMedia / (std::string(title) + ".mp4")).string()) + " " + Quote((t / "master.m3u8").string()) +
                 " 120");
    CHECK_MESSAGE(g.exit_code == 0, g.output);
    CHECK_MESSAGE(g.output.find("frames identical") != std::string::npos, g.output);
  }
  auto mse = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                       Quote((kSource / "tests/player/mse_support.mjs").string()) +
                       " 'video/mp4; codecs=\"hvc1.1.6.L63.90\"' 'video/mp4; codecs=\"avc1.64000d\"'");
  REQUIRE_MESSAGE(mse.exit_code == 0, mse.output);
  CHECK(mse.output.find("\"video/mp4; codecs=\\\"avc1.64000d\\\"\":true") != std::string::npos);
  MESSAGE("Chromium MediaSource.isTypeSupported: " << mse.output);
}
