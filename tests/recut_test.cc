// Recutter tests: titles are segmented by the real Segmenter (target 6 s) from
// the test media, their segments fed to a Recutter, and the new segments checked
// with libavformat / libavcodec: cut rule, keyframes first, the same packets with
// the same timestamps per rendition, clean decode, durations, WebVTT cues,
// determinism, push order and errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
}

#include "khls/recut.h"
#include "khls/segmenter.h"

using khls::ErrorCode;
using khls::segmenter::kClock;
using khls::segmenter::OldPartTiming;
using khls::segmenter::Params;
using khls::segmenter::Part;
using khls::segmenter::RecutKind;
using khls::segmenter::RecutParams;
using khls::segmenter::Recutter;
using khls::segmenter::Segment;
using khls::segmenter::Segmenter;
using khls::segmenter::TitleInfo;
using khls::segmenter::TrackKind;

namespace {

const bool kQuietLibrary = (khls::segmenter::SetLibraryLogLevel(false), true);

std::string Media(const std::string& name) { return std::string(KHLS_TEST_MEDIA_DIR) + "/" + name; }

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

int64_t Ticks(double seconds) { return std::llround(seconds * kClock); }

// ---- titles -------------------------------------------------------------------

struct Title {
  std::string name;
  TitleInfo info;
  std::vector<Segment> segments;
};

/// The ingest's segments of `urls` at a 6 s target (once per process).
const Title& Ingested(const std::vector<std::string>& names, const std::vector<std::string>& sidecars = {}) {
  static std::map<std::vector<std::string>, Title> cache;
  std::vector<std::string> key = names;
  key.insert(key.end(), sidecars.begin(), sidecars.end());
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  std::vector<std::string> urls;
  for (const std::string& n : names) urls.push_back(Media(n));
  Params params;
  params.target_duration = 6.0;
  for (const std::string& s : sidecars) params.subtitles.push_back({Media(s), ""});
  auto opened = Segmenter::Open(urls, params);
  REQUIRE_MESSAGE(opened.ok(), opened.status().message());
  Title t;
  t.name = fmt::format("{}", fmt::join(key, "+"));
  t.info = (*opened)->info();
  for (;;) {
    auto next = (*opened)->Next();
    REQUIRE_MESSAGE(next.ok(), next.status().message());
    if (!next->has_value()) break;
    t.segments.push_back(std::move(**next));
  }
  REQUIRE(t.segments.size() >= 2);
  return cache.emplace(key, std::move(t)).first->second;
}

std::vector<RecutKind> Kinds(const TitleInfo& info) {
  std::vector<RecutKind> kinds;
  for (const auto& r : info.renditions)
    kinds.push_back(r.kind == TrackKind::kSubtitles ? RecutKind::kWebVtt : RecutKind::kTs);
  return kinds;
}

enum class Order {
  kGroupByGroup,  ///< every rendition's segment g, in rendition order, then g + 1
  kReversed,      ///< within a group, the last rendition first
  kFirstAhead,    ///< rendition 0 always one group ahead of the others
  kLastAhead,     ///< the last rendition always one group ahead of the others
};

struct Recut {
  std::vector<Segment> segments;
  size_t popped_before_finish = 0;
  /// Where the popped groups end once old group g is pushed (kGroupByGroup).
  std::vector<int64_t> popped_end;
  double seconds = 0;
};

/// Feeds `t` to a Recutter at `target`; pops after every push (a streaming consumer).
Recut RecutTitle(const Title& t, double target, bool timings = true, Order order = Order::kGroupByGroup) {
  const auto started = std::chrono::steady_clock::now();
  auto made = Recutter::Create(Kinds(t.info), RecutParams{target});
  REQUIRE_MESSAGE(made.ok(), made.status().message());
  Recutter& rc = **made;
  Recut out;
  auto pop_all = [&] {
    while (auto s = rc.Pop()) {
      CHECK(s->sequence == out.segments.size());
      out.segments.push_back(std::move(*s));
    }
  };
  auto push = [&](size_t r, size_t g) {
    const Part& p = t.segments[g].parts[r];
    std::optional<OldPartTiming> timing;
    if (timings) timing = OldPartTiming{p.start_pts, p.duration};
    const khls::Status st = rc.Push(r, p.data, timing);
    REQUIRE_MESSAGE(st.ok(), st.message());
    pop_all();
  };
  const size_t n = t.info.renditions.size(), groups = t.segments.size();
  std::optional<size_t> ahead;
  if (order == Order::kFirstAhead) ahead = 0;
  if (order == Order::kLastAhead) ahead = n - 1;
  if (ahead) push(*ahead, 0);
  for (size_t g = 0; g < groups; ++g) {
    for (size_t i = 0; i < n; ++i) {
      const size_t r = order == Order::kReversed ? n - 1 - i : i;
      if (ahead && r == *ahead) {
        if (g + 1 < groups) push(r, g + 1);
        continue;
      }
      push(r, g);
    }
    out.popped_end.push_back(out.segments.empty() ? 0 : out.segments.back().start_pts + out.segments.back().duration);
  }
  out.popped_before_finish = out.segments.size();
  const khls::Status st = rc.Finish();
  REQUIRE_MESSAGE(st.ok(), st.message());
  pop_all();
  CHECK_FALSE(rc.Pop().has_value());
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return out;
}

// ---- libavformat / libavcodec ---------------------------------------------------

struct Pkt {
  int64_t pts = 0, dts = 0;
  bool key = false;
  int size = 0;
  bool operator==(const Pkt&) const = default;
};

struct Demuxed {
  bool video = false;
  std::vector<Pkt> packets;
  std::vector<std::vector<uint8_t>> data;  ///< only when asked for
  std::string error;
};

struct Reader {
  const std::vector<uint8_t>* bytes;
  size_t pos = 0;
  static int Read(void* opaque, uint8_t* buf, int size) {
    auto* self = static_cast<Reader*>(opaque);
    const size_t n = std::min(self->bytes->size() - self->pos, static_cast<size_t>(size));
    if (n == 0) return AVERROR_EOF;
    std::memcpy(buf, self->bytes->data() + self->pos, n);
    self->pos += n;
    return static_cast<int>(n);
  }
};

/// Every packet of the one audio/video stream of an MPEG-TS buffer.
Demuxed Demux(const std::vector<uint8_t>& bytes, bool keep_data = false) {
  Demuxed d;
  Reader reader{&bytes};
  auto* buffer = static_cast<uint8_t*>(av_malloc(32768));
  AVIOContext* pb = avio_alloc_context(buffer, 32768, 0, &reader, &Reader::Read, nullptr, nullptr);
  AVFormatContext* ic = avformat_alloc_context();
  ic->pb = pb;
  ic->flags |= AVFMT_FLAG_NOFILLIN;  // timestamps as the PES headers have them; the rest is filled in below
  int err = avformat_open_input(&ic, nullptr, av_find_input_format("mpegts"), nullptr);
  if (err >= 0) err = avformat_find_stream_info(ic, nullptr);
  if (err < 0) {
    d.error = "open";
  } else {
    REQUIRE(ic->nb_streams == 1);
    const AVStream* st = ic->streams[0];
    d.video = st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO;
    AVPacket* pkt = av_packet_alloc();
    // Audio frames after the first of a PES have no pts: they follow it frame by frame (AAC).
    const int64_t frame = d.video ? 0 : av_rescale(1024, 90000, st->codecpar->sample_rate);
    while ((err = av_read_frame(ic, pkt)) >= 0) {
      REQUIRE((pkt->pts != AV_NOPTS_VALUE || (!d.video && !d.packets.empty())));
      const int64_t pts = pkt->pts != AV_NOPTS_VALUE ? av_rescale_q(pkt->pts, st->time_base, {1, 90000})
                                                     : d.packets.back().pts + frame;
      const int64_t dts = pkt->dts != AV_NOPTS_VALUE ? av_rescale_q(pkt->dts, st->time_base, {1, 90000}) : pts;
      d.packets.push_back(Pkt{pts, dts, (pkt->flags & AV_PKT_FLAG_KEY) != 0, pkt->size});
      if (keep_data) d.data.emplace_back(pkt->data, pkt->data + pkt->size);
      av_packet_unref(pkt);
    }
    if (err != AVERROR_EOF) d.error = "read";
    av_packet_free(&pkt);
  }
  avformat_close_input(&ic);
  av_freep(&pb->buffer);
  avio_context_free(&pb);
  return d;
}

/// Decodes every packet of an MPEG-TS buffer: frames out, and decode errors.
std::pair<int64_t, int64_t> Decode(const std::vector<uint8_t>& bytes) {
  Reader reader{&bytes};
  auto* buffer = static_cast<uint8_t*>(av_malloc(32768));
  AVIOContext* pb = avio_alloc_context(buffer, 32768, 0, &reader, &Reader::Read, nullptr, nullptr);
  AVFormatContext* ic = avformat_alloc_context();
  ic->pb = pb;
  REQUIRE(avformat_open_input(&ic, nullptr, av_find_input_format("mpegts"), nullptr) >= 0);
  REQUIRE(avformat_find_stream_info(ic, nullptr) >= 0);
  const AVCodec* codec = avcodec_find_decoder(ic->streams[0]->codecpar->codec_id);
  REQUIRE(codec != nullptr);
  AVCodecContext* dec = avcodec_alloc_context3(codec);
  avcodec_parameters_to_context(dec, ic->streams[0]->codecpar);
  dec->err_recognition = AV_EF_EXPLODE;
  REQUIRE(avcodec_open2(dec, codec, nullptr) >= 0);
  AVPacket* pkt = av_packet_alloc();
  AVFrame* frame = av_frame_alloc();
  int64_t frames = 0, errors = 0;
  auto drain = [&] {
    while (avcodec_receive_frame(dec, frame) == 0) {
      ++frames;
      if (frame->decode_error_flags != 0) ++errors;
    }
  };
  while (av_read_frame(ic, pkt) >= 0) {
    if (avcodec_send_packet(dec, pkt) < 0) ++errors;
    av_packet_unref(pkt);
    drain();
  }
  avcodec_send_packet(dec, nullptr);
  drain();
  av_frame_free(&frame);
  av_packet_free(&pkt);
  avcodec_free_context(&dec);
  avformat_close_input(&ic);
  av_freep(&pb->buffer);
  avio_context_free(&pb);
  return {frames, errors};
}

std::vector<uint8_t> Concat(const std::vector<Segment>& segments, size_t r) {
  std::vector<uint8_t> all;
  for (const Segment& s : segments) all.insert(all.end(), s.parts[r].data.begin(), s.parts[r].data.end());
  return all;
}

// ---- WebVTT ---------------------------------------------------------------------

struct VttCue {
  int64_t start_ms = 0, end_ms = 0;
  std::string block;  ///< "hh:mm:ss.mmm --> hh:mm:ss.mmm\ntext"
  bool operator<(const VttCue& o) const {
    return std::tie(start_ms, end_ms, block) < std::tie(o.start_ms, o.end_ms, o.block);
  }
  bool operator==(const VttCue&) const = default;
};

int64_t Ms(const std::string& t) {
  int h = 0, m = 0, s = 0, ms = 0;
  REQUIRE(std::sscanf(t.c_str(), "%d:%d:%d.%d", &h, &m, &s, &ms) == 4);
  return ((h * 60 + m) * 60 + s) * 1000 + ms;
}

constexpr std::string_view kVttHeader = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n";

std::vector<VttCue> Cues(const Part& p) {
  const std::string text(p.data.begin(), p.data.end());
  REQUIRE(text.starts_with(kVttHeader));
  std::vector<VttCue> cues;
  size_t pos = kVttHeader.size();
  while (pos < text.size()) {
    const size_t end = text.find("\n\n", pos);
    REQUIRE(end != std::string::npos);
    VttCue c;
    c.block = text.substr(pos, end - pos);
    c.start_ms = Ms(c.block.substr(0, 12));
    c.end_ms = Ms(c.block.substr(17, 12));
    cues.push_back(c);
    pos = end + 2;
  }
  return cues;
}

// ---- the checks -------------------------------------------------------------------

/// Everything a re-cut title must satisfy, against the title it was cut from.
void CheckRecut(const Title& old, const std::vector<Segment>& fresh, double target, bool long_gops = false,
                bool timings = true) {
  INFO("title: ", old.name, ", target ", target, " s");
  REQUIRE_FALSE(fresh.empty());
  const size_t n = old.info.renditions.size();
  const int64_t limit = Ticks(target);
  for (const Segment& s : fresh) REQUIRE(s.parts.size() == n);

  // Cut rule: no segment longer than the target (a longer one is a single GOP), each as long as it can be.
  const std::vector<uint8_t> ref_all = Concat(old.segments, 0);
  const Demuxed ref = Demux(ref_all);
  std::vector<int64_t> keyframes;
  for (const Pkt& p : ref.packets)
    if (p.key) keyframes.push_back(p.pts);
  for (size_t k = 0; k < fresh.size(); ++k) {
    const Segment& s = fresh[k];
    CAPTURE(k);
    CHECK(s.start_pts == s.parts[0].start_pts);
    CHECK(s.duration == s.parts[0].duration);
    if (k > 0) CHECK(s.start_pts == fresh[k - 1].start_pts + fresh[k - 1].duration);
    if (k + 1 < fresh.size()) CHECK(std::binary_search(keyframes.begin(), keyframes.end(), s.start_pts + s.duration));
    const auto inside = std::count_if(keyframes.begin(), keyframes.end(), [&](int64_t pts) {
      return pts > s.start_pts && pts < s.start_pts + s.duration;
    });
    if (s.duration > limit) {
      CHECK(long_gops);
      CHECK(inside == 0);  // a single GOP
    }
    if (k + 1 < fresh.size() && s.duration <= limit) {
      // The next keyframe after this segment's end would have made it too long.
      const auto next = std::upper_bound(keyframes.begin(), keyframes.end(), s.start_pts + s.duration);
      if (next != keyframes.end()) CHECK(*next - s.start_pts > limit);
    }
  }

  for (size_t r = 0; r < n; ++r) {
    const auto& info = old.info.renditions[r];
    CAPTURE(info.id);
    // Durations: the parts follow each other and add up to the old total.
    int64_t old_sum = 0, new_sum = 0;
    for (const Segment& s : old.segments) old_sum += s.parts[r].duration;
    for (size_t k = 0; k < fresh.size(); ++k) {
      const Part& p = fresh[k].parts[r];
      CHECK(p.duration > 0);
      new_sum += p.duration;
      if (k > 0) CHECK(p.start_pts == fresh[k - 1].parts[r].start_pts + fresh[k - 1].parts[r].duration);
    }
    CHECK(fresh[0].parts[r].start_pts == old.segments[0].parts[r].start_pts);
    if (timings || info.kind == TrackKind::kVideo) {
      CHECK(new_sum == old_sum);
    } else {
      // From the media alone, the end is the last frame's pts + a whole frame: MPEG-TS does not say that
      // the last AAC frame of an MP4 holds fewer samples (the ingest knew it from the MP4).
      CHECK(std::llabs(new_sum - old_sum) <= 1920);
    }

    if (info.kind == TrackKind::kSubtitles) {
      // The same cues, each in every new part it overlaps and only there.
      std::set<VttCue> old_cues, new_cues;
      for (const Segment& s : old.segments)
        for (const VttCue& c : Cues(s.parts[r])) old_cues.insert(c);
      for (const Segment& s : fresh) {
        const std::vector<VttCue> cues = Cues(s.parts[r]);
        const int64_t from = s.start_pts / 90, to = (s.start_pts + s.parts[r].duration) / 90;
        for (const VttCue& c : cues) {
          new_cues.insert(c);
          CHECK(c.end_ms > from);
          CHECK(c.start_ms < to + 1);
        }
        for (const VttCue& c : old_cues)
          if (c.end_ms > from + 1 && c.start_ms < to - 1)
            CHECK(std::any_of(cues.begin(), cues.end(), [&](const VttCue& x) { return x.block == c.block; }));
      }
      CHECK(old_cues == new_cues);
      CHECK_FALSE(new_cues.empty());
      continue;
    }

    // MPEG-TS: PAT first, whole packets; a video part starts with a keyframe; audio frames in their span.
    for (size_t k = 0; k < fresh.size(); ++k) {
      CAPTURE(k);
      const Part& p = fresh[k].parts[r];
      REQUIRE(p.data.size() % 188 == 0);
      REQUIRE(p.data.size() >= 188);
      CHECK(p.data[0] == 0x47);
      CHECK((((p.data[1] & 0x1f) << 8) | p.data[2]) == 0);  // PAT
      const Demuxed part = Demux(p.data);
      REQUIRE(part.error.empty());
      REQUIRE_FALSE(part.packets.empty());
      CHECK(part.packets.front().pts == p.start_pts);
      if (info.kind == TrackKind::kVideo) {
        CHECK(part.packets.front().key);
        CHECK(std::llabs(p.start_pts - fresh[k].start_pts) <= 900);
      } else {
        const int64_t end = k + 1 < fresh.size() ? fresh[k + 1].start_pts : INT64_MAX;
        for (const Pkt& a : part.packets) {
          CHECK(a.pts >= fresh[k].start_pts - (k == 0 ? 2000 : 0));
          CHECK(a.pts < end);
        }
      }
    }
    // The whole rendition: the same packets with the same timestamps, decoding cleanly.
    const std::vector<uint8_t> old_all = Concat(old.segments, r), new_all = Concat(fresh, r);
    const Demuxed before = Demux(old_all), after = Demux(new_all);
    REQUIRE(after.error.empty());
    CHECK(before.packets.size() == after.packets.size());
    REQUIRE(before.packets.size() == after.packets.size());
    if (info.kind == TrackKind::kVideo) {
      CHECK(before.packets == after.packets);
    } else {
      // An audio frame inside a PES has no pts of its own: players count it on from the PES's first frame.
      // Where the new PES boundaries differ from the old ones, that reading moves by the source's timestamp
      // jitter (MKV's millisecond rounding here): less than a millisecond.
      int64_t worst = 0;
      for (size_t i = 0; i < before.packets.size(); ++i) {
        CHECK(before.packets[i].size == after.packets[i].size);
        worst = std::max<int64_t>(worst, std::llabs(before.packets[i].pts - after.packets[i].pts));
      }
      CHECK(worst < kClock / 1000);
    }
    const auto [frames, errors] = Decode(new_all);
    CHECK(errors == 0);
    CHECK(frames == static_cast<int64_t>(after.packets.size()));
  }
}

bool SameBytes(const std::vector<Segment>& a, const std::vector<Segment>& b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k].parts.size() != b[k].parts.size()) return false;
    for (size_t r = 0; r < a[k].parts.size(); ++r)
      if (a[k].parts[r].data != b[k].parts[r].data) return false;
  }
  return true;
}

