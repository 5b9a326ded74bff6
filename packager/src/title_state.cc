#include "khls/title_state.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace khls::packager {
namespace {

using nlohmann::json;
constexpr int kStateFormat = 2;

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

bool IsSafeDirName(const std::string& id) {
  return id.size() <= proto::kMaxRenditionIdLength && (id.empty() || id.front() != '.') &&
         std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
         });
}

// A part: [duration, size, digest, flags (1 independent, 2 last)].
json PartsJson(const std::vector<PartEntry>& parts) {
  json out = json::array();
  for (const PartEntry& p : parts)
    out.push_back(json::array({p.duration, p.size, p.digest, (p.independent ? 1 : 0) | (p.last ? 2 : 0)}));
  return out;
}

Result<std::vector<PartEntry>> ParseParts(const json& list, uint32_t sequence) {
  std::vector<PartEntry> out;
  for (const json& p : list) {
    PartEntry e;
    e.duration = p.at(0).get<uint64_t>();
    e.size = p.at(1).get<uint64_t>();
    e.digest = p.at(2).get<std::string>();
    const int flags = p.at(3).get<int>();
    e.independent = flags & 1;
    e.last = flags & 2;
    if (e.duration == 0 || (flags & ~3) || (e.last && &p != &list.back()))
      return Error(ErrorCode::kMalformedRecord, "segment {} has a bad part {}", sequence, out.size());
    out.push_back(std::move(e));
  }
  return out;
}

json SegmentsJson(const std::vector<SegmentEntry>& segments) {
  json out = json::array();
  for (const auto& e : segments) {
    json j = {{"seq", e.sequence}, {"duration", e.duration}, {"size", e.size}, {"digest", e.digest}};
    if (!e.map.empty()) j["map"] = e.map;
    if (!e.independent) j["independent"] = false;
    if (e.iframes) {
      json frames = json::array();
      for (const IFrame& f : *e.iframes) frames.push_back(json::array({f.offset, f.size, f.time}));
      j["iframes"] = std::move(frames);
      if (e.iframe_map) j["iframe_map"] = e.iframe_map;
    }
    if (!e.key.empty()) {
      j["key"] = e.key;
      j["iv"] = e.iv;
    }
    if (!e.parts.empty()) j["parts"] = PartsJson(e.parts);
    out.push_back(std::move(j));
  }
  return out;
}

// "init.mp4", or "init-NNNNNN.mp4" with NNNNNN <= sequence.
bool IsInitFileNameAtOrBefore(const std::string& name, uint32_t sequence) {
  if (name == InitFileName(0)) return true;
  if (name.size() != 15 || !name.starts_with("init-") || !name.ends_with(".mp4")) return false;
  uint32_t n = 0;
  for (size_t i = 5; i < 11; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    n = n * 10 + static_cast<uint32_t>(name[i] - '0');
  }
  return n <= sequence && name == InitFileName(n);
}

Result<std::vector<SegmentEntry>> ParseSegments(const json& list, uint32_t first = 0) {
  std::vector<SegmentEntry> out;
  for (const json& e : list) {
    SegmentEntry se;
    se.sequence = e.at("seq").get<uint32_t>();
    se.duration = e.at("duration").get<uint64_t>();
    se.size = e.at("size").get<uint64_t>();
    se.digest = e.at("digest").get<std::string>();
    se.map = e.value("map", std::string());
    se.independent = e.value("independent", true);
    if (auto it = e.find("iframes"); it != e.end()) {
      se.iframes.emplace();
      for (const json& f : *it) {
        IFrame frame{f.at(0).get<uint64_t>(), f.at(1).get<uint64_t>(), f.at(2).get<uint64_t>()};
        if (frame.size == 0 || frame.offset + frame.size < frame.offset || frame.offset + frame.size > se.size)
          return Error(ErrorCode::kMalformedRecord, "segment {} has an I-frame outside its {} bytes", se.sequence,
                       se.size);
        se.iframes->push_back(frame);
      }
      se.iframe_map = e.value("iframe_map", uint64_t{0});
      if (se.iframe_map > se.size)
        return Error(ErrorCode::kMalformedRecord, "segment {} has an I-frame map outside its {} bytes", se.sequence,
                     se.size);
    }
    se.key = e.value("key", std::string());
    if (!se.key.empty()) {
      se.iv = e.at("iv").get<std::string>();
      if (!IvFromHex(se.iv) || !IsKeyFileName(se.key))
        return Error(ErrorCode::kMalformedRecord, "segment {} has a bad key name '{}' or IV '{}'", se.sequence, se.key,
                     se.iv);
    }
    if (auto it = e.find("parts"); it != e.end()) {
      KHLS_ASSIGN_OR_RETURN(se.parts, ParseParts(*it, se.sequence));
    }
    // Its own init segment, or (the first segment of a live window) the one in effect since an earlier one.
    if (!se.map.empty() && se.map != InitFileName(se.sequence) &&
        !(out.empty() && IsInitFileNameAtOrBefore(se.map, se.sequence)))
      return Error(ErrorCode::kMalformedRecord, "segment {} names init segment '{}'", se.sequence, se.map);
    if (se.sequence != first + out.size())
      return Error(ErrorCode::kMalformedRecord, "segment list out of order at {}", se.sequence);
    out.push_back(std::move(se));
  }
  return out;
}

