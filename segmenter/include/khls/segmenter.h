// Segmenter: libavformat demux -> keyframe cuts -> renditions of MPEG-TS and
// WebVTT segments in memory.
//
// A title is a set of renditions cut at the same points: the video of every
// input (a bitrate ladder: each input after the first is another video variant
// of the same title, keyframes aligned), every audio track of the first input,
// and every text subtitle track of the first input plus sidecar subtitle files.
// Each rendition is its own stream of segments: one MPEG-TS muxer per
// video/audio rendition lives for the whole title (continuity counters and
// timestamps continue across segments; at each cut the muxer is flushed and the
// bytes written since the previous cut become one segment), and subtitles
// become one WebVTT segment per segment group. Every TS segment starts with PAT
// and PMT (the DVB SDT is left out: HLS does not use it), a video segment with
// its keyframe. Nothing is re-encoded. Identical input and parameters give
// byte-identical segments.
//
// Cut rule: the first input's video (else its first audio track) is the
// reference: a new segment group starts at a reference keyframe whose pts is at
// least `target_duration` after the current group's start. Video variants cut at
// their keyframe with the same pts (within a quarter of a frame; a ladder whose
// keyframes disagree is refused). Audio and subtitles are split by time: an
// audio frame goes to the segment whose span holds its pts, so consecutive audio
// segments neither overlap nor leave a gap; a subtitle cue goes into every
// segment it overlaps.
//
// Low-latency HLS parts (Params::part_duration): each segment is also cut into
// parts of at most the part duration, and Next() hands out every part as soon
// as it is cut, so a packager can publish it before its segment is complete.
// Segments are cut exactly as without parts (part cuts never move a segment
// cut). A part can start only on a reference packet whose pts is above every
// pts before it (never inside a run of B-frames shown before a picture already
// read), and it runs as long as fits in the part target: it ends at the last
// such packet that keeps it within the target, which is known once the next
// one has been read. A part is a stretch of its segment in decode order: the
// parts of a segment, back to back, are that segment. Every part of an MPEG-TS
// rendition starts with PAT and PMT, so it demuxes on its own; only a part that
// starts on a keyframe (`independent`) decodes on its own. Audio is split at
// the same points by pts, as at segment cuts. Parts take a single input (no
// ladder) and carry no subtitles.
//
// Live inputs (not seekable files: udp://, srt://, rtmp://, pipe:) are read once,
// without a pre-scan, so the target duration players are promised is fixed
// before their media is read: ceil(target_duration). A reference segment that
// would round above it (keyframes further apart than the target, or the first
// keyframe past the target half a second or more after it) is refused
// (kInvalidInput, naming the keyframe interval seen and a target that works):
// cut off a keyframe, a segment could not be decoded on its own. A live input
// ends at its end of stream, when it sends nothing for `stall_timeout`, or when
// its connection ends after data flowed: the last segment is cut there as at
// the end of a file.
//
// Output timestamps are rebased so the earliest timestamp of the first input
// maps to kOutputStartPts (1.4 s, as ffmpeg's CLI does): this avoids negative dts
// from B-frames, gaps at zero that hls.js reports as holes, and the 33-bit wrap
// of a source whose timestamps are near 2^33. Other inputs are rebased so their
// first picture lands on the first input's.
#pragma once

#include <atomic>
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
  /// reference keyframe at or after this duration.
  double target_duration = defaults::kSegmentDuration;
  /// libavformat options for opening the inputs (e.g. "rw_timeout").
  std::vector<std::pair<std::string, std::string>> input_options;
  /// Seconds a read of a live input (one that is not a seekable file: udp://,
  /// srt://, rtmp://, pipe:) may wait for data, in (0, 3600]; <= 0 = forever.
  /// Past it the read is interrupted: before the input's streams are known that
  /// is an error (nothing arrived), after its first packet it is the end of the
  /// input (Summary::input_end = kStalled). Also bounds the opening of any input.
  /// A FIFO given by its path blocks in read(2), out of reach of the timeout (it
  /// still ends when its writer closes); pipe:N is made non-blocking for it.
  double stall_timeout = 10;
  /// When set and true, every read is interrupted (promptly, also a blocked one)
  /// and Open() / Next() return kCancelled. Must outlive the Segmenter.
  const std::atomic<bool>* stop = nullptr;
  /// Force a container format instead of probing ("mpegts", "flv", ...); empty = probe.
  std::string input_format;
  /// Audio languages to carry from the first input (BCP 47 or ISO 639 codes, e.g.
  /// "en", "fre"); empty = every audio track. Each must match a track.
  std::vector<std::string> audio_languages;
  /// A subtitle file beside the movie (.srt, .vtt, .ass), its cue times relative
  /// to the movie's first picture.
  struct Sidecar {
    std::string path;
    std::string language;  ///< BCP 47 or ISO 639; "" = from the file name ("movie.fr.srt"), else unknown
  };
  std::vector<Sidecar> subtitles;
  /// LL-HLS: also cut every segment into parts of at most this many seconds, each
  /// handed out by Next() as soon as it is cut; 0 = whole segments (as today).
  /// In [0.1, target_duration]; needs a single input (no ladder); subtitle tracks
  /// are then not carried (reported as skipped, with the reason).
  double part_duration = 0;
};

