#include "packet_reader.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "codec_string.h"
#include "khls/segmenter.h"
#include "read_watchdog.h"

namespace khls::segmenter::internal {
namespace {

// Read-ahead bounds: the first packet of a late stream is waited for during at
// most this much media, this many packets or bytes.
constexpr int64_t kReadAheadMaxSpan = 10 * kClock;
constexpr size_t kReadAheadMaxPackets = 20000;
constexpr int64_t kReadAheadMaxBytes = 64 << 20;
// Video packets skipped while waiting for the first keyframe before giving up.
constexpr int64_t kMaxSkippedBeforeKey = 20000;
// In formats with timestamp discontinuities (MPEG-TS, FLV, ...), a dts this far
// from the previous packet's is a discontinuity, not a gap (ffmpeg's CLI:
// -dts_delta_threshold 10).
constexpr int64_t kDiscontinuityThreshold = 10 * kClock;

int64_t To90k(int64_t ts, AVRational tb) {
  return ts == AV_NOPTS_VALUE ? AV_NOPTS_VALUE : av_rescale_q(ts, tb, kTimeBase90k);
}

int64_t FallbackDuration(const AVStream& st) {
  const AVCodecParameters& par = *st.codecpar;
  if (par.codec_type == AVMEDIA_TYPE_VIDEO) {
    AVRational rate = st.avg_frame_rate.num > 0 && st.avg_frame_rate.den > 0 ? st.avg_frame_rate : st.r_frame_rate;
    if (rate.num > 0 && rate.den > 0) return av_rescale(kClock, rate.den, rate.num);
    return 0;
  }
  const int samples = AudioFrameSamples(par);
  if (samples > 0 && par.sample_rate > 0) return av_rescale(samples, kClock, par.sample_rate);
  return 0;
}

/// Errors with which a live protocol tells that its peer went away or its
/// connection timed out (rw_timeout, a reset, a closed socket), rather than that
/// the stream is damaged.
bool IsConnectionEnd(int err) {
  return err == AVERROR(EIO) || err == AVERROR(ECONNRESET) || err == AVERROR(ECONNABORTED) || err == AVERROR(EPIPE) ||
         err == AVERROR(ETIMEDOUT) || err == AVERROR(ENOTCONN) || err == AVERROR(ESHUTDOWN);
}

}  // namespace

PacketReader::PacketReader(AVFormatContext* ic, std::vector<int> streams, std::string url)
    : ic_(ic),
      watchdog_(ReadWatchdog::Of(*ic)),
      selected_(std::move(streams)),
      output_of_(ic->nb_streams, -1),
      url_(std::move(url)),
      discontinuities_((ic->iformat->flags & AVFMT_TS_DISCONT) != 0) {
  for (size_t out = 0; out < selected_.size(); ++out) {
    const AVStream& st = *ic_->streams[selected_[out]];
    output_of_[selected_[out]] = static_cast<int>(out);
    StreamState s;
    s.type = st.codecpar->codec_type;
    s.time_base = st.time_base;
    s.fallback_duration = FallbackDuration(st);
    if (s.type == AVMEDIA_TYPE_VIDEO) s.video_delay = std::max(st.codecpar->video_delay, 0);
    // Codecs whose every frame decodes to the same number of samples, as probed
    // by decoding (E-AC-3 frames may hold 1 to 6 blocks: not checked).
    const AVCodecParameters& par = *st.codecpar;
    if ((par.codec_id == AV_CODEC_ID_AAC || par.codec_id == AV_CODEC_ID_MP3 || par.codec_id == AV_CODEC_ID_AC3) &&
        par.frame_size > 0 && par.sample_rate > 0)
      s.frame_duration = av_rescale(par.frame_size, kClock, par.sample_rate);
    if (s.type == AVMEDIA_TYPE_VIDEO && video_ < 0) video_ = static_cast<int>(out);
    streams_.push_back(s);
  }
}

Result<bool> PacketReader::EndOfInput(int err) {
  if (watchdog_ != nullptr && watchdog_->stopped()) return Error(ErrorCode::kCancelled, "read '{}': interrupted", url_);
  const bool live = watchdog_ != nullptr && watchdog_->live();
  // A stalled read may come back as any error, the end of file included.
  if (live && watchdog_->stalled()) {
    if (packets_read_ == 0) {
      return Error(ErrorCode::kInvalidInput, "live input '{}' sent no packet for {:g} s (the stall timeout)", url_,
                   watchdog_->stall_timeout());
    }
    end_ = InputEnd::kStalled;
  } else if (err == AVERROR_EOF) {
    end_ = InputEnd::kEndOfInput;
  } else if (live && packets_read_ > 0 && IsConnectionEnd(err)) {
    // The feed went away after it was read: its end, not damage.
    end_ = InputEnd::kConnectionEnded;
    end_detail_ = AvErrorString(err);
  } else {
    return Error(ErrorCode::kInvalidInput, "read '{}': {}", url_, AvErrorString(err));
  }
  ended_ = true;
  return false;
}

Result<bool> PacketReader::ReadRaw(AVPacket* pkt) {
  for (;;) {
    // Once ended, never read again: a stalled live input would wait out the timeout once more.
    if (ended_) return false;
    if (watchdog_ != nullptr) watchdog_->Arm();
    const int err = av_read_frame(ic_, pkt);
    if (err < 0) return EndOfInput(err);
    ++packets_read_;
    const int out = pkt->stream_index >= 0 && pkt->stream_index < static_cast<int>(output_of_.size())
                        ? output_of_[pkt->stream_index]
                        : -1;
    // A decoder cannot start before a keyframe: every segment starts with one.
    const bool before_first_key = out >= 0 && out == video_ && !video_key_seen_ && (pkt->flags & AV_PKT_FLAG_KEY) == 0;
    if (out < 0 || before_first_key) {
      av_packet_unref(pkt);
      if (before_first_key && ++skipped_before_key_ > kMaxSkippedBeforeKey) {
        return Error(ErrorCode::kInvalidInput, "no video keyframe in the first {} video packets of '{}'",
                     kMaxSkippedBeforeKey, url_);
      }
      continue;
    }
    if (out == video_) video_key_seen_ = true;
    const AVRational tb = streams_[out].time_base;
    pkt->stream_index = out;
    pkt->pts = To90k(pkt->pts, tb);
    pkt->dts = To90k(pkt->dts, tb);
    pkt->duration = pkt->duration > 0 ? av_rescale_q(pkt->duration, tb, kTimeBase90k) : 0;
    pkt->pos = -1;
    MakeUpDts(streams_[out], pkt);
    return true;
  }
}

void PacketReader::MakeUpDts(StreamState& st, AVPacket* pkt) {
  if (st.type != AVMEDIA_TYPE_VIDEO || st.real_dts_seen) return;
  if (pkt->dts != AV_NOPTS_VALUE) {
    st.real_dts_seen = true;
    return;
  }
  // Matroska (and any container that stores only pts) gives the first pictures
  // of a stream with B-frames no dts: libavformat derives dts only once it has
  // seen `video_delay` pictures. As ffmpeg's CLI does, the decode clock starts
  // video_delay frames before the first picture's pts and advances a frame at a
  // time; a dts never passes its pts.
  if (pkt->pts == AV_NOPTS_VALUE || st.fallback_duration <= 0) return;
  st.made_up_dts = st.made_up_dts == AV_NOPTS_VALUE ? pkt->pts - st.video_delay * st.fallback_duration
                                                    : st.made_up_dts + st.fallback_duration;
  pkt->dts = std::min(st.made_up_dts, pkt->pts);
}

bool PacketReader::EndsBeforeFirstPicture(const AVPacket& pkt) const {
  if (audio_floor_raw_ == AV_NOPTS_VALUE || !IsAudio(pkt.stream_index)) return false;
  const int64_t pts = pkt.pts != AV_NOPTS_VALUE ? pkt.pts : pkt.dts;
  if (pts == AV_NOPTS_VALUE) return false;
  const int64_t duration = pkt.duration > 0 ? pkt.duration : streams_[pkt.stream_index].fallback_duration;
  return pts + duration <= audio_floor_raw_;
}

bool PacketReader::Normalize(AVPacket* pkt) {
  StreamState& st = streams_[pkt->stream_index];
  if (IsSubtitle(pkt->stream_index)) {
    // Sparse: no part in discontinuity detection, no dts repair; a cue that ends
    // before the timeline starts is dropped.
    const int64_t ts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
    if (ts == AV_NOPTS_VALUE) return false;
    pkt->pts = pkt->dts = ts - offset_;
    if (pkt->pts + pkt->duration <= 0) return false;
    if (pkt->pts < 0) {
      pkt->duration += pkt->pts;
      pkt->pts = pkt->dts = 0;
    }
    return true;
  }
  if (const int64_t ts = pkt->dts != AV_NOPTS_VALUE ? pkt->dts : pkt->pts;
      discontinuities_ && ts != AV_NOPTS_VALUE && last_dts_ != AV_NOPTS_VALUE) {
    const int64_t delta = ts - offset_ - last_dts_;
    if (delta > kDiscontinuityThreshold || delta < -kDiscontinuityThreshold) {
      // Take the jump out of the timeline: this packet lands where the stream
      // that got furthest ends, and everything after it moves by the same
      // amount, so no stream overlaps itself (the others may get a small gap).
      int64_t resume = last_dts_ + 1;
      for (const StreamState& s : streams_) {
        if (s.type != AVMEDIA_TYPE_SUBTITLE && s.last_dts != AV_NOPTS_VALUE)
          resume = std::max(resume, s.last_dts + s.last_duration);
      }
      offset_ = ts - resume;
    }
  }
  int64_t pts = pkt->pts == AV_NOPTS_VALUE ? AV_NOPTS_VALUE : pkt->pts - offset_;
  int64_t dts = pkt->dts == AV_NOPTS_VALUE ? AV_NOPTS_VALUE : pkt->dts - offset_;
  const int64_t predicted = st.last_dts == AV_NOPTS_VALUE ? AV_NOPTS_VALUE : st.last_dts + st.last_duration;
  if (dts == AV_NOPTS_VALUE) {
    // No dts: continue the stream's own clock, never past the packet's pts.
    dts = predicted == AV_NOPTS_VALUE ? pts : (pts == AV_NOPTS_VALUE ? predicted : std::min(pts, predicted));
  }
  if (dts == AV_NOPTS_VALUE) return false;  // nothing to place it with
  if (pts == AV_NOPTS_VALUE) pts = dts;
  const bool audio = IsAudio(pkt->stream_index);
  // An audio frame always decodes to a whole frame's samples, and a player puts
  // the frames of one PES back to back: a frame that starts inside its
  // predecessor (the trimmed last frame of a clip, at the joins of a
  // concatenated file) would run the timestamps backwards. Drop it; a rounding
  // difference of a few ticks is no overlap.
  if (audio && st.frame_duration > 0 && st.last_dts != AV_NOPTS_VALUE &&
      dts < st.last_dts + st.frame_duration - (st.frame_duration / 32 + 2)) {
    ++dropped_overlaps_;
    return false;
  }
  // The MPEG-TS muxer needs strictly increasing dts per stream and pts >= dts.
  if (st.last_dts != AV_NOPTS_VALUE && dts <= st.last_dts) dts = st.last_dts + 1;
  if (pts < dts) pts = dts;
  // Earlier than the output timeline can hold (a stream that started long after
  // the read-ahead with much older timestamps).
  if (dts < 0) return false;
  const int64_t duration = pkt->duration > 0 ? pkt->duration : st.fallback_duration;
  pkt->pts = pts;
  pkt->dts = dts;
  pkt->duration = duration;
  st.last_dts = dts;
  st.last_duration = duration;
  st.end = std::max(st.end == AV_NOPTS_VALUE ? 0 : st.end, pts + duration);
  last_dts_ = dts;
  title_end_ = std::max(title_end_, pts + duration);
  return true;
}

Status PacketReader::Start(std::optional<int64_t> first_picture) {
  const size_t n = streams_.size();
  size_t wanted = 0;
  for (size_t i = 0; i < n; ++i) wanted += !IsSubtitle(static_cast<int>(i));
  std::vector<bool> seen(n, false);
  size_t seen_count = 0;
  int64_t min_ts = std::numeric_limits<int64_t>::max();
  int64_t max_ts = std::numeric_limits<int64_t>::min();
  int64_t bytes = 0;
  std::deque<PacketPtr> raw;
  while (seen_count < wanted && raw.size() < kReadAheadMaxPackets && bytes < kReadAheadMaxBytes &&
         (seen_count == 0 || max_ts - min_ts < kReadAheadMaxSpan)) {
    PacketPtr pkt(av_packet_alloc());
    if (!pkt) return Error(ErrorCode::kInternal, "read '{}': out of memory", url_);
    KHLS_ASSIGN_OR_RETURN(bool got, ReadRaw(pkt.get()));
    if (!got) break;
    const int64_t ts = pkt->dts != AV_NOPTS_VALUE ? pkt->dts : pkt->pts;
    if (ts != AV_NOPTS_VALUE && !IsSubtitle(pkt->stream_index)) {
      min_ts = std::min(min_ts, ts);
      max_ts = std::max(max_ts, ts);
      if (!seen[pkt->stream_index]) {
        seen[pkt->stream_index] = true;
        ++seen_count;
      }
    }
    bytes += pkt->size;
    raw.push_back(std::move(pkt));
  }
  auto media = [&](const PacketPtr& p) { return !IsSubtitle(p->stream_index); };
  if (std::none_of(raw.begin(), raw.end(), media)) {
    return Error(ErrorCode::kInvalidInput, "'{}' has no {} packets", url_,
                 video_ >= 0 ? "video keyframe or audio" : "audio");
  }
  if (seen_count == 0) return Error(ErrorCode::kInvalidInput, "'{}' has no timestamps", url_);

  // Audio and video start together: audio that ends before the first picture is
  // shown (encoder priming, a capture that starts early) is dropped, so all tracks
  // begin within one audio frame. Players that need every track buffered at the
  // start (hls.js) otherwise see a hole and jump it.
  int64_t first_picture_raw = std::numeric_limits<int64_t>::max();
  for (const PacketPtr& pkt : raw)
    if (pkt->stream_index == video_ && pkt->pts != AV_NOPTS_VALUE)
      first_picture_raw = std::min(first_picture_raw, pkt->pts);
  if (video_ >= 0 && first_picture_raw != std::numeric_limits<int64_t>::max()) {
    audio_floor_raw_ = first_picture_raw;
    std::erase_if(raw, [&](const PacketPtr& pkt) { return EndsBeforeFirstPicture(*pkt); });
    // Read on to the frame of every audio stream that overlaps the first picture: it starts the timeline.
    auto missing_audio = [&] {
      for (size_t i = 0; i < n; ++i) {
        if (!IsAudio(static_cast<int>(i)) || !seen[i]) continue;
        if (std::none_of(raw.begin(), raw.end(), [&](const PacketPtr& p) { return p->stream_index == static_cast<int>(i); }))
          return true;
      }
      return false;
    };
    while (missing_audio() && raw.size() < kReadAheadMaxPackets && bytes < kReadAheadMaxBytes) {
      PacketPtr pkt(av_packet_alloc());
      if (!pkt) return Error(ErrorCode::kInternal, "read '{}': out of memory", url_);
      KHLS_ASSIGN_OR_RETURN(bool got, ReadRaw(pkt.get()));
      if (!got) break;
      bytes += pkt->size;
      if (!EndsBeforeFirstPicture(*pkt)) raw.push_back(std::move(pkt));
    }
  }
  // The earliest presented frame starts the output timeline at kOutputStartPts
  // (dts may be earlier with B-frames, never below zero).
  int64_t min_pts = std::numeric_limits<int64_t>::max(), min_dts = std::numeric_limits<int64_t>::max();
  for (const PacketPtr& pkt : raw) {
    if (!media(pkt)) continue;
    const int64_t dts = pkt->dts != AV_NOPTS_VALUE ? pkt->dts : pkt->pts;
    const int64_t pts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : dts;
    if (dts == AV_NOPTS_VALUE) continue;
    min_pts = std::min(min_pts, pts);
    min_dts = std::min(min_dts, dts);
  }
  if (min_pts == std::numeric_limits<int64_t>::max()) min_pts = min_dts = min_ts;
  offset_ = std::min(min_pts - kOutputStartPts, min_dts);
  if (first_picture && first_picture_raw != std::numeric_limits<int64_t>::max())
    offset_ = std::min(first_picture_raw - *first_picture, min_dts);
  title_start_ = std::numeric_limits<int64_t>::max();
  first_picture_ = std::numeric_limits<int64_t>::max();
  int64_t first_dts = std::numeric_limits<int64_t>::max();
  for (PacketPtr& pkt : raw) {
    if (!Normalize(pkt.get())) continue;
    if (media(pkt)) {
      title_start_ = std::min(title_start_, pkt->pts);
      first_dts = std::min(first_dts, pkt->dts);
      if (pkt->stream_index == video_) first_picture_ = std::min(first_picture_, pkt->pts);
    }
    ahead_.push_back(std::move(pkt));
  }
  if (title_start_ == std::numeric_limits<int64_t>::max())
    return Error(ErrorCode::kInvalidInput, "'{}' has no usable timestamps", url_);
  if (first_picture_ == std::numeric_limits<int64_t>::max()) first_picture_ = title_start_;
  decode_lead_ = std::max<int64_t>(0, title_start_ - first_dts);
  return Status::Ok();
}

Result<bool> PacketReader::Next(AVPacket* pkt) {
  av_packet_unref(pkt);
  if (!ahead_.empty()) {
    av_packet_move_ref(pkt, ahead_.front().get());
    ahead_.pop_front();
    return true;
  }
  for (;;) {
    KHLS_ASSIGN_OR_RETURN(bool got, ReadRaw(pkt));
    if (!got) return false;
    if (!EndsBeforeFirstPicture(*pkt) && Normalize(pkt)) return true;
    av_packet_unref(pkt);
  }
}

}  // namespace khls::segmenter::internal
