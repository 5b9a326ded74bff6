// What the pre-scan adds up instead of muxing: the MPEG-TS size of a segment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/segmenter.h"

namespace khls::segmenter::internal {

/// Estimates the MPEG-TS size of packets as libavformat's muxer writes them
/// (PES headers, AUD and parameter sets, ADTS headers, 184-byte payloads in
/// 188-byte packets, audio frames grouped into PES, PAT/PMT in front of the
/// first PES of a segment and of any PES 0.1 s after the previous PAT/PMT).
class TsSizeEstimator {
 public:
  /// `streams`: codec parameters in output order (as PacketReader numbers them).
  explicit TsSizeEstimator(const std::vector<const AVCodecParameters*>& streams);

  void Add(const AVPacket& pkt);
  /// Bytes of the segment so far; starts the next one.
  int64_t TakeSegment();

 private:
  void FlushAudio();
  /// A PES with `payload` bytes and `dts` goes out.
  void WritePes(int64_t payload, int64_t dts);

  struct StreamInfo {
    bool video = false;
    int extra_per_frame = 0;     ///< bytes the muxer adds to every frame (AUD, ADTS)
    int extra_per_keyframe = 0;  ///< parameter sets put in front of keyframes
  };
  std::vector<StreamInfo> streams_;
  bool has_video_ = false;
  int64_t last_pcr_dts_ = AV_NOPTS_VALUE;  ///< audio-only: dts of the last PES that carried the PCR
  int64_t bytes_ = 0;
  int64_t audio_pending_ = 0;
  int64_t audio_pending_dts_ = 0;
  int64_t last_psi_dts_ = AV_NOPTS_VALUE;  ///< NOPTS: PAT/PMT due (segment start)
};

}  // namespace khls::segmenter::internal
