// The 90 kHz clock every module speaks, and every default setting, in one place:
// the YAML config, the command line and the library params structs all start
// from these values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace khls {

/// Ticks per second of the MPEG-TS clock. Every timestamp and duration that
/// crosses a module boundary (segmenter, records, title state, playlists) is in
/// these units.
inline constexpr int64_t kClock = 90000;

/// Seconds as a double, for logs and playlists.
constexpr double ToSeconds(int64_t ticks) { return static_cast<double>(ticks) / static_cast<double>(kClock); }
constexpr double ToSeconds(uint64_t ticks) { return static_cast<double>(ticks) / static_cast<double>(kClock); }

namespace defaults {

inline constexpr char kBrokers[] = "127.0.0.1:9092";
inline constexpr char kTopic[] = "kafka-hls";
/// Partitions of the topic when a command creates it.
inline constexpr int kPartitions = 6;
/// -1: the broker's default.replication.factor.
inline constexpr int kReplicationFactor = -1;
/// -1: keep records forever (the topic is the source of truth).
inline constexpr int64_t kRetentionMs = -1;
/// Target segment duration, seconds.
inline constexpr double kSegmentDuration = 6.0;
/// Payload bytes per Kafka record: under the broker's default 1 MB message limit.
inline constexpr size_t kChunkSize = 512 * 1024;
/// Segments cut ahead of Kafka are held up to this, and one transaction carries up to this.
inline constexpr uint64_t kMaxTransactionBytes = 8ull << 20;
inline constexpr char kOutDir[] = "out";
inline constexpr char kGroup[] = "kafka-hls-packager";
/// Largest segment a packager reassembles, and its bound on reassembly memory.
inline constexpr uint64_t kMaxSegmentBytes = 256ull << 20;
inline constexpr uint64_t kMaxBufferedBytes = 512ull << 20;

}  // namespace defaults
}  // namespace khls
