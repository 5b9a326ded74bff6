// The cut rule of segmenter.h, shared by the pre-scan and the real pass.
#pragma once

#include <cstdint>

#include "av_handles.h"

namespace khls::segmenter::internal {

/// Decides, packet by packet in demux order, where segments start.
class CutRule {
 public:
  /// `target`: target duration in 90 kHz ticks; `title_start`: rebased pts
  /// where the first segment starts.
  CutRule(bool has_video, int64_t target, int64_t title_start)
      : has_video_(has_video), target_(target), start_(title_start) {}

  /// True when `pkt` (from PacketReader) opens a new segment: a video keyframe
  /// (any packet for audio-only titles) whose pts is at least the target after
  /// the current segment's start. Never true while the segment is empty.
  bool IsCut(const AVPacket& pkt) const {
    if (!has_packets_) return false;
    if (has_video_ && (pkt.stream_index != 0 || (pkt.flags & AV_PKT_FLAG_KEY) == 0)) return false;
    return pkt.pts >= start_ + target_;
  }

  /// Starts a new segment at `pts`.
  void Cut(int64_t pts) {
    start_ = pts;
    has_packets_ = false;
  }

  /// Records that a packet went into the current segment.
  void Add() { has_packets_ = true; }

  /// Start (rebased pts) of the current segment.
  int64_t start() const { return start_; }

 private:
  bool has_video_;
  int64_t target_;
  int64_t start_;
  bool has_packets_ = false;
};

}  // namespace khls::segmenter::internal
