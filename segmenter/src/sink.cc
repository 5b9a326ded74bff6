#include "sink.h"

#include <algorithm>

#include "khls/log.h"

namespace khls::segmenter::internal {
namespace {

class TsSink final : public Sink {
 public:
  explicit TsSink(std::unique_ptr<TsWriter> writer) : writer_(std::move(writer)) {}

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
};

class TsEstimateSink final : public Sink {
 public:
  explicit TsEstimateSink(const AVCodecParameters& par) : estimator_({&par}) {}

  Status Write(AVPacket* pkt) override {
    pkt->stream_index = 0;
    estimator_.Add(*pkt);
    av_packet_unref(pkt);
    return Status::Ok();
  }

  Result<SinkOutput> End(int64_t, int64_t, bool) override { return SinkOutput{estimator_.TakeSegment(), {}}; }

 private:
  TsSizeEstimator estimator_;
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
  return std::unique_ptr<Sink>(std::make_unique<TsSink>(std::move(writer)));
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
