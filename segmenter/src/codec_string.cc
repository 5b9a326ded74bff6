#include "codec_string.h"

#include <array>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "av_handles.h"
#include "khls/segmenter.h"

namespace khls::segmenter {
namespace internal {
namespace {

/// Payload of the first NAL unit of `wanted_type` in Annex B data (start codes
/// 00 00 01 / 00 00 00 01), header included, emulation prevention removed, at
/// most `max_bytes` long. `type_of` extracts the type from the first header byte.
template <typename TypeOf>
std::optional<std::vector<uint8_t>> FindAnnexBNal(const uint8_t* data, size_t size, int wanted_type,
                                                  size_t max_bytes, TypeOf type_of) {
  size_t i = 0;
  while (i + 3 < size) {
    if (data[i] != 0 || data[i + 1] != 0 || data[i + 2] != 1) {
      ++i;
      continue;
    }
    const size_t nal = i + 3;
    i = nal;
    if (type_of(data[nal]) != wanted_type) continue;
    std::vector<uint8_t> out;
    int zeros = 0;
    for (size_t j = nal; j < size && out.size() < max_bytes; ++j) {
      const uint8_t b = data[j];
      if (zeros >= 2 && b == 0x03) {  // emulation_prevention_three_byte
        zeros = 0;
        continue;
      }
      if (zeros >= 2 && b <= 0x01) break;  // next start code
      zeros = b == 0 ? zeros + 1 : 0;
      out.push_back(b);
    }
    return out;
  }
  return std::nullopt;
}

bool LooksLikeAnnexB(const uint8_t* data, size_t size) {
  return (size >= 3 && data[0] == 0 && data[1] == 0 && data[2] == 1) ||
         (size >= 4 && data[0] == 0 && data[1] == 0 && data[2] == 0 && data[3] == 1);
}

/// general_profile_space .. general_level_idc: 12 bytes, identical in hvcC
/// (bytes 1..12) and in an SPS's profile_tier_level (after its first byte).
std::string HevcFromProfileTierLevel(const uint8_t* ptl) {
  static constexpr std::array<const char*, 4> kSpace = {"", "A", "B", "C"};
  const int space = ptl[0] >> 6;
  const bool high_tier = ((ptl[0] >> 5) & 1) != 0;
  const int profile_idc = ptl[0] & 0x1f;
  uint32_t compat = (uint32_t{ptl[1]} << 24) | (uint32_t{ptl[2]} << 16) | (uint32_t{ptl[3]} << 8) | ptl[4];
  uint32_t reversed = 0;
  for (int bit = 0; bit < 32; ++bit) {
    reversed = (reversed << 1) | (compat & 1);
    compat >>= 1;
  }
  std::string out = fmt::format("hvc1.{}{}.{:X}.{}{}", kSpace[space], profile_idc, reversed,
                                high_tier ? 'H' : 'L', ptl[11]);
  // The six constraint-indicator bytes, trailing zero bytes omitted.
  int last = 5;
  while (last >= 0 && ptl[5 + last] == 0) --last;
  for (int k = 0; k <= last; ++k) out += fmt::format(".{:02X}", ptl[5 + k]);
  return out;
}

std::string H264FromProfile(int profile, int level) {
  if (profile == FF_PROFILE_UNKNOWN || level == FF_LEVEL_UNKNOWN || level <= 0) return "";
  uint8_t constraints = 0;
  if ((profile & FF_PROFILE_H264_CONSTRAINED) != 0) constraints |= 0x40;  // constraint_set1_flag
  if ((profile & FF_PROFILE_H264_INTRA) != 0) constraints |= 0x10;        // constraint_set3_flag
  return fmt::format("avc1.{:02x}{:02x}{:02x}", profile & 0xff, constraints, level & 0xff);
}

std::string HevcFromProfile(int profile, int level) {
  if (profile == FF_PROFILE_UNKNOWN || profile <= 0 || profile > 31 || level == FF_LEVEL_UNKNOWN || level <= 0) {
    return "";
  }
  // Compatibility flags (bit-reversed): the profile itself, and Main streams
  // are also Main 10 compatible, as encoders signal them.
  uint32_t compat = 1u << profile;
  if (profile == FF_PROFILE_HEVC_MAIN) compat |= 1u << FF_PROFILE_HEVC_MAIN_10;
  // B0: progressive_source_flag and frame_only_constraint_flag, the common case.
  return fmt::format("hvc1.{}.{:X}.L{}.B0", profile, compat, level);
}

}  // namespace

std::string HevcCodecString(const uint8_t* extradata, size_t size) {
  if (extradata == nullptr) return "";
  if (LooksLikeAnnexB(extradata, size)) {
    // SPS (type 33): 2-byte NAL header, then sps_video_parameter_set_id (4 bits),
    // sps_max_sub_layers_minus1 (3), sps_temporal_id_nesting_flag (1), then profile_tier_level.
    auto sps = FindAnnexBNal(extradata, size, 33, 2 + 1 + 12, [](uint8_t b) { return (b >> 1) & 0x3f; });
    if (!sps || sps->size() < 15) return "";
    return HevcFromProfileTierLevel(sps->data() + 3);
  }
  if (size < 13) return "";
  return HevcFromProfileTierLevel(extradata + 1);  // hvcC
}

std::string AacCodecString(const uint8_t* extradata, size_t size) {
  if (extradata == nullptr || size < 2) return "";
  int aot = extradata[0] >> 3;
  if (aot == 31) aot = 32 + (((extradata[0] & 0x07) << 3) | (extradata[1] >> 5));
  if (aot == 0) return "";
  return fmt::format("mp4a.40.{}", aot);
}

std::string CodecString(const AVCodecParameters& par) {
  const auto size = static_cast<size_t>(par.extradata_size > 0 ? par.extradata_size : 0);
  std::string s;
  switch (par.codec_id) {
    case AV_CODEC_ID_H264:
      s = H264CodecString(par.extradata, size);
      return s.empty() ? H264FromProfile(par.profile, par.level) : s;
    case AV_CODEC_ID_HEVC:
      s = HevcCodecString(par.extradata, size);
      return s.empty() ? HevcFromProfile(par.profile, par.level) : s;
    case AV_CODEC_ID_AAC:
      s = AacCodecString(par.extradata, size);
      if (!s.empty()) return s;
      // libavcodec's AAC profiles are the audio object type minus one (LC 1 -> 2, HE 4 -> 5, HEv2 28 -> 29).
      return fmt::format("mp4a.40.{}", par.profile >= 0 ? par.profile + 1 : 2);
    case AV_CODEC_ID_MP3:
      return "mp4a.40.34";
    case AV_CODEC_ID_AC3:
      return "ac-3";
    case AV_CODEC_ID_EAC3:
      return "ec-3";
    default:
      return "";
  }
}

std::string CodecDisplayName(const AVCodecParameters& par) {
  std::string name = avcodec_get_name(par.codec_id);
  if (const char* profile = avcodec_profile_name(par.codec_id, par.profile); profile != nullptr) {
    name += ' ';
    name += profile;
  }
  return name;
}

AVRational VideoFrameRate(const AVStream& st) {
  const AVRational avg = st.avg_frame_rate;
  const AVRational r = st.r_frame_rate;
  const bool avg_ok = avg.num > 0 && avg.den > 0;
  const bool r_ok = r.num > 0 && r.den > 0;
  if (avg_ok && r_ok && std::fabs(av_q2d(avg) / av_q2d(r) - 1.0) < 1e-3) return r;
  if (avg_ok) return avg;
  if (r_ok) return r;
  return {0, 1};
}

int AudioFrameSamples(const AVCodecParameters& par) {
  if (par.frame_size > 0) return par.frame_size;
  switch (par.codec_id) {
    case AV_CODEC_ID_AAC:
      return 1024;
    case AV_CODEC_ID_MP3:
      return 1152;
    case AV_CODEC_ID_AC3:
    case AV_CODEC_ID_EAC3:
      return 1536;
    default:
      return 0;
  }
}

}  // namespace internal

std::string H264CodecString(const uint8_t* extradata, size_t size) {
  if (extradata == nullptr || size < 4) return "";
  if (extradata[0] == 1) {  // avcC: configurationVersion, AVCProfileIndication, profile_compatibility, AVCLevelIndication
    return fmt::format("avc1.{:02x}{:02x}{:02x}", extradata[1], extradata[2], extradata[3]);
  }
  if (!internal::LooksLikeAnnexB(extradata, size)) return "";
  // SPS (type 7): 1-byte NAL header, profile_idc, constraint flags, level_idc.
  auto sps = internal::FindAnnexBNal(extradata, size, 7, 4, [](uint8_t b) { return b & 0x1f; });
  if (!sps || sps->size() < 4) return "";
  return fmt::format("avc1.{:02x}{:02x}{:02x}", (*sps)[1], (*sps)[2], (*sps)[3]);
}

}  // namespace khls::segmenter
