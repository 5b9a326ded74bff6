#include "sink.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "khls/log.h"

namespace khls::segmenter::internal {
namespace {

struct CodecParametersDeleter {
  void operator()(AVCodecParameters* p) const { avcodec_parameters_free(&p); }
};
using CodecParametersPtr = std::unique_ptr<AVCodecParameters, CodecParametersDeleter>;
struct FrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};

/// One encoded frame of silence in the format of `par` (AAC LC or AC-3, the codecs
/// whose every frame stands alone and which libavcodec can encode), and its
/// duration in 90 kHz; nothing when it cannot be made.
std::optional<std::pair<std::vector<uint8_t>, int64_t>> SilentFrame(const AVCodecParameters& par) {
  const bool aac_lc = par.codec_id == AV_CODEC_ID_AAC && (par.profile == FF_PROFILE_AAC_LOW || par.profile < 0);
  if (!aac_lc && par.codec_id != AV_CODEC_ID_AC3) return std::nullopt;
  const AVCodec* codec = avcodec_find_encoder(par.codec_id);
  if (codec == nullptr || codec->sample_fmts == nullptr || par.sample_rate <= 0) return std::nullopt;
  internal::CodecContextPtr enc(avcodec_alloc_context3(codec));
  if (!enc) return std::nullopt;
  enc->sample_rate = par.sample_rate;
  if (av_channel_layout_copy(&enc->ch_layout, &par.ch_layout) < 0 || enc->ch_layout.nb_channels <= 0) return std::nullopt;
  enc->sample_fmt = codec->sample_fmts[0];
  enc->bit_rate = par.codec_id == AV_CODEC_ID_AC3 ? 192000 : 64000;
  enc->time_base = AVRational{1, par.sample_rate};
  enc->flags |= AV_CODEC_FLAG_BITEXACT;
  if (avcodec_open2(enc.get(), codec, nullptr) < 0 || enc->frame_size <= 0) return std::nullopt;
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  PacketPtr pkt(av_packet_alloc());
  if (!frame || !pkt) return std::nullopt;
  frame->nb_samples = enc->frame_size;
  frame->format = enc->sample_fmt;
  frame->sample_rate = enc->sample_rate;
  if (av_channel_layout_copy(&frame->ch_layout, &enc->ch_layout) < 0 || av_frame_get_buffer(frame.get(), 0) < 0)
    return std::nullopt;
  av_samples_set_silence(frame->data, 0, frame->nb_samples, enc->ch_layout.nb_channels, enc->sample_fmt);
  // A frame from the middle of a run of silence: past the encoder's start-up, the same every time.
  std::vector<uint8_t> last;
  for (int i = 0; i < 8; ++i) {
    frame->pts = int64_t{i} * enc->frame_size;
    if (avcodec_send_frame(enc.get(), frame.get()) < 0) return std::nullopt;
    while (avcodec_receive_packet(enc.get(), pkt.get()) == 0) {
      last.assign(pkt->data, pkt->data + pkt->size);
      av_packet_unref(pkt.get());
    }
  }
  if (last.empty()) return std::nullopt;
  if (par.codec_id == AV_CODEC_ID_AAC && par.extradata_size == 0) {
    // The source's AAC is ADTS (an MPEG-TS input has no AudioSpecificConfig): so must this frame be.
    static constexpr int kRates[] = {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350};
    const auto* rate = std::find(std::begin(kRates), std::end(kRates), par.sample_rate);
    const int channels = par.ch_layout.nb_channels;
    if (rate == std::end(kRates) || channels < 1 || channels > 7) return std::nullopt;
    const int index = static_cast<int>(rate - std::begin(kRates));
    const size_t length = last.size() + 7;
    const uint8_t adts[7] = {0xff, 0xf1,  // sync word, MPEG-4, layer 0, no CRC
                             static_cast<uint8_t>((1 << 6) | (index << 2) | (channels >> 2)),  // AAC LC
                             static_cast<uint8_t>(((channels & 3) << 6) | (length >> 11)),
                             static_cast<uint8_t>((length >> 3) & 0xff),
                             static_cast<uint8_t>(((length & 7) << 5) | 0x1f), 0xfc};  // buffer fullness 0x7ff
    last.insert(last.begin(), adts, adts + 7);
  }
  return std::make_pair(std::move(last), av_rescale(enc->frame_size, kClock, par.sample_rate));
}

class TsSink final : public Sink {
 public:
  TsSink(std::unique_ptr<TsWriter> writer, CodecParametersPtr par)
      : writer_(std::move(writer)), par_(std::move(par)) {}

  Result<int64_t> FillSilence(int64_t from, int64_t to) override {
    if (par_->codec_type != AVMEDIA_TYPE_AUDIO) return from;
    if (!silence_tried_) {
      silence_tried_ = true;
      silence_ = SilentFrame(*par_);
    }
    if (!silence_) return from;
    const auto& [bytes, duration] = *silence_;
    PacketPtr pkt(av_packet_alloc());
    if (!pkt) return Error(ErrorCode::kInternal, "out of memory");
    int64_t pts = from;
    for (; pts + duration / 2 < to; pts += duration) {
      if (av_new_packet(pkt.get(), static_cast<int>(bytes.size())) < 0) return Error(ErrorCode::kInternal, "out of memory");
      std::copy(bytes.begin(), bytes.end(), pkt->data);
      pkt->pts = pkt->dts = pts;
      pkt->duration = duration;
      pkt->flags |= AV_PKT_FLAG_KEY;
      KHLS_RETURN_IF_ERROR(Write(pkt.get()));
    }
    return pts;
  }

