// The live sliding window in the Engine (no Kafka): what a live title's
// playlists list, its bounded state, segment files deleted after the grace
// period, PROGRAM-DATE-TIME, restarts and replays.
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

using proto::Rendition;
using proto::RenditionKind;

constexpr uint64_t kSeg = 180000;  // 2 s

std::vector<Rendition> Renditions() {
  return {test::Video("video-240p", 320, 240), test::Audio("audio-en", "en", "English", true)};
}

// A live title's records (no fingerprint, size or duration), or a file's when `live` is false.
struct Title {
  std::string id;
  proto::RunId run = proto::NewRunId();
  bool live = true;

  std::vector<uint8_t> Start() const {
    proto::TitleStart t;
    t.title = id;
    t.run_id = run;
    t.target_duration_s = 2;
    t.segment_duration_ms = 2000;
    t.renditions = Renditions();
    if (!live) {
      t.source_fingerprint[0] = 1;
      t.source_size = 1000;
      t.input_duration = 100 * kSeg;
    }
    return proto::Encode(t);
  }
  std::vector<std::vector<uint8_t>> Group(uint32_t g) const {
    std::vector<std::vector<uint8_t>> out;
    for (uint16_t r = 0; r < 2; ++r) {
      std::vector<uint8_t> data(3000 + g);
      std::mt19937 rng(g * 2 + r);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      for (auto& rec : proto::EncodeSegment({id, run, r, g, uint64_t{g} * kSeg, kSeg}, data, 2048))
        out.push_back(std::move(rec));
    }
    return out;
  }
  std::vector<uint8_t> End(uint32_t n) const {
    proto::TitleEnd end{id, run, n, kSeg * n, {}};
    end.renditions.resize(2);
    return proto::Encode(end);
  }
};

struct Clock {
  int64_t ms = 1'800'000'000'000;  // 2027-01-15
  LiveOptions Options(double window_s) {
    return LiveOptions{window_s, [this] { return ms; }};
  }
};

void Feed(Engine& e, const std::string& title, const std::vector<std::vector<uint8_t>>& records) {
  for (const auto& r : records) REQUIRE(e.OnRecord(title, r).ok());
}

std::vector<std::string> Listed(const std::string& playlist) { return khls::test::PlaylistUris(playlist); }

std::vector<std::string> DateTimes(const std::string& playlist) {
  std::vector<std::string> out;
  std::istringstream in(playlist);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("#EXT-X-PROGRAM-DATE-TIME:")) out.push_back(line.substr(25));
  return out;
}

}  // namespace

