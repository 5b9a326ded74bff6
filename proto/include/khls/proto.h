// kafka-hls record format: what `ingest` writes to Kafka and `packager` /
// `repackage` read back. Pure code: no Kafka, no FFmpeg. This build writes
// every record in the oldest version that can carry it (version 3 only for the
// records of a title cut into LL-HLS parts, version 4 only for the title start
// of a live title resumed by a new ingest run, version 2 otherwise, so a packager
// of an earlier release still reads every other title) and reads versions 1 to 4
// (the topic is the source of truth: every version ever written stays readable;
// tests/fixtures/v1 holds real v1 records).
//
// A live title (no source file: no fingerprint, size or duration) may be resumed:
// an ingest started on it while it is neither complete nor replaced (the previous
// run died, or its feed was restarted) publishes a title start of the same
// version with first_sequence = the segment groups published so far (what the
// title's index status says), and numbers its groups from there; its timestamps
// start over, which packagers mark with EXT-X-DISCONTINUITY.
//
// Who talks to whom: one ingest run publishes, for one title, the records
//   TitleStart, then per segment group g = 0, 1, ...: for each rendition r:
//   SegmentChunk x k (rendition r, sequence g, chunks 0..k-1), then TitleEnd
// to one topic with Kafka key = title id, so all records of a title land in one
// partition, in order. A title cut into LL-HLS parts (TitleStart::part_target_ms
// > 0) publishes each segment as its parts, in order: for part p = 0, 1, ... of
// group g, for each rendition r, the chunks of (r, g, p); the last part of the
// group says so. Each part group is committed as soon as it is cut (in its own
// transaction, or with the next ones when the producer is behind), so a
// read_committed consumer never sees half a part; the segment is the
// concatenation of its parts. A title is a set of renditions (video variants, audio
// languages, subtitles) cut at the same points: group g holds segment g of every
// rendition. All chunks of a group are committed in one Kafka transaction (which
// may carry several whole groups; the start and end records have their own), so
// a read_committed consumer never sees half a segment or half a group.
//
// Wire layout (all integers big-endian):
//
//   offset  size  field
//   0       4     magic "KHLS"
//   4       1     format version (1 to 4; this build writes 2, 3 for part records, 4 for
//                 a resumed live title's start)
//   5       1     record type (1 TitleStart, 2 SegmentChunk, 3 TitleEnd, 4 TitleStatus)
//   6       2     reserved flags, must be 0
//   8       ...   body, type specific (below); strings are u16 length + bytes
//   end-8   8     XXH64 (seed 0) of every preceding byte
//
// Version 4 (the start of a resumed live title): as version 3, plus
//   TitleStart  : u32 part_target_ms (0 = whole segments, else as in version 3), then
//                 u32 first_sequence (> 0: the first segment group of this run; the run
//                 before it published groups 0 .. first_sequence - 1, the last of them
//                 possibly only in part) after start_offset; no duration, size or fingerprint
//   SegmentChunk, TitleEnd: as version 3 (a resumed title's chunks are written as 2 or 3)
//
// Version 3 (a title cut into parts): as version 2, plus
//   TitleStart  : u32 part_target_ms (> 0, at most the segment duration) after start_offset
//   SegmentChunk: u16 part, u8 part_flags (1 independent: starts on a keyframe; 2 last
//                 part of its segment) after sequence; segment_size, start_pts, duration
//                 and segment_digest then describe the part, not the whole segment
//
// Version 2:
//   TitleStart  : str title, 16B run_id, u32 title_version, u32 target_duration_s,
//                 u32 segment_duration_ms, u32 start_offset (90 kHz),
//                 u64 input_duration (90 kHz), u64 source_size, 16B source_fingerprint,
//                 str source_name, u16 rendition_count (1..64), then per rendition:
//                   str id, u8 kind (1 video, 2 audio, 3 subtitles),
//                   u8 flags (1 default, 2 autoselect, 4 forced), str language (BCP 47),
//                   str name, str characteristics, str codecs, u32 width, u32 height,
//                   u32 fps_num, u32 fps_den, u16 channels, u64 est_peak_bps, u64 est_avg_bps
//   SegmentChunk: str title, 16B run_id, u16 rendition (index into the title start's
//                 list), u32 sequence, u32 chunk_index, u32 chunk_count, u64 segment_size,
//                 u64 start_pts (90 kHz), u64 duration (90 kHz), 16B segment_digest
//                 (XXH3-128 of the whole segment), u32 payload_size, payload
//   TitleEnd    : str title, 16B run_id, u32 segment_count (groups), u64 total_duration
//                 (90 kHz, of the reference rendition), u16 rendition_count, then per
//                 rendition: u64 bytes, u64 duration, u64 peak_bps, u64 avg_bps,
//                 u64 max_segment_duration
//   TitleStatus : as in version 1
//
// Version 1 (decoded into the same structs: one rendition with id "" whose
// segments are muxed audio + video, directly in the version directory):
//   TitleStart  : str title, 16B run_id, u32 title_version, u32 target_duration_s,
//                 u32 segment_duration_ms, u32 start_offset (90 kHz),
//                 u8 media_flags (1 video, 2 audio),
//                 str codecs, u32 width, u32 height, u32 fps_num, u32 fps_den,
//                 u64 est_peak_bps, u64 est_avg_bps, u64 input_duration (90 kHz),
//                 u64 source_size, 16B source_fingerprint, str source_name
//   SegmentChunk: str title, 16B run_id, u32 sequence, u32 chunk_index,
//                 u32 chunk_count, u64 segment_size, u64 start_pts (90 kHz),
//                 u64 duration (90 kHz), 16B segment_digest, u32 payload_size, payload
//   TitleEnd    : str title, 16B run_id, u32 segment_count, u64 total_duration
//                 (90 kHz), u64 total_bytes, u64 peak_bps, u64 avg_bps,
//                 u64 max_segment_duration (90 kHz)
//   TitleStatus : str title, 16B run_id, u32 title_version, 16B source_fingerprint,
//                 u64 source_size, u8 state (1 started, 2 complete),
//                 u32 segment_count, str source_name
//
// TitleStatus records go to the compacted index topic "<topic>.titles" (key =
// title), in the same transaction as the TitleStart / TitleEnd they mirror (and,
// for a live title, as the first records of each segment group), so an ingest
// can learn a title's latest status without reading its media.
//
// Decoding is strict: every field is range-checked, the checksum verified, and
// trailing or missing bytes rejected. A record that fails is reported with the
// reason (kMalformedRecord); decoding never crashes or allocates more than the
// record's own size.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "khls/defaults.h"
#include "khls/status.h"