proto::RenditionKind KindFromName(const std::string& name) {
  if (name == "audio") return proto::RenditionKind::kAudio;
  if (name == "subtitles") return proto::RenditionKind::kSubtitles;
  if (name == "video") return proto::RenditionKind::kVideo;
  throw json::other_error::create(501, "unknown rendition kind '" + name + "'", nullptr);
}

// The fields every state format shares.
Status ParseCommonStart(const json& t, proto::TitleStart& st) {
  if (!FromHex(t.at("run_id").get<std::string>(), st.run_id) ||
      !FromHex(t.at("source_fingerprint").get<std::string>(), st.source_fingerprint))
    return Error(ErrorCode::kMalformedRecord, "bad run id or fingerprint");
  st.title_version = t.at("title_version").get<uint32_t>();
  st.target_duration_s = t.at("target_duration_s").get<uint32_t>();
  st.segment_duration_ms = t.at("segment_duration_ms").get<uint32_t>();
  st.start_offset = t.at("start_offset").get<uint32_t>();
  st.part_target_ms = t.value("part_target_ms", uint32_t{0});
  st.first_sequence = t.value("first_sequence", uint32_t{0});
  st.input_duration = t.at("input_duration").get<uint64_t>();
  st.source_size = t.at("source_size").get<uint64_t>();
  st.source_name = t.at("source_name").get<std::string>();
  return Status::Ok();
}

// State format 1 (kafka-hls 0.1): one muxed rendition, segments directly in v<N>/.
Status ParseFormat1(const json& j, TitleState& s) {
  const json& t = j.at("start");
  KHLS_RETURN_IF_ERROR(ParseCommonStart(t, s.start));
  proto::Rendition d;
  const bool has_video = t.at("has_video").get<bool>(), has_audio = t.at("has_audio").get<bool>();
  d.kind = has_video ? proto::RenditionKind::kVideo : proto::RenditionKind::kAudio;
  d.muxed_audio = has_video && has_audio;
  d.is_default = d.autoselect = true;
  d.codecs = t.at("codecs").get<std::string>();
  d.width = t.at("width").get<uint32_t>();
  d.height = t.at("height").get<uint32_t>();
  d.fps_num = t.at("fps_num").get<uint32_t>();
  d.fps_den = t.at("fps_den").get<uint32_t>();
  d.est_peak_bps = t.at("est_peak_bps").get<uint64_t>();
  d.est_avg_bps = t.at("est_avg_bps").get<uint64_t>();
  s.start.renditions = {std::move(d)};
  KHLS_ASSIGN_OR_RETURN(std::vector<SegmentEntry> segments, ParseSegments(j.at("segments")));
  s.segments = {std::move(segments)};
  return Status::Ok();
}

