// RAII owners for the libav* handles used by the segmenter, and error text.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "khls/defaults.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>
}

namespace khls::segmenter::internal {

class ReadWatchdog;

/// An AVFormatContext opened with avformat_open_input, and the watchdog its
/// interrupt callback points to (if any), kept alive until the context is closed.
struct InputContextDeleter {
  std::shared_ptr<ReadWatchdog> watchdog;
  void operator()(AVFormatContext* ctx) const;  ///< detaches the watchdog, then closes (read_watchdog.cc)
};
using InputContextPtr = std::unique_ptr<AVFormatContext, InputContextDeleter>;

/// An AVFormatContext made with avformat_alloc_output_context2 (its pb is owned elsewhere).
struct OutputContextDeleter {
  void operator()(AVFormatContext* ctx) const { avformat_free_context(ctx); }
};
using OutputContextPtr = std::unique_ptr<AVFormatContext, OutputContextDeleter>;

struct PacketDeleter {
  void operator()(AVPacket* pkt) const { av_packet_free(&pkt); }
};
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;

/// A custom AVIOContext from avio_alloc_context; frees its (possibly reallocated) buffer too.
struct AvioContextDeleter {
  void operator()(AVIOContext* pb) const {
    if (pb != nullptr) av_freep(&pb->buffer);
    avio_context_free(&pb);
  }
};
using AvioContextPtr = std::unique_ptr<AVIOContext, AvioContextDeleter>;

/// Owns an AVDictionary; `out()` is what libav* functions taking AVDictionary** want.
class Dictionary {
 public:
  Dictionary() = default;
  Dictionary(const Dictionary&) = delete;
  Dictionary& operator=(const Dictionary&) = delete;
  ~Dictionary() { av_dict_free(&dict_); }

  /// Returns av_dict_set's error code (< 0) or 0.
  int Set(const std::string& key, const std::string& value) {
    return av_dict_set(&dict_, key.c_str(), value.c_str(), 0);
  }
  AVDictionary** out() { return &dict_; }
  /// Keys still present (after a call, these are the options nobody consumed).
  std::vector<std::string> Keys() const {
    std::vector<std::string> keys;
    const AVDictionaryEntry* e = nullptr;
    while ((e = av_dict_get(dict_, "", e, AV_DICT_IGNORE_SUFFIX)) != nullptr) keys.emplace_back(e->key);
    return keys;
  }

 private:
  AVDictionary* dict_ = nullptr;
};

/// av_strerror as a std::string.
inline std::string AvErrorString(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  if (av_strerror(err, buf, sizeof(buf)) < 0) return "error " + std::to_string(err);
  return buf;
}

/// 90 kHz as a rational, the time base of everything the segmenter reports.
inline constexpr AVRational kTimeBase90k{1, static_cast<int>(kClock)};

}  // namespace khls::segmenter::internal
