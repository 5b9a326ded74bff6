#include "khls/recut.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "av_handles.h"
#include "codec_string.h"
#include "khls/log.h"
#include "memory_input.h"
#include "ts_writer.h"
#include "webvtt.h"

namespace khls::segmenter {
namespace {

using internal::AvErrorString;
using internal::Cue;
using internal::kTimeBase90k;
using internal::kTsPacketSize;
using internal::PacketPtr;
using internal::TsWriter;

constexpr int64_t kNoTime = AV_NOPTS_VALUE;
constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// ---- WebVTT ------------------------------------------------------------------

/// "hh:mm:ss.mmm" or "mm:ss.mmm" in milliseconds; nothing when malformed.
std::optional<int64_t> ParseVttTime(std::string_view s) {
  int64_t fields[3] = {0, 0, 0};
  int count = 0;
  size_t pos = 0;
  for (;;) {
    const size_t end = s.find_first_of(":.", pos);
    if (end == std::string_view::npos || count == 3) return std::nullopt;
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data() + pos, s.data() + end, v);
    if (ec != std::errc() || p != s.data() + end || end == pos) return std::nullopt;
    fields[count++] = v;
    pos = end + 1;
    if (s[end] == '.') break;
  }
  const std::string_view frac = s.substr(pos);
  int64_t ms = 0;
  const auto [p, ec] = std::from_chars(frac.data(), frac.data() + frac.size(), ms);
  if (ec != std::errc() || p != frac.data() + frac.size() || frac.size() != 3) return std::nullopt;
  if (count < 2) return std::nullopt;
  const int64_t hours = count == 3 ? fields[0] : 0;
  const int64_t minutes = fields[count - 2], seconds = fields[count - 1];
  if (minutes > 59 || seconds > 59 || hours < 0 || minutes < 0 || seconds < 0) return std::nullopt;
  return ((hours * 60 + minutes) * 60 + seconds) * 1000 + ms;
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// The cues of one WebVTT segment on the 90 kHz MPEG-TS timeline: cue times are
/// local, X-TIMESTAMP-MAP=MPEGTS:m,LOCAL:l says local time l is MPEG-TS time m
/// (RFC 8216 3.5; no map: local time = MPEG-TS time). Cue settings, identifiers,
/// NOTE, STYLE and REGION blocks are dropped (the ingest writes none).
Result<std::vector<Cue>> ParseVtt(std::string_view text, const std::string& what) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos <= text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.ends_with('\r')) line.remove_suffix(1);
    lines.push_back(line);
    pos = end + 1;
  }
  if (lines.empty() || !lines[0].starts_with("WEBVTT") ||
      (lines[0].size() > 6 && lines[0][6] != ' ' && lines[0][6] != '\t')) {
    return Error(ErrorCode::kInvalidInput, "{}: not WebVTT (no WEBVTT line at the start)", what);
  }
  int64_t mpegts = 0, local_ms = 0;
  size_t i = 1;
  for (; i < lines.size() && !lines[i].empty(); ++i) {
    std::string_view line = lines[i];
    if (!line.starts_with("X-TIMESTAMP-MAP=")) continue;
    line.remove_prefix(16);
    bool have_mpegts = false, have_local = false;
    while (!line.empty()) {
      const size_t comma = line.find(',');
      const std::string_view item = line.substr(0, comma);
      line = comma == std::string_view::npos ? std::string_view() : line.substr(comma + 1);
      if (item.starts_with("MPEGTS:")) {
        const auto [p, ec] = std::from_chars(item.data() + 7, item.data() + item.size(), mpegts);
        have_mpegts = ec == std::errc() && p == item.data() + item.size();
      } else if (item.starts_with("LOCAL:")) {
        const auto t = ParseVttTime(item.substr(6));
        have_local = t.has_value();
        if (t) local_ms = *t;
      }
    }
    if (!have_mpegts || !have_local)
      return Error(ErrorCode::kInvalidInput, "{}: line {}: bad X-TIMESTAMP-MAP '{}'", what, i + 1, lines[i]);
  }
  std::vector<Cue> cues;
  while (i < lines.size()) {
    while (i < lines.size() && lines[i].empty()) ++i;
    const size_t block = i;
    while (i < lines.size() && !lines[i].empty()) ++i;
    // A cue block: an optional identifier line, the timing line, then its text.
    size_t timing = block;
    if (timing < i && lines[timing].find("-->") == std::string_view::npos) ++timing;
    if (timing >= i || lines[timing].find("-->") == std::string_view::npos) continue;  // NOTE, STYLE, REGION
    const std::string_view line = lines[timing];
    const size_t arrow = line.find("-->");
    std::string_view rest = TrimSpaces(line.substr(arrow + 3));
    rest = rest.substr(0, rest.find_first_of(" \t"));  // cue settings follow the end time
    const auto from = ParseVttTime(TrimSpaces(line.substr(0, arrow)));
    const auto to = ParseVttTime(rest);
    if (!from || !to)
      return Error(ErrorCode::kInvalidInput, "{}: line {}: bad cue timing '{}'", what, timing + 1, line);
    Cue cue;
    cue.start = mpegts + (*from - local_ms) * 90;
    cue.end = mpegts + (*to - local_ms) * 90;
    for (size_t t = timing + 1; t < i; ++t) {
      if (t > timing + 1) cue.text += '\n';
      cue.text += lines[t];
    }
    cues.push_back(std::move(cue));
  }
  return cues;
}

}  // namespace