Status ParseFormat2(const json& j, TitleState& s) {
  if (auto it = j.find("window"); it != j.end()) {
    s.window = it->at("ticks").get<uint64_t>();
    s.first = it->at("first").get<uint32_t>();
    s.first_time = it->at("first_time").get<uint64_t>();
    s.pdt_anchor_ms = it->at("pdt_anchor_ms").get<int64_t>();
    for (const json& e : it->at("expired"))
      s.expired.push_back({e.at(0).get<uint32_t>(), e.at(1).get<int64_t>(), e.size() > 2 ? e.at(2).get<uint32_t>() : 0});
  }
  const json& t = j.at("start");
  KHLS_RETURN_IF_ERROR(ParseCommonStart(t, s.start));
  for (const json& r : t.at("renditions")) {
    proto::Rendition d;
    d.id = r.at("id").get<std::string>();
    d.kind = KindFromName(r.at("kind").get<std::string>());
    d.language = r.at("language").get<std::string>();
    d.name = r.at("name").get<std::string>();
    d.is_default = r.at("default").get<bool>();
    d.autoselect = r.at("autoselect").get<bool>();
    d.forced = r.at("forced").get<bool>();
    d.characteristics = r.at("characteristics").get<std::string>();
    d.codecs = r.at("codecs").get<std::string>();
    d.width = r.at("width").get<uint32_t>();
    d.height = r.at("height").get<uint32_t>();
    d.fps_num = r.at("fps_num").get<uint32_t>();
    d.fps_den = r.at("fps_den").get<uint32_t>();
    d.channels = r.at("channels").get<uint32_t>();
    d.est_peak_bps = r.at("est_peak_bps").get<uint64_t>();
    d.est_avg_bps = r.at("est_avg_bps").get<uint64_t>();
    d.muxed_audio = r.at("muxed_audio").get<bool>();
    if (!IsSafeDirName(d.id)) return Error(ErrorCode::kMalformedRecord, "rendition id '{}' is not a safe name", d.id);
    s.start.renditions.push_back(std::move(d));
  }
  const json& list = j.at("renditions");
  if (list.size() != s.start.renditions.size())
    return Error(ErrorCode::kMalformedRecord, "{} segment lists for {} renditions", list.size(),
                 s.start.renditions.size());
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].at("id").get<std::string>() != s.start.renditions[i].id)
      return Error(ErrorCode::kMalformedRecord, "segment list {} is not rendition '{}'", i, s.start.renditions[i].id);
    KHLS_ASSIGN_OR_RETURN(std::vector<SegmentEntry> segments, ParseSegments(list[i].at("segments"), s.first));
    s.segments.push_back(std::move(segments));
  }
  return Status::Ok();
}

}  // namespace

bool TitleState::HasRun(const std::string& run_hex) const {
  return std::find(runs.begin(), runs.end(), run_hex) != runs.end();
}

bool TitleState::StartsRun(uint32_t sequence) const {
  return std::any_of(run_starts.begin(), run_starts.end(), [&](const RunStart& r) { return r.sequence == sequence; });
}

int64_t TitleState::PdtAnchor(uint32_t sequence) const {
  int64_t anchor = pdt_anchor_ms;
  for (const RunStart& r : run_starts)
    if (r.sequence <= sequence) anchor = r.pdt_anchor_ms;
  return anchor;
}

std::string TitleState::RenditionDir(size_t rendition) const {
  const std::string& id = start.renditions.at(rendition).id;
  return id.empty() ? VersionDir() : VersionDir() + "/" + id;
}

size_t TitleState::ListedCount() const {
  if (segments.empty()) return 0;
  size_t n = segments.front().size();
  for (const auto& s : segments) n = std::min(n, s.size());
  return n;
}

std::string TitleState::KeyUri(size_t rendition, const std::string& key_file) const {
  if (key_uri_prefix.empty()) return key_file;
  return fmt::format("{}{}/{}/{}", key_uri_prefix, title, RenditionDir(rendition), key_file);
}

std::string_view ToString(Container c) { return c == Container::kFmp4 ? "fmp4" : "ts"; }

Result<Container> ParseContainer(std::string_view name) {
  if (name == "ts") return Container::kTs;
  if (name == "fmp4") return Container::kFmp4;
  return Error(ErrorCode::kInvalidArgument, "container '{}' is not one of: ts, fmp4", name);
}

namespace {

// The extension of a segment (or part) file of a rendition of `kind`.
const char* MediaExtension(proto::RenditionKind kind, Container container) {
  return kind == proto::RenditionKind::kSubtitles ? "vtt" : container == Container::kFmp4 ? "m4s" : "ts";
}

}  // namespace

