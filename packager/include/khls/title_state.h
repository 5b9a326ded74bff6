// What the packager knows about one title; persisted as DIR/<title>/.state.json
// (written atomically after the segments it lists and before the playlists),
// so a restarted packager continues exactly where the files on disk are.
//
// The output tree of version N of a title with renditions r0, r1, ...:
//   DIR/<title>/master.m3u8                   multivariant playlist (the URL for players)
//   DIR/<title>/v<N>/<r>/index.m3u8           media playlist of rendition r
//   DIR/<title>/v<N>/<r>/iframes.m3u8         I-frames-only playlist of a video rendition
//   DIR/<title>/v<N>/<r>/seg-000000.ts|.vtt   its segments (MPEG-TS, or WebVTT for subtitles)
//   DIR/<title>/v<N>/<r>/seg-000000.m4s       ... or, packaged as fmp4, CMAF fragments
//   DIR/<title>/v<N>/<r>/init.mp4             ... and their init segment (init-000042.mp4 when
//                                             the codec configuration changes at segment 42)
//   DIR/<title>/v<N>/<r>/seg-000000.p0.ts|.m4s  LL-HLS: part 0 of segment 0 (low-latency titles)
//   DIR/<title>/.state.json                   this state (never served)
// A title from format-1 records has one muxed rendition with id "", whose
// playlist and segments sit directly in v<N>/ (as kafka-hls 0.1 wrote them).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "khls/keys.h"
#include "khls/proto.h"
#include "khls/status.h"

namespace khls::packager {

/// How video and audio segments are written (subtitles are WebVTT in both).
enum class Container {
  kTs,    ///< MPEG-TS, as the records carry them
  kFmp4,  ///< CMAF: fragmented MP4 remuxed from the TS, with an init segment per rendition
};
std::string_view ToString(Container c);
/// "ts" / "fmp4"; kInvalidArgument otherwise.
Result<Container> ParseContainer(std::string_view name);

/// A picture of a video segment that a player can decode on its own (an H.264
/// IDR, an HEVC IRAP; in fMP4, the fragment's first sample), as the I-frame
/// playlist points at it.
struct IFrame {
  /// Its bytes in the segment file written: TS, from the first TS packet of its
  /// PES to the last one carrying it; fMP4, from the moof to the end of the sample.
  uint64_t offset = 0;
  uint64_t size = 0;
  /// Presentation time after the segment's first picture in decode order, 90 kHz.
  uint64_t time = 0;
  bool operator==(const IFrame&) const = default;
};

/// LL-HLS: one part of a segment (a low-latency title's parts; khls/proto.h).
struct PartEntry {
  uint64_t duration = 0;  ///< 90 kHz
  uint64_t size = 0;      ///< of the part file written
  std::string digest;     ///< hex XXH3-128 of the part as the records carry it
  bool independent = false;  ///< starts with a picture that decodes alone
  bool last = false;         ///< the segment's last part
  bool operator==(const PartEntry&) const = default;
};

struct SegmentEntry {
  uint32_t sequence = 0;
  uint64_t duration = 0;  ///< 90 kHz
  uint64_t size = 0;      ///< of the file written (the .m4s when fmp4)
  std::string digest;  ///< hex XXH3-128 of the segment as the records carry it (MPEG-TS / WebVTT)
  /// fmp4: the init segment file that starts applying at this segment (the
  /// first segment's, and wherever it changes); "" = the previous one.
  std::string map;
  /// A player can decode it without the segments before it (its first picture is
  /// an IDR, or a CRA without leading pictures); false makes the playlists drop
  /// EXT-X-INDEPENDENT-SEGMENTS.
  bool independent = true;
  /// Video: its I-frames in presentation order; nullopt when not indexed (audio,
  /// subtitles, a state written before I-frame playlists existed).
  std::optional<std::vector<IFrame>> iframes;
  /// TS video: bytes at the start of the file (PAT, PMT) that every I-frame of
  /// the segment needs first: the EXT-X-MAP of the I-frame playlist.
  uint64_t iframe_map = 0;
  /// Encrypted (TitleState::encryption): the key's file name in the rendition's
  /// key directory ("key-000000.key") and the segment's IV ("0x" + 32 hex digits);
  /// both "" for a segment in the clear (subtitles, a title not encrypted).
  std::string key;
  std::string iv;
  /// Low-latency titles: the parts it was listed as while it was being cut (their
  /// files stay beside it until it leaves the window). Empty otherwise.
  std::vector<PartEntry> parts;

