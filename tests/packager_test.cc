#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "khls/engine.h"
#include "khls/playlist.h"
#include "rendition_util.h"
#include "test_util.h"

using namespace khls;
using namespace khls::packager;
namespace fs = std::filesystem;

namespace {

using proto::Rendition;
using proto::RenditionKind;

using test::Audio;
using test::Subs;
using test::Video;

// A format-1 title's one rendition, as the decoder makes it.
Rendition Muxed(std::string codecs = "avc1.640028,mp4a.40.2") {
  Rendition d = Video("", 1920, 1080, std::move(codecs));
  d.muxed_audio = true;
  d.fps_num = 30000;
  d.fps_den = 1001;
  d.est_peak_bps = 5'500'000;
  d.est_avg_bps = 5'000'000;
  return d;
}

TitleState SampleState(std::vector<Rendition> renditions = {Muxed()}) {
  TitleState s;
  s.title = "movie";
  s.runs = {"00112233445566778899aabbccddeeff"};
  s.start.title = "movie";
  s.start.target_duration_s = 6;
  s.start.segment_duration_ms = 6000;
  s.start.renditions = std::move(renditions);
  for (size_t r = 0; r < s.start.renditions.size(); ++r)
    s.segments.push_back({{0, 540540, 3'000'000 / (r + 1), "aa"}, {1, 540540, 3'100'000 / (r + 1), "bb"},
                          {2, 180180, 1'000'000 / (r + 1), "cc"}});
  return s;
}

std::vector<Rendition> TwoRenditions() { return {Video("video-240p", 320, 240), Audio("audio-en", "en", "English", true)}; }

proto::TitleStart Start(const std::string& title, proto::RunId run, uint8_t fingerprint = 1, uint32_t version = 1,
                        std::vector<Rendition> renditions = TwoRenditions()) {
  proto::TitleStart t;
  t.title = title;
  t.title_version = version;
  t.run_id = run;
  t.target_duration_s = 2;
  t.segment_duration_ms = 2000;
  t.renditions = std::move(renditions);
  t.source_fingerprint[0] = fingerprint;
  return t;
}

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// A whole title: start, `n` segment groups (each rendition's segment in 3 chunks of 2048 bytes), end.
std::vector<std::vector<uint8_t>> TitleRecords(const std::string& title, proto::RunId run, int n, uint8_t fp = 1,
                                               uint32_t version = 1,
                                               std::vector<Rendition> renditions = TwoRenditions()) {
  const size_t count = renditions.size();
  std::vector<std::vector<uint8_t>> out{proto::Encode(Start(title, run, fp, version, std::move(renditions)))};
  for (int i = 0; i < n; ++i) {
    for (size_t r = 0; r < count; ++r) {
      auto data = Bytes(5000 + i * 100, fp * 100 + i * 10 + static_cast<uint32_t>(r));
      for (auto& rec : proto::EncodeSegment({title, run, static_cast<uint16_t>(r), static_cast<uint32_t>(i), 0, 180000},
                                            data, 2048))
        out.push_back(std::move(rec));
    }
  }
  proto::TitleEnd end{title, run, static_cast<uint32_t>(n), 180000ull * n, {}};
  end.renditions.resize(count);
  out.push_back(proto::Encode(end));
  return out;
}

// Records of a TitleRecords() title up to and including segment group `groups` - 1.
size_t Through(int groups, size_t renditions = 2) { return 1 + static_cast<size_t>(groups) * renditions * 3; }

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Records as tests/fixtures/v1/records.bin keeps them: u32 key length, key, u32 value length, value.
std::vector<std::pair<std::string, std::vector<uint8_t>>> ReadFixture(const fs::path& file) {
  std::string all = Slurp(file);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  size_t pos = 0;
  auto u32 = [&] {
    REQUIRE(pos + 4 <= all.size());
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(all[pos++]);
    return v;
  };
  while (pos < all.size()) {
    const uint32_t klen = u32();
    std::string key = all.substr(pos, klen);
    pos += klen;
    const uint32_t vlen = u32();
    REQUIRE(pos + vlen <= all.size());
    out.emplace_back(key, std::vector<uint8_t>(all.begin() + pos, all.begin() + pos + vlen));
    pos += vlen;
  }
  return out;
}

std::string WithoutState(const std::string& digest) {
  std::string out;
  std::istringstream in(digest);
  for (std::string line; std::getline(in, line);)
    if (line.find(".state.json") == std::string::npos) out += line + "\n";
  return out;
}

}  // namespace

