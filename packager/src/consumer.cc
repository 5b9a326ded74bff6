// The live packager: a Kafka consumer-group member feeding the Engine.
#include <algorithm>
#include <chrono>
#include <map>

#include <nlohmann/json.hpp>

#include "khls/kafka.h"
#include "khls/log.h"
#include "khls/packager.h"

namespace khls::packager {
namespace {

using Clock = std::chrono::steady_clock;

// How long the packager may go without hearing from Kafka before /healthz says so.
constexpr std::chrono::seconds kKafkaContactMaxAge{15};

// What the packager reports: metrics (Params::metrics) and health checks
// (Params::health). Without them it reports into a registry of its own that
// nobody reads, so the loop needs no branches. Everything here runs on the
// consumer's thread (librdkafka serves the statistics and error callbacks from
// the consumer poll); the Registry and Health are read by the server's.
class Reporter {
 public:
  Reporter(const Params& p, bool read_committed)
      : own_registry_(p.metrics ? nullptr : std::make_unique<metrics::Registry>()),
        own_health_(p.health ? nullptr : std::make_unique<metrics::Health>()),
        registry_(p.metrics ? *p.metrics : *own_registry_),
        health_(p.health ? *p.health : *own_health_),
        topic_(p.topic.name),
        read_committed_(read_committed),
        consumed_(registry_.AddCounter("khls_packager_records_consumed_total",
                                       "Records read from the topic (titles this packager ignores included)")),
        segments_(registry_.AddCounter("khls_packager_segments_written_total",
                                       "Segments reassembled, verified and written (one per rendition)")),
        bytes_(registry_.AddCounter("khls_packager_written_bytes_total",
                                    "Bytes of segment and init segment files published to the output")),
        titles_(registry_.AddCounter("khls_packager_titles_completed_total", "Titles that became complete")),
        duplicates_(registry_.AddCounter("khls_packager_duplicates_skipped_total",
                                         "Records skipped as already on disk (replays, re-ingests, older versions)")),
        rejected_(registry_.AddCounterFamily("khls_packager_records_rejected_total",
                                             "Records rejected (logged with the details), by reason", {"reason"})),
        write_errors_(registry_.AddCounter("khls_packager_output_write_errors_total",
                                           "Failed writes to the output (each stops the packager or delays a commit)")),
        publish_(registry_.AddHistogram("khls_packager_publish_duration_seconds",
                                        "Time to publish a batch: segments durable and renamed, state and playlists "
                                        "written",
                                        metrics::kLatencyBuckets)),
        lag_(registry_.AddGaugeFamily("khls_packager_consumer_lag_records",
                                      "Records of an assigned partition not yet read by this packager (from "
                                      "librdkafka's statistics)",
                                      {"topic", "partition"})),
        assigned_(registry_.AddGauge("khls_packager_assigned_partitions", "Partitions assigned to this packager")),
        buffered_(registry_.AddGauge("khls_packager_reassembly_buffered_bytes",
                                     "Bytes of partly received segments held for reassembly")) {
    for (size_t r = 0; r < kRejectReasonCount; ++r)
      rejected_.With({std::string(ToString(static_cast<RejectReason>(r)))});
    health_.Add("kafka", kKafkaContactMaxAge, "not reached yet");
    health_.Add("output");
  }

  /// Brings the counters up to the engine's figures.
  void Sync(const Engine& engine) {
    const Stats& st = engine.stats();
    segments_.Inc(static_cast<double>(st.segments_written - last_.segments_written));
    bytes_.Inc(static_cast<double>(st.written_bytes - last_.written_bytes));
    titles_.Inc(static_cast<double>(st.titles_completed - last_.titles_completed));
    duplicates_.Inc(static_cast<double>(st.duplicates_skipped - last_.duplicates_skipped));
    for (size_t r = 0; r < kRejectReasonCount; ++r)
      if (st.rejected_by_reason[r] != last_.rejected_by_reason[r])
        rejected_.With({std::string(ToString(static_cast<RejectReason>(r)))})
            .Inc(static_cast<double>(st.rejected_by_reason[r] - last_.rejected_by_reason[r]));
    last_ = st;
    buffered_.Set(static_cast<double>(engine.buffered_bytes()));
  }

  /// A record (next = its offset + 1) or the end of a partition (next = the end).
  void OnPosition(int32_t partition, int64_t next, bool record) {
    if (record) consumed_.Inc();
    positions_[partition] = next;
    OnContact();
  }
  void OnContact() { health_.Pass("kafka"); }

