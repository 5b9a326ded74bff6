// LL-HLS in the Engine (no Kafka): a title whose records come in parts
// (ingest --part-duration), packaged with low latency: part files written and
// listed as they arrive, in every rendition's playlist together, with the
// preload hint, server control and rendition reports; segments the
// concatenation of their parts; a packager restarted mid-segment carries on to
// the same bytes; a packager without low latency lists whole segments only.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <regex>
#include <sstream>

#include "khls/engine.h"
#include "khls/playlist.h"
#include "rendition_util.h"
#include "test_util.h"

using namespace khls;
using namespace khls::packager;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kPart = 45000;  // 0.5 s
constexpr uint32_t kParts = 4;     // per 2 s segment

// A live title cut into parts: rendition 0 video, 1 audio.
struct Title {
  std::string id = "ll";
  proto::RunId run = proto::NewRunId();
  uint32_t first_sequence = 0;  ///< > 0: a run resuming the live title (its timestamps start over)

  std::vector<uint8_t> Start() const {
    proto::TitleStart t;
    t.title = id;
    t.run_id = run;
    t.first_sequence = first_sequence;
    t.target_duration_s = 2;
    t.segment_duration_ms = 2000;
    t.part_target_ms = 500;
    t.renditions = {test::Video("video", 320, 240), test::Audio("audio-en", "en", "English", true)};
    return proto::Encode(t);
  }
  // The bytes of part p of segment g of rendition r (TS packets' worth of noise).
  static std::vector<uint8_t> Bytes(uint32_t g, uint32_t p, uint16_t r) {
    std::vector<uint8_t> data(188 * (5 + (g + p + r) % 7));
    std::mt19937 rng(g * 97 + p * 7 + r);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    return data;
  }
  // The records of part p of segment g of rendition r.
  std::vector<std::vector<uint8_t>> Part(uint32_t g, uint32_t p, uint16_t r) const {
    proto::SegmentMeta meta{id,   run, r, g, uint64_t{g - first_sequence} * kParts * kPart + p * kPart, kPart,
                            static_cast<uint16_t>(p),
                            p == 0, p + 1 == kParts};
    return proto::EncodeSegment(meta, Bytes(g, p, r), 600);
  }
  std::vector<uint8_t> End(uint32_t n) const {
    proto::TitleEnd end{id, run, n, uint64_t{n} * kParts * kPart, {}};
    end.renditions.resize(2);
    return proto::Encode(end);
  }
  // The records of segment g in publishing order: per part, per rendition.
  std::vector<std::vector<uint8_t>> Segment(uint32_t g) const {
    std::vector<std::vector<uint8_t>> out;
    for (uint32_t p = 0; p < kParts; ++p)
      for (uint16_t r = 0; r < 2; ++r)
        for (auto& rec : Part(g, p, r)) out.push_back(std::move(rec));
    return out;
  }
};

Engine MakeEngine(const fs::path& root, bool low_latency, double window = 0) {
  auto store = OutputStore::Open(root.string(), false);
  REQUIRE(store.ok());
  Engine e(std::move(store).value(), {});
  REQUIRE(e.set_low_latency(low_latency).ok());
  e.set_live_options(LiveOptions{window, {}});
  return e;
}

void Feed(Engine& e, const std::string& title, const std::vector<std::vector<uint8_t>>& records) {
  for (const auto& r : records) REQUIRE(e.OnRecord(title, r).ok());
}

std::vector<std::string> Lines(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(prefix)) out.push_back(line);
  return out;
}

std::string Playlist(const fs::path& root, const std::string& rendition) {
  return test::ReadFile(root / "ll" / "v1" / rendition / "index.m3u8");
}

}  // namespace

