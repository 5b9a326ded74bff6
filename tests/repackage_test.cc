// Re-packaging jobs that change segment length and renditions.
//
// Unit level (no broker): the RecutStage (packager/src/recut_stage.h) on records
// made as the ingest makes them: a crashed run and its re-run, versions, the
// rendition filter, totals, and the same bytes on every run.
// Through the real broker: a title of two variants, two audio languages and
// three subtitle tracks is ingested at 6 s from a copy of its files, the copy is
// deleted, and `kafka-hls repackage` re-cuts it from the log alone to 4 s fMP4
// segments: every segment within the target, every rendition as long as
// before, ffmpeg decodes it without a word, two runs are byte-identical, hls.js
// plays it. A title whose GOPs are longer than the target is refused, naming a
// length that works. --rendition keeps only what it names; an unknown id fails
// naming the title and its ids.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <map>
#include <regex>

#include <fmt/format.h>

#include "hls_check.h"
#include "khls/proto.h"
#include "khls/segmenter.h"
#include "pipeline_util.h"
#include "recut_stage.h"

using namespace khls::test;
namespace fs = std::filesystem;
namespace proto = khls::proto;
namespace segmenter = khls::segmenter;
using khls::ErrorCode;
using khls::kClock;
using khls::packager::RecutOptions;
using khls::packager::RecutStage;