namespace khls::proto {

/// The newest format version this build writes (only for a resumed live title's start;
/// part records are written as kPartFormatVersion, other records as
/// kPlainFormatVersion); it reads kOldestFormatVersion..kFormatVersion.
inline constexpr uint8_t kFormatVersion = 4;
inline constexpr uint8_t kResumeFormatVersion = 4;
inline constexpr uint8_t kPartFormatVersion = 3;
inline constexpr uint8_t kPlainFormatVersion = 2;
inline constexpr uint8_t kOldestFormatVersion = 1;
inline constexpr size_t kHeaderSize = 8;
inline constexpr size_t kTrailerSize = 8;
/// Longest title id.
inline constexpr size_t kMaxTitleLength = 128;
/// Hard limits of the format (a packager may configure lower ones).
inline constexpr uint64_t kMaxSegmentSize = 1ull << 30;  // 1 GiB
inline constexpr uint32_t kMaxChunkCount = 1u << 16;
inline constexpr uint32_t kMaxTargetDuration = 3600;
/// Renditions of one title.
inline constexpr size_t kMaxRenditions = 64;
/// Longest rendition id (a directory name under v<N>/).
inline constexpr size_t kMaxRenditionIdLength = 32;
/// Default payload bytes per chunk: keeps every record under the broker's default 1 MB limit.
inline constexpr size_t kDefaultChunkSize = defaults::kFallbackChunkSize;

using RunId = std::array<uint8_t, 16>;
using Digest = std::array<uint8_t, 16>;

enum class RecordType : uint8_t { kTitleStart = 1, kSegmentChunk = 2, kTitleEnd = 3, kTitleStatus = 4 };

enum class RenditionKind : uint8_t { kVideo = 1, kAudio = 2, kSubtitles = 3 };
const char* ToString(RenditionKind k);

/// One track of a title as players see it: a video variant, an audio language,
/// a subtitle language. Its segments are MPEG-TS (video, audio) or WebVTT
/// (subtitles), one per segment group.
struct Rendition {
  /// Directory name under v<N>/: 1-32 characters of a-z 0-9 - _, starting with a
  /// letter or digit, unique in the title. "" only for a title decoded from
  /// format 1: one rendition of muxed audio + video written directly in v<N>/.
  std::string id;
  RenditionKind kind = RenditionKind::kVideo;
  std::string language;         ///< BCP 47 ("en", "pt-BR"); "" unknown
  std::string name;             ///< EXT-X-MEDIA NAME, UTF-8, no control characters or '"'
  bool is_default = false;      ///< DEFAULT=YES (implies autoselect)
  bool autoselect = false;      ///< AUTOSELECT=YES
  bool forced = false;          ///< FORCED=YES (subtitles)
  std::string characteristics;  ///< CHARACTERISTICS, e.g. "public.accessibility.describes-video"
  /// RFC 6381 of this rendition alone ("avc1.640028", "mp4a.40.2"); "" for subtitles,
  /// or when the stream's profile could not be known (playlists then give no CODECS).
  std::string codecs;
  uint32_t width = 0;           ///< video
  uint32_t height = 0;          ///< video
  uint32_t fps_num = 0;         ///< video; 0 = unknown
  uint32_t fps_den = 1;
  uint32_t channels = 0;        ///< audio; 0 = unknown
  uint64_t est_peak_bps = 0;    ///< estimated from the ingest's pre-scan; 0 = unknown (live)
  uint64_t est_avg_bps = 0;
  /// Format 1 only: the segments of this (video) rendition also carry the audio,
  /// and `codecs` lists both.
  bool muxed_audio = false;