TEST_CASE("media playlist text, growing and complete") {
  TitleState s = SampleState(TwoRenditions());
  CHECK(RenderMediaPlaylist(s, 0) ==
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-TARGETDURATION:6\n"
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-PLAYLIST-TYPE:EVENT\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXTINF:6.006000,\n"
        "seg-000000.ts\n"
        "#EXTINF:6.006000,\n"
        "seg-000001.ts\n"
        "#EXTINF:2.002000,\n"
        "seg-000002.ts\n");
  // A group is listed once every rendition has its segment.
  s.segments[1].pop_back();
  CHECK(RenderMediaPlaylist(s, 0).ends_with("seg-000001.ts\n"));
  CHECK(RenderMediaPlaylist(s, 1).ends_with("seg-000001.ts\n"));
  s.segments[1].push_back({2, 180180, 1000, "dd"});
  s.start.start_offset = 7200;  // two frames of B-frame delay at 25 fps
  CHECK(RenderMediaPlaylist(s, 1).find("#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-START:TIME-OFFSET=0.080,PRECISE=YES\n#EXTINF:") !=
        std::string::npos);
  s.complete = true;
  std::string vod = RenderMediaPlaylist(s, 0);
  CHECK(vod.find("#EXT-X-PLAYLIST-TYPE:VOD\n") != std::string::npos);
  CHECK(vod.ends_with("seg-000002.ts\n#EXT-X-ENDLIST\n"));

  TitleState subs = SampleState({Video("video-240p", 320, 240), Subs("subs-en", "en", "English")});
  CHECK(RenderMediaPlaylist(subs, 1).find("#EXTINF:6.006000,\nseg-000000.vtt\n") != std::string::npos);
}

TEST_CASE("master playlist text: a format-1 title is written as kafka-hls 0.1 wrote it") {
  TitleState s = SampleState();
  CHECK(RenderMasterPlaylist(s) ==
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=5500000,AVERAGE-BANDWIDTH=5000000,CODECS=\"avc1.640028,mp4a.40.2\","
        "RESOLUTION=1920x1080,FRAME-RATE=29.970\n"
        "v1/index.m3u8\n");
  s.complete = true;
  s.version = 2;
  // Measured: peak 3.1 MB in 6.006 s, average 7.1 MB in 14.014 s.
  CHECK(RenderMasterPlaylist(s).find("BANDWIDTH=4129204,AVERAGE-BANDWIDTH=4053090,") != std::string::npos);
  CHECK(RenderMasterPlaylist(s).ends_with("\nv2/index.m3u8\n"));
  CHECK(RenderMediaPlaylist(s, 0).find("\nseg-000000.ts\n") != std::string::npos);

  Rendition audio_only = Muxed("mp4a.40.2");
  audio_only.kind = RenditionKind::kAudio;
  audio_only.muxed_audio = false;
  audio_only.width = audio_only.height = audio_only.fps_num = 0;
  TitleState audio = SampleState({audio_only});
  CHECK(RenderMasterPlaylist(audio) ==
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=5500000,AVERAGE-BANDWIDTH=5000000,CODECS=\"mp4a.40.2\"\nv1/index.m3u8\n");
}