// How it runs: Push() demuxes (MPEG-TS) or parses (WebVTT) one old segment into
// its rendition's packet queue or cue list, then Pump() does all the input now
// allows. DecideCuts() finds the reference's next cut (known once the reference
// has been read past cut + target, or at the end) and writes the reference's
// packets up to it; the other renditions follow the known cuts: a video variant
// ends its part at its keyframe at the cut, an audio frame is placed once no cut
// still unknown can come before it (NextCutFloor), a subtitle part is rendered
// once every old segment it overlaps has arrived. A part's duration is known with
// the next part's start (audio and variants: the next part's first frame). Pop()
// hands out the groups that are complete in every rendition.
struct Recutter::Impl {
  /// A finished new part, waiting for the rest of its group.
  struct Done {
    int64_t start = 0;
    int64_t duration = -1;  ///< -1 until the next part's start is known
    std::vector<uint8_t> data;
  };

  struct Rendition {
    RecutKind kind = RecutKind::kTs;
    std::string name;  ///< "rendition 2", for messages
    uint32_t pushed = 0;  ///< old segments received
    std::optional<int64_t> recorded_start;  ///< OldPartTiming of its old part 0
    std::optional<int64_t> recorded_end;    ///< of its last old part, when that came with a timing

    // kTs
    bool has_stream = false;  ///< its stream is known (a first non-empty old segment came)
    bool video = false;
    AVCodecID codec = AV_CODEC_ID_NONE;
    int64_t frame_duration = 0;  ///< 90 kHz, for packets libavformat gives no duration; 0 unknown
    int frame_samples = 0;       ///< audio whose every frame has this many samples (AAC, MP3, AC-3); 0 other
    int sample_rate = 0;
    int64_t anchor_pts = kNoTime;  ///< audio: pts of the last frame that had one in its PES header
    int64_t frames_since_anchor = 0;
    std::unique_ptr<TsWriter> writer;
    std::deque<PacketPtr> queue;     ///< demuxed, not yet written, decode order
    std::vector<int64_t> old_starts;  ///< pts of the first packet of each old segment (kNoTime: empty)
    int64_t first_pts = kNoTime;
    int64_t media_end = kNoTime;  ///< largest pts + duration
    int64_t last_dts = kNoTime;

    // kWebVtt
    std::vector<Cue> cues;      ///< every cue read that may still overlap a new part, by start (stable)
    std::vector<Cue> previous;  ///< the previous old segment's cues: a cue spanning the old cut is in both

    // The new part being made.
    uint32_t seg = 0;
    bool wrote = false;
    int64_t seg_start = 0;
    bool closed = false;
    std::map<uint32_t, Done> done;
  };

