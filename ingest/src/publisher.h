// The transactional producer of one ingest run.
//
// Every call publishes whole units in one Kafka transaction: a title start or
// end together with the title's status in the index topic, or the records of
// whole segments. A read_committed consumer therefore never sees half a
// segment, and a killed ingest leaves no partial unit behind (its open
// transaction is aborted, or fenced by the next run with the same
// transactional.id). Success is decided by the commit and the delivery reports.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "khls/ingest.h"
#include "khls/kafka.h"
#include "khls/status.h"

namespace khls::ingest::internal {

class Publisher {
 public:
  /// `p` and `stop` must outlive the publisher.
  Publisher(const Params& p, const std::atomic<bool>& stop);

  /// Creates the producer, the media topic and its index topic if missing, learns
  /// their leaders and the payload bytes per record (chunk_size()), and
  /// initialises transactions (fencing an older run of the same transactional.id).
  /// kInvalidArgument when Params::chunk_size does not fit the topic's max.message.bytes.
  Status Init();

  /// Payload bytes per record: Params::chunk_size, or when that is 0 what the
  /// topic accepts (known after Init; fixed for the run).
  size_t chunk_size() const { return chunk_size_; }

  /// Publishes `records` (all keyed by the title) to the media topic, and
  /// `index_record` (if any) to the index topic, in one transaction. The buffers
  /// are handed to librdkafka without copying and stay alive until the
  /// transaction is committed or aborted, which is before this returns.
  /// Retriable failures are retried (5 attempts); `what` names the unit in errors.
  Status PublishTransaction(const std::vector<std::span<const uint8_t>>& records, std::string_view what,
                            const std::vector<uint8_t>* index_record = nullptr);

  /// Releases the producer; fences nothing, commits nothing.
  void Close() { rk_.reset(); }

 private:
  // Errors reported by librdkafka's callbacks, read by the publishing thread.
  struct CallbackState {
    std::mutex mu;
    std::string fatal_error;
    uint64_t failed_deliveries = 0;
    std::string first_delivery_error;
  };
  static void OnDelivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque);
  static void OnError(rd_kafka_t* rk, int err, const char* reason, void* opaque);

  int timeout_ms() const { return p_.timeout_s * 1000; }
  Status Fatal();
  /// The largest payload a record of this run may carry, known before the topic is
  /// asked: the producer's and the topic's limits are set from it.
  size_t LargestChunk() const { return p_.chunk_size ? p_.chunk_size : defaults::kMaxAutoChunkSize; }
  /// Sets chunk_size_ from the topic's max.message.bytes (the first Init only).
  Status ResolveChunkSize();
  Status Abort();
  /// Replaces the producer by a new one with the same transactional.id (Init again).
  Status Restart();
  Status TryTransaction(const std::vector<std::span<const uint8_t>>& records,
                        const std::vector<uint8_t>* index_record);

  const Params& p_;
  const std::atomic<bool>& stop_;
  const std::string index_topic_;
  CallbackState cb_;
  kafka::HandlePtr rk_;
  bool retriable_ = true;
  size_t chunk_size_ = 0;
  bool chunk_resolved_ = false;
};

}  // namespace khls::ingest::internal