  void OnPublish(Clock::duration took, const Status& st) {
    publish_.Observe(std::chrono::duration<double>(took).count());
    if (st.ok()) health_.Pass("output");
    else health_.Fail("output", st.message());
  }
  /// An error the engine returned to the loop (a write, or a state it cannot read).
  void OnEngineError(const Status& st) {
    if (st.code() != ErrorCode::kIo) return;
    write_errors_.Inc();
    health_.Fail("output", st.message());
  }

  void OnKafkaError(int err, const char* reason) {
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__FATAL)
      health_.Fail("kafka", fmt::format("{}: {}", rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)), reason));
  }

  void OnAssignment(const std::set<int32_t>& assigned) {
    std::erase_if(positions_, [&](const auto& kv) { return !assigned.count(kv.first); });
    for (int32_t p : shown_)
      if (!assigned.count(p)) lag_.Remove({topic_, std::to_string(p)});
    std::erase_if(shown_, [&](int32_t p) { return !assigned.count(p); });
    assigned_.Set(static_cast<double>(assigned.size()));
  }
  /// Partitions newly assigned: their position is not known until a record or
  /// the end of the partition arrives.
  void ForgetPositions() { positions_.clear(); }

  // librdkafka's statistics (JSON, every statistics.interval.ms): a broker
  // connection that is up counts as contact with Kafka, and the lag of each
  // assigned partition is its end (the last stable offset when reading
  // committed records) minus what this packager has read. Not librdkafka's own
  // consumer_lag: that counts from the committed offset, which stops before a
  // transaction's commit marker, so it stays at 1 for a packager that has read
  // everything of a transactional topic.
  void OnStatistics(std::string_view json, const std::set<int32_t>& assigned) {
    auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return;
    const auto offset = [](const nlohmann::json& o, const char* key) -> int64_t {
      auto it = o.find(key);
      return it != o.end() && it->is_number_integer() ? it->get<int64_t>() : -1;
    };
    if (auto brokers = j.find("brokers"); brokers != j.end() && brokers->is_object()) {
      for (const auto& [name, b] : brokers->items()) {
        auto state = b.find("state");
        if (state != b.end() && state->is_string() && state->get<std::string>() == "UP") {
          OnContact();
          break;
        }
      }
    }
    auto topics = j.find("topics");
    if (topics == j.end() || !topics->is_object()) return;
    auto topic = topics->find(topic_);
    if (topic == topics->end() || !topic->is_object()) return;
    auto parts = topic->find("partitions");
    if (parts == topic->end() || !parts->is_object()) return;
    for (int32_t p : assigned) {
      auto it = parts->find(std::to_string(p));
      if (it == parts->end() || !it->is_object()) continue;
      const int64_t end = offset(*it, read_committed_ ? "ls_offset" : "hi_offset");
      auto known = positions_.find(p);
      const int64_t read = known != positions_.end() ? known->second : offset(*it, "committed_offset");
      if (end < 0 || read < 0) continue;  // not fetched yet
      lag_.With({topic_, std::to_string(p)}).Set(static_cast<double>(std::max<int64_t>(0, end - read)));
      shown_.insert(p);
    }
  }

 private:
  std::unique_ptr<metrics::Registry> own_registry_;
  std::unique_ptr<metrics::Health> own_health_;
  metrics::Registry& registry_;
  metrics::Health& health_;
  const std::string topic_;
  const bool read_committed_;
  metrics::Counter& consumed_;
  metrics::Counter& segments_;
  metrics::Counter& bytes_;
  metrics::Counter& titles_;
  metrics::Counter& duplicates_;
  metrics::Family<metrics::Counter>& rejected_;
  metrics::Counter& write_errors_;
  metrics::Histogram& publish_;
  metrics::Family<metrics::Gauge>& lag_;
  metrics::Gauge& assigned_;
  metrics::Gauge& buffered_;
  Stats last_;
  std::map<int32_t, int64_t> positions_;  ///< next offset to read, per assigned partition, once known
  std::set<int32_t> shown_;               ///< partitions with a lag series
};

// Which offsets are safe to commit: everything before the first record of a
// partly assembled segment, else everything seen.
class OffsetBook {
 public:
  void Seen(int32_t partition, int64_t offset, const RecordOutcome& o) {
    next_[partition] = offset + 1;
    if (o.title.empty()) return;
    partition_of_[o.title] = partition;
    if (!o.in_flight) in_flight_.erase(o.title);
    else if (o.started_in_flight || !in_flight_.count(o.title)) in_flight_[o.title] = {partition, offset};
  }