  std::vector<Rendition> r;
  int64_t target = 0;
  std::string what = "re-cut";  ///< prefix of log lines
  int ref = -1;
  int64_t tolerance = kClock / 1000;
  std::vector<int64_t> cuts;  ///< cuts[k]: start of new group k (cuts[0]: the title's start)
  bool all_cut = false;        ///< every cut is known (after Finish)
  bool finished = false;
  bool warned_long_gop = false;
  bool warned_empty = false;
  uint32_t next_pop = 0;
  Status error;
  PacketPtr pkt{av_packet_alloc()};

  std::string At(int64_t pts) const {
    const int64_t zero = cuts.empty() ? 0 : cuts[0];
    return fmt::format("{:.3f} s", ToSeconds(pts - zero));
  }
  bool Candidate(const AVPacket& p) const { return !r[ref].video || (p.flags & AV_PKT_FLAG_KEY) != 0; }
  bool OwnStart(size_t i) const { return static_cast<int>(i) != ref && r[i].kind == RecutKind::kTs; }

  // ---- input ------------------------------------------------------------------

  Status PushTs(Rendition& x, std::span<const uint8_t> data) {
    const std::string what = fmt::format("re-cut {} old segment {}", x.name, x.pushed);
    if (data.empty()) {  // an audio part the ingest had nothing for
      x.old_starts.push_back(kNoTime);
      return Status::Ok();
    }
    if (data.size() % kTsPacketSize != 0 || data[0] != 0x47)
      return Error(ErrorCode::kInvalidInput, "{}: not MPEG-TS ({} bytes, {})", what, data.size(),
                   data[0] != 0x47 ? "no sync byte at the start" : "not whole 188-byte packets");
    // The packets as the PES headers have them: libavformat's guesses for what they lack (the pts of the
    // second and later audio frames of a PES, durations) are filled in below, the same way in every segment.
    KHLS_ASSIGN_OR_RETURN(std::unique_ptr<internal::MemoryTsInput> input,
                          internal::MemoryTsInput::Open(data, AVFMT_FLAG_NOFILLIN, what));
    AVFormatContext* ic = input->get();
    int err = 0;
    if (!x.has_stream) {
      // The stream's parameters (for the muxer, as the ingest's) need a look at its frames.
      err = avformat_find_stream_info(ic, nullptr);
      if (err < 0)
        return Error(ErrorCode::kInvalidInput, "{}: no stream parameters found in it: {}", what, AvErrorString(err));
    }
    int index = -1, count = 0;
    for (unsigned s = 0; s < ic->nb_streams; ++s) {
      const AVMediaType type = ic->streams[s]->codecpar->codec_type;
      if (type != AVMEDIA_TYPE_VIDEO && type != AVMEDIA_TYPE_AUDIO) continue;
      ++count;
      index = static_cast<int>(s);
    }
    if (count != 1)
      return Error(ErrorCode::kInvalidInput, "{}: {} audio/video streams in its PMT, a rendition carries one", what,
                   count);
    AVStream* st = ic->streams[index];
    if (!x.has_stream) {
      x.has_stream = true;
      x.video = st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO;
      x.codec = st->codecpar->codec_id;
      if (x.video) {
        const AVRational rate = internal::VideoFrameRate(*st);
        if (rate.num > 0) x.frame_duration = av_rescale(kClock, rate.den, rate.num);
      } else {
        const AVCodecParameters& par = *st->codecpar;
        const bool fixed = par.codec_id == AV_CODEC_ID_AAC || par.codec_id == AV_CODEC_ID_MP3 ||
                           par.codec_id == AV_CODEC_ID_AC3;
        const int samples = internal::AudioFrameSamples(par);
        if (samples > 0 && par.sample_rate > 0) {
          x.frame_duration = av_rescale(samples, kClock, par.sample_rate);
          if (fixed) x.frame_samples = samples, x.sample_rate = par.sample_rate;
        }
      }
      const AVDictionaryEntry* lang = av_dict_get(st->metadata, "language", nullptr, 0);
      KHLS_ASSIGN_OR_RETURN(x.writer, TsWriter::Create({st}, {lang != nullptr ? lang->value : ""}, x.name));
      KHLS_RETURN_IF_ERROR(x.writer->BeginSegment());
    } else if (st->codecpar->codec_id != x.codec) {
      return Error(ErrorCode::kInvalidInput, "{}: its codec changed from {} to {}", what, avcodec_get_name(x.codec),
                   avcodec_get_name(st->codecpar->codec_id));
    }
    for (unsigned s = 0; s < ic->nb_streams; ++s)
      if (static_cast<int>(s) != index) ic->streams[s]->discard = AVDISCARD_ALL;

    int64_t first = kNoTime;
    for (;;) {
      err = av_read_frame(ic, pkt.get());
      if (err == AVERROR_EOF) break;
      if (err < 0) return Error(ErrorCode::kInvalidInput, "{}: {}", what, AvErrorString(err));
      if (pkt->stream_index != index) {
        av_packet_unref(pkt.get());
        continue;
      }
      const AVRational tb = st->time_base;
      int64_t pts = pkt->pts == kNoTime ? kNoTime : av_rescale_q(pkt->pts, tb, kTimeBase90k);
      int64_t dts = pkt->dts == kNoTime ? kNoTime : av_rescale_q(pkt->dts, tb, kTimeBase90k);
      int64_t duration = pkt->duration > 0 ? av_rescale_q(pkt->duration, tb, kTimeBase90k) : x.frame_duration;
      if (!x.video && x.frame_samples > 0) duration = x.frame_duration;
      if (pts == kNoTime) pts = dts;
      if (pts == kNoTime && !x.video && first != kNoTime) {
        // An audio frame after the first of its PES: it follows the PES's first frame by whole frames.
        ++x.frames_since_anchor;
        pts = x.frame_samples > 0
                  ? x.anchor_pts + av_rescale(x.frames_since_anchor * x.frame_samples, kClock, x.sample_rate)
                  : x.queue.back()->pts + x.queue.back()->duration;
      } else if (!x.video) {
        x.anchor_pts = pts;
        x.frames_since_anchor = 0;
      }
      if (dts == kNoTime) dts = pts;
      if (pts == kNoTime)
        return Error(ErrorCode::kInvalidInput, "{}: a {} packet without timestamps", what, x.video ? "video" : "audio");
      if (x.last_dts != kNoTime && dts <= x.last_dts)
        return Error(ErrorCode::kInvalidInput,
                     "{}: its timestamps go back from {:.3f} s to {:.3f} s (segments pushed out of order?)", what,
                     ToSeconds(x.last_dts), ToSeconds(dts));
      pkt->pts = pts;
      pkt->dts = dts;
      pkt->duration = duration;
      pkt->stream_index = 0;
      pkt->pos = -1;
      if (!x.video) pkt->flags |= AV_PKT_FLAG_KEY;  // every audio frame stands alone (as source demuxers say)
      x.last_dts = dts;
      if (first == kNoTime) first = pts;
      x.first_pts = x.first_pts == kNoTime ? pts : std::min(x.first_pts, pts);
      x.media_end = std::max(x.media_end == kNoTime ? pts : x.media_end, pts + pkt->duration);
      PacketPtr queued(av_packet_alloc());
      if (!queued) return Error(ErrorCode::kInternal, "{}: out of memory", what);
      av_packet_move_ref(queued.get(), pkt.get());
      x.queue.push_back(std::move(queued));
    }
    x.old_starts.push_back(first);
    return Status::Ok();
  }