TEST_CASE("master playlist text: variants, audio groups per codec, subtitles") {
  std::vector<Rendition> rs = {Video("video-360p", 640, 360, "avc1.64001e"), Video("video-180p", 320, 180, "avc1.64000d"),
                               Audio("audio-en", "en", "English", false), Audio("audio-fr", "fr", "Français", true),
                               Audio("audio-en-2", "en", "English 5.1", false, "ac-3", 6),
                               Subs("subs-en", "en", "English")};
  const uint64_t est[][2] = {{800'000, 700'000}, {200'000, 180'000}, {100'000, 96'000},
                             {101'000, 97'000},  {400'000, 384'000}, {200, 100}};
  for (size_t i = 0; i < rs.size(); ++i) rs[i].est_peak_bps = est[i][0], rs[i].est_avg_bps = est[i][1];
  rs[5].forced = false;
  rs[2].characteristics = "public.accessibility.describes-video";
  TitleState s = SampleState(rs);
  for (auto& list : s.segments)
    for (auto& e : list) e.size = 100;  // the first segment's rate stays below the estimates
  s.start.renditions[2].autoselect = false;
  CHECK(RenderMasterPlaylist(s) ==
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-mp4a.40.2\",LANGUAGE=\"en\",NAME=\"English\",DEFAULT=NO,AUTOSELECT=NO,"
        "CHARACTERISTICS=\"public.accessibility.describes-video\",CHANNELS=\"2\",URI=\"v1/audio-en/index.m3u8\"\n"
        "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-mp4a.40.2\",LANGUAGE=\"fr\",NAME=\"Français\",DEFAULT=YES,AUTOSELECT=YES,"
        "CHANNELS=\"2\",URI=\"v1/audio-fr/index.m3u8\"\n"
        "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-ac-3\",LANGUAGE=\"en\",NAME=\"English 5.1\",DEFAULT=YES,AUTOSELECT=YES,"
        "CHANNELS=\"6\",URI=\"v1/audio-en-2/index.m3u8\"\n"
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",LANGUAGE=\"en\",NAME=\"English\",DEFAULT=NO,AUTOSELECT=YES,"
        "FORCED=NO,URI=\"v1/subs-en/index.m3u8\"\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=901200,AVERAGE-BANDWIDTH=797100,CODECS=\"avc1.64001e,mp4a.40.2\","
        "RESOLUTION=640x360,FRAME-RATE=25.000,AUDIO=\"audio-mp4a.40.2\",SUBTITLES=\"subs\"\n"
        "v1/video-360p/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=1200200,AVERAGE-BANDWIDTH=1084100,CODECS=\"avc1.64001e,ac-3\","
        "RESOLUTION=640x360,FRAME-RATE=25.000,AUDIO=\"audio-ac-3\",SUBTITLES=\"subs\"\n"
        "v1/video-360p/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=301200,AVERAGE-BANDWIDTH=277100,CODECS=\"avc1.64000d,mp4a.40.2\","
        "RESOLUTION=320x180,FRAME-RATE=25.000,AUDIO=\"audio-mp4a.40.2\",SUBTITLES=\"subs\"\n"
        "v1/video-180p/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=600200,AVERAGE-BANDWIDTH=564100,CODECS=\"avc1.64000d,ac-3\","
        "RESOLUTION=320x180,FRAME-RATE=25.000,AUDIO=\"audio-ac-3\",SUBTITLES=\"subs\"\n"
        "v1/video-180p/index.m3u8\n");

  // Without video: one variant per audio group, pointing at the group's default.
  TitleState radio = SampleState({Audio("audio-en", "en", "English", false), Audio("audio-de", "de", "Deutsch", false)});
  for (auto& d : radio.start.renditions) d.est_peak_bps = 128'000, d.est_avg_bps = 0;
  CHECK(RenderMasterPlaylist(radio) ==
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-mp4a.40.2\",LANGUAGE=\"en\",NAME=\"English\",DEFAULT=YES,AUTOSELECT=YES,"
        "CHANNELS=\"2\",URI=\"v1/audio-en/index.m3u8\"\n"
        "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio-mp4a.40.2\",LANGUAGE=\"de\",NAME=\"Deutsch\",DEFAULT=NO,AUTOSELECT=YES,"
        "CHANNELS=\"2\",URI=\"v1/audio-de/index.m3u8\"\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=3996003,AVERAGE-BANDWIDTH=3996003,CODECS=\"mp4a.40.2\",AUDIO=\"audio-mp4a.40.2\"\n"
        "v1/audio-en/index.m3u8\n");
}