bool SameBoundaries(const std::vector<Segment>& a, const std::vector<Segment>& b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k].start_pts != b[k].start_pts || a[k].duration != b[k].duration) return false;
    for (size_t r = 0; r < a[k].parts.size(); ++r)
      if (a[k].parts[r].start_pts != b[k].parts[r].start_pts || a[k].parts[r].duration != b[k].parts[r].duration)
        return false;
  }
  return true;
}

// Video + 2 audio + 2 subtitles; two video variants (+ audio); audio only (every frame may start a segment).
const std::vector<std::vector<std::string>> kTitles = {
    {"multilang.mkv"}, {"ladder_a.mp4", "ladder_b.mp4"}, {"audio_only.m4a"}};

const Title& TitleNamed(size_t i) {
  if (i < kTitles.size()) return Ingested(kTitles[i]);
  return Ingested({"h264_aac.mp4"}, {"sidecar.en.srt"});
}

}  // namespace

TEST_CASE("re-cut to 2, 4 and 12 s: cut rule, keyframes first, same packets, clean decode, durations, cues") {
  for (size_t i = 0; i <= kTitles.size(); ++i) {
    const Title& t = TitleNamed(i);
    for (double target : {2.0, 4.0, 12.0}) {
      const Recut r = RecutTitle(t, target);
      CheckRecut(t, r.segments, target);
      // Streaming: a new group comes out as soon as the old ones cover it and the reference has been read
      // a target past its end (2 s GOPs here), so little is ever held.
      CAPTURE(t.name);
      CAPTURE(target);
      CHECK(r.popped_before_finish >= r.segments.size() / 2);
      for (size_t g = 0; g + 1 < t.segments.size(); ++g) {
        CAPTURE(g);
        const int64_t old_end = t.segments[g + 1].start_pts;
        CHECK(r.popped_end[g] >= old_end - Ticks(target) - Ticks(2.0) - 2000);
      }
    }
  }
  const Title& multilang = TitleNamed(0);
  CHECK(RecutTitle(multilang, 2.0).segments.size() == 10);
  CHECK(RecutTitle(multilang, 4.0).segments.size() == 5);
  CHECK(RecutTitle(multilang, 12.0).segments.size() == 2);
  // Video variants, ladder_b cut with ladder_a.
  const Title& ladder = TitleNamed(1);
  REQUIRE(ladder.info.renditions[1].kind == TrackKind::kVideo);
}

