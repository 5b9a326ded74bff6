// kafka-hls record format, version 1: what `ingest` writes to Kafka and
// `packager` / `repackage` read back. Pure code: no Kafka, no FFmpeg.
//
// Who talks to whom: one ingest run publishes, for one title, the records
//   TitleStart, SegmentChunk x N (segment 0 chunks 0..k, segment 1 ...), TitleEnd
// to one topic with Kafka key = title id, so all records of a title land in one
// partition, in order. All chunks of a segment are committed in one Kafka
// transaction (which may carry several whole segments; the start and end
// records have their own), so a read_committed consumer never sees half a
// segment.
//
// Wire layout (all integers big-endian):
//
//   offset  size  field
//   0       4     magic "KHLS"
//   4       1     format version (kFormatVersion = 1)
//   5       1     record type (1 TitleStart, 2 SegmentChunk, 3 TitleEnd)
//   6       2     reserved flags, must be 0
//   8       ...   body, type specific (below); strings are u16 length + bytes
//   end-8   8     XXH64 (seed 0) of every preceding byte
//
//   TitleStart  : str title, 16B run_id, u32 title_version, u32 target_duration_s,
//                 u32 segment_duration_ms, u32 start_offset (90 kHz),
//                 u8 media_flags (1 video, 2 audio),
//                 str codecs, u32 width, u32 height, u32 fps_num, u32 fps_den,
//                 u64 est_peak_bps, u64 est_avg_bps, u64 input_duration (90 kHz),
//                 u64 source_size, 16B source_fingerprint, str source_name
//   SegmentChunk: str title, 16B run_id, u32 sequence, u32 chunk_index,
//                 u32 chunk_count, u64 segment_size, u64 start_pts (90 kHz),
//                 u64 duration (90 kHz), 16B segment_digest (XXH3-128 of the
//                 whole segment), u32 payload_size, payload
//   TitleEnd    : str title, 16B run_id, u32 segment_count, u64 total_duration
//                 (90 kHz), u64 total_bytes, u64 peak_bps, u64 avg_bps,
//                 u64 max_segment_duration (90 kHz)
//   TitleStatus : str title, 16B run_id, u32 title_version, 16B source_fingerprint,
//                 u64 source_size, u8 state (1 started, 2 complete),
//                 u32 segment_count, str source_name
//
// TitleStatus records go to the compacted index topic "<topic>.titles" (key =
// title), in the same transaction as the TitleStart / TitleEnd they mirror, so
// an ingest can learn a title's latest status without reading its media.
//
// Decoding is strict: every field is range-checked, the checksum verified, and
// trailing or missing bytes rejected. A record that fails is reported with the
// reason (kMalformedRecord); decoding never crashes or allocates more than the
// record's own size.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "khls/defaults.h"
#include "khls/status.h"

namespace khls::proto {

inline constexpr uint8_t kFormatVersion = 1;
inline constexpr size_t kHeaderSize = 8;
inline constexpr size_t kTrailerSize = 8;
/// Longest title id.
inline constexpr size_t kMaxTitleLength = 128;
/// Hard limits of the format (a packager may configure lower ones).
inline constexpr uint64_t kMaxSegmentSize = 1ull << 30;  // 1 GiB
inline constexpr uint32_t kMaxChunkCount = 1u << 16;
inline constexpr uint32_t kMaxTargetDuration = 3600;
/// Default payload bytes per chunk: keeps every record under the broker's default 1 MB limit.
inline constexpr size_t kDefaultChunkSize = defaults::kChunkSize;

using RunId = std::array<uint8_t, 16>;
using Digest = std::array<uint8_t, 16>;

enum class RecordType : uint8_t { kTitleStart = 1, kSegmentChunk = 2, kTitleEnd = 3, kTitleStatus = 4 };

struct TitleStart {
  std::string title;
  RunId run_id{};
  uint32_t title_version = 1;
  /// EXT-X-TARGETDURATION in seconds; fixed for the title's life (RFC 8216 4.3.3.1).
  uint32_t target_duration_s = 0;
  /// The configured cut target, in milliseconds.
  uint32_t segment_duration_ms = 0;
  /// Where playback should start, 90 kHz from the title's start: the B-frame
  /// reorder delay, before which there is no picture (EXT-X-START). At most 10 s.
  uint32_t start_offset = 0;
  bool has_video = false;
  bool has_audio = false;
  std::string codecs;  ///< RFC 6381, e.g. "avc1.640028,mp4a.40.2"
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t fps_num = 0;  ///< 0 = unknown
  uint32_t fps_den = 1;
  uint64_t est_peak_bps = 0;
  uint64_t est_avg_bps = 0;
  uint64_t input_duration = 0;  ///< 90 kHz; 0 = unknown (live)
  uint64_t source_size = 0;
  Digest source_fingerprint{};
  std::string source_name;  ///< file name only, for humans

  bool operator==(const TitleStart&) const = default;
};

/// One piece of a segment. `payload` views the decoded record's buffer: keep
/// that buffer alive while the chunk is used.
struct SegmentChunk {
  std::string title;
  RunId run_id{};
  uint32_t sequence = 0;
  uint32_t chunk_index = 0;
  uint32_t chunk_count = 0;
  uint64_t segment_size = 0;
  uint64_t start_pts = 0;
  uint64_t duration = 0;
  Digest segment_digest{};
  std::span<const uint8_t> payload;
};

struct TitleEnd {
  std::string title;
  RunId run_id{};
  uint32_t segment_count = 0;
  uint64_t total_duration = 0;
  uint64_t total_bytes = 0;
  uint64_t peak_bps = 0;
  uint64_t avg_bps = 0;
  uint64_t max_segment_duration = 0;