  Status PushVtt(Rendition& x, std::span<const uint8_t> data) {
    const std::string what = fmt::format("re-cut {} old segment {}", x.name, x.pushed);
    KHLS_ASSIGN_OR_RETURN(std::vector<Cue> parsed,
                          ParseVtt(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()), what));
    // A cue that overlaps an old cut is in the segments on both sides: keep one.
    std::vector<bool> matched(x.previous.size(), false);
    for (const Cue& cue : parsed) {
      bool repeat = false;
      for (size_t p = 0; p < x.previous.size() && !repeat; ++p) {
        if (!matched[p] && x.previous[p] == cue) matched[p] = repeat = true;
      }
      if (repeat) continue;
      auto at = std::upper_bound(x.cues.begin(), x.cues.end(), cue.start,
                                 [](int64_t start, const Cue& c) { return start < c.start; });
      x.cues.insert(at, cue);
    }
    x.previous = std::move(parsed);
    return Status::Ok();
  }

  // ---- cutting ------------------------------------------------------------------

  int64_t End(size_t i) const {
    const Rendition& x = r[i];
    if (x.recorded_end) return *x.recorded_end;
    if (x.kind == RecutKind::kTs && x.media_end != kNoTime) return x.media_end;
    // Subtitles run to the end of the reference input's media: the reference and the audio.
    int64_t end = kNoTime;
    for (size_t j = 0; j < r.size(); ++j) {
      if (r[j].kind != RecutKind::kTs || (static_cast<int>(j) != ref && r[j].video)) continue;
      const int64_t e = r[j].recorded_end ? *r[j].recorded_end : r[j].media_end;
      if (e != kNoTime) end = std::max(end == kNoTime ? e : end, e);
    }
    return end == kNoTime ? cuts.back() + 1 : end;
  }

  /// Once every kTs rendition has its first old segment: the reference, the tolerance, the title's start.
  bool ReadyToCut() {
    if (ref >= 0) return true;
    for (const Rendition& x : r)
      if (x.kind == RecutKind::kTs && x.pushed == 0) return false;
    int first_ts = -1;
    int64_t frame = 0;  // the shortest video frame
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i].kind != RecutKind::kTs) continue;
      if (first_ts < 0) first_ts = static_cast<int>(i);
      if (r[i].video && ref < 0) ref = static_cast<int>(i);
      if (r[i].video && r[i].frame_duration > 0)
        frame = frame == 0 ? r[i].frame_duration : std::min(frame, r[i].frame_duration);
    }
    if (ref < 0) ref = first_ts;
    tolerance = frame > 0 ? std::max<int64_t>(frame / 4, 2) : kClock / 1000;  // as the ingest's
    // The title starts where the ingest's reference input did: at its earliest frame (audio may lead).
    int64_t start = r[ref].recorded_start.value_or(kNoTime);
    if (start == kNoTime) {
      for (size_t i = 0; i < r.size(); ++i) {
        const Rendition& x = r[i];
        const bool of_reference_input = static_cast<int>(i) == ref || (x.kind == RecutKind::kTs && !x.video);
        if (of_reference_input && x.first_pts != kNoTime)
          start = start == kNoTime ? x.first_pts : std::min(start, x.first_pts);
      }
    }
    cuts.push_back(start == kNoTime ? 0 : start);
    return true;
  }

  /// The earliest pts the next cut can have (kNever when every cut is known): a
  /// pending keyframe of the reference may become it, or one not yet read.
  int64_t NextCutFloor() const {
    if (all_cut) return kNever;
    const Rendition& x = r[ref];
    int64_t floor = x.last_dts == kNoTime ? cuts.back() + 1 : x.last_dts + 1;
    for (size_t i = 1; i < x.queue.size(); ++i) {
      const AVPacket& p = *x.queue[i];
      if (Candidate(p) && p.pts > cuts.back()) return std::min(floor, p.pts);
    }
    return floor;
  }

  void WarnLongGop(int64_t from, int64_t length) {
    if (warned_long_gop) return;
    warned_long_gop = true;
    log::Warn("{}: the GOP at {} lasts {:.3f} s, longer than the {:.3f} s target: it is a segment of its own (said "
              "once per title)",
              what, At(from), ToSeconds(length), ToSeconds(target));
  }

  /// Cuts the reference wherever its packets say where the next cut is.
  Status DecideCuts() {
    Rendition& x = r[ref];
    while (!all_cut) {
      const int64_t c = cuts.back();
      const int64_t limit = c + target;
      std::optional<int64_t> best, after;
      bool past = false;
      for (size_t i = 0; i < x.queue.size(); ++i) {
        const AVPacket& p = *x.queue[i];
        if (p.dts > limit) past = true;
        // The first packet opens the part being made: not a cut.
        if (i == 0 || !Candidate(p) || p.pts <= c) continue;
        if (p.pts <= limit) {
          best = p.pts;
        } else {
          after = p.pts;
          break;
        }
      }
      int64_t cut = 0;
      if (best && (past || after)) {
        cut = *best;
      } else if (!best && after) {
        WarnLongGop(c, *after - c);
        cut = *after;
      } else if (finished) {
        const int64_t end = End(static_cast<size_t>(ref));
        if (end - c <= target || !best) {
          if (end - c > target) WarnLongGop(c, end - c);
          all_cut = true;
          break;
        }
        cut = *best;
      } else {
        break;  // the reference has not been read far enough
      }
      cuts.push_back(cut);
      while (!(x.wrote && Candidate(*x.queue.front()) && x.queue.front()->pts == cut))
        KHLS_RETURN_IF_ERROR(Write(static_cast<size_t>(ref), x.queue));
      KHLS_RETURN_IF_ERROR(EndPart(static_cast<size_t>(ref), false));
    }
    return Status::Ok();
  }

  /// Writes the front packet of `queue` into rendition i's current part.
  Status Write(size_t i, std::deque<PacketPtr>& queue) {
    Rendition& x = r[i];
    AVPacket* p = queue.front().get();
    if (!x.wrote) {
      x.wrote = true;
      x.seg_start = p->pts;
      if (OwnStart(i) && x.seg > 0) {
        Done& prev = x.done[x.seg - 1];
        if (prev.duration < 0) prev.duration = std::max<int64_t>(p->pts - prev.start, 1);
      }
    }
    Status st = x.writer->Write(p, /*immediate=*/true);
    queue.pop_front();
    return st;
  }

  /// Ends rendition i's current part; `last`: its final one.
  Status EndPart(size_t i, bool last) {
    Rendition& x = r[i];
    const uint32_t seg = x.seg;
    const bool own = OwnStart(i);
    Done d;
    d.start = own && x.wrote ? x.seg_start : cuts[seg];
    if (x.kind == RecutKind::kTs) {
      if (!x.wrote && !warned_empty && static_cast<int>(i) != ref) {
        warned_empty = true;
        log::Warn("{}: {} has no frame in new segment {} (from {}): its part is empty", what, x.name, seg,
                  At(cuts[seg]));
      }
      if (x.writer) {
        KHLS_ASSIGN_OR_RETURN(d.data, x.writer->EndSegment(last));
        if (!last) KHLS_RETURN_IF_ERROR(x.writer->BeginSegment());
      }
    } else {
      const int64_t end = last ? std::max(End(i), cuts[seg] + 1) : cuts[seg + 1];
      std::string text = internal::RenderVttSegment(x.cues, cuts[seg], end);
      d.data.assign(text.begin(), text.end());
      std::erase_if(x.cues, [&](const Cue& c) { return c.end <= end; });
    }
    if (last) {
      d.duration = std::max<int64_t>(End(i) - d.start, 1);
    } else if (!own) {
      d.duration = cuts[seg + 1] - d.start;
    }
    if (own && !x.wrote && seg > 0) {
      Done& prev = x.done[seg - 1];
      if (prev.duration < 0) prev.duration = std::max<int64_t>(d.start - prev.start, 1);
    }
    x.done[seg] = std::move(d);
    x.seg = seg + 1;
    x.wrote = false;
    x.closed = last;
    return Status::Ok();
  }

  /// A video variant: its parts end at its keyframe at each cut.
  Status AdvanceVariant(size_t i) {
    Rendition& x = r[i];
    while (!x.queue.empty()) {
      const AVPacket& p = *x.queue.front();
      if (x.seg + 1 < cuts.size()) {
        const int64_t next = cuts[x.seg + 1];
        const bool key = (p.flags & AV_PKT_FLAG_KEY) != 0;
        if (key && x.wrote && std::llabs(p.pts - next) <= tolerance) {
          // Its keyframe at the cut ends the part and opens the next one, whatever cuts follow.
          KHLS_RETURN_IF_ERROR(EndPart(i, false));
          KHLS_RETURN_IF_ERROR(Write(i, x.queue));
          continue;
        }
        if (p.dts > next + tolerance || (key && p.pts > next + tolerance)) {
          return Error(ErrorCode::kInvalidInput,
                       "re-cut: {} has no keyframe at {}, where {} (the reference) starts new segment {} (its next "
                       "keyframe or frame is at {}): the variants' keyframes are not aligned",
                       x.name, At(next), r[ref].name, x.seg + 1, At(p.pts));
        }
      } else if (!all_cut) {
        break;  // where its part ends is not known yet
      }
      KHLS_RETURN_IF_ERROR(Write(i, x.queue));
    }
    if (all_cut && !x.closed && x.queue.empty()) {
      if (x.seg + 1 < cuts.size())
        return Error(ErrorCode::kInvalidInput,
                     "re-cut: {} ends before {}, where {} (the reference) starts new segment {}",
                     x.name, At(cuts[x.seg + 1]), r[ref].name, x.seg + 1);
      KHLS_RETURN_IF_ERROR(EndPart(i, true));
    }
    return Status::Ok();
  }

  /// Audio: a frame goes to the part whose span holds its pts.
  Status AdvanceTimeSplit(size_t i) {
    Rendition& x = r[i];
    const int64_t floor = NextCutFloor();
    while (!x.queue.empty()) {
      const int64_t pts = x.queue.front()->pts;
      if (pts >= floor) break;  // a cut not known yet may come before it
      // The part whose span holds it: as many cuts after the title's start as are at or before it.
      const auto index = static_cast<uint32_t>(std::upper_bound(cuts.begin() + 1, cuts.end(), pts) - cuts.begin() - 1);
      while (x.seg < index) KHLS_RETURN_IF_ERROR(EndPart(i, false));
      KHLS_RETURN_IF_ERROR(Write(i, x.queue));
    }
    if (all_cut && !x.closed && x.queue.empty()) {
      while (x.seg + 1 < cuts.size()) KHLS_RETURN_IF_ERROR(EndPart(i, false));
      KHLS_RETURN_IF_ERROR(EndPart(i, true));
    }
    return Status::Ok();
  }

  /// Subtitles: a part is rendered once every old segment that overlaps it is read.
  Status AdvanceVtt(size_t i) {
    Rendition& x = r[i];
    // Old segment n starts at the reference's old cut n: every cue before it is known.
    const Rendition& rf = r[ref];
    int64_t horizon = kNever;
    if (x.pushed == 0) horizon = std::numeric_limits<int64_t>::min();
    else if (rf.pushed > x.pushed)
      horizon = rf.old_starts[x.pushed] != kNoTime ? rf.old_starts[x.pushed] : std::numeric_limits<int64_t>::min();
    while (x.seg + 1 < cuts.size() && cuts[x.seg + 1] <= horizon) KHLS_RETURN_IF_ERROR(EndPart(i, false));
    if (all_cut && !x.closed && x.seg + 1 == cuts.size()) KHLS_RETURN_IF_ERROR(EndPart(i, true));
    return Status::Ok();
  }

  Status Pump() {
    if (!ReadyToCut()) return Status::Ok();
    KHLS_RETURN_IF_ERROR(DecideCuts());
    if (all_cut && !r[ref].closed) {
      Rendition& x = r[ref];
      while (!x.queue.empty()) KHLS_RETURN_IF_ERROR(Write(static_cast<size_t>(ref), x.queue));
      KHLS_RETURN_IF_ERROR(EndPart(static_cast<size_t>(ref), true));
    }
    for (size_t i = 0; i < r.size(); ++i) {
      if (static_cast<int>(i) == ref || r[i].closed) continue;
      if (r[i].kind == RecutKind::kWebVtt) {
        KHLS_RETURN_IF_ERROR(AdvanceVtt(i));
      } else if (r[i].video) {
        KHLS_RETURN_IF_ERROR(AdvanceVariant(i));
      } else {
        KHLS_RETURN_IF_ERROR(AdvanceTimeSplit(i));
      }
    }
    return Status::Ok();
  }

  Status Fail(Status st) {
    if (!st.ok() && error.ok()) error = st;
    return st;
  }
};