TEST_CASE("low latency: parts are written and listed as they arrive, in every rendition together") {
  test::TempDir dir;
  const fs::path root = dir.path() / "out";
  Title t;
  Engine e = MakeEngine(root, true);
  Feed(e, t.id, {t.Start()});

  // Segment 0, part 0 of the video only: no playlist yet (the audio has not got there).
  Feed(e, t.id, t.Part(0, 0, 0));
  const fs::path video = root / "ll" / "v1" / "video";
  CHECK(fs::exists(video / "seg-000000.p0.ts"));  // written as it came
  CHECK_FALSE(fs::exists(video / "index.m3u8"));
  Feed(e, t.id, t.Part(0, 0, 1));
  for (const char* r : {"video", "audio-en"}) {
    const std::string p = Playlist(root, r);
    INFO(r, "\n", p);
    CHECK(p.find("#EXT-X-VERSION:9\n") != std::string::npos);
    CHECK(p.find("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,CAN-SKIP-UNTIL=12.000\n") !=
          std::string::npos);
    CHECK(p.find("#EXT-X-PART-INF:PART-TARGET=0.500\n") != std::string::npos);
    CHECK(Lines(p, "#EXT-X-PART:") ==
          std::vector<std::string>{"#EXT-X-PART:DURATION=0.500000,URI=\"seg-000000.p0.ts\",INDEPENDENT=YES"});
    CHECK(Lines(p, "#EXT-X-PRELOAD-HINT:") ==
          std::vector<std::string>{"#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg-000000.p1.ts\""});
    CHECK(Lines(p, "#EXTINF:").empty());
    const std::string other = std::string(r) == "video" ? "audio-en" : "video";
    CHECK(Lines(p, "#EXT-X-RENDITION-REPORT:") ==
          std::vector<std::string>{"#EXT-X-RENDITION-REPORT:URI=\"../" + other + "/index.m3u8\",LAST-MSN=0,LAST-PART=0"});
    CHECK(p.find("#EXT-X-ENDLIST") == std::string::npos);
  }
  // The master appears with the first part, its BANDWIDTH measured on it (no estimate for a live input).
  {
    const std::string master = test::ReadFile(root / "ll" / "master.m3u8");
    INFO(master);
    const uint64_t video_bps = Title::Bytes(0, 0, 0).size() * 8 * 2, audio_bps = Title::Bytes(0, 0, 1).size() * 8 * 2;
    CHECK(master.find(fmt::format("BANDWIDTH={},", video_bps + audio_bps)) != std::string::npos);
  }
  CHECK(test::ReadFile(video / "seg-000000.p0.ts") ==
        std::string(reinterpret_cast<const char*>(Title::Bytes(0, 0, 0).data()), Title::Bytes(0, 0, 0).size()));

  // Parts 1-3 of segment 0: after the video's last part, the audio's part 3 is
  // still missing, so the playlists still show three parts.
  Feed(e, t.id, t.Part(0, 1, 0));
  Feed(e, t.id, t.Part(0, 1, 1));
  Feed(e, t.id, t.Part(0, 2, 0));
  Feed(e, t.id, t.Part(0, 2, 1));
  Feed(e, t.id, t.Part(0, 3, 0));
  CHECK(fs::exists(video / "seg-000000.ts"));  // the video's segment is whole
  {
    const std::string p = Playlist(root, "audio-en");
    CHECK(Lines(p, "#EXT-X-PART:").size() == 3);
    CHECK(Lines(p, "#EXTINF:").empty());
    CHECK(Lines(p, "#EXT-X-PRELOAD-HINT:") ==
          std::vector<std::string>{"#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg-000000.p3.ts\""});
    CHECK(Lines(Playlist(root, "video"), "#EXT-X-PART:").size() == 3);
  }
  Feed(e, t.id, t.Part(0, 3, 1));
  for (const char* r : {"video", "audio-en"}) {
    const std::string p = Playlist(root, r);
    INFO(r, "\n", p);
    // The whole segment, its parts listed before it, then the hint of the next segment's first part.
    CHECK(Lines(p, "#EXT-X-PART:").size() == 4);
    CHECK(Lines(p, "#EXTINF:") == std::vector<std::string>{"#EXTINF:2.000000,"});
    CHECK(p.find("#EXT-X-PART:DURATION=0.500000,URI=\"seg-000000.p3.ts\"\n#EXTINF:2.000000,\nseg-000000.ts\n") !=
          std::string::npos);
    CHECK(Lines(p, "#EXT-X-PRELOAD-HINT:") ==
          std::vector<std::string>{"#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg-000001.p0.ts\""});
    CHECK(Lines(p, "#EXT-X-RENDITION-REPORT:").front().ends_with("LAST-MSN=0,LAST-PART=3"));
  }
  // A segment is the concatenation of its parts.
  for (uint16_t r = 0; r < 2; ++r) {
    std::string whole;
    for (uint32_t p = 0; p < kParts; ++p) {
      const auto b = Title::Bytes(0, p, r);
      whole.append(reinterpret_cast<const char*>(b.data()), b.size());
    }
    CHECK(test::ReadFile(root / "ll" / "v1" / (r == 0 ? "video" : "audio-en") / "seg-000000.ts") == whole);
  }

  // Four more segments: parts are listed for about the last three target
  // durations (the last three segments) and for the segment in progress.
  for (uint32_t g = 1; g < 5; ++g)
    for (uint32_t p = 0; p < kParts; ++p)
      for (uint16_t r = 0; r < 2; ++r) Feed(e, t.id, t.Part(g, p, r));
  Feed(e, t.id, t.Part(5, 0, 0));
  Feed(e, t.id, t.Part(5, 0, 1));
  {
    const std::string p = Playlist(root, "video");
    INFO(p);
    CHECK(Lines(p, "#EXTINF:").size() == 5);
    CHECK(Lines(p, "#EXT-X-PART:").size() == 3 * kParts + 1);
    CHECK(p.find("seg-000001.p0.ts") == std::string::npos);
    CHECK(p.find("URI=\"seg-000002.p0.ts\",INDEPENDENT=YES") != std::string::npos);
    CHECK(Lines(p, "#EXT-X-RENDITION-REPORT:") ==
          std::vector<std::string>{"#EXT-X-RENDITION-REPORT:URI=\"../audio-en/index.m3u8\",LAST-MSN=5,LAST-PART=0"});
  }
  // The state carries the listed parts; the end lists no hint.
  for (uint32_t p = 1; p < kParts; ++p)
    for (uint16_t r = 0; r < 2; ++r) Feed(e, t.id, t.Part(5, p, r));
  Feed(e, t.id, {t.End(6)});
  const std::string p = Playlist(root, "video");
  CHECK(p.ends_with("#EXT-X-ENDLIST\n"));
  CHECK(Lines(p, "#EXT-X-PRELOAD-HINT:").empty());
  CHECK(Lines(p, "#EXTINF:").size() == 6);
  CHECK(e.stats().rejected == 0);
}

