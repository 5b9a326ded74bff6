#include "khls/hls.h"

#include <ctime>

#include <fmt/format.h>

#include "khls/defaults.h"

namespace khls::hls {
namespace {

// One more ",KEY=value" (or the first "KEY=value") of an attribute list.
void Attr(std::string& out, std::string_view key, std::string_view value, bool quoted) {
  if (!out.empty()) out += ',';
  out += key;
  out += '=';
  if (quoted) out += '"';
  out += value;
  if (quoted) out += '"';
}

// The attributes EXT-X-STREAM-INF and EXT-X-I-FRAME-STREAM-INF share, in order.
std::string StreamAttrs(uint64_t bandwidth, uint64_t average, const std::string& codecs, uint32_t width,
                        uint32_t height) {
  std::string a;
  Attr(a, "BANDWIDTH", std::to_string(bandwidth), false);
  if (average) Attr(a, "AVERAGE-BANDWIDTH", std::to_string(average), false);
  if (!codecs.empty()) Attr(a, "CODECS", codecs, true);
  if (width && height) Attr(a, "RESOLUTION", fmt::format("{}x{}", width, height), false);
  return a;
}

}  // namespace

std::string Render(const MediaPlaylist& p) {
  std::string out;
  out.reserve(160 + p.entries.size() * 40);
  out += "#EXTM3U\n";
  out += fmt::format("#EXT-X-VERSION:{}\n", p.version);
  out += fmt::format("#EXT-X-TARGETDURATION:{}\n", p.target_duration);
  if (p.low_latency) {
    out += fmt::format("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3f}",
                       ToSeconds(p.low_latency->part_hold_back));
    if (p.low_latency->can_skip_until)
      out += fmt::format(",CAN-SKIP-UNTIL={:.3f}", ToSeconds(p.low_latency->can_skip_until));
    out += fmt::format("\n#EXT-X-PART-INF:PART-TARGET={:.3f}\n", ToSeconds(p.low_latency->part_target));
  }
  out += fmt::format("#EXT-X-MEDIA-SEQUENCE:{}\n", p.media_sequence);
  if (p.discontinuity_sequence) out += fmt::format("#EXT-X-DISCONTINUITY-SEQUENCE:{}\n", p.discontinuity_sequence);
  if (p.type == PlaylistType::kEvent) out += "#EXT-X-PLAYLIST-TYPE:EVENT\n";
  if (p.type == PlaylistType::kVod) out += "#EXT-X-PLAYLIST-TYPE:VOD\n";
  if (p.iframes_only) out += "#EXT-X-I-FRAMES-ONLY\n";
  if (p.independent_segments) out += "#EXT-X-INDEPENDENT-SEGMENTS\n";
  if (p.start_offset) out += fmt::format("#EXT-X-START:TIME-OFFSET={:.3f},PRECISE=YES\n", ToSeconds(*p.start_offset));
  for (const MediaEntry& e : p.entries) {
    if (const auto* seg = std::get_if<SegmentEntry>(&e)) {
      out += fmt::format("#EXTINF:{:.6f},\n", ToSeconds(seg->duration));
      if (seg->range) out += fmt::format("#EXT-X-BYTERANGE:{}@{}\n", seg->range->length, seg->range->offset);
      out += seg->uri;
      out += '\n';
    } else if (std::holds_alternative<DiscontinuityEntry>(e)) {
      out += "#EXT-X-DISCONTINUITY\n";
    } else if (const auto* map = std::get_if<MapEntry>(&e)) {
      out += fmt::format("#EXT-X-MAP:URI=\"{}\"", map->uri);
      if (map->range) out += fmt::format(",BYTERANGE=\"{}@{}\"", map->range->length, map->range->offset);
      out += '\n';
    } else if (const auto* when = std::get_if<DateTimeEntry>(&e)) {
      const int64_t secs = when->unix_ms >= 0 ? when->unix_ms / 1000 : (when->unix_ms - 999) / 1000;
      const std::time_t t = static_cast<std::time_t>(secs);
      std::tm tm{};
      gmtime_r(&t, &tm);
      out += fmt::format("#EXT-X-PROGRAM-DATE-TIME:{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z\n", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         static_cast<int>(when->unix_ms - secs * 1000));
    } else if (const auto* key = std::get_if<KeyEntry>(&e)) {
      out += "#EXT-X-KEY:METHOD=" + key->method;
      if (key->method != "NONE") {
        out += ",URI=\"" + key->uri + '"';
        if (!key->iv.empty()) out += ",IV=" + key->iv;
      }
      out += '\n';
    } else if (const auto* part = std::get_if<PartEntry>(&e)) {
      out += fmt::format("#EXT-X-PART:DURATION={:.6f},URI=\"{}\"{}\n", ToSeconds(part->duration), part->uri,
                         part->independent ? ",INDEPENDENT=YES" : "");
    } else if (const auto* hint = std::get_if<PreloadHintEntry>(&e)) {
      out += fmt::format("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"\n", hint->uri);
    }
  }
  for (const RenditionReport& r : p.rendition_reports) {
    out += fmt::format("#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={}", r.uri, r.last_msn);
    if (r.last_part) out += fmt::format(",LAST-PART={}", *r.last_part);
    out += '\n';
  }
  if (p.end_list) out += "#EXT-X-ENDLIST\n";
  return out;
}

std::string Render(const MultivariantPlaylist& p) {
  std::string out = fmt::format("#EXTM3U\n#EXT-X-VERSION:{}\n", p.version);
  if (p.independent_segments) out += "#EXT-X-INDEPENDENT-SEGMENTS\n";
  for (const Media& m : p.media) {
    std::string a;
    Attr(a, "TYPE", m.type == Media::Type::kAudio ? "AUDIO" : m.type == Media::Type::kVideo ? "VIDEO" : "SUBTITLES",
         false);
    Attr(a, "GROUP-ID", m.group_id, true);
    if (!m.language.empty()) Attr(a, "LANGUAGE", m.language, true);
    Attr(a, "NAME", m.name, true);
    Attr(a, "DEFAULT", m.is_default ? "YES" : "NO", false);
    Attr(a, "AUTOSELECT", m.is_default || m.autoselect ? "YES" : "NO", false);
    if (m.type == Media::Type::kSubtitles) Attr(a, "FORCED", m.forced ? "YES" : "NO", false);
    if (!m.characteristics.empty()) Attr(a, "CHARACTERISTICS", m.characteristics, true);
    if (!m.channels.empty()) Attr(a, "CHANNELS", m.channels, true);
    Attr(a, "URI", m.uri, true);
    out += "#EXT-X-MEDIA:" + a + "\n";
  }
  for (const Variant& v : p.variants) {
    std::string a = StreamAttrs(v.bandwidth, v.average_bandwidth, v.codecs, v.width, v.height);
    if (v.fps_num && v.fps_den)
      Attr(a, "FRAME-RATE", fmt::format("{:.3f}", static_cast<double>(v.fps_num) / v.fps_den), false);
    if (!v.audio.empty()) Attr(a, "AUDIO", v.audio, true);
    if (!v.subtitles.empty()) Attr(a, "SUBTITLES", v.subtitles, true);
    out += "#EXT-X-STREAM-INF:" + a + "\n" + v.uri + "\n";
  }
  for (const IFrameVariant& v : p.iframe_variants) {
    std::string a = StreamAttrs(v.bandwidth, v.average_bandwidth, v.codecs, v.width, v.height);
    Attr(a, "URI", v.uri, true);
    out += "#EXT-X-I-FRAME-STREAM-INF:" + a + "\n";
  }
  return out;
}

}  // namespace khls::hls