  bool operator==(const SegmentEntry&) const = default;
};

struct TitleState {
  std::string title;
  /// Output version: v<version>/ holds it. Equal to start.title_version, except in
  /// states written before the version counter was the ingest's alone.
  uint32_t version = 1;
  /// Ingest runs whose records feed this version (a re-run of the same source after a
  /// crash continues the version rather than starting a new one).
  std::vector<std::string> runs;
  proto::TitleStart start;  ///< the TitleStart of the version's first run
  /// The segments of each rendition, parallel to start.renditions, in sequence order.
  std::vector<std::vector<SegmentEntry>> segments;
  bool complete = false;
  /// The container of this output (fixed for the title's life in this tree).
  Container container = Container::kTs;
  /// fmp4: hex digest of each rendition's current init segment ("" none yet).
  std::vector<std::string> init_digests;
  /// How the version's video and audio segments are encrypted (khls/keys.h; fixed
  /// for the version's life; WebVTT subtitles stay in the clear), every how many
  /// segments a rendition gets a new key (0 = one key), and the key URIs' prefix
  /// ("" = relative to the playlist, served by the origin).
  EncryptionMethod encryption = EncryptionMethod::kNone;
  uint32_t key_rotation = 0;
  std::string key_uri_prefix;

  /// Live sliding window (a live title packaged with a window; see Engine's
  /// LiveOptions): the playlists list about the last `window` ticks of segment
  /// groups; 0 = every segment is kept (VOD and EVENT titles).
  uint64_t window = 0;
  /// Sequence of the first segment group still held in `segments` (the groups
  /// before it left the window; their state is gone): segments[r][i] is segment
  /// first + i. #EXT-X-MEDIA-SEQUENCE.
  uint32_t first = 0;
  /// 90 kHz ticks of the groups before `first` (the title's time at `first`).
  uint64_t first_time = 0;
  /// Wall clock (ms since the Unix epoch) of the title's time 0, for
  /// #EXT-X-PROGRAM-DATE-TIME; set when its first segment group is staged. 0 = none.
  int64_t pdt_anchor_ms = 0;
  /// Segment groups that left the window, their files kept until `remove_at_ms`
  /// (RFC 8216 6.2.2: a removed segment stays available for its own duration plus
  /// the longest playlist that held it), then deleted.
  struct Expired {
    uint32_t sequence = 0;
    int64_t remove_at_ms = 0;
    uint32_t parts = 0;  ///< part files beside its segment files (low-latency titles)
    bool operator==(const Expired&) const = default;
  };
  std::vector<Expired> expired;

  /// A live title resumed by later ingest runs (TitleStart::first_sequence): where
  /// each run after the first begins, from the segment group first listed on.
  /// Its timestamps start over there: EXT-X-DISCONTINUITY before that segment,
  /// and its own wall-clock anchor (pdt_anchor_ms's meaning, for the segments
  /// from `sequence` on; 0 until its first segment group arrives).
  struct RunStart {
    uint32_t sequence = 0;
    int64_t pdt_anchor_ms = 0;
    bool operator==(const RunStart&) const = default;
  };
  std::vector<RunStart> run_starts;
  /// Discontinuities whose segments left the window: #EXT-X-DISCONTINUITY-SEQUENCE.
  uint32_t discontinuity_sequence = 0;

  /// LL-HLS (a title whose records come in parts, packaged with low latency):
  /// parts are written and listed as they arrive (EXT-X-PART), before their
  /// segment is complete. `pending[r]`: the parts of rendition r's segment in
  /// progress (sequence NextSequence(r)); `pending_maps[r]` (fmp4): the init
  /// segment that segment starts, when its first part brought a new one.
  bool low_latency = false;
  std::vector<std::vector<PartEntry>> pending;
  std::vector<std::string> pending_maps;