TEST_CASE("the same target gives the old segments back, where the old cuts are exactly a target apart") {
  for (size_t i = 0; i <= kTitles.size(); ++i) {
    const Title& t = TitleNamed(i);
    CAPTURE(t.name);
    const Recut r = RecutTitle(t, 6.0);
    CheckRecut(t, r.segments, 6.0);
    // The ingest cuts at the first keyframe at least a target after the group's start, the Recutter at the
    // last one at most a target after it: the same cuts exactly when they are a target apart.
    const bool on_grid = std::all_of(t.segments.begin(), t.segments.end() - 1,
                                     [](const Segment& s) { return s.duration == Ticks(6.0); });
    MESSAGE(t.name, ": old cuts ", std::string(on_grid ? "" : "NOT "), "6 s apart; re-cut at 6 s in ",
            fmt::format("{:.3f}", r.seconds), " s; boundaries ",
            SameBoundaries(r.segments, t.segments) ? "identical" : "different", ", bytes ",
            SameBytes(r.segments, t.segments) ? "identical" : "different");
    if (on_grid) {
      CHECK(SameBoundaries(r.segments, t.segments));
      CHECK(SameBytes(r.segments, t.segments));
    } else {
      // Audio only (cuts on 1920-tick AAC frames): the ingest's segments are a frame over 6 s, the new ones
      // under it.
      CHECK(t.info.renditions[0].kind == TrackKind::kAudio);
      for (size_t k = 0; k + 1 < r.segments.size(); ++k) {
        CHECK(r.segments[k].duration <= Ticks(6.0));
        CHECK(r.segments[k].duration > Ticks(6.0) - 1920);
      }
    }
  }
}