  bool operator==(const Rendition&) const = default;
};

struct TitleStart {
  std::string title;
  RunId run_id{};
  /// The title's one version counter (khls/title_identity.h): its output goes to v<title_version>/.
  uint32_t title_version = 1;
  /// EXT-X-TARGETDURATION in seconds, for every rendition; fixed for the title's life (RFC 8216 4.3.3.1).
  uint32_t target_duration_s = 0;
  /// The configured cut target, in milliseconds.
  uint32_t segment_duration_ms = 0;
  /// Where playback should start, 90 kHz from the title's start: the B-frame
  /// reorder delay, before which there is no picture (EXT-X-START). At most 10 s.
  uint32_t start_offset = 0;
  uint64_t input_duration = 0;  ///< 90 kHz; 0 = unknown (live)
  uint64_t source_size = 0;
  Digest source_fingerprint{};
  std::string source_name;  ///< file name(s) only, for humans
  /// LL-HLS: the segments come as parts of at most this many ms (EXT-X-PART-INF
  /// PART-TARGET); 0 = whole segments. Format 3 only.
  uint32_t part_target_ms = 0;
  /// A live title resumed by this run (format 4): its first segment group; the
  /// groups before it came from earlier runs of the same version. 0 = the run
  /// that started the version.
  uint32_t first_sequence = 0;
  /// Video variants first, then audio, then subtitles; at least one video or audio.
  std::vector<Rendition> renditions;

  bool operator==(const TitleStart&) const = default;
};

/// One piece of a segment (or, in a title cut into parts, of a part of one).
/// `payload` views the decoded record's buffer: keep that buffer alive while the
/// chunk is used.
struct SegmentChunk {
  std::string title;
  RunId run_id{};
  uint16_t rendition = 0;  ///< index into TitleStart::renditions
  uint32_t sequence = 0;   ///< segment group
  /// Format 3: which part of the segment this is, whether it starts on a keyframe,
  /// and whether it is the segment's last; a whole segment is part 0, independent, last.
  uint16_t part = 0;
  bool independent = true;
  bool last_part = true;
  uint32_t chunk_index = 0;
  uint32_t chunk_count = 0;
  uint64_t segment_size = 0;
  uint64_t start_pts = 0;
  uint64_t duration = 0;
  Digest segment_digest{};
  std::span<const uint8_t> payload;
};

/// What one rendition amounted to, measured by the ingest.
struct RenditionTotals {
  uint64_t bytes = 0;
  uint64_t duration = 0;  ///< 90 kHz, sum of its segments
  uint64_t peak_bps = 0;  ///< max over segments of size * 8 / duration
  uint64_t avg_bps = 0;   ///< bytes * 8 / duration
  uint64_t max_segment_duration = 0;

