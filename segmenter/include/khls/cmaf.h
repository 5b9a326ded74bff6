// MPEG-TS segment -> CMAF (fragmented MP4) segment, without re-encoding.
//
// Kafka carries MPEG-TS; a packager asked for `--container fmp4` remuxes every
// segment it receives on its own: libavformat's TS demuxer reads the segment
// from memory and its MP4 muxer writes one fragment (moof + mdat) holding every
// sample of the segment, plus the initialization segment (ftyp + moov) that
// describes the tracks. Nothing but the segment's bytes goes in, so the same
// segment always gives the same bytes, on every packager, after any restart.
//
// Timing: the fragment's tfdt is the first sample's decode time on the title's
// own timeline (no edit list, no shift to zero), video in 90 kHz and audio in
// its sample rate, so consecutive segments join without gap or overlap and
// audio and video renditions stay in sync as they were in the TS. The last
// video sample lasts until the segment's end (`duration`).
//
// HEVC is written as 'hvc1' (parameter sets in the sample entry; Apple and
// hls.js require it), H.264 as 'avc1', AAC as 'mp4a', AC-3 / E-AC-3 as
// 'ac-3' / 'ec-3', MP3 as 'mp4a' (object type 0x6B).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "khls/status.h"

namespace khls::segmenter {

struct CmafSegment {
  /// ftyp + moov. Equal for every segment of a rendition as long as its codec
  /// parameters do not change (a new init needs a new EXT-X-MAP).
  std::vector<uint8_t> init;
  /// moof + mdat: one fragment holding all of the segment's samples.
  std::vector<uint8_t> media;
};

/// Remuxes one MPEG-TS segment (every video/audio stream in it becomes a track,
/// in PID order). `sequence` becomes the fragment's mfhd sequence number (use
/// the segment's sequence + 1: they must increase). `duration`: the segment's
/// length in 90 kHz ticks (how long its last video sample lasts follows from
/// it); 0 = unknown (the last sample lasts as long as the one before it).
/// `what` names the segment in errors ("title 'x' rendition 'video-720p'
/// segment 12"). kInvalidInput when the TS cannot be demuxed or has a stream the
/// MP4 muxer cannot carry.
///
/// `parameters_from` (optional): the MPEG-TS that comes before `ts` in the same
/// stream, e.g. the first part of the same segment. LL-HLS parts that do not start
/// on a keyframe carry no SPS/PPS of their own: the two are demuxed as one stream
/// (the parameter sets reach the demuxer) and only the samples of `ts` are written.
Result<CmafSegment> RemuxTsToCmaf(std::span<const uint8_t> ts, uint32_t sequence, uint64_t duration,
                                  const std::string& what, std::span<const uint8_t> parameters_from = {});

}  // namespace khls::segmenter
