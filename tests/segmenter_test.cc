// Segmenter tests on real media made by tests/make_media.sh. A title is a set of
// renditions cut at the same points; every rendition's parts are checked on their
// own: the MPEG-TS bytes are parsed here (PAT/PMT and its language descriptor, PES
// timestamps, continuity counters, keyframes), the WebVTT text is compared with
// the cues of the source, each rendition's concatenated parts are decoded with the
// ffmpeg CLI, and the numbers are compared with what ffprobe says about the sources.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "khls/segmenter.h"

namespace fs = std::filesystem;
using khls::ErrorCode;
using khls::segmenter::H264CodecString;
using khls::segmenter::kClock;
using khls::segmenter::kOutputStartPts;
using khls::segmenter::Params;
using khls::segmenter::Part;
using khls::segmenter::RenditionInfo;
using khls::segmenter::Segment;
using khls::segmenter::Segmenter;
using khls::segmenter::StreamReport;
using khls::segmenter::Summary;
using khls::segmenter::TitleInfo;
using khls::segmenter::TrackKind;

namespace {

// libavformat's own messages: errors only, as the ingest has them.
const bool kQuietLibrary = (khls::segmenter::SetLibraryLogLevel(false), true);

constexpr std::string_view kVttHeader = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n";

std::string Media(const std::string& name) { return std::string(KHLS_TEST_MEDIA_DIR) + "/" + name; }

/// Runs a shell command, returns its stdout (and stderr if the command says 2>&1).
std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE_MESSAGE(p != nullptr, cmd);
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  pclose(p);
  return out;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

/// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("khls_segmenter_test_{}_{}", getpid(), counter()++);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  static int& counter() {
    static int n = 0;
    return n;
  }
};

void WriteFile(const fs::path& path, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE_MESSAGE(f.good(), path.string());
}

uint64_t Fnv1a(const std::vector<uint8_t>& data) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : data) h = (h ^ b) * 1099511628211ull;
  return h;
}

// ---- ffprobe ----------------------------------------------------------------

double Ffprobe(const std::string& path, const std::string& entries, const std::string& extra = "") {
  const std::string out = Trim(Run(fmt::format("ffprobe -v error {} -show_entries {} -of csv=p=0 '{}'", extra,
                                               entries, path)));
  return out.empty() || out.starts_with("N/A") ? NAN : std::stod(out);
}

/// Frames of video stream `stream` of a source a decoder can show: its packets from the first keyframe on.
int64_t SourceFrames(const std::string& path, int stream) {
  static std::map<std::pair<std::string, int>, int64_t> cache;
  if (auto it = cache.find({path, stream}); it != cache.end()) return it->second;
  std::istringstream packets(Run(fmt::format(
      "ffprobe -v error -select_streams {} -show_entries packet=flags -of csv=p=0 '{}'", stream, path)));
  int64_t frames = 0;
  for (std::string line; std::getline(packets, line);) {
    // "K_," / "__," (MPEG-TS side data adds blank lines)
    if (line.starts_with("K")) ++frames;
    else if (frames > 0 && line.starts_with("_")) ++frames;
  }
  return cache[{path, stream}] = frames;
}

/// ffmpeg decodes `file` (its first stream): what it prints at -v error (nothing, for a good
/// file), how many frames it decodes, and how long they last.
struct Decoded {
  std::string errors;
  int64_t frames = 0;
  double duration = 0;  ///< seconds
};
Decoded Decode(const fs::path& file) {
  const fs::path errors = file.string() + ".errors";
  std::istringstream crc(Run(fmt::format("ffmpeg -nostdin -v error -i '{}' -map 0:0 -f framecrc - 2>'{}'",
                                         file.string(), errors.string())));
  Decoded d;
  int64_t tb_num = 0, tb_den = 1, ticks = 0;
  for (std::string line; std::getline(crc, line);) {
    if (line.starts_with("#tb 0: ")) std::sscanf(line.c_str() + 7, "%" SCNd64 "/%" SCNd64, &tb_num, &tb_den);
    if (line.starts_with("#") || line.empty()) continue;
    // "stream, dts, pts, duration, size, crc"
    int64_t stream = 0, dts = 0, pts = 0, duration = 0;
    if (std::sscanf(line.c_str(), "%" SCNd64 ", %" SCNd64 ", %" SCNd64 ", %" SCNd64, &stream, &dts, &pts, &duration) ==
        4) {
      ++d.frames;
      ticks += duration;
    }
  }
  d.duration = double(ticks) * double(tb_num) / double(tb_den);
  std::ifstream in(errors);
  d.errors.assign(std::istreambuf_iterator<char>(in), {});
  return d;
}

/// First pts and end (pts + duration) of stream `select` over its packets, in seconds.
struct Span {
  double first = NAN;
  double end = NAN;
};
Span PacketSpan(const std::string& path, const std::string& select) {
  static std::map<std::pair<std::string, std::string>, Span> cache;
  if (auto it = cache.find({path, select}); it != cache.end()) return it->second;
  std::istringstream in(Run(fmt::format(
      "ffprobe -v error -select_streams {} -show_entries packet=pts_time,duration_time -of csv=p=0 '{}'", select,
      path)));
  Span s;
  for (std::string line; std::getline(in, line);) {
    const auto comma = line.find(',');
    if (comma == std::string::npos || line.starts_with("N/A")) continue;
    const double pts = std::stod(line.substr(0, comma));
    const std::string d = line.substr(comma + 1);
    const double duration = d.empty() || d.starts_with("N/A") ? 0 : std::stod(d);
    s.first = std::isnan(s.first) ? pts : std::min(s.first, pts);
    s.end = std::isnan(s.end) ? pts + duration : std::max(s.end, pts + duration);
  }
  return cache[{path, select}] = s;
}

/// Pts (seconds) of the first video keyframe: the first picture a decoder can show.
double FirstPicture(const std::string& path) {
  std::istringstream packets(Run(fmt::format(
      "ffprobe -v error -select_streams v:0 -read_intervals %+10 -show_entries packet=pts_time,flags -of csv=p=0 '{}'",
      path)));
  for (std::string line; std::getline(packets, line);)
    if (Contains(line, ",K")) return std::stod(line);
  return NAN;
}

// ---- segmenting -------------------------------------------------------------

struct Title {
  std::vector<std::string> urls;
  Params params;
  TitleInfo info;
  std::vector<Segment> segments;
  Summary summary;
};

Params Target(double seconds) {
  Params p;
  p.target_duration = seconds;
  return p;
}

/// Opens `urls` and takes every segment group; checks the end-of-title behavior and progress.
Title SegmentAll(const std::vector<std::string>& urls, const Params& params) {
  INFO("input: ", urls.front());
  auto opened = Segmenter::Open(urls, params);
  REQUIRE_MESSAGE(opened.ok(), opened.status().message());
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  Title t;
  t.urls = urls;
  t.params = params;
  t.info = seg->info();
  for (;;) {
    auto next = seg->Next();
    REQUIRE_MESSAGE(next.ok(), next.status().message());
    if (!next->has_value()) break;
    t.segments.push_back(std::move(**next));
  }
  // Stays at the end.
  auto again = seg->Next();
  REQUIRE(again.ok());
  CHECK_FALSE(again->has_value());
  t.summary = seg->summary();
  const auto progress = seg->progress();
  CHECK(progress.bytes_read > 0);
  if (t.info.input_size > 0) CHECK(progress.bytes_read <= t.info.input_size);
  CHECK(progress.input_size == t.info.input_size);
  CHECK(progress.media_time > t.summary.total_duration - kClock / 5);
  CHECK(progress.media_time <= t.summary.total_duration);
  return t;
}

Title SegmentAll(const std::string& url, double target = 6.0) { return SegmentAll({url}, Target(target)); }

/// Titles segmented once per process at a target, shared by the test cases that only read them.
const Title& Cached(const std::string& name, double target = 6.0) {
  static std::map<std::pair<std::string, double>, Title> cache;
  auto it = cache.find({name, target});
  if (it == cache.end()) it = cache.emplace(std::make_pair(name, target), SegmentAll(Media(name), target)).first;
  return it->second;
}

std::vector<std::string> Ids(const TitleInfo& info) {
  std::vector<std::string> ids;
  for (const RenditionInfo& r : info.renditions) ids.push_back(r.id);
  return ids;
}

std::vector<uint8_t> Concat(const Title& t, size_t r) {
  std::vector<uint8_t> all;
  for (const Segment& s : t.segments) all.insert(all.end(), s.parts[r].data.begin(), s.parts[r].data.end());
  return all;
}

std::string Text(const Part& p) { return {p.data.begin(), p.data.end()}; }

// ---- MPEG-TS parsing --------------------------------------------------------

struct TsPacket {
  int pid = -1;
  bool pusi = false;
  bool has_payload = false;
  int cc = 0;
  bool random_access = false;
  const uint8_t* payload = nullptr;
  size_t payload_size = 0;
};

TsPacket ParseTs(const uint8_t* p) {
  TsPacket t;
  t.pid = ((p[1] & 0x1f) << 8) | p[2];
  t.pusi = (p[1] & 0x40) != 0;
  const int afc = (p[3] >> 4) & 3;
  t.cc = p[3] & 0x0f;
  t.has_payload = (afc & 1) != 0;
  size_t offset = 4;
  if ((afc & 2) != 0) {
    const int af_len = p[4];
    if (af_len > 0) t.random_access = (p[5] & 0x40) != 0;
    offset = 5 + af_len;
  }
  if (t.has_payload && offset < 188) {
    t.payload = p + offset;
    t.payload_size = 188 - offset;
  }
  return t;
}

/// PMT PID from a PAT packet.
int PmtPid(const TsPacket& pat) {
  REQUIRE(pat.payload != nullptr);
  const uint8_t* s = pat.payload + 1 + pat.payload[0];  // pointer_field
  REQUIRE(s[0] == 0x00);                                // table_id
  // program entries start after the 8-byte header
  return ((s[10] & 0x1f) << 8) | s[11];
}

struct PmtStream {
  int pid = -1;
  int type = 0;
  std::optional<std::string> language;  ///< from an ISO_639_language_descriptor (tag 0x0a)
};

std::vector<PmtStream> PmtStreams(const TsPacket& pmt) {
  REQUIRE(pmt.payload != nullptr);
  const uint8_t* s = pmt.payload + 1 + pmt.payload[0];
  REQUIRE(s[0] == 0x02);
  const int section_length = ((s[1] & 0x0f) << 8) | s[2];
  const int program_info_length = ((s[10] & 0x0f) << 8) | s[11];
  std::vector<PmtStream> out;
  int i = 12 + program_info_length;
  const int end = 3 + section_length - 4;  // CRC
  REQUIRE(end <= static_cast<int>(pmt.payload_size));
  while (i + 5 <= end) {
    PmtStream st;
    st.type = s[i];
    st.pid = ((s[i + 1] & 0x1f) << 8) | s[i + 2];
    const int es_info = ((s[i + 3] & 0x0f) << 8) | s[i + 4];
    for (int d = i + 5; d + 2 <= i + 5 + es_info;) {
      const int tag = s[d], len = s[d + 1];
      if (tag == 0x0a && len >= 4) st.language = std::string(reinterpret_cast<const char*>(s + d + 2), 3);
      d += 2 + len;
    }
    out.push_back(st);
    i += 5 + es_info;
  }
  return out;
}

struct Pes {
  int64_t pts = -1;
  int64_t dts = -1;  ///< = pts when the header has no DTS
};

