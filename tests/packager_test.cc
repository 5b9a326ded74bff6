#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "khls/engine.h"
#include "khls/playlist.h"
#include "test_util.h"

using namespace khls;
using namespace khls::packager;
namespace fs = std::filesystem;

namespace {

TitleState SampleState() {
  TitleState s;
  s.title = "movie";
  s.runs = {"00112233445566778899aabbccddeeff"};
  s.start.title = "movie";
  s.start.target_duration_s = 6;
  s.start.segment_duration_ms = 6000;
  s.start.has_video = s.start.has_audio = true;
  s.start.codecs = "avc1.640028,mp4a.40.2";
  s.start.width = 1920;
  s.start.height = 1080;
  s.start.fps_num = 30000;
  s.start.fps_den = 1001;
  s.start.est_peak_bps = 5'500'000;
  s.start.est_avg_bps = 5'000'000;
  s.segments = {{0, 540540, 3'000'000, "aa"}, {1, 540540, 3'100'000, "bb"}, {2, 180180, 1'000'000, "cc"}};
  return s;
}

proto::TitleStart Start(const std::string& title, proto::RunId run, uint8_t fingerprint = 1, uint32_t version = 1) {
  proto::TitleStart t;
  t.title = title;
  t.title_version = version;
  t.run_id = run;
  t.target_duration_s = 2;
  t.segment_duration_ms = 2000;
  t.has_video = true;
  t.codecs = "avc1.42c01e";
  t.width = 320;
  t.height = 240;
  t.fps_num = 25;
  t.source_fingerprint[0] = fingerprint;
  return t;
}

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Feeds a whole title (start, `n` segments, end) and returns the records.
std::vector<std::vector<uint8_t>> TitleRecords(const std::string& title, proto::RunId run, int n, uint8_t fp = 1,
                                               uint32_t version = 1) {
  std::vector<std::vector<uint8_t>> out{proto::Encode(Start(title, run, fp, version))};
  for (int i = 0; i < n; ++i) {
    auto data = Bytes(5000 + i * 100, fp * 100 + i);
    for (auto& r : proto::EncodeSegment({title, run, static_cast<uint32_t>(i), 0, 180000}, data, 2048))
      out.push_back(std::move(r));
  }
  out.push_back(proto::Encode(proto::TitleEnd{title, run, static_cast<uint32_t>(n), 180000ull * n, 0, 30000, 25000, 180000}));
  return out;
}

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("media playlist text, growing and complete") {
  TitleState s = SampleState();
  CHECK(RenderMediaPlaylist(s) ==
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
  s.start.start_offset = 7200;  // two frames of B-frame delay at 25 fps
  CHECK(RenderMediaPlaylist(s).find("#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-START:TIME-OFFSET=0.080,PRECISE=YES\n#EXTINF:") !=
        std::string::npos);
  s.complete = true;
  std::string vod = RenderMediaPlaylist(s);
  CHECK(vod.find("#EXT-X-PLAYLIST-TYPE:VOD\n") != std::string::npos);
  CHECK(vod.ends_with("seg-000002.ts\n#EXT-X-ENDLIST\n"));
}

TEST_CASE("master playlist text") {
  TitleState s = SampleState();
  CHECK(RenderMasterPlaylist(s) ==
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=5500000,AVERAGE-BANDWIDTH=5000000,CODECS=\"avc1.640028,mp4a.40.2\","
        "RESOLUTION=1920x1080,FRAME-RATE=29.970\n"
        "v1/index.m3u8\n");
  s.complete = true;
  s.peak_bps = 4'128'000;
  s.avg_bps = 3'900'000;
  s.version = 2;
  CHECK(RenderMasterPlaylist(s).find("BANDWIDTH=4128000,AVERAGE-BANDWIDTH=3900000,") != std::string::npos);
  CHECK(RenderMasterPlaylist(s).ends_with("\nv2/index.m3u8\n"));

  TitleState audio = SampleState();
  audio.start.has_video = false;
  audio.start.codecs = "mp4a.40.2";
  CHECK(RenderMasterPlaylist(audio).find("RESOLUTION") == std::string::npos);
  CHECK(RenderMasterPlaylist(audio).find("FRAME-RATE") == std::string::npos);
}

TEST_CASE("title state round trip") {
  TitleState s = SampleState();
  s.start.run_id[3] = 7;
  s.start.source_fingerprint[15] = 9;
  s.start.source_name = "a \"quoted\" name.mkv";
  s.start.start_offset = 3003;
  auto parsed = ParseState(SerializeState(s));
  REQUIRE(parsed.ok());
  CHECK(*parsed == s);
  CHECK_FALSE(ParseState("{").ok());
  CHECK_FALSE(ParseState(R"({"format": 1, "title": "../x"})").ok());
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
    // A playlist never lists a segment that is not on disk.
    if (fs::exists(a.path() / "film/v1/index.m3u8")) {
      std::string pl = Slurp(a.path() / "film/v1/index.m3u8");
      for (int s = 0; s < 3; ++s)
        if (pl.find(SegmentFileName(s)) != std::string::npos) CHECK(fs::exists(a.path() / "film/v1" / SegmentFileName(s)));
    }
  }
  CHECK(completed);
  CHECK(e.IsComplete("film"));
  CHECK(e.stats().segments_written == 3);
  std::string media = Slurp(a.path() / "film/v1/index.m3u8");
  CHECK(media.find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(media.find("#EXT-X-TARGETDURATION:2\n") != std::string::npos);
  CHECK(Slurp(a.path() / "film/master.m3u8").find("v1/index.m3u8") != std::string::npos);
  CHECK(Slurp(a.path() / "film/v1/seg-000001.ts").size() == 5100);

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

TEST_CASE("engine: a re-run of the same source continues, a new source becomes a new version") {
  test::TempDir d;
  Engine e(*OutputStore::Open(d.path()), {});
  auto first = TitleRecords("t", proto::NewRunId(), 4);
  // The first run dies after two segments (start + 2 segments of 3 chunks each).
  for (size_t i = 0; i < 1 + 2 * 3; ++i) REQUIRE(e.OnRecord("t", first[i]).ok());
  CHECK_FALSE(e.IsComplete("t"));
  auto rerun = TitleRecords("t", proto::NewRunId(), 4);
  for (auto& r : rerun) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(e.IsComplete("t"));
  CHECK(e.stats().segments_written == 4);
  std::string media = Slurp(d.path() / "t/v1/index.m3u8");
  CHECK(std::count(media.begin(), media.end(), '#') == 6 + 4 + 1);  // header, 4 EXTINF, ENDLIST

  // Another source under the same version (two ingests raced): the first one stands.
  const auto before = test::TreeDigest(d.path());
  auto racer = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/3);
  for (auto& r : racer) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(test::TreeDigest(d.path()) == before);
  CHECK(e.stats().rejected == 1);  // its title start; its other records belong to no known run

  auto replacement = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/2, /*version=*/2);
  for (auto& r : replacement) REQUIRE(e.OnRecord("t", r).ok());
  CHECK(Slurp(d.path() / "t/master.m3u8").find("v2/index.m3u8") != std::string::npos);
  CHECK(fs::exists(d.path() / "t/v1/seg-000003.ts"));  // the old version stays for players that have it
  CHECK(fs::exists(d.path() / "t/v2/seg-000001.ts"));
}

TEST_CASE("engine: hostile and malformed records are skipped, nothing leaves the root") {
  test::TempDir d;
  fs::path root = d.path() / "out";
  Engine e(*OutputStore::Open(root), {.max_segment_bytes = 1 << 20, .max_buffered_bytes = 2 << 20});

  auto run = proto::NewRunId();
  // Random bytes, a wrong key, chunks without a start, a chunk claiming a 5 TB segment.
  REQUIRE(e.OnRecord("x", Bytes(100, 1)).ok());
  REQUIRE(e.OnRecord("../../x", proto::Encode(Start("x", run))).ok());
  auto orphan = proto::EncodeSegment({"y", run, 0, 0, 90000}, Bytes(10, 2));
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
  auto late = proto::EncodeSegment({"z", run, 5, 0, 90000}, Bytes(10, 4));
  REQUIRE(e.OnRecord("z", late[0]).ok());
  CHECK(e.stats().rejected == 5);

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
  auto records = TitleRecords("film", run, 5);  // start, 5 x 3 chunks, end
  {
    Engine ref(*OutputStore::Open(single.path()), {});
    for (auto& r : records) REQUIRE(ref.OnRecord("film", r).ok());
  }
  Engine e(*OutputStore::Open(batched.path()), {},
           Batching{.max_segments = 3, .max_bytes = 1 << 30, .max_delay = std::chrono::hours(1)});
  const fs::path media = batched.path() / "film/v1/index.m3u8";
  // Start and two segments: staged, nothing visible to players yet.
  for (size_t i = 0; i < 1 + 2 * 3; ++i) REQUIRE(e.OnRecord("film", records[i]).ok());
  CHECK(e.HasUnpublished());
  CHECK_FALSE(fs::exists(media));
  CHECK_FALSE(fs::exists(batched.path() / "film/v1" / SegmentFileName(0)));
  CHECK_FALSE(fs::exists(batched.path() / "film/master.m3u8"));
  // Publish: both segments in place and listed.
  REQUIRE(e.Publish().ok());
  CHECK_FALSE(e.HasUnpublished());
  std::string pl = Slurp(media);
  CHECK(pl.find(SegmentFileName(1)) != std::string::npos);
  CHECK(pl.find(SegmentFileName(2)) == std::string::npos);
  CHECK(fs::exists(batched.path() / "film/master.m3u8"));
  // Three more segments reach max_segments: published without being asked.
  for (size_t i = 7; i < 1 + 5 * 3; ++i) REQUIRE(e.OnRecord("film", records[i]).ok());
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
  fs::create_directories(d.path() / "film/v1");
  std::ofstream(d.path() / "film/v1/.seg-000000.ts.4242.tmp") << "half a segment";
  std::ofstream(d.path() / "film/v1/.index.m3u8.4243.tmp") << "#EXTM3U";
  CHECK_FALSE(fs::exists(d.path() / "film/.state.json"));
  Engine e(*OutputStore::Open(d.path()), {});
  for (auto& r : records) REQUIRE(e.OnRecord("film", r).ok());
  CHECK_FALSE(fs::exists(d.path() / "film/v1/.seg-000000.ts.4242.tmp"));
  CHECK_FALSE(fs::exists(d.path() / "film/v1/.index.m3u8.4243.tmp"));
  CHECK(test::TreeDigest(d.path()) == test::TreeDigest(ref_dir.path()));
}

TEST_CASE("engine with batching: a new version and a revoked title publish what waits first") {
  test::TempDir d;
  Engine e(*OutputStore::Open(d.path()), {},
           Batching{.max_segments = 100, .max_bytes = 1 << 30, .max_delay = std::chrono::hours(1)});
  auto first = TitleRecords("t", proto::NewRunId(), 3);
  for (size_t i = 0; i < 1 + 2 * 3; ++i) REQUIRE(e.OnRecord("t", first[i]).ok());
  CHECK_FALSE(fs::exists(d.path() / "t/v1/index.m3u8"));
  // A different source starts version 2: version 1's two segments land under v1 first.
  auto second = TitleRecords("t", proto::NewRunId(), 2, /*fp=*/2, /*version=*/2);
  REQUIRE(e.OnRecord("t", second[0]).ok());
  std::string v1 = Slurp(d.path() / "t/v1/index.m3u8");
  CHECK(v1.find(SegmentFileName(1)) != std::string::npos);
  CHECK(fs::exists(d.path() / "t/v1" / SegmentFileName(1)));
  // A revoked title (Forget) is published before it is forgotten.
  for (size_t i = 1; i < 1 + 3; ++i) REQUIRE(e.OnRecord("t", second[i]).ok());
  CHECK(e.HasUnpublished());
  e.Forget("t");
  CHECK_FALSE(e.HasUnpublished());
  CHECK(Slurp(d.path() / "t/v2/index.m3u8").find(SegmentFileName(0)) != std::string::npos);
  CHECK(Slurp(d.path() / "t/master.m3u8").find("v2/index.m3u8") != std::string::npos);
}