TEST_CASE("live window: the playlists list the last window of groups, old files go after the grace period") {
  test::TempDir d;
  Clock clock;
  Engine e(*OutputStore::Open(d.path()), {});
  e.set_live_options(clock.Options(8));  // 4 segments of 2 s
  const Title t{"channel"};
  REQUIRE(e.OnRecord(t.id, t.Start()).ok());
  const fs::path video = d.path() / "channel/v1/video-240p";
  for (uint32_t g = 0; g < 20; ++g) {
    clock.ms += 2000;  // a live group arrives every 2 s
    Feed(e, t.id, t.Group(g));
    const std::string pl = test::ReadFile(video / "index.m3u8");
    const auto listed = Listed(pl);
    CAPTURE(g);
    CAPTURE(pl);
    // The window: at most 4 groups (8 s), the newest last; MEDIA-SEQUENCE names the first.
    REQUIRE(listed.size() == std::min<size_t>(g + 1, 4));
    CHECK(listed.back() == SegmentFileName(g));
    const uint32_t first = g + 1 > 4 ? g - 3 : 0;
    CHECK(pl.find(fmt::format("#EXT-X-MEDIA-SEQUENCE:{}\n", first)) != std::string::npos);
    CHECK(listed.front() == SegmentFileName(first));
    CHECK(pl.find("#EXT-X-PLAYLIST-TYPE") == std::string::npos);
    CHECK(pl.find("#EXT-X-ENDLIST") == std::string::npos);
    // Every listed segment is on disk, and so is every group that left the window less than
    // its duration + the window + a target duration (12 s) ago; older ones are gone.
    for (const auto& name : listed) CHECK(fs::exists(video / name));
    for (uint32_t old = 0; old < first; ++old) {
      const int64_t left_at = 1'800'000'000'000 + int64_t{old + 5} * 2000;  // when group old+4 arrived
      CHECK(fs::exists(video / SegmentFileName(old)) == (clock.ms < left_at + 12000));
      CHECK(fs::exists(d.path() / "channel/v1/audio-en" / SegmentFileName(old)) == (clock.ms < left_at + 12000));
    }
    // PROGRAM-DATE-TIME on every segment, 2 s apart.
    const auto times = DateTimes(pl);
    REQUIRE(times.size() == listed.size());
  }
  // The anchor: the first group arrived at +2 s, having lasted 2 s: title time 0 is the clock's start.
  const std::string pl = test::ReadFile(video / "index.m3u8");
  CHECK(DateTimes(pl).front() == "2027-01-15T08:00:32.000Z");  // 1.8e12 ms + 16 groups * 2 s
  CHECK(DateTimes(pl).back() == "2027-01-15T08:00:38.000Z");
  // The state holds the window, not the history.
  const std::string state = test::ReadFile(d.path() / "channel/.state.json");
  auto parsed = ParseState(state);
  REQUIRE(parsed.ok());
  CHECK(parsed->first == 16);
  CHECK(parsed->segments[0].size() == 4);
  CHECK(parsed->expired.size() <= 7);
  const size_t state_size = state.size();

  // The feed ends: the title ends, with its window listed and ENDLIST.
  REQUIRE(e.OnRecord(t.id, t.End(20)).ok());
  REQUIRE(e.Flush().ok());
  CHECK(e.IsComplete(t.id));
  const std::string ended = test::ReadFile(video / "index.m3u8");
  CHECK(ended.find("#EXT-X-ENDLIST") != std::string::npos);
  CHECK(ended.find("#EXT-X-PLAYLIST-TYPE") == std::string::npos);
  CHECK(Listed(ended).size() == 4);

  // A packager restarted on the tree (the same clock) replays the whole log: nothing changes.
  const std::string tree = test::TreeDigest(d.path());
  Engine again(*OutputStore::Open(d.path()), {});
  again.set_live_options(clock.Options(8));
  REQUIRE(again.OnRecord(t.id, t.Start()).ok());
  for (uint32_t g = 0; g < 20; ++g) Feed(again, t.id, t.Group(g));
  REQUIRE(again.OnRecord(t.id, t.End(20)).ok());
  REQUIRE(again.Flush().ok());
  CHECK(again.stats().segments_written == 0);
  CHECK(test::TreeDigest(d.path()) == tree);

  // A longer channel keeps a state of the same size.
  test::TempDir d2;
  Engine longer(*OutputStore::Open(d2.path()), {});
  longer.set_live_options(clock.Options(8));
  const Title t2{"channel"};
  REQUIRE(longer.OnRecord(t2.id, t2.Start()).ok());
  for (uint32_t g = 0; g < 200; ++g) {
    clock.ms += 2000;
    Feed(longer, t2.id, t2.Group(g));
  }
  REQUIRE(longer.Flush().ok());
  const size_t long_state = test::ReadFile(d2.path() / "channel/.state.json").size();
  CHECK(long_state < state_size + 200);
  size_t files = 0;
  for (auto& f : fs::directory_iterator(d2.path() / "channel/v1/video-240p")) files += f.path().extension() == ".ts";
  CHECK(files <= 4 + 7);
}