  Status Write(AVPacket* pkt) override {
    pkt->stream_index = 0;
    // One stream: nothing to interleave, and the first packet of a segment comes right behind PAT and PMT.
    return writer_->Write(pkt, /*immediate=*/true);
  }

  Result<SinkOutput> End(int64_t, int64_t, bool last) override {
    KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> data, writer_->EndSegment(last));
    if (!last) KHLS_RETURN_IF_ERROR(writer_->BeginSegment());
    SinkOutput out;
    out.size = static_cast<int64_t>(data.size());
    out.data = std::move(data);
    return out;
  }

  void Recycle(std::vector<uint8_t> buffer) override { writer_->Recycle(std::move(buffer)); }

 private:
  std::unique_ptr<TsWriter> writer_;
  CodecParametersPtr par_;
  bool silence_tried_ = false;
  std::optional<std::pair<std::vector<uint8_t>, int64_t>> silence_;
};

class TsEstimateSink final : public Sink {
 public:
  explicit TsEstimateSink(const AVCodecParameters& par) : estimator_({&par}), par_(par) {}

  Result<int64_t> FillSilence(int64_t from, int64_t to) override {
    // Silence is as long as what TsSink makes; its frames are small (a few bytes of AAC).
    if (par_.codec_type != AVMEDIA_TYPE_AUDIO) return from;
    if (!silence_tried_) {
      silence_tried_ = true;
      silence_ = SilentFrame(par_);
    }
    if (!silence_) return from;
    int64_t pts = from;
    for (; pts + silence_->second / 2 < to; pts += silence_->second) {
      AVPacket pkt{};
      pkt.size = static_cast<int>(silence_->first.size());
      pkt.pts = pkt.dts = pts;
      estimator_.Add(pkt);
    }
    return pts;
  }

  Status Write(AVPacket* pkt) override {
    pkt->stream_index = 0;
    estimator_.Add(*pkt);
    av_packet_unref(pkt);
    return Status::Ok();
  }

  Result<SinkOutput> End(int64_t, int64_t, bool) override { return SinkOutput{estimator_.TakeSegment(), {}}; }

 private:
  TsSizeEstimator estimator_;
  const AVCodecParameters& par_;
  bool silence_tried_ = false;
  std::optional<std::pair<std::vector<uint8_t>, int64_t>> silence_;
};

class VttSink final : public Sink {
 public:
  VttSink(std::unique_ptr<SubtitleDecoder> decoder, std::vector<Cue> cues, std::string what)
      : decoder_(std::move(decoder)), cues_(std::move(cues)), what_(std::move(what)) {}

  Status Write(AVPacket* pkt) override {
    Status st = decoder_ ? decoder_->Decode(*pkt, cues_) : Status::Ok();
    av_packet_unref(pkt);
    return st;
  }

  Result<SinkOutput> End(int64_t start, int64_t end, bool last) override {
    if (last && decoder_) decoder_->Flush(cues_);
    std::stable_sort(cues_.begin(), cues_.end(), [](const Cue& a, const Cue& b) { return a.start < b.start; });
    // A cue that arrives after the segments it belongs to were written is shown where it still can be.
    if (!last) {
      for (const Cue& c : cues_)
        if (c.end <= start && !c.text.empty() && warned_late_++ == 0)
          log::Warn("{}: a subtitle cue at {:.3f} s came after its segment was written (badly interleaved input); "
                    "it is not shown",
                    what_, ToSeconds(c.start));
    }
    std::string text = RenderVttSegment(cues_, start, end);
    // Cues that end inside this segment are done; the rest run on into the next.
    std::erase_if(cues_, [&](const Cue& c) { return c.end <= end; });
    SinkOutput out;
    out.size = static_cast<int64_t>(text.size());
    out.data.assign(text.begin(), text.end());
    return out;
  }

 private:
  std::unique_ptr<SubtitleDecoder> decoder_;
  std::vector<Cue> cues_;
  std::string what_;
  int warned_late_ = 0;
};

}  // namespace

Result<std::unique_ptr<Sink>> MakeTsSink(const AVStream& in, const std::string& language_iso639,
                                         const std::string& url) {
  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<TsWriter> writer, TsWriter::Create({&in}, {language_iso639}, url));
  KHLS_RETURN_IF_ERROR(writer->BeginSegment());
  CodecParametersPtr par(avcodec_parameters_alloc());
  if (!par || avcodec_parameters_copy(par.get(), in.codecpar) < 0)
    return Error(ErrorCode::kInternal, "MPEG-TS output for '{}': out of memory", url);
  return std::unique_ptr<Sink>(std::make_unique<TsSink>(std::move(writer), std::move(par)));
}

std::unique_ptr<Sink> MakeTsEstimateSink(const AVCodecParameters& par) {
  return std::make_unique<TsEstimateSink>(par);
}

Result<std::unique_ptr<Sink>> MakeVttSink(const AVCodecParameters* par, std::vector<Cue> cues, std::string what) {
  std::unique_ptr<SubtitleDecoder> decoder;
  if (par != nullptr) {
    KHLS_ASSIGN_OR_RETURN(decoder, SubtitleDecoder::Create(*par, what));
  }
  return std::unique_ptr<Sink>(std::make_unique<VttSink>(std::move(decoder), std::move(cues), std::move(what)));
}

}  // namespace khls::segmenter::internal
