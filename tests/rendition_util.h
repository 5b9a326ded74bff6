// Renditions as a title start record describes them, for tests that build records by hand.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "khls/proto.h"

namespace khls::test {

/// A video rendition at 25 fps, the default.
inline proto::Rendition Video(std::string id, uint32_t width, uint32_t height, std::string codecs = "avc1.42c01e") {
  proto::Rendition d;
  d.id = std::move(id);
  d.kind = proto::RenditionKind::kVideo;
  d.codecs = std::move(codecs);
  d.width = width;
  d.height = height;
  d.fps_num = 25;
  d.is_default = d.autoselect = true;
  return d;
}

inline proto::Rendition Audio(std::string id, std::string language, std::string name, bool is_default,
                              std::string codecs = "mp4a.40.2", uint32_t channels = 2) {
  proto::Rendition d;
  d.id = std::move(id);
  d.kind = proto::RenditionKind::kAudio;
  d.language = std::move(language);
  d.name = std::move(name);
  d.is_default = is_default;
  d.autoselect = true;
  d.codecs = std::move(codecs);
  d.channels = channels;
  return d;
}

inline proto::Rendition Subs(std::string id, std::string language, std::string name) {
  proto::Rendition d;
  d.id = std::move(id);
  d.kind = proto::RenditionKind::kSubtitles;
  d.language = std::move(language);
  d.name = std::move(name);
  d.autoselect = true;
  return d;
}

}  // namespace khls::test
