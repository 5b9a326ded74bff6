#include "publisher.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "khls/log.h"
#include "khls/proto.h"

namespace khls::ingest::internal {
namespace {

// Produce requests librdkafka keeps in flight per partition with idempotence.
constexpr size_t kMaxInFlight = 5;

// Records of `chunk_size` payload bytes that fit one produce request (librdkafka's
// default batch.size, 1 MB, which is also about the default topic's batch limit).
size_t RecordsPerRequest(size_t chunk_size) {
  constexpr size_t kBatchBytes = 1000000;
  constexpr size_t kRecordOverhead = 256;  // record header, key, batch framing
  return std::max<size_t>(1, kBatchBytes / (chunk_size + kRecordOverhead));
}

}  // namespace

Publisher::Publisher(const Params& p, const std::atomic<bool>& stop)
    : p_(p), stop_(stop), index_topic_(proto::IndexTopic(p.topic.name)), chunk_size_(p.chunk_size) {}

Status Publisher::ResolveChunkSize() {
  auto limit = kafka::TopicMaxMessageBytes(rk_.get(), p_.topic.name, timeout_ms());
  if (!limit.ok()) {
    if (p_.chunk_size != 0) return Status::Ok();  // the broker says so at the first record if it does not fit
    chunk_size_ = defaults::kFallbackChunkSize;
    log::Warn("{}; records carry {} KiB of payload, under the broker's default limit", limit.status().message(),
              chunk_size_ / 1024);
    return Status::Ok();
  }
  const auto room = static_cast<uint64_t>(*limit);
  if (p_.chunk_size != 0) {
    if (p_.chunk_size + defaults::kRecordMargin > room)
      return Error(ErrorCode::kInvalidArgument,
                   "chunk size {} does not fit topic '{}', whose max.message.bytes is {} (a record needs its chunk "
                   "plus {} bytes): give a smaller --chunk-size, or none: records are then sized to the topic",
                   p_.chunk_size, p_.topic.name, room, defaults::kRecordMargin);
    return Status::Ok();
  }
  const uint64_t fit = room > 2 * defaults::kRecordMargin ? room - defaults::kRecordMargin : room / 2;
  chunk_size_ = static_cast<size_t>(std::clamp<uint64_t>(fit, 1024, defaults::kMaxAutoChunkSize));
  log::Debug("topic '{}' accepts records of {} bytes: {} bytes of payload per record", p_.topic.name, room,
             chunk_size_);
  return Status::Ok();
}

void Publisher::OnDelivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) return;
  auto* st = static_cast<CallbackState*>(opaque);
  std::lock_guard lock(st->mu);
  if (st->failed_deliveries++ == 0) st->first_delivery_error = rd_kafka_err2str(m->err);
}

void Publisher::OnError(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* st = static_cast<CallbackState*>(opaque);
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char buf[512];
    rd_kafka_fatal_error(rk, buf, sizeof buf);
    std::lock_guard lock(st->mu);
    st->fatal_error = buf;
    return;
  }
  // Transport errors (broker down, reconnecting) are retried by librdkafka within
  // the delivery/transaction timeouts; report them so the operator sees why it stalls.
  log::Warn("Kafka: {}: {}", rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)), reason);
}

