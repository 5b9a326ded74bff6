#include "khls/title_state.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace khls::packager {
namespace {

using nlohmann::json;
constexpr int kStateFormat = 1;

bool FromHex(const std::string& hex, std::array<uint8_t, 16>& out) {
  if (hex.size() != 32) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < 16; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

}  // namespace

bool TitleState::HasRun(const std::string& run_hex) const {
  return std::find(runs.begin(), runs.end(), run_hex) != runs.end();
}

std::string SegmentFileName(uint32_t sequence) { return fmt::format("seg-{:06d}.ts", sequence); }

std::string SerializeState(const TitleState& s) {
  const proto::TitleStart& t = s.start;
  json segs = json::array();
  for (const auto& e : s.segments)
    segs.push_back({{"seq", e.sequence}, {"duration", e.duration}, {"size", e.size}, {"digest", e.digest}});
  json j = {
      {"format", kStateFormat},
      {"title", s.title},
      {"version", s.version},
      {"runs", s.runs},
      {"start",
       {{"run_id", proto::ToHex(t.run_id)},
        {"title_version", t.title_version},
        {"target_duration_s", t.target_duration_s},
        {"segment_duration_ms", t.segment_duration_ms},
        {"start_offset", t.start_offset},
        {"has_video", t.has_video},
        {"has_audio", t.has_audio},
        {"codecs", t.codecs},
        {"width", t.width},
        {"height", t.height},
        {"fps_num", t.fps_num},
        {"fps_den", t.fps_den},
        {"est_peak_bps", t.est_peak_bps},
        {"est_avg_bps", t.est_avg_bps},
        {"input_duration", t.input_duration},
        {"source_size", t.source_size},
        {"source_fingerprint", proto::ToHex(t.source_fingerprint)},
        {"source_name", t.source_name}}},
      {"segments", segs},
      {"complete", s.complete},
      {"peak_bps", s.peak_bps},
      {"avg_bps", s.avg_bps},
  };
  return j.dump(1) + "\n";
}

Result<TitleState> ParseState(std::string_view text) {
  try {
    json j = json::parse(text);
    if (j.at("format").get<int>() != kStateFormat)
      return Error(ErrorCode::kMalformedRecord, "state format {} is not supported", j.at("format").dump());
    TitleState s;
    s.title = j.at("title").get<std::string>();
    KHLS_RETURN_IF_ERROR(proto::CheckTitleId(s.title));
    s.version = j.at("version").get<uint32_t>();
    s.runs = j.at("runs").get<std::vector<std::string>>();
    const json& t = j.at("start");
    proto::TitleStart& st = s.start;
    st.title = s.title;
    if (!FromHex(t.at("run_id").get<std::string>(), st.run_id) ||
        !FromHex(t.at("source_fingerprint").get<std::string>(), st.source_fingerprint))
      return Error(ErrorCode::kMalformedRecord, "bad run id or fingerprint");
    st.title_version = t.at("title_version").get<uint32_t>();
    st.target_duration_s = t.at("target_duration_s").get<uint32_t>();
    st.segment_duration_ms = t.at("segment_duration_ms").get<uint32_t>();
    st.start_offset = t.at("start_offset").get<uint32_t>();
    st.has_video = t.at("has_video").get<bool>();
    st.has_audio = t.at("has_audio").get<bool>();
    st.codecs = t.at("codecs").get<std::string>();
    st.width = t.at("width").get<uint32_t>();
    st.height = t.at("height").get<uint32_t>();
    st.fps_num = t.at("fps_num").get<uint32_t>();
    st.fps_den = t.at("fps_den").get<uint32_t>();
    st.est_peak_bps = t.at("est_peak_bps").get<uint64_t>();
    st.est_avg_bps = t.at("est_avg_bps").get<uint64_t>();
    st.input_duration = t.at("input_duration").get<uint64_t>();
    st.source_size = t.at("source_size").get<uint64_t>();
    st.source_name = t.at("source_name").get<std::string>();
    for (const json& e : j.at("segments")) {
      SegmentEntry se{e.at("seq").get<uint32_t>(), e.at("duration").get<uint64_t>(), e.at("size").get<uint64_t>(),
                      e.at("digest").get<std::string>()};
      if (se.sequence != s.segments.size())
        return Error(ErrorCode::kMalformedRecord, "segment list out of order at {}", se.sequence);
      s.segments.push_back(std::move(se));
    }
    s.complete = j.at("complete").get<bool>();
    s.peak_bps = j.at("peak_bps").get<uint64_t>();
    s.avg_bps = j.at("avg_bps").get<uint64_t>();
    if (s.version == 0 || st.target_duration_s == 0 || s.runs.empty())
      return Error(ErrorCode::kMalformedRecord, "state has no version, target duration or run");
    return s;
  } catch (const json::exception& e) {
    return Error(ErrorCode::kMalformedRecord, "state file: {}", e.what());
  }
}

}  // namespace khls::packager