TEST_CASE("I-frame playlists: byte ranges, durations to the next I-frame, the master's I-frame streams") {
  TitleState s = SampleState(TwoRenditions());
  // Segment 0: I-frames at 0 and 2.5 s; segment 1: at 0, 2, 4 s; segment 2: at 0 (1 I-frame).
  s.segments[0][0].iframes = std::vector<IFrame>{{376, 18800, 0}, {150400, 9400, 225000}};
  s.segments[0][1].iframes = std::vector<IFrame>{{376, 9400, 0}, {9776, 9400, 180000}, {19176, 9400, 360000}};
  s.segments[0][2].iframes = std::vector<IFrame>{{376, 1880, 0}};
  for (SegmentEntry& e : s.segments[0]) e.iframe_map = 376;
  REQUIRE(HasIFramePlaylist(s, 0));
  CHECK_FALSE(HasIFramePlaylist(s, 1));  // audio
  const std::string growing = RenderIFramePlaylist(s, 0);
  CHECK(growing ==
        "#EXTM3U\n"
        "#EXT-X-VERSION:5\n"
        "#EXT-X-TARGETDURATION:6\n"
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-PLAYLIST-TYPE:EVENT\n"
        "#EXT-X-I-FRAMES-ONLY\n"
        "#EXT-X-MAP:URI=\"seg-000000.ts\",BYTERANGE=\"376@0\"\n"
        "#EXTINF:2.500000,\n#EXT-X-BYTERANGE:18800@376\nseg-000000.ts\n"
        "#EXTINF:3.506000,\n#EXT-X-BYTERANGE:9400@150400\nseg-000000.ts\n"
        "#EXT-X-MAP:URI=\"seg-000001.ts\",BYTERANGE=\"376@0\"\n"
        "#EXTINF:2.000000,\n#EXT-X-BYTERANGE:9400@376\nseg-000001.ts\n"
        "#EXTINF:2.000000,\n#EXT-X-BYTERANGE:9400@9776\nseg-000001.ts\n"
        "#EXTINF:2.006000,\n#EXT-X-BYTERANGE:9400@19176\nseg-000001.ts\n"
        "#EXT-X-MAP:URI=\"seg-000002.ts\",BYTERANGE=\"376@0\"\n"
        "#EXTINF:2.002000,\n#EXT-X-BYTERANGE:1880@376\nseg-000002.ts\n");
  // The master names it, with the video's codec alone, and its peak and average rate:
  // 18800 bytes over 2.5 s is the peak (60160 bit/s).
  const std::string master = RenderMasterPlaylist(s);
  CHECK(master.ends_with(
      "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=60160,AVERAGE-BANDWIDTH=33270,CODECS=\"avc1.42c01e\",RESOLUTION=320x240,"
      "URI=\"v1/video-240p/iframes.m3u8\"\n"));
  // Growing: what is listed never changes; complete: VOD with an end.
  s.complete = true;
  const std::string vod = RenderIFramePlaylist(s, 0);
  CHECK(vod.ends_with("seg-000002.ts\n#EXT-X-ENDLIST\n"));
  CHECK(vod.find(growing.substr(growing.find("#EXT-X-I-FRAMES-ONLY"))) != std::string::npos);

  // fMP4: the init segment is the map, one I-frame per segment.
  TitleState f = s;
  f.container = Container::kFmp4;
  f.init_digests = {"a", "b"};
  f.segments[0][0].map = "init.mp4";
  for (SegmentEntry& e : f.segments[0]) e.iframes = std::vector<IFrame>{{0, 4000, 0}};
  CHECK(RenderIFramePlaylist(f, 0).find("#EXT-X-VERSION:7\n") != std::string::npos);
  CHECK(RenderIFramePlaylist(f, 0).find("#EXT-X-I-FRAMES-ONLY\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:6.006000,\n"
                                        "#EXT-X-BYTERANGE:4000@0\nseg-000000.m4s\n#EXTINF:6.006000,") !=
        std::string::npos);

  // A segment that does not start with an I-frame would leave a hole in the timeline: no
  // I-frame playlist, and the master does not name one. Nor for a state without the index.
  s.segments[0][2].iframes = std::vector<IFrame>{{376, 1880, 3000}};
  CHECK_FALSE(HasIFramePlaylist(s, 0));
  CHECK(RenderMasterPlaylist(s).find("I-FRAME") == std::string::npos);
  s.segments[0][2].iframes.reset();
  CHECK_FALSE(HasIFramePlaylist(s, 0));
  // A format-1 (0.1) title never has one.
  CHECK_FALSE(HasIFramePlaylist(SampleState(), 0));

  // The I-frames survive the state file; ranges outside the segment do not parse.
  s.segments[0][2].iframes = std::vector<IFrame>{{376, 1880, 0}};
  auto parsed = ParseState(SerializeState(s));
  REQUIRE_MESSAGE(parsed.ok(), parsed.status().message());
  CHECK(*parsed == s);
  s.segments[0][2].iframes = std::vector<IFrame>{{376, 2'000'000, 0}};
  CHECK_FALSE(ParseState(SerializeState(s)).ok());
}

TEST_CASE("title state round trip, and state format 1 of kafka-hls 0.1") {
  TitleState s = SampleState({Video("video-360p", 640, 360), Audio("audio-fr", "fr", "Français", true),
                              Subs("subs-en", "en", "English")});
  s.start.run_id[3] = 7;
  s.start.source_fingerprint[15] = 9;
  s.start.source_name = "a \"quoted\" name.mkv";
  s.start.start_offset = 3003;
  s.start.renditions[2].forced = true;
  s.start.renditions[1].characteristics = "public.accessibility.describes-video";
  auto parsed = ParseState(SerializeState(s));
  REQUIRE(parsed.ok());
  CHECK(*parsed == s);
  TitleState legacy = SampleState();
  parsed = ParseState(SerializeState(legacy));
  REQUIRE(parsed.ok());
  CHECK(*parsed == legacy);
  CHECK_FALSE(ParseState("{").ok());
  CHECK_FALSE(ParseState(R"({"format": 1, "title": "../x"})").ok());
  CHECK_FALSE(ParseState(R"({"format": 3, "title": "x"})").ok());
  std::string evil = SerializeState(s);
  evil.replace(evil.find("\"video-360p\""), 12, "\"../../etc\"");
  CHECK_FALSE(ParseState(evil).ok());

  // What the 0.1 packager wrote for a complete two-version title.
  auto old = ParseState(Slurp(fs::path(KHLS_SOURCE_DIR) / "tests/fixtures/v1/state_format1.json"));
  REQUIRE_MESSAGE(old.ok(), old.status().message());
  CHECK(old->title == "fixture");
  CHECK(old->version == 2);
  CHECK(old->complete);
  REQUIRE(old->start.renditions.size() == 1);
  CHECK(old->start.renditions[0].id.empty());
  CHECK(old->start.renditions[0].muxed_audio);
  CHECK(old->start.renditions[0].codecs == "avc1.64000a,mp4a.40.2");
  CHECK(old->RenditionDir(0) == "v2");
  CHECK(old->ListedCount() == 3);
}

