#include "ts_writer.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <span>

#include "codec_string.h"

extern "C" {
#include <libavutil/opt.h>
}

namespace khls::segmenter::internal {
namespace {

// A whole number of TS packets (~64 KiB): the muxer writes 188-byte packets, so
// every buffer flush ends on a packet boundary.
constexpr int kAvioBufferSize = static_cast<int>(kTsPacketSize) * 348;
constexpr size_t kMinReserve = 256 << 10;
constexpr int kSdtPid = 0x11;

bool IsSdtPacket(const uint8_t* p) { return p[0] == 0x47 && (((p[1] & 0x1f) << 8) | p[2]) == kSdtPid; }

}  // namespace

Status TsWriter::MuxError(const char* what, int err) const {
  return Error(ErrorCode::kInvalidInput, "{} for '{}' (MPEG-TS muxer): {}", what, url_, AvErrorString(err));
}

Result<std::unique_ptr<TsWriter>> TsWriter::Create(const std::vector<const AVStream*>& inputs,
                                                   const std::vector<std::string>& languages, const std::string& url) {
  std::unique_ptr<TsWriter> w(new TsWriter(url));
  w->out_.reserve(kMinReserve);

  auto* buffer = static_cast<uint8_t*>(av_malloc(kAvioBufferSize));
  if (buffer == nullptr) return Error(ErrorCode::kInternal, "MPEG-TS output for '{}': out of memory", url);
  w->pb_.reset(avio_alloc_context(buffer, kAvioBufferSize, /*write_flag=*/1, w.get(), nullptr, &TsWriter::OnWrite,
                                  nullptr));
  if (!w->pb_) {
    av_free(buffer);
    return Error(ErrorCode::kInternal, "MPEG-TS output for '{}': out of memory", url);
  }
  w->pb_->seekable = 0;

  AVFormatContext* oc = nullptr;
  int err = avformat_alloc_output_context2(&oc, nullptr, "mpegts", nullptr);
  if (err < 0) return w->MuxError("create muxer", err);
  w->oc_.reset(oc);
  oc->pb = w->pb_.get();
  oc->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_BITEXACT;  // AUTO_BSF stays on (default)
  // PCR runs 0.7 s behind the dts, as with ffmpeg's CLI (-muxdelay 0.7), so
  // decoders get a buffer. Our timeline starts at 1.4 s: the PCR stays positive.
  oc->max_delay = 700000;

  for (size_t i = 0; i < inputs.size(); ++i) {
    const AVStream* in = inputs[i];
    AVStream* st = avformat_new_stream(oc, nullptr);
    if (st == nullptr) return Error(ErrorCode::kInternal, "MPEG-TS output for '{}': out of memory", url);
    err = avcodec_parameters_copy(st->codecpar, in->codecpar);
    if (err < 0) return w->MuxError("copy codec parameters", err);
    st->codecpar->codec_tag = 0;
    st->time_base = kTimeBase90k;
    // The muxer spaces PCRs by whole frames (< 100 ms) from these two.
    if (st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO) st->avg_frame_rate = VideoFrameRate(*in);
    if (st->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) st->codecpar->frame_size = AudioFrameSamples(*in->codecpar);
    if (i < languages.size() && !languages[i].empty()) av_dict_set(&st->metadata, "language", languages[i].c_str(), 0);
  }

  Dictionary opts;
  opts.Set("mpegts_copyts", "1");  // our timestamps are final: no extra 2*max_delay offset
  if (inputs.size() == 1 && inputs[0]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) {
    // The PCR rides on the audio PID. libavformat 59 cannot derive the PCR
    // spacing from an AAC stream's frame size (it warns "frame size not set"):
    // give it the ~85 ms it would pick for 1024-sample frames at 48 kHz.
    opts.Set("pcr_period", "80");
  }
  err = avformat_write_header(oc, opts.out());
  if (err < 0) return w->MuxError("write header", err);
  for (const AVStream* st : std::span(oc->streams, oc->nb_streams)) {
    if (av_cmp_q(st->time_base, kTimeBase90k) != 0) {
      return Error(ErrorCode::kInternal, "MPEG-TS muxer chose time base {}/{}", st->time_base.num,
                   st->time_base.den);
    }
  }
  return w;
}

int TsWriter::OnWrite(void* opaque, WriteBuffer data, int size) {
  auto* self = static_cast<TsWriter*>(opaque);
  try {
    self->Append(data, static_cast<size_t>(size));
  } catch (const std::bad_alloc&) {
    return AVERROR(ENOMEM);  // no exception may cross libavformat
  }
  return size;
}

void TsWriter::AppendPackets(const uint8_t* data, size_t size) {
  // Whole packets: copy runs between SDT packets in one go.
  size_t run = 0;
  for (size_t off = 0; off < size; off += kTsPacketSize) {
    if (!IsSdtPacket(data + off)) continue;
    out_.insert(out_.end(), data + run, data + off);
    run = off + kTsPacketSize;
  }
  out_.insert(out_.end(), data + run, data + size);
}

void TsWriter::Append(const uint8_t* data, size_t size) {
  if (partial_size_ > 0) {  // only if a flush ever ends inside a packet
    const size_t take = std::min(kTsPacketSize - partial_size_, size);
    std::memcpy(partial_.data() + partial_size_, data, take);
    partial_size_ += take;
    data += take;
    size -= take;
    if (partial_size_ < kTsPacketSize) return;
    AppendPackets(partial_.data(), kTsPacketSize);
    partial_size_ = 0;
  }
  const size_t whole = size - size % kTsPacketSize;
  AppendPackets(data, whole);
  partial_size_ = size - whole;
  std::memcpy(partial_.data(), data + whole, partial_size_);
}

Status TsWriter::BeginSegment() {
  const int err = av_opt_set(oc_->priv_data, "mpegts_flags", "+resend_headers", 0);
  if (err < 0) return MuxError("set mpegts_flags", err);
  return Status::Ok();
}

Status TsWriter::Write(AVPacket* pkt, bool immediate) {
  const bool video = oc_->streams[pkt->stream_index]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO;
  const int64_t pts = pkt->pts;
  // av_write_frame leaves the packet to us; av_interleaved_write_frame takes it.
  const int err = immediate ? av_write_frame(oc_.get(), pkt) : av_interleaved_write_frame(oc_.get(), pkt);
  av_packet_unref(pkt);
  if (err < 0) {
    return Error(ErrorCode::kInvalidInput, "write {} packet at {:.3f} s of '{}' to MPEG-TS (damaged input?): {}",
                 video ? "video" : "audio", ToSeconds(pts), url_, AvErrorString(err));
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> TsWriter::EndSegment(bool last) {
  int err = 0;
  if (last) {
    err = av_write_trailer(oc_.get());  // drains the queue and flushes PES data
    if (err < 0) return MuxError("write trailer", err);
  } else {
    err = av_interleaved_write_frame(oc_.get(), nullptr);  // drain the interleaving queue
    if (err < 0) return MuxError("flush interleaving queue", err);
    err = av_write_frame(oc_.get(), nullptr);  // write out buffered (audio) PES data
    if (err < 0) return MuxError("flush", err);
  }
  avio_flush(pb_.get());
  if (pb_->error < 0) return MuxError("write", pb_->error);
  if (partial_size_ != 0) {
    return Error(ErrorCode::kInternal, "MPEG-TS output for '{}' ended inside a TS packet", url_);
  }
  std::vector<uint8_t> data = std::move(out_);
  out_ = std::move(spare_);
  out_.clear();
  spare_ = {};
  if (!last) out_.reserve(std::max(kMinReserve, data.size() + data.size() / 8));
  return data;
}

}  // namespace khls::segmenter::internal
