#include "cutter.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "khls/log.h"

namespace khls::segmenter::internal {
namespace {

// How far the reference may run past a cut before a rendition that has sent
// nothing since is taken to have nothing more for the segment before it (an
// audio track that stopped, sparse subtitles). Muxers interleave tracks much
// closer than this.
constexpr int64_t kAudioMargin = 10 * kClock;
constexpr int64_t kSubtitleMargin = 3 * kClock;
// How far past a cut a misaligned variant is read to report its next keyframe.
constexpr int64_t kKeyframeSearch = 60 * kClock;

}  // namespace

Cutter::Cutter(std::vector<CutterInput>* inputs, std::vector<CutterRendition>* renditions, int64_t target,
               int64_t tolerance, int64_t part_target)
    : inputs_(*inputs),
      renditions_(*renditions),
      states_(renditions->size()),
      target_(target),
      tolerance_(tolerance),
      title_start_(inputs->front().reader->title_start()),
      part_target_(part_target),
      segment_start_(title_start_),
      pkt_(av_packet_alloc()) {}

int64_t Cutter::CutAt(uint32_t index) const { return index == 0 ? title_start_ : cuts_[index - 1]; }

std::string Cutter::MediaTime(int64_t pts) const { return fmt::format("{:.3f} s", ToSeconds(pts - title_start_)); }

int64_t Cutter::bytes_read() const {
  int64_t n = 0;
  for (const CutterInput& in : inputs_)
    if (in.ic->pb != nullptr) n += std::max<int64_t>(avio_tell(in.ic->pb), 0);
  return n;
}

int64_t Cutter::media_time() const {
  return ref_dts_ == AV_NOPTS_VALUE ? 0 : std::max<int64_t>(ref_dts_ - title_start_, 0);
}

int64_t Cutter::MediaEnd(int r) const {
  const CutterRendition& d = renditions_[r];
  const int64_t ref_end = inputs_[0].reader->title_end();
  // Subtitles run to the end of the title; audio and video to the end of their own frames.
  if (d.kind == TrackKind::kSubtitles || d.input < 0) return ref_end;
  int64_t end = inputs_[d.input].reader->stream_end(d.output);
  if (states_[r].filled_end != AV_NOPTS_VALUE) end = std::max(end, states_[r].filled_end);
  return end == AV_NOPTS_VALUE ? ref_end : end;
}

Status Cutter::FillAudio(int r, int64_t from, int64_t to) {
  State& st = states_[r];
  KHLS_ASSIGN_OR_RETURN(int64_t filled, renditions_[r].sink->FillSilence(from, to));
  if (filled <= from) return Status::Ok();
  if (st.filled_end == AV_NOPTS_VALUE && !quiet_)
    log::Warn("audio rendition '{}' of '{}' has no audio from {} on (the track is shorter, or has a hole): silence "
              "is written there so that players go on",
              renditions_[r].id, inputs_[0].url, MediaTime(from));
  if (!st.wrote) {
    st.wrote = true;
    st.first_pts = from;
  }
  st.filled_end = filled;
  return Status::Ok();
}

Status Cutter::Write(int r, AVPacket* pkt) {
  State& st = states_[r];
  if (!st.wrote) {
    st.wrote = true;
    st.first_pts = pkt->pts;
  }
  return renditions_[r].sink->Write(pkt);
}

Status Cutter::EndSegment(int r, bool last) {
  State& st = states_[r];
  const CutterRendition& d = renditions_[r];
  const uint32_t seg = st.seg;
  if (r != 0 && d.kind == TrackKind::kAudio) {
    // Where the track has no audio (a segment without any, or the end of a track
    // shorter than the video), players would stall: silence instead.
    const int64_t until = seg < cuts_.size() ? cuts_[seg] : MediaEnd(0);
    if (!st.wrote) KHLS_RETURN_IF_ERROR(FillAudio(r, std::max(CutAt(seg), MediaEnd(r)), until));
    // A track that ends a few frames before the video at the very end is no hole for a player.
    else if (ended_ && (!last || until - MediaEnd(r) >= kClock / 10)) KHLS_RETURN_IF_ERROR(FillAudio(r, MediaEnd(r), until));
  }
  // Time-split renditions start at their first frame; the reference and subtitles at the cut.
  const bool own_start = r != 0 && d.kind != TrackKind::kSubtitles && st.wrote;
  const int64_t start = own_start ? st.first_pts : CutAt(seg);
  const int64_t end = seg < cuts_.size() ? cuts_[seg] : MediaEnd(r);
  KHLS_ASSIGN_OR_RETURN(SinkOutput out, d.sink->End(CutAt(seg), std::max(end, CutAt(seg) + 1), last));
  st.done[seg] = CutPart{start, 0, std::move(out)};
  st.starts[seg] = start;
  st.seg = seg + 1;
  st.wrote = false;
  st.first_pts = AV_NOPTS_VALUE;
  st.finished = last;
  return Status::Ok();
}

int64_t Cutter::NextStart(int r, uint32_t g) const {
  const State& st = states_[r];
  const CutterRendition& d = renditions_[r];
  if (auto it = st.starts.find(g + 1); it != st.starts.end()) return it->second;
  if (st.finished) return st.seg == g + 1 ? MediaEnd(r) : AV_NOPTS_VALUE;
  if (st.seg == g + 1) {
    if (r == 0 || d.kind == TrackKind::kSubtitles) return g < cuts_.size() ? cuts_[g] : AV_NOPTS_VALUE;
    if (st.wrote) return st.first_pts;
  }
  return AV_NOPTS_VALUE;
}

bool Cutter::GroupReady(uint32_t g) const {
  for (size_t r = 0; r < states_.size(); ++r) {
    if (!states_[r].done.count(g)) return false;
    if (NextStart(static_cast<int>(r), g) == AV_NOPTS_VALUE) return false;
  }
  return true;
}

Result<std::optional<CutGroup>> Cutter::Next() {
  while (!GroupReady(next_group_)) {
    if (ended_) {
      for (const State& st : states_)
        if (!st.done.empty())
          return Error(ErrorCode::kInternal, "segmenting '{}': segment group {} is incomplete at the end",
                       inputs_[0].url, next_group_);
      return std::optional<CutGroup>();
    }
    KHLS_RETURN_IF_ERROR(Step());
  }
  CutGroup group;
  group.sequence = next_group_;
  // Group 0 starts on the reference's first packet: a keyframe (the reader drops what comes before one).
  group.independent = next_group_ == 0 || cut_kinds_[next_group_ - 1].key;
  // A ready group's end is known: either its successor's cut, or the end of the title.
  group.ends_segment = next_group_ >= cut_kinds_.size() || cut_kinds_[next_group_].segment;
  for (size_t r = 0; r < states_.size(); ++r) {
    State& st = states_[r];
    CutPart part = std::move(st.done[next_group_]);
    part.duration = std::max<int64_t>(NextStart(static_cast<int>(r), next_group_) - part.start, 1);
    st.done.erase(next_group_);
    st.starts.erase(next_group_);
    group.parts.push_back(std::move(part));
  }
  ++next_group_;
  return std::optional<CutGroup>(std::move(group));
}

Status Cutter::Step() {
  CutterInput& in = inputs_[0];
  KHLS_ASSIGN_OR_RETURN(bool got, in.reader->Next(pkt_.get()));
  if (!got) return Finish();
  const int r = in.renditions[pkt_->stream_index];
  if (r != 0) {
    PacketPtr queued(av_packet_alloc());
    if (!queued) return Error(ErrorCode::kInternal, "segmenting '{}': out of memory", in.url);
    av_packet_move_ref(queued.get(), pkt_.get());
    states_[r].queue.push_back(std::move(queued));
    return Place(r);
  }
  const bool need_key = renditions_[0].kind == TrackKind::kVideo;
  const bool key = !need_key || (pkt_->flags & AV_PKT_FLAG_KEY) != 0;
  // A segment is cut from its own start, whatever parts it has: the segments are
  // the same with and without parts (and the pre-scan plans them either way).
  const bool segment_cut = ref_has_packets_ && key && pkt_->pts >= segment_start_ + target_;
  // Only a packet that moves presentation forward can start a part: one that
  // B-frame reordering shows before a picture already read belongs with it.
  const bool part_candidate = part_target_ > 0 && (ref_max_pts_ == AV_NOPTS_VALUE || pkt_->pts > ref_max_pts_);
  if (segment_cut || part_candidate) KHLS_RETURN_IF_ERROR(EndPartBefore(pkt_->pts));
  if (segment_cut) {
    KHLS_RETURN_IF_ERROR(CheckLiveLength(pkt_->pts, true));
    KHLS_RETURN_IF_ERROR(Cut(pkt_->pts, /*segment=*/true, key));
  }
  if (key) ref_key_ = pkt_->pts;
  if (ref_max_pts_ == AV_NOPTS_VALUE || pkt_->pts > ref_max_pts_) ref_max_pts_ = pkt_->pts;
  // A candidate is held (with what follows it in decode order) until the next
  // one shows whether the part must end there; a part's first packet is never
  // one, so no part is ever empty.
  const bool hold = (part_candidate && !segment_cut && ref_has_packets_) || !held_.empty();
  ref_has_packets_ = true;
  ref_dts_ = pkt_->dts;
  if (hold) {
    PacketPtr held(av_packet_alloc());
    if (!held) return Error(ErrorCode::kInternal, "segmenting '{}': out of memory", in.url);
    av_packet_move_ref(held.get(), pkt_.get());
    held_.push_back(std::move(held));
  } else {
    KHLS_RETURN_IF_ERROR(Write(0, pkt_.get()));
  }
  for (size_t i = 1; i < in.renditions.size(); ++i) KHLS_RETURN_IF_ERROR(Place(in.renditions[i]));
  return Status::Ok();
}

Status Cutter::EndPartBefore(int64_t end) {
  if (held_.empty()) return Status::Ok();
  // The current part could run on to `end`. When that is longer than the part
  // target, it ends at the held candidate instead: the latest point it can end
  // at, so every part is as long as fits in the target (unless one run of
  // frames between candidates, e.g. a B-frame group, is already longer).
  const int64_t start = CutAt(static_cast<uint32_t>(cuts_.size()));
  const AVPacket& candidate = *held_.front();
  if (end - start > part_target_ && candidate.pts > start) {
    const bool key = renditions_[0].kind != TrackKind::kVideo || (candidate.flags & AV_PKT_FLAG_KEY) != 0;
    KHLS_RETURN_IF_ERROR(Cut(candidate.pts, /*segment=*/false, key));
  }
  for (PacketPtr& p : held_) KHLS_RETURN_IF_ERROR(Write(0, p.get()));
  held_.clear();
  return Status::Ok();
}

int64_t Cutter::PlacedUpTo() const {
  // A held candidate may still become a cut: nothing at or after it is placed yet.
  if (held_.empty() || ref_dts_ == AV_NOPTS_VALUE) return ref_dts_;
  return std::min(ref_dts_, held_.front()->pts - 1);
}

Status Cutter::CheckLiveLength(int64_t end, bool at_keyframe) {
  const uint32_t seg = segment_index_;
  const int64_t start = segment_start_;
  const int64_t length = end - start;
  // RFC 8216 4.3.3.1: each EXTINF, rounded to the nearest integer, at most the target duration.
  if (live_target_ <= 0 || std::llround(ToSeconds(length)) <= live_target_ / kClock) return Status::Ok();
  const int64_t declared = live_target_ / kClock;
  if (at_keyframe && ref_key_ != AV_NOPTS_VALUE && end > ref_key_) {
    // With keyframes at a steady interval, a target that is a multiple of it cuts
    // every segment exactly there: the smallest such multiple at or above this
    // target, in ms rounded down (the cut is at the first keyframe at or past it).
    const int64_t gop = end - ref_key_;
    const int64_t multiple = (target_ + gop - 1) / gop * gop;
    const double works = std::floor(ToSeconds(multiple) * 1000) / 1000;
    return Error(ErrorCode::kInvalidInput,
                 "live input '{}': keyframes {:.3f} s apart (at {} and {}) make segment {} last {:.3f} s, more than "
                 "the target duration of {} s declared for the live title (EXT-X-TARGETDURATION is fixed before a "
                 "live input is read, and every segment must fit it): use --segment-duration {:g} (a multiple of "
                 "the keyframe interval), or encode the feed with a keyframe interval that divides {:g} s",
                 inputs_[0].url, ToSeconds(gop), MediaTime(ref_key_), MediaTime(end), seg, ToSeconds(length), declared,
                 works, ToSeconds(target_));
  }
  return Error(ErrorCode::kInvalidInput,
               "live input '{}': its last segment {} lasts {:.3f} s (from {}, its latest keyframe at {}), more than the "
               "target duration of {} s declared for the live title (EXT-X-TARGETDURATION is fixed before a live "
               "input is read, and every segment must fit it): use a --segment-duration that is a multiple of the "
               "feed's keyframe interval, or encode the feed with a keyframe interval that divides {:g} s",
               inputs_[0].url, seg, ToSeconds(length), MediaTime(start),
               MediaTime(ref_key_ != AV_NOPTS_VALUE ? ref_key_ : start), declared, ToSeconds(target_));
}

Status Cutter::Cut(int64_t pts, bool segment, bool key) {
  cuts_.push_back(pts);
  cut_kinds_.push_back(CutKind{segment, key});
  if (segment) {
    segment_start_ = pts;
    ++segment_index_;
  }
  const auto ending = static_cast<uint32_t>(cuts_.size() - 1);
  KHLS_RETURN_IF_ERROR(EndSegment(0, false));
  for (size_t r = 1; r < renditions_.size(); ++r) {
    const CutterRendition& d = renditions_[r];
    if (d.input < 0) {
      // A sidecar: its cues are all known, its segment ends with the cut.
      while (states_[r].seg < cuts_.size()) KHLS_RETURN_IF_ERROR(EndSegment(static_cast<int>(r), false));
    } else if (d.input > 0) {
      // (Parts take a single input: a variant is only ever cut at a segment cut.)
      KHLS_RETURN_IF_ERROR(PullVariant(static_cast<int>(r), pts, ending));
    }
  }
  return Status::Ok();
}

Status Cutter::PullVariant(int r, int64_t cut, uint32_t ends) {
  State& st = states_[r];
  CutterInput& in = inputs_[renditions_[r].input];
  int64_t before = AV_NOPTS_VALUE;  // its last keyframe before the cut
  auto misaligned = [&](int64_t after) {
    std::string nearest;
    if (before != AV_NOPTS_VALUE) nearest = MediaTime(before);
    if (after != AV_NOPTS_VALUE) nearest += (nearest.empty() ? "" : " and ") + MediaTime(after);
    return Error(ErrorCode::kInvalidInput,
                 "'{}' has no keyframe at {}, where '{}' starts segment {} ({}): the variants of a title must have "
                 "their keyframes at the same times (encode every rung with the same keyframe interval and no "
                 "scene-cut keyframes, e.g. x264 -g N -keyint_min N -sc_threshold 0)",
                 in.url, MediaTime(cut), inputs_[0].url, ends + 1,
                 nearest.empty() ? "it has no keyframe near it" : "its nearest keyframes are at " + nearest);
  };
  for (;;) {
    PacketPtr p = std::move(st.held);
    if (!p) {
      p.reset(av_packet_alloc());
      if (!p) return Error(ErrorCode::kInternal, "segmenting '{}': out of memory", in.url);
      KHLS_ASSIGN_OR_RETURN(bool got, in.reader->Next(p.get()));
      if (!got) return misaligned(AV_NOPTS_VALUE);
    }
    const bool key = (p->flags & AV_PKT_FLAG_KEY) != 0;
    if (key && std::llabs(p->pts - cut) <= tolerance_) {
      KHLS_RETURN_IF_ERROR(EndSegment(r, false));
      st.held = std::move(p);
      return Status::Ok();
    }
    if (p->dts > cut + tolerance_ || (key && p->pts > cut + tolerance_)) {
      // Report where its keyframes are instead: read on to the next one.
      int64_t after = key ? p->pts : AV_NOPTS_VALUE;
      while (after == AV_NOPTS_VALUE) {
        KHLS_ASSIGN_OR_RETURN(bool got, in.reader->Next(p.get()));
        if (!got || p->dts > cut + kKeyframeSearch) break;
        if (p->flags & AV_PKT_FLAG_KEY) after = p->pts;
      }
      return misaligned(after);
    }
    if (key) before = p->pts;
    KHLS_RETURN_IF_ERROR(Write(r, p.get()));
  }
}

Status Cutter::Place(int r) {
  State& st = states_[r];
  while (!st.queue.empty()) {
    AVPacket* p = st.queue.front().get();
    // Its segment: the one whose span holds its pts, among the cuts known so far.
    const auto index = static_cast<uint32_t>(std::upper_bound(cuts_.begin(), cuts_.end(), p->pts) - cuts_.begin());
    // Packets come in pts order per stream: what lies before this one is complete.
    while (st.seg < index) KHLS_RETURN_IF_ERROR(EndSegment(r, false));
    // A later cut cannot come before a pts the reference has already read past,
    // nor before a held part candidate (it may become one).
    if (!ended_ && (ref_dts_ == AV_NOPTS_VALUE || p->pts > PlacedUpTo())) break;
    KHLS_RETURN_IF_ERROR(Write(r, p));
    st.queue.pop_front();
  }
  if (st.queue.empty() && ref_dts_ != AV_NOPTS_VALUE) {
    const int64_t margin = renditions_[r].kind == TrackKind::kSubtitles ? kSubtitleMargin : kAudioMargin;
    while (st.seg < cuts_.size() && ref_dts_ >= cuts_[st.seg] + margin) KHLS_RETURN_IF_ERROR(EndSegment(r, false));
  }
  return Status::Ok();
}

Status Cutter::Finish() {
  // The last part runs to the end of the reference, if that fits in the part target.
  if (ref_has_packets_) KHLS_RETURN_IF_ERROR(EndPartBefore(MediaEnd(0)));
  ended_ = true;
  if (ref_has_packets_) KHLS_RETURN_IF_ERROR(CheckLiveLength(MediaEnd(0), false));
  const CutterInput& in0 = inputs_[0];
  for (size_t i = 1; i < in0.renditions.size(); ++i) KHLS_RETURN_IF_ERROR(Place(in0.renditions[i]));
  // Video variants run to their end.
  for (size_t r = 1; r < renditions_.size(); ++r) {
    if (renditions_[r].input <= 0) continue;
    State& st = states_[r];
    CutterInput& in = inputs_[renditions_[r].input];
    if (st.held) KHLS_RETURN_IF_ERROR(Write(static_cast<int>(r), st.held.get()));
    st.held.reset();
    for (;;) {
      KHLS_ASSIGN_OR_RETURN(bool got, in.reader->Next(pkt_.get()));
      if (!got) break;
      KHLS_RETURN_IF_ERROR(Write(static_cast<int>(r), pkt_.get()));
    }
  }
  for (size_t r = 0; r < renditions_.size(); ++r) {
    while (states_[r].seg < cuts_.size()) KHLS_RETURN_IF_ERROR(EndSegment(static_cast<int>(r), false));
    KHLS_RETURN_IF_ERROR(EndSegment(static_cast<int>(r), true));
  }
  return Status::Ok();
}

}  // namespace khls::segmenter::internal
