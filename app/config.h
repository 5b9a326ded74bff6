// Configuration file (YAML) for the kafka-hls command; flags override it.
#pragma once

#include <cstdint>
#include <string>

#include "khls/kafka.h"
#include "khls/status.h"

namespace khls::app {

struct Config {
  std::string brokers = "127.0.0.1:9092";
  std::string topic = "kafka-hls";
  int partitions = 6;
  int replication_factor = -1;
  int64_t retention_ms = -1;
  kafka::Properties producer;
  kafka::Properties consumer;
  double segment_duration = 6.0;
  uint64_t chunk_size = 512 * 1024;
  uint64_t max_transaction_bytes = 8ull << 20;
  std::string out_dir = "out";
  std::string group = "kafka-hls-packager";
  uint64_t max_segment_bytes = 256ull << 20;
  uint64_t max_buffered_bytes = 512ull << 20;
  bool durable = true;
};

/// Reads `path` over the defaults. Unknown keys and bad values are errors that
/// name the file, line and key ("configs/x.yaml:12: ingest.chunk_size: ...").
Result<Config> LoadConfig(const std::string& path);

}  // namespace khls::app