enum class TrackKind { kVideo, kAudio, kSubtitles };

/// One rendition of the title, as players will see it.
struct RenditionInfo {
  /// Directory name in the output: "video-360p", "audio-en", "subs-fr" (a-z 0-9 -, unique).
  std::string id;
  TrackKind kind = TrackKind::kVideo;
  std::string language;  ///< BCP 47 from the input's tags; "" unknown
  std::string name;      ///< human name: the track's title tag, else the language's name
  bool is_default = false;
  bool autoselect = true;
  bool forced = false;
  std::string characteristics;  ///< HLS CHARACTERISTICS (described video, SDH), "" none
  /// RFC 6381 CODECS entry: avc1.PPCCLL (H.264), hvc1.<profile>.<compat>.<tier><level>.<constraints>
  /// (HEVC, e.g. "hvc1.1.6.L93.B0"), mp4a.40.<AOT> (AAC), mp4a.40.34 (MP3), ac-3, ec-3; "" for
  /// subtitles or a stream whose profile cannot be known.
  std::string codecs;
  std::string codec_name;  ///< for logs: "h264 High", "aac LC", "subrip"
  int width = 0, height = 0;
  int frame_rate_num = 0, frame_rate_den = 1;  ///< 30000/1001 for 29.97 fps; 0 when unknown
  int channels = 0;
  int input = 0;      ///< which input it comes from; -1 for a sidecar file
  int stream = -1;    ///< its stream index in that input; -1 for a sidecar
  /// Estimated peak and average bitrate of its segments (bits/s), from the
  /// pre-scan; 0 when unknown (live).
  int64_t estimated_peak_bps = 0;
  int64_t estimated_avg_bps = 0;
};

/// What happens to one stream of an input (or a sidecar file): ingest prints these.
struct StreamReport {
  int input = 0;        ///< -1 for a sidecar
  int stream = -1;      ///< -1 for a sidecar
  std::string source;   ///< the input's URL or the sidecar's path
  std::string description;  ///< "video h264 High 1920x1080 25 fps", "audio aac LC 2 ch 'fre' \"Français\""
  std::string rendition;    ///< the rendition id it becomes, or "" when skipped
  std::string reason;       ///< why it is skipped ("" when carried)
};

/// What the title looks like; known after Open(), before any segment is produced.
struct TitleInfo {
  /// Video renditions (input order), then audio, then subtitles. At least one video or audio.
  std::vector<RenditionInfo> renditions;
  std::vector<StreamReport> streams;
  /// Duration of the first input in 90 kHz ticks as libavformat reports it; 0 when unknown (live).
  int64_t input_duration = 0;
  /// Bytes of all inputs; 0 when unknown (live, non-seekable).
  int64_t input_size = 0;
  /// True when every input can be pre-scanned (seekable files with a known size).
  bool seekable = false;
  /// Upper bound of segment durations over all renditions, in 90 kHz ticks, from
  /// a pre-scan (seekable inputs: every input read once more, packets only, no
  /// muxing, through the same cut logic, so this equals Summary::max_duration), or
  /// the target rounded up to whole seconds for live inputs (a segment that would
  /// round above it is refused). EXT-X-TARGETDURATION is round(planned_max_duration / kClock).
  int64_t planned_max_duration = 0;
  /// First presented pts minus first dts of the output (the B-frame reorder
  /// delay), 90 kHz; 0 without B-frames. Players that start their timeline at
  /// the first dts (hls.js) see no picture for this long; the media playlists'
  /// EXT-X-START skips it.
  int64_t decode_lead = 0;
  /// libavformat's name of the first input's container ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...).
  std::string container;
  int64_t part_target = 0;  ///< 90 kHz: Params::part_duration rounded to ticks; 0 = no parts

  bool has_video() const;
};

/// One rendition's share of a segment group (not an LL-HLS part: see Segment::part).
struct Part {
  int64_t start_pts = 0;  ///< rebased pts of its first frame (subtitles: the group's start), 90 kHz
  int64_t duration = 0;   ///< up to the next part's start (the last: to the end of its media), > 0
  std::vector<uint8_t> data;  ///< MPEG-TS (a multiple of 188 bytes) or WebVTT text
};