TEST_CASE("deterministic: byte-identical output, whatever the push order") {
  const Title& t = TitleNamed(0);
  const Recut a = RecutTitle(t, 4.0);
  CHECK(SameBytes(a.segments, RecutTitle(t, 4.0).segments));
  CHECK(SameBoundaries(a.segments, RecutTitle(t, 4.0).segments));
  const Recut reversed = RecutTitle(t, 4.0, true, Order::kReversed);
  CHECK(SameBytes(a.segments, reversed.segments));
  CHECK(SameBoundaries(a.segments, reversed.segments));
  // The first or the last rendition (the reference, subtitles) one group ahead of the others.
  for (size_t i = 0; i <= kTitles.size(); ++i) {
    const Title& u = TitleNamed(i);
    const Recut base = RecutTitle(u, 2.0);
    for (Order order : {Order::kFirstAhead, Order::kLastAhead}) {
      const Recut ahead = RecutTitle(u, 2.0, true, order);
      CHECK(SameBytes(base.segments, ahead.segments));
      CHECK(SameBoundaries(base.segments, ahead.segments));
    }
  }
}

TEST_CASE("without the recorded timings: the same cuts and bytes, the last ends within an audio frame") {
  for (size_t i = 0; i <= kTitles.size(); ++i) {
    const Title& t = TitleNamed(i);
    for (double target : {2.0, 12.0}) {
      const Recut with = RecutTitle(t, target);
      const Recut without = RecutTitle(t, target, false);
      CheckRecut(t, without.segments, target, false, /*timings=*/false);
      CHECK(SameBytes(with.segments, without.segments));
      // Only the last parts' ends can differ (by less than an audio frame).
      REQUIRE(with.segments.size() == without.segments.size());
      std::vector<Segment> a(with.segments.begin(), with.segments.end() - 1);
      std::vector<Segment> b(without.segments.begin(), without.segments.end() - 1);
      CHECK(SameBoundaries(a, b));
      for (size_t r = 0; r < with.segments.back().parts.size(); ++r) {
        CHECK(with.segments.back().parts[r].start_pts == without.segments.back().parts[r].start_pts);
        CHECK(std::llabs(with.segments.back().parts[r].duration - without.segments.back().parts[r].duration) <= 1920);
      }
    }
  }
}