Recutter::Recutter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Recutter::~Recutter() = default;

Result<std::unique_ptr<Recutter>> Recutter::Create(std::vector<RecutKind> kinds, const RecutParams& params) {
  if (!std::isfinite(params.target_duration) || params.target_duration <= 0 || params.target_duration > 3600)
    return Error(ErrorCode::kInvalidArgument, "re-cut: target duration {} s is not in (0, 3600]",
                 params.target_duration);
  if (std::none_of(kinds.begin(), kinds.end(), [](RecutKind k) { return k == RecutKind::kTs; }))
    return Error(ErrorCode::kInvalidArgument, "re-cut: a title needs an MPEG-TS rendition to cut at");
  auto impl = std::make_unique<Impl>();
  if (!impl->pkt) return Error(ErrorCode::kInternal, "re-cut: out of memory");
  impl->target = std::llround(params.target_duration * kClock);
  if (!params.what.empty()) impl->what = params.what;
  for (size_t i = 0; i < kinds.size(); ++i) {
    Impl::Rendition x;
    x.kind = kinds[i];
    x.name = fmt::format("rendition {}", i);
    impl->r.push_back(std::move(x));
  }
  return std::unique_ptr<Recutter>(new Recutter(std::move(impl)));
}

Status Recutter::Push(size_t rendition, std::span<const uint8_t> segment, std::optional<OldPartTiming> timing) {
  Impl& m = *impl_;
  if (!m.error.ok()) return m.error;
  if (rendition >= m.r.size())
    return m.Fail(
        Error(ErrorCode::kInvalidArgument, "re-cut: no rendition {} (the title has {})", rendition, m.r.size()));
  if (m.finished)
    return m.Fail(Error(ErrorCode::kInvalidArgument, "re-cut: rendition {} pushed after Finish()", rendition));
  Impl::Rendition& x = m.r[rendition];
  uint32_t slowest = x.pushed;
  for (const Impl::Rendition& o : m.r) slowest = std::min(slowest, o.pushed);
  if (x.pushed > slowest + 1)
    return m.Fail(Error(ErrorCode::kInvalidArgument,
                        "re-cut: {} pushed old segment {} before every rendition had old segment {} (a rendition may "
                        "run at most one group ahead)",
                        x.name, x.pushed, slowest));
  if (timing && timing->duration <= 0)
    return m.Fail(Error(ErrorCode::kInvalidArgument, "re-cut: {} old segment {}: duration {} is not > 0", x.name,
                        x.pushed, timing->duration));
  KHLS_RETURN_IF_ERROR(m.Fail(x.kind == RecutKind::kTs ? m.PushTs(x, segment) : m.PushVtt(x, segment)));
  if (x.pushed == 0 && timing) x.recorded_start = timing->start_pts;
  x.recorded_end = timing ? std::optional<int64_t>(timing->start_pts + timing->duration) : std::nullopt;
  ++x.pushed;
  return m.Fail(m.Pump());
}

