// Demuxes the selected streams of one input and puts their packets on the
// output timeline.
//
// Both passes over an input (the pre-scan and the real segmenting) read through
// this class, so they see exactly the same packets with exactly the same
// timestamps, and the pre-scan's planned cuts are the real ones.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/segmenter.h"
#include "khls/status.h"

namespace khls::segmenter::internal {

class ReadWatchdog;

class PacketReader {
 public:
  /// Reads `streams` of `ic` (input stream indices; packets come out with
  /// stream_index = the position in this list). `ic` must outlive the reader;
  /// the other streams should be set to AVDISCARD_ALL.
  PacketReader(AVFormatContext* ic, std::vector<int> streams, std::string url);

  /// Reads ahead until the first packet of every selected audio and video stream
  /// is known (at most ~10 s of media), drops audio that ends before the first
  /// video frame is presented, then fixes the offset that maps the earliest pts to
  /// kOutputStartPts (or less, so that no dts is negative), or, with
  /// `first_picture`, the one that puts the first video frame there (a video
  /// variant aligned with the reference input). Must be called once, before Next().
  Status Start(std::optional<int64_t> first_picture = std::nullopt);

  /// The next packet in demux order: stream_index is the output index, pts/dts/
  /// duration are in 90 kHz on the output timeline, dts strictly increasing per
  /// stream, pts >= dts, duration > 0 when it can be known. Video packets before
  /// the first keyframe are dropped. An audio frame never starts inside the
  /// previous one (a frame that would overlap its predecessor by more than
  /// rounding, as at the joins of a concatenated file, is dropped: players
  /// place the frames of an MPEG-TS PES back to back, so an overlap would make
  /// their timestamps go backwards). Subtitle packets keep their pts (dts = pts).
  /// In formats that allow timestamp discontinuities (MPEG-TS, FLV), a jump of
  /// more than 10 s is taken out of the timeline. Returns false at the end, and
  /// from then on: of a live input also once it stalls, or once its connection
  /// ends after its first packet (end() says which); kCancelled when reads are
  /// stopped (Params::stop).
  Result<bool> Next(AVPacket* pkt);

  /// Why the input ended (valid once Next() or Start() has met the end).
  InputEnd end() const { return end_; }
  /// kConnectionEnded: the protocol's error.
  const std::string& end_detail() const { return end_detail_; }

  /// Rebased pts of the input's first frame (smallest pts of the read-ahead packets).
  int64_t title_start() const { return title_start_; }
  /// Rebased pts of the first video frame; title_start() without video.
  int64_t first_picture() const { return first_picture_; }
  /// How long decoding runs ahead of presentation at the start: the first pts
  /// minus the first dts (the B-frame reorder delay), 90 kHz.
  int64_t decode_lead() const { return decode_lead_; }
  /// Largest pts + duration over the audio and video packets returned so far.
  int64_t title_end() const { return title_end_; }
  /// Largest pts + duration of output stream `i` so far (AV_NOPTS_VALUE before its first packet).
  int64_t stream_end(int i) const { return streams_[i].end; }
  /// Audio frames dropped because they overlapped the previous frame.
  int64_t dropped_overlaps() const { return dropped_overlaps_; }

 private:
  struct StreamState {
    AVMediaType type = AVMEDIA_TYPE_UNKNOWN;
    AVRational time_base{1, 90000};
    int64_t fallback_duration = 0;  ///< 90 kHz; used when a packet has no duration
    int64_t frame_duration = 0;     ///< audio: what every frame decodes to, 90 kHz; 0 = not fixed
    int64_t last_dts = AV_NOPTS_VALUE;
    int64_t last_duration = 0;
    int64_t end = AV_NOPTS_VALUE;
    /// Video: pictures a decoder holds back (B-frame reordering), from the probe.
    int video_delay = 0;
    /// Video: the decode clock made up for packets that come without dts (90 kHz,
    /// not rebased); AV_NOPTS_VALUE once the demuxer gives real ones.
    int64_t made_up_dts = AV_NOPTS_VALUE;
    bool real_dts_seen = false;
  };

  /// Next packet of a selected stream with its timestamps converted to 90 kHz
  /// (not yet rebased); false at end of input.
  Result<bool> ReadRaw(AVPacket* pkt);
  /// av_read_frame failed with `err`: the end of the input (false), or an error.
  Result<bool> EndOfInput(int err);
  /// Gives a dts to the leading video packets that come without one.
  static void MakeUpDts(StreamState& st, AVPacket* pkt);
  /// Rebases and repairs timestamps; false when the packet must be dropped.
  bool Normalize(AVPacket* pkt);
  /// An audio packet (90 kHz, not yet rebased) that ends before the first video
  /// frame is presented.
  bool EndsBeforeFirstPicture(const AVPacket& pkt) const;
  bool IsAudio(int i) const { return streams_[i].type == AVMEDIA_TYPE_AUDIO; }
  bool IsSubtitle(int i) const { return streams_[i].type == AVMEDIA_TYPE_SUBTITLE; }

  AVFormatContext* ic_;
  ReadWatchdog* watchdog_;      ///< of ic_ (null when it has none)
  std::vector<int> selected_;   ///< output index -> input stream index
  std::vector<int> output_of_;  ///< input stream index -> output index, or -1
  int video_ = -1;              ///< output index of the video stream
  std::string url_;
  std::vector<StreamState> streams_;
  bool video_key_seen_ = false;
  int64_t skipped_before_key_ = 0;
  bool discontinuities_;  ///< the format may jump in time (AVFMT_TS_DISCONT)
  int64_t offset_ = 0;    ///< subtracted from 90 kHz input timestamps
  int64_t audio_floor_raw_ = AV_NOPTS_VALUE;  ///< first video pts (input clock); earlier audio is dropped
  int64_t last_dts_ = AV_NOPTS_VALUE;  ///< of the previous audio or video packet
  int64_t title_start_ = 0;
  int64_t first_picture_ = 0;
  int64_t decode_lead_ = 0;
  int64_t title_end_ = 0;
  int64_t dropped_overlaps_ = 0;
  int64_t packets_read_ = 0;  ///< av_read_frame's packets, of every stream
  bool ended_ = false;
  InputEnd end_ = InputEnd::kEndOfInput;
  std::string end_detail_;
  std::deque<PacketPtr> ahead_;  ///< normalized read-ahead packets, returned first
};

}  // namespace khls::segmenter::internal
