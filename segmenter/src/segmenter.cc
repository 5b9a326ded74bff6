#include "khls/segmenter.h"

#include <algorithm>
#include <cmath>
#include <utility>

extern "C" {
#include <libavutil/log.h>
}

#include "av_handles.h"
#include "codec_string.h"
#include "cut_rule.h"
#include "input.h"
#include "packet_reader.h"
#include "plan.h"
#include "ts_writer.h"

namespace khls::segmenter {
namespace {

using internal::CutRule;
using internal::InputContextPtr;
using internal::PacketPtr;
using internal::PacketReader;
using internal::StreamSelection;
using internal::TsWriter;

bool IsSupportedVideo(AVCodecID id) { return id == AV_CODEC_ID_H264 || id == AV_CODEC_ID_HEVC; }

bool IsSupportedAudio(AVCodecID id) {
  return id == AV_CODEC_ID_AAC || id == AV_CODEC_ID_MP3 || id == AV_CODEC_ID_AC3 || id == AV_CODEC_ID_EAC3;
}

/// The stream of `type` the title uses: libavformat's best one when HLS can
/// carry it, else the first one HLS can carry, else the best one (which the
/// caller then rejects, naming its codec). Cover art is never video. -1: none.
int PickStream(const AVFormatContext& ic, AVMediaType type, int related, bool (*supported)(AVCodecID)) {
  auto usable = [&](int i) {
    const AVStream& st = *ic.streams[i];
    if (st.codecpar->codec_type != type || (st.disposition & AV_DISPOSITION_ATTACHED_PIC) != 0) return false;
    return type != AVMEDIA_TYPE_AUDIO || st.codecpar->sample_rate > 0;
  };
  const int n = static_cast<int>(ic.nb_streams);
  const int best = av_find_best_stream(const_cast<AVFormatContext*>(&ic), type, -1, related, nullptr, 0);
  const bool best_usable = best >= 0 && usable(best);
  if (best_usable && supported(ic.streams[best]->codecpar->codec_id)) return best;
  for (int i = 0; i < n; ++i) {
    if (usable(i) && supported(ic.streams[i]->codecpar->codec_id)) return i;
  }
  if (best_usable) return best;
  for (int i = 0; i < n; ++i) {
    if (usable(i)) return i;
  }
  return -1;
}

Result<StreamSelection> SelectStreams(const AVFormatContext& ic, const std::string& url) {
  StreamSelection sel;
  sel.video = PickStream(ic, AVMEDIA_TYPE_VIDEO, -1, IsSupportedVideo);
  sel.audio = PickStream(ic, AVMEDIA_TYPE_AUDIO, sel.video, IsSupportedAudio);
  if (sel.video < 0 && sel.audio < 0) {
    return Error(ErrorCode::kInvalidInput, "no audio or video stream in '{}'", url);
  }
  if (sel.video >= 0) {
    const AVCodecID id = ic.streams[sel.video]->codecpar->codec_id;
    if (!IsSupportedVideo(id)) {
      return Error(ErrorCode::kInvalidInput,
                   "unsupported video codec {} in '{}': HLS over MPEG-TS carries H.264 or HEVC",
                   avcodec_get_name(id), url);
    }
  }
  if (sel.audio >= 0) {
    const AVCodecID id = ic.streams[sel.audio]->codecpar->codec_id;
    if (!IsSupportedAudio(id)) {
      return Error(ErrorCode::kInvalidInput,
                   "unsupported audio codec {} in '{}': HLS over MPEG-TS carries AAC, MP3, AC-3 or E-AC-3",
                   avcodec_get_name(id), url);
    }
  }
  return sel;
}

TitleInfo DescribeTitle(const AVFormatContext& ic, const StreamSelection& sel) {
  TitleInfo info;
  info.container = ic.iformat->name;
  std::vector<std::string> codecs;
  if (sel.video >= 0) {
    const AVStream& st = *ic.streams[sel.video];
    info.has_video = true;
    info.video_codec_name = internal::CodecDisplayName(*st.codecpar);
    codecs.push_back(internal::CodecString(*st.codecpar));
    info.width = st.codecpar->width;
    info.height = st.codecpar->height;
    const AVRational rate = internal::VideoFrameRate(st);
    info.frame_rate_num = rate.num;
    info.frame_rate_den = rate.num > 0 ? rate.den : 1;
  }
  if (sel.audio >= 0) {
    const AVStream& st = *ic.streams[sel.audio];
    info.has_audio = true;
    info.audio_codec_name = internal::CodecDisplayName(*st.codecpar);
    codecs.push_back(internal::CodecString(*st.codecpar));
  }
  for (const std::string& c : codecs) {
    if (c.empty()) continue;  // unknown profile: better no entry than a wrong one
    if (!info.codecs.empty()) info.codecs += ',';
    info.codecs += c;
  }
  if (ic.duration != AV_NOPTS_VALUE && ic.duration > 0) {
    info.input_duration = av_rescale(ic.duration, kClock, AV_TIME_BASE);
  }
  info.seekable = internal::IsSeekableFile(ic);
  if (ic.pb != nullptr) info.input_size = std::max<int64_t>(avio_size(ic.pb), 0);
  return info;
}

/// Audio packets held back at most before the first video keyframe (~20 s of AAC).
constexpr size_t kMaxHeld = 1000;

class SegmenterImpl final : public Segmenter {
 public:
  SegmenterImpl(std::string url, TitleInfo info, int64_t target, InputContextPtr ic,
                std::unique_ptr<PacketReader> reader, std::unique_ptr<TsWriter> writer, PacketPtr pkt)
      : url_(std::move(url)),
        info_(std::move(info)),
        ic_(std::move(ic)),
        reader_(std::move(reader)),
        writer_(std::move(writer)),
        pkt_(std::move(pkt)),
        rule_(info_.has_video, target, reader_->title_start()),
        media_end_(reader_->title_start()),
        awaiting_video_(info_.has_video) {}

