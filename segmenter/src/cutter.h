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
//
// With a part target (LL-HLS), the groups are parts: a cut either starts a new
// segment (a reference keyframe past the segment's target, exactly as without
// parts) or only a new part of the current one. A part can start only on a
// reference packet whose pts is above every pts read before it (B-frame
// reordering shows the others before it); the latest such candidate is held
// back with the packets behind it until the next candidate, a segment cut or
// the end shows how far the part would run: past the part target, it ends at
// the held candidate (the longest part that fits). Segment cuts never look at
// part cuts, so the segments are the same with or without parts. Everything
// downstream of a cut (placing audio, ending each rendition's group) treats
// both kinds alike; other streams are placed only below a held candidate.
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
  uint32_t sequence = 0;  ///< the group's index (0, 1, ...), counting parts when there are any
  std::vector<CutPart> parts;
  /// Its first reference packet is a keyframe (always, without a part target, and for audio).
  bool independent = true;
  /// The next group starts a new segment, or this is the last group (always, without a part target).
  bool ends_segment = true;
};

class Cutter {
 public:
  /// `inputs[0]` is the reference input, `renditions[0]` its reference stream
  /// (video, else the first audio). `target` is the cut target in 90 kHz.
  /// `tolerance`: how far (90 kHz) a variant's keyframe may be from the cut and still be "at" it.
  /// `part_target` (90 kHz, 0 = none): also cut each segment into parts of at most this long.
  Cutter(std::vector<CutterInput>* inputs, std::vector<CutterRendition>* renditions, int64_t target,
         int64_t tolerance, int64_t part_target = 0);

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
  /// A new group starts at `pts`: a new segment, or (`segment` false) a new part of the current one.
  Status Cut(int64_t pts, bool segment, bool key);
  /// Parts: the current part would run on to `end` (the next candidate's pts, a
  /// segment cut, the end of the title): cuts a part at the held candidate if
  /// that is too long, then writes the held reference packets.
  Status EndPartBefore(int64_t end);
  /// The highest pts of other streams that can be placed now: no cut can come at or before it.
  int64_t PlacedUpTo() const;
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
  int64_t part_target_;
  std::vector<int64_t> cuts_;  ///< start of groups 1, 2, ...
  /// Per cut: it starts a segment (not only a part); its reference packet is a keyframe.
  struct CutKind {
    bool segment = true;
    bool key = true;
  };
  std::vector<CutKind> cut_kinds_;
  int64_t segment_start_;        ///< where the current segment starts (= the current group's without parts)
  uint32_t segment_index_ = 0;   ///< the current segment (= the current group without parts)
  int64_t ref_max_pts_ = AV_NOPTS_VALUE;  ///< highest pts of the reference read so far
  /// Parts: the latest reference packet a part could start at (the front) and
  /// the packets behind it in decode order, not yet written.
  std::deque<PacketPtr> held_;
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