TEST_CASE("low latency: offsets, a restart mid-segment, and a packager without low latency") {
  test::TempDir dir;
  Title t;
  std::vector<std::vector<uint8_t>> records;
  std::vector<size_t> starts;  // index of each segment's first record
  for (uint32_t g = 0; g < 3; ++g) {
    starts.push_back(records.size());
    for (auto& rec : t.Segment(g)) records.push_back(std::move(rec));
  }

  // The uninterrupted run, and what the engine tells the consumer about offsets.
  const fs::path a = dir.path() / "a";
  {
    Engine e = MakeEngine(a, true);
    Feed(e, t.id, {t.Start()});
    for (size_t i = 0; i < records.size(); ++i) {
      auto o = e.OnRecord(t.id, records[i]);
      REQUIRE(o.ok());
      // A segment is in flight from its first record to the audio's last part:
      // offsets are committed only up to its first record.
      const bool first = std::count(starts.begin(), starts.end(), i) == 1;
      const bool last = i + 1 == records.size() || std::count(starts.begin(), starts.end(), i + 1) == 1;
      CHECK(o->in_flight == !last);
      CHECK(o->started_in_flight == first);
    }
    Feed(e, t.id, {t.End(3)});
  }

  // Killed in part 2 of segment 1 (the state lists parts 0-1 of it); the restart
  // replays from segment 1's first record, as the committed offsets say.
  const fs::path b = dir.path() / "b";
  const size_t cut = starts[1] + t.Segment(1).size() * 5 / 8;
  {
    Engine e = MakeEngine(b, true);
    Feed(e, t.id, {t.Start()});
    Feed(e, t.id, {records.begin(), records.begin() + static_cast<std::ptrdiff_t>(cut)});
    const std::string before = Playlist(b, "video");
    CHECK(Lines(before, "#EXT-X-PART:").size() == kParts + 2);
  }
  {
    Engine e = MakeEngine(b, true);
    Feed(e, t.id, {records.begin() + static_cast<std::ptrdiff_t>(starts[1]), records.end()});
    Feed(e, t.id, {t.End(3)});
    CHECK(e.stats().rejected == 0);
  }
  CHECK(test::TreeDigest(a / "ll") == test::TreeDigest(b / "ll"));

  // Without low latency: the same segments, no part file, no part listed.
  const fs::path c = dir.path() / "c";
  {
    Engine e = MakeEngine(c, false);
    Feed(e, t.id, {t.Start()});
    Feed(e, t.id, records);
    Feed(e, t.id, {t.End(3)});
    CHECK(e.stats().rejected == 0);
  }
  const std::string plain = Playlist(c, "video");
  CHECK(plain.find("#EXT-X-PART") == std::string::npos);
  CHECK(plain.find("#EXT-X-SERVER-CONTROL") == std::string::npos);
  CHECK(Lines(plain, "#EXTINF:").size() == 3);
  for (uint32_t g = 0; g < 3; ++g) {
    const std::string name = fmt::format("seg-{:06d}.ts", g);
    CHECK(test::ReadFile(c / "ll" / "v1" / "video" / name) == test::ReadFile(a / "ll" / "v1" / "video" / name));
    CHECK_FALSE(fs::exists(c / "ll" / "v1" / "video" / fmt::format("seg-{:06d}.p0.ts", g)));
  }
}

