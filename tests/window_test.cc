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
  uint32_t first_sequence = 0;  ///< > 0: a run resuming the live title (its timestamps start over)

  std::vector<uint8_t> Start() const {
    proto::TitleStart t;
    t.title = id;
    t.run_id = run;
    t.target_duration_s = 2;
    t.segment_duration_ms = 2000;
    t.first_sequence = first_sequence;
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
      for (auto& rec : proto::EncodeSegment({id, run, r, g, uint64_t{g - first_sequence} * kSeg, kSeg}, data, 2048))
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

namespace {

// The lines of a playlist from the first segment's tags on (what players step through).
std::vector<std::string> Body(const std::string& playlist) {
  std::vector<std::string> out;
  std::istringstream in(playlist);
  bool body = false;
  for (std::string line; std::getline(in, line);) {
    body |= line.starts_with("#EXT-X-PROGRAM-DATE-TIME") || line.starts_with("#EXTINF") ||
            line == "#EXT-X-DISCONTINUITY";
    if (body) out.push_back(line);
  }
  return out;
}

}  // namespace

TEST_CASE("live window: a run that resumes a live title continues it after a discontinuity") {
  test::TempDir d;
  Clock clock;
  Engine e(*OutputStore::Open(d.path()), {});
  e.set_live_options(clock.Options(8));  // 4 segments of 2 s
  const Title a{"channel"};
  REQUIRE(e.OnRecord(a.id, a.Start()).ok());
  for (uint32_t g = 0; g < 6; ++g) {
    clock.ms += 2000;
    Feed(e, a.id, a.Group(g));
  }
  // Run a dies after group 5; 30 s later run b resumes the title at group 6, its timestamps from 0 again.
  Title b{"channel"};
  b.first_sequence = 6;
  REQUIRE(e.OnRecord(b.id, b.Start()).ok());
  CHECK(e.stats().rejected == 0);
  clock.ms += 30000;
  Feed(e, b.id, b.Group(6));
  const fs::path video = d.path() / "channel/v1/video-240p";
  std::string pl = test::ReadFile(video / "index.m3u8");
  INFO(pl);
  // Segments 3-6, the discontinuity before 6 (and its date), still no DISCONTINUITY-SEQUENCE.
  CHECK(Listed(pl) == std::vector<std::string>{SegmentFileName(3), SegmentFileName(4), SegmentFileName(5),
                                               SegmentFileName(6)});
  CHECK(pl.find("#EXT-X-MEDIA-SEQUENCE:3\n") != std::string::npos);
  CHECK(pl.find("#EXT-X-DISCONTINUITY-SEQUENCE") == std::string::npos);
  std::vector<std::string> body = Body(pl);
  const auto disc = std::find(body.begin(), body.end(), "#EXT-X-DISCONTINUITY");
  REQUIRE(disc != body.end());
  CHECK(std::count(body.begin(), body.end(), "#EXT-X-DISCONTINUITY") == 1);
  REQUIRE(disc + 3 < body.end());
  CHECK(disc[1].starts_with("#EXT-X-PROGRAM-DATE-TIME:"));
  CHECK(disc[3] == SegmentFileName(6));
  // Wall clock: segment 5 started at 08:00:10 (run a's anchor); run b's first group arrived 30 s after
  // group 5, having lasted 2 s, so segment 6 starts at 08:00:40, not where segment 5 ended (08:00:12).
  CHECK(DateTimes(pl) == std::vector<std::string>{"2027-01-15T08:00:06.000Z", "2027-01-15T08:00:08.000Z",
                                                  "2027-01-15T08:00:10.000Z", "2027-01-15T08:00:40.000Z"});
  // Both renditions alike.
  const std::vector<std::string> audio = Body(test::ReadFile(d.path() / "channel/v1/audio-en/index.m3u8"));
  CHECK(std::count(audio.begin(), audio.end(), "#EXT-X-DISCONTINUITY") == 1);

  // While segment 6 is listed its tag stays; once it has left the window the
  // discontinuity sequence counts it, and the dates follow run b's anchor.
  for (uint32_t g = 7; g < 11; ++g) {
    clock.ms += 2000;
    Feed(e, b.id, b.Group(g));
    pl = test::ReadFile(video / "index.m3u8");
    CAPTURE(g);
    CAPTURE(pl);
    const bool listed = g < 10;  // the window holds g-3 .. g
    CHECK((pl.find("#EXT-X-DISCONTINUITY\n") != std::string::npos) == listed);
    CHECK((pl.find("#EXT-X-DISCONTINUITY-SEQUENCE:1\n") != std::string::npos) == !listed);
  }
  CHECK(DateTimes(pl) == std::vector<std::string>{"2027-01-15T08:00:42.000Z", "2027-01-15T08:00:44.000Z",
                                                  "2027-01-15T08:00:46.000Z", "2027-01-15T08:00:48.000Z"});
  // The state holds it; a restarted packager renders the same playlist; replays change nothing.
  auto state = ParseState(test::ReadFile(d.path() / "channel/.state.json"));
  REQUIRE(state.ok());
  CHECK(state->discontinuity_sequence == 1);
  CHECK(state->run_starts.empty());
  CHECK(state->runs.size() == 2);
  {
    Engine again(*OutputStore::Open(d.path()), {});
    again.set_live_options(clock.Options(8));
    Feed(again, a.id, {a.Start(), b.Start()});
    Feed(again, a.id, a.Group(5));
    Feed(again, b.id, b.Group(10));
    CHECK(again.stats().rejected == 0);
    CHECK(test::ReadFile(video / "index.m3u8") == pl);
  }
  // Run b ends the title with the groups of both runs.
  Feed(e, b.id, {b.End(11)});
  CHECK(e.stats().rejected == 0);
  CHECK(e.IsComplete("channel"));
  CHECK(test::ReadFile(video / "index.m3u8").ends_with("#EXT-X-ENDLIST\n"));
}

TEST_CASE("live window: resumed runs that do not fit are refused, with the reason") {
  test::TempDir d;
  Clock clock;
  Engine e(*OutputStore::Open(d.path()), {});
  e.set_live_options(clock.Options(8));
  const Title a{"chan"};
  Feed(e, a.id, {a.Start()});
  for (uint32_t g = 0; g < 3; ++g) Feed(e, a.id, a.Group(g));
  const fs::path video = d.path() / "chan/v1/video-240p";
  const std::string before = test::ReadFile(video / "index.m3u8");

  // A run that says it resumes after more groups than arrived (they were never read here).
  Title ahead{"chan"};
  ahead.first_sequence = 5;
  Feed(e, a.id, {ahead.Start()});
  CHECK(e.stats().rejected_by_reason[static_cast<size_t>(RejectReason::kOutOfOrder)] == 1);
  Feed(e, a.id, ahead.Group(5));
  CHECK(test::ReadFile(video / "index.m3u8") == before);

  // A run of another layout (a third rendition) cannot resume it.
  proto::TitleStart other;
  other.title = "chan";
  other.run_id = proto::NewRunId();
  other.target_duration_s = 2;
  other.segment_duration_ms = 2000;
  other.first_sequence = 3;
  other.renditions = Renditions();
  other.renditions.push_back(test::Audio("audio-fr", "fr", "French", false));
  Feed(e, a.id, {proto::Encode(other)});
  CHECK(e.stats().rejected_by_reason[static_cast<size_t>(RejectReason::kConflict)] == 1);

  // The right one does; once the title has ended, nothing resumes it.
  Title b{"chan"};
  b.first_sequence = 3;
  Feed(e, a.id, {b.Start()});
  Feed(e, a.id, b.Group(3));
  Feed(e, a.id, {b.End(4)});
  CHECK(e.IsComplete("chan"));
  Title c{"chan"};
  c.first_sequence = 4;
  Feed(e, a.id, {c.Start()});
  CHECK(e.stats().rejected_by_reason[static_cast<size_t>(RejectReason::kAfterEnd)] == 1);
  CHECK(Listed(test::ReadFile(video / "index.m3u8")).size() == 4);

  // A resumed start describing a source file does not decode.
  proto::TitleStart file;
  file.title = "chan";
  file.run_id = proto::NewRunId();
  file.target_duration_s = 2;
  file.segment_duration_ms = 2000;
  file.first_sequence = 2;
  file.source_size = 1000;
  file.renditions = Renditions();
  auto decoded = proto::Decode(proto::Encode(file));
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.status().message().find("only a live title is resumed") != std::string::npos);

  // A packager that meets the title only from the resumed run on joins it there, with no discontinuity.
  test::TempDir late;
  Engine l(*OutputStore::Open(late.path()), {});
  l.set_live_options(clock.Options(8));
  Feed(l, a.id, {b.Start()});
  Feed(l, a.id, b.Group(3));
  const std::string joined = test::ReadFile(late.path() / "chan/v1/video-240p/index.m3u8");
  INFO(joined);
  CHECK(Listed(joined) == std::vector<std::string>{SegmentFileName(3)});
  CHECK(joined.find("#EXT-X-MEDIA-SEQUENCE:3\n") != std::string::npos);
  CHECK(joined.find("DISCONTINUITY") == std::string::npos);
  CHECK(l.stats().rejected == 0);
}