std::optional<Pes> PesTimestamps(const TsPacket& t) {
  const uint8_t* p = t.payload;
  if (p == nullptr || t.payload_size < 14 || p[0] != 0 || p[1] != 0 || p[2] != 1) return std::nullopt;
  if ((p[7] & 0x80) == 0) return std::nullopt;
  auto read = [](const uint8_t* q) {
    return (int64_t{q[0] & 0x0e} << 29) | (int64_t{q[1]} << 22) | (int64_t{q[2] & 0xfe} << 14) |
           (int64_t{q[3]} << 7) | (q[4] >> 1);
  };
  Pes pes;
  pes.pts = read(p + 9);
  pes.dts = (p[7] & 0x40) != 0 && t.payload_size >= 19 ? read(p + 14) : pes.pts;
  return pes;
}

bool IsVideoType(int stream_type) { return stream_type == 0x1b || stream_type == 0x24; }

/// True when the Annex B data holds an IDR/IRAP picture (and not just parameter sets).
bool HasKeyframeNal(const std::vector<uint8_t>& es, bool hevc) {
  for (size_t i = 0; i + 3 < es.size(); ++i) {
    if (es[i] != 0 || es[i + 1] != 0 || es[i + 2] != 1) continue;
    const uint8_t h = es[i + 3];
    if (!hevc && (h & 0x1f) == 5) return true;
    if (hevc) {
      const int type = (h >> 1) & 0x3f;
      if (type >= 16 && type <= 21) return true;
    }
  }
  return false;
}

/// What one single-stream MPEG-TS part holds.
struct TsLayout {
  PmtStream stream;
  bool video = false;
  std::vector<Pes> pes;              ///< every PES of the stream, in order
  bool first_pes_random_access = false;
  bool first_pes_is_key = false;
};

/// Checks the structure of one rendition's MPEG-TS part: PAT, PMT with one stream,
/// then that stream's first PES; no SDT; continuity counters carried in `cc`.
TsLayout CheckTsPart(const Part& part, std::map<int, int>& cc) {
  TsLayout l;
  const auto& d = part.data;
  REQUIRE(!d.empty());
  REQUIRE(d.size() % 188 == 0);
  REQUIRE(d.size() >= 3 * 188);
  REQUIRE(d[0] == 0x47);
  const TsPacket pat = ParseTs(d.data());
  REQUIRE_MESSAGE(pat.pid == 0, "the part does not start with a PAT");
  const int pmt_pid = PmtPid(pat);
  const TsPacket pmt = ParseTs(d.data() + 188);
  REQUIRE_MESSAGE(pmt.pid == pmt_pid, "the PAT is not followed by the PMT");
  const std::vector<PmtStream> streams = PmtStreams(pmt);
  REQUIRE_MESSAGE(streams.size() == 1, "one stream per MPEG-TS rendition");
  l.stream = streams[0];
  l.video = IsVideoType(l.stream.type);
  const TsPacket third = ParseTs(d.data() + 2 * 188);
  CHECK_MESSAGE(third.pid == l.stream.pid, "the PMT is not followed by the stream's first PES");
  CHECK(third.pusi);
  // Per packet: problems are collected (one check per part, naming the first few).
  std::vector<std::string> problems;
  auto problem = [&](std::string what) {
    if (problems.size() < 5) problems.push_back(std::move(what));
  };
  const bool adts = l.stream.type == 0x0f;  // AAC in MPEG-TS is ADTS: every PES starts on a frame header
  std::vector<uint8_t> first_es;
  bool collecting = false;
  for (size_t off = 0; off < d.size(); off += 188) {
    REQUIRE_MESSAGE(d[off] == 0x47, "lost sync at byte ", off);
    const TsPacket t = ParseTs(d.data() + off);
    if (t.pid == 0x11) problem(fmt::format("SDT at byte {}", off));
    if (t.pid != 0 && t.pid != pmt_pid && t.pid != l.stream.pid) problem(fmt::format("stray PID {}", t.pid));
    if (t.has_payload) {
      auto it = cc.find(t.pid);
      if (it != cc.end() && t.cc != ((it->second + 1) & 15))
        problem(fmt::format("continuity counter jump on PID {} at byte {}", t.pid, off));
      cc[t.pid] = t.cc;
    }
    if (t.pid != l.stream.pid) continue;
    if (t.pusi) {
      const std::optional<Pes> pes = PesTimestamps(t);
      REQUIRE_MESSAGE(pes.has_value(), "a PES without PTS at byte ", off);
      const uint8_t* es = t.payload + 9 + t.payload[8];
      if (adts && (es + 2 > t.payload + t.payload_size || es[0] != 0xff || (es[1] & 0xf0) != 0xf0))
        problem(fmt::format("AAC PES at {:.3f} s (byte {}) is not ADTS", double(pes->pts) / kClock, off));
      if (l.pes.empty()) {
        l.first_pes_random_access = t.random_access;
        collecting = true;
        const size_t header = 9 + t.payload[8];
        first_es.assign(t.payload + header, t.payload + t.payload_size);
      } else {
        collecting = false;
      }
      l.pes.push_back(*pes);
    } else if (collecting && t.payload != nullptr) {
      first_es.insert(first_es.end(), t.payload, t.payload + t.payload_size);
    }
  }
  CHECK_MESSAGE(problems.empty(), fmt::format("{}", fmt::join(problems, "; ")));
  REQUIRE(!l.pes.empty());
  l.first_pes_is_key = HasKeyframeNal(first_es, l.stream.type == 0x24);
  return l;
}

// ---- whole titles -----------------------------------------------------------

/// Everything every good title must satisfy: per rendition, parts that follow each
/// other exactly, MPEG-TS structure or a WebVTT header, keyframe-first video,
/// timestamps that only go forward; summary = what was produced; the plan = the
/// real cuts; estimates within 5%; durations that add up to the source's.
void CheckTitle(const Title& t) {
  INFO("input: ", t.urls.front(), " target ", t.params.target_duration);
  const TitleInfo& info = t.info;
  const size_t n = info.renditions.size();
  REQUIRE(n > 0);
  REQUIRE(!t.segments.empty());
  CHECK((info.renditions[0].kind == TrackKind::kVideo || !info.has_video()));
  // Video renditions, then audio, then subtitles.
  for (size_t r = 1; r < n; ++r) CHECK(info.renditions[r - 1].kind <= info.renditions[r].kind);
  const int64_t target = std::llround(t.params.target_duration * kClock);

  std::vector<std::map<int, int>> cc(n);
  std::vector<std::optional<Pes>> last_pes(n);
  std::vector<khls::segmenter::RenditionSummary> sums(n);
  int64_t total = 0, total_bytes = 0, max_duration = 0;
  for (size_t k = 0; k < t.segments.size(); ++k) {
    const Segment& s = t.segments[k];
    INFO("segment group ", k);
    CHECK(s.sequence == k);
    REQUIRE(s.parts.size() == n);
    CHECK(s.start_pts == s.parts[0].start_pts);
    CHECK(s.duration == s.parts[0].duration);
    if (k + 1 < t.segments.size()) CHECK(s.duration >= target);
    total += s.duration;
    for (size_t r = 0; r < n; ++r) {
      const RenditionInfo& ri = info.renditions[r];
      const Part& p = s.parts[r];
      INFO("rendition ", ri.id);
      CHECK(p.duration > 0);
      // Each rendition is one stream: its parts follow each other exactly.
      if (k > 0) CHECK(p.start_pts == t.segments[k - 1].parts[r].start_pts + t.segments[k - 1].parts[r].duration);
      if (ri.kind == TrackKind::kSubtitles) {
        CHECK(Text(p).starts_with(kVttHeader));
        // Subtitles are cut at the group's points.
        CHECK(p.start_pts == s.start_pts);
        if (k + 1 < t.segments.size()) CHECK(p.duration == s.duration);
      } else {
        const TsLayout l = CheckTsPart(p, cc[r]);
        CHECK(l.video == (ri.kind == TrackKind::kVideo));
        if (ri.kind == TrackKind::kVideo) {
          CHECK_MESSAGE(l.first_pes_random_access, "first video PES lacks random_access_indicator");
          CHECK_MESSAGE(l.first_pes_is_key, "first video PES is not an IDR picture");
          // A part starts at its keyframe (the first part: at the title's start, which may be the audio's).
          if (k > 0 || r > 0) CHECK(l.pes.front().pts == p.start_pts);
          else CHECK(l.pes.front().pts >= p.start_pts);
          // Variants are cut where the reference is.
          if (k > 0) CHECK(std::llabs(p.start_pts - s.start_pts) <= kClock / 1000);
        } else {
          // Audio is split by time: a part starts with its first frame.
          CHECK(l.pes.front().pts == p.start_pts);
          CHECK(l.stream.language.has_value() == !ri.language.empty());
        }
        // Timestamps only go forward, across parts too.
        for (const Pes& pes : l.pes) {
          if (last_pes[r]) CHECK(pes.dts > last_pes[r]->dts);
          if (last_pes[r] && ri.kind == TrackKind::kAudio) CHECK(pes.pts > last_pes[r]->pts);
          CHECK(pes.pts >= pes.dts);
          last_pes[r] = pes;
        }
      }
      const auto size = static_cast<int64_t>(p.data.size());
      sums[r].bytes += size;
      sums[r].duration += p.duration;
      sums[r].max_duration = std::max(sums[r].max_duration, p.duration);
      const int64_t bps = std::llround(double(size) * 8 * kClock / double(p.duration));
      sums[r].peak_bps = std::max(sums[r].peak_bps, bps);
      total_bytes += size;
      max_duration = std::max(max_duration, p.duration);
    }
  }
  CHECK(t.segments.front().start_pts >= kOutputStartPts);
  CHECK(t.segments.front().start_pts < kOutputStartPts + kClock / 2);

  // Summary: what was produced.
  CHECK(t.summary.segment_count == t.segments.size());
  CHECK(t.summary.total_duration == total);
  CHECK(t.summary.total_bytes == total_bytes);
  CHECK(t.summary.max_duration == max_duration);
  REQUIRE(t.summary.renditions.size() == n);
  for (size_t r = 0; r < n; ++r) {
    INFO("rendition ", info.renditions[r].id);
    const auto& got = t.summary.renditions[r];
    CHECK(got.bytes == sums[r].bytes);
    CHECK(got.duration == sums[r].duration);
    CHECK(got.max_duration == sums[r].max_duration);
    CHECK(std::llabs(got.peak_bps - sums[r].peak_bps) <= 1);
    CHECK(std::llabs(got.average_bps - std::llround(double(sums[r].bytes) * 8 * kClock / double(sums[r].duration))) <=
          1);
    CHECK(got.average_bps > 0);
    CHECK(got.peak_bps >= got.average_bps);
  }
  CHECK(t.summary.renditions[0].duration == total);

  // The pre-scan planned exactly the cuts that were made, and estimated the sizes.
  CHECK(info.seekable);
  CHECK(info.planned_max_duration == t.summary.max_duration);
  for (size_t r = 0; r < n; ++r) {
    INFO("rendition ", info.renditions[r].id);
    const auto& got = t.summary.renditions[r];
    const RenditionInfo& ri = info.renditions[r];
    CHECK_MESSAGE(std::fabs(double(ri.estimated_peak_bps) / double(got.peak_bps) - 1.0) < 0.05,
                  "peak bitrate estimated ", ri.estimated_peak_bps, ", measured ", got.peak_bps);
    CHECK_MESSAGE(std::fabs(double(ri.estimated_avg_bps) / double(got.average_bps) - 1.0) < 0.05,
                  "average bitrate estimated ", ri.estimated_avg_bps, ", measured ", got.average_bps);
  }

  // The durations add up to the source's, less what plays before the first
  // picture (dropped so that every track starts with it).
  const std::string& source = t.urls.front();
  REQUIRE(info.input_duration > 0);
  const double first_picture = info.has_video() ? FirstPicture(source) : NAN;
  int64_t lead_in = 0;
  if (const double start = Ffprobe(source, "format=start_time"); std::isfinite(first_picture) && first_picture > start)
    lead_in = std::llround((first_picture - start) * kClock);
  CHECK(std::llabs(total - (info.input_duration - lead_in)) <= kClock / 10);
  for (size_t r = 1; r < n; ++r) {
    const RenditionInfo& ri = info.renditions[r];
    INFO("rendition ", ri.id);
    const int64_t sum = t.summary.renditions[r].duration;
    if (ri.kind == TrackKind::kVideo) {
      // A variant: as long as its own video.
      const Span v = PacketSpan(t.urls[ri.input], std::to_string(ri.stream));
      CHECK(std::llabs(sum - std::llround((v.end - v.first) * kClock)) <= kClock / 10);
    } else if (ri.kind == TrackKind::kAudio) {
      // From the first picture to the end of the audio, or of the video when the audio stops first (silence).
      const Span a = PacketSpan(source, std::to_string(ri.stream));
      double from = a.first, to = a.end;
      if (info.has_video()) {
        from = std::max(from, first_picture);
        to = std::max(to, PacketSpan(source, std::to_string(info.renditions[0].stream)).end);
      }
      CHECK(std::llabs(sum - std::llround((to - from) * kClock)) <= kClock / 10);
    } else {
      // Subtitles run to the end of the title.
      CHECK(std::llabs(sum - total) <= kClock / 10);
    }
  }
}

