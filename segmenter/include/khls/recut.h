// Re-cutting a title's segments at a new target duration, without its source.
//
// A re-packaging job has only what the ingest published: segment g of every
// rendition (MPEG-TS for video and audio, WebVTT for subtitles), group after
// group. The Recutter reads them back and cuts the title again by the same rules
// as the ingest's cutter (segmenter.h), at new points:
//
// - Cuts are keyframes of the reference rendition (the first kTs rendition with
//   video, else the first kTs one, whose every frame is then a cut candidate).
//   Each new segment is as long as possible without exceeding the target: the
//   next cut is the last keyframe at most `target_duration` after the current
//   one. A GOP longer than the target is a segment of its own (a warning names
//   its time and length, once per title). The last segment runs to the end of
//   the media, like the ingest's (see OldPartTiming for where that end comes
//   from).
// - Other video renditions (a bitrate ladder) cut at their keyframe with the same
//   pts, within a quarter of a frame, else the title is refused (kInvalidInput
//   naming the rendition and the time). Audio frames go to the new segment whose
//   span holds their pts; a WebVTT segment holds every cue that overlaps its span.
// - Nothing is re-encoded and no timestamp moves: the re-cut title plays on the
//   same timeline. Each TS rendition gets one MPEG-TS muxer for the whole title
//   (TsWriter, as the ingest: continuity counters run on, PAT and PMT start every
//   segment, a video segment starts with its keyframe), with the stream's
//   parameters and ISO 639 language as the old segments' PMT has them. WebVTT
//   segments are rendered by the ingest's renderer (same header, same bytes).
//   Identical input gives byte-identical output, whatever the push order.
// - The ingest cuts at the first keyframe at least a target after the group's
//   start, the Recutter at the last one at most a target after it: re-cutting
//   with the ingest's target gives the ingest's segments back, byte for byte,
//   when its cuts are exactly a target apart (keyframes on a grid that divides
//   the target); otherwise each new segment is a GOP (or an audio frame) shorter.
// - MPEG-TS gives an audio frame that is not the first of its PES no pts: it is
//   counted on from the PES's first frame, as players do. Where the new PES
//   boundaries differ from the old ones, a frame whose pts the old PES header
//   carried may now be counted instead: it moves by the source's own timestamp
//   jitter (under 1 ms for MKV's millisecond timestamps; a tick at most for MP4).
//
// Design: every pushed TS segment is demuxed at once, to its end, by its own
// libavformat MPEG-TS demuxer reading the caller's bytes in place (a custom
// read/seek AVIOContext over the span). An old segment is self-contained (PAT
// and PMT first, every PES ends inside it), so no demuxer state has to outlive
// it, nothing ever waits for bytes that have not arrived, and the caller's
// buffer may be dropped as soon as Push() returns. Its packets (refcounted
// copies) wait in a queue per rendition until the cut that places them is
// known. Memory: about the old segments pushed but not yet placed (one group,
// two for a rendition that runs ahead), the reference's packets since the last
// cut (at most the target plus one GOP), and the finished new segments not yet
// popped; never the whole title.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "khls/defaults.h"
#include "khls/segmenter.h"
#include "khls/status.h"

namespace khls::segmenter {

/// What one rendition's segments are.
enum class RecutKind {
  kTs,      ///< MPEG-TS, one video or audio stream (as the ingest writes them)
  kWebVtt,  ///< WebVTT with an X-TIMESTAMP-MAP header
};

struct RecutParams {
  /// Target segment duration in seconds, in (0, 3600]. No new segment is longer
  /// than this, except a single GOP that is itself longer: that GOP alone is then
  /// a segment (a warning gives its time and length, once per title).
  double target_duration = defaults::kSegmentDuration;
  /// What is re-cut, for the log ("title 'movie' version 2"); "" = "re-cut".
  std::string what;
};

/// What the ingest recorded about an old part (the start pts and duration a
/// SegmentChunk carries). Optional: with it, the title's start (part 0 of the
/// reference) and each rendition's end (its last old part's start + duration)
/// are exactly the ingest's, so every rendition's durations add up to the old
/// sum exactly. Without it they are taken from the media: the earliest pts of
/// the reference and the audio renditions, and the end of each rendition's last
/// frame (pts + duration as libavformat reads it from MPEG-TS; subtitles: the end
/// of the reference and audio renditions), which can differ from the ingest's by
/// part of a frame (e.g. a short last audio frame, or silence the ingest padded).
struct OldPartTiming {
  int64_t start_pts = 0;  ///< 90 kHz
  int64_t duration = 0;   ///< 90 kHz, > 0
};

class Recutter {
 public:
  /// `kinds`: one per rendition, in the title's rendition order (at least one
  /// kTs). kInvalidArgument for a bad target or no kTs rendition.
  static Result<std::unique_ptr<Recutter>> Create(std::vector<RecutKind> kinds, const RecutParams& params);

  Recutter(const Recutter&) = delete;
  Recutter& operator=(const Recutter&) = delete;
  ~Recutter();

  /// Feeds the next old segment of rendition `rendition`. Old segments arrive
  /// group by group: every rendition's segment g, in any rendition order, then
  /// g + 1, ...; a rendition may run at most one group ahead of another
  /// (kInvalidArgument otherwise, or for an unknown rendition, or after Finish()).
  /// The bytes are read before Push returns and not kept. kInvalidInput, naming
  /// the rendition and the old segment, for bytes that are not what `kind` says
  /// (not MPEG-TS, no or several audio/video streams, a codec that changes, no
  /// timestamps; not WebVTT, a bad cue timing) and for video renditions whose
  /// keyframes are not aligned with the reference's. After an error every call
  /// returns the same Status.
  Status Push(size_t rendition, std::span<const uint8_t> segment, std::optional<OldPartTiming> timing = std::nullopt);

  /// No more input: every rendition must have had the same number of old
  /// segments (kInvalidInput otherwise). Cuts the rest of the title; every new
  /// segment group can then be popped.
  Status Finish();

  /// The next new segment group that is complete in every rendition, if any:
  /// sequence 0, 1, ...; start_pts and duration of the reference; parts in
  /// rendition order (Part::start_pts: the reference and subtitles start at the
  /// cut, the group's start; other renditions at their first frame. Part::duration:
  /// up to the next part's start, the last to the end of its media). Nothing after
  /// an error.
  std::optional<Segment> Pop();

 private:
  struct Impl;
  explicit Recutter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace khls::segmenter
