// One libavformat MPEG-TS muxer for a whole title, writing into memory.
//
// The muxer is never reopened, so continuity counters and the timeline run on
// across segments; EndSegment() flushes it and hands over the bytes written
// since the previous call. Every segment begins with PAT and PMT: the muxer
// writes them before a video keyframe and after BeginSegment(). The DVB service
// description table (SDT, PID 0x11), which the muxer would put in front of
// them, is dropped: HLS players do not use it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/status.h"

namespace khls::segmenter::internal {

inline constexpr size_t kTsPacketSize = 188;

class TsWriter {
 public:
  /// `inputs`: the selected input streams, in output order; `languages`: for each,
  /// the ISO 639-2/B code the PMT's ISO_639_language_descriptor carries ("" none).
  static Result<std::unique_ptr<TsWriter>> Create(const std::vector<const AVStream*>& inputs,
                                                  const std::vector<std::string>& languages, const std::string& url);

  TsWriter(const TsWriter&) = delete;
  TsWriter& operator=(const TsWriter&) = delete;
  ~TsWriter() = default;

  /// The next PES the muxer writes is preceded by PAT and PMT.
  Status BeginSegment();

  /// Writes `pkt` (stream_index = output index, 90 kHz timestamps); `pkt` is
  /// blank afterwards. `immediate` bypasses the interleaving queue, which must
  /// then be empty (right after EndSegment()): the packet's PES comes first.
  Status Write(AVPacket* pkt, bool immediate);

  /// Flushes the interleaving queue and the muxer's buffered PES data and
  /// returns every byte written since the previous call (whole TS packets).
  /// `last` also writes the trailer; the writer is finished afterwards.
  Result<std::vector<uint8_t>> EndSegment(bool last);

  /// A buffer EndSegment returned, given back for reuse (the largest one is kept).
  void Recycle(std::vector<uint8_t> buffer) {
    if (buffer.capacity() > spare_.capacity()) spare_ = std::move(buffer);
  }

 private:
  explicit TsWriter(std::string url) : url_(std::move(url)) {}

#if LIBAVFORMAT_VERSION_MAJOR >= 61
  using WriteBuffer = const uint8_t*;
#else
  using WriteBuffer = uint8_t*;
#endif
  static int OnWrite(void* opaque, WriteBuffer data, int size);
  void Append(const uint8_t* data, size_t size);
  void AppendPackets(const uint8_t* data, size_t size);
  Status MuxError(const char* what, int err) const;

  std::string url_;
  std::vector<uint8_t> out_;
  std::vector<uint8_t> spare_;  ///< given back by Recycle(); the next segment's out_
  std::array<uint8_t, kTsPacketSize> partial_{};
  size_t partial_size_ = 0;
  // pb_ is declared before oc_ so that the muxer goes first.
  AvioContextPtr pb_;
  OutputContextPtr oc_;
};

}  // namespace khls::segmenter::internal
