// The playlists of a title, built from its state (khls/hls.h renders them).
// Pure functions: the same state always gives the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "khls/hls.h"
#include "khls/title_state.h"

namespace khls::packager {

/// The media playlist of one rendition of the title's current version: every
/// segment group complete in all renditions (TitleState::ListedCount), EVENT
/// while the title grows, VOD with #EXT-X-ENDLIST once complete. Packaged as
/// fmp4: version 7, and an EXT-X-MAP before the first segment and wherever the
/// init segment changes.
/// EXT-X-TARGETDURATION is the value declared at title start and never changes
/// (4.3.3.1). EXT-X-START skips the B-frame reorder delay at the start, where no
/// picture exists yet.
hls::MediaPlaylist BuildMediaPlaylist(const TitleState& s, size_t rendition);

/// The multivariant playlist players are given (DIR/<title>/master.m3u8):
/// - audio renditions as EXT-X-MEDIA TYPE=AUDIO, one group per codec
///   ("audio-mp4a.40.2"), each with one DEFAULT=YES (the source's default track,
///   else the group's first);
/// - subtitle renditions as EXT-X-MEDIA TYPE=SUBTITLES in group "subs";
/// - one EXT-X-STREAM-INF per video rendition and audio group (a title without
///   video: one per audio group, pointing at its default rendition), whose
///   BANDWIDTH / AVERAGE-BANDWIDTH add the video's rate, the group's highest
///   audio rate and the highest subtitle rate, and whose CODECS list the video's
///   and the group's codecs.
/// Rates are the ingest's estimates (or, for live input, the first segment's
/// rate) until the title is complete, then measured from the segments.
hls::MultivariantPlaylist BuildMultivariantPlaylist(const TitleState& s);

/// False when a listed segment of any rendition does not start with a picture a
/// decoder can begin with: EXT-X-INDEPENDENT-SEGMENTS must then not be claimed.
bool AllIndependent(const TitleState& s);

/// True when video rendition `rendition` has an I-frames-only playlist: every
/// listed segment was indexed and starts with a picture that decodes alone (so
/// the I-frames cover the whole timeline). Not for format-1 (muxed) titles.
bool HasIFramePlaylist(const TitleState& s, size_t rendition);

/// Its I-frames-only playlist (RFC 8216 4.3.3.6), over the same segment files:
/// one entry per I-frame, an EXT-X-BYTERANGE exactly over its bytes, lasting
/// until the next I-frame (the last of a segment, to the segment's end). TS: an
/// EXT-X-MAP before each segment's I-frames, BYTERANGE over that segment's PAT
/// and PMT (version 5). fMP4: the media playlist's init segments, and one
/// I-frame per segment (moof to the end of its first sample), version 7.
/// Entries of a listed segment never change, so it can grow as an EVENT playlist.
/// The multivariant playlist lists it as EXT-X-I-FRAME-STREAM-INF with its
/// peak and average rate over those byte ranges.
hls::MediaPlaylist BuildIFramePlaylist(const TitleState& s, size_t rendition);

std::string RenderMediaPlaylist(const TitleState& s, size_t rendition);
std::string RenderIFramePlaylist(const TitleState& s, size_t rendition);
std::string RenderMasterPlaylist(const TitleState& s);

/// Peak and average bit rate of one rendition (bits/s), as the master uses them.
/// LL-HLS: the parts rendition r has of segment `sequence` (its entry's, or the
/// pending ones of its segment in progress); null when it has not started it.
const std::vector<PartEntry>* PartsOf(const TitleState& s, size_t rendition, uint32_t sequence);
/// LL-HLS: the segment after the listed ones and how many of its parts every
/// (video and audio) rendition has: what the media playlists list as in progress.
struct PartCursor {
  uint32_t sequence = 0;
  size_t parts = 0;
};
PartCursor LowLatencyCursor(const TitleState& s);

struct Rates {
  uint64_t peak = 0;
  uint64_t average = 0;
};
Rates RenditionRates(const TitleState& s, size_t rendition);

}  // namespace khls::packager