std::string SegmentFileName(uint32_t sequence, proto::RenditionKind kind, Container container) {
  return fmt::format("seg-{:06d}.{}", sequence, MediaExtension(kind, container));
}

std::string_view TreeFileMime(std::string_view extension) {
  if (extension == ".m3u8") return kPlaylistMime;
  if (extension == ".ts") return kSegmentMime;
  if (extension == ".m4s" || extension == ".mp4") return kFragmentMime;
  if (extension == ".vtt") return kSubtitleMime;
  return "";
}

std::string PartFileName(uint32_t sequence, uint32_t part, proto::RenditionKind kind, Container container) {
  return fmt::format("seg-{:06d}.p{}.{}", sequence, part, MediaExtension(kind, container));
}

std::string InitFileName(uint32_t sequence) {
  return sequence == 0 ? std::string("init.mp4") : fmt::format("init-{:06d}.mp4", sequence);
}

std::string SerializeState(const TitleState& s) {
  const proto::TitleStart& t = s.start;
  json renditions = json::array(), lists = json::array();
  for (size_t i = 0; i < t.renditions.size(); ++i) {
    const proto::Rendition& d = t.renditions[i];
    renditions.push_back({{"id", d.id},
                          {"kind", proto::ToString(d.kind)},
                          {"language", d.language},
                          {"name", d.name},
                          {"default", d.is_default},
                          {"autoselect", d.autoselect},
                          {"forced", d.forced},
                          {"characteristics", d.characteristics},
                          {"codecs", d.codecs},
                          {"width", d.width},
                          {"height", d.height},
                          {"fps_num", d.fps_num},
                          {"fps_den", d.fps_den},
                          {"channels", d.channels},
                          {"est_peak_bps", d.est_peak_bps},
                          {"est_avg_bps", d.est_avg_bps},
                          {"muxed_audio", d.muxed_audio}});
    lists.push_back({{"id", d.id}, {"segments", SegmentsJson(i < s.segments.size() ? s.segments[i] : std::vector<SegmentEntry>{})}});
  }
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
        {"input_duration", t.input_duration},
        {"source_size", t.source_size},
        {"source_fingerprint", proto::ToHex(t.source_fingerprint)},
        {"source_name", t.source_name},
        {"renditions", renditions}}},
      {"renditions", lists},
      {"complete", s.complete},
  };
  if (s.container != Container::kTs) {
    j["container"] = ToString(s.container);
    j["inits"] = s.init_digests;
  }
  if (!s.run_starts.empty() || s.discontinuity_sequence) {
    json runs = json::array();
    for (const TitleState::RunStart& r : s.run_starts) runs.push_back(json::array({r.sequence, r.pdt_anchor_ms}));
    j["resumed"] = {{"discontinuity_sequence", s.discontinuity_sequence}, {"runs", std::move(runs)}};
  }
  if (t.first_sequence) j["start"]["first_sequence"] = t.first_sequence;
  // (A live title joined after its first segments has a `first` without a window.)
  if (s.window || s.first || s.first_time || s.pdt_anchor_ms || !s.expired.empty()) {
    json expired = json::array();
    for (const TitleState::Expired& e : s.expired) {
      json x = json::array({e.sequence, e.remove_at_ms});
      if (e.parts) x.push_back(e.parts);
      expired.push_back(std::move(x));
    }
    j["window"] = {{"ticks", s.window},
                   {"first", s.first},
                   {"first_time", s.first_time},
                   {"pdt_anchor_ms", s.pdt_anchor_ms},
                   {"expired", std::move(expired)}};
  }
  if (t.part_target_ms) j["start"]["part_target_ms"] = t.part_target_ms;
  if (s.low_latency) {
    json pending = json::array();
    for (const std::vector<PartEntry>& parts : s.pending) pending.push_back(PartsJson(parts));
    j["low_latency"] = {{"pending", std::move(pending)}, {"maps", s.pending_maps}};
  }
  if (s.encryption != EncryptionMethod::kNone)
    j["encryption"] = {{"method", ToString(s.encryption)},
                       {"key_rotation", s.key_rotation},
                       {"key_uri_prefix", s.key_uri_prefix}};
  // Names were checked as UTF-8 by the record decoder; never throw on a stray byte anyway.
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<TitleState> ParseState(std::string_view text) {
  try {
    json j = json::parse(text);
    const int format = j.at("format").get<int>();
    if (format != 1 && format != kStateFormat)
      return Error(ErrorCode::kMalformedRecord, "state format {} is not supported (this build reads 1 and {})",
                   j.at("format").dump(), kStateFormat);
    TitleState s;
    s.title = j.at("title").get<std::string>();
    KHLS_RETURN_IF_ERROR(proto::CheckTitleId(s.title));
    s.start.title = s.title;
    s.version = j.at("version").get<uint32_t>();
    s.runs = j.at("runs").get<std::vector<std::string>>();
    KHLS_RETURN_IF_ERROR(format == 1 ? ParseFormat1(j, s) : ParseFormat2(j, s));
    s.complete = j.at("complete").get<bool>();
    KHLS_ASSIGN_OR_RETURN(s.container, ParseContainer(j.value("container", std::string("ts"))));
    if (s.container != Container::kTs) {
      s.init_digests = j.at("inits").get<std::vector<std::string>>();
      if (s.init_digests.size() != s.start.renditions.size())
        return Error(ErrorCode::kMalformedRecord, "{} init digests for {} renditions", s.init_digests.size(),
                     s.start.renditions.size());
    }
    if (auto it = j.find("encryption"); it != j.end()) {
      KHLS_ASSIGN_OR_RETURN(s.encryption, ParseEncryptionMethod(it->at("method").get<std::string>()));
      s.key_rotation = it->at("key_rotation").get<uint32_t>();
      s.key_uri_prefix = it->at("key_uri_prefix").get<std::string>();
      if (!IsQuotableUriPrefix(s.key_uri_prefix))
        return Error(ErrorCode::kMalformedRecord, "state has a key URI prefix with a space, quote or control character");
    }
    if (auto it = j.find("low_latency"); it != j.end()) {
      s.low_latency = true;
      const json& pending = it->at("pending");
      s.pending_maps = it->at("maps").get<std::vector<std::string>>();
      if (pending.size() != s.start.renditions.size() || s.pending_maps.size() != s.start.renditions.size() ||
          s.start.part_target_ms == 0)
        return Error(ErrorCode::kMalformedRecord, "low-latency state does not match the title's {} renditions",
                     s.start.renditions.size());
      for (size_t r = 0; r < pending.size(); ++r) {
        KHLS_ASSIGN_OR_RETURN(std::vector<PartEntry> parts, ParseParts(pending[r], s.NextSequence(r)));
        if (!parts.empty() && parts.back().last)
          return Error(ErrorCode::kMalformedRecord, "rendition {} has a finished segment pending", r);
        if (!s.pending_maps[r].empty() && s.pending_maps[r] != InitFileName(s.NextSequence(r)))
          return Error(ErrorCode::kMalformedRecord, "rendition {} has a pending init '{}'", r, s.pending_maps[r]);
        s.pending.push_back(std::move(parts));
      }
    }
    if (auto it = j.find("resumed"); it != j.end()) {
      s.discontinuity_sequence = it->at("discontinuity_sequence").get<uint32_t>();
      size_t held = 0;
      for (const std::vector<SegmentEntry>& list : s.segments) held = std::max(held, list.size());
      for (const json& r : it->at("runs")) {
        TitleState::RunStart run{r.at(0).get<uint32_t>(), r.at(1).get<int64_t>()};
        // From the first segment listed to the one after the last held, in order.
        if (run.sequence < s.first || run.sequence > s.first + held ||
            (!s.run_starts.empty() && run.sequence <= s.run_starts.back().sequence))
          return Error(ErrorCode::kMalformedRecord, "state has a run starting at segment {} out of place",
                       run.sequence);
        s.run_starts.push_back(run);
      }
    }
    if (s.version == 0 || s.start.target_duration_s == 0 || s.runs.empty() || s.start.renditions.empty())
      return Error(ErrorCode::kMalformedRecord, "state has no version, target duration, run or rendition");
    return s;
  } catch (const json::exception& e) {
    return Error(ErrorCode::kMalformedRecord, "state file: {}", e.what());
  }
}

}  // namespace khls::packager