  /// Safe offsets for every partition with progress since the last commit.
  std::map<int32_t, int64_t> Safe() const {
    std::map<int32_t, int64_t> safe = next_;
    for (const auto& [title, at] : in_flight_) {
      auto it = safe.find(at.first);
      if (it != safe.end()) it->second = std::min(it->second, at.second);
    }
    return safe;
  }

  /// Forgets revoked partitions; returns every title seen on them.
  std::vector<std::string> Forget(const std::set<int32_t>& partitions) {
    std::vector<std::string> titles;
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      if (partitions.count(it->second.first)) it = in_flight_.erase(it);
      else ++it;
    }
    for (auto it = partition_of_.begin(); it != partition_of_.end();) {
      if (partitions.count(it->second)) {
        titles.push_back(it->first);
        it = partition_of_.erase(it);
      } else {
        ++it;
      }
    }
    for (int32_t p : partitions) next_.erase(p);
    return titles;
  }

 private:
  std::map<int32_t, int64_t> next_;
  std::map<std::string, std::pair<int32_t, int64_t>> in_flight_;
  std::map<std::string, int32_t> partition_of_;
};

struct Consumer {
  const Params& p;
  Engine& engine;
  Reporter& report;
  OffsetBook book;
  std::map<int32_t, int64_t> committed;
  kafka::HandlePtr rk;
  std::set<int32_t> assigned;
  std::set<int32_t> caught_up;  ///< assigned partitions read to their end at least once

  bool CaughtUp() const { return !assigned.empty() && caught_up == assigned; }

  Status Commit(bool sync, const std::set<int32_t>* only = nullptr) {
    // Offsets move past records only once what they produced is durable.
    KHLS_RETURN_IF_ERROR(engine.Flush().WithContext("make the output durable before committing offsets"));
    if (!p.commit_offsets) return Status::Ok();
    kafka::PartitionListPtr list(rd_kafka_topic_partition_list_new(4));
    std::map<int32_t, int64_t> safe = book.Safe();
    for (const auto& [partition, offset] : safe) {
      if (only && !only->count(partition)) continue;
      if (committed[partition] == offset) continue;
      rd_kafka_topic_partition_list_add(list.get(), p.topic.name.c_str(), partition)->offset = offset;
    }
    if (list->cnt == 0) return Status::Ok();
    log::Debug("committing offsets of {} partitions", list->cnt);
    rd_kafka_resp_err_t err = rd_kafka_commit(rk.get(), list.get(), sync ? 0 : 1);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
      return Error(ErrorCode::kKafka, "commit offsets of group '{}': {}", p.group_id, rd_kafka_err2str(err));
    for (int i = 0; i < list->cnt; ++i) committed[list->elems[i].partition] = list->elems[i].offset;
    return Status::Ok();
  }

  void OnRebalance(rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts) {
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      std::string names;
      for (int i = 0; i < parts->cnt; ++i) names += fmt::format("{}{}", i ? "," : "", parts->elems[i].partition);
      log::Info("packager: assigned partitions [{}] of '{}'", names, p.topic.name);
      assigned.clear();
      caught_up.clear();
      for (int i = 0; i < parts->cnt; ++i) assigned.insert(parts->elems[i].partition);
      report.ForgetPositions();
      report.OnAssignment(assigned);
      rd_kafka_assign(rk.get(), parts);
      return;
    }
    std::set<int32_t> revoked;
    for (int i = 0; i < parts->cnt; ++i) revoked.insert(parts->elems[i].partition);
    if (Status s = Commit(true, &revoked); !s.ok()) log::Warn("{}", s.message());
    for (const std::string& title : book.Forget(revoked)) engine.Forget(title);
    for (int32_t part : revoked) committed.erase(part);
    assigned.clear();
    caught_up.clear();
    report.OnAssignment(assigned);
    rd_kafka_assign(rk.get(), nullptr);
  }
};

void RebalanceCb(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts, void* opaque) {
  static_cast<Consumer*>(opaque)->OnRebalance(err, parts);
}

void ErrorCb(rd_kafka_t*, int err, const char* reason, void* opaque) {
  log::Warn("Kafka: {}: {}", rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)), reason);
  static_cast<Consumer*>(opaque)->report.OnKafkaError(err, reason);
}

int StatsCb(rd_kafka_t*, char* json, size_t len, void* opaque) {
  auto* c = static_cast<Consumer*>(opaque);
  c->report.OnStatistics(std::string_view(json, len), c->assigned);
  return 0;  // librdkafka frees the JSON
}

// The last value of a property, or "".
std::string PropertyValue(const kafka::Properties& props, std::string_view key) {
  std::string value;
  for (const auto& [k, v] : props)
    if (k == key) value = v;
  return value;
}

