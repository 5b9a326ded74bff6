#include "plan.h"

#include <algorithm>

#include "ts_writer.h"

namespace khls::segmenter::internal {
namespace {

constexpr int64_t kTsPayload = 184;
constexpr int64_t kPesHeaderPtsDts = 19;  // 9-byte header + PTS + DTS
constexpr int64_t kPesHeaderPts = 14;
constexpr int64_t kAudioPesMax = 2930;     // the muxer's default pes_payload_size
constexpr int64_t kMaxAudioDelay = 31500;  // max_delay / 2 (0.35 s), 90 kHz
constexpr int64_t kPsiPeriod = 9000;       // the muxer's default pat_period, 0.1 s
constexpr int64_t kAudioPcrPeriod = 7200;  // pcr_period 80 ms of an audio-only muxer (ts_writer.cc)

int64_t TsBytes(int64_t pes_bytes) { return (pes_bytes + kTsPayload - 1) / kTsPayload * kTsPacketSize; }

}  // namespace

TsSizeEstimator::TsSizeEstimator(const std::vector<const AVCodecParameters*>& streams) {
  for (const AVCodecParameters* par : streams) {
    StreamInfo s;
    s.video = par->codec_type == AVMEDIA_TYPE_VIDEO;
    const bool mp4_style = par->extradata_size > 0 && par->extradata[0] == 1;  // avcC / hvcC
    if (par->codec_id == AV_CODEC_ID_H264) s.extra_per_frame = 6;               // access unit delimiter
    if (s.video && mp4_style) s.extra_per_keyframe = par->extradata_size;       // SPS/PPS in front of IDR
    if (par->codec_id == AV_CODEC_ID_AAC && par->extradata_size > 0) s.extra_per_frame = 7;  // ADTS header
    has_video_ |= s.video;
    streams_.push_back(s);
  }
}

void TsSizeEstimator::WritePes(int64_t payload, int64_t dts) {
  if (last_psi_dts_ == AV_NOPTS_VALUE || dts - last_psi_dts_ >= kPsiPeriod) {
    bytes_ += 2 * static_cast<int64_t>(kTsPacketSize);
    last_psi_dts_ = dts;
  }
  bytes_ += TsBytes(payload);
}

void TsSizeEstimator::FlushAudio() {
  if (audio_pending_ > 0) {
    int64_t size = audio_pending_ + kPesHeaderPts;
    // Without video the PCR rides on the audio PID: an adaptation field carrying it
    // (8 bytes) in front of a PES at most every pcr_period (80 ms, ts_writer.cc).
    if (!has_video_ && (last_pcr_dts_ == AV_NOPTS_VALUE || audio_pending_dts_ - last_pcr_dts_ >= kAudioPcrPeriod)) {
      size += 8;
      last_pcr_dts_ = audio_pending_dts_;
    }
    WritePes(size, audio_pending_dts_);
  }
  audio_pending_ = 0;
}

void TsSizeEstimator::Add(const AVPacket& pkt) {
  const StreamInfo& s = streams_[pkt.stream_index];
  int64_t size = pkt.size + s.extra_per_frame;
  if (s.video) {
    if ((pkt.flags & AV_PKT_FLAG_KEY) != 0) size += s.extra_per_keyframe;
    WritePes(size + kPesHeaderPtsDts + 8, pkt.dts);  // + adaptation field carrying the PCR
    return;
  }
  if (audio_pending_ > 0 && (audio_pending_ + size > kAudioPesMax || pkt.dts - audio_pending_dts_ >= kMaxAudioDelay)) {
    FlushAudio();
  }
  if (size > kAudioPesMax) {
    WritePes(size + kPesHeaderPts, pkt.dts);
    return;
  }
  if (audio_pending_ == 0) audio_pending_dts_ = pkt.dts;
  audio_pending_ += size;
}

int64_t TsSizeEstimator::TakeSegment() {
  FlushAudio();
  const int64_t total = bytes_;
  bytes_ = 0;
  last_psi_dts_ = AV_NOPTS_VALUE;
  return total;
}

}  // namespace khls::segmenter::internal
