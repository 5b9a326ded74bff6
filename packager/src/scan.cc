// Reading a whole topic without a consumer group: re-packaging and describe.
#include <chrono>
#include <map>
#include <set>

#include "khls/kafka.h"
#include "khls/log.h"
#include "khls/packager.h"

namespace khls::packager {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

Status ScanTopic(const ScanParams& p, const RecordFn& fn, const std::atomic<bool>& stop) {
  kafka::Properties props = {
      {"bootstrap.servers", p.brokers},
      // Required by librdkafka for a consumer; never joined (assign, not subscribe) and never committed.
      {"group.id", "kafka-hls-scan"},
      {"client.id", "kafka-hls-scan"},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"isolation.level", "read_committed"},
      {"enable.partition.eof", "true"},
      {"queued.max.messages.kbytes", "16384"},
  };
  props.insert(props.end(), p.kafka.begin(), p.kafka.end());
  KHLS_ASSIGN_OR_RETURN(kafka::ConfPtr conf, kafka::MakeConf(props));
  KHLS_ASSIGN_OR_RETURN(kafka::HandlePtr rk, kafka::MakeHandle(RD_KAFKA_CONSUMER, std::move(conf)));
  rd_kafka_poll_set_consumer(rk.get());
  KHLS_ASSIGN_OR_RETURN(int partitions, kafka::PartitionCount(rk.get(), p.topic, 30000));

  // Partitions that hold nothing are done before they start.
  kafka::PartitionListPtr list(rd_kafka_topic_partition_list_new(partitions));
  std::set<int32_t> pending;
  int64_t total = 0;
  for (int32_t i = 0; i < partitions; ++i) {
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk.get(), p.topic.c_str(), i, &lo, &hi, 30000);
    if (err) return Error(ErrorCode::kKafka, "offsets of '{}' partition {}: {}", p.topic, i, rd_kafka_err2str(err));
    if (hi <= lo) continue;
    total += hi - lo;
    pending.insert(i);
    rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), i)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  if (pending.empty()) return Status::Ok();
  if (rd_kafka_resp_err_t err = rd_kafka_assign(rk.get(), list.get()))
    return Error(ErrorCode::kKafka, "assign '{}': {}", p.topic, rd_kafka_err2str(err));

  log::ProgressLine progress;
  int64_t seen = 0;
  Status result;
  while (!pending.empty() && result.ok()) {
    if (stop) {
      result = Status(ErrorCode::kCancelled, fmt::format("scan of '{}' interrupted", p.topic));
      break;
    }
    kafka::MessagePtr m(rd_kafka_consumer_poll(rk.get(), 200));
    if (!m) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      pending.erase(m->partition);
      continue;
    }
    if (m->err) {
      result = Error(ErrorCode::kKafka, "read '{}' partition {}: {}", p.topic, m->partition,
                     rd_kafka_message_errstr(m.get()));
      break;
    }
    ++seen;
    std::string_view key(static_cast<const char*>(m->key), m->key ? m->key_len : 0);
    result = fn(m->partition, m->offset, key, std::span(static_cast<const uint8_t*>(m->payload), m->len));
    progress.Update(fmt::format("scan {}: {} of about {} records ({:.0f}%)", p.topic, seen, total,
                                total ? 100.0 * static_cast<double>(seen) / static_cast<double>(total) : 100.0));
  }
  progress.Finish();
  rd_kafka_consumer_close(rk.get());
  return result;
}

Result<Stats> Repackage(const RepackageParams& p, const std::atomic<bool>& stop) {
  for (const auto& t : p.titles) KHLS_RETURN_IF_ERROR(proto::CheckTitleId(t).WithContext("--title"));
  KHLS_ASSIGN_OR_RETURN(OutputStore store, OutputStore::Open(p.out_dir, p.durable));
  Engine engine(std::move(store), p.limits);
  std::set<std::string> found;
  uint64_t other = 0;
  Status s = ScanTopic(
      p.source,
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
    std::string run;                  // run of the latest source
    proto::Digest fingerprint{};
    std::set<std::string> runs;       // runs of the latest source (re-ingests continue it)
    std::map<uint32_t, uint64_t> durations;
  };
  std::map<std::string, Acc> titles;
  Status s = ScanTopic(
      p,
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
          const std::string run = proto::ToHex(t->run_id);
          if (a.runs.empty() || t->source_fingerprint != a.fingerprint) {
            a.runs.clear();
            a.durations.clear();
            a.sum.complete = false;
          }
          a.runs.insert(run);
          a.fingerprint = t->source_fingerprint;
        } else if (auto* c = std::get_if<proto::SegmentChunk>(&*rec)) {
          if (a.runs.count(proto::ToHex(c->run_id))) a.durations[c->sequence] = c->duration;
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
    for (const auto& [seq, d] : a.durations) a.sum.duration_s += static_cast<double>(d) / 90000.0;
    out.push_back(a.sum);
  }
  return out;
}

}  // namespace khls::packager
