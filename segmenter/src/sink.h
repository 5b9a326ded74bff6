// Where one rendition's packets go, segment by segment: a real muxer (MPEG-TS
// bytes, WebVTT text) or, for the pre-scan, an estimate of the size the muxer
// would write. The cutter (cutter.h) drives every sink the same way, so the
// pre-scan and the real pass cut identically.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/status.h"
#include "plan.h"
#include "ts_writer.h"
#include "webvtt.h"

namespace khls::segmenter::internal {

/// A finished segment of one rendition.
struct SinkOutput {
  int64_t size = 0;
  std::vector<uint8_t> data;  ///< empty for estimating sinks
};

class Sink {
 public:
  virtual ~Sink() = default;
  /// Writes `pkt` (90 kHz, on the output timeline) into the current segment; `pkt` is blank afterwards.
  virtual Status Write(AVPacket* pkt) = 0;
  /// Ends the current segment, which spans [start, end) of the output timeline
  /// (what subtitles render), and starts the next one. `last`: no more segments.
  virtual Result<SinkOutput> End(int64_t start, int64_t end, bool last) = 0;
  /// A buffer End() returned, given back for reuse.
  virtual void Recycle(std::vector<uint8_t>) {}
  /// Audio only: writes silent frames from `from` up to `to` (where a track has
  /// no audio: it ended before the video, or left a segment empty) and returns
  /// where the silence ends; returns `from` when this sink cannot make silence.
  virtual Result<int64_t> FillSilence(int64_t from, int64_t /*to*/) { return from; }
};

/// MPEG-TS of one stream: one muxer for the whole title (TsWriter).
Result<std::unique_ptr<Sink>> MakeTsSink(const AVStream& in, const std::string& language_iso639,
                                         const std::string& url);
/// The size MakeTsSink's muxer would write (TsSizeEstimator).
std::unique_ptr<Sink> MakeTsEstimateSink(const AVCodecParameters& par);
/// WebVTT: cues decoded from an embedded text subtitle stream (`par`), or given
/// up front (a sidecar file, `cues` already on the output timeline, `par` null);
/// each segment renders the cues that overlap it.
Result<std::unique_ptr<Sink>> MakeVttSink(const AVCodecParameters* par, std::vector<Cue> cues, std::string what);

}  // namespace khls::segmenter::internal
