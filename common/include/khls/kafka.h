// RAII handles and helpers over librdkafka's C API, shared by ingest and packager.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <librdkafka/rdkafka.h>

#include "khls/defaults.h"
#include "khls/status.h"

namespace khls::kafka {

/// librdkafka properties, applied in order (later wins).
using Properties = std::vector<std::pair<std::string, std::string>>;

struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
struct HandleDeleter {
  void operator()(rd_kafka_t* k) const { rd_kafka_destroy(k); }
};
struct ErrorDeleter {
  void operator()(rd_kafka_error_t* e) const { rd_kafka_error_destroy(e); }
};
struct MessageDeleter {
  void operator()(rd_kafka_message_t* m) const { rd_kafka_message_destroy(m); }
};
struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const { rd_kafka_topic_partition_list_destroy(l); }
};
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;
using HandlePtr = std::unique_ptr<rd_kafka_t, HandleDeleter>;
using ErrorPtr = std::unique_ptr<rd_kafka_error_t, ErrorDeleter>;
using MessagePtr = std::unique_ptr<rd_kafka_message_t, MessageDeleter>;
using PartitionListPtr = std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter>;

/// Builds a configuration from `props`; an unknown key or bad value fails with
/// kInvalidArgument naming the key.
Result<ConfPtr> MakeConf(const Properties& props);

/// Creates a producer or consumer from `conf` (ownership passes to librdkafka).
Result<HandlePtr> MakeHandle(rd_kafka_type_t type, ConfPtr conf);

/// How the shared topic is created when it does not exist.
struct TopicSettings {
  std::string name = defaults::kTopic;
  int partitions = defaults::kPartitions;
  /// -1 = the broker's default.replication.factor.
  int replication_factor = defaults::kReplicationFactor;
  /// Topic-level configs: by default a source-of-truth log (no time or size
  /// retention) whose max.message.bytes fits the chunk size.
  Properties configs = {{"retention.ms", "-1"}, {"retention.bytes", "-1"}, {"max.message.bytes", "2097152"}};
};

/// Creates the topic unless it exists already (then: Ok, settings untouched).
Status EnsureTopic(rd_kafka_t* rk, const TopicSettings& settings, int timeout_ms);
/// EnsureTopic for several topics, in one request.
Status EnsureTopics(rd_kafka_t* rk, const std::vector<TopicSettings>& topics, int timeout_ms);

/// Waits until every broker of the cluster serves `topic` in its metadata, with
/// a leader for every partition. Topic creation is asynchronous: the controller
/// answers before each broker knows the topic, and a client that asks a broker
/// that does not know it yet (a producer's first metadata request, a consumer
/// group's coordinator computing an assignment) takes it for missing (a produce
/// fails with "Unknown topic", a group member is assigned nothing). Each broker
/// is asked by a short-lived client of its own (`props`: the caller's extra
/// client properties, e.g. security settings; bootstrap.servers is set here).
/// kKafka naming the brokers that still do not know the topic at the deadline.
Status WaitForTopic(rd_kafka_t* rk, const Properties& props, const std::string& topic, int timeout_ms);
/// WaitForTopic for several topics: each broker is asked about all of them by one client.
Status WaitForTopics(rd_kafka_t* rk, const Properties& props, const std::vector<std::string>& topics, int timeout_ms);

/// Number of partitions of `topic`, or an error (kKafka) if it does not exist.
Result<int> PartitionCount(rd_kafka_t* rk, const std::string& topic, int timeout_ms);

/// Keeps a consumer's fetcher going. librdkafka 2.0 stops fetching a
/// partition while its prefetch queue is full (queued.max.messages.kbytes) and
/// looks again only at its next wakeup, up to a second later (2.1 added
/// fetch.queue.backoff.ms for this). A consumer that is slower than the fetcher
/// now and then (the packager waits for the disk) would stall for that second
/// each time. Any request to the partition leader wakes its broker thread, so
/// when the local queue runs dry while records were flowing, this sends a cheap
/// one (a watermark query), at most every 20 ms and for at most a second after
/// the last record (by then the fetcher has woken by itself).
///
/// The queries run on a thread of their own, never on the caller's: in
/// librdkafka 2.0 a watermark query to a partition leader that died does not
/// honour its timeout (it is retried until that broker returns; librdkafka
/// issue #2588, fixed in 2.3), and a consumer loop blocked there would hang a
/// packager for as long as the broker stays down. OnIdle only hands the
/// partitions over; while a query is still out, nudges are dropped.
class FetchNudge {
 public:
  FetchNudge(rd_kafka_t* rk, std::string topic);
  ~FetchNudge();
  FetchNudge(const FetchNudge&) = delete;
  FetchNudge& operator=(const FetchNudge&) = delete;

  /// A record of `partition` arrived.
  void OnRecord(int32_t partition) { active_[partition] = std::chrono::steady_clock::now(); }
  /// Call when a poll came back empty; never blocks. True while records were
  /// flowing within the last second (poll again soon).
  bool OnIdle();
  /// Stops the query thread, waiting up to `wait` for a query still out. False
  /// when one is stuck (a dead leader, see above): the thread is left behind
  /// and the rd_kafka_t it uses must then never be destroyed (the caller leaks
  /// it; the process is about to end). Idempotent.
  bool Stop(std::chrono::milliseconds wait = std::chrono::milliseconds(2000));

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
  std::map<int32_t, std::chrono::steady_clock::time_point> active_;
  std::chrono::steady_clock::time_point last_{};
};

/// Called for each record of a scan; an error stops the scan and is returned.
using RecordFn = std::function<Status(int32_t partition, int64_t offset, std::string_view key,
                                      std::span<const uint8_t> value)>;

/// Reads every partition of `topic` from the beginning to its end as of now
/// (committed records only), by direct assignment: no consumer group is joined
/// and no offset is committed, so live consumers are never disturbed.
/// `missing_is_empty`: a topic the cluster says does not exist is read as empty at
/// once (otherwise a scan waits up to 10 s for it to appear, then fails).
Status ScanTopic(const std::string& brokers, const std::string& topic, const Properties& extra, const RecordFn& fn,
                 const std::atomic<bool>& stop, bool missing_is_empty = false);

/// How a topic is set up on the cluster, for `topic describe`.
struct TopicDescription {
  int partitions = 0;
  int replication_factor = 0;       ///< replicas of its first partition
  std::string min_insync_replicas;  ///< the topic's effective config value
  std::string retention_ms;
  std::string max_message_bytes;    ///< the largest record batch the topic accepts
};

/// The topic's effective configuration (its own settings over the broker's
/// defaults), as DescribeConfigs returns it, asked through `rk` (any client).
/// kKafka if the topic does not exist or the cluster does not answer.
Result<std::map<std::string, std::string>> DescribeTopicConfigs(rd_kafka_t* rk, const std::string& topic,
                                                                int timeout_ms);

/// The topic's effective max.message.bytes: the largest record batch (a record
/// plus about 100 bytes of framing) a producer may send to it.
Result<int64_t> TopicMaxMessageBytes(rd_kafka_t* rk, const std::string& topic, int timeout_ms);

/// Reads the topic's partitions and replicas (metadata) and its effective
/// min.insync.replicas and retention.ms (DescribeConfigs). kKafka if the topic
/// does not exist or the cluster does not answer.
Result<TopicDescription> DescribeTopicSettings(const std::string& brokers, const std::string& topic,
                                               const Properties& extra);

/// Takes ownership of a librdkafka error object and turns it into a Status with context.
Status FromError(rd_kafka_error_t* error, std::string_view context);

}  // namespace khls::kafka