  const TitleInfo& info() const override { return info_; }
  const Summary& summary() const override { return summary_; }

  void Recycle(std::vector<uint8_t> buffer) override { writer_->Recycle(std::move(buffer)); }

  Progress progress() const override {
    Progress p;
    p.bytes_read = ic_->pb != nullptr ? std::max<int64_t>(avio_tell(ic_->pb), 0) : 0;
    p.input_size = info_.input_size;
    p.media_time = std::max<int64_t>(media_end_ - reader_->title_start(), 0);
    return p;
  }

  Result<std::optional<Segment>> Next() override {
    if (!error_.ok()) return error_;
    if (done_) return std::optional<Segment>();
    Result<std::optional<Segment>> result = Step();
    if (!result.ok()) error_ = result.status();  // a failed title stays failed
    return result;
  }

 private:
  Result<std::optional<Segment>> Step() {
    for (;;) {
      KHLS_ASSIGN_OR_RETURN(bool got, reader_->Next(pkt_.get()));
      if (!got) {
        KHLS_RETURN_IF_ERROR(WriteHeld());
        KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> data, writer_->EndSegment(/*last=*/true));
        done_ = true;
        return Finish(std::move(data), rule_.start(), reader_->title_end() - rule_.start());
      }
      media_end_ = std::max(media_end_, pkt_->pts);
      if (rule_.IsCut(*pkt_)) {
        KHLS_RETURN_IF_ERROR(WriteHeld());
        KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> data, writer_->EndSegment(/*last=*/false));
        const int64_t start = rule_.start();
        const int64_t cut = pkt_->pts;
        rule_.Cut(cut);
        rule_.Add();
        std::optional<Segment> done = Finish(std::move(data), start, cut - start);
        // The keyframe goes first, right behind the PAT and PMT.
        KHLS_RETURN_IF_ERROR(writer_->BeginSegment());
        KHLS_RETURN_IF_ERROR(Write(/*immediate=*/true));
        return done;
      }
      rule_.Add();
      if (awaiting_video_) {
        // Segment 0 of a video title: audio read before the first keyframe
        // waits, so that the keyframe's PES is also the first of this segment.
        if (pkt_->stream_index != 0 && held_.size() < kMaxHeld) {
          PacketPtr held(av_packet_alloc());
          if (!held) return Error(ErrorCode::kInternal, "segmenting '{}': out of memory", url_);
          av_packet_move_ref(held.get(), pkt_.get());
          held_.push_back(std::move(held));
          continue;
        }
        const bool keyframe_first = pkt_->stream_index == 0;
        if (keyframe_first) KHLS_RETURN_IF_ERROR(Write(/*immediate=*/true));
        KHLS_RETURN_IF_ERROR(WriteHeld());
        if (keyframe_first) continue;
      }
      KHLS_RETURN_IF_ERROR(Write(/*immediate=*/false));
    }
  }

  /// Writes pkt_ to the current segment.
  Status Write(bool immediate) {
    if (info_.has_video && pkt_->stream_index == 0) segment_has_video_ = true;
    return writer_->Write(pkt_.get(), immediate);
  }

