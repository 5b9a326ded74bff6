// Segmenter: libavformat demux -> keyframe cuts -> MPEG-TS segments in memory.
//
// One MPEG-TS muxer lives for the whole title, so continuity counters and
// timestamps continue across segments; at each cut the muxer is flushed and the
// bytes written since the previous cut become one segment. Every segment starts
// with PAT, PMT and, when the title has video, the PES of a video keyframe
// (audio read before the title's first keyframe is written after it). The DVB
// SDT (PID 0x11) is left out: HLS does not use it, and it would precede the PAT.
// Video before the first keyframe of the input is dropped. Nothing is
// re-encoded. Identical input and parameters give byte-identical segments.
//
// Cut rule: a new segment starts at a video keyframe whose pts is at least
// `target_duration` after the current segment's first pts. Audio-only titles cut
// at the first audio packet whose pts reaches the target.
//
// Output timestamps are rebased so the earliest dts of the title maps to
// kOutputStartPts (1.4 s, as ffmpeg's CLI does): this avoids negative dts from
// B-frames, gaps at zero that hls.js reports as holes, and the 33-bit wrap of a
// source whose timestamps are near 2^33.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "khls/defaults.h"
#include "khls/status.h"

namespace khls::segmenter {

/// 90 kHz clock used for all durations and timestamps reported by this module.
using khls::kClock;
/// Where the rebased output timeline starts (1.4 s).
inline constexpr int64_t kOutputStartPts = 126000;

struct Params {
  /// Target segment duration in seconds (> 0). Segments are cut on the first
  /// video keyframe at or after this duration.
  double target_duration = defaults::kSegmentDuration;
  /// libavformat options for opening the input (e.g. "rw_timeout").
  std::vector<std::pair<std::string, std::string>> input_options;
  /// Force a container format instead of probing ("mpegts", "flv", ...); empty = probe.
  std::string input_format;
};

/// What the title looks like; known after Open(), before any segment is produced.
struct TitleInfo {
  bool has_video = false;
  bool has_audio = false;
  /// RFC 6381 CODECS value for the muxed stream, video first, e.g. "avc1.640028,mp4a.40.2":
  /// avc1.PPCCLL (H.264), hvc1.<profile>.<compat>.<tier><level>.<constraints>
  /// (HEVC, e.g. "hvc1.1.6.L93.B0"), mp4a.40.<AOT> (AAC), mp4a.40.34 (MP3),
  /// ac-3, ec-3. Taken from the extradata (avcC/hvcC, Annex B parameter sets,
  /// AudioSpecificConfig), else from the profile/level libavcodec probed; a
  /// stream whose profile cannot be known has no entry.
  std::string codecs;
  /// Human-readable codec names, e.g. "h264 High", "aac LC" (for logs).
  std::string video_codec_name;
  std::string audio_codec_name;
  int width = 0;   ///< 0 when no video
  int height = 0;  ///< 0 when no video
  int frame_rate_num = 0;  ///< 30000 for 29.97 fps; 0 when unknown
  int frame_rate_den = 1;  ///< 1001 for 29.97 fps
  /// Duration of the input in 90 kHz ticks as libavformat reports it; 0 when unknown (live).
  int64_t input_duration = 0;
  /// Input size in bytes; 0 when unknown (live, non-seekable).
  int64_t input_size = 0;
  /// True when the input can be pre-scanned (a seekable file with a known size).
  bool seekable = false;
  /// Upper bound of segment durations, in 90 kHz ticks, from a pre-scan of the
  /// keyframes (seekable inputs), or the target for live inputs. The playlist's
  /// EXT-X-TARGETDURATION is round(planned_max_duration / kClock).
  /// For seekable inputs the pre-scan reads the whole input once more (packets
  /// only, no muxing) through the same cut rule, so this equals
  /// Summary::max_duration exactly. For live inputs it is the target rounded up
  /// to whole seconds; a longer GOP makes longer segments.
  int64_t planned_max_duration = 0;
  /// Estimated peak and average bitrate of the MPEG-TS output (bits/s), from the
  /// pre-scan (packet sizes plus a model of the muxer's overhead, typically
  /// within 1-2% of the measured values); 0 when unknown (live). The measured
  /// values are reported at the end.
  int64_t estimated_peak_bps = 0;
  int64_t estimated_avg_bps = 0;
  /// First presented pts minus first dts of the output (the B-frame reorder
  /// delay), 90 kHz; 0 without B-frames. Players that start their timeline at
  /// the first dts (hls.js) see no picture for this long; the media playlist's
  /// EXT-X-START skips it.
  int64_t decode_lead = 0;
  /// libavformat's name of the input container ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...).
  std::string container;
};

/// One finished MPEG-TS segment.
struct Segment {
  uint32_t sequence = 0;      ///< 0, 1, 2, ... in cut order
  int64_t start_pts = 0;      ///< rebased pts of the first frame, 90 kHz
  int64_t duration = 0;       ///< exact duration, 90 kHz (next segment's start - this start; last: end of media)
  /// True when the segment holds video, which then starts with a keyframe: every
  /// segment of a title with video, except a first segment made only of audio
  /// that precedes the first keyframe by more than the target.
  bool starts_with_keyframe = false;
  std::vector<uint8_t> data;  ///< the MPEG-TS bytes (multiple of 188)
};

/// Totals for the title, known after the last segment.
struct Summary {
  uint32_t segment_count = 0;
  int64_t total_duration = 0;  ///< sum of segment durations, 90 kHz
  int64_t total_bytes = 0;
  int64_t peak_bps = 0;   ///< max over segments of size*8/duration
  int64_t average_bps = 0;  ///< total_bytes*8/total_duration
  int64_t max_duration = 0;  ///< longest segment, 90 kHz
};

/// Progress callback data.
struct Progress {
  int64_t bytes_read = 0;   ///< input bytes consumed so far
  int64_t input_size = 0;   ///< 0 when unknown
  int64_t media_time = 0;   ///< rebased pts reached, 90 kHz, relative to the start
};

class Segmenter {
 public:
  /// Opens `url` (a path or anything libavformat opens), probes it, selects the
  /// best video stream (never cover art) and one audio stream (libavformat's
  /// best; if HLS cannot carry its codec, the first audio stream it can carry),
  /// checks that MPEG-TS/HLS can carry the selected codecs (H.264, HEVC, AAC,
  /// MP3, AC-3, E-AC-3), and for seekable inputs pre-scans keyframes to fill
  /// TitleInfo::planned_max_duration. Other audio, subtitle and data streams
  /// are ignored.
  /// Fails with kInvalidInput and a message naming the file and the cause
  /// ("unsupported video codec vp9 in 'x.webm': HLS over MPEG-TS carries H.264 or HEVC"),
  /// kInvalidArgument for a bad target, an unknown input_format or an input
  /// option that neither the demuxer nor the protocol recognizes.
  static Result<std::unique_ptr<Segmenter>> Open(const std::string& url, const Params& params);

  virtual ~Segmenter() = default;

  virtual const TitleInfo& info() const = 0;

  /// Produces the next segment; std::nullopt at end of input. A read or mux
  /// error returns a Status (kInvalidInput for damaged input); after an error
  /// every call returns the same Status.
  virtual Result<std::optional<Segment>> Next() = 0;

  /// Gives back a Segment::data buffer the caller is done with: the next
  /// segments are written into it instead of freshly allocated memory (a long
  /// remux then does not churn megabytes through the heap per segment). Optional;
  /// call it on the thread that calls Next().
  virtual void Recycle(std::vector<uint8_t> buffer) = 0;

  /// Totals; valid once Next() has returned std::nullopt.
  virtual const Summary& summary() const = 0;

  /// Input progress so far.
  virtual Progress progress() const = 0;
};

/// How much libavformat itself prints to stderr: errors only by default
/// (our own messages carry the context), everything with `verbose`.
void SetLibraryLogLevel(bool verbose);

/// Computes the RFC 6381 codec string for H.264 from avcC or Annex B extradata
/// ("avc1.PPCCLL", lowercase hex); exposed for tests. Returns "" when it cannot
/// be derived.
std::string H264CodecString(const uint8_t* extradata, size_t size);

}  // namespace khls::segmenter