TEST_CASE("live window: at least three target durations; files keep every segment; 0 keeps everything") {
  test::TempDir d;
  Clock clock;
  Engine e(*OutputStore::Open(d.path()), {});
  e.set_live_options(clock.Options(1));  // raised to 3 x 2 s
  const Title live{"live"}, file{"file", proto::NewRunId(), false};
  REQUIRE(e.OnRecord(live.id, live.Start()).ok());
  REQUIRE(e.OnRecord(file.id, file.Start()).ok());
  for (uint32_t g = 0; g < 8; ++g) {
    clock.ms += 2000;
    Feed(e, live.id, live.Group(g));
    Feed(e, file.id, file.Group(g));
  }
  CHECK(Listed(test::ReadFile(d.path() / "live/v1/video-240p/index.m3u8")).size() == 3);
  const std::string vod = test::ReadFile(d.path() / "file/v1/video-240p/index.m3u8");
  CHECK(Listed(vod).size() == 8);
  CHECK(vod.find("#EXT-X-PLAYLIST-TYPE:EVENT") != std::string::npos);
  CHECK(vod.find("PROGRAM-DATE-TIME") == std::string::npos);

  test::TempDir d2;
  Engine all(*OutputStore::Open(d2.path()), {});
  all.set_live_options(clock.Options(0));
  REQUIRE(all.OnRecord(live.id, live.Start()).ok());
  for (uint32_t g = 0; g < 8; ++g) Feed(all, live.id, live.Group(g));
  const std::string event = test::ReadFile(d2.path() / "live/v1/video-240p/index.m3u8");
  CHECK(Listed(event).size() == 8);
  CHECK(event.find("#EXT-X-PLAYLIST-TYPE:EVENT") != std::string::npos);
}

TEST_CASE("live window: a packager that joins a channel late starts at the first whole group after the start") {
  test::TempDir d;
  Clock clock;
  Engine e(*OutputStore::Open(d.path()), {});
  e.set_live_options(clock.Options(8));
  const Title t{"late"};
  // Records as the ingest publishes them: timestamps from the rebased 1.4 s on.
  auto group = [&](uint32_t g) {
    std::vector<std::vector<uint8_t>> out;
    for (uint16_t r = 0; r < 2; ++r) {
      std::vector<uint8_t> data(3000 + g, static_cast<uint8_t>(g * 2 + r));
      for (auto& rec : proto::EncodeSegment({t.id, t.run, r, g, 126000 + uint64_t{g} * kSeg, kSeg}, data, 2048))
        out.push_back(std::move(rec));
    }
    return out;
  };
  // It starts reading in the middle of group 4 (its audio's chunks), after the re-announced start.
  auto g4 = group(4);
  REQUIRE(e.OnRecord(t.id, t.Start()).ok());
  const uint64_t skipped = e.stats().duplicates_skipped;
  for (size_t i = g4.size() / 2 + 1; i < g4.size(); ++i) {
    auto o = e.OnRecord(t.id, g4[i]);
    REQUIRE(o.ok());
    CHECK_FALSE(o->in_flight);
  }
  CHECK(e.stats().duplicates_skipped > skipped);
  CHECK(e.stats().rejected == 0);
  const fs::path video = d.path() / "late/v1/video-240p";
  CHECK_FALSE(fs::exists(video / "index.m3u8"));
  // Group 5 is the first whole one: the channel is listed from there.
  clock.ms += 2000;
  Feed(e, t.id, group(5));
  // A start re-announced mid-group (the next ingest cycle) changes nothing and keeps the group in flight.
  auto g6 = group(6);
  auto first = e.OnRecord(t.id, g6[0]);
  REQUIRE(first.ok());
  CHECK(first->in_flight);
  auto again = e.OnRecord(t.id, t.Start());
  REQUIRE(again.ok());
  CHECK(again->in_flight);
  clock.ms += 2000;
  Feed(e, t.id, {g6.begin() + 1, g6.end()});
  const std::string pl = test::ReadFile(video / "index.m3u8");
  INFO(pl);
  CHECK(pl.find("#EXT-X-MEDIA-SEQUENCE:5\n") != std::string::npos);
  CHECK(Listed(pl) == std::vector<std::string>{SegmentFileName(5), SegmentFileName(6)});
  // Group 5 arrived at +2 s having lasted 2 s: its wall-clock start is the clock's start.
  CHECK(DateTimes(pl).front() == "2027-01-15T08:00:00.000Z");
  CHECK(DateTimes(pl).back() == "2027-01-15T08:00:02.000Z");
  CHECK(e.stats().rejected == 0);

  // The title ends with 7 groups in all: the end's count is the ingest's.
  Feed(e, t.id, {t.End(7)});
  CHECK(test::ReadFile(video / "index.m3u8").ends_with("#EXT-X-ENDLIST\n"));
}