/// Writes each MPEG-TS rendition's parts back to back and reads them with ffmpeg,
/// decoding and copying (which checks that timestamps go forward): no message
/// at all; the stream starts at 1.4 s and lasts as long as its parts say; as many
/// video frames as its source has.
void CheckDecodes(const Title& t) {
  INFO("input: ", t.urls.front());
  TempDir dir;
  for (size_t r = 0; r < t.info.renditions.size(); ++r) {
    const RenditionInfo& ri = t.info.renditions[r];
    if (ri.kind == TrackKind::kSubtitles) continue;
    INFO("rendition ", ri.id);
    const fs::path concat = dir.path / (ri.id + ".ts");
    WriteFile(concat, Concat(t, r));
    const Decoded decoded = Decode(concat);
    CHECK_MESSAGE(decoded.errors.empty(), decoded.errors);
    const std::string copy_errors =
        Run(fmt::format("ffmpeg -nostdin -v error -i '{}' -c copy -f null - 2>&1", concat.string()));
    CHECK_MESSAGE(copy_errors.empty(), copy_errors);
    const double start = Ffprobe(concat.string(), "format=start_time");
    CHECK(start >= 1.4 - 1e-6);
    CHECK(start < 1.5);
    CHECK_MESSAGE(std::fabs(decoded.duration - double(t.summary.renditions[r].duration) / kClock) < 0.1,
                  "decoded: ", decoded.duration, " s");
    if (ri.kind == TrackKind::kVideo) CHECK(decoded.frames == SourceFrames(t.urls[ri.input], ri.stream));
  }
}

// ---- WebVTT -----------------------------------------------------------------

struct Cue {
  const char* text;  ///< as WebVTT cue text
  int64_t start_ms;  ///< in the source
  int64_t end_ms;
};

// tests/make_media.sh: cues.en.srt (multilang.mkv's English track, movtext.mp4), cues.fr.ass
// (multilang.mkv's French track), sidecar.en.srt and sidecar.fr.vtt (for h264_aac.mp4).
const std::vector<Cue> kCuesEn = {{"First cue", 1000, 3000},
                                  {"<i>Italic cue</i>", 4000, 5500},
                                  {"Boundary cue", 5500, 6500},
                                  {"Late cue", 13000, 15000},
                                  {"Two-line cue\nsecond line", 16000, 18000}};
const std::vector<Cue> kCuesFr = {{"Premier sous-titre", 2000, 4000},
                                  {"Réplique en <i>italique</i>", 7000, 9000},
                                  {"Dernière réplique\nDeuxième ligne", 12000, 14500}};
const std::vector<Cue> kSidecarEn = {{"Hello from the sidecar", 1500, 3500},
                                     {"Second sidecar cue", 7000, 9000},
                                     {"Third sidecar cue", 12000, 14000},
                                     {"Last sidecar cue", 17000, 19000}};
const std::vector<Cue> kSidecarFr = {{"Bonjour du fichier à côté", 2000, 4000},
                                     {"Deuxième réplique", 8000, 10000},
                                     {"Dernière réplique", 15000, 17500}};

std::string VttTime(int64_t ms) {
  return fmt::format("{:02}:{:02}:{:02}.{:03}", ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
}

/// Every part of subtitle rendition `r` holds exactly the cues that overlap it, each
/// with its full times on the output timeline: `zero_ms` (where the source's time 0
/// lands) + its time.
void CheckCues(const Title& t, size_t r, const std::vector<Cue>& cues, int64_t zero_ms) {
  INFO("rendition ", t.info.renditions.at(r).id);
  REQUIRE(t.info.renditions[r].kind == TrackKind::kSubtitles);
  std::vector<int> seen(cues.size(), 0);
  for (const Segment& s : t.segments) {
    INFO("segment group ", s.sequence);
    const Part& p = s.parts[r];
    const std::string text = Text(p);
    REQUIRE(text.starts_with(kVttHeader));
    size_t expected = 0;
    for (size_t c = 0; c < cues.size(); ++c) {
      const int64_t start = zero_ms + cues[c].start_ms, end = zero_ms + cues[c].end_ms;
      const bool overlaps = end * 90 > p.start_pts && start * 90 < p.start_pts + p.duration;
      const std::string block = fmt::format("{} --> {}\n{}\n\n", VttTime(start), VttTime(end), cues[c].text);
      CHECK_MESSAGE(Contains(text, block) == overlaps, "cue '", std::string(cues[c].text), "' in:\n", text);
      expected += overlaps;
      seen[c] += overlaps;
    }
    size_t arrows = 0;
    for (size_t pos = text.find(" --> "); pos != std::string::npos; pos = text.find(" --> ", pos + 1)) ++arrows;
    CHECK_MESSAGE(arrows == expected, text);
  }
  for (size_t c = 0; c < cues.size(); ++c)
    CHECK_MESSAGE(seen[c] > 0, "cue '", std::string(cues[c].text), "' is in no part");
}

/// Time (ms) from the first picture to the first cue of subtitle stream `stream` of `path`, as
/// ffprobe reads the file (a packet with text: mov_text marks gaps with 2-byte empty samples).
int64_t FirstCueAfterPictureMs(const std::string& path, int stream) {
  std::istringstream packets(Run(fmt::format(
      "ffprobe -v error -select_streams {} -show_entries packet=pts_time,size -of csv=p=0 '{}'", stream, path)));
  for (std::string line; std::getline(packets, line);) {
    const auto comma = line.find(',');
    if (comma != std::string::npos && std::stoi(line.substr(comma + 1)) > 2)
      return std::llround((std::stod(line) - FirstPicture(path)) * 1000);
  }
  FAIL("no cue in stream ", stream, " of ", path);
  return 0;
}

/// Rebased pts of the first picture: the first video PES of the first part.
int64_t FirstPicturePts(const Title& t) {
  REQUIRE(t.info.has_video());
  std::map<int, int> cc;
  return CheckTsPart(t.segments.front().parts[0], cc).pes.front().pts;
}

const StreamReport& Report(const TitleInfo& info, int input, int stream) {
  for (const StreamReport& s : info.streams)
    if (s.input == input && s.stream == stream) return s;
  FAIL("no report for input ", input, " stream ", stream);
  return info.streams.front();
}

constexpr const char* kGoodInputs[] = {
    "h264_aac.mp4",  "faststart.mp4", "h264_aac.mkv",   "h264_aac.mov",  "h264_aac.ts",   "h264_aac.flv",
    "wrap.ts",       "longgop.mp4",   "ntsc.mp4",       "hevc_aac.mp4",  "h264_ac3.mkv",  "audio_only.m4a",
    "mp3_audio.mp3", "clip40.mp4",    "audio_first.ts", "midstream.ts",  "cover_art.mp3", "multilang.mkv",
    "movtext.mp4",   "surround.mkv",  "pgs.mkv",        "short_audio.mp4", "concat5.mp4",
};

}  // namespace

TEST_CASE("H264CodecString from avcC and Annex B extradata") {
  const uint8_t avcc[] = {0x01, 0x64, 0x00, 0x28, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x28};
  CHECK(H264CodecString(avcc, sizeof(avcc)) == "avc1.640028");
  const uint8_t avcc_main[] = {0x01, 0x4d, 0x40, 0x1f, 0xff};
  CHECK(H264CodecString(avcc_main, sizeof(avcc_main)) == "avc1.4d401f");
  // Annex B: 4-byte start code, SEI first, then the SPS (type 7) behind a 3-byte start code.
  const uint8_t annexb[] = {0x00, 0x00, 0x00, 0x01, 0x06, 0x05, 0x01, 0x80, 0x00, 0x00, 0x01,
                            0x67, 0x42, 0xc0, 0x1e, 0x95, 0xa0, 0x00, 0x00, 0x01, 0x68, 0xce};
  CHECK(H264CodecString(annexb, sizeof(annexb)) == "avc1.42c01e");
  // Emulation prevention inside the first SPS bytes (constraint flags 0, then 00 03 xx).
  const uint8_t escaped[] = {0x00, 0x00, 0x01, 0x67, 0x42, 0x00, 0x00, 0x03, 0x01, 0xe0};
  CHECK(H264CodecString(escaped, sizeof(escaped)) == "avc1.420000");
  const uint8_t no_sps[] = {0x00, 0x00, 0x00, 0x01, 0x68, 0xce, 0x3c, 0x80};
  CHECK(H264CodecString(no_sps, sizeof(no_sps)).empty());
  const uint8_t garbage[] = {0x17, 0x42, 0x00};
  CHECK(H264CodecString(garbage, sizeof(garbage)).empty());
  CHECK(H264CodecString(nullptr, 0).empty());
}

TEST_CASE("good inputs: structure, durations, plan, decode of every rendition") {
  for (const char* name : kGoodInputs) {
    const std::string path = Media(name);
    if (!fs::exists(path)) {
      MESSAGE("skipping ", name, " (not made: encoder missing)");
      continue;
    }
    SUBCASE(name) {
      const Title& t = Cached(name);
      CHECK(t.info.input_size == static_cast<int64_t>(fs::file_size(path)));
      // Every stream of the input is reported, carried or not.
      CHECK(t.info.streams.size() == static_cast<size_t>(Ffprobe(path, "format=nb_streams")));
      for (const StreamReport& s : t.info.streams) {
        CHECK(s.source == path);
        CHECK(s.rendition.empty() != s.reason.empty());
      }
      CheckTitle(t);
      CheckDecodes(t);
    }
  }
}

