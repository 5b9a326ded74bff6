// Configuration file (YAML) for the kafka-hls command; flags override it.
#pragma once

#include <cstdint>
#include <string>

#include "khls/defaults.h"
#include "khls/kafka.h"
#include "khls/status.h"

namespace khls::app {

struct Config {
  std::string brokers = defaults::kBrokers;
  std::string topic = defaults::kTopic;
  int partitions = defaults::kPartitions;
  int replication_factor = defaults::kReplicationFactor;
  /// min.insync.replicas of the topics this command creates; 0 = the broker's.
  int min_insync_replicas = 0;
  int64_t retention_ms = defaults::kRetentionMs;
  kafka::Properties producer;
  kafka::Properties consumer;
  double segment_duration = defaults::kSegmentDuration;
  uint64_t chunk_size = defaults::kChunkSize;
  uint64_t max_transaction_bytes = defaults::kMaxTransactionBytes;
  /// Seconds a live input may send nothing before its title is ended, in (0, 3600].
  double stall_timeout = 10;
  /// LL-HLS: ingests cut segments into parts of at most this many seconds; 0 = whole segments.
  double part_duration = 0;
  std::string out_dir = defaults::kOutDir;
  std::string group = defaults::kGroup;
  uint64_t max_segment_bytes = defaults::kMaxSegmentBytes;
  uint64_t max_buffered_bytes = defaults::kMaxBufferedBytes;
  bool durable = true;
  /// "ts" or "fmp4" (checked by LoadConfig).
  std::string container = "ts";
  /// "none" or "aes-128" (checked by LoadConfig); key_rotation: segments per key
  /// (0 = one key per title version); key_store: "" = "<out>.keys"; key_uri_prefix:
  /// "" = keys served by the origin next to each playlist.
  std::string encrypt = "none";
  uint32_t key_rotation = 0;
  std::string key_store;
  std::string key_uri_prefix;
  /// Seconds a live title's playlists list (sliding window); 0 = every segment.
  double window = 60;
  /// LL-HLS: `package` lists the parts of titles ingested with parts as they arrive.
  bool low_latency = false;
  /// `package` serves /metrics and /healthz on this port (0 = any free port); -1 = off.
  int metrics_port = -1;
};

/// Reads `path` over the defaults. Unknown keys and bad values are errors that
/// name the file, line and key ("configs/x.yaml:12: ingest.chunk_size: ...").
Result<Config> LoadConfig(const std::string& path);

}  // namespace khls::app