Status Recutter::Finish() {
  Impl& m = *impl_;
  if (!m.error.ok()) return m.error;
  if (m.finished) return Status::Ok();
  for (const Impl::Rendition& x : m.r) {
    if (x.pushed != m.r[0].pushed)
      return m.Fail(Error(ErrorCode::kInvalidInput, "re-cut: {} has {} old segments, {} has {}", x.name, x.pushed,
                          m.r[0].name, m.r[0].pushed));
  }
  if (m.r[0].pushed == 0) return m.Fail(Error(ErrorCode::kInvalidInput, "re-cut: no old segment"));
  m.finished = true;
  return m.Fail(m.Pump());
}

std::optional<Segment> Recutter::Pop() {
  Impl& m = *impl_;
  if (!m.error.ok() || m.ref < 0) return std::nullopt;
  for (const Impl::Rendition& x : m.r) {
    auto it = x.done.find(m.next_pop);
    if (it == x.done.end() || it->second.duration < 0) return std::nullopt;
  }
  Segment seg;
  seg.sequence = m.next_pop;
  for (Impl::Rendition& x : m.r) {
    auto it = x.done.find(m.next_pop);
    seg.parts.push_back(Part{it->second.start, it->second.duration, std::move(it->second.data)});
    x.done.erase(it);
  }
  seg.start_pts = seg.parts[static_cast<size_t>(m.ref)].start_pts;
  seg.duration = seg.parts[static_cast<size_t>(m.ref)].duration;
  ++m.next_pop;
  return seg;
}

}  // namespace khls::segmenter