TEST_CASE("title info of the reference input") {
  const std::string path = Media("h264_aac.mp4");
  const Title& t = Cached("h264_aac.mp4");
  CHECK(t.info.container == "mov,mp4,m4a,3gp,3g2,mj2");
  CHECK(std::llabs(t.info.input_duration - 20 * kClock) < kClock / 100);
  CHECK(t.info.has_video());
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  const RenditionInfo& v = t.info.renditions[0];
  CHECK(v.kind == TrackKind::kVideo);
  CHECK(v.width == 320);
  CHECK(v.height == 240);
  CHECK(v.frame_rate_num == 25);
  CHECK(v.frame_rate_den == 1);
  CHECK(v.codec_name == "h264 High");
  CHECK(v.input == 0);
  CHECK(v.stream == 0);
  CHECK(v.is_default);
  // CODECS as ffprobe's profile (High = 0x64) and level imply; x264 sets no constraint flags for High.
  const int level = static_cast<int>(Ffprobe(path, "stream=level", "-select_streams v:0"));
  CHECK(v.codecs == fmt::format("avc1.6400{:02x}", level));
  const RenditionInfo& a = t.info.renditions[1];
  CHECK(a.kind == TrackKind::kAudio);
  CHECK(a.codec_name == "aac LC");
  CHECK(a.codecs == "mp4a.40.2");
  CHECK(a.channels == 2);
  CHECK(a.language.empty());  // "und"
  CHECK(a.name == "Audio 1");
  CHECK(a.is_default);
  CHECK(a.stream == 1);
  // B-frames: decoding starts this far before the first picture (ffprobe: the first packet's pts - dts).
  std::istringstream first(Run(fmt::format(
      "ffprobe -v error -select_streams v:0 -read_intervals %+#1 -show_entries packet=pts_time,dts_time "
      "-of csv=p=0 '{}'",
      path)));
  double pts = NAN, dts = NAN;
  char comma = 0;
  first >> pts >> comma >> dts;
  REQUIRE(pts > dts);
  CHECK(t.info.decode_lead == std::llround((pts - dts) * kClock));
  // 20 s in 2 s GOPs with a 6 s target: 6 + 6 + 6 + 2, audio cut at the same times.
  REQUIRE(t.segments.size() == 4);
  CHECK(t.segments[1].duration == 6 * kClock);
  CHECK(t.segments[2].duration == 6 * kClock);
  CHECK(std::llabs(t.segments[3].duration - 2 * kClock) < kClock / 20);
  for (const Segment& s : t.segments) CHECK(std::llabs(s.parts[1].start_pts - s.start_pts) < kClock / 40);
}

TEST_CASE("codec strings per rendition") {
  CHECK(Cached("audio_only.m4a").info.renditions.at(0).codecs == "mp4a.40.2");
  CHECK(Cached("mp3_audio.mp3").info.renditions.at(0).codecs == "mp4a.40.34");
  CHECK(Ids(Cached("cover_art.mp3").info) == std::vector<std::string>{"audio-1"});
  const TitleInfo& ac3 = Cached("h264_ac3.mkv").info;
  REQUIRE(ac3.renditions.size() == 2);
  CHECK(ac3.renditions[0].codecs.starts_with("avc1.6400"));
  CHECK(ac3.renditions[1].codecs == "ac-3");
  // A TS input has Annex B extradata and no AudioSpecificConfig: same answers.
  const TitleInfo& ts = Cached("h264_aac.ts").info;
  const TitleInfo& mp4 = Cached("h264_aac.mp4").info;
  REQUIRE(ts.renditions.size() == mp4.renditions.size());
  for (size_t r = 0; r < ts.renditions.size(); ++r) CHECK(ts.renditions[r].codecs == mp4.renditions[r].codecs);
  // Two audio tracks in one language: ids and names made unique, each with its codec and channels.
  const TitleInfo& surround = Cached("surround.mkv").info;
  REQUIRE(Ids(surround) == std::vector<std::string>{"video-240p", "audio-en", "audio-en-2"});
  CHECK(surround.renditions[1].codecs == "mp4a.40.2");
  CHECK(surround.renditions[1].channels == 2);
  CHECK(surround.renditions[1].name == "English");
  CHECK(surround.renditions[1].is_default);
  CHECK(surround.renditions[2].codecs == "ac-3");
  CHECK(surround.renditions[2].channels == 6);
  CHECK(surround.renditions[2].name == "English 5.1");
  CHECK_FALSE(surround.renditions[2].is_default);
  // Subtitles have none.
  for (const RenditionInfo& r : Cached("multilang.mkv").info.renditions)
    if (r.kind == TrackKind::kSubtitles) CHECK(r.codecs.empty());
  if (fs::exists(Media("hevc_aac.mp4"))) {
    const std::string path = Media("hevc_aac.mp4");
    const TitleInfo& hevc = Cached("hevc_aac.mp4").info;
    REQUIRE(hevc.renditions.size() == 2);
    const int level = static_cast<int>(Ffprobe(path, "stream=level", "-select_streams v:0"));
    // Main profile, compatible with Main and Main 10 (flags 1 and 2 -> 0x6), main tier.
    CHECK(hevc.renditions[0].codecs.starts_with(fmt::format("hvc1.1.6.L{}", level)));
    CHECK(hevc.renditions[0].codec_name == "hevc Main");
    CHECK(hevc.renditions[1].codecs == "mp4a.40.2");
  }
}

TEST_CASE("long GOP: segments run from keyframe to keyframe") {
  const Title& t = Cached("longgop.mp4");
  REQUIRE(t.segments.size() == 3);
  for (const Segment& s : t.segments) CHECK(std::llabs(s.duration - 10 * kClock) < kClock / 20);
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  CHECK(t.info.planned_max_duration > 10 * kClock - kClock / 20);
}

TEST_CASE("29.97 fps") {
  const Title& t = Cached("ntsc.mp4");
  CHECK(t.info.renditions.at(0).frame_rate_num == 30000);
  CHECK(t.info.renditions.at(0).frame_rate_den == 1001);
  // 2 s GOP of 60 frames: cuts every 3 GOPs = 180 frames = 540540 ticks.
  REQUIRE(t.segments.size() == 4);
  CHECK(t.segments[1].duration == 180 * 3003);
}

TEST_CASE("timestamps that wrap at 2^33") {
  const std::string path = Media("wrap.ts");
  // The raw PTS in the file really do wrap: the first is close to 2^33, the last is small.
  const std::string raw = Run(fmt::format(
      "ffprobe -v error -correct_ts_overflow 0 -select_streams v:0 -show_entries packet=pts -of csv=p=0 '{}'", path));
  std::vector<int64_t> pts;
  std::istringstream lines(raw);
  for (std::string line; std::getline(lines, line);) {
    line = Trim(line);
    if (!line.empty() && line != "N/A") pts.push_back(std::stoll(line));
  }
  REQUIRE(pts.size() > 100);
  CHECK(pts.front() > (int64_t{1} << 33) - 20 * kClock);
  CHECK(pts.back() < 20 * kClock);

  const Title& t = Cached("wrap.ts");
  CHECK(t.segments.back().start_pts < kOutputStartPts + 25 * kClock);
  // Same cuts, in every rendition, as the unwrapped original.
  const Title& ref = Cached("h264_aac.ts");
  REQUIRE(t.segments.size() == ref.segments.size());
  REQUIRE(t.info.renditions.size() == ref.info.renditions.size());
  for (size_t k = 0; k < t.segments.size(); ++k) {
    for (size_t r = 0; r < t.info.renditions.size(); ++r) {
      CAPTURE(k);
      CAPTURE(r);
      CHECK(t.segments[k].parts[r].start_pts == ref.segments[k].parts[r].start_pts);
      CHECK(t.segments[k].parts[r].duration == ref.segments[k].parts[r].duration);
    }
  }
}

TEST_CASE("timestamp discontinuity in MPEG-TS is taken out of the timeline") {
  const Title t = SegmentAll(Media("discont.ts"));
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  // Two 20 s captures: 40 s of segments, cut every 6 s as usual, none longer than planned.
  int64_t total = 0;
  for (size_t k = 0; k < t.segments.size(); ++k) {
    total += t.segments[k].duration;
    if (k + 1 < t.segments.size()) CHECK(t.segments[k].duration >= 6 * kClock);
    CHECK(t.segments[k].duration < 6 * kClock + kClock / 2);
  }
  CHECK(std::llabs(total - 40 * kClock) < kClock / 5);
  CHECK(std::llabs(t.summary.renditions[1].duration - 40 * kClock) < kClock / 5);
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  // Each rendition: contiguous parts, keyframe-first video, timestamps going forward, continuity counters.
  for (size_t r = 0; r < t.info.renditions.size(); ++r) {
    CAPTURE(r);
    std::map<int, int> cc;
    int64_t last_dts = -1;
    for (size_t k = 0; k < t.segments.size(); ++k) {
      const Part& p = t.segments[k].parts[r];
      if (k > 0) CHECK(p.start_pts == t.segments[k - 1].parts[r].start_pts + t.segments[k - 1].parts[r].duration);
      const TsLayout l = CheckTsPart(p, cc);
      if (r == 0) CHECK(l.first_pes_is_key);
      if (k > 0 || r > 0) CHECK(l.pes.front().pts == p.start_pts);
      for (const Pes& pes : l.pes) {
        CHECK(pes.dts > last_dts);
        last_dts = pes.dts;
      }
    }
  }
  TempDir dir;
  for (size_t r = 0; r < t.info.renditions.size(); ++r) {
    CAPTURE(r);
    const fs::path concat = dir.path / fmt::format("{}.ts", r);
    WriteFile(concat, Concat(t, r));
    const Decoded decoded = Decode(concat);
    CHECK_MESSAGE(decoded.errors.empty(), decoded.errors);
    if (r == 0) CHECK(decoded.frames == 2 * SourceFrames(Media("h264_aac.ts"), 0));
  }
}

TEST_CASE("identical input and params give byte-identical segments") {
  for (const char* name : {"h264_aac.mp4", "h264_aac.ts", "audio_only.m4a", "multilang.mkv"}) {
    CAPTURE(name);
    const Title& a = Cached(name);
    const Title b = SegmentAll(Media(name));
    REQUIRE(a.segments.size() == b.segments.size());
    for (size_t k = 0; k < a.segments.size(); ++k) {
      REQUIRE(a.segments[k].parts.size() == b.segments[k].parts.size());
      for (size_t r = 0; r < a.segments[k].parts.size(); ++r) {
        CAPTURE(k);
        CAPTURE(r);
        CHECK(a.segments[k].parts[r].data.size() == b.segments[k].parts[r].data.size());
        CHECK(Fnv1a(a.segments[k].parts[r].data) == Fnv1a(b.segments[k].parts[r].data));
        CHECK(a.segments[k].parts[r].start_pts == b.segments[k].parts[r].start_pts);
        CHECK(a.segments[k].parts[r].duration == b.segments[k].parts[r].duration);
      }
    }
  }
}

TEST_CASE("recycled buffers: the same bytes, written into memory given back") {
  const Title& ref = Cached("clip40.mp4", 2.0);
  auto opened = Segmenter::Open(Media("clip40.mp4"), Target(2.0));
  REQUIRE(opened.ok());
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  const size_t n = seg->info().renditions.size();
  REQUIRE(n == 2);
  constexpr size_t kMarked = 32 << 20;  // far above any segment of this clip
  size_t k = 0;
  std::vector<size_t> marked_seen(n, 0);
  for (;; ++k) {
    auto next = seg->Next();
    REQUIRE(next.ok());
    if (!next->has_value()) break;
    Segment& s = **next;
    REQUIRE(k < ref.segments.size());
    REQUIRE(s.parts.size() == n);
    for (size_t r = 0; r < n; ++r) {
      CHECK(s.parts[r].data == ref.segments[k].parts[r].data);
      if (s.parts[r].data.capacity() >= kMarked) ++marked_seen[r];
    }
    if (k == 0) {
      // Give back buffers with stale bytes and a capacity no segment here needs, one per rendition.
      Segment junk;
      for (size_t r = 0; r < n; ++r) {
        std::vector<uint8_t> data(100000, 0xab);
        data.reserve(kMarked);
        junk.parts.push_back(Part{0, 1, std::move(data)});
      }
      seg->Recycle(std::move(junk));
    } else {
      seg->Recycle(std::move(s));
    }
  }
  CHECK(k == ref.segments.size());
  CHECK(k >= 10);
  // Each rendition's marked buffer came back out, and kept circulating as its largest spare.
  for (size_t r = 0; r < n; ++r) {
    CAPTURE(r);
    CHECK(marked_seen[r] >= k / 3);
  }
}

