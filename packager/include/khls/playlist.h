// HLS playlist rendering (RFC 8216). Pure functions of the title state: the
// same state always renders the same bytes.
#pragma once

#include <string>

#include "khls/title_state.h"

namespace khls::packager {

/// The media playlist of the title's current version. EVENT while the title
/// grows; VOD with #EXT-X-ENDLIST once complete. EXT-X-TARGETDURATION is the
/// value declared at title start and never changes (4.3.3.1). EXT-X-START skips
/// the B-frame reorder delay at the start, where no picture exists yet.
std::string RenderMediaPlaylist(const TitleState& s);

/// The multivariant playlist players are given (DIR/<title>/master.m3u8):
/// one variant with BANDWIDTH, AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE.
/// Before completion the bandwidths are the ingest's estimates (or, for live
/// input, the first segment's rate); after, the measured peak and average.
std::string RenderMasterPlaylist(const TitleState& s);

}  // namespace khls::packager
