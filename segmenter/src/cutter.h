// The cutter: reads every input of a title and hands each rendition's packets to
// its sink, cutting all renditions at the same points (segmenter.h has the rule).
// The same code runs the pre-scan (estimating sinks) and the real pass (muxing
// sinks), so the pre-scan's plan is exactly what the real pass makes.
//
// The first input is read in demux order. Its reference stream decides the cuts.
// Its other streams wait in small queues until their packets can be placed: a
// packet belongs to the segment whose span holds its pts, which is known once the
// reference has read past that pts (a later cut lies after every dts read so
// far). A rendition's segment ends when a packet of the next one arrives, or when
// the reference is far enough past the cut that nothing more can come (sparse
// subtitles, an audio track that stopped). Video variants (the other inputs) are
// read up to their keyframe at each cut when the reference makes it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/segmenter.h"
#include "packet_reader.h"
#include "sink.h"

namespace khls::segmenter::internal {

/// One opened input of the title and its reader.
struct CutterInput {
  std::string url;
  InputContextPtr ic;
  std::unique_ptr<PacketReader> reader;  // reads from ic (declared after it: destroyed first)
  /// Rendition index of each of the reader's output streams.
  std::vector<int> renditions;
};

/// How the cutter treats one rendition.
struct CutterRendition {
  TrackKind kind = TrackKind::kVideo;
  int input = 0;    ///< -1: a sidecar (no packets; its sink holds its cues)
  int output = -1;  ///< the stream's index in its input's reader
  std::string id;   ///< for messages
  std::unique_ptr<Sink> sink;
};

/// One rendition's finished part of a segment group.
struct CutPart {
  int64_t start = 0;
  int64_t duration = 0;
  SinkOutput output;
};

struct CutGroup {
  uint32_t sequence = 0;
  std::vector<CutPart> parts;
};

class Cutter {
 public:
  /// `inputs[0]` is the reference input, `renditions[0]` its reference stream
  /// (video, else the first audio). `target` is the cut target in 90 kHz.
  /// `tolerance`: how far (90 kHz) a variant's keyframe may be from the cut and still be "at" it.
  Cutter(std::vector<CutterInput>* inputs, std::vector<CutterRendition>* renditions, int64_t target,
         int64_t tolerance);

  /// No warnings (the pre-scan: the real pass gives them).
  void set_quiet(bool quiet) { quiet_ = quiet; }
  /// A live title, whose EXT-X-TARGETDURATION (`declared`, whole seconds in 90 kHz)
  /// was fixed before its media is read: a reference segment that would round
  /// above it is refused (kInvalidInput, naming the keyframe interval and a
  /// target that works) instead of being cut.
  void set_live_target(int64_t declared) { live_target_ = declared; }

  /// The next segment group; std::nullopt at the end. Errors (damaged input, a
  /// video variant whose keyframes are not aligned) are kInvalidInput.
  Result<std::optional<CutGroup>> Next();

  /// Bytes read so far from all inputs.
  int64_t bytes_read() const;
  /// Reference pts reached, relative to the title start.
  int64_t media_time() const;

 private:
  struct State {
    uint32_t seg = 0;                        ///< the segment being written
    int64_t first_pts = AV_NOPTS_VALUE;      ///< of the current segment
    bool wrote = false;                      ///< the current segment has a packet
    std::deque<PacketPtr> queue;             ///< reference input only: packets not yet placed
    PacketPtr held;                          ///< a video variant's keyframe that opens its next segment
    bool finished = false;
    int64_t filled_end = AV_NOPTS_VALUE;     ///< audio: end of the silence written where the track had none
    std::map<uint32_t, CutPart> done;        ///< ended parts waiting for their group (duration not final)
    std::map<uint32_t, int64_t> starts;      ///< start pts of each part (first packet, or the cut)
  };

  Status Step();
  /// Live: the reference segment from the current cut to `end` fits the declared target.
  Status CheckLiveLength(int64_t end, bool at_keyframe);
  Status Cut(int64_t pts);
  Status PullVariant(int r, int64_t cut, uint32_t ends);
  Status Place(int r);
  Status Write(int r, AVPacket* pkt);
  Status EndSegment(int r, bool last);
  Status Finish();
  int64_t NextStart(int r, uint32_t g) const;  ///< where part g + 1 of rendition r starts, or AV_NOPTS_VALUE
  int64_t MediaEnd(int r) const;
  /// An audio rendition with no audio up to `to` (from its end, or from the segment start): silence.
  Status FillAudio(int r, int64_t from, int64_t to);
  int64_t CutAt(uint32_t index) const;  ///< start of segment group `index`
  bool GroupReady(uint32_t g) const;
  std::string MediaTime(int64_t pts) const;

  std::vector<CutterInput>& inputs_;
  std::vector<CutterRendition>& renditions_;
  std::vector<State> states_;
  int64_t target_;
  int64_t tolerance_;
  int64_t title_start_;
  std::vector<int64_t> cuts_;  ///< start of groups 1, 2, ...
  int64_t ref_dts_ = AV_NOPTS_VALUE;
  int64_t ref_key_ = AV_NOPTS_VALUE;  ///< pts of the reference's latest keyframe
  int64_t live_target_ = 0;           ///< 0: not live (the pre-scan planned the target)
  bool ref_has_packets_ = false;
  bool ended_ = false;
  bool quiet_ = false;
  uint32_t next_group_ = 0;
  PacketPtr pkt_;
};

}  // namespace khls::segmenter::internal