TEST_CASE("engine builds a title from records, byte-identically on replay") {
  test::TempDir a, b;
  auto run = proto::NewRunId();
  auto records = TitleRecords("film", run, 3);

  Engine e(*OutputStore::Open(a.path()), {});
  bool completed = false;
  for (size_t i = 0; i < records.size(); ++i) {
    auto o = e.OnRecord("film", records[i]);
    REQUIRE(o.ok());
    completed |= o->title_completed;
    // A playlist never lists a segment that is not on disk, and lists a group only once all of it is.
    for (const char* r : {"video-240p", "audio-en"}) {
      const fs::path pl_path = a.path() / "film/v1" / r / "index.m3u8";
      if (!fs::exists(pl_path)) continue;
      std::string pl = Slurp(pl_path);
      for (int g = 0; g < 3; ++g) {
        if (pl.find(SegmentFileName(g)) == std::string::npos) continue;
        CHECK(fs::exists(a.path() / "film/v1/video-240p" / SegmentFileName(g)));
        CHECK(fs::exists(a.path() / "film/v1/audio-en" / SegmentFileName(g)));
      }
    }
    // Mid-group: the video segment of group 0 is on disk, its audio is not: nothing listed.
    if (i == Through(0) + 3) {
      CHECK(fs::exists(a.path() / "film/v1/video-240p" / SegmentFileName(0)));
      CHECK_FALSE(fs::exists(a.path() / "film/v1/video-240p/index.m3u8"));
      CHECK_FALSE(fs::exists(a.path() / "film/master.m3u8"));
    }
  }
  CHECK(completed);
  CHECK(e.IsComplete("film"));
  CHECK(e.stats().segments_written == 6);
  std::string media = Slurp(a.path() / "film/v1/audio-en/index.m3u8");
  CHECK(media.find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(media.find("#EXT-X-TARGETDURATION:2\n") != std::string::npos);
  std::string master = Slurp(a.path() / "film/master.m3u8");
  CHECK(master.find("\nv1/video-240p/index.m3u8\n") != std::string::npos);
  CHECK(master.find("URI=\"v1/audio-en/index.m3u8\"") != std::string::npos);
  CHECK(Slurp(a.path() / "film/v1/audio-en/seg-000001.ts").size() == 5100);

  // Everything delivered twice (a crash before the offset commit): nothing changes.
  Engine again(*OutputStore::Open(a.path()), {});
  for (auto& r : records) REQUIRE(again.OnRecord("film", r).ok());
  CHECK(again.stats().segments_written == 0);
  CHECK(again.stats().duplicates_skipped == records.size());

  // A second, independent output (another origin) is byte-identical.
  Engine other(*OutputStore::Open(b.path()), {});
  for (auto& r : records) REQUIRE(other.OnRecord("film", r).ok());
  CHECK(test::TreeDigest(a.path()) == test::TreeDigest(b.path()));
  CHECK_FALSE(test::TreeDigest(a.path()).empty());
}

TEST_CASE("format-1 records from a real broker package to exactly the tree kafka-hls 0.1 wrote") {
  const fs::path fixture = fs::path(KHLS_SOURCE_DIR) / "tests/fixtures/v1";
  auto records = ReadFixture(fixture / "records.bin");
  REQUIRE(records.size() == 74);
  const std::string expected = Slurp(fixture / "expected_tree.txt");
  for (Batching batching : {Batching{}, kBackgroundBatching}) {
    test::TempDir d;
    Engine e(*OutputStore::Open(d.path()), {}, batching);
    for (const auto& [key, value] : records) REQUIRE(e.OnRecord(key, value).ok());
    REQUIRE(e.Flush().ok());
    CHECK(e.stats().rejected == 0);
    CHECK(e.IsComplete("fixture"));
    CHECK(e.IsComplete("other"));
    CHECK_FALSE(e.IsComplete("partial"));
    CHECK(WithoutState(test::TreeDigest(d.path())) == expected);
  }

  // A packager upgraded in place continues from the 0.1 state files: nothing to redo.
  test::TempDir d;
  fs::create_directories(d.path() / "fixture");
  fs::create_directories(d.path() / "partial");
  fs::copy_file(fixture / "state_format1.json", d.path() / "fixture/.state.json");
  fs::copy_file(fixture / "state_format1_partial.json", d.path() / "partial/.state.json");
  {
    // The 0.1 packager's segment files (the engine does not rewrite what its state lists).
    test::TempDir full;
    Engine e(*OutputStore::Open(full.path()), {});
    for (const auto& [key, value] : records) REQUIRE(e.OnRecord(key, value).ok());
    for (const char* f : {"fixture/v1/index.m3u8", "fixture/v1/seg-000000.ts", "fixture/v1/seg-000001.ts", "fixture/v1/seg-000002.ts",
                          "fixture/v2/seg-000000.ts", "fixture/v2/seg-000001.ts", "fixture/v2/seg-000002.ts",
                          "partial/v1/seg-000000.ts"}) {
      fs::create_directories((d.path() / f).parent_path());
      fs::copy_file(full.path() / f, d.path() / f);
    }
  }
  Engine e(*OutputStore::Open(d.path()), {});
  for (const auto& [key, value] : records)
    if (key != "other") REQUIRE(e.OnRecord(key, value).ok());
  CHECK(e.stats().segments_written == 0);
  CHECK(e.stats().rejected == 0);
  std::string want;
  std::istringstream in(expected);
  for (std::string line; std::getline(in, line);)
    if (!line.starts_with("other/")) want += line + "\n";
  CHECK(WithoutState(test::TreeDigest(d.path())) == want);
  CHECK(Slurp(d.path() / "fixture/.state.json").find("\"format\": 2") != std::string::npos);
}

TEST_CASE("engine: a re-run of the same source continues, a new source becomes a new version") {
  test::TempDir d;
  Engine e(*OutputStore::Open(d.path()), {});
  auto first = TitleRecords("t", proto::NewRunId(), 4);
  // The first run dies after two segment groups.
  for (size_t i = 0; i < Through(2); ++i) REQUIRE(e.OnRecord("t", first[i]).ok());
  CHECK_FALSE(e.IsComplete("t"));
  auto rerun = TitleRecords("t", proto::NewRunId(), 4);
  for (auto& r : rerun) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(e.IsComplete("t"));
  CHECK(e.stats().segments_written == 8);
  std::string media = Slurp(d.path() / "t/v1/video-240p/index.m3u8");
  // Header (random bytes are no video a player can start at: no EXT-X-INDEPENDENT-SEGMENTS), 4 EXTINF, ENDLIST.
  CHECK(std::count(media.begin(), media.end(), '#') == 5 + 4 + 1);
  CHECK(media.find("INDEPENDENT") == std::string::npos);

  // Another source under the same version (two ingests raced): the first one stands.
  const auto before = test::TreeDigest(d.path());
  auto racer = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/3);
  for (auto& r : racer) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(test::TreeDigest(d.path()) == before);
  CHECK(e.stats().rejected == 1);  // its title start; its other records belong to no known run

  auto replacement = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/2, /*version=*/2,
                                  {Audio("audio-de", "de", "Deutsch", true)});
  for (auto& r : replacement) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(Slurp(d.path() / "t/master.m3u8").find("v2/audio-de/index.m3u8") != std::string::npos);
  CHECK(fs::exists(d.path() / "t/v1/video-240p/seg-000003.ts"));  // the old version stays for players that have it
  CHECK(fs::exists(d.path() / "t/v2/audio-de/seg-000001.ts"));
  // An old version's start replayed after the new one is stale: skipped.
  const uint64_t skipped = e.stats().duplicates_skipped;
  REQUIRE(e.OnRecord("t", first[0]).ok());
  CHECK(e.stats().rejected == 1);
  CHECK(e.stats().duplicates_skipped == skipped + 1);
  CHECK(Slurp(d.path() / "t/master.m3u8").find("v2/audio-de/index.m3u8") != std::string::npos);
}