TEST_CASE("other targets: the plan still matches") {
  // 2 s target on 2 s GOPs: one GOP per segment.
  const Title& two = Cached("h264_aac.mp4", 2.0);
  CHECK(two.segments.size() == 10);
  CheckTitle(two);
  // 1 s target on 2 s GOPs: still 2 s segments.
  const Title one = SegmentAll(Media("h264_aac.mkv"), 1.0);
  CHECK(one.segments.size() == 10);
  CHECK(one.info.planned_max_duration == one.summary.max_duration);
  // 4 s on the 29.97 fps title, 5 s on audio only, 10 s on the 40 s clip, 2 s on four renditions.
  CheckTitle(SegmentAll(Media("ntsc.mp4"), 4.0));
  CheckTitle(SegmentAll(Media("audio_only.m4a"), 5.0));
  CheckTitle(SegmentAll(Media("clip40.mp4"), 10.0));
  CheckTitle(Cached("multilang.mkv", 2.0));
}

TEST_CASE("progress grows; a title can be abandoned midway") {
  auto opened = Segmenter::Open(Media("clip40.mp4"), Params{});
  REQUIRE(opened.ok());
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  CHECK(seg->progress().input_size == static_cast<int64_t>(fs::file_size(Media("clip40.mp4"))));
  int64_t last_bytes = -1;
  int64_t last_time = -1;
  int64_t first_start = -1;
  for (int k = 0; k < 3; ++k) {
    auto next = seg->Next();
    REQUIRE(next.ok());
    REQUIRE(next->has_value());
    if (k == 0) first_start = (*next)->start_pts;
    const auto p = seg->progress();
    CHECK(p.bytes_read > last_bytes);
    CHECK(p.media_time > last_time);
    // The next segment's keyframe has been read.
    CHECK(p.media_time >= (*next)->start_pts + (*next)->duration - first_start);
    last_bytes = p.bytes_read;
    last_time = p.media_time;
  }
  seg.reset();  // muxers, queues and held packets go without a trailer (ASan/LSan builds check this)
}

TEST_CASE("bad inputs fail at Open with kInvalidInput naming the file") {
  struct Bad {
    const char* name;
    const char* also;  ///< another word the message must contain ("" = none)
  };
  for (const Bad& bad : {Bad{"empty.mp4", "empty"}, Bad{"random.bin", ""}, Bad{"text.mp4", ""},
                         Bad{"truncated.mp4", ""}, Bad{"vp9.webm", "vp9"}, Bad{"h264_opus.mkv", "opus"},
                         Bad{"does_not_exist.mp4", ""}}) {
    CAPTURE(bad.name);
    auto r = Segmenter::Open(Media(bad.name), Params{});
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidInput);
    CHECK_MESSAGE(Contains(r.status().message(), bad.name), r.status().message());
    CHECK_MESSAGE(Contains(r.status().message(), bad.also), r.status().message());
  }
  auto vp9 = Segmenter::Open(Media("vp9.webm"), Params{});
  CHECK(vp9.status().message() ==
        fmt::format("unsupported video codec vp9 in '{}': HLS over MPEG-TS carries H.264 or HEVC", Media("vp9.webm")));
  // A bad second input (a variant without video; a broken file) is named too.
  for (const char* second : {"audio_only.m4a", "random.bin"}) {
    CAPTURE(second);
    auto r = Segmenter::Open({Media("h264_aac.mp4"), Media(second)}, Params{});
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidInput);
    CHECK_MESSAGE(Contains(r.status().message(), second), r.status().message());
  }
  CHECK(Contains(Segmenter::Open({Media("h264_aac.mp4"), Media("audio_only.m4a")}, Params{}).status().message(),
                 "has no video stream"));
  // A sidecar that is not subtitles.
  Params p;
  p.subtitles = {{Media("h264_aac.mp4"), "en"}};
  auto side = Segmenter::Open(Media("h264_aac.mp4"), p);
  REQUIRE_FALSE(side.ok());
  CHECK(side.status().code() == ErrorCode::kInvalidInput);
  CHECK_MESSAGE(Contains(side.status().message(), "read subtitles '" + Media("h264_aac.mp4") + "'"),
                side.status().message());
}

TEST_CASE("params") {
  Params p;
  p.target_duration = 0;
  CHECK(Segmenter::Open(Media("h264_aac.mp4"), p).status().code() == ErrorCode::kInvalidArgument);
  p.target_duration = NAN;
  CHECK(Segmenter::Open(Media("h264_aac.mp4"), p).status().code() == ErrorCode::kInvalidArgument);
  CHECK(Segmenter::Open(std::vector<std::string>{}, Params{}).status().code() == ErrorCode::kInvalidArgument);

  p = Params{};
  p.input_format = "no_such_format";
  CHECK(Segmenter::Open(Media("h264_aac.ts"), p).status().code() == ErrorCode::kInvalidArgument);

  p = Params{};
  p.input_options = {{"no_such_option", "1"}};
  auto unknown = Segmenter::Open(Media("h264_aac.ts"), p);
  CHECK(unknown.status().code() == ErrorCode::kInvalidArgument);
  CHECK(Contains(unknown.status().message(), "no_such_option"));

  // A sidecar language that is no language tag.
  p = Params{};
  p.subtitles = {{Media("sidecar.en.srt"), "not a language"}};
  auto lang = Segmenter::Open(Media("h264_aac.mp4"), p);
  CHECK(lang.status().code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(lang.status().message(), "not a language"), lang.status().message());

  // A forced format and a real option.
  p = Params{};
  p.input_format = "mpegts";
  p.input_options = {{"probesize", "1000000"}};
  const Title forced = SegmentAll({Media("h264_aac.ts")}, p);
  CHECK(forced.info.container == "mpegts");
  CHECK(forced.segments.size() == 4);

  // The wrong forced format fails cleanly.
  p = Params{};
  p.input_format = "flv";
  auto wrong = Segmenter::Open(Media("h264_aac.mp4"), p);
  CHECK_FALSE(wrong.ok());
}

TEST_CASE("non-seekable input: no pre-scan, target as the planned maximum") {
  signal(SIGPIPE, SIG_IGN);
  TempDir dir;
  const fs::path fifo = dir.path / "live.ts";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  const std::string source = Media("h264_aac.ts");
  // The file goes into the FIFO once, as from a live encoder. A reader still blocked in open()
  // after 30 s (it opened the FIFO again after reading it) is given an end instead of hanging.
  std::atomic<bool> writer_open = false, unblocked = false;
  std::thread feeder([&] {
    std::ifstream in(source, std::ios::binary);
    std::ofstream out(fifo, std::ios::binary);  // blocks until the segmenter opens the FIFO
    writer_open = true;
    out << in.rdbuf();
  });
  std::jthread watchdog([&](std::stop_token stop) {
    std::mutex m;
    std::unique_lock lock(m);
    std::condition_variable_any cv;
    if (cv.wait_for(lock, stop, std::chrono::seconds(30), [] { return false; }) || stop.stop_requested()) return;
    unblocked = true;
    const int fd = open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) close(fd);
  });
  struct Join {
    std::thread& feeder;
    const fs::path& fifo;
    std::atomic<bool>& writer_open;
    ~Join() {
      if (!writer_open) {  // the feeder is still waiting for a reader: release it
        const int fd = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
        if (fd >= 0) close(fd);
      }
      feeder.join();
    }
  } join{feeder, fifo, writer_open};

  Params p;
  p.target_duration = 5.5;
  constexpr const char* kReopened =
      "the segmenter opened the FIFO again after reading it: a live input can be read once";
  auto opened = Segmenter::Open(fifo.string(), p);
  REQUIRE_MESSAGE(opened.ok(), (unblocked ? kReopened : opened.status().message()));
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  CHECK_FALSE(seg->info().seekable);
  CHECK(seg->info().input_size == 0);
  CHECK(seg->info().planned_max_duration == 6 * kClock);
  for (const RenditionInfo& r : seg->info().renditions) {
    CHECK(r.estimated_peak_bps == 0);
    CHECK(r.estimated_avg_bps == 0);
  }
  std::vector<Segment> segments;
  for (;;) {
    auto next = seg->Next();
    REQUIRE_MESSAGE(next.ok(), next.status().message());
    if (!next->has_value()) break;
    segments.push_back(std::move(**next));
  }
  seg.reset();
  CHECK_MESSAGE(!unblocked, kReopened);
  // Same cuts and bytes as from the file.
  const Title& ref = Cached("h264_aac.ts");
  REQUIRE(segments.size() == ref.segments.size());
  for (size_t k = 0; k < segments.size(); ++k) {
    REQUIRE(segments[k].parts.size() == ref.segments[k].parts.size());
    for (size_t r = 0; r < segments[k].parts.size(); ++r) {
      CAPTURE(k);
      CAPTURE(r);
      CHECK(segments[k].parts[r].start_pts == ref.segments[k].parts[r].start_pts);
      CHECK(segments[k].parts[r].duration == ref.segments[k].parts[r].duration);
      CHECK(Fnv1a(segments[k].parts[r].data) == Fnv1a(ref.segments[k].parts[r].data));
    }
  }
}

TEST_CASE("multilang.mkv: every audio language and text subtitle track is a rendition") {
  const std::string path = Media("multilang.mkv");
  const Title& t = Cached("multilang.mkv");
  const TitleInfo& info = t.info;
  REQUIRE(Ids(info) == std::vector<std::string>{"video-240p", "audio-en", "audio-fr", "subs-en", "subs-fr"});
  const std::vector<TrackKind> kinds = {TrackKind::kVideo, TrackKind::kAudio, TrackKind::kAudio, TrackKind::kSubtitles,
                                        TrackKind::kSubtitles};
  const std::vector<std::string> languages = {"", "en", "fr", "en", "fr"};
  const std::vector<std::string> names = {"", "English", "Français", "English", "Français"};
  for (size_t r = 0; r < info.renditions.size(); ++r) {
    const RenditionInfo& ri = info.renditions[r];
    CAPTURE(ri.id);
    CHECK(ri.kind == kinds[r]);
    CHECK(ri.input == 0);
    CHECK(ri.stream == static_cast<int>(r));
    if (r > 0) CHECK(ri.language == languages[r]);
    if (r > 0) CHECK(ri.name == names[r]);
    CHECK(ri.forced == false);
  }
  CHECK(info.renditions[1].is_default);
  CHECK_FALSE(info.renditions[2].is_default);
  CHECK_FALSE(info.renditions[3].is_default);  // no subtitle track is flagged default in the file
  CHECK_FALSE(info.renditions[4].is_default);
  CHECK(info.renditions[3].codec_name == "subrip");
  CHECK(info.renditions[4].codec_name == "ass");
  CHECK(info.container == "matroska,webm");

  // Every stream the file has is reported as carried.
  REQUIRE(info.streams.size() == 5);
  for (size_t i = 0; i < 5; ++i) {
    const StreamReport& s = info.streams[i];
    CAPTURE(i);
    CHECK(s.input == 0);
    CHECK(s.stream == static_cast<int>(i));
    CHECK(s.source == path);
    CHECK(s.rendition == info.renditions[i].id);
    CHECK(s.reason.empty());
  }
  CHECK(info.streams[1].description == "audio aac LC 2 ch 48000 Hz lang=eng \"English\" [default]");
  CHECK(info.streams[2].description == "audio aac LC 2 ch 48000 Hz lang=fre \"Français\"");
  CHECK(info.streams[3].description == "subtitles subrip lang=eng");

  // Every audio part's PMT says its language (ISO 639-2/B); the video's says none.
  for (const auto& [r, lang] : std::vector<std::pair<size_t, std::string>>{{1, "eng"}, {2, "fre"}}) {
    CAPTURE(lang);
    std::map<int, int> cc;
    for (const Segment& s : t.segments) CHECK(CheckTsPart(s.parts[r], cc).stream.language == lang);
  }
  std::map<int, int> cc;
  CHECK_FALSE(CheckTsPart(t.segments[0].parts[0], cc).stream.language.has_value());

  // Audio: each track as long as the source's (from the first picture), parts back to back.
  for (size_t r : {1, 2}) {
    CAPTURE(r);
    const Span a = PacketSpan(path, std::to_string(r));
    const double from = std::max(a.first, FirstPicture(path));
    CHECK(std::llabs(t.summary.renditions[r].duration - std::llround((a.end - from) * kClock)) <= kClock / 10);
    for (size_t k = 1; k < t.segments.size(); ++k)
      CHECK(t.segments[k].parts[r].start_pts ==
            t.segments[k - 1].parts[r].start_pts + t.segments[k - 1].parts[r].duration);
  }

  // Subtitles: at 1.4 s (the first picture) + their time after the first picture. In the file, the
  // first picture is 21 ms in (after the audio's first frame), and the cues are 21 ms later than
  // in the files they were made from: their times after the first picture are the files' times.
  CHECK(FirstPicture(path) > 0.01);
  CHECK(FirstPicturePts(t) == kOutputStartPts);
  CHECK(FirstCueAfterPictureMs(path, 3) == kCuesEn.front().start_ms);
  CHECK(FirstCueAfterPictureMs(path, 4) == kCuesFr.front().start_ms);
  CheckCues(t, 3, kCuesEn, 1400);
  CheckCues(t, 4, kCuesFr, 1400);
  // The cue that spans the 6 s cut is in the parts on both sides of it, and only there.
  REQUIRE(t.segments.size() == 4);
  for (size_t k = 0; k < 4; ++k) CHECK(Contains(Text(t.segments[k].parts[3]), "Boundary cue") == (k <= 1));
  CHECK(Contains(Text(t.segments[0].parts[3]), "00:00:06.900 --> 00:00:07.900\nBoundary cue\n\n"));
  CHECK(Text(t.segments[3].parts[4]) == kVttHeader);  // no French cue after 14.5 s
}