namespace {

const bool kQuietLibrary = (segmenter::SetLibraryLogLevel(false), true);

bool Contains(const std::string& haystack, std::string_view needle) { return haystack.find(needle) != std::string::npos; }

// ---- records as the ingest publishes them ---------------------------------------

struct Ingested {
  segmenter::TitleInfo info;
  std::vector<segmenter::Segment> groups;
};

/// The Segmenter's groups of `files` (test media) at a 6 s target, once per process.
const Ingested& Segmented(const std::vector<std::string>& files) {
  static std::map<std::vector<std::string>, Ingested> cache;
  if (auto it = cache.find(files); it != cache.end()) return it->second;
  std::vector<std::string> urls;
  for (const std::string& f : files) urls.push_back((kMedia / f).string());
  segmenter::Params params;
  params.target_duration = 6.0;
  auto opened = segmenter::Segmenter::Open(urls, params);
  REQUIRE_MESSAGE(opened.ok(), opened.status().message());
  Ingested t;
  t.info = (*opened)->info();
  for (;;) {
    auto next = (*opened)->Next();
    REQUIRE_MESSAGE(next.ok(), next.status().message());
    if (!next->has_value()) break;
    t.groups.push_back(std::move(**next));
  }
  REQUIRE(t.groups.size() >= 3);
  return cache.emplace(files, std::move(t)).first->second;
}

proto::RunId Id(uint8_t b) {
  proto::RunId id{};
  id.fill(b);
  return id;
}

struct RunSpec {
  std::vector<std::string> files;
  uint32_t version = 1;
  uint8_t source = 1;        ///< fingerprint bytes
  uint8_t run = 1;           ///< run id bytes
  size_t groups = SIZE_MAX;  ///< publish only the first groups (a crashed run)
  bool end = true;           ///< publish the title end
};

using Records = std::vector<std::vector<uint8_t>>;

/// One ingest run's records of title "movie" (64 KiB chunks: segments span several).
Records Publish(const RunSpec& spec) {
  const Ingested& t = Segmented(spec.files);
  proto::TitleStart start;
  start.title = "movie";
  start.run_id = Id(spec.run);
  start.title_version = spec.version;
  start.target_duration_s = 6;
  start.segment_duration_ms = 6000;
  start.start_offset = static_cast<uint32_t>(t.info.decode_lead);
  start.source_fingerprint = Id(spec.source);
  start.source_name = "test";
  for (const segmenter::RenditionInfo& r : t.info.renditions) {
    proto::Rendition d;
    d.id = r.id;
    d.kind = r.kind == segmenter::TrackKind::kVideo   ? proto::RenditionKind::kVideo
             : r.kind == segmenter::TrackKind::kAudio ? proto::RenditionKind::kAudio
                                                      : proto::RenditionKind::kSubtitles;
    d.language = r.language;
    d.name = r.name;
    d.codecs = r.codecs;
    d.width = static_cast<uint32_t>(r.width);
    d.height = static_cast<uint32_t>(r.height);
    start.renditions.push_back(d);
  }
  Records out{proto::Encode(start)};
  proto::TitleEnd end{start.title, start.run_id, 0, 0, std::vector<proto::RenditionTotals>(start.renditions.size())};
  for (const segmenter::Segment& g : t.groups) {
    if (g.sequence >= spec.groups) break;
    for (size_t r = 0; r < g.parts.size(); ++r) {
      const segmenter::Part& p = g.parts[r];
      proto::SegmentMeta meta{start.title, start.run_id, static_cast<uint16_t>(r), g.sequence,
                              static_cast<uint64_t>(p.start_pts), static_cast<uint64_t>(p.duration)};
      for (auto& rec : proto::EncodeSegment(meta, p.data, 64 * 1024)) out.push_back(std::move(rec));
      end.renditions[r].bytes += p.data.size();
      end.renditions[r].duration += static_cast<uint64_t>(p.duration);
    }
    ++end.segment_count;
    end.total_duration += static_cast<uint64_t>(g.duration);
  }
  if (spec.end) out.push_back(proto::Encode(end));
  return out;
}

/// What a RecutStage emitted, decoded and reassembled.
struct Emitted {
  std::string bytes;  ///< every record, in order (for determinism)
  std::vector<proto::TitleStart> starts;
  std::vector<proto::TitleEnd> ends;
  /// Per new rendition: its segments, in order.
  std::map<uint16_t, std::vector<proto::AssembledSegment>> segments;
};

struct StageRun {
  Emitted emitted;
  khls::Status finish;
  khls::packager::RecutStats stats;
};

StageRun RunStage(const RecutOptions& options, const std::vector<Records>& logs) {
  StageRun run;
  proto::Reassembler reassembler;
  auto stage = RecutStage::Create(options, [&](std::string_view key, std::span<const uint8_t> value) {
    run.emitted.bytes.append(reinterpret_cast<const char*>(value.data()), value.size());
    auto rec = proto::Decode(value);
    REQUIRE_MESSAGE(rec.ok(), rec.status().message());
    CHECK(proto::TitleOf(*rec) == key);
    if (auto* s = std::get_if<proto::TitleStart>(&*rec)) run.emitted.starts.push_back(*s);
    if (auto* e = std::get_if<proto::TitleEnd>(&*rec)) run.emitted.ends.push_back(*e);
    if (auto* c = std::get_if<proto::SegmentChunk>(&*rec)) {
      auto seg = reassembler.Add(*c);
      REQUIRE_MESSAGE(seg.ok(), seg.status().message());
      if (seg->has_value()) run.emitted.segments[c->rendition].push_back(std::move(**seg));
    }
    return khls::Status::Ok();
  });
  REQUIRE_MESSAGE(stage.ok(), stage.status().message());
  for (const Records& log : logs)
    for (const auto& r : log) REQUIRE((*stage)->OnRecord("movie", r).ok());
  run.finish = (*stage)->Finish();
  run.stats = (*stage)->stats();
  return run;
}

uint64_t Sum(const std::vector<proto::AssembledSegment>& segments) {
  uint64_t d = 0;
  for (const auto& s : segments) d += s.duration;
  return d;
}

// ---- the broker and the binary ---------------------------------------------------

/// The topic with title "movie" (multilang.mkv + ladder_b.mp4 + sidecar.fr.vtt: 2
/// video, 2 audio, 3 subtitle renditions) and title "long" (10 s GOPs), ingested at
/// 6 s from copies that are deleted afterwards. Once per process.
struct Topic {
  TempDir dir;
  std::string name = Unique("repackage");
  fs::path orig;  ///< the titles re-packaged as they are (MPEG-TS)