  bool operator==(const TitleEnd&) const = default;
};

/// Latest status of a title, kept in the compacted index topic.
struct TitleStatus {
  enum class State : uint8_t { kStarted = 1, kComplete = 2 };
  std::string title;
  RunId run_id{};
  uint32_t title_version = 1;
  Digest source_fingerprint{};
  uint64_t source_size = 0;
  State state = State::kStarted;
  uint32_t segment_count = 0;
  std::string source_name;

  bool operator==(const TitleStatus&) const = default;
};

using Record = std::variant<TitleStart, SegmentChunk, TitleEnd, TitleStatus>;

/// Name of the index topic that goes with a media topic.
inline std::string IndexTopic(const std::string& topic) { return topic + ".titles"; }

/// A character of a title id: A-Z a-z 0-9 . _ -
constexpr bool IsTitleIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}
/// True for `[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}` (no leading dot, so never "." or
/// ".." or a hidden name): safe as one path component the origin serves.
bool IsValidTitleId(std::string_view id);
/// Ok, or kInvalidArgument naming the id and the rule.
Status CheckTitleId(std::string_view id);

/// XXH3-128 of a whole segment.
Digest SegmentDigest(std::span<const uint8_t> data);
/// Lower-case hex of 16 bytes.
std::string ToHex(std::span<const uint8_t> bytes);
/// A fresh random run id.
RunId NewRunId();

std::vector<uint8_t> Encode(const TitleStart& r);
std::vector<uint8_t> Encode(const TitleEnd& r);
std::vector<uint8_t> Encode(const TitleStatus& r);
/// Encodes one chunk record; `c.payload` is copied.
std::vector<uint8_t> Encode(const SegmentChunk& c);

/// Describes a whole segment to be split into chunk records.
struct SegmentMeta {
  std::string title;
  RunId run_id{};
  uint32_t sequence = 0;
  uint64_t start_pts = 0;
  uint64_t duration = 0;
};

/// Splits `data` into records of at most `chunk_size` payload bytes each
/// (at least one record, even for an empty segment), all carrying the digest of
/// the whole segment.
std::vector<std::vector<uint8_t>> EncodeSegment(const SegmentMeta& meta, std::span<const uint8_t> data,
                                                size_t chunk_size = kDefaultChunkSize);
/// EncodeSegment into `records` (resized to the record count), reusing the
/// capacity of the buffers it holds: a producer that hands its delivered records
/// back here allocates nothing per segment.
void EncodeSegmentInto(const SegmentMeta& meta, std::span<const uint8_t> data, size_t chunk_size,
                       std::vector<std::vector<uint8_t>>& records);

/// Decodes and validates one record. SegmentChunk::payload points into `bytes`.
Result<Record> Decode(std::span<const uint8_t> bytes);

/// The record's title id (for logs and Kafka keys).
const std::string& TitleOf(const Record& r);

/// A segment put back together and verified against its digest.
struct AssembledSegment {
  std::string title;
  RunId run_id{};
  uint32_t sequence = 0;
  uint64_t start_pts = 0;
  uint64_t duration = 0;
  Digest digest{};
  std::vector<uint8_t> data;
};

/// Puts chunks back into segments, one in-flight segment per title, within
/// memory bounds. Chunks of a segment must arrive in order (they do: one
/// partition, one transaction). A chunk that does not continue the in-flight
/// segment of its title is rejected; a chunk 0 replaces an unfinished segment.
class Reassembler {
 public:
  struct Limits {
    /// Largest segment accepted (declared segment_size).
    uint64_t max_segment_bytes = defaults::kMaxSegmentBytes;
    /// Bytes buffered across all titles at once.
    uint64_t max_buffered_bytes = defaults::kMaxBufferedBytes;
  };

  explicit Reassembler(Limits limits) : limits_(limits) {}
  Reassembler() : Reassembler(Limits{}) {}

  /// Adds a chunk. Returns the segment when this chunk completes it (digest
  /// verified), std::nullopt while more chunks are due, or kMalformedRecord /
  /// kResourceLimit with the reason (the title's in-flight segment is dropped).
  Result<std::optional<AssembledSegment>> Add(const SegmentChunk& chunk);

  /// Forgets the in-flight segment of `title`, if any.
  void Drop(const std::string& title);
  /// Forgets everything.
  void Clear();

  /// Titles with a segment in flight.
  std::vector<std::string> InFlight() const;
  uint64_t buffered_bytes() const { return buffered_; }

 private:
  struct Pending {
    RunId run_id{};
    uint32_t sequence = 0;
    uint32_t next_index = 0;
    uint32_t chunk_count = 0;
    uint64_t segment_size = 0;
    uint64_t start_pts = 0;
    uint64_t duration = 0;
    Digest digest{};
    std::vector<uint8_t> data;
  };
  void Erase(std::map<std::string, Pending>::iterator it);

  Limits limits_;
  std::map<std::string, Pending> pending_;
  uint64_t buffered_ = 0;
};

}  // namespace khls::proto
