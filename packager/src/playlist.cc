#include "khls/playlist.h"

#include <algorithm>

namespace khls::packager {
namespace {

constexpr double kClock = 90000.0;

// Segment bit rate in bits/s.
uint64_t BitRate(const SegmentEntry& e) {
  return e.duration ? static_cast<uint64_t>(static_cast<double>(e.size) * 8 * kClock / static_cast<double>(e.duration))
                    : 0;
}

}  // namespace

std::string RenderMediaPlaylist(const TitleState& s) {
  std::string out;
  out.reserve(128 + s.segments.size() * 40);
  out += "#EXTM3U\n";
  // Version 3: decimal EXTINF durations (RFC 8216 section 7).
  out += "#EXT-X-VERSION:3\n";
  out += fmt::format("#EXT-X-TARGETDURATION:{}\n", s.start.target_duration_s);
  out += "#EXT-X-MEDIA-SEQUENCE:0\n";
  out += s.complete ? "#EXT-X-PLAYLIST-TYPE:VOD\n" : "#EXT-X-PLAYLIST-TYPE:EVENT\n";
  out += "#EXT-X-INDEPENDENT-SEGMENTS\n";
  // With B-frames the first picture comes a reorder delay after the first decode
  // time, which hls.js takes as zero: start where the picture is (4.3.5.2).
  if (s.start.start_offset > 0)
    out += fmt::format("#EXT-X-START:TIME-OFFSET={:.3f},PRECISE=YES\n", s.start.start_offset / kClock);
  for (const SegmentEntry& e : s.segments) {
    out += fmt::format("#EXTINF:{:.6f},\n", static_cast<double>(e.duration) / kClock);
    out += SegmentFileName(e.sequence);
    out += '\n';
  }
  if (s.complete) out += "#EXT-X-ENDLIST\n";
  return out;
}

std::string RenderMasterPlaylist(const TitleState& s) {
  const proto::TitleStart& t = s.start;
  uint64_t peak = 0, avg = 0;
  if (s.complete) {
    peak = s.peak_bps;
    avg = s.avg_bps;
  } else {
    uint64_t first = s.segments.empty() ? 0 : BitRate(s.segments.front());
    peak = std::max(t.est_peak_bps, first);
    avg = t.est_avg_bps ? t.est_avg_bps : first;
  }
  peak = std::max<uint64_t>({peak, avg, 1});
  std::string inf = fmt::format("BANDWIDTH={}", peak);
  if (avg) inf += fmt::format(",AVERAGE-BANDWIDTH={}", avg);
  inf += fmt::format(",CODECS=\"{}\"", t.codecs);
  if (t.has_video && t.width && t.height) inf += fmt::format(",RESOLUTION={}x{}", t.width, t.height);
  if (t.has_video && t.fps_num && t.fps_den)
    inf += fmt::format(",FRAME-RATE={:.3f}", static_cast<double>(t.fps_num) / t.fps_den);
  return fmt::format("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{}\n{}/{}\n", inf,
                     s.VersionDir(), kMediaPlaylistName);
}

}  // namespace khls::packager