TEST_CASE("live window: PROGRAM-DATE-TIME comes from the records' timestamps, so packagers agree however late") {
  // Two packagers: one reads each group as it is published, one catches up the same records 40 s later.
  const Title t{"dated"};
  const int64_t produced = 1'800'000'000'000;  // when the ingest published group 0 (its end cut)
  std::vector<std::string> playlists;
  for (int64_t lag : {0, 40000}) {
    test::TempDir d;
    Clock clock;
    clock.ms = produced + lag;
    Engine e(*OutputStore::Open(d.path()), {});
    e.set_live_options(clock.Options(8));
    REQUIRE(e.OnRecord(t.id, t.Start(), produced - 2000).ok());
    for (uint32_t g = 0; g < 3; ++g)
      for (const auto& r : t.Group(g)) REQUIRE(e.OnRecord(t.id, r, produced + int64_t{g} * 2000).ok());
    playlists.push_back(test::ReadFile(d.path() / "dated/v1/video-240p/index.m3u8"));
  }
  INFO(playlists[0]);
  CHECK(DateTimes(playlists[0]) == std::vector<std::string>{"2027-01-15T07:59:58.000Z", "2027-01-15T08:00:00.000Z",
                                                            "2027-01-15T08:00:02.000Z"});
  CHECK(playlists[1] == playlists[0]);
}