Status Publisher::Init() {
  kafka::Properties props = {
      {"bootstrap.servers", p_.brokers},
      {"client.id", "kafka-hls-ingest"},
      {"transactional.id", p_.transactional_id.empty() ? "kafka-hls-ingest." + p_.title : p_.transactional_id},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"compression.type", "none"},  // MPEG-TS does not compress
      // librdkafka 2.0 keeps at most 5 produce requests in flight per partition (the
      // idempotent producer's limit), and a request carries one batch of at most
      // batch.size (1 MB): one record of the default 512 KiB chunk size. Records queued
      // beyond that make its broker thread spin (poll with a zero timeout, ~65 polls per
      // request) until a response frees a slot: ingest's CPU doubled. Capping the queue
      // at what can be in flight makes produce() wait in rd_kafka_poll for a delivery
      // report instead. With a full pipeline there is nothing to linger for.
      // (Chunks sized to the topic are at least 960 KiB on any topic that takes the
      // broker's default 1 MB records: one per request.)
      {"queue.buffering.max.messages", std::to_string(kMaxInFlight * RecordsPerRequest(LargestChunk()))},
      {"linger.ms", "0"},
      {"message.max.bytes",
       std::to_string(std::max<size_t>(1000000, LargestChunk() + defaults::kRecordMargin))},
      // A transaction carries a few segments at most (milliseconds of work), so a short
      // timeout is safe, and it bounds how long a killed ingest's open transaction holds back
      // read_committed consumers of its partition (a restarted ingest fences it at once).
      // It must outlast a broker failover: a killed leader is noticed when its KRaft session
      // ends (broker.session.timeout.ms, 9 s) and leadership then moves; stalls of 8-15 s
      // were measured on a 3-node cluster, so twice that.
      {"transaction.timeout.ms", "30000"},
      {"message.timeout.ms", "29000"},
      {"socket.keepalive.enable", "true"},
  };
  props.insert(props.end(), p_.kafka.begin(), p_.kafka.end());
  KHLS_ASSIGN_OR_RETURN(kafka::ConfPtr conf, kafka::MakeConf(props));
  rd_kafka_conf_set_dr_msg_cb(conf.get(), OnDelivery);
  rd_kafka_conf_set_error_cb(conf.get(), OnError);
  rd_kafka_conf_set_opaque(conf.get(), &cb_);
  KHLS_ASSIGN_OR_RETURN(rk_, kafka::MakeHandle(RD_KAFKA_PRODUCER, std::move(conf)));

  kafka::TopicSettings topic = p_.topic;
  for (auto& [k, v] : topic.configs)
    if (k == "max.message.bytes")
      v = std::to_string(std::max<uint64_t>(std::stoull(v), LargestChunk() + defaults::kRecordMargin));
  kafka::TopicSettings index;
  index.name = index_topic_;
  index.partitions = 1;
  index.replication_factor = p_.topic.replication_factor;
  // Compacted; a live title writes its status with every segment group, so the
  // active segment rolls hourly (only closed segments are compacted) and is
  // cleaned early: an ingest reads the whole index when it starts.
  index.configs = {{"cleanup.policy", "compact"}, {"segment.ms", "3600000"}, {"min.cleanable.dirty.ratio", "0.1"}};
  for (const auto& [k, v] : p_.topic.configs)
    if (k == "min.insync.replicas") index.configs.emplace_back(k, v);
  // Both in one request, both waited for together (each step a round trip, or a
  // short-lived client per broker, that the first segment waits for).
  KHLS_RETURN_IF_ERROR(kafka::EnsureTopics(rk_.get(), {topic, index}, timeout_ms()).WithContext(
      fmt::format("brokers {}", p_.brokers)));
  // Both topics served by every broker (a fresh topic is not, for a moment: a
  // produce or a scan that asks such a broker fails with "unknown topic"); then
  // learn their partitions and leaders, so the first transaction does not wait.
  KHLS_RETURN_IF_ERROR(kafka::WaitForTopics(rk_.get(), p_.kafka, {topic.name, index_topic_}, timeout_ms()));
  for (const std::string& t : {topic.name, index_topic_})
    KHLS_RETURN_IF_ERROR(kafka::PartitionCount(rk_.get(), t, timeout_ms()).status());
  // Once per run: the cutter thread encodes records with it.
  if (!chunk_resolved_) {
    KHLS_RETURN_IF_ERROR(ResolveChunkSize());
    chunk_resolved_ = true;
  }
  KHLS_RETURN_IF_ERROR(kafka::FromError(rd_kafka_init_transactions(rk_.get(), timeout_ms()),
                                        fmt::format("init Kafka transactions on {}", p_.brokers)));
  return Status::Ok();
}