TEST_CASE("engine: hostile and malformed records are skipped, nothing leaves the root") {
  test::TempDir d;
  fs::path root = d.path() / "out";
  Engine e(*OutputStore::Open(root), {.max_segment_bytes = 1 << 20, .max_buffered_bytes = 2 << 20});

  auto run = proto::NewRunId();
  // Random bytes, a wrong key, chunks without a start, a chunk claiming a 5 TB segment.
  REQUIRE(e.OnRecord("x", Bytes(100, 1)).ok());
  REQUIRE(e.OnRecord("../../x", proto::Encode(Start("x", run))).ok());
  auto orphan = proto::EncodeSegment({"y", run, 0, 0, 0, 90000}, Bytes(10, 2));
  REQUIRE(e.OnRecord("y", orphan[0]).ok());
  REQUIRE(e.OnRecord("z", proto::Encode(Start("z", run))).ok());
  proto::SegmentChunk huge;
  huge.title = "z";
  huge.run_id = run;
  huge.chunk_count = 3;
  huge.segment_size = 1ull << 29;
  huge.duration = 90000;
  auto payload = Bytes(100, 3);
  huge.payload = payload;
  REQUIRE(e.OnRecord("z", proto::Encode(huge)).ok());
  CHECK(e.buffered_bytes() == 0);
  // Out of order: segment 5 before 0.
  auto late = proto::EncodeSegment({"z", run, 0, 5, 0, 90000}, Bytes(10, 4));
  REQUIRE(e.OnRecord("z", late[0]).ok());
  // A rendition the title does not have.
  auto ghost = proto::EncodeSegment({"z", run, 7, 0, 0, 90000}, Bytes(10, 5));
  REQUIRE(e.OnRecord("z", ghost[0]).ok());
  CHECK(e.stats().rejected == 6);

  // Hostile title ids cannot even be encoded into a valid record; forge one by hand.
  for (std::string bad : std::vector<std::string>{"..", ".hidden", "/etc/passwd", "../../x", std::string(5000, 'a')}) {
    std::vector<uint8_t> forged = proto::Encode(Start("aa", run));
    REQUIRE(e.OnRecord(bad, forged).ok());
  }
  size_t files_outside = 0;
  for (auto& entry : fs::recursive_directory_iterator(d.path()))
    if (!entry.path().string().starts_with(root.string())) ++files_outside;
  CHECK(files_outside == 0);
  CHECK_FALSE(fs::exists(root / "x"));
  CHECK_FALSE(fs::exists(root / "y"));
  CHECK_FALSE(fs::exists(root / ".hidden"));
  CHECK(fs::exists(root / "z/.state.json"));
  CHECK_FALSE(fs::exists(root / "z/master.m3u8"));  // no segment yet: nothing for players
}