TEST_CASE("multilang.mkv at a 2 s target: cues in every part they overlap") {
  const Title& t = Cached("multilang.mkv", 2.0);
  REQUIRE(t.segments.size() == 10);
  CheckCues(t, 3, kCuesEn, 1400);
  CheckCues(t, 4, kCuesFr, 1400);
  // "Late cue" 13-15 s: groups 6 and 7 (12-14 s, 14-16 s after the first picture).
  for (size_t k = 0; k < t.segments.size(); ++k)
    CHECK(Contains(Text(t.segments[k].parts[3]), "Late cue") == (k == 6 || k == 7));
}

TEST_CASE("mov_text subtitles become WebVTT") {
  const std::string path = Media("movtext.mp4");
  const Title& t = Cached("movtext.mp4");
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1", "subs-en"});
  CHECK(t.info.renditions[2].codec_name == "mov_text");
  CHECK(FirstCueAfterPictureMs(path, 2) == kCuesEn.front().start_ms);
  CheckCues(t, 2, kCuesEn, 1400);
}

TEST_CASE("audio_languages chooses the audio tracks") {
  const std::string path = Media("multilang.mkv");
  Params p;
  p.audio_languages = {"fr"};
  auto fr = Segmenter::Open(path, p);
  REQUIRE_MESSAGE(fr.ok(), fr.status().message());
  const TitleInfo& info = (*fr)->info();
  CHECK(Ids(info) == std::vector<std::string>{"video-240p", "audio-fr", "subs-en", "subs-fr"});
  CHECK(info.renditions.at(1).is_default);  // the only audio
  const StreamReport& en = Report(info, 0, 1);
  CHECK(en.rendition.empty());
  CHECK_MESSAGE(Contains(en.reason, "--audio"), en.reason);
  CHECK(Report(info, 0, 2).rendition == "audio-fr");
  // The French track's audio is what comes out.
  auto first = (*fr)->Next();
  REQUIRE(first.ok());
  REQUIRE(first->has_value());
  std::map<int, int> cc;
  CHECK(CheckTsPart((**first).parts.at(1), cc).stream.language == "fre");

  // ISO 639-2 codes and several languages work too.
  p.audio_languages = {"fre", "eng"};
  auto both = Segmenter::Open(path, p);
  REQUIRE_MESSAGE(both.ok(), both.status().message());
  CHECK(Ids((*both)->info()) == std::vector<std::string>{"video-240p", "audio-en", "audio-fr", "subs-en", "subs-fr"});

  p.audio_languages = {"de"};
  auto de = Segmenter::Open(path, p);
  REQUIRE_FALSE(de.ok());
  CHECK(de.status().code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(de.status().message(), path), de.status().message());
  CHECK_MESSAGE(Contains(de.status().message(), "(it has: en, fr)"), de.status().message());
}

TEST_CASE("sidecar subtitle files become WebVTT renditions on the movie's timeline") {
  const std::string movie = Media("h264_aac.mp4");
  Params p = Target(2.0);
  p.subtitles = {{Media("sidecar.en.srt"), ""}, {Media("sidecar.fr.vtt"), ""}};
  const Title t = SegmentAll({movie}, p);
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1", "subs-en", "subs-fr"});
  for (size_t r : {2, 3}) {
    const RenditionInfo& ri = t.info.renditions[r];
    CAPTURE(ri.id);
    CHECK(ri.kind == TrackKind::kSubtitles);
    CHECK(ri.input == -1);
    CHECK(ri.stream == -1);
    CHECK_FALSE(ri.is_default);
  }
  CHECK(t.info.renditions[2].language == "en");
  CHECK(t.info.renditions[3].language == "fr");
  CHECK(t.info.renditions[2].name == "English");
  CHECK(t.info.renditions[3].name == "Français");
  // Reported as sources of their own.
  const StreamReport& en = Report(t.info, -1, -1);
  CHECK(en.source == Media("sidecar.en.srt"));
  CHECK(en.rendition == "subs-en");
  CHECK(Contains(en.description, "4 cues"));
  CHECK(t.info.streams.size() == 4);
  CheckTitle(t);
  // The files' times count from the first picture, which is at 1.4 s.
  CHECK(FirstPicturePts(t) == kOutputStartPts);
  CheckCues(t, 2, kSidecarEn, 1400);
  CheckCues(t, 3, kSidecarFr, 1400);
  CHECK(Contains(Text(t.segments[0].parts[2]), "00:00:02.900 --> 00:00:04.900\nHello from the sidecar\n\n"));
  CHECK(Contains(Text(t.segments[1].parts[2]), "00:00:02.900 --> 00:00:04.900\nHello from the sidecar\n\n"));

  // A language given with the file wins over its name.
  p.subtitles = {{Media("sidecar.fr.vtt"), "fr-CA"}};
  auto ca = Segmenter::Open(movie, p);
  REQUIRE_MESSAGE(ca.ok(), ca.status().message());
  CHECK(Ids((*ca)->info()) == std::vector<std::string>{"video-240p", "audio-1", "subs-fr-ca"});
  CHECK((*ca)->info().renditions[2].language == "fr-CA");
}

TEST_CASE("streams that cannot be carried are skipped with the reason when the title has others") {
  // Bitmap subtitles.
  const TitleInfo& pgs = Cached("pgs.mkv").info;
  CHECK(Ids(pgs) == std::vector<std::string>{"video-240p", "audio-1"});
  const StreamReport& bitmap = Report(pgs, 0, 2);
  CHECK(bitmap.rendition.empty());
  CHECK_MESSAGE(Contains(bitmap.reason, "bitmap subtitles (PGS)"), bitmap.reason);

  // An Opus track first, AAC after it: the AAC track is the audio.
  TempDir dir;
  const fs::path mixed = dir.path / "opus_then_aac.mkv";
  const std::string made = Run(fmt::format(
      "ffmpeg -nostdin -v error -i '{}' -i '{}' -map 0:v -map 1:a -map 0:a -c copy '{}' 2>&1", Media("h264_aac.mp4"),
      Media("h264_opus.mkv"), mixed.string()));
  REQUIRE_MESSAGE(made.empty(), made);
  const Title t = SegmentAll(mixed.string());
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  CHECK(t.info.renditions[1].stream == 2);
  CHECK(t.info.renditions[1].codecs == "mp4a.40.2");
  const StreamReport& opus = Report(t.info, 0, 1);
  CHECK(opus.rendition.empty());
  CHECK_MESSAGE(Contains(opus.reason, "AAC"), opus.reason);
  CheckTitle(t);

  // Opus as the only audio: refused, as before.
  auto only = Segmenter::Open(Media("h264_opus.mkv"), Params{});
  CHECK(only.status().code() == ErrorCode::kInvalidInput);
  CHECK_MESSAGE(Contains(only.status().message(), "unsupported audio codec opus"), only.status().message());
}

TEST_CASE("audio that stops before the video is filled with silence to the video's end") {
  const Title& t = Cached("short_audio.mp4");
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  // 12 s of video, 5 s of audio: the audio rendition still covers every group, to the end.
  CHECK(std::llabs(t.summary.renditions[1].duration - t.summary.renditions[0].duration) < kClock / 20);
  for (const Segment& s : t.segments) CHECK(s.parts[1].data.size() > 1000);
}

TEST_CASE("a bitrate ladder: variants cut at the same keyframes") {
  const std::vector<std::string> inputs = {Media("ladder_a.mp4"), Media("ladder_b.mp4"), Media("ladder_c.mp4")};
  const Title t = SegmentAll(inputs, Target(6.0));
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-360p", "video-270p", "video-180p", "audio-1"});
  for (int r = 0; r < 3; ++r) {
    const RenditionInfo& ri = t.info.renditions[r];
    CAPTURE(ri.id);
    CHECK(ri.input == r);
    CHECK(ri.is_default == (r == 0));
    CHECK(ri.codecs.starts_with("avc1.64"));
  }
  CHECK(t.info.renditions[0].width == 640);
  CHECK(t.info.renditions[1].width == 480);
  CHECK(t.info.renditions[2].width == 320);
  CHECK(t.info.renditions[3].input == 0);
  // Audio and the later inputs' extra streams are reported as not used.
  CHECK(Report(t.info, 1, 1).rendition.empty());
  CHECK(Contains(Report(t.info, 1, 1).reason, "first input"));
  CHECK(Report(t.info, 2, 0).rendition == "video-180p");
  // Estimates follow the ladder.
  CHECK(t.info.renditions[0].estimated_avg_bps > t.info.renditions[1].estimated_avg_bps);
  CHECK(t.info.renditions[1].estimated_avg_bps > t.info.renditions[2].estimated_avg_bps);
  REQUIRE(t.segments.size() == 4);
  for (const Segment& s : t.segments) {
    CAPTURE(s.sequence);
    for (size_t r = 0; r < 3; ++r) {
      std::map<int, int> cc;
      const TsLayout l = CheckTsPart(s.parts[r], cc);
      CHECK(l.first_pes_is_key);
      CHECK(std::llabs(s.parts[r].start_pts - s.parts[0].start_pts) <= kClock / 1000);
      CHECK(std::llabs(l.pes.front().pts - s.parts[0].start_pts) <= kClock / 1000);
    }
  }
  CheckTitle(t);
  CheckDecodes(t);
}

TEST_CASE("a ladder whose keyframes disagree is refused at Open") {
  for (const auto& [target, at, nearest] : {std::tuple{6.0, "6.000 s", "4.800 s and 7.200 s"},
                                            std::tuple{2.0, "2.000 s", "0.000 s and 2.400 s"}}) {
    CAPTURE(target);
    auto r = Segmenter::Open({Media("ladder_a.mp4"), Media("ladder_misaligned.mp4")}, Target(target));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidInput);
    const std::string m = r.status().message();
    CHECK_MESSAGE(Contains(m, "'" + Media("ladder_misaligned.mp4") + "' has no keyframe at " + at), m);
    CHECK_MESSAGE(Contains(m, Media("ladder_a.mp4")), m);
    CHECK_MESSAGE(Contains(m, std::string("its nearest keyframes are at ") + nearest), m);
  }
}