bool AllComplete(Engine& engine, const std::set<std::string>& titles) {
  if (titles.empty()) return false;
  for (const auto& t : titles)
    if (!engine.IsComplete(t)) return false;
  return true;
}

}  // namespace

Result<Stats> Run(const Params& p, const std::atomic<bool>& stop) {
  // First, so /healthz does not say "ok" before the checks exist.
  const std::string isolation = PropertyValue(p.kafka, "isolation.level");
  Reporter report(p, isolation.empty() || isolation == "read_committed");
  for (const auto& t : p.until_complete) KHLS_RETURN_IF_ERROR(proto::CheckTitleId(t).WithContext("--until-complete"));
  KHLS_ASSIGN_OR_RETURN(OutputStore store, OutputStore::Open(p.out_dir, p.durable));
  Engine engine(std::move(store), p.limits, kBackgroundBatching, p.container);
  KHLS_RETURN_IF_ERROR(engine.EnableEncryption(p.encryption));
  engine.set_live_options(LiveOptions{p.live_window_s, {}});
  KHLS_RETURN_IF_ERROR(engine.set_low_latency(p.low_latency));
  engine.set_publish_observer([&report](Clock::duration took, const Status& st) { report.OnPublish(took, st); });

  kafka::Properties props = {
      {"bootstrap.servers", p.brokers},
      {"group.id", p.group_id},
      {"client.id", "kafka-hls-packager"},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "earliest"},  // a new group starts at the beginning of the retained log
      {"isolation.level", "read_committed"},
      {"session.timeout.ms", "6000"},
      {"heartbeat.interval.ms", "500"},
      {"queued.max.messages.kbytes", "16384"},  // bounds prefetch memory
      // Fewer, larger fetches: a quarter of the broker CPU per byte of the 1 MiB default.
      {"max.partition.fetch.bytes", "4194304"},
      // A fetch that finds nothing waits at the broker for at most this long. A
      // transaction's records become readable when its commit marker is written, and
      // the broker does not always answer a waiting fetch then: with the 500 ms
      // default a caught-up packager listed segments up to ~0.9 s after their commit.
      {"fetch.wait.max.ms", "20"},
      {"enable.partition.eof", "true"},  // tells --until-complete that a partition is caught up
  };
  const bool reporting = p.metrics || p.health;
  // Consumer lag, and proof of contact while the topic is quiet.
  if (reporting) props.emplace_back("statistics.interval.ms", "1000");
  props.insert(props.end(), p.kafka.begin(), p.kafka.end());
  Consumer c{p, engine, report, {}, {}, nullptr, {}, {}};
  KHLS_ASSIGN_OR_RETURN(kafka::ConfPtr conf, kafka::MakeConf(props));
  rd_kafka_conf_set_rebalance_cb(conf.get(), RebalanceCb);
  rd_kafka_conf_set_error_cb(conf.get(), ErrorCb);
  if (reporting) rd_kafka_conf_set_stats_cb(conf.get(), StatsCb);
  rd_kafka_conf_set_opaque(conf.get(), &c);
  KHLS_ASSIGN_OR_RETURN(c.rk, kafka::MakeHandle(RD_KAFKA_CONSUMER, std::move(conf)));
  rd_kafka_poll_set_consumer(c.rk.get());

  KHLS_RETURN_IF_ERROR(kafka::EnsureTopic(c.rk.get(), p.topic, 30000).WithContext(fmt::format("brokers {}", p.brokers)));
  // Subscribe only once every broker serves the topic: a group coordinator that
  // does not know it yet assigns this member nothing, and nothing fixes that
  // before the next rebalance.
  KHLS_RETURN_IF_ERROR(kafka::WaitForTopic(c.rk.get(), p.kafka, p.topic.name, 30000));
  report.OnContact();
  kafka::PartitionListPtr topics(rd_kafka_topic_partition_list_new(1));
  rd_kafka_topic_partition_list_add(topics.get(), p.topic.name.c_str(), RD_KAFKA_PARTITION_UA);
  if (rd_kafka_resp_err_t err = rd_kafka_subscribe(c.rk.get(), topics.get()))
    return Error(ErrorCode::kKafka, "subscribe to '{}': {}", p.topic.name, rd_kafka_err2str(err));
  log::Info("packager: group '{}' reading '{}' from {} into '{}'", p.group_id, p.topic.name, p.brokers,
            engine.store().root().string());

  Status result;
  uint64_t other_titles = 0;
  uint64_t last_reported_records = ~0ull;
  auto last_commit = Clock::now();
  log::ProgressLine progress(std::chrono::seconds(10));
  kafka::FetchNudge nudge(c.rk.get(), p.topic.name);
  bool flowing = false;
  while (!stop) {
    // Written segments are published as soon as nothing more is queued: a
    // player waits for no batch while the packager keeps up, and a backlog is
    // written in batches (librdkafka 2.0 pauses fetching for up to a second
    // whenever its prefetch queue fills, so the loop must not block on disk
    // syncs record by record).
    kafka::MessagePtr m(rd_kafka_consumer_poll(c.rk.get(), engine.HasUnpublished() ? 0 : flowing ? 5 : 100));
    if ((!m || m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) && engine.HasUnpublished()) {
      if (Status s = engine.Publish(); !s.ok()) {
        report.OnEngineError(s);
        result = s;
        break;
      }
    }
    if (!m) flowing = nudge.OnIdle();
    else if (!m->err) nudge.OnRecord(m->partition);
    bool done = false;
    if (m && m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (c.assigned.count(m->partition)) report.OnPosition(m->partition, m->offset, false);
      if (c.assigned.count(m->partition) && c.caught_up.insert(m->partition).second)
        done = !p.until_complete.empty() && c.CaughtUp() && AllComplete(engine, p.until_complete);
    } else if (m && m->err) {
      if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        result = Error(ErrorCode::kKafka, "consumer: {}", rd_kafka_message_errstr(m.get()));
        break;
      }
      if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
        log::Debug("consumer: {}", rd_kafka_message_errstr(m.get()));  // the topic appears with the first ingest
      } else {
        log::Warn("consumer: {}", rd_kafka_message_errstr(m.get()));
      }
    } else if (m) {
      report.OnPosition(m->partition, m->offset + 1, true);
      std::string_view key(static_cast<const char*>(m->key), m->key ? m->key_len : 0);
      if (!p.only_titles.empty() && !p.only_titles.count(std::string(key))) {
        ++other_titles;
        c.book.Seen(m->partition, m->offset, RecordOutcome{});
      } else {
        // When the ingest produced it (CreateTime; -1 when the broker gives none).
        const int64_t produced = rd_kafka_message_timestamp(m.get(), nullptr);
        auto outcome = engine.OnRecord(key, std::span(static_cast<const uint8_t*>(m->payload), m->len),
                                       std::max<int64_t>(0, produced));
        if (!outcome.ok()) {
          report.OnEngineError(outcome.status());
          result = outcome.status().WithContext(fmt::format("partition {} offset {}", m->partition, m->offset));
          break;
        }
        c.book.Seen(m->partition, m->offset, *outcome);
        if (outcome->title_completed && p.until_complete.count(outcome->title))
          done = c.CaughtUp() && AllComplete(engine, p.until_complete);
      }
    }
    report.Sync(engine);
    if (done || Clock::now() - last_commit > std::chrono::seconds(1)) {
      if (Status s = c.Commit(done); !s.ok()) {
        report.OnEngineError(s);
        log::Warn("{}", s.message());
      }
      last_commit = Clock::now();
      const Stats& st = engine.stats();
      if (st.records != last_reported_records) progress.Update(fmt::format("package: {} records, {} segments written, {} titles complete, {} skipped as "
                                  "duplicates, {} rejected",
                                  st.records, st.segments_written, st.titles_completed, st.duplicates_skipped,
                                  st.rejected));
      last_reported_records = st.records;
    }
    if (done) {
      log::Info("packager: every requested title is complete");
      break;
    }
  }
  progress.Finish();
  if (result.ok()) {
    if (Status s = c.Commit(true); !s.ok()) {
      report.OnEngineError(s);
      log::Warn("{}", s.message());
      if (s.code() == ErrorCode::kIo) result = s;  // the output is not durable: not done
    }
  }
  report.Sync(engine);
  const bool clean = nudge.Stop();
  rd_kafka_consumer_close(c.rk.get());
  if (clean) c.rk.reset();
  else (void)c.rk.release();  // a query thread still uses it (FetchNudge::Stop); the process ends soon
  Stats stats = engine.stats();
  stats.other_titles = other_titles;
  log::Info("packager: {} records, {} segments written, {} titles completed, {} duplicates skipped, {} rejected",
            stats.records, stats.segments_written, stats.titles_completed, stats.duplicates_skipped, stats.rejected);
  if (!result.ok()) return result;
  if (stop && !AllComplete(engine, p.until_complete) && !p.until_complete.empty())
    return Status(ErrorCode::kCancelled, "packager interrupted before the requested titles were complete");
  return stats;
}

}  // namespace khls::packager
