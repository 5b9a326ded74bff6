// Files embedded in the binary at build time (see scripts/embed_file.cmake and
// packager/CMakeLists.txt).
#pragma once

#include <string_view>

namespace khls::origin::origin_assets {

/// hls.min.js; empty when the build found no hls.js (then /hls.min.js is a 404).
std::string_view HlsJs();

}  // namespace khls::origin::origin_assets