  /// "v1", "v2", ...
  std::string VersionDir() const { return fmt::format("v{}", version); }
  /// "v1/audio-en" (relative to the title directory); "v1" for a format-1 rendition.
  std::string RenditionDir(size_t rendition) const;
  /// The URI a media playlist of rendition r names key `key_file` by (see khls/keys.h).
  std::string KeyUri(size_t rendition, const std::string& key_file) const;
  /// Segment groups present in every rendition from `first` on: what the playlists list.
  size_t ListedCount() const;
  /// The sequence the next segment of rendition r has (first + what is held).
  uint32_t NextSequence(size_t rendition) const {
    return first + static_cast<uint32_t>(segments.at(rendition).size());
  }
  bool HasRun(const std::string& run_hex) const;
  /// True when a later run begins at segment `sequence` (a discontinuity before it).
  bool StartsRun(uint32_t sequence) const;
  /// Wall-clock anchor (ms) of the run segment `sequence` belongs to (pdt_anchor_ms
  /// for the first run); 0 = none yet.
  int64_t PdtAnchor(uint32_t sequence) const;

  bool operator==(const TitleState&) const = default;
};

/// Names in the output tree, shared by the engine that writes it and the origin
/// that serves it: DIR/<title>/{master.m3u8,.state.json}, .../index.m3u8.
inline constexpr char kStateFileName[] = ".state.json";
inline constexpr char kMasterPlaylistName[] = "master.m3u8";
inline constexpr char kMediaPlaylistName[] = "index.m3u8";
/// The I-frames-only playlist of a video rendition, next to its index.m3u8.
inline constexpr char kIFramePlaylistName[] = "iframes.m3u8";

/// How the files of the tree are typed and cached when served, by the origin
/// or by a CDN in front of object storage (OutputStore's object headers).
inline constexpr char kPlaylistMime[] = "application/vnd.apple.mpegurl";
inline constexpr char kSegmentMime[] = "video/mp2t";
inline constexpr char kSubtitleMime[] = "text/vtt; charset=utf-8";
inline constexpr char kFragmentMime[] = "video/mp4";
/// Revalidated on every request: the master and growing playlists.
inline constexpr char kCacheRevalidate[] = "no-cache";
/// Never rewritten: segments and init segments (a new source is a new v<N>/,
/// a new codec configuration a new init name).
inline constexpr char kCacheImmutable[] = "public, max-age=31536000, immutable";
/// A media playlist that has ended (RFC 8216 4.3.3.4).
inline constexpr char kCacheEndedPlaylist[] = "public, max-age=3600";
/// Content-Type of a playlist or media file of the tree by its extension
/// (.m3u8, .ts, .m4s, .mp4, .vtt); "" for any other name.
std::string_view TreeFileMime(std::string_view extension);

/// Name of segment `sequence` of a rendition of `kind` ("seg-000042.ts", "seg-000042.vtt", "seg-000042.m4s").
std::string SegmentFileName(uint32_t sequence, proto::RenditionKind kind = proto::RenditionKind::kVideo,
                            Container container = Container::kTs);
/// Name of part `part` of segment `sequence`: "seg-000042.p3.ts" / "seg-000042.p3.m4s".
std::string PartFileName(uint32_t sequence, uint32_t part, proto::RenditionKind kind = proto::RenditionKind::kVideo,
                         Container container = Container::kTs);
/// Name of the init segment that starts at segment `sequence`: "init.mp4" for the first, "init-000042.mp4" after.
std::string InitFileName(uint32_t sequence);

/// Serializes as state format 2.
std::string SerializeState(const TitleState& s);
/// Parses state format 2, and format 1 (kafka-hls 0.1: one muxed rendition), and
/// validates; a damaged state file is kMalformedRecord with the reason.
Result<TitleState> ParseState(std::string_view json);

}  // namespace khls::packager
