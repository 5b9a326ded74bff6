#include "plan.h"

#include <algorithm>

#include "cut_rule.h"
#include "input.h"
#include "ts_writer.h"

namespace khls::segmenter::internal {
namespace {

constexpr int64_t kTsPayload = 184;
constexpr int64_t kPesHeaderPtsDts = 19;  // 9-byte header + PTS + DTS
constexpr int64_t kPesHeaderPts = 14;
constexpr int64_t kAudioPesMax = 2930;     // the muxer's default pes_payload_size
constexpr int64_t kMaxAudioDelay = 31500;  // max_delay / 2 (0.35 s), 90 kHz
constexpr int64_t kPsiPeriod = 9000;       // the muxer's default pat_period, 0.1 s

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
  if (audio_pending_ > 0) WritePes(audio_pending_ + kPesHeaderPts, audio_pending_dts_);
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

Result<Plan> PlanSegments(const std::string& url, const Params& params, const StreamSelection& selection,
                          const std::vector<const AVCodecParameters*>& streams, int64_t target) {
  KHLS_ASSIGN_OR_RETURN(InputContextPtr ic, OpenInput(url, params));
  // Same input, same probing: the streams must be the ones the real pass uses.
  for (int index : {selection.video, selection.audio}) {
    if (index < 0) continue;
    if (index >= static_cast<int>(ic->nb_streams) ||
        ic->streams[index]->codecpar->codec_id !=
            streams[index == selection.video ? 0 : selection.audio_output()]->codec_id) {
      return Error(ErrorCode::kInvalidInput, "pre-scan of '{}': the input changed while it was opened", url);
    }
  }
  for (unsigned i = 0; i < ic->nb_streams; ++i) {
    const int index = static_cast<int>(i);
    if (index != selection.video && index != selection.audio) ic->streams[i]->discard = AVDISCARD_ALL;
  }

  PacketReader reader(ic.get(), selection, url);
  KHLS_RETURN_IF_ERROR(reader.Start());
  CutRule rule(selection.video >= 0, target, reader.title_start());
  TsSizeEstimator estimator(streams);
  PacketPtr pkt(av_packet_alloc());
  if (!pkt) return Error(ErrorCode::kInternal, "pre-scan of '{}': out of memory", url);

  Plan plan;
  int64_t total_bytes = 0;
  auto close_segment = [&](int64_t duration) {
    duration = std::max<int64_t>(duration, 1);
    const int64_t bytes = estimator.TakeSegment();
    total_bytes += bytes;
    plan.durations.push_back(duration);
    plan.max_duration = std::max(plan.max_duration, duration);
    plan.peak_bps = std::max(plan.peak_bps, av_rescale(bytes * 8, kClock, duration));
  };
  for (;;) {
    KHLS_ASSIGN_OR_RETURN(bool got, reader.Next(pkt.get()));
    if (!got) break;
    if (rule.IsCut(*pkt)) {
      close_segment(pkt->pts - rule.start());
      rule.Cut(pkt->pts);
    }
    rule.Add();
    estimator.Add(*pkt);
  }
  close_segment(reader.title_end() - rule.start());
  int64_t total_duration = 0;
  for (int64_t d : plan.durations) total_duration += d;
  plan.average_bps = av_rescale(total_bytes * 8, kClock, total_duration);
  return plan;
}

}  // namespace khls::segmenter::internal
