// An MPEG-TS demuxer over bytes in memory, read in place: how the CMAF remuxer
// and the re-cutter read segments that arrived from Kafka.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "av_handles.h"
#include "khls/status.h"

namespace khls::segmenter::internal {

class MemoryTsInput {
 public:
  /// Opens the mpegts demuxer on `data` (which must outlive the result).
  /// `flags` are added to the context's (e.g. AVFMT_FLAG_NOFILLIN); `probesize`, when
  /// not 0, bounds how much the demuxer and avformat_find_stream_info read. kInvalidInput
  /// "<what>: not MPEG-TS: <reason>" when libavformat refuses it.
  static Result<std::unique_ptr<MemoryTsInput>> Open(std::span<const uint8_t> data, int flags,
                                                     const std::string& what, int64_t probesize = 0) {
    std::unique_ptr<MemoryTsInput> in(new MemoryTsInput(data));
    auto* buffer = static_cast<uint8_t*>(av_malloc(kBufferSize));
    if (buffer == nullptr) return Error(ErrorCode::kInternal, "{}: out of memory", what);
    in->pb_.reset(avio_alloc_context(buffer, kBufferSize, 0, in.get(), &Read, nullptr, &Seek));
    if (!in->pb_) {
      av_free(buffer);
      return Error(ErrorCode::kInternal, "{}: out of memory", what);
    }
    AVFormatContext* raw = avformat_alloc_context();
    if (raw == nullptr) return Error(ErrorCode::kInternal, "{}: out of memory", what);
    raw->pb = in->pb_.get();
    raw->flags |= AVFMT_FLAG_CUSTOM_IO | flags;
    if (probesize > 0) raw->probesize = probesize;
    const int err = avformat_open_input(&raw, nullptr, av_find_input_format("mpegts"), nullptr);  // frees raw on error
    if (err < 0) return Error(ErrorCode::kInvalidInput, "{}: not MPEG-TS: {}", what, AvErrorString(err));
    in->ic_.reset(raw);
    return in;
  }

  AVFormatContext* get() const { return ic_.get(); }

  MemoryTsInput(const MemoryTsInput&) = delete;
  MemoryTsInput& operator=(const MemoryTsInput&) = delete;

 private:
  static constexpr int kBufferSize = 64 * 1024;

  explicit MemoryTsInput(std::span<const uint8_t> data) : data_(data) {}

  static int Read(void* opaque, uint8_t* buf, int size) {
    auto* self = static_cast<MemoryTsInput*>(opaque);
    const size_t n = std::min(static_cast<size_t>(size), self->data_.size() - self->pos_);
    if (n == 0) return AVERROR_EOF;
    std::memcpy(buf, self->data_.data() + self->pos_, n);
    self->pos_ += n;
    return static_cast<int>(n);
  }

  static int64_t Seek(void* opaque, int64_t offset, int whence) {
    auto* self = static_cast<MemoryTsInput*>(opaque);
    const auto size = static_cast<int64_t>(self->data_.size());
    if (whence & AVSEEK_SIZE) return size;
    int64_t to = -1;
    switch (whence & ~AVSEEK_FORCE) {
      case SEEK_SET: to = offset; break;
      case SEEK_CUR: to = static_cast<int64_t>(self->pos_) + offset; break;
      case SEEK_END: to = size + offset; break;
      default: break;
    }
    if (to < 0 || to > size) return AVERROR(EINVAL);
    self->pos_ = static_cast<size_t>(to);
    return to;
  }

  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  // pb_ is declared before ic_ so that the demuxer closes first.
  AvioContextPtr pb_;
  InputContextPtr ic_;
};

}  // namespace khls::segmenter::internal