  /// Writes the audio held back in segment 0; video is no longer awaited.
  Status WriteHeld() {
    awaiting_video_ = false;
    for (PacketPtr& held : held_) KHLS_RETURN_IF_ERROR(writer_->Write(held.get(), /*immediate=*/false));
    held_.clear();
    return Status::Ok();
  }

  std::optional<Segment> Finish(std::vector<uint8_t> data, int64_t start, int64_t duration) {
    Segment seg;
    seg.sequence = sequence_++;
    seg.start_pts = start;
    seg.duration = std::max<int64_t>(duration, 1);
    // The reader drops video before the first keyframe and cuts are made at
    // keyframes, so any video in a segment starts with a keyframe.
    seg.starts_with_keyframe = segment_has_video_;
    segment_has_video_ = false;
    seg.data = std::move(data);

    const auto bytes = static_cast<int64_t>(seg.data.size());
    summary_.segment_count += 1;
    summary_.total_duration += seg.duration;
    summary_.total_bytes += bytes;
    summary_.max_duration = std::max(summary_.max_duration, seg.duration);
    summary_.peak_bps = std::max(summary_.peak_bps, av_rescale(bytes * 8, kClock, seg.duration));
    summary_.average_bps = av_rescale(summary_.total_bytes * 8, kClock, summary_.total_duration);
    return seg;
  }

  std::string url_;
  TitleInfo info_;
  Summary summary_;
  InputContextPtr ic_;
  std::unique_ptr<PacketReader> reader_;  // reads from ic_ (declared after it: destroyed first)
  std::unique_ptr<TsWriter> writer_;
  PacketPtr pkt_;
  CutRule rule_;
  int64_t media_end_;
  bool awaiting_video_;  ///< segment 0 of a video title, before its first keyframe
  std::vector<PacketPtr> held_;
  bool segment_has_video_ = false;
  uint32_t sequence_ = 0;
  bool done_ = false;
  Status error_;
};

}  // namespace

void SetLibraryLogLevel(bool verbose) { av_log_set_level(verbose ? AV_LOG_INFO : AV_LOG_ERROR); }

Result<std::unique_ptr<Segmenter>> Segmenter::Open(const std::string& url, const Params& params) {
  if (!std::isfinite(params.target_duration) || params.target_duration <= 0 || params.target_duration > 3600) {
    return Error(ErrorCode::kInvalidArgument, "segmenting '{}': target duration {} s is not in (0, 3600]", url,
                 params.target_duration);
  }
  const auto target = static_cast<int64_t>(std::llround(params.target_duration * kClock));

  KHLS_ASSIGN_OR_RETURN(InputContextPtr ic, internal::OpenInput(url, params));
  KHLS_ASSIGN_OR_RETURN(StreamSelection sel, SelectStreams(*ic, url));
  for (unsigned i = 0; i < ic->nb_streams; ++i) {
    const int index = static_cast<int>(i);
    if (index != sel.video && index != sel.audio) ic->streams[i]->discard = AVDISCARD_ALL;
  }
  std::vector<const AVStream*> inputs;
  std::vector<const AVCodecParameters*> streams;
  for (int index : {sel.video, sel.audio}) {
    if (index < 0) continue;
    inputs.push_back(ic->streams[index]);
    streams.push_back(ic->streams[index]->codecpar);
  }

  TitleInfo info = DescribeTitle(*ic, sel);
  auto reader = std::make_unique<PacketReader>(ic.get(), sel, url);
  KHLS_RETURN_IF_ERROR(reader->Start());
  info.decode_lead = reader->decode_lead();

  if (info.seekable) {
    KHLS_ASSIGN_OR_RETURN(internal::Plan plan, internal::PlanSegments(url, params, sel, streams, target));
    info.planned_max_duration = plan.max_duration;
    info.estimated_peak_bps = plan.peak_bps;
    info.estimated_avg_bps = plan.average_bps;
  } else {
    info.planned_max_duration = static_cast<int64_t>(std::ceil(params.target_duration)) * kClock;
  }

  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<TsWriter> writer, TsWriter::Create(inputs, url));
  KHLS_RETURN_IF_ERROR(writer->BeginSegment());
  PacketPtr pkt(av_packet_alloc());
  if (!pkt) return Error(ErrorCode::kInternal, "segmenting '{}': out of memory", url);
  return std::unique_ptr<Segmenter>(std::make_unique<SegmenterImpl>(
      url, std::move(info), target, std::move(ic), std::move(reader), std::move(writer), std::move(pkt)));
}

}  // namespace khls::segmenter
