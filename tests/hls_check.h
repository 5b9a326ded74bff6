// Reading what the packager wrote the way a player does: the multivariant
// playlist's renditions and variants, media playlists, and ffprobe views of
// source tracks. Shared by the integration tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "test_util.h"

namespace khls::test {

/// KEY=VALUE,KEY="quoted, value" -> map (quotes removed).
inline std::map<std::string, std::string> ParseAttributes(const std::string& list) {
  std::map<std::string, std::string> out;
  size_t i = 0;
  while (i < list.size()) {
    const size_t eq = list.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = list.substr(i, eq - i);
    std::string value;
    size_t j = eq + 1;
    if (j < list.size() && list[j] == '"') {
      const size_t close = list.find('"', j + 1);
      value = list.substr(j + 1, close - j - 1);
      j = close + 1;
    } else {
      const size_t comma = list.find(',', j);
      value = list.substr(j, comma == std::string::npos ? std::string::npos : comma - j);
      j = comma == std::string::npos ? list.size() : comma;
    }
    out[key] = value;
    i = j + 1;
  }
  return out;
}

struct Master {
  std::vector<std::map<std::string, std::string>> media;  ///< EXT-X-MEDIA attributes
  struct Variant {
    std::map<std::string, std::string> attrs;
    std::string uri;
  };
  std::vector<Variant> variants;
  std::vector<std::map<std::string, std::string>> iframe_variants;  ///< EXT-X-I-FRAME-STREAM-INF attributes

  /// Every media playlist it names, once.
  std::vector<std::string> Playlists() const {
    std::vector<std::string> out;
    auto add = [&](const std::string& u) {
      if (!u.empty() && std::find(out.begin(), out.end(), u) == out.end()) out.push_back(u);
    };
    for (const auto& v : variants) add(v.uri);
    for (const auto& m : media) add(m.count("URI") ? m.at("URI") : "");
    return out;
  }
  std::vector<std::map<std::string, std::string>> Media(const std::string& type) const {
    std::vector<std::map<std::string, std::string>> out;
    for (const auto& m : media)
      if (m.at("TYPE") == type) out.push_back(m);
    return out;
  }
};

inline Master ParseMaster(const std::string& text) {
  Master m;
  std::istringstream in(text);
  std::string line;
  bool want_uri = false;
  while (std::getline(in, line)) {
    if (line.rfind("#EXT-X-MEDIA:", 0) == 0) m.media.push_back(ParseAttributes(line.substr(13)));
    if (line.rfind("#EXT-X-I-FRAME-STREAM-INF:", 0) == 0) m.iframe_variants.push_back(ParseAttributes(line.substr(26)));
    if (line.rfind("#EXT-X-STREAM-INF:", 0) == 0) {
      m.variants.push_back({ParseAttributes(line.substr(18)), ""});
      want_uri = true;
    } else if (want_uri && !line.empty() && line[0] != '#') {
      m.variants.back().uri = line;
      want_uri = false;
    }
  }
  return m;
}

/// Sum of a media playlist's EXTINF durations, seconds.
inline double PlaylistDuration(const std::string& text) {
  std::regex extinf(R"(#EXTINF:([0-9.]+),)");
  double sum = 0;
  for (std::sregex_iterator it(text.begin(), text.end(), extinf), end; it != end; ++it) sum += std::stod((*it)[1]);
  return sum;
}

/// One entry of an I-frames-only playlist: the byte range of one I-frame, and
/// the initialization section (EXT-X-MAP) it needs first.
struct IFrameEntry {
  double duration = 0;
  std::string uri;
  uint64_t offset = 0, length = 0;
  std::string map_uri;
  std::optional<std::pair<uint64_t, uint64_t>> map_range;  ///< (length, offset); nullopt = the whole resource
};

/// The entries of an I-frames-only playlist, in order. An EXT-X-BYTERANGE
/// without an offset is not accepted (FAIL): the packager always writes one.
inline std::vector<IFrameEntry> ParseIFramePlaylist(const std::string& text) {
  std::vector<IFrameEntry> out;
  std::istringstream in(text);
  IFrameEntry next;
  std::smatch m;
  const std::regex map(R"re(#EXT-X-MAP:URI="([^"]+)"(?:,BYTERANGE="(\d+)@(\d+)")?)re");
  const std::regex range(R"(#EXT-X-BYTERANGE:(\d+)@(\d+))");
  const std::regex extinf(R"(#EXTINF:([0-9.]+),)");
  for (std::string line; std::getline(in, line);) {
    if (std::regex_match(line, m, map)) {
      next.map_uri = m[1];
      next.map_range.reset();
      if (m[2].matched) next.map_range = std::make_pair(std::stoull(m[2]), std::stoull(m[3]));
    } else if (std::regex_match(line, m, range)) {
      next.length = std::stoull(m[1]);
      next.offset = std::stoull(m[2]);
    } else if (line.rfind("#EXT-X-BYTERANGE", 0) == 0) {
      FAIL("byte range without an offset: " << line);
    } else if (std::regex_match(line, m, extinf)) {
      next.duration = std::stod(m[1]);
    } else if (!line.empty() && line[0] != '#') {
      next.uri = line;
      out.push_back(next);
      next.length = next.offset = 0;
    }
  }
  return out;
}

/// The rendition directories of a title's version 1 ("v1/video-240p", ...), from its master's URIs.
inline std::vector<std::string> RenditionDirs(const std::filesystem::path& title) {
  std::vector<std::string> dirs;
  const std::string master = ReadFile(title / "master.m3u8");
  const std::regex uri(R"((v1/[a-z0-9_-]+)/index\.m3u8)");
  for (std::sregex_iterator m(master.begin(), master.end(), uri), e; m != e; ++m) {
    const std::string d = (*m)[1];
    if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  }
  return dirs;
}

/// The segment URIs of a media playlist, in order.
inline std::vector<std::string> PlaylistSegments(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] != '#') out.push_back(line);
  return out;
}

/// How long a track of a media file lasts by its packets: end of the last minus
/// start of the first, seconds (`stream` is an ffprobe specifier: "v:0", "a:1").
inline double TrackDuration(const std::string& file, const std::string& stream) {
  auto r = RunStdout("ffprobe -v error -select_streams " + stream +
                     " -show_entries packet=pts_time,duration_time -of csv=p=0 " + Quote(file));
  double first = 1e18, last = -1e18;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    const auto comma = line.find(',');
    if (comma == std::string::npos || line.compare(0, 3, "N/A") == 0) continue;
    const double pts = std::stod(line.substr(0, comma));
    const std::string d = line.substr(comma + 1);
    const double dur = d.empty() || d.compare(0, 3, "N/A") == 0 ? 0 : std::stod(d);
    first = std::min(first, pts);
    last = std::max(last, pts + dur);
  }
  return last > first ? last - first : 0;
}

}  // namespace khls::test
