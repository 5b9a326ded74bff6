// HLS playlists (RFC 8216) as data, and their rendering. A media playlist is a
// list of entries (segments, discontinuities, init-segment maps, ...), and a
// multivariant playlist a list of renditions and variants; features add entries,
// not branches in the renderer. Rendering is a pure function: the same playlist
// always gives the same bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace khls::hls {

/// A sub-range of a resource (#EXT-X-BYTERANGE, version 4): `length` bytes from `offset`.
struct ByteRange {
  uint64_t length = 0;
  uint64_t offset = 0;
  bool operator==(const ByteRange&) const = default;
};

/// #EXTINF + URI. `duration` in 90 kHz ticks, written with 6 decimals (version 3).
struct SegmentEntry {
  uint64_t duration = 0;
  std::string uri;
  std::optional<ByteRange> range;  ///< #EXT-X-BYTERANGE: the segment is this part of `uri`
  bool operator==(const SegmentEntry&) const = default;
};
/// #EXT-X-DISCONTINUITY before the next segment.
struct DiscontinuityEntry {
  bool operator==(const DiscontinuityEntry&) const = default;
};
/// #EXT-X-MAP: the initialization section of the segments that follow.
struct MapEntry {
  std::string uri;
  std::optional<ByteRange> range;  ///< BYTERANGE: the section is this part of `uri`
  bool operator==(const MapEntry&) const = default;
};
/// #EXT-X-KEY: how the segments (and EXT-X-MAP sections) that follow are
/// encrypted, until the next one. An empty `uri` is METHOD=NONE.
struct KeyEntry {
  std::string method = "NONE";  ///< "AES-128" or "NONE"
  std::string uri;
  std::string iv;  ///< "0x" + 32 hex digits; omitted when empty
  bool operator==(const KeyEntry&) const = default;
};
/// #EXT-X-PROGRAM-DATE-TIME: the wall-clock time of the next segment's first sample.
struct DateTimeEntry {
  int64_t unix_ms = 0;  ///< written as ISO 8601 UTC with milliseconds
  bool operator==(const DateTimeEntry&) const = default;
};
/// #EXT-X-PART (LL-HLS): a partial segment of the segment whose #EXTINF follows
/// (or of the segment in progress, after the last #EXTINF). `duration` in 90 kHz.
struct PartEntry {
  uint64_t duration = 0;
  std::string uri;
  bool independent = false;  ///< INDEPENDENT=YES: starts with a picture that decodes alone
  bool operator==(const PartEntry&) const = default;
};
/// #EXT-X-PRELOAD-HINT:TYPE=PART: the part that comes next, which a client may
/// request before it exists (the origin holds the request).
struct PreloadHintEntry {
  std::string uri;
  bool operator==(const PreloadHintEntry&) const = default;
};
using MediaEntry =
    std::variant<SegmentEntry, DiscontinuityEntry, MapEntry, KeyEntry, DateTimeEntry, PartEntry, PreloadHintEntry>;

/// LL-HLS: #EXT-X-SERVER-CONTROL and #EXT-X-PART-INF of a media playlist.
struct LowLatency {
  uint64_t part_target = 0;     ///< PART-TARGET, 90 kHz (written with 3 decimals)
  uint64_t part_hold_back = 0;  ///< PART-HOLD-BACK, 90 kHz
  uint64_t can_skip_until = 0;  ///< CAN-SKIP-UNTIL, 90 kHz; 0 = no delta updates
  bool operator==(const LowLatency&) const = default;
};
/// #EXT-X-RENDITION-REPORT: where another rendition of the title stands.
struct RenditionReport {
  std::string uri;
  uint64_t last_msn = 0;
  std::optional<uint64_t> last_part;  ///< omitted when the rendition lists no part
  bool operator==(const RenditionReport&) const = default;
};

enum class PlaylistType { kNone, kEvent, kVod };

struct MediaPlaylist {
  int version = 3;
  /// #EXT-X-TARGETDURATION, seconds: no segment may be longer once rounded (4.3.3.1).
  uint32_t target_duration = 0;
  uint64_t media_sequence = 0;
  /// #EXT-X-DISCONTINUITY-SEQUENCE: discontinuities removed with the segments that
  /// left a sliding window (6.2.2); omitted when 0.
  uint64_t discontinuity_sequence = 0;
  PlaylistType type = PlaylistType::kNone;
  bool independent_segments = false;
  /// #EXT-X-I-FRAMES-ONLY (version 4): each segment is one I-frame, its duration
  /// the time until the next I-frame (4.3.3.6).
  bool iframes_only = false;
  /// #EXT-X-START:TIME-OFFSET=<s>,PRECISE=YES, 90 kHz.
  std::optional<uint64_t> start_offset;
  /// LL-HLS: CAN-BLOCK-RELOAD=YES with these hold backs, and the part target.
  std::optional<LowLatency> low_latency;
  std::vector<MediaEntry> entries;
  std::vector<RenditionReport> rendition_reports;  ///< written after the entries
  bool end_list = false;
};

std::string Render(const MediaPlaylist& p);

/// #EXT-X-MEDIA.
struct Media {
  enum class Type { kAudio, kVideo, kSubtitles };
  Type type = Type::kAudio;
  std::string group_id;
  std::string language;  ///< omitted when empty
  std::string name;
  bool is_default = false;
  bool autoselect = false;  ///< written as YES whenever is_default
  bool forced = false;      ///< FORCED is written for subtitles only
  std::string characteristics;  ///< omitted when empty
  std::string channels;         ///< audio: "2", "6"; omitted when empty
  std::string uri;
};

/// #EXT-X-STREAM-INF + URI.
struct Variant {
  uint64_t bandwidth = 0;
  uint64_t average_bandwidth = 0;  ///< omitted when 0
  std::string codecs;              ///< omitted when empty
  uint32_t width = 0, height = 0;  ///< RESOLUTION, omitted when 0
  uint32_t fps_num = 0, fps_den = 1;  ///< FRAME-RATE (3 decimals), omitted when unknown
  std::string audio;      ///< AUDIO group, omitted when empty
  std::string subtitles;  ///< SUBTITLES group, omitted when empty
  std::string uri;
};

/// #EXT-X-I-FRAME-STREAM-INF: an I-frames-only playlist of one video rendition
/// (for scrubbing and thumbnails).
struct IFrameVariant {
  uint64_t bandwidth = 0;
  uint64_t average_bandwidth = 0;  ///< omitted when 0
  std::string codecs;              ///< the video's alone; omitted when empty
  uint32_t width = 0, height = 0;  ///< RESOLUTION, omitted when 0
  std::string uri;
};

struct MultivariantPlaylist {
  int version = 3;
  bool independent_segments = true;
  std::vector<Media> media;
  std::vector<Variant> variants;
  std::vector<IFrameVariant> iframe_variants;
};

std::string Render(const MultivariantPlaylist& p);

}  // namespace khls::hls