TEST_CASE("a file joined from copies of one clip: timestamps strictly increasing in every rendition") {
  const Title& t = Cached("concat5.mp4");
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  TempDir dir;
  for (size_t r = 0; r < 2; ++r) {
    CAPTURE(r);
    const std::vector<uint8_t> all = Concat(t, r);
    const fs::path file = dir.path / fmt::format("{}.ts", r);
    WriteFile(file, all);
    // Copying reads the timestamps as they are: ffmpeg complains of any that go backwards.
    const std::string copy = Run(fmt::format("ffmpeg -nostdin -v error -i '{}' -c copy -f null - 2>&1", file.string()));
    CHECK_MESSAGE(copy.empty(), copy);
    // Parsed here: audio PTS (= DTS) strictly increasing; video DTS strictly increasing, and its
    // PTS, in presentation order, too (B-frames come out of order, but never two at one time).
    std::map<int, int> cc;
    Part whole{0, 1, all};
    const TsLayout l = CheckTsPart(whole, cc);
    REQUIRE(l.pes.size() > 50);
    std::vector<int64_t> pts;
    for (size_t i = 0; i < l.pes.size(); ++i) {
      if (i > 0) CHECK(l.pes[i].dts > l.pes[i - 1].dts);
      if (i > 0 && r == 1) CHECK(l.pes[i].pts > l.pes[i - 1].pts);
      pts.push_back(l.pes[i].pts);
    }
    std::sort(pts.begin(), pts.end());
    CHECK(std::adjacent_find(pts.begin(), pts.end()) == pts.end());
  }
}

TEST_CASE("Matroska with B-frames: the first pictures get a decode clock that starts before them") {
  // Matroska stores pts only; libavformat derives dts once it has seen the
  // reorder delay's worth of pictures. The first ones must not be given dts = pts
  // (that made the next dts collide and be pushed by one tick).
  const Title& t = Cached("multilang.mkv");
  REQUIRE(t.info.renditions[0].kind == TrackKind::kVideo);
  const std::vector<uint8_t> ts = Concat(t, 0);
  std::vector<Pes> video;
  int video_pid = -1;
  for (size_t off = 0; off + 188 <= ts.size(); off += 188) {
    const TsPacket p = ParseTs(&ts[off]);
    if (video_pid < 0 && p.pusi && p.payload && p.payload_size > 4 && p.payload[0] == 0 && p.payload[1] == 0 &&
        p.payload[2] == 1 && p.payload[3] == 0xe0)
      video_pid = p.pid;
    if (p.pid != video_pid || !p.pusi) continue;
    if (auto pes = PesTimestamps(p)) video.push_back(*pes);
  }
  REQUIRE(video.size() > 100);
  const int64_t frame = 3600;  // 25 fps
  for (size_t i = 1; i < video.size(); ++i) {
    CAPTURE(i);
    REQUIRE(video[i].dts - video[i - 1].dts == frame);
    REQUIRE(video[i].pts >= video[i].dts);
  }
  CHECK(video[0].pts - video[0].dts == 2 * frame);  // two B-frames of reorder delay
  CHECK(t.info.decode_lead == 2 * frame);
}

// ---- LL-HLS parts -------------------------------------------------------------

namespace {

/// Test media of the part tests, made once per process with the ffmpeg CLI: 10 s of
/// H.264 + AAC with a keyframe every second, "no_bframes.mp4" at 30 fps (0.5 s is 15
/// whole frames), "bframes.mp4" at 25 fps with up to 3 B-frames in a row.
std::string PartMedia(const std::string& name) {
  static TempDir dir;
  static std::map<std::string, std::string> made;
  if (auto it = made.find(name); it != made.end()) return it->second;
  std::string rate, x264;
  if (name == "no_bframes.mp4") rate = "30", x264 = "-g 30 -keyint_min 30 -bf 0";
  if (name == "bframes.mp4") rate = "25", x264 = "-g 25 -keyint_min 25 -bf 3";
  REQUIRE_MESSAGE(!rate.empty(), "no recipe for ", name);
  const fs::path path = dir.path / name;
  const std::string out = Run(fmt::format(
      "ffmpeg -nostdin -v error -f lavfi -i testsrc2=size=320x240:rate={}:duration=10 "
      "-f lavfi -i sine=frequency=440:sample_rate=48000:duration=10 "
      "-c:v libx264 -preset superfast -pix_fmt yuv420p -sc_threshold 0 {} -c:a aac -b:a 96k -ac 2 '{}' 2>&1",
      rate, x264, path.string()));
  REQUIRE_MESSAGE(out.empty(), out);
  return made[name] = path.string();
}

Params WithParts(double target, double part) {
  Params p = Target(target);
  p.part_duration = part;
  return p;
}

/// What libavformat demuxes from one single-stream MPEG-TS file: its packets, and what it says at -v error.
struct Demuxed {
  int64_t packets = -1;
  std::string errors;
};
/// Demuxes every .ts file of `dir` with ffprobe, several at a time (one process each: a
/// part test has a few hundred files), by file name.
std::map<std::string, Demuxed> DemuxAll(const fs::path& dir) {
  // For each file: the packet count on the first line of NAME.count (ffprobe lists the
  // stream twice: on its own and as a member of the TS program), its messages in NAME.errors.
  Run(fmt::format("cd '{}' && ls | grep '\\.ts$' | xargs -P 8 -I@ sh -c "
                  "'ffprobe -v error -count_packets -show_entries stream=nb_read_packets -of csv=p=0 @ "
                  "2>@.errors | head -n 1 >@.count'",
                  dir.string()));
  std::map<std::string, Demuxed> all;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".ts") continue;
    const std::string name = entry.path().filename().string();
    Demuxed& d = all[name];
    std::ifstream count(entry.path().string() + ".count");
    std::string out;
    std::getline(count, out);
    if (!out.empty() && std::all_of(out.begin(), out.end(), [](char c) { return c >= '0' && c <= '9'; }))
      d.packets = std::stoll(out);
    std::ifstream errors(entry.path().string() + ".errors");
    d.errors.assign(std::istreambuf_iterator<char>(errors), {});
  }
  return all;
}

/// A title cut into parts (`t`), checked against the same input cut without parts
/// (`whole`; its renditions matched by id): numbering, durations, the parts of
/// each segment adding up to the segment made without parts in every rendition,
/// MPEG-TS structure of every part, the summary and the plan counted in segments.
/// `demux`: also demux every part, and the parts of each segment back to back,
/// with libavformat (ffprobe), and compare the packet counts with the segment's.
void CheckParts(const Title& t, const Title& whole, bool demux) {
  INFO("input: ", t.urls.front(), " target ", t.params.target_duration, " part ", t.params.part_duration);
  const int64_t part_target = std::llround(t.params.part_duration * kClock);
  REQUIRE(part_target > 0);
  CHECK(t.info.part_target == part_target);
  CHECK(whole.info.part_target == 0);
  const size_t n = t.info.renditions.size();
  REQUIRE(n > 0);
  REQUIRE(!t.segments.empty());
  std::vector<size_t> in_whole(n);  // rendition r of `t` is rendition in_whole[r] of `whole`
  for (size_t r = 0; r < n; ++r) {
    const std::vector<std::string> ids = Ids(whole.info);
    const auto it = std::find(ids.begin(), ids.end(), t.info.renditions[r].id);
    REQUIRE_MESSAGE(it != ids.end(), t.info.renditions[r].id, " is not a rendition without parts");
    in_whole[r] = static_cast<size_t>(it - ids.begin());
  }
  REQUIRE(in_whole[0] == 0);  // the same reference

  // Numbering: part 0, 1, ... of segment 0, 1, ...; the groups of each segment.
  std::vector<std::vector<size_t>> segments;
  uint32_t sequence = 0, part = 0;
  for (size_t k = 0; k < t.segments.size(); ++k) {
    const Segment& s = t.segments[k];
    INFO("group ", k, ": segment ", s.sequence, " part ", s.part);
    CHECK(s.sequence == sequence);
    CHECK(s.part == part);
    REQUIRE(s.parts.size() == n);
    CHECK(s.start_pts == s.parts[0].start_pts);
    CHECK(s.duration == s.parts[0].duration);
    CHECK(s.duration > 0);
    CHECK_MESSAGE(s.duration <= part_target, "part of ", s.duration, " ticks, the target is ", part_target);
    if (s.part == 0) CHECK(s.independent);
    if (s.part == 0) segments.emplace_back();
    segments.back().push_back(k);
    if (s.last_part) {
      ++sequence;
      part = 0;
    } else {
      ++part;
    }
  }
  CHECK(t.segments.back().last_part);

  // The parts of each segment add up to the segment made without parts, in every rendition.
  REQUIRE(segments.size() == whole.segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    INFO("segment ", i);
    for (size_t r = 0; r < n; ++r) {
      INFO("rendition ", t.info.renditions[r].id);
      const Part& w = whole.segments[i].parts[in_whole[r]];
      int64_t sum = 0;
      for (size_t k : segments[i]) sum += t.segments[k].parts[r].duration;
      CHECK(t.segments[segments[i].front()].parts[r].start_pts == w.start_pts);
      CHECK(sum == w.duration);
    }
  }

  // Every part of every rendition: back to back with the one before; MPEG-TS parts
  // start with PAT and PMT (continuity counters run on across parts), then their
  // first PES: a video part with a keyframe exactly when it is independent, and
  // never with a picture shown before one of an earlier part (B-frames).
  std::vector<std::map<int, int>> cc(n);
  std::vector<int64_t> max_pts(n, -1), last_dts(n, -1);
  for (size_t k = 0; k < t.segments.size(); ++k) {
    const Segment& s = t.segments[k];
    INFO("group ", k, ": segment ", s.sequence, " part ", s.part);
    for (size_t r = 0; r < n; ++r) {
      const RenditionInfo& ri = t.info.renditions[r];
      INFO("rendition ", ri.id);
      const Part& p = s.parts[r];
      CHECK(p.duration > 0);
      if (k > 0) CHECK(p.start_pts == t.segments[k - 1].parts[r].start_pts + t.segments[k - 1].parts[r].duration);
      if (ri.kind == TrackKind::kSubtitles) continue;
      const TsLayout l = CheckTsPart(p, cc[r]);
      if (ri.kind == TrackKind::kVideo) {
        CHECK(l.first_pes_is_key == s.independent);
        CHECK(l.first_pes_random_access == s.independent);
        if (k > 0 || r > 0) CHECK(l.pes.front().pts == p.start_pts);
        CHECK(l.pes.front().pts > max_pts[r]);
      } else {
        CHECK(l.pes.front().pts == p.start_pts);
        // Split at the reference's cuts: at most one frame longer than the reference's part.
        CHECK(p.duration < s.duration + kClock / 40);
      }
      for (const Pes& pes : l.pes) {
        CHECK(pes.dts > last_dts[r]);
        last_dts[r] = pes.dts;
        max_pts[r] = std::max(max_pts[r], pes.pts);
      }
    }
  }

  // The summary counts segments: sizes and durations are the sums of their parts'.
  CHECK(t.summary.segment_count == whole.summary.segment_count);
  CHECK(t.summary.segment_count == segments.size());
  CHECK(t.summary.total_duration == whole.summary.total_duration);
  // (Without parts, subtitles may run longer than the media renditions.)
  if (n == whole.info.renditions.size()) CHECK(t.summary.max_duration == whole.summary.max_duration);
  int64_t total_bytes = 0, max_duration = 0;
  REQUIRE(t.summary.renditions.size() == n);
  for (size_t r = 0; r < n; ++r) {
    INFO("rendition ", t.info.renditions[r].id);
    int64_t bytes = 0, duration = 0, peak = 0, longest = 0;
    for (const std::vector<size_t>& groups : segments) {
      int64_t seg_bytes = 0, seg_duration = 0;
      for (size_t k : groups) {
        seg_bytes += static_cast<int64_t>(t.segments[k].parts[r].data.size());
        seg_duration += t.segments[k].parts[r].duration;
      }
      bytes += seg_bytes;
      duration += seg_duration;
      longest = std::max(longest, seg_duration);
      peak = std::max<int64_t>(peak, std::llround(double(seg_bytes) * 8 * kClock / double(seg_duration)));
    }
    const auto& got = t.summary.renditions[r];
    const auto& without = whole.summary.renditions[in_whole[r]];
    CHECK(got.bytes == bytes);
    CHECK(got.duration == duration);
    CHECK(got.duration == without.duration);
    CHECK(got.max_duration == longest);
    CHECK(got.max_duration == without.max_duration);
    CHECK(std::llabs(got.peak_bps - peak) <= 1);
    CHECK(std::llabs(got.average_bps - std::llround(double(bytes) * 8 * kClock / double(duration))) <= 1);
    // Each part repeats PAT and PMT, and audio PES end at every part: a little more than without parts.
    if (t.info.renditions[r].kind != TrackKind::kSubtitles) CHECK(got.bytes >= without.bytes);
    total_bytes += bytes;
    max_duration = std::max(max_duration, longest);
  }
  CHECK(t.summary.total_bytes == total_bytes);
  CHECK(t.summary.max_duration == max_duration);

  // The pre-scan cut the same parts: segments as long, sizes as estimated.
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  if (n == whole.info.renditions.size()) CHECK(t.info.planned_max_duration == whole.info.planned_max_duration);
  for (size_t r = 0; r < n; ++r) {
    const RenditionInfo& ri = t.info.renditions[r];
    INFO("rendition ", ri.id);
    const auto& got = t.summary.renditions[r];
    CHECK_MESSAGE(std::fabs(double(ri.estimated_peak_bps) / double(got.peak_bps) - 1.0) < 0.05,
                  "peak bitrate estimated ", ri.estimated_peak_bps, ", measured ", got.peak_bps);
    CHECK_MESSAGE(std::fabs(double(ri.estimated_avg_bps) / double(got.average_bps) - 1.0) < 0.05,
                  "average bitrate estimated ", ri.estimated_avg_bps, ", measured ", got.average_bps);
  }
  if (!demux) return;

  // libavformat demuxes every part on its own (an independent one without a word), and
  // a segment's parts back to back into as many packets as the segment made without parts.
  TempDir dir;
  auto name = [&](size_t r, size_t i, const std::string& what) {
    return fmt::format("{}-{}.{}.ts", t.info.renditions[r].id, i, what);
  };
  for (size_t r = 0; r < n; ++r) {
    if (t.info.renditions[r].kind == TrackKind::kSubtitles) continue;
    for (size_t i = 0; i < segments.size(); ++i) {
      WriteFile(dir.path / name(r, i, "whole"), whole.segments[i].parts[in_whole[r]].data);
      std::vector<uint8_t> joined;
      for (size_t k : segments[i]) {
        const std::vector<uint8_t>& data = t.segments[k].parts[r].data;
        joined.insert(joined.end(), data.begin(), data.end());
        WriteFile(dir.path / name(r, i, std::to_string(t.segments[k].part)), data);
      }
      WriteFile(dir.path / name(r, i, "joined"), joined);
    }
  }
  const std::map<std::string, Demuxed> demuxed = DemuxAll(dir.path);
  auto demuxed_as = [&](const std::string& file) {
    const auto it = demuxed.find(file);
    REQUIRE_MESSAGE(it != demuxed.end(), file, " was not demuxed");
    return it->second;
  };
  for (size_t r = 0; r < n; ++r) {
    const RenditionInfo& ri = t.info.renditions[r];
    if (ri.kind == TrackKind::kSubtitles) continue;
    INFO("rendition ", ri.id);
    for (size_t i = 0; i < segments.size(); ++i) {
      INFO("segment ", i);
      const Demuxed expected = demuxed_as(name(r, i, "whole"));
      REQUIRE(expected.packets > 0);
      int64_t sum = 0;
      for (size_t k : segments[i]) {
        const Segment& s = t.segments[k];
        INFO("part ", s.part);
        const Demuxed d = demuxed_as(name(r, i, std::to_string(s.part)));
        CHECK(d.packets > 0);
        sum += d.packets;
        // Without its keyframe a video part cannot be decoded alone (ffprobe tries, to learn
        // the picture size, and says so): only the independent ones are quiet.
        if (s.independent || ri.kind != TrackKind::kVideo) CHECK_MESSAGE(d.errors.empty(), d.errors);
      }
      CHECK(sum == expected.packets);
      const Demuxed joined = demuxed_as(name(r, i, "joined"));
      CHECK(joined.packets == expected.packets);
      CHECK_MESSAGE(joined.errors.empty(), joined.errors);
    }
  }
}

}  // namespace