Status Publisher::PublishTransaction(const std::vector<std::span<const uint8_t>>& records, std::string_view what,
                                     const std::vector<uint8_t>* index_record) {
  // librdkafka's rules: a retriable error is retried, an abortable one aborts
  // the transaction and it is sent again; after a fatal one (e.g. a transaction
  // coordinator killed mid-commit leaves the producer fenced or in an invalid
  // state) this producer can do nothing more, so a new one with the same
  // transactional.id takes over: its init fences the old one, and the broker
  // aborts whatever transaction the old one left open. Nothing of this group
  // was committed, so publishing it again duplicates nothing.
  constexpr int kAttempts = 5;
  for (int attempt = 1;; ++attempt) {
    Status s = TryTransaction(records, index_record);
    if (s.ok()) return s;
    const std::string context = fmt::format("publish {} of title '{}' to topic '{}'", what, p_.title, p_.topic.name);
    if (s.code() == ErrorCode::kCancelled || attempt == kAttempts) return s.WithContext(context);
    if (!retriable_) {
      log::Warn("{}: {}; this producer cannot continue: starting a new one ({}/{})", context, s.message(), attempt,
                kAttempts);
      if (Status r = Restart(); !r.ok())
        return r.WithContext(fmt::format("{}: start a new producer after: {}", context, s.message()));
    } else {
      log::Warn("{}: {}; retrying ({}/{})", context, s.message(), attempt, kAttempts);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
  }
}

Status Publisher::Restart() {
  if (rk_) {
    // Drop what the old producer still holds, so its destruction does not wait on a dead broker.
    (void)rd_kafka_purge(rk_.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rk_.reset();
  }
  {
    std::lock_guard lock(cb_.mu);
    cb_.fatal_error.clear();
    cb_.failed_deliveries = 0;
    cb_.first_delivery_error.clear();
  }
  retriable_ = true;
  return Init();
}

Status Publisher::Fatal() {
  std::lock_guard lock(cb_.mu);
  if (cb_.fatal_error.empty()) return Status::Ok();
  retriable_ = false;
  return Error(ErrorCode::kKafka, "fatal producer error: {}", cb_.fatal_error);
}

Status Publisher::Abort() {
  rd_kafka_error_t* e = rd_kafka_abort_transaction(rk_.get(), timeout_ms());
  if (e) {
    retriable_ = false;
    return kafka::FromError(e, "abort transaction");
  }
  return Status::Ok();
}

Status Publisher::TryTransaction(const std::vector<std::span<const uint8_t>>& records,
                                 const std::vector<uint8_t>* index_record) {
  retriable_ = true;
  {
    std::lock_guard lock(cb_.mu);  // failures of an aborted attempt are not this one's
    cb_.failed_deliveries = 0;
    cb_.first_delivery_error.clear();
  }
  KHLS_RETURN_IF_ERROR(Fatal());
  if (rd_kafka_error_t* e = rd_kafka_begin_transaction(rk_.get())) {
    retriable_ = false;
    return kafka::FromError(e, "begin transaction");
  }
  const size_t total = records.size() + (index_record ? 1 : 0);
  for (size_t i = 0; i < total; ++i) {
    const bool is_index = i == records.size();
    const std::span<const uint8_t> rec = is_index ? std::span<const uint8_t>(*index_record) : records[i];
    const std::string& topic = is_index ? index_topic_ : p_.topic.name;
    for (;;) {
      if (stop_) {
        (void)Abort();
        return Status(ErrorCode::kCancelled, "interrupted");
      }
      rd_kafka_resp_err_t err = rd_kafka_producev(
          rk_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_KEY(p_.title.data(), p_.title.size()),
          RD_KAFKA_V_VALUE(const_cast<uint8_t*>(rec.data()), rec.size()), RD_KAFKA_V_MSGFLAGS(0), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(rk_.get(), 50);
        continue;
      }
      KHLS_RETURN_IF_ERROR(Fatal());
      Status s = Error(ErrorCode::kKafka, "produce: {}", rd_kafka_err2str(err));
      KHLS_RETURN_IF_ERROR(Abort());
      return s;
    }
    rd_kafka_poll(rk_.get(), 0);
  }
  for (;;) {
    rd_kafka_error_t* e = rd_kafka_commit_transaction(rk_.get(), timeout_ms());
    if (!e) break;
    kafka::ErrorPtr err(e);
    std::string msg = rd_kafka_error_string(e);
    if (rd_kafka_error_is_retriable(e) && !stop_) continue;
    if (rd_kafka_error_txn_requires_abort(e)) {
      KHLS_RETURN_IF_ERROR(Abort());
      return Error(ErrorCode::kKafka, "commit transaction: {} (aborted)", msg);
    }
    retriable_ = false;
    return Error(ErrorCode::kKafka, "commit transaction: {}", msg);
  }
  std::lock_guard lock(cb_.mu);
  if (cb_.failed_deliveries > 0) {
    retriable_ = false;
    return Error(ErrorCode::kKafka, "{} deliveries failed: {}", cb_.failed_deliveries, cb_.first_delivery_error);
  }
  return Status::Ok();
}

}  // namespace khls::ingest::internal