  bool operator==(const RenditionTotals&) const = default;
};

struct TitleEnd {
  std::string title;
  RunId run_id{};
  uint32_t segment_count = 0;   ///< segment groups
  uint64_t total_duration = 0;  ///< 90 kHz, of the reference rendition (the first)
  std::vector<RenditionTotals> renditions;  ///< in TitleStart order

  bool operator==(const TitleEnd&) const = default;
};

/// Latest status of a title, kept in the compacted index topic. A live title's
/// status (source_size 0) carries its LiveLayout as source_fingerprint and, while
/// it runs, the segment groups begun so far as segment_count: its ingest writes it
/// again in the transaction of each group's first records (khls/title_identity.h).
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

/// SegmentDigest over bytes that arrive in pieces: Append() each piece in
/// order, then Final() equals SegmentDigest of their concatenation.
class SegmentDigester {
 public:
  SegmentDigester();
  ~SegmentDigester();
  SegmentDigester(SegmentDigester&&) noexcept;
  SegmentDigester& operator=(SegmentDigester&&) noexcept;

  /// Appends `src` to `dst` and hashes it, in blocks small enough to be hashed
  /// while the copy is still in cache (one pass over the bytes, not two).
  void Append(std::vector<uint8_t>& dst, std::span<const uint8_t> src);
  Digest Final() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};
/// Lower-case hex of 16 bytes.
std::string ToHex(std::span<const uint8_t> bytes);
/// A fresh random run id.
RunId NewRunId();

std::vector<uint8_t> Encode(const TitleStart& r);
std::vector<uint8_t> Encode(const TitleEnd& r);
std::vector<uint8_t> Encode(const TitleStatus& r);
/// Encodes one chunk record (format 2); `c.payload` is copied. Records always
/// carry the current format; a rendition with id "" (a decoded format-1 title)
/// does not encode into a valid record.
std::vector<uint8_t> Encode(const SegmentChunk& c);

/// Describes a whole segment to be split into chunk records.
struct SegmentMeta {
  std::string title;
  RunId run_id{};
  uint16_t rendition = 0;
  uint32_t sequence = 0;
  uint64_t start_pts = 0;
  uint64_t duration = 0;
  /// A part of the segment (format 3) unless part 0, independent and last.
  uint16_t part = 0;
  bool independent = true;
  bool last_part = true;
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
/// Like EncodeSegmentInto, but writes the records from `records[first]` on
/// (resizing to first + count) and returns their count: a group's renditions go
/// one after another into one vector.
size_t EncodeSegmentAt(const SegmentMeta& meta, std::span<const uint8_t> data, size_t chunk_size,
                       std::vector<std::vector<uint8_t>>& records, size_t first);

/// Decodes and validates one record. SegmentChunk::payload points into `bytes`.
Result<Record> Decode(std::span<const uint8_t> bytes);

/// The record's title id (for logs and Kafka keys).
const std::string& TitleOf(const Record& r);

/// A segment put back together and verified against its digest.
/// (In a title cut into parts: a part, put back together.)
struct AssembledSegment {
  std::string title;
  RunId run_id{};
  uint16_t rendition = 0;
  uint32_t sequence = 0;
  uint16_t part = 0;
  bool independent = true;
  bool last_part = true;
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
  /// True when `title` has a segment in flight.
  bool InFlight(const std::string& title) const { return pending_.count(title) != 0; }
  uint64_t buffered_bytes() const { return buffered_; }

 private:
  struct Pending {
    RunId run_id{};
    uint16_t rendition = 0;
    uint32_t sequence = 0;
    uint16_t part = 0;
    bool independent = true;
    bool last_part = true;
    uint32_t next_index = 0;
    uint32_t chunk_count = 0;
    uint64_t segment_size = 0;
    uint64_t start_pts = 0;
    uint64_t duration = 0;
    Digest digest{};
    std::vector<uint8_t> data;
    SegmentDigester digester;  ///< of `data` so far
  };
  void Erase(std::map<std::string, Pending>::iterator it);

  Limits limits_;
  std::map<std::string, Pending> pending_;
  uint64_t buffered_ = 0;
};

}  // namespace khls::proto