  Topic() {
    RequireBroker();
    const fs::path src = dir.path() / "src";
    fs::create_directories(src);
    for (const char* f : {"multilang.mkv", "ladder_b.mp4", "sidecar.fr.vtt", "longgop.mp4"})
      fs::copy_file(kMedia / f, src / f);
    REQUIRE(RunToEnd({kBin, "ingest", (src / "multilang.mkv").string(), (src / "ladder_b.mp4").string(), "--title",
                      "movie", "--brokers", Brokers(), "--topic", name, "--segment-duration", "6", "--subtitles",
                      (src / "sidecar.fr.vtt").string()},
                     dir.path() / "ingest.log") == 0);
    REQUIRE(RunToEnd(IngestArgs(src / "longgop.mp4", "long", name, {"--segment-duration", "6"}),
                     dir.path() / "ingest.log") == 0);
    // Re-packaging has the log and nothing else.
    fs::remove_all(src);
    orig = dir.path() / "orig";
    auto r = Repackage({"--title", "movie", "--title", "long", "--out", orig.string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }

  CommandResult Repackage(const std::vector<std::string>& args) const {
    std::string cmd = fmt::format("{} repackage --brokers {} --topic {}", Quote(kBin), Brokers(), name);
    for (const std::string& a : args) cmd.append(" ").append(Quote(a));
    return Run(cmd);
  }
};

const Topic& SharedTopic() {
  static Topic topic;
  return topic;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<double> Extinfs(const std::string& playlist) {
  std::vector<double> out;
  std::regex extinf(R"(#EXTINF:([0-9.]+),)");
  for (std::sregex_iterator it(playlist.begin(), playlist.end(), extinf), end; it != end; ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

int TargetDuration(const std::string& playlist) {
  std::smatch m;
  REQUIRE(std::regex_search(playlist, m, std::regex(R"(#EXT-X-TARGETDURATION:(\d+))")));
  return std::stoi(m[1]);
}

// ffmpeg reads a playlist to its end, decoding audio and video (WebVTT is parsed and
// copied: there is no subtitle decoder to the null muxer): no error line, exit 0.
void CheckDecodes(const fs::path& playlist) {
  auto r = Run("ffmpeg -nostdin -v error -i " + Quote(playlist.string()) + " -map 0 -c:s copy -f null -");
  CHECK_MESSAGE(r.exit_code == 0, playlist << ": " << r.output);
  CHECK_MESSAGE(r.output.empty(), playlist << ": " << r.output);
}

// Audio parts end at the first frame of the next part: up to an AAC frame (21.3 ms) past the cut.
constexpr double kAudioFrame = 0.0214;

}  // namespace

TEST_CASE("RecutStage: a crashed run and its re-run, the rendition filter, totals, the same bytes every time") {
  const std::vector<std::string> movie = {"multilang.mkv"};  // video-240p, audio-en, audio-fr, subs-en, subs-fr
  const Ingested& old = Segmented(movie);
  REQUIRE(old.info.renditions.size() == 5);
  // Run 1 died after two groups; run 2 (the same source) published everything again.
  const std::vector<Records> log = {Publish({movie, 1, 1, 1, 2, false}), Publish({movie, 1, 1, 2})};
  RecutOptions options;
  options.segment_duration = 2;
  options.renditions = {"video-240p", "audio-fr", "subs-en"};
  const StageRun a = RunStage(options, log);
  REQUIRE_MESSAGE(a.finish.ok(), a.finish.message());

  // One title start, the kept renditions in the title's order, the new target.
  REQUIRE(a.emitted.starts.size() == 1);
  const proto::TitleStart& start = a.emitted.starts[0];
  REQUIRE(start.renditions.size() == 3);
  CHECK(start.renditions[0].id == "video-240p");
  CHECK(start.renditions[1].id == "audio-fr");
  CHECK(start.renditions[1].name == "Français");
  CHECK(start.renditions[2].id == "subs-en");
  CHECK(start.target_duration_s == 2);
  CHECK(start.segment_duration_ms == 2000);
  CHECK(start.title_version == 1);
  CHECK(start.run_id != Id(1));
  CHECK(start.run_id != Id(2));
  CHECK(start.source_fingerprint != Id(1));
  // The re-run's copies of groups 0 and 1 were skipped, not cut twice.
  CHECK(a.stats.duplicates_skipped > 0);
  CHECK(a.stats.segments_in == 3 * old.groups.size());

  // 2 s GOPs, 2 s target: 2 s segments (20 s of video: 10), each within the target.
  const std::map<uint16_t, size_t> old_index = {{0, 0}, {1, 2}, {2, 3}};
  REQUIRE(a.emitted.segments.size() == 3);
  const size_t groups = a.emitted.segments.at(0).size();
  CHECK(groups == 10);
  for (const auto& [r, segments] : a.emitted.segments) {
    CAPTURE(r);
    CHECK(segments.size() == groups);
    for (size_t i = 0; i < segments.size(); ++i) {
      CHECK(segments[i].sequence == i);
      CHECK(khls::ToSeconds(segments[i].duration) <= 2.0 + (r == 1 ? kAudioFrame : 0.011));
    }
    // Every rendition lasts what it lasted: the ingest's timings make the sums exact.
    uint64_t before = 0;
    for (const segmenter::Segment& g : old.groups) before += static_cast<uint64_t>(g.parts[old_index.at(r)].duration);
    CHECK(Sum(segments) == before);
  }
  // The title end: the new count and the totals of what was emitted.
  REQUIRE(a.emitted.ends.size() == 1);
  const proto::TitleEnd& end = a.emitted.ends[0];
  CHECK(end.run_id == start.run_id);
  CHECK(end.segment_count == groups);
  REQUIRE(end.renditions.size() == 3);
  for (uint16_t r = 0; r < 3; ++r) {
    uint64_t bytes = 0;
    for (const auto& s : a.emitted.segments.at(r)) bytes += s.data.size();
    CHECK(end.renditions[r].bytes == bytes);
    CHECK(end.renditions[r].duration == Sum(a.emitted.segments.at(r)));
  }
  CHECK(end.total_duration == end.renditions[0].duration);

  // Determinism: the same log and options, the same records, byte for byte.
  const StageRun again = RunStage(options, log);
  CHECK(again.emitted.bytes == a.emitted.bytes);

  // Renditions only: the kept segments pass through as they came, under their new index.
  RecutOptions only;
  only.renditions = {"video-240p", "audio-fr"};
  const StageRun kept = RunStage(only, log);
  REQUIRE_MESSAGE(kept.finish.ok(), kept.finish.message());
  REQUIRE(kept.emitted.starts.size() == 1);
  CHECK(kept.emitted.starts[0].target_duration_s == 6);
  REQUIRE(kept.emitted.segments.size() == 2);
  for (size_t g = 0; g < old.groups.size(); ++g) {
    CHECK(kept.emitted.segments.at(0).at(g).data == old.groups[g].parts[0].data);
    CHECK(kept.emitted.segments.at(1).at(g).data == old.groups[g].parts[2].data);
    CHECK(kept.emitted.segments.at(1).at(g).duration == static_cast<uint64_t>(old.groups[g].parts[2].duration));
  }
  REQUIRE(kept.emitted.ends.size() == 1);
  CHECK(kept.emitted.ends[0].segment_count == old.groups.size());
  // Other options, other ids: trees cut differently never take each other's records.
  CHECK(kept.emitted.starts[0].run_id != start.run_id);
}

TEST_CASE("RecutStage: versions as the Engine follows them; options that do not fit a version name it") {
  const std::vector<std::string> movie = {"multilang.mkv"}, plain = {"h264_aac.mp4"};  // plain: video-240p, audio-1
  RecutOptions options;
  options.segment_duration = 3;
  options.renditions = {"video-240p", "audio-fr"};

  // Version 1 has no audio-fr: on its own, the job fails naming the title, the id and its renditions.
  const StageRun v1 = RunStage(options, {Publish({plain, 1, 1, 1})});
  CHECK(v1.finish.code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(v1.finish.message(), "title 'movie' version 1 has no rendition 'audio-fr'"), v1.finish.message());
  CHECK_MESSAGE(Contains(v1.finish.message(), "its renditions: video-240p, audio-1"), v1.finish.message());
  CHECK(v1.emitted.starts.empty());
  CHECK(v1.emitted.segments.empty());

  // Version 2 replaces it; a replay of version 1's start afterwards is stale, and a run of
  // another source under version 2 conflicts: both ignored, as the Engine ignores them.
  const StageRun v2 = RunStage(options, {Publish({plain, 1, 1, 1}), Publish({movie, 2, 2, 2}),
                                         Records{Publish({plain, 1, 1, 3}).front()}, Publish({plain, 2, 3, 4})});
  REQUIRE_MESSAGE(v2.finish.ok(), v2.finish.message());
  REQUIRE(v2.emitted.starts.size() == 1);
  CHECK(v2.emitted.starts[0].title_version == 2);
  CHECK(v2.emitted.starts[0].renditions.size() == 2);
  CHECK(v2.emitted.ends.size() == 1);
  CHECK(v2.stats.rejected > 0);  // the conflicting start
  for (const auto& [r, segments] : v2.emitted.segments)
    for (const auto& s : segments) CHECK(khls::ToSeconds(s.duration) <= 3.0 + kAudioFrame);

  // An incomplete title is cut as far as its media decides, and stays incomplete.
  const StageRun partial = RunStage(options, {Publish({movie, 1, 1, 1, 2, false})});
  REQUIRE_MESSAGE(partial.finish.ok(), partial.finish.message());
  CHECK(partial.emitted.ends.empty());
  REQUIRE(partial.emitted.segments.count(0));
  // Two old groups (12 s) of 2 s GOPs at a 3 s target: 2 s segments up to the last decided cut.
  CHECK(partial.emitted.segments.at(0).size() >= 4);
  CHECK(Sum(partial.emitted.segments.at(0)) <= 12 * static_cast<uint64_t>(kClock));

  // Format-1 titles (kafka-hls 0.1: one muxed rendition) cannot be cut or filtered: said per title.
  {
    const std::string all = ReadFile(kSource / "tests/fixtures/v1/records.bin");
    size_t pos = 0, records = 0, emitted = 0;
    auto u32 = [&] {
      REQUIRE(pos + 4 <= all.size());
      uint32_t v = 0;
      for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(all[pos++]);
      return v;
    };
    auto stage = RecutStage::Create(options, [&](std::string_view, std::span<const uint8_t>) {
      ++emitted;
      return khls::Status::Ok();
    });
    REQUIRE(stage.ok());
    while (pos < all.size()) {
      const uint32_t key_size = u32();
      const std::string key = all.substr(pos, key_size);
      pos += key_size;
      const uint32_t size = u32();
      REQUIRE(pos + size <= all.size());
      REQUIRE((*stage)->OnRecord(key, {reinterpret_cast<const uint8_t*>(all.data()) + pos, size}).ok());
      pos += size;
      ++records;
    }
    CHECK(records == 74);
    CHECK(emitted == 0);
    const khls::Status st = (*stage)->Finish();
    CHECK(st.code() == ErrorCode::kInvalidArgument);
    CHECK_MESSAGE(Contains(st.message(), "3 titles could not be re-packaged: title 'fixture' version 2 is in record "
                                         "format 1"),
                  st.message());
  }

  // Only subtitles left, and a bad duration: refused.
  RecutOptions subs;
  subs.renditions = {"subs-en"};
  const StageRun none = RunStage(subs, {Publish({movie, 1, 1, 1})});
  CHECK(none.finish.code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(none.finish.message(), "keep at least one video or audio rendition"), none.finish.message());
  RecutOptions bad;
  bad.segment_duration = 3601;
  CHECK(RecutStage::Create(bad, nullptr).status().code() == ErrorCode::kInvalidArgument);
  bad.segment_duration = -1;
  CHECK(RecutStage::Create(bad, nullptr).status().code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("repackage re-cuts a title from the log alone: 4 s fMP4 segments, same durations, decodes, plays") {
  const Topic& topic = SharedTopic();
  REQUIRE_MESSAGE(fs::exists(NodeModules() + "/playwright-core"), "playwright-core missing in " << NodeModules()
                                                                                                << " (scripts/setup.sh)");
  const fs::path cut = topic.dir.path() / "cut", cut2 = topic.dir.path() / "cut2";
  const std::vector<std::string> args = {"--title", "movie", "--container", "fmp4", "--segment-duration", "4"};
  auto with_out = [&](const fs::path& out) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--out", out.string()});
    return a;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto r = topic.Repackage(with_out(cut));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  MESSAGE(fmt::format("re-cut of 20 s x 7 renditions to 4 s fMP4: {:.2f} s", seconds));
  // Progress per title on stderr.
  CHECK_MESSAGE(Contains(r.output, "repackage: title 'movie' version 1: 7 of 7 renditions"), r.output);
  CHECK_MESSAGE(Contains(r.output, "repackage: title 'movie' version 1 done: 4 segments became 5"), r.output);

  // Two runs: the same tree, state files included.
  auto again = topic.Repackage(with_out(cut2));
  REQUIRE_MESSAGE(again.exit_code == 0, again.output);
  CHECK(TreeDigest(cut) == TreeDigest(cut2));
  // A tree holds one cut of a title: another cut into it fails, and leaves it as it was.
  auto refused = topic.Repackage({"--title", "movie", "--container", "fmp4", "--segment-duration", "3", "--out",
                                  cut2.string()});
  CHECK(refused.exit_code == 2);
  CHECK_MESSAGE(Contains(refused.output, "already holds title 'movie' cut otherwise"), refused.output);
  CHECK(TreeDigest(cut2) == TreeDigest(cut));

  const std::vector<std::string> dirs = RenditionDirs(cut / "movie");
  REQUIRE(dirs.size() == 7);  // 2 video, 2 audio, 3 subtitles
  for (const std::string& d : dirs) {
    CAPTURE(d);
    const std::string playlist = ReadFile(cut / "movie" / d / "index.m3u8");
    const std::string before = ReadFile(topic.orig / "movie" / d / "index.m3u8");
    CHECK(Contains(playlist, "#EXT-X-ENDLIST"));
    CHECK(TargetDuration(playlist) == 4);
    const std::vector<double> durations = Extinfs(playlist);
    // 2 s GOPs: cuts at 4, 8, 12, 16 s (4 and 8 fall inside the ingest's 0-6 and 6-12 s segments).
    CHECK(durations.size() == 5);
    for (double x : durations) {
      CHECK(x <= 4.0 + kAudioFrame);
      CHECK(std::llround(x) <= 4);
    }
    CHECK(std::abs(PlaylistDuration(playlist) - PlaylistDuration(before)) < 0.1);
    if (!Contains(d, "subs-")) CHECK(Contains(playlist, "#EXT-X-MAP:URI=\"init.mp4\""));
    CheckDecodes(cut / "movie" / d / "index.m3u8");
  }
  CheckDecodes(cut / "movie" / "master.m3u8");

  // 10 s GOPs cannot be cut at keyframes into segments of at most 4 s: a 10 s segment would break
  // EXT-X-TARGETDURATION 4. The title is refused, naming the GOP and a length that works (exit 3),
  // and what was written of it is never complete; at 10 s it re-cuts.
  const fs::path long_out = topic.dir.path() / "long";
  auto too_short = topic.Repackage({"--title", "long", "--segment-duration", "4", "--out", long_out.string()});
  CHECK(too_short.exit_code == 3);
  CHECK_MESSAGE(Contains(too_short.output, "title 'long' version 1: its GOP at 0.000 s lasts 10.000 s, so it cannot "
                                           "be cut at keyframes into segments of at most 4 s (EXT-X-TARGETDURATION "
                                           "4); re-cut it with --segment-duration 10 or more"),
                too_short.output);
  for (const auto& f : fs::recursive_directory_iterator(long_out))
    if (f.path().extension() == ".m3u8") CHECK_FALSE(Contains(ReadFile(f.path()), "#EXT-X-ENDLIST"));
  const fs::path long_ok = topic.dir.path() / "long10";
  auto fits = topic.Repackage({"--title", "long", "--segment-duration", "10", "--out", long_ok.string()});
  REQUIRE_MESSAGE(fits.exit_code == 0, fits.output);
  for (const std::string& d : RenditionDirs(long_ok / "long")) {
    CAPTURE(d);
    const std::string playlist = ReadFile(long_ok / "long" / d / "index.m3u8");
    CHECK(TargetDuration(playlist) == 10);
    for (double x : Extinfs(playlist)) CHECK(x == doctest::Approx(10.0).epsilon(0.003));
    CHECK(std::abs(PlaylistDuration(playlist) - PlaylistDuration(ReadFile(topic.orig / "long" / d / "index.m3u8"))) <
          0.1);
    CheckDecodes(long_ok / "long" / d / "index.m3u8");
  }

  // hls.js plays the re-cut title past two new cuts (one short playback), with the English
  // subtitles: a cue before the first cut, and the one across the ingest's 6 s cut, re-cut once.
  const fs::path serve_log = topic.dir.path() / "serve.log";
  Child serve({kBin, "serve", cut.string(), "--port", "0"}, serve_log);
  const std::string base = WaitForUrl(serve_log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(serve_log));
  auto play = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                        Quote((kSource / "tests/player/play.mjs").string()) + " --url " +
                        Quote(base + "movie/master.m3u8") +
                        " --until-time 9 --timeout 60 --subtitle-lang en --expect-cue 'First cue@2' "
                        "--expect-cue 'Boundary cue@6'");
  INFO("hls.js: " << play.output);
  CHECK(play.exit_code == 0);
  CHECK(Contains(play.output, "\"errors\":[]"));
  CHECK(Contains(play.output, "\"text\":\"Boundary cue\""));
  serve.Kill(SIGTERM);
  CHECK(serve.Wait() == 0);
}

TEST_CASE("repackage --rendition keeps only the renditions named; an unknown id fails naming the title") {
  const Topic& topic = SharedTopic();

  // Video and French audio, as ingested: the master lists them and nothing else, the segments are the log's.
  const fs::path only = topic.dir.path() / "only";
  auto r = topic.Repackage({"--title", "movie", "--out", only.string(), "--rendition", "video-240p", "--rendition",
                            "audio-fr"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const Master master = ParseMaster(ReadFile(only / "movie/master.m3u8"));
  REQUIRE(master.variants.size() == 1);
  CHECK(master.variants[0].uri == "v1/video-240p/index.m3u8");
  CHECK(master.variants[0].attrs.count("SUBTITLES") == 0);
  REQUIRE(master.media.size() == 1);
  CHECK(master.media[0].at("TYPE") == "AUDIO");
  CHECK(master.media[0].at("LANGUAGE") == "fr");
  CHECK(master.media[0].at("DEFAULT") == "YES");  // the group's only member plays by default
  CHECK(Sorted(RenditionDirs(only / "movie")) == std::vector<std::string>{"v1/audio-fr", "v1/video-240p"});
  size_t files = 0;
  for (const std::string d : {"v1/video-240p", "v1/audio-fr"}) {
    const std::string playlist = ReadFile(only / "movie" / d / "index.m3u8");
    CHECK(playlist == ReadFile(topic.orig / "movie" / d / "index.m3u8"));
    for (const std::string& s : PlaylistSegments(playlist)) {
      CHECK(ReadFile(only / "movie" / d / s) == ReadFile(topic.orig / "movie" / d / s));
      ++files;
    }
  }
  CHECK(files == 8);
  CHECK_FALSE(fs::exists(only / "movie/v1/audio-en"));
  CheckDecodes(only / "movie/master.m3u8");

  // Both at once: the other variant and English audio, re-cut to 3 s.
  const fs::path both = topic.dir.path() / "both";
  r = topic.Repackage({"--title", "movie", "--out", both.string(), "--rendition", "video-270p", "--rendition",
                       "audio-en", "--segment-duration", "3"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(Sorted(RenditionDirs(both / "movie")) == std::vector<std::string>{"v1/audio-en", "v1/video-270p"});
  for (const std::string d : {"v1/video-270p", "v1/audio-en"}) {
    const std::string playlist = ReadFile(both / "movie" / d / "index.m3u8");
    CHECK(TargetDuration(playlist) == 3);
    for (double x : Extinfs(playlist)) CHECK(x <= 3.0 + kAudioFrame);
    CHECK(std::abs(PlaylistDuration(playlist) - PlaylistDuration(ReadFile(topic.orig / "movie" / d / "index.m3u8"))) <
          0.1);
  }
  CheckDecodes(both / "movie/master.m3u8");

  // An id the title does not have: exit 2, naming the id, the title and the ids it has.
  r = topic.Repackage({"--title", "movie", "--out", (topic.dir.path() / "bad").string(), "--rendition", "audio-xx",
                       "--rendition", "video-240p"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(Contains(r.output, "error: title 'movie' version 1 has no rendition 'audio-xx' (--rendition); its "
                                   "renditions: video-240p, video-270p, audio-en, audio-fr, subs-en, subs-fr, subs-fr-2"),
                r.output);
  CHECK_FALSE(fs::exists(topic.dir.path() / "bad/movie/master.m3u8"));
  // A duration outside (0, 3600]: bad usage.
  r = topic.Repackage({"--title", "movie", "--out", (topic.dir.path() / "bad").string(), "--segment-duration", "0"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(Contains(r.output, "--segment-duration 0 is not in (0, 3600]"), r.output);
}