TEST_CASE("low latency: part files leave with their segment; bad parts are refused; no encryption") {
  test::TempDir dir;
  Title t;
  int64_t now = 1'800'000'000'000;
  auto store = OutputStore::Open((dir.path() / "out").string(), false);
  REQUIRE(store.ok());
  Engine e(std::move(store).value(), {});
  REQUIRE(e.set_low_latency(true).ok());
  e.set_live_options(LiveOptions{6, [&] { return now; }});
  proto::TitleStart start = std::get<proto::TitleStart>(*proto::Decode(t.Start()));
  CHECK(IsLive(start));
  Feed(e, t.id, {t.Start()});
  const fs::path video = dir.path() / "out" / "ll" / "v1" / "video";
  for (uint32_t g = 0; g < 6; ++g) {
    for (uint32_t p = 0; p < kParts; ++p)
      for (uint16_t r = 0; r < 2; ++r) Feed(e, t.id, t.Part(g, p, r));
    now += 2000;
  }
  // 6 s window: segments 0-2 left it; after the grace period their parts go too.
  const std::string p = Playlist(dir.path() / "out", "video");
  CHECK(p.find("#EXT-X-MEDIA-SEQUENCE:3\n") != std::string::npos);
  CHECK(fs::exists(video / "seg-000000.p3.ts"));
  now += 20000;
  for (uint16_t r = 0; r < 2; ++r) Feed(e, t.id, t.Part(6, 0, r));
  CHECK_FALSE(fs::exists(video / "seg-000000.ts"));
  CHECK_FALSE(fs::exists(video / "seg-000000.p0.ts"));
  CHECK_FALSE(fs::exists(video / "seg-000000.p3.ts"));
  CHECK(fs::exists(video / "seg-000005.p3.ts"));

  // A part ahead of the next one is refused, and so is a part of a segment ahead.
  const uint64_t rejected = e.stats().rejected;
  Feed(e, t.id, t.Part(6, 2, 0));
  CHECK(e.stats().rejected == rejected + 1);
  CHECK_FALSE(fs::exists(video / "seg-000006.p2.ts"));

  // A segment's parts are held within the segment bound: past it the segment is refused.
  {
    auto small_store = OutputStore::Open((dir.path() / "small").string(), false);
    REQUIRE(small_store.ok());
    Engine small(std::move(small_store).value(), {.max_segment_bytes = 3000, .max_buffered_bytes = 1 << 20});
    REQUIRE(small.set_low_latency(true).ok());
    Feed(small, t.id, {t.Start()});
    for (uint32_t p = 0; p < kParts; ++p) Feed(small, t.id, t.Part(0, p, 0));
    CHECK(small.stats().rejected_by_reason[static_cast<size_t>(RejectReason::kReassembly)] == 1);
    CHECK(small.buffered_bytes() <= 3000);
    CHECK_FALSE(fs::exists(dir.path() / "small" / "ll" / "v1" / "video" / "seg-000000.ts"));
  }

  // Low latency does not encrypt yet.
  auto store2 = OutputStore::Open((dir.path() / "enc").string(), false);
  REQUIRE(store2.ok());
  Engine enc(std::move(store2).value(), {});
  REQUIRE(enc.set_low_latency(true).ok());
  Encryption aes;
  aes.method = EncryptionMethod::kAes128;
  aes.key_store = (dir.path() / "keys").string();
  const Status refused = enc.EnableEncryption(aes);
  CHECK(refused.code() == ErrorCode::kInvalidArgument);
  CHECK(refused.message().find("--low-latency") != std::string::npos);
}