/// One segment group: segment `sequence` of every rendition, or with
/// Params::part_duration one part of it (start_pts, duration and parts then
/// describe the part).
struct Segment {
  uint32_t sequence = 0;  ///< 0, 1, 2, ... in cut order (with parts: the same for every part of a segment)
  int64_t start_pts = 0;  ///< of the reference rendition (the first), 90 kHz
  int64_t duration = 0;   ///< of the reference rendition
  std::vector<Part> parts;  ///< one per rendition, in TitleInfo::renditions order
  /// With Params::part_duration: this group is part `part` (0, 1, ...) of segment
  /// `sequence`; `independent`: it starts on a reference keyframe (part 0 always
  /// does); `last_part`: it ends segment `sequence` (the next group is part 0 of
  /// sequence + 1). Without parts: part 0, independent, last_part.
  uint32_t part = 0;
  bool independent = true;
  bool last_part = true;
};

/// What one rendition amounted to, counted in whole segments (with
/// Params::part_duration a segment's size and duration are the sums of its parts').
struct RenditionSummary {
  int64_t bytes = 0;
  int64_t duration = 0;  ///< sum of its segments' durations, 90 kHz
  int64_t peak_bps = 0;  ///< max over segments of size*8/duration
  int64_t average_bps = 0;
  int64_t max_duration = 0;  ///< longest segment, 90 kHz
};

/// Why the first input ended (Summary::input_end).
enum class InputEnd {
  kEndOfInput,       ///< its end: a file's end, a pipe or FIFO closed by its writer, a stream's end
  kStalled,          ///< a live input sent nothing for Params::stall_timeout
  kConnectionEnded,  ///< a live input's protocol reported an I/O error or a reset after its first packet
};

/// Totals for the title, known after the last segment group.
struct Summary {
  uint32_t segment_count = 0;  ///< segments (with parts: not the parts)
  int64_t total_duration = 0;  ///< of the reference rendition, 90 kHz
  int64_t total_bytes = 0;     ///< all renditions
  int64_t max_duration = 0;    ///< longest segment of any rendition, 90 kHz
  std::vector<RenditionSummary> renditions;
  InputEnd input_end = InputEnd::kEndOfInput;
  std::string input_end_detail;  ///< kConnectionEnded: the protocol's error ("Input/output error")
};

/// Progress callback data.
struct Progress {
  int64_t bytes_read = 0;   ///< input bytes consumed so far
  int64_t input_size = 0;   ///< 0 when unknown
  int64_t media_time = 0;   ///< rebased pts reached, 90 kHz, relative to the start
};

class Segmenter {
 public:
  /// Opens the inputs (paths or anything libavformat opens; the first is the
  /// reference, the others video variants), probes them, decides which streams
  /// become renditions (TitleInfo::streams says why each one is or is not
  /// carried), checks that HLS over MPEG-TS can carry their codecs (H.264, HEVC;
  /// AAC, MP3, AC-3, E-AC-3; text subtitles as WebVTT), reads the sidecar
  /// subtitle files, and for seekable inputs pre-scans everything to fill
  /// TitleInfo::planned_max_duration and the bitrate estimates, and to check that
  /// the variants' keyframes are aligned.
  /// Fails with kInvalidInput and a message naming the file and the cause
  /// ("unsupported video codec vp9 in 'x.webm': HLS over MPEG-TS carries H.264 or HEVC",
  /// "'b.mp4' has no keyframe at 6.000 s, where 'a.mp4' starts segment 1 ..."),
  /// kInvalidArgument for a bad target, an unknown input_format, an input option
  /// that neither the demuxer nor the protocol recognizes, an audio language
  /// the first input does not have, or a part duration that is not in
  /// [0.1 s, target] or comes with more than one input or with subtitle files.
  /// An input that sends nothing for `stall_timeout` while it is opened is
  /// kInvalidInput ("nothing arrived");
  /// kCancelled once `stop` is set.
  static Result<std::unique_ptr<Segmenter>> Open(const std::vector<std::string>& urls, const Params& params);
  static Result<std::unique_ptr<Segmenter>> Open(const std::string& url, const Params& params) {
    return Open(std::vector<std::string>{url}, params);
  }

  virtual ~Segmenter() = default;

  virtual const TitleInfo& info() const = 0;

  /// Produces the next segment group (with parts: the next part of one, as soon
  /// as it is cut); std::nullopt at the end of the inputs
  /// (for a live input also a stall or a connection that ended: see
  /// Summary::input_end). A read or mux error returns a Status (kInvalidInput
  /// for damaged input or a live segment longer than the declared target,
  /// kCancelled once `stop` is set); after an error every call returns the same Status.
  virtual Result<std::optional<Segment>> Next() = 0;

  /// Gives back a segment group the caller is done with: the next segments are
  /// written into its buffers instead of freshly allocated memory (a long remux
  /// then does not churn megabytes through the heap per segment). Optional;
  /// call it on the thread that calls Next().
  virtual void Recycle(Segment segment) = 0;

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
