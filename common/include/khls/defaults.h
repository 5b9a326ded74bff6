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
/// Payload bytes per Kafka record; 0 = as large as the topic accepts (its
/// max.message.bytes less kRecordMargin), up to kMaxAutoChunkSize. Fewer, larger
/// records cost less per byte in the producer, the broker and the consumer.
inline constexpr size_t kChunkSize = 0;
/// Bytes a record batch holds besides a chunk's payload are far fewer (the chunk
/// header with the title id, the Kafka record and batch framing with the key:
/// under 1 KiB); this leaves room to spare under a topic's max.message.bytes.
inline constexpr size_t kRecordMargin = 64 * 1024;
/// The largest chunk chosen by itself: a topic that kafka-hls creates accepts
/// 2 MiB records. (4 MiB records were measured slower: a record larger than the
/// packager's 4 MiB fetch size stalls its fetches.)
inline constexpr size_t kMaxAutoChunkSize = (2u << 20) - kRecordMargin;
/// The chunk size when the topic's limit cannot be learnt, and of records built
/// without Kafka: under the broker's default 1 MB message limit.
inline constexpr size_t kFallbackChunkSize = 512 * 1024;
/// Segments cut ahead of Kafka are held up to this, and one transaction carries up to this.
inline constexpr uint64_t kMaxTransactionBytes = 8ull << 20;
inline constexpr char kOutDir[] = "out";
inline constexpr char kGroup[] = "kafka-hls-packager";
/// Largest segment a packager reassembles, and its bound on reassembly memory.
inline constexpr uint64_t kMaxSegmentBytes = 256ull << 20;
inline constexpr uint64_t kMaxBufferedBytes = 512ull << 20;

}  // namespace defaults
}  // namespace khls