TEST_CASE("output store confines writes to the root") {
  test::TempDir d;
  auto store = OutputStore::Open(d.path() / "root");
  REQUIRE(store.ok());
  std::string text = "x";
  CHECK_FALSE(store->WriteAtomic("../escape", text).ok());
  CHECK_FALSE(store->WriteAtomic("/etc/escape", text).ok());
  CHECK_FALSE(store->WriteAtomic("a/../../escape", text).ok());
  CHECK_FALSE(store->TitleDir("..").ok());
  CHECK_FALSE(store->TitleDir(".state.json").ok());
  fs::create_directories(d.path() / "elsewhere");
  fs::create_symlink(d.path() / "elsewhere", d.path() / "root/link");
  CHECK_FALSE(store->WriteAtomic("link/file", text).ok());
  CHECK(fs::is_empty(d.path() / "elsewhere"));
  REQUIRE(store->WriteAtomic("t/v1/index.m3u8", text).ok());
  CHECK(Slurp(d.path() / "root/t/v1/index.m3u8") == "x");
  // No temp file is left next to it.
  size_t n = 0;
  for (auto& entry : fs::directory_iterator(d.path() / "root/t/v1")) n += entry.is_regular_file();
  CHECK(n == 1);
}

TEST_CASE("output store: a staged file is invisible until published, and leaves nothing if dropped") {
  test::TempDir d;
  auto store = OutputStore::Open(d.path());
  REQUIRE(store.ok());
  auto data = Bytes(100000, 7);
  auto count_files = [&] {
    size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(d.path())) n += e.is_regular_file();
    return n;
  };
  {
    auto staged = store->Stage("t/v1/seg-000000.ts", data);
    REQUIRE(staged.ok());
    CHECK_FALSE(fs::exists(d.path() / "t/v1/seg-000000.ts"));
    CHECK(count_files() == 1);  // the dot-named temp file
  }
  CHECK(count_files() == 0);  // dropped without Publish: removed
  auto staged = store->Stage("t/v1/seg-000000.ts", data);
  REQUIRE(staged.ok());
  REQUIRE(store->Publish(*staged).ok());
  CHECK(Slurp(d.path() / "t/v1/seg-000000.ts") == std::string(data.begin(), data.end()));
  CHECK(count_files() == 1);
  CHECK_FALSE(store->Publish(*staged).ok());  // once only
  CHECK_FALSE(store->Stage("../x", data).ok());
}

