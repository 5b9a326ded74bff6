// What the packager knows about one title; persisted as DIR/<title>/.state.json
// (written atomically after the segment it describes and before the playlists),
// so a restarted packager continues exactly where the files on disk are.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "khls/proto.h"
#include "khls/status.h"

namespace khls::packager {

struct SegmentEntry {
  uint32_t sequence = 0;
  uint64_t duration = 0;  ///< 90 kHz
  uint64_t size = 0;
  std::string digest;  ///< hex XXH3-128

  bool operator==(const SegmentEntry&) const = default;
};

struct TitleState {
  std::string title;
  /// Output version: v<version>/ holds this version's media playlist and segments.
  /// A new source published under the same title starts version + 1.
  uint32_t version = 1;
  /// Ingest runs whose records feed this version (a re-run of the same source after a
  /// crash continues the version rather than starting a new one).
  std::vector<std::string> runs;
  proto::TitleStart start;  ///< the TitleStart of the version's first run
  std::vector<SegmentEntry> segments;
  bool complete = false;
  uint64_t peak_bps = 0;  ///< measured, when complete
  uint64_t avg_bps = 0;

  /// "v1", "v2", ...
  std::string VersionDir() const { return fmt::format("v{}", version); }
  bool HasRun(const std::string& run_hex) const;

  bool operator==(const TitleState&) const = default;
};

/// Names in the output tree, shared by the engine that writes it and the origin
/// that serves it: DIR/<title>/{master.m3u8,.state.json}, DIR/<title>/v<N>/index.m3u8.
inline constexpr char kStateFileName[] = ".state.json";
inline constexpr char kMasterPlaylistName[] = "master.m3u8";
inline constexpr char kMediaPlaylistName[] = "index.m3u8";

/// Name of segment `sequence` in its version directory ("seg-000042.ts").
std::string SegmentFileName(uint32_t sequence);

std::string SerializeState(const TitleState& s);
/// Parses and validates; a damaged state file is kMalformedRecord with the reason.
Result<TitleState> ParseState(std::string_view json);

}  // namespace khls::packager
