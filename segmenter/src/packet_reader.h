// Demuxes the selected streams and puts their packets on the output timeline.
//
// Both passes over an input (the keyframe pre-scan and the real segmenting)
// read through this class, so they see exactly the same packets with exactly
// the same timestamps, and the pre-scan's planned cuts are the real ones.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "av_handles.h"
#include "khls/status.h"

namespace khls::segmenter::internal {

/// Indices of the input streams the title uses (-1: none).
struct StreamSelection {
  int video = -1;
  int audio = -1;
  /// Output stream index of the audio stream (video, when present, is output 0).
  int audio_output() const { return video >= 0 ? 1 : 0; }
};

class PacketReader {
 public:
  /// `ic` must outlive the reader; streams not in `selection` should be set to AVDISCARD_ALL.
  PacketReader(AVFormatContext* ic, StreamSelection selection, std::string url);

  /// Reads ahead until the first packet of every selected stream is known (at
  /// most ~10 s of media), drops audio that ends before the first video frame
  /// is presented, then fixes the offset that maps the earliest pts to
  /// kOutputStartPts (or less, so that no dts is negative). Must be called once,
  /// before Next().
  Status Start();

  /// The next packet in demux order: stream_index is the output index (0 =
  /// video if any, then audio), pts/dts/duration are in 90 kHz on the output
  /// timeline, dts strictly increasing per stream, pts >= dts, duration > 0
  /// when it can be known. Video packets before the first keyframe are dropped.
  /// In formats that allow timestamp discontinuities (MPEG-TS, FLV), a jump of
  /// more than 10 s is taken out of the timeline. Returns false at the end of
  /// the input.
  Result<bool> Next(AVPacket* pkt);

  /// Rebased pts of the title's first frame (smallest pts of the read-ahead packets).
  int64_t title_start() const { return title_start_; }
  /// How long decoding runs ahead of presentation at the start: the title's first
  /// pts minus its first dts (the B-frame reorder delay), 90 kHz.
  int64_t decode_lead() const { return decode_lead_; }
  /// Largest pts + duration over the packets returned so far.
  int64_t title_end() const { return title_end_; }

 private:
  struct StreamState {
    AVRational time_base = kTimeBase90k;
    int64_t fallback_duration = 0;  ///< 90 kHz; used when a packet has no duration
    int64_t last_dts = AV_NOPTS_VALUE;
    int64_t last_duration = 0;
  };

  /// Next packet of a selected stream with its timestamps converted to 90 kHz
  /// (not yet rebased); false at end of input.
  Result<bool> ReadRaw(AVPacket* pkt);
  /// Rebases and repairs timestamps; false when the packet must be dropped.
  bool Normalize(AVPacket* pkt);
  /// An audio packet (90 kHz, not yet rebased) that ends before the first video
  /// frame is presented.
  bool EndsBeforeFirstPicture(const AVPacket& pkt) const;

  AVFormatContext* ic_;
  StreamSelection selection_;
  std::string url_;
  StreamState streams_[2];
  bool video_key_seen_ = false;
  int64_t skipped_before_key_ = 0;
  bool discontinuities_;  ///< the format may jump in time (AVFMT_TS_DISCONT)
  int64_t offset_ = 0;    ///< subtracted from 90 kHz input timestamps
  int64_t audio_floor_raw_ = AV_NOPTS_VALUE;  ///< first video pts (input clock); earlier audio is dropped
  int64_t last_dts_ = AV_NOPTS_VALUE;  ///< of the previous packet, any stream
  int64_t title_start_ = 0;
  int64_t decode_lead_ = 0;
  int64_t title_end_ = 0;
  std::deque<PacketPtr> ahead_;  ///< normalized read-ahead packets, returned first
};

}  // namespace khls::segmenter::internal
