// RFC 6381 "codecs" values for the streams HLS over MPEG-TS can carry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

struct AVCodecParameters;
struct AVStream;

extern "C" {
#include <libavutil/rational.h>
}

namespace khls::segmenter::internal {

/// "hvc1.<space><profile_idc>.<compat flags, bit-reversed hex>.<L|H><level_idc>[.<constraint bytes>]"
/// (ISO/IEC 14496-15 annex E) from hvcC or Annex B (VPS/SPS/PPS) extradata; "" when
/// neither holds a profile_tier_level.
std::string HevcCodecString(const uint8_t* extradata, size_t size);

/// "mp4a.40.<audio object type>" from an AudioSpecificConfig; "" when too short.
std::string AacCodecString(const uint8_t* extradata, size_t size);

/// The CODECS entry for one stream, from its extradata, falling back to the
/// profile/level libavcodec reported. "" for a codec HLS over MPEG-TS cannot carry.
std::string CodecString(const AVCodecParameters& par);

/// "h264 High", "aac LC", "ac3": codec name plus profile name when known (for logs).
std::string CodecDisplayName(const AVCodecParameters& par);

/// A video stream's frame rate: avg_frame_rate, or r_frame_rate when that is
/// the same rate exactly spelled (30000/1001 rather than 2997/100) or when the
/// average is unknown; {0, 1} when neither is known.
AVRational VideoFrameRate(const AVStream& st);

/// Samples per audio frame: codecpar's frame_size, else the codec's usual one
/// (AAC 1024, MP3 1152, AC-3 / E-AC-3 1536); 0 when unknown.
int AudioFrameSamples(const AVCodecParameters& par);

}  // namespace khls::segmenter::internal