TEST_CASE("low latency: a run that resumes the title ends the segment its predecessor left in parts") {
  test::TempDir dir;
  Title a;
  Title b;
  b.first_sequence = 3;
  // Run a publishes segments 0 and 1 and two parts of segment 2, then dies; run b resumes at 3.
  std::vector<std::vector<uint8_t>> records{a.Start()};
  for (uint32_t g = 0; g < 2; ++g)
    for (auto& rec : a.Segment(g)) records.push_back(std::move(rec));
  const size_t seg2 = records.size();
  for (uint32_t p = 0; p < 2; ++p)
    for (uint16_t r = 0; r < 2; ++r)
      for (auto& rec : a.Part(2, p, r)) records.push_back(std::move(rec));
  records.push_back(b.Start());
  const size_t resumed = records.size();
  for (uint32_t p = 0; p < 2; ++p)
    for (uint16_t r = 0; r < 2; ++r)
      for (auto& rec : b.Part(3, p, r)) records.push_back(std::move(rec));

  const fs::path root = dir.path() / "a";
  {
    Engine e = MakeEngine(root, true);
    for (size_t i = 0; i < records.size(); ++i) {
      auto o = e.OnRecord(a.id, records[i]);
      REQUIRE(o.ok());
      // Nothing is in flight once the resumed start has ended segment 2.
      if (i == resumed - 1) CHECK_FALSE(o->in_flight);
    }
    CHECK(e.stats().rejected == 0);
  }
  const std::string pl = Playlist(root, "video");
  INFO(pl);
  // Segment 2 is listed with the two parts it had (1 s), then the discontinuity and segment 3's parts.
  CHECK(pl.find("#EXTINF:1.000000,\nseg-000002.ts\n#EXT-X-DISCONTINUITY\n#EXT-X-PART:DURATION=0.500000,URI=\"seg-000003.p0.ts\",INDEPENDENT=YES\n") != std::string::npos);
  CHECK(Lines(pl, "#EXT-X-PART:DURATION=0.500000,URI=\"seg-000002.p").size() == 2);
  CHECK(Lines(pl, "#EXT-X-DISCONTINUITY").size() == 1);
  CHECK(pl.find("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg-000003.p2.ts\"") != std::string::npos);
  // The segment is its parts put together, in both renditions.
  for (uint16_t r = 0; r < 2; ++r) {
    std::vector<uint8_t> joined = Title::Bytes(2, 0, r);
    const std::vector<uint8_t> second = Title::Bytes(2, 1, r);
    joined.insert(joined.end(), second.begin(), second.end());
    const std::string rendition = r == 0 ? "video" : "audio-en";
    CHECK(test::ReadFile(root / "ll/v1" / rendition / "seg-000002.ts") == std::string(joined.begin(), joined.end()));
  }
  auto state = ParseState(test::ReadFile(root / "ll/.state.json"));
  REQUIRE(state.ok());
  CHECK(state->run_starts.size() == 1);
  CHECK(state->run_starts[0].sequence == 3);

  // A packager killed before the resumed start replays from segment 2's first record (the offset it
  // committed) and ends with the same tree; one without low latency writes the same segment 2.
  const fs::path again = dir.path() / "b";
  {
    Engine e = MakeEngine(again, true);
    Feed(e, a.id, {records.begin(), records.begin() + static_cast<std::ptrdiff_t>(seg2 + 3)});
  }
  {
    Engine e = MakeEngine(again, true);
    Feed(e, a.id, {records.begin() + static_cast<std::ptrdiff_t>(seg2), records.end()});
    CHECK(e.stats().rejected == 0);
  }
  CHECK(test::ReadFile(again / "ll/v1/video/index.m3u8") == pl);
  CHECK(test::ReadFile(again / "ll/v1/video/seg-000002.ts") == test::ReadFile(root / "ll/v1/video/seg-000002.ts"));
  const fs::path plain = dir.path() / "c";
  {
    Engine e = MakeEngine(plain, false);
    Feed(e, a.id, records);
    CHECK(e.stats().rejected == 0);
  }
  CHECK(test::ReadFile(plain / "ll/v1/video/seg-000002.ts") == test::ReadFile(root / "ll/v1/video/seg-000002.ts"));
  CHECK(Lines(test::ReadFile(plain / "ll/v1/video/index.m3u8"), "#EXTINF").size() == 3);
}