TEST_CASE("engine with batching: nothing is listed before Publish, and the result is the same tree") {
  test::TempDir batched, single;
  auto run = proto::NewRunId();
  auto records = TitleRecords("film", run, 5);  // start, 5 groups x 2 renditions x 3 chunks, end
  {
    Engine ref(*OutputStore::Open(single.path()), {});
    for (auto& r : records) REQUIRE(ref.OnRecord("film", r).ok());
  }
  Engine e(*OutputStore::Open(batched.path()), {},
           Batching{.max_segments = 6, .max_bytes = 1 << 30, .max_delay = std::chrono::hours(1)});
  const fs::path media = batched.path() / "film/v1/video-240p/index.m3u8";
  // Start and two segment groups: staged, nothing visible to players yet.
  for (size_t i = 0; i < Through(2); ++i) REQUIRE(e.OnRecord("film", records[i]).ok());
  CHECK(e.HasUnpublished());
  CHECK_FALSE(fs::exists(media));
  CHECK_FALSE(fs::exists(batched.path() / "film/v1/video-240p" / SegmentFileName(0)));
  CHECK_FALSE(fs::exists(batched.path() / "film/master.m3u8"));
  // Publish: both segments in place and listed.
  REQUIRE(e.Publish().ok());
  CHECK_FALSE(e.HasUnpublished());
  std::string pl = Slurp(media);
  CHECK(pl.find(SegmentFileName(1)) != std::string::npos);
  CHECK(pl.find(SegmentFileName(2)) == std::string::npos);
  CHECK(fs::exists(batched.path() / "film/master.m3u8"));
  // Three more groups (six segments) reach max_segments: published without being asked.
  for (size_t i = Through(2); i < Through(5); ++i) REQUIRE(e.OnRecord("film", records[i]).ok());
  CHECK_FALSE(e.HasUnpublished());
  CHECK(Slurp(media).find(SegmentFileName(4)) != std::string::npos);
  CHECK(Slurp(media).find("#EXT-X-ENDLIST") == std::string::npos);
  // The end waits for the next publish; Flush publishes it.
  REQUIRE(e.OnRecord("film", records.back()).ok());
  CHECK(e.IsComplete("film"));
  CHECK(Slurp(media).find("#EXT-X-ENDLIST") == std::string::npos);
  REQUIRE(e.Flush().ok());
  CHECK(Slurp(media).find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(test::TreeDigest(batched.path()) == test::TreeDigest(single.path()));
}

TEST_CASE("engine: temp files a crash left behind are removed, also before the title's first state") {
  test::TempDir d, ref_dir;
  auto run = proto::NewRunId();
  auto records = TitleRecords("film", run, 2);
  {
    Engine ref(*OutputStore::Open(ref_dir.path()), {});
    for (auto& r : records) REQUIRE(ref.OnRecord("film", r).ok());
  }
  // A packager killed after staging the title's first segment, before any state was written
  // (what a batching packager leaves), and an older one killed mid-write of a playlist.
  fs::create_directories(d.path() / "film/v1/audio-en");
  std::ofstream(d.path() / "film/v1/audio-en/.seg-000000.ts.4242.tmp") << "half a segment";
  std::ofstream(d.path() / "film/v1/.index.m3u8.4243.tmp") << "#EXTM3U";
  CHECK_FALSE(fs::exists(d.path() / "film/.state.json"));
  Engine e(*OutputStore::Open(d.path()), {});
  for (auto& r : records) REQUIRE(e.OnRecord("film", r).ok());
  CHECK_FALSE(fs::exists(d.path() / "film/v1/audio-en/.seg-000000.ts.4242.tmp"));
  CHECK_FALSE(fs::exists(d.path() / "film/v1/.index.m3u8.4243.tmp"));
  CHECK(test::TreeDigest(d.path()) == test::TreeDigest(ref_dir.path()));
}

TEST_CASE("engine with batching: a new version and a revoked title publish what waits first") {
  test::TempDir d;
  Engine e(*OutputStore::Open(d.path()), {},
           Batching{.max_segments = 100, .max_bytes = 1 << 30, .max_delay = std::chrono::hours(1)});
  auto first = TitleRecords("t", proto::NewRunId(), 3);
  for (size_t i = 0; i < Through(2); ++i) REQUIRE(e.OnRecord("t", first[i]).ok());
  CHECK_FALSE(fs::exists(d.path() / "t/v1/video-240p/index.m3u8"));
  // A different source starts version 2: version 1's two groups land under v1 first.
  auto second = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/2, /*version=*/2);
  REQUIRE(e.OnRecord("t", second[0]).ok());
  std::string v1 = Slurp(d.path() / "t/v1/audio-en/index.m3u8");
  CHECK(v1.find(SegmentFileName(1)) != std::string::npos);
  CHECK(fs::exists(d.path() / "t/v1/audio-en" / SegmentFileName(1)));
  // A revoked title (Forget) is published before it is forgotten.
  for (size_t i = 1; i < Through(1); ++i) REQUIRE(e.OnRecord("t", second[i]).ok());
  CHECK(e.HasUnpublished());
  e.Forget("t");
  CHECK_FALSE(e.HasUnpublished());
  CHECK(Slurp(d.path() / "t/v2/video-240p/index.m3u8").find(SegmentFileName(0)) != std::string::npos);
  CHECK(Slurp(d.path() / "t/master.m3u8").find("v2/video-240p/index.m3u8") != std::string::npos);
}