TEST_CASE("a GOP longer than the target is a segment of its own") {
  const Title& t = TitleNamed(0);  // 2 s GOPs
  const Recut r = RecutTitle(t, 1.0);
  CheckRecut(t, r.segments, 1.0, /*long_gops=*/true);
  REQUIRE(r.segments.size() == 10);
  for (const Segment& s : r.segments) CHECK(s.duration == Ticks(2.0));
  // Just under a GOP and a half: still one GOP per segment.
  CHECK(RecutTitle(t, 3.9).segments.size() == 10);
}

TEST_CASE("push order rule and misuse") {
  const Title& t = TitleNamed(0);
  const size_t n = t.info.renditions.size();
  auto rc = std::move(Recutter::Create(Kinds(t.info), RecutParams{2.0})).value();
  // Rendition 0 may take segments 0 and 1 before the others have segment 0, not segment 2.
  REQUIRE(rc->Push(0, t.segments[0].parts[0].data).ok());
  REQUIRE(rc->Push(0, t.segments[1].parts[0].data).ok());
  const khls::Status two_ahead = rc->Push(0, t.segments[2].parts[0].data);
  CHECK(two_ahead.code() == ErrorCode::kInvalidArgument);
  CHECK(Contains(two_ahead.message(), "rendition 0"));
  CHECK(Contains(two_ahead.message(), "one group ahead"));
  // A failed recutter stays failed.
  CHECK(rc->Push(1, t.segments[0].parts[1].data).code() == ErrorCode::kInvalidArgument);
  CHECK(rc->Finish().code() == ErrorCode::kInvalidArgument);
  CHECK_FALSE(rc->Pop().has_value());

  auto other = std::move(Recutter::Create(Kinds(t.info), RecutParams{2.0})).value();
  CHECK(other->Push(n, t.segments[0].parts[0].data).code() == ErrorCode::kInvalidArgument);

  // Finish with a rendition short of segments.
  auto short_one = std::move(Recutter::Create(Kinds(t.info), RecutParams{2.0})).value();
  for (size_t r = 0; r + 1 < n; ++r) REQUIRE(short_one->Push(r, t.segments[0].parts[r].data).ok());
  const khls::Status incomplete = short_one->Finish();
  CHECK(incomplete.code() == ErrorCode::kInvalidInput);
  CHECK(Contains(incomplete.message(), fmt::format("rendition {}", n - 1)));

  auto done = std::move(Recutter::Create(Kinds(t.info), RecutParams{2.0})).value();
  for (size_t r = 0; r < n; ++r) REQUIRE(done->Push(r, t.segments[0].parts[r].data).ok());
  REQUIRE(done->Finish().ok());
  CHECK(done->Push(0, t.segments[1].parts[0].data).code() == ErrorCode::kInvalidArgument);

  CHECK(Recutter::Create(Kinds(t.info), RecutParams{0}).status().code() == ErrorCode::kInvalidArgument);
  CHECK(Recutter::Create(Kinds(t.info), RecutParams{-1}).status().code() == ErrorCode::kInvalidArgument);
  CHECK(Recutter::Create({RecutKind::kWebVtt}, RecutParams{}).status().code() == ErrorCode::kInvalidArgument);
  CHECK(Recutter::Create({}, RecutParams{}).status().code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("damaged input: an error naming the rendition and segment, never a crash") {
  const Title& t = TitleNamed(0);
  const size_t n = t.info.renditions.size();
  std::mt19937 rng(42);
  auto garbage = [&](size_t size) {
    std::vector<uint8_t> g(size);
    for (uint8_t& b : g) b = static_cast<uint8_t>(rng());
    return g;
  };
  // Feeds the title with rendition `bad`'s segment `g` replaced; returns the first error.
  auto feed = [&](size_t bad, size_t bad_g, const std::vector<uint8_t>& replacement) {
    auto rc = std::move(Recutter::Create(Kinds(t.info), RecutParams{2.0})).value();
    for (size_t g = 0; g < t.segments.size(); ++g) {
      for (size_t r = 0; r < n; ++r) {
        const khls::Status st = rc->Push(r, r == bad && g == bad_g ? replacement : t.segments[g].parts[r].data);
        if (!st.ok()) return st;
        while (rc->Pop()) {
        }
      }
    }
    return rc->Finish();
  };
  for (size_t r : {size_t{0}, size_t{1}, size_t{3}}) {
    for (size_t g : {size_t{0}, size_t{2}}) {
      CAPTURE(r);
      CAPTURE(g);
      const khls::Status random = feed(r, g, garbage(188 * 50));
      CHECK(random.code() == ErrorCode::kInvalidInput);
      CHECK(Contains(random.message(), fmt::format("rendition {} old segment {}", r, g)));
      // TS sync bytes, garbage inside: an error or a title, not a crash.
      std::vector<uint8_t> synced = garbage(188 * 200);
      for (size_t i = 0; i < synced.size(); i += 188) synced[i] = 0x47;
      const khls::Status st = feed(r, g, synced);
      if (!st.ok()) CHECK(Contains(st.message(), "re-cut"));
      if (r == 0) CHECK(Contains(st.message(), fmt::format("rendition 0 old segment {}", g)));
      // Half a segment.
      const std::vector<uint8_t>& whole = t.segments[g].parts[r].data;
      const auto half_size = static_cast<std::ptrdiff_t>(whole.size() / 2 / 188 * 188);
      std::vector<uint8_t> half(whole.begin(), whole.begin() + half_size);
      const khls::Status cut = feed(r, g, half);
      if (!cut.ok()) CHECK(Contains(cut.message(), fmt::format("rendition {} old segment {}", r, g)));
    }
  }
  // A WebVTT segment with a bad cue timing.
  const std::string bad_vtt = "WEBVTT\n\n00:00:01.000 --> 00:0x:02.000\nhello\n\n";
  const khls::Status vtt = feed(3, 1, std::vector<uint8_t>(bad_vtt.begin(), bad_vtt.end()));
  CHECK(vtt.code() == ErrorCode::kInvalidInput);
  CHECK(Contains(vtt.message(), "rendition 3 old segment 1"));
  CHECK(Contains(vtt.message(), "bad cue timing"));
  // An audio segment where a video one belongs: the codec changes.
  const khls::Status swapped = feed(0, 1, t.segments[1].parts[1].data);
  CHECK(swapped.code() == ErrorCode::kInvalidInput);
  CHECK(Contains(swapped.message(), "rendition 0 old segment 1"));
}

TEST_CASE("video variants whose keyframes are not aligned are refused") {
  // ladder_a's video with ladder_misaligned's (keyframes every 2.4 s) as its variant.
  const Title& a = Ingested({"ladder_a.mp4"});
  const Title& m = Ingested({"ladder_misaligned.mp4"});
  auto rc = std::move(Recutter::Create({RecutKind::kTs, RecutKind::kTs}, RecutParams{2.0})).value();
  khls::Status st;
  for (size_t g = 0; g < std::min(a.segments.size(), m.segments.size()) && st.ok(); ++g) {
    st = rc->Push(0, a.segments[g].parts[0].data);
    if (st.ok()) st = rc->Push(1, m.segments[g].parts[0].data);
  }
  if (st.ok()) st = rc->Finish();
  CHECK(st.code() == ErrorCode::kInvalidInput);
  CHECK(Contains(st.message(), "rendition 1 has no keyframe at 2.000 s"));
  MESSAGE(st.message());
}

TEST_CASE("timing: re-cutting a title") {
  for (const std::string name : {"multilang.mkv", "clip40.mp4"}) {
    const Title& t = Ingested({name});
    size_t bytes = 0;
    for (const Segment& s : t.segments)
      for (const Part& p : s.parts) bytes += p.data.size();
    for (double target : {2.0, 4.0}) {
      const Recut r = RecutTitle(t, target);
      MESSAGE(name, " (", t.info.renditions.size(), " renditions, ", bytes / 1024, " KiB of segments) re-cut to ",
              target,
              " s in ", fmt::format("{:.3f} s ({:.0f} MB/s)", r.seconds, bytes / 1e6 / r.seconds));
      CHECK(r.seconds < 10);
    }
  }
}
