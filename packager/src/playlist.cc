#include "khls/playlist.h"

#include <algorithm>
#include <map>

#include "khls/defaults.h"

namespace khls::packager {
namespace {

using proto::RenditionKind;

// size * 8 / duration, rounded to the nearest (as the ingest's av_rescale does).
uint64_t Rate(uint64_t bytes, uint64_t duration) {
  if (duration == 0) return 0;
  const unsigned __int128 num = static_cast<unsigned __int128>(bytes) * 8 * kClock;
  return static_cast<uint64_t>((num + duration / 2) / duration);
}

// A segment's (or part's) rate, truncated: what a growing title shows until it is complete.
uint64_t FirstSegmentRate(uint64_t size, uint64_t duration) {
  return duration ? static_cast<uint64_t>(static_cast<double>(size) * 8 * kClock / static_cast<double>(duration)) : 0;
}

// VOD once complete, EVENT while growing; a live window has no type: segments leave it (RFC 8216 4.3.3.5).
hls::PlaylistType TypeOf(const TitleState& s) {
  if (s.window) return hls::PlaylistType::kNone;
  return s.complete ? hls::PlaylistType::kVod : hls::PlaylistType::kEvent;
}

std::string MediaUri(const TitleState& s, size_t r) { return s.RenditionDir(r) + "/" + kMediaPlaylistName; }

// The EXT-X-MEDIA of rendition r, as its record describes it.
hls::Media MediaTag(const TitleState& s, size_t r, hls::Media::Type type, std::string group) {
  const proto::Rendition& d = s.start.renditions[r];
  hls::Media m;
  m.type = type;
  m.group_id = std::move(group);
  m.language = d.language;
  m.name = d.name;
  m.is_default = d.is_default;
  m.autoselect = d.autoselect;
  m.forced = d.forced;
  m.characteristics = d.characteristics;
  if (type == hls::Media::Type::kAudio && d.channels) m.channels = std::to_string(d.channels);
  m.uri = MediaUri(s, r);
  return m;
}

}  // namespace

const std::vector<PartEntry>* PartsOf(const TitleState& s, size_t r, uint32_t sequence) {
  if (sequence < s.first) return nullptr;
  if (sequence < s.NextSequence(r)) return &s.segments[r][sequence - s.first].parts;
  if (sequence == s.NextSequence(r) && r < s.pending.size()) return &s.pending[r];
  return nullptr;
}

PartCursor LowLatencyCursor(const TitleState& s) {
  PartCursor c{s.first + static_cast<uint32_t>(s.ListedCount()), 0};
  bool any = false;
  for (size_t r = 0; r < s.start.renditions.size(); ++r) {
    if (s.start.renditions[r].kind == RenditionKind::kSubtitles) continue;
    const std::vector<PartEntry>* parts = PartsOf(s, r, c.sequence);
    const size_t n = parts ? parts->size() : 0;
    c.parts = any ? std::min(c.parts, n) : n;
    any = true;
  }
  return c;
}

bool AllIndependent(const TitleState& s) {
  const size_t listed = s.ListedCount();
  for (const std::vector<SegmentEntry>& list : s.segments)
    for (size_t i = 0; i < listed && i < list.size(); ++i)
      if (!list[i].independent) return false;
  return true;
}

bool HasIFramePlaylist(const TitleState& s, size_t r) {
  // Whole-segment AES-CBC leaves no byte range decodable on its own.
  if (s.encryption != EncryptionMethod::kNone) return false;
  if (s.start.renditions[r].kind != RenditionKind::kVideo || s.start.renditions[r].id.empty()) return false;
  const size_t listed = s.ListedCount();
  if (listed == 0) return false;
  // The I-frames must tile the timeline: each segment starts with one (its
  // first picture), so the last I-frame of a segment lasts to its end.
  for (size_t i = 0; i < listed; ++i) {
    const SegmentEntry& e = s.segments[r][i];
    if (!e.iframes || e.iframes->empty() || e.iframes->front().time != 0) return false;
  }
  return true;
}

hls::MediaPlaylist BuildIFramePlaylist(const TitleState& s, size_t r) {
  hls::MediaPlaylist p;
  const bool cmaf = s.container == Container::kFmp4;
  // 4: EXT-X-I-FRAMES-ONLY and EXT-X-BYTERANGE; 5: EXT-X-MAP in an I-frames-only
  // playlist; 7 as the fMP4 media playlists.
  p.version = cmaf ? 7 : 5;
  p.iframes_only = true;
  p.target_duration = s.start.target_duration_s;
  p.type = TypeOf(s);
  p.media_sequence = s.first;
  p.discontinuity_sequence = s.discontinuity_sequence;
  const size_t listed = s.ListedCount();
  for (size_t i = 0; i < listed; ++i) {
    const SegmentEntry& e = s.segments[r][i];
    const std::string uri = SegmentFileName(e.sequence, RenditionKind::kVideo, s.container);
    if (s.StartsRun(e.sequence)) p.entries.push_back(hls::DiscontinuityEntry{});
    if (cmaf && !e.map.empty()) p.entries.push_back(hls::MapEntry{e.map, std::nullopt});
    // TS: each segment's own PAT and PMT, which its I-frames follow in the file.
    if (!cmaf) p.entries.push_back(hls::MapEntry{uri, hls::ByteRange{e.iframe_map, 0}});
    const std::vector<IFrame>& frames = *e.iframes;
    for (size_t k = 0; k < frames.size(); ++k) {
      const uint64_t end = k + 1 < frames.size() ? frames[k + 1].time : e.duration;
      p.entries.push_back(hls::SegmentEntry{end > frames[k].time ? end - frames[k].time : 0, uri,
                                            hls::ByteRange{frames[k].size, frames[k].offset}});
    }
  }
  p.end_list = s.complete;
  return p;
}

Rates IFrameRates(const TitleState& s, size_t r) {
  Rates out;
  uint64_t bytes = 0, duration = 0;
  const hls::MediaPlaylist p = BuildIFramePlaylist(s, r);
  for (const hls::MediaEntry& entry : p.entries) {
    const auto* seg = std::get_if<hls::SegmentEntry>(&entry);
    if (!seg) continue;
    out.peak = std::max(out.peak, Rate(seg->range->length, seg->duration));
    bytes += seg->range->length;
    duration += seg->duration;
  }
  out.average = Rate(bytes, duration);
  out.peak = std::max<uint64_t>({out.peak, out.average, 1});
  return out;
}

Rates RenditionRates(const TitleState& s, size_t r) {
  const proto::Rendition& d = s.start.renditions[r];
  const std::vector<SegmentEntry>& segs = s.segments[r];
  Rates out;
  if (s.complete) {
    uint64_t bytes = 0, duration = 0;
    for (const SegmentEntry& e : segs) {
      out.peak = std::max(out.peak, Rate(e.size, e.duration));
      bytes += e.size;
      duration += e.duration;
    }
    out.average = Rate(bytes, duration);
  } else {
    uint64_t first = 0;
    if (!segs.empty()) first = FirstSegmentRate(segs.front().size, segs.front().duration);
    // Low latency: the master appears with the first part; its rate stands for the segment's.
    else if (r < s.pending.size() && !s.pending[r].empty())
      first = FirstSegmentRate(s.pending[r].front().size, s.pending[r].front().duration);
    out.peak = std::max(d.est_peak_bps, first);
    out.average = d.est_avg_bps ? d.est_avg_bps : first;
  }
  out.peak = std::max<uint64_t>({out.peak, out.average, 1});
  return out;
}

hls::MediaPlaylist BuildMediaPlaylist(const TitleState& s, size_t r) {
  hls::MediaPlaylist p;
  const RenditionKind kind = s.start.renditions[r].kind;
  const bool cmaf = s.container == Container::kFmp4 && kind != RenditionKind::kSubtitles;
  // 3: decimal EXTINF durations; 7: EXT-X-MAP for fMP4 segments (RFC 8216 section 7).
  p.version = cmaf ? 7 : 3;
  p.target_duration = s.start.target_duration_s;
  p.type = TypeOf(s);
  p.media_sequence = s.first;
  p.discontinuity_sequence = s.discontinuity_sequence;
  p.independent_segments = AllIndependent(s);
  // With B-frames the first picture comes a reorder delay after the first decode
  // time, which hls.js takes as zero: start where the picture is (4.3.5.2).
  if (s.start.start_offset > 0) p.start_offset = s.start.start_offset;
  const size_t listed = s.ListedCount();
  p.entries.reserve(listed);
  // LL-HLS: parts are listed for the segments of about the last three target
  // durations (older ones as whole segments only) and for the segment in progress.
  const bool ll = s.low_latency && kind != RenditionKind::kSubtitles;
  const uint64_t target = uint64_t{s.start.target_duration_s} * kClock;
  size_t parts_from = listed;
  if (ll) {
    p.version = 9;  // EXT-X-SKIP in the origin's delta updates
    const uint64_t part_target = uint64_t{s.start.part_target_ms} * 90;
    p.low_latency = hls::LowLatency{part_target, 3 * part_target, 6 * target};
    for (uint64_t covered = 0; parts_from > 0 && covered < 3 * target;)
      covered += s.segments[r][--parts_from].duration;
  }
  auto part_entries = [&](uint32_t sequence, const std::vector<PartEntry>& parts, size_t count) {
    for (size_t k = 0; k < count && k < parts.size(); ++k)
      p.entries.push_back(hls::PartEntry{parts[k].duration,
                                         PartFileName(sequence, static_cast<uint32_t>(k), kind, s.container),
                                         parts[k].independent});
  };
  // Encrypted segments: an EXT-X-KEY before each (its own IV). An EXT-X-MAP
  // after a key would be read as encrypted with it: init segments stay clear,
  // so a key in effect is ended (METHOD=NONE) before a map.
  bool key_in_effect = false;
  // A live window: each segment's wall-clock time, from its run's anchor and the group durations.
  uint64_t at = s.first_time;
  for (size_t i = 0; i < listed; ++i) {
    const SegmentEntry& e = s.segments[r][i];
    // A run that resumed the title starts over in time (and maybe in codec configuration).
    if (s.StartsRun(e.sequence)) p.entries.push_back(hls::DiscontinuityEntry{});
    if (s.window) {
      if (const int64_t anchor = s.PdtAnchor(e.sequence))
        p.entries.push_back(hls::DateTimeEntry{anchor + static_cast<int64_t>(at / 90)});
      at += s.segments.front()[i].duration;
    }
    if (cmaf && !e.map.empty()) {
      if (key_in_effect) p.entries.push_back(hls::KeyEntry{});
      key_in_effect = false;
      p.entries.push_back(hls::MapEntry{e.map, std::nullopt});
    }
    if (!e.key.empty()) {
      p.entries.push_back(hls::KeyEntry{"AES-128", s.KeyUri(r, e.key), e.iv});
      key_in_effect = true;
    } else if (key_in_effect) {
      p.entries.push_back(hls::KeyEntry{});
      key_in_effect = false;
    }
    if (i >= parts_from) part_entries(e.sequence, e.parts, e.parts.size());
    p.entries.push_back(hls::SegmentEntry{e.duration, SegmentFileName(e.sequence, kind, s.container), std::nullopt});
  }
  p.end_list = s.complete;
  if (!ll || s.complete) return p;
  // The segment in progress: the parts every rendition has (the playlists move
  // together), its init segment first when it brings a new one, then the hint of
  // the part that comes next.
  const PartCursor c = LowLatencyCursor(s);
  const std::vector<PartEntry>* parts = PartsOf(s, r, c.sequence);
  if (c.parts > 0 && parts) {
    if (s.StartsRun(c.sequence)) p.entries.push_back(hls::DiscontinuityEntry{});
    const std::string& map =
        c.sequence < s.NextSequence(r) ? s.segments[r][c.sequence - s.first].map : s.pending_maps[r];
    if (cmaf && !map.empty()) p.entries.push_back(hls::MapEntry{map, std::nullopt});
    part_entries(c.sequence, *parts, c.parts);
  }
  const bool ends = c.parts > 0 && parts && (*parts)[c.parts - 1].last;
  p.entries.push_back(hls::PreloadHintEntry{ends ? PartFileName(c.sequence + 1, 0, kind, s.container)
                                                 : PartFileName(c.sequence, static_cast<uint32_t>(c.parts), kind,
                                                                s.container)});
  // Where the other renditions stand: the same place (they are listed together).
  if (c.parts > 0 || listed > 0) {
    const uint64_t msn = c.parts > 0 ? c.sequence : c.sequence - 1;
    std::optional<uint64_t> last_part;
    if (c.parts > 0) last_part = c.parts - 1;
    else if (!s.segments[r][listed - 1].parts.empty()) last_part = s.segments[r][listed - 1].parts.size() - 1;
    for (size_t o = 0; o < s.start.renditions.size(); ++o) {
      if (o == r || s.start.renditions[o].kind == RenditionKind::kSubtitles || s.start.renditions[o].id.empty())
        continue;
      p.rendition_reports.push_back(
          hls::RenditionReport{"../" + s.start.renditions[o].id + "/" + kMediaPlaylistName, msn, last_part});
    }
  }
  return p;
}

hls::MultivariantPlaylist BuildMultivariantPlaylist(const TitleState& s) {
  hls::MultivariantPlaylist m;
  m.independent_segments = AllIndependent(s);
  const auto& rs = s.start.renditions;
  std::vector<Rates> rates;
  for (size_t r = 0; r < rs.size(); ++r) rates.push_back(RenditionRates(s, r));

  // Audio groups by codec, in order of first appearance.
  struct Group {
    std::string id, codecs;
    std::vector<size_t> members;
    Rates top;  ///< highest peak and highest average of its members
  };
  std::vector<Group> groups;
  for (size_t r = 0; r < rs.size(); ++r) {
    if (rs[r].kind != RenditionKind::kAudio || rs[r].id.empty()) continue;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.codecs == rs[r].codecs; });
    if (it == groups.end()) it = groups.insert(groups.end(), Group{rs[r].codecs.empty() ? "audio" : "audio-" + rs[r].codecs, rs[r].codecs, {}, {}});
    it->members.push_back(r);
    it->top.peak = std::max(it->top.peak, rates[r].peak);
    it->top.average = std::max(it->top.average, rates[r].average);
  }
  Rates subs;
  bool has_subs = false;
  // A group's default: the source's default track, else the group's first.
  auto group_default = [&](const Group& g) {
    auto flagged = std::find_if(g.members.begin(), g.members.end(), [&](size_t r) { return rs[r].is_default; });
    return flagged != g.members.end() ? *flagged : g.members.front();
  };
  for (const Group& g : groups) {
    const size_t def = group_default(g);
    for (size_t r : g.members) {
      hls::Media a = MediaTag(s, r, hls::Media::Type::kAudio, g.id);
      a.is_default = r == def;
      m.media.push_back(std::move(a));
    }
  }
  for (size_t r = 0; r < rs.size(); ++r) {
    if (rs[r].kind != RenditionKind::kSubtitles) continue;
    has_subs = true;
    subs.peak = std::max(subs.peak, rates[r].peak);
    subs.average = std::max(subs.average, rates[r].average);
    m.media.push_back(MediaTag(s, r, hls::Media::Type::kSubtitles, "subs"));
  }

  auto variant = [&](const Rates& media, const std::string& codecs, const Group* g, bool has_video_codecs) {
    hls::Variant v;
    v.bandwidth = media.peak + (g ? g->top.peak : 0) + (has_subs ? subs.peak : 0);
    v.average_bandwidth = media.average + (g ? g->top.average : 0) + (has_subs ? subs.average : 0);
    // CODECS must name every format of the variant: left out when one is unknown.
    v.codecs = codecs;
    if (g) {
      if (has_video_codecs) v.codecs = codecs.empty() || g->codecs.empty() ? "" : codecs + "," + g->codecs;
      else v.codecs = g->codecs;
      v.audio = g->id;
    }
    if (has_subs) v.subtitles = "subs";
    return v;
  };
  bool has_video = false;
  for (size_t r = 0; r < rs.size(); ++r) {
    if (rs[r].kind != RenditionKind::kVideo) continue;
    has_video = true;
    std::vector<const Group*> with;
    for (const Group& g : groups) with.push_back(&g);
    if (with.empty()) with.push_back(nullptr);
    for (const Group* g : with) {
      hls::Variant v = variant(rates[r], rs[r].codecs, g, true);
      v.width = rs[r].width;
      v.height = rs[r].height;
      v.fps_num = rs[r].fps_num;
      v.fps_den = rs[r].fps_den;
      v.uri = MediaUri(s, r);
      m.variants.push_back(std::move(v));
    }
  }
  for (size_t r = 0; r < rs.size(); ++r) {
    if (!HasIFramePlaylist(s, r)) continue;
    const Rates rate = IFrameRates(s, r);
    m.iframe_variants.push_back(hls::IFrameVariant{rate.peak, rate.average, rs[r].codecs, rs[r].width, rs[r].height,
                                                   s.RenditionDir(r) + "/" + kIFramePlaylistName});
  }
  if (!has_video) {
    for (const Group& g : groups) {
      hls::Variant v = variant({}, "", &g, false);
      v.uri = MediaUri(s, group_default(g));
      m.variants.push_back(std::move(v));
    }
    // A format-1 audio-only title: its one muxed rendition is the variant.
    for (size_t r = 0; r < rs.size(); ++r) {
      if (rs[r].kind != RenditionKind::kAudio || !rs[r].id.empty()) continue;
      hls::Variant v = variant(rates[r], rs[r].codecs, nullptr, false);
      v.uri = MediaUri(s, r);
      m.variants.push_back(std::move(v));
    }
  }
  return m;
}

std::string RenderMediaPlaylist(const TitleState& s, size_t rendition) {
  return hls::Render(BuildMediaPlaylist(s, rendition));
}

std::string RenderIFramePlaylist(const TitleState& s, size_t rendition) {
  return hls::Render(BuildIFramePlaylist(s, rendition));
}

std::string RenderMasterPlaylist(const TitleState& s) { return hls::Render(BuildMultivariantPlaylist(s)); }

}  // namespace khls::packager