TEST_CASE("parts: 1 s GOP at 30 fps without B-frames, 2 s segments in parts of 0.5 s") {
  const std::string path = PartMedia("no_bframes.mp4");
  const Title whole = SegmentAll({path}, Target(2.0));
  const Title t = SegmentAll({path}, WithParts(2.0, 0.5));
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-1"});
  CHECK(t.info.part_target == kClock / 2);
  CheckParts(t, whole, /*demux=*/true);
  CheckDecodes(t);
  // Frames of 3000 ticks: every part is 15 frames, exactly the target; four per segment, and
  // the one that starts at the keyframe in the middle of each segment is independent too.
  REQUIRE(whole.segments.size() == 5);
  REQUIRE(t.segments.size() == 20);
  for (const Segment& s : t.segments) {
    CAPTURE(s.sequence);
    CAPTURE(s.part);
    CHECK(s.duration == kClock / 2);
    CHECK(s.independent == (s.part % 2 == 0));
    CHECK(s.last_part == (s.part == 3));
  }
}

TEST_CASE("parts: 1 s GOP at 25 fps with B-frames") {
  const std::string path = PartMedia("bframes.mp4");
  // The file really has B-frames: pictures shown before one decoded earlier.
  std::istringstream packets(Run(fmt::format(
      "ffprobe -v error -select_streams v:0 -show_entries packet=pts -of csv=p=0 '{}'", path)));
  bool reordered = false;
  int64_t max_pts = -1;
  for (std::string line; std::getline(packets, line);) {
    if (Trim(line).empty() || line.starts_with("N/A")) continue;
    const int64_t pts = std::stoll(line);
    reordered |= pts < max_pts;
    max_pts = std::max(max_pts, pts);
  }
  REQUIRE(reordered);
  const Title whole = SegmentAll({path}, Target(2.0));
  const Title t = SegmentAll({path}, WithParts(2.0, 0.5));
  CheckParts(t, whole, /*demux=*/true);
  CheckDecodes(t);
  // No part longer than the target, and none needlessly short: a part ends early only
  // where B-frames allow no cut, or at its segment's end.
  for (size_t k = 0; k + 1 < t.segments.size(); ++k) {
    const Segment& s = t.segments[k];
    CAPTURE(s.sequence);
    CAPTURE(s.part);
    if (!s.last_part) CHECK(s.duration > kClock / 4);
  }
  MESSAGE("parts of ", t.segments.size(), " groups, ", t.summary.segment_count, " segments");
}

TEST_CASE("parts: audio only, every part independent") {
  const Title whole = SegmentAll(Media("audio_only.m4a"), 2.0);
  const Title t = SegmentAll({Media("audio_only.m4a")}, WithParts(2.0, 0.5));
  REQUIRE(Ids(t.info) == std::vector<std::string>{"audio-1"});
  CheckParts(t, whole, /*demux=*/true);
  CheckDecodes(t);
  for (const Segment& s : t.segments) CHECK(s.independent);
  // AAC frames of 1920 ticks: 23 to a part (44160 ticks), the longest that fits in 0.5 s.
  CHECK(t.segments.front().duration == 23 * 1920);
}

TEST_CASE("parts: the part target can be as long as the segment target") {
  // 2 s GOPs cut at a 2 s target make 2 s segments: each fits in one part of 2 s, the
  // same bytes as the segment (the held-back candidates change nothing when no part is cut).
  const Title whole = SegmentAll(Media("h264_aac.mp4"), 2.0);
  const Title t = SegmentAll({Media("h264_aac.mp4")}, WithParts(2.0, 2.0));
  CheckParts(t, whole, /*demux=*/false);
  CHECK(t.segments.size() == whole.segments.size());
  for (size_t k = 0; k < t.segments.size(); ++k) {
    CHECK(t.segments[k].part == 0);
    CHECK(t.segments[k].last_part);
    CHECK(Fnv1a(t.segments[k].parts[0].data) == Fnv1a(whole.segments[k].parts[0].data));
  }
}

TEST_CASE("parts: without them, every group is a whole segment") {
  const Title& t = Cached("h264_aac.mp4");
  CHECK(t.info.part_target == 0);
  for (size_t k = 0; k < t.segments.size(); ++k) {
    CHECK(t.segments[k].sequence == k);
    CHECK(t.segments[k].part == 0);
    CHECK(t.segments[k].independent);
    CHECK(t.segments[k].last_part);
  }
}

TEST_CASE("parts: durations, inputs and subtitle files that cannot go with them are refused at Open") {
  const std::string movie = Media("h264_aac.mp4");
  for (double bad : {0.05, -0.5, 2.5, double(NAN), double(INFINITY)}) {
    CAPTURE(bad);
    auto r = Segmenter::Open(movie, WithParts(2.0, bad));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidArgument);
    const std::string m = r.status().message();
    CHECK_MESSAGE(Contains(m, fmt::format("part duration {} s", bad)), m);
    CHECK_MESSAGE(Contains(m, "at least 0.1 s and at most the target duration"), m);
    CHECK_MESSAGE(Contains(m, movie), m);
  }
  // The bounds themselves are fine.
  for (double good : {0.1, 2.0}) {
    CAPTURE(good);
    auto r = Segmenter::Open(movie, WithParts(2.0, good));
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    CHECK((*r)->info().part_target == std::llround(good * kClock));
  }
  // A ladder.
  auto ladder = Segmenter::Open({Media("ladder_a.mp4"), Media("ladder_b.mp4")}, WithParts(2.0, 0.5));
  REQUIRE_FALSE(ladder.ok());
  CHECK(ladder.status().code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(ladder.status().message(),
                         "--part-duration takes one input: a ladder's variants cannot be cut into parts yet"),
                ladder.status().message());
  // A subtitle file.
  Params p = WithParts(2.0, 0.5);
  p.subtitles = {{Media("sidecar.en.srt"), ""}};
  auto side = Segmenter::Open(movie, p);
  REQUIRE_FALSE(side.ok());
  CHECK(side.status().code() == ErrorCode::kInvalidArgument);
  CHECK_MESSAGE(Contains(side.status().message(), Media("sidecar.en.srt")), side.status().message());
  CHECK_MESSAGE(Contains(side.status().message(), "subtitles are not carried in low-latency (part) mode"),
                side.status().message());
}

TEST_CASE("parts: the input's subtitle tracks are skipped with the reason") {
  const std::string path = Media("multilang.mkv");
  const Title t = SegmentAll({path}, WithParts(2.0, 0.5));
  REQUIRE(Ids(t.info) == std::vector<std::string>{"video-240p", "audio-en", "audio-fr"});
  REQUIRE(t.info.streams.size() == 5);
  for (int stream : {3, 4}) {
    CAPTURE(stream);
    const StreamReport& s = Report(t.info, 0, stream);
    CHECK(s.rendition.empty());
    CHECK(s.reason == "subtitles are not carried in low-latency (part) mode");
  }
  CHECK(Report(t.info, 0, 2).rendition == "audio-fr");
  // Both audio languages are cut into the same parts.
  CheckParts(t, Cached("multilang.mkv", 2.0), /*demux=*/false);
}
