// Reading a whole topic without a consumer group: re-packaging and describe.
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <fmt/ranges.h>

#include "khls/kafka.h"
#include "khls/log.h"
#include "khls/packager.h"
#include "khls/title_identity.h"
#include "khls/title_state.h"
#include "recut_stage.h"

namespace khls::packager {
Result<Stats> Repackage(const RepackageParams& p, const std::atomic<bool>& stop) {
  for (const auto& t : p.titles) KHLS_RETURN_IF_ERROR(proto::CheckTitleId(t).WithContext("--title"));
  const auto t0 = std::chrono::steady_clock::now();
  KHLS_ASSIGN_OR_RETURN(OutputStore store, OutputStore::Open(p.out_dir, p.durable));
  Engine engine(std::move(store), p.limits, kBackgroundBatching, p.container);
  KHLS_RETURN_IF_ERROR(engine.EnableEncryption(p.encryption));
  // A rebuild from the log keeps every retained segment of a live title too (an archive of it).
  engine.set_live_options(LiveOptions{0, {}});
  // A new segment length or fewer renditions: the Engine gets the records an ingest
  // with those options would have published (recut_stage.h). Otherwise the log's own.
  std::unique_ptr<RecutStage> stage;
  if (p.segment_duration != 0 || !p.renditions.empty()) {
    KHLS_ASSIGN_OR_RETURN(stage, RecutStage::Create(RecutOptions{.segment_duration = p.segment_duration,
                                                                 .renditions = p.renditions,
                                                                 .limits = p.limits},
                                                    [&engine](std::string_view key, std::span<const uint8_t> value) {
                                                      return engine.OnRecord(key, value).status();
                                                    }));
  }
  std::set<std::string> found;
  uint64_t other = 0;
  Status s = kafka::ScanTopic(
      p.source.brokers, p.source.topic, p.source.kafka,
      [&](int32_t partition, int64_t offset, std::string_view key, std::span<const uint8_t> value) -> Status {
        if (!p.titles.empty() && !p.titles.count(std::string(key))) {
          ++other;
          return Status::Ok();
        }
        if (stage) {
          Status st = stage->OnRecord(key, value);
          return st.ok() ? st : st.WithContext(fmt::format("partition {} offset {}", partition, offset));
        }
        auto r = engine.OnRecord(key, value);
        if (!r.ok()) return r.status().WithContext(fmt::format("partition {} offset {}", partition, offset));
        if (!r->title.empty()) found.insert(r->title);
        return Status::Ok();
      },
      stop);
  KHLS_RETURN_IF_ERROR(s);
  // Titles that could not be re-cut are reported once everything else is durable.
  const Status recut = stage ? stage->Finish() : Status::Ok();
  KHLS_RETURN_IF_ERROR(engine.Flush());
  if (stage) found = stage->titles();
  for (const auto& t : p.titles)
    if (!found.count(t))
      return Error(ErrorCode::kInvalidArgument, "title '{}' has no records in topic '{}'", t, p.source.topic);
  Stats stats = engine.stats();
  stats.other_titles = other;
  if (stage) {
    // The log's records, and what was skipped of them before the Engine saw the new ones.
    const RecutStats& rs = stage->stats();
    stats.records = rs.records;
    stats.duplicates_skipped += rs.duplicates_skipped;
    stats.rejected += rs.rejected;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::Info("repackage: {} old segments became {} segment groups ({:.1f} s of media) in {:.2f} s", rs.segments_in,
              rs.groups_out, ToSeconds(rs.media_out), seconds);
  }
  // The Engine keeps the first source of a version it holds: a tree that already holds another
  // cut of a title (other options, or a live packager's) is left as it was. Say so, not "rebuilt".
  Status kept = Status::Ok();
  std::set<std::string> held;
  if (stage) {
    for (const auto& t : found) {
      const std::optional<proto::RunId> run = stage->EmittedRun(t);
      if (!run) continue;
      auto text = engine.store().Read(std::filesystem::path(t) / kStateFileName);
      if (!text.ok()) continue;  // nothing written for it
      auto state = ParseState(*text);
      if (state.ok() && !state->HasRun(proto::ToHex(*run))) held.insert(t);
    }
    if (!held.empty())
      kept = Error(ErrorCode::kInvalidArgument,
                   "'{}' already holds {} '{}' cut otherwise (by a live packager, or a job with other options); left "
                   "as {}: re-cut into another --out",
                   p.out_dir, held.size() == 1 ? "title" : "titles", fmt::join(held, "', '"),
                   held.size() == 1 ? "it was" : "they were");
  }
  uint64_t incomplete = 0, refused = 0;
  for (const auto& t : found) {
    if (held.count(t) || (stage && stage->Refused(t))) ++refused;
    else incomplete += !engine.IsComplete(t);
  }
  const size_t rebuilt = found.size() - refused;
  log::Info("repackage: {} titles rebuilt in '{}' ({} complete, {} incomplete), {} segments, {} records skipped as "
            "duplicates, {} rejected{}",
            rebuilt, p.out_dir, rebuilt - incomplete, incomplete, stats.segments_written, stats.duplicates_skipped,
            stats.rejected, refused ? fmt::format("; {} titles could not be re-packaged", refused) : "");
  KHLS_RETURN_IF_ERROR(recut);
  KHLS_RETURN_IF_ERROR(kept);
  return stats;
}

Result<std::vector<TitleSummary>> DescribeTopic(const ScanParams& p, const std::atomic<bool>& stop) {
  struct Acc {
    TitleSummary sum;
    std::optional<proto::SourceId> source;  // the latest version's, as the packager sees it
    std::set<std::string> runs;             // runs of the latest version (re-ingests continue it)
    std::map<uint32_t, uint64_t> durations;
    std::set<std::pair<uint32_t, uint16_t>> parts;  ///< (segment, part) counted (a title cut into parts)
  };
  std::map<std::string, Acc> titles;
  Status s = kafka::ScanTopic(
      p.brokers, p.topic, p.kafka,
      [&](int32_t partition, int64_t, std::string_view key, std::span<const uint8_t> value) -> Status {
        Acc& a = titles[std::string(key)];
        a.sum.title = std::string(key);
        a.sum.partition = partition;
        a.sum.bytes += value.size();
        auto rec = proto::Decode(value);
        if (!rec.ok() || proto::TitleOf(*rec) != key) {
          ++a.sum.malformed;
          return Status::Ok();
        }
        if (auto* t = std::get_if<proto::TitleStart>(&*rec)) {
          ++a.sum.runs;
          // The engine's rule: a new version starts over, a re-run continues, a live title
          // may be resumed, the rest is ignored.
          const proto::Succession next =
              a.source ? proto::Classify(*a.source, proto::SourceOf(*t)) : proto::Succession::kNewVersion;
          if (next == proto::Succession::kNewVersion) {
            a.source = proto::SourceOf(*t);
            a.sum.version = t->title_version;
            a.runs.clear();
            a.durations.clear();
            a.parts.clear();
            a.sum.complete = false;
            int counts[4] = {};
            for (const proto::Rendition& d : t->renditions) ++counts[static_cast<int>(d.kind)];
            a.sum.renditions = t->renditions.size() == 1 && t->renditions[0].id.empty()
                                   ? "muxed"
                                   : fmt::format("{}v{}a{}s", counts[1], counts[2], counts[3]);
          }
          if (next == proto::Succession::kNewVersion || next == proto::Succession::kContinues ||
              next == proto::Succession::kResumes)
            a.runs.insert(proto::ToHex(t->run_id));
        } else if (auto* c = std::get_if<proto::SegmentChunk>(&*rec)) {
          // The reference rendition (the first) gives the title's segments and duration.
          // A segment cut into parts lasts as long as its parts together.
          if (c->rendition == 0 && a.runs.count(proto::ToHex(c->run_id)) && a.parts.insert({c->sequence, c->part}).second)
            a.durations[c->sequence] += c->duration;
        } else if (auto* e = std::get_if<proto::TitleEnd>(&*rec)) {
          if (a.runs.count(proto::ToHex(e->run_id)) && e->segment_count == a.durations.size()) a.sum.complete = true;
        }
        return Status::Ok();
      },
      stop);
  KHLS_RETURN_IF_ERROR(s);
  std::vector<TitleSummary> out;
  for (auto& [title, a] : titles) {
    a.sum.segments = static_cast<uint32_t>(a.durations.size());
    for (const auto& [seq, d] : a.durations) a.sum.duration_s += ToSeconds(d);
    out.push_back(a.sum);
  }
  return out;
}

}  // namespace khls::packager
