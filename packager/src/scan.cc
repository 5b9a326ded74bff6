// Reading a whole topic without a consumer group: re-packaging and describe.
#include <chrono>
#include <map>
#include <optional>
#include <set>

#include "khls/kafka.h"
#include "khls/log.h"
#include "khls/packager.h"
#include "khls/title_identity.h"

namespace khls::packager {
Result<Stats> Repackage(const RepackageParams& p, const std::atomic<bool>& stop) {
  for (const auto& t : p.titles) KHLS_RETURN_IF_ERROR(proto::CheckTitleId(t).WithContext("--title"));
  KHLS_ASSIGN_OR_RETURN(OutputStore store, OutputStore::Open(p.out_dir, p.durable));
  Engine engine(std::move(store), p.limits, kBackgroundBatching, p.container);
  std::set<std::string> found;
  uint64_t other = 0;
  Status s = kafka::ScanTopic(
      p.source.brokers, p.source.topic, p.source.kafka,
      [&](int32_t partition, int64_t offset, std::string_view key, std::span<const uint8_t> value) -> Status {
        if (!p.titles.empty() && !p.titles.count(std::string(key))) {
          ++other;
          return Status::Ok();
        }
        auto r = engine.OnRecord(key, value);
        if (!r.ok()) return r.status().WithContext(fmt::format("partition {} offset {}", partition, offset));
        if (!r->title.empty()) found.insert(r->title);
        return Status::Ok();
      },
      stop);
  KHLS_RETURN_IF_ERROR(s);
  KHLS_RETURN_IF_ERROR(engine.Flush());
  for (const auto& t : p.titles)
    if (!found.count(t))
      return Error(ErrorCode::kInvalidArgument, "title '{}' has no records in topic '{}'", t, p.source.topic);
  Stats stats = engine.stats();
  stats.other_titles = other;
  uint64_t incomplete = 0;
  for (const auto& t : found) incomplete += !engine.IsComplete(t);
  log::Info("repackage: {} titles rebuilt in '{}' ({} complete, {} incomplete), {} segments, {} records skipped as "
            "duplicates, {} rejected",
            found.size(), p.out_dir, found.size() - incomplete, incomplete, stats.segments_written,
            stats.duplicates_skipped, stats.rejected);
  return stats;
}

Result<std::vector<TitleSummary>> DescribeTopic(const ScanParams& p, const std::atomic<bool>& stop) {
  struct Acc {
    TitleSummary sum;
    std::optional<proto::SourceId> source;  // the latest version's, as the packager sees it
    std::set<std::string> runs;             // runs of the latest version (re-ingests continue it)
    std::map<uint32_t, uint64_t> durations;
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
          // The engine's rule: a new version starts over, a re-run continues, the rest is ignored.
          const proto::Succession next =
              a.source ? proto::Classify(*a.source, proto::SourceOf(*t)) : proto::Succession::kNewVersion;
          if (next == proto::Succession::kNewVersion) {
            a.source = proto::SourceOf(*t);
            a.sum.version = t->title_version;
            a.runs.clear();
            a.durations.clear();
            a.sum.complete = false;
            int counts[4] = {};
            for (const proto::Rendition& d : t->renditions) ++counts[static_cast<int>(d.kind)];
            a.sum.renditions = t->renditions.size() == 1 && t->renditions[0].id.empty()
                                   ? "muxed"
                                   : fmt::format("{}v{}a{}s", counts[1], counts[2], counts[3]);
          }
          if (next == proto::Succession::kNewVersion || next == proto::Succession::kContinues)
            a.runs.insert(proto::ToHex(t->run_id));
        } else if (auto* c = std::get_if<proto::SegmentChunk>(&*rec)) {
          // The reference rendition (the first) gives the title's segments and duration.
          if (c->rendition == 0 && a.runs.count(proto::ToHex(c->run_id))) a.durations[c->sequence] = c->duration;
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
