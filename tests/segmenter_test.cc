// Segmenter tests on real media made by tests/make_media.sh: the MPEG-TS bytes
// are parsed here (PAT/PMT, PES, continuity counters), decoded with the ffmpeg
// CLI, and compared with what ffprobe says about the sources.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "khls/segmenter.h"

namespace fs = std::filesystem;
using khls::ErrorCode;
using khls::segmenter::H264CodecString;
using khls::segmenter::kClock;
using khls::segmenter::kOutputStartPts;
using khls::segmenter::Params;
using khls::segmenter::Segment;
using khls::segmenter::Segmenter;
using khls::segmenter::Summary;
using khls::segmenter::TitleInfo;

namespace {

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
  static int& counter() {
    static int n = 0;
    return n;
  }
};

uint64_t Fnv1a(const std::vector<uint8_t>& data) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : data) h = (h ^ b) * 1099511628211ull;
  return h;
}

struct Title {
  TitleInfo info;
  std::vector<Segment> segments;
  Summary summary;
};

Title SegmentAll(const std::string& path, double target = 6.0, const Params* custom = nullptr) {
  Params params;
  params.target_duration = target;
  if (custom != nullptr) params = *custom;
  auto opened = Segmenter::Open(path, params);
  REQUIRE_MESSAGE(opened.ok(), opened.status().message());
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  Title t;
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
  const uint8_t* s = pat.payload + 1 + pat.payload[0];  // pointer_field
  REQUIRE(s[0] == 0x00);                                // table_id
  // program entries start after the 8-byte header
  return ((s[10] & 0x1f) << 8) | s[11];
}

/// Elementary PID -> stream_type from a PMT packet.
std::map<int, int> PmtStreams(const TsPacket& pmt) {
  const uint8_t* s = pmt.payload + 1 + pmt.payload[0];
  REQUIRE(s[0] == 0x02);
  const int section_length = ((s[1] & 0x0f) << 8) | s[2];
  const int program_info_length = ((s[10] & 0x0f) << 8) | s[11];
  std::map<int, int> out;
  int i = 12 + program_info_length;
  const int end = 3 + section_length - 4;  // CRC
  while (i + 5 <= end) {
    const int type = s[i];
    const int pid = ((s[i + 1] & 0x1f) << 8) | s[i + 2];
    const int es_info = ((s[i + 3] & 0x0f) << 8) | s[i + 4];
    out[pid] = type;
    i += 5 + es_info;
  }
  return out;
}

std::optional<int64_t> PesPts(const TsPacket& t) {
  const uint8_t* p = t.payload;
  if (p == nullptr || t.payload_size < 14 || p[0] != 0 || p[1] != 0 || p[2] != 1) return std::nullopt;
  if ((p[7] & 0x80) == 0) return std::nullopt;
  const uint8_t* q = p + 9;
  return (int64_t{q[0] & 0x0e} << 29) | (int64_t{q[1]} << 22) | (int64_t{q[2] & 0xfe} << 14) |
         (int64_t{q[3]} << 7) | (q[4] >> 1);
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

struct SegmentLayout {
  int pmt_pid = -1;
  int video_pid = -1;
  bool video_hevc = false;
  int audio_pid = -1;
  int first_pes_pid = -1;             ///< PID of the first PES after PAT/PMT
  std::optional<int64_t> first_pts;   ///< its PTS
  bool first_video_pes_is_key = false;
  bool saw_video = false;
};

/// Checks the structure of one segment; `cc` carries continuity counters across segments.
SegmentLayout CheckSegment(const Segment& seg, std::map<int, int>& cc) {
  SegmentLayout l;
  const auto& d = seg.data;
  REQUIRE(!d.empty());
  REQUIRE(d.size() % 188 == 0);
  REQUIRE(d[0] == 0x47);
  const TsPacket pat = ParseTs(d.data());
  REQUIRE_MESSAGE(pat.pid == 0, "segment ", seg.sequence, " does not start with a PAT");
  REQUIRE(d.size() >= 3 * 188);
  l.pmt_pid = PmtPid(pat);
  const TsPacket pmt = ParseTs(d.data() + 188);
  REQUIRE_MESSAGE(pmt.pid == l.pmt_pid, "segment ", seg.sequence, ": PAT is not followed by the PMT");
  for (const auto& [pid, type] : PmtStreams(pmt)) {
    if (IsVideoType(type)) {
      l.video_pid = pid;
      l.video_hevc = type == 0x24;
    } else {
      l.audio_pid = pid;
    }
  }
  std::vector<uint8_t> first_video_es;
  bool collecting = false;
  for (size_t off = 0; off < d.size(); off += 188) {
    REQUIRE_MESSAGE(d[off] == 0x47, "lost sync at byte ", off, " of segment ", seg.sequence);
    const TsPacket t = ParseTs(d.data() + off);
    CHECK_MESSAGE(t.pid != 0x11, "SDT in segment ", seg.sequence);
    if (t.has_payload) {
      auto it = cc.find(t.pid);
      if (it != cc.end()) {
        CHECK_MESSAGE(t.cc == ((it->second + 1) & 15), "continuity counter jump on PID ", t.pid, " in segment ",
                      seg.sequence, " at byte ", off);
      }
      cc[t.pid] = t.cc;
    }
    if (t.pusi && l.first_pes_pid < 0 && (t.pid == l.video_pid || t.pid == l.audio_pid)) {
      l.first_pes_pid = t.pid;
      l.first_pts = PesPts(t);
    }
    if (t.pid == l.video_pid) {
      if (t.pusi && !l.saw_video) {
        l.saw_video = true;
        collecting = true;
        CHECK_MESSAGE(t.random_access, "first video PES of segment ", seg.sequence, " lacks random_access_indicator");
        const uint8_t* p = t.payload;
        const size_t header = 9 + p[8];
        first_video_es.assign(p + header, p + t.payload_size);
      } else if (t.pusi) {
        collecting = false;
      } else if (collecting && t.payload != nullptr) {
        first_video_es.insert(first_video_es.end(), t.payload, t.payload + t.payload_size);
      }
    }
  }
  l.first_video_pes_is_key = HasKeyframeNal(first_video_es, l.video_hevc);
  return l;
}

double Ffprobe(const std::string& path, const std::string& entries, const std::string& extra = "") {
  const std::string out = Trim(Run(fmt::format("ffprobe -v error {} -show_entries {} -of csv=p=0 '{}'", extra,
                                               entries, path)));
  return out.empty() ? NAN : std::stod(out);
}

int64_t VideoFrameCount(const std::string& path) {
  return static_cast<int64_t>(Ffprobe(path, "stream=nb_read_frames", "-select_streams v:0 -count_frames"));
}

/// Everything every good title must satisfy.
void CheckTitle(const std::string& name, const Title& t, double target) {
  INFO("input: ", name);
  REQUIRE(!t.segments.empty());
  std::map<int, int> cc;
  int64_t total = 0;
  int64_t total_bytes = 0;
  int64_t max_duration = 0;
  for (size_t k = 0; k < t.segments.size(); ++k) {
    const Segment& s = t.segments[k];
    INFO("segment ", k);
    CHECK(s.sequence == k);
    CHECK(s.starts_with_keyframe == t.info.has_video);  // every segment of these titles has video
    const SegmentLayout l = CheckSegment(s, cc);
    if (t.info.has_video) {
      REQUIRE(l.video_pid >= 0);
      CHECK(l.saw_video);
      CHECK_MESSAGE(l.first_video_pes_is_key, "first video PES is not an IDR picture");
    }
    if (t.info.has_audio) CHECK(l.audio_pid >= 0);
    // PAT, PMT, then the keyframe's PES (or for audio only, the first audio frame's).
    CHECK(l.first_pes_pid == (t.info.has_video ? l.video_pid : l.audio_pid));
    const TsPacket third = ParseTs(s.data.data() + 2 * 188);
    CHECK(third.pid == l.first_pes_pid);
    CHECK(third.pusi);
    REQUIRE(l.first_pts.has_value());
    if (k > 0) {
      // A cut segment starts at its keyframe's (first audio frame's) pts.
      CHECK(*l.first_pts == s.start_pts);
      CHECK(s.start_pts == t.segments[k - 1].start_pts + t.segments[k - 1].duration);
    } else {
      CHECK(*l.first_pts >= s.start_pts);
    }
    if (k + 1 < t.segments.size()) CHECK(s.duration >= std::llround(target * kClock));
    CHECK(s.duration > 0);
    total += s.duration;
    total_bytes += static_cast<int64_t>(s.data.size());
    max_duration = std::max(max_duration, s.duration);
  }
  CHECK(t.segments.front().start_pts >= kOutputStartPts);
  CHECK(t.segments.front().start_pts < kOutputStartPts + kClock / 2);
  // Summary.
  CHECK(t.summary.segment_count == t.segments.size());
  CHECK(t.summary.total_duration == total);
  CHECK(t.summary.total_bytes == total_bytes);
  CHECK(t.summary.max_duration == max_duration);
  CHECK(t.summary.average_bps > 0);
  CHECK(t.summary.peak_bps >= t.summary.average_bps);
  // The durations add up to the source's, less any audio that plays before the
  // first picture (dropped so both tracks start together).
  REQUIRE(t.info.input_duration > 0);
  int64_t lead_in = 0;
  if (t.info.has_video && t.info.has_audio) {
    const std::string path = Media(name.substr(0, name.find(' ')));
    // The first keyframe's pts (video before it is dropped too).
    double first_picture = NAN;
    std::istringstream packets(Run(fmt::format(
        "ffprobe -v error -select_streams v:0 -read_intervals %+10 -show_entries packet=pts_time,flags -of csv=p=0 '{}'",
        path)));
    for (std::string line; std::getline(packets, line);)
      if (line.find(",K") != std::string::npos) {
        first_picture = std::stod(line);
        break;
      }
    const double start = Ffprobe(path, "format=start_time");
    if (std::isfinite(first_picture) && std::isfinite(start) && first_picture > start)
      lead_in = std::llround((first_picture - start) * kClock);
  }
  CHECK(std::llabs(total - (t.info.input_duration - lead_in)) <= kClock / 10);
  // The pre-scan planned exactly the cuts that were made.
  CHECK(t.info.seekable);
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  // Bitrate estimates from the pre-scan within 5% of the measured values.
  CHECK(std::fabs(double(t.info.estimated_peak_bps) / double(t.summary.peak_bps) - 1.0) < 0.05);
  CHECK(std::fabs(double(t.info.estimated_avg_bps) / double(t.summary.average_bps) - 1.0) < 0.05);
}

/// Writes the segments back to back and decodes them with ffmpeg: no errors,
/// and as many video frames as the source has.
void CheckDecodes(const std::string& source, const Title& t) {
  INFO("input: ", source);
  TempDir dir;
  const fs::path concat = dir.path / "concat.ts";
  {
    std::ofstream f(concat, std::ios::binary);
    for (const Segment& s : t.segments) f.write(reinterpret_cast<const char*>(s.data.data()), s.data.size());
  }
  const std::string errors = Run(fmt::format("ffmpeg -nostdin -v error -i '{}' -f null - 2>&1", concat.string()));
  CHECK_MESSAGE(errors.empty(), errors);
  const double start = Ffprobe(concat.string(), "format=start_time");
  CHECK(start >= 1.4 - 1e-6);
  CHECK(start < 1.5);
  if (t.info.has_video) CHECK(VideoFrameCount(concat.string()) == VideoFrameCount(source));
}

struct GoodInput {
  const char* name;
  bool video;
  bool audio;
};

constexpr GoodInput kGoodInputs[] = {
    {"h264_aac.mp4", true, true}, {"faststart.mp4", true, true}, {"h264_aac.mkv", true, true},
    {"h264_aac.mov", true, true}, {"h264_aac.ts", true, true},   {"h264_aac.flv", true, true},
    {"wrap.ts", true, true},      {"longgop.mp4", true, true},   {"ntsc.mp4", true, true},
    {"hevc_aac.mp4", true, true}, {"h264_ac3.mkv", true, true},  {"audio_only.m4a", false, true},
    {"mp3_audio.mp3", false, true}, {"clip40.mp4", true, true},    {"audio_first.ts", true, true},
    {"midstream.ts", true, true},   {"cover_art.mp3", false, true},
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

TEST_CASE("good inputs: structure, durations, plan, decode") {
  for (const GoodInput& in : kGoodInputs) {
    const std::string path = Media(in.name);
    if (!fs::exists(path)) {
      const std::string note = std::string("skipping ") + in.name + " (not made: encoder missing)";
      MESSAGE(note);
      continue;
    }
    SUBCASE(in.name) {
      const Title t = SegmentAll(path);
      CHECK(t.info.has_video == in.video);
      CHECK(t.info.has_audio == in.audio);
      CHECK(t.info.input_size == static_cast<int64_t>(fs::file_size(path)));
      CheckTitle(in.name, t, 6.0);
      CheckDecodes(path, t);
    }
  }
}

TEST_CASE("title info of the reference input") {
  const std::string path = Media("h264_aac.mp4");
  const Title t = SegmentAll(path);
  CHECK(t.info.width == 320);
  CHECK(t.info.height == 240);
  CHECK(t.info.frame_rate_num == 25);
  CHECK(t.info.frame_rate_den == 1);
  CHECK(t.info.container == "mov,mp4,m4a,3gp,3g2,mj2");
  CHECK(t.info.video_codec_name == "h264 High");
  CHECK(t.info.audio_codec_name == "aac LC");
  CHECK(std::llabs(t.info.input_duration - 20 * kClock) < kClock / 100);
  // CODECS as ffprobe's profile (High = 0x64) and level imply; x264 sets no constraint flags for High.
  const int level = static_cast<int>(Ffprobe(path, "stream=level", "-select_streams v:0"));
  CHECK(t.info.codecs == fmt::format("avc1.6400{:02x},mp4a.40.2", level));
  // 20 s in 2 s GOPs with a 6 s target: 6 + 6 + 6 + 2.
  REQUIRE(t.segments.size() == 4);
  CHECK(t.segments[1].duration == 6 * kClock);
  CHECK(t.segments[2].duration == 6 * kClock);
  CHECK(std::llabs(t.segments[3].duration - 2 * kClock) < kClock / 20);
}

TEST_CASE("codec strings of other inputs") {
  CHECK(SegmentAll(Media("audio_only.m4a")).info.codecs == "mp4a.40.2");
  CHECK(SegmentAll(Media("mp3_audio.mp3")).info.codecs == "mp4a.40.34");
  const Title ac3 = SegmentAll(Media("h264_ac3.mkv"));
  CHECK(ac3.info.codecs.starts_with("avc1.6400"));
  CHECK(ac3.info.codecs.ends_with(",ac-3"));
  // A TS input has Annex B extradata and no AudioSpecificConfig: same answer.
  CHECK(SegmentAll(Media("h264_aac.ts")).info.codecs == SegmentAll(Media("h264_aac.mp4")).info.codecs);
  if (fs::exists(Media("hevc_aac.mp4"))) {
    const std::string path = Media("hevc_aac.mp4");
    const Title hevc = SegmentAll(path);
    const int level = static_cast<int>(Ffprobe(path, "stream=level", "-select_streams v:0"));
    // Main profile, compatible with Main and Main 10 (flags 1 and 2 -> 0x6), main tier.
    CHECK(hevc.info.codecs.starts_with(fmt::format("hvc1.1.6.L{}", level)));
    CHECK(hevc.info.codecs.ends_with(",mp4a.40.2"));
    CHECK(hevc.info.video_codec_name == "hevc Main");
  }
}

TEST_CASE("long GOP: segments run from keyframe to keyframe") {
  const Title t = SegmentAll(Media("longgop.mp4"));
  REQUIRE(t.segments.size() == 3);
  for (const Segment& s : t.segments) CHECK(std::llabs(s.duration - 10 * kClock) < kClock / 20);
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  CHECK(t.info.planned_max_duration > 10 * kClock - kClock / 20);
}

TEST_CASE("29.97 fps") {
  const Title t = SegmentAll(Media("ntsc.mp4"));
  CHECK(t.info.frame_rate_num == 30000);
  CHECK(t.info.frame_rate_den == 1001);
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
  for (size_t pos = 0; pos < raw.size();) {
    const size_t eol = raw.find('\n', pos);
    const std::string line = Trim(raw.substr(pos, eol - pos));
    if (!line.empty() && line != "N/A") pts.push_back(std::stoll(line));
    pos = eol == std::string::npos ? raw.size() : eol + 1;
  }
  REQUIRE(pts.size() > 100);
  CHECK(pts.front() > (int64_t{1} << 33) - 20 * kClock);
  CHECK(pts.back() < 20 * kClock);

  const Title t = SegmentAll(path);
  for (size_t k = 1; k < t.segments.size(); ++k) CHECK(t.segments[k].start_pts > t.segments[k - 1].start_pts);
  CHECK(t.segments.back().start_pts < kOutputStartPts + 25 * kClock);
  // Same cuts as the unwrapped original.
  const Title ref = SegmentAll(Media("h264_aac.ts"));
  REQUIRE(t.segments.size() == ref.segments.size());
  for (size_t k = 0; k < t.segments.size(); ++k) {
    CHECK(t.segments[k].start_pts == ref.segments[k].start_pts);
    CHECK(t.segments[k].duration == ref.segments[k].duration);
  }
}

TEST_CASE("timestamp discontinuity in MPEG-TS is taken out of the timeline") {
  const std::string path = Media("discont.ts");
  const Title t = SegmentAll(path);
  // Two 20 s captures: 40 s of segments, cut every 6 s as usual, none longer than planned.
  int64_t total = 0;
  for (size_t k = 0; k < t.segments.size(); ++k) {
    total += t.segments[k].duration;
    if (k > 0) CHECK(t.segments[k].start_pts == t.segments[k - 1].start_pts + t.segments[k - 1].duration);
    if (k + 1 < t.segments.size()) CHECK(t.segments[k].duration >= 6 * kClock);
    CHECK(t.segments[k].duration < 6 * kClock + kClock / 2);
  }
  CHECK(std::llabs(total - 40 * kClock) < kClock / 5);
  CHECK(t.info.planned_max_duration == t.summary.max_duration);
  std::map<int, int> cc;
  for (const Segment& s : t.segments) {
    const SegmentLayout l = CheckSegment(s, cc);
    CHECK(l.first_pes_pid == l.video_pid);
    CHECK(l.first_video_pes_is_key);
  }
  TempDir dir;
  const fs::path concat = dir.path / "concat.ts";
  {
    std::ofstream f(concat, std::ios::binary);
    for (const Segment& s : t.segments) f.write(reinterpret_cast<const char*>(s.data.data()), s.data.size());
  }
  const std::string errors = Run(fmt::format("ffmpeg -nostdin -v error -i '{}' -f null - 2>&1", concat.string()));
  CHECK_MESSAGE(errors.empty(), errors);
  CHECK(VideoFrameCount(concat.string()) == 2 * VideoFrameCount(Media("h264_aac.ts")));
}

TEST_CASE("identical input and params give byte-identical segments") {
  for (const char* name : {"h264_aac.mp4", "h264_aac.ts", "audio_only.m4a"}) {
    const Title a = SegmentAll(Media(name));
    const Title b = SegmentAll(Media(name));
    REQUIRE(a.segments.size() == b.segments.size());
    for (size_t k = 0; k < a.segments.size(); ++k) {
      CHECK(a.segments[k].data.size() == b.segments[k].data.size());
      CHECK(Fnv1a(a.segments[k].data) == Fnv1a(b.segments[k].data));
    }
  }
}

TEST_CASE("recycled buffers: the same bytes, written into memory given back") {
  const Title ref = SegmentAll(Media("clip40.mp4"), 2.0);
  Params params;
  params.target_duration = 2.0;
  auto opened = Segmenter::Open(Media("clip40.mp4"), params);
  REQUIRE(opened.ok());
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  constexpr size_t kMarked = 32 << 20;  // far above any segment of this clip
  size_t k = 0, marked_seen = 0;
  for (;; ++k) {
    auto next = seg->Next();
    REQUIRE(next.ok());
    if (!next->has_value()) break;
    Segment& s = **next;
    REQUIRE(k < ref.segments.size());
    CHECK(s.data == ref.segments[k].data);
    if (s.data.capacity() >= kMarked) ++marked_seen;
    if (k == 0) {
      // Give back a buffer with stale bytes and a capacity no segment here needs.
      std::vector<uint8_t> junk(100000, 0xab);
      junk.reserve(kMarked);
      seg->Recycle(std::move(junk));
    } else {
      seg->Recycle(std::move(s.data));
    }
  }
  CHECK(k == ref.segments.size());
  CHECK(k >= 10);
  // The marked buffer came back out, and kept circulating as the largest spare.
  CHECK(marked_seen >= k / 3);
}

TEST_CASE("other targets: the plan still matches") {
  // 2 s target on 2 s GOPs: one GOP per segment.
  const Title two = SegmentAll(Media("h264_aac.mp4"), 2.0);
  CHECK(two.segments.size() == 10);
  CheckTitle("h264_aac.mp4 @2s", two, 2.0);
  // 1 s target on 2 s GOPs: still 2 s segments.
  const Title one = SegmentAll(Media("h264_aac.mkv"), 1.0);
  CHECK(one.segments.size() == 10);
  CHECK(one.info.planned_max_duration == one.summary.max_duration);
  // 4 s on the 29.97 fps title, 5 s on audio only.
  CheckTitle("ntsc.mp4 @4s", SegmentAll(Media("ntsc.mp4"), 4.0), 4.0);
  CheckTitle("audio_only.m4a @5s", SegmentAll(Media("audio_only.m4a"), 5.0), 5.0);
  CheckTitle("clip40.mp4 @10s", SegmentAll(Media("clip40.mp4"), 10.0), 10.0);
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
  seg.reset();  // muxer, queues and held packets go without a trailer (ASan/LSan builds check this)
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
    CHECK_MESSAGE(r.status().message().find(bad.name) != std::string::npos, r.status().message());
    CHECK_MESSAGE(r.status().message().find(bad.also) != std::string::npos, r.status().message());
  }
  auto vp9 = Segmenter::Open(Media("vp9.webm"), Params{});
  CHECK(vp9.status().message() ==
        fmt::format("unsupported video codec vp9 in '{}': HLS over MPEG-TS carries H.264 or HEVC", Media("vp9.webm")));
}

TEST_CASE("params") {
  Params p;
  p.target_duration = 0;
  CHECK(Segmenter::Open(Media("h264_aac.mp4"), p).status().code() == ErrorCode::kInvalidArgument);
  p.target_duration = NAN;
  CHECK(Segmenter::Open(Media("h264_aac.mp4"), p).status().code() == ErrorCode::kInvalidArgument);

  p = Params{};
  p.input_format = "no_such_format";
  CHECK(Segmenter::Open(Media("h264_aac.ts"), p).status().code() == ErrorCode::kInvalidArgument);

  p = Params{};
  p.input_options = {{"no_such_option", "1"}};
  auto unknown = Segmenter::Open(Media("h264_aac.ts"), p);
  CHECK(unknown.status().code() == ErrorCode::kInvalidArgument);
  CHECK(unknown.status().message().find("no_such_option") != std::string::npos);

  // A forced format and a real option.
  p = Params{};
  p.input_format = "mpegts";
  p.input_options = {{"probesize", "1000000"}};
  const Title forced = SegmentAll(Media("h264_aac.ts"), 6.0, &p);
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
  std::thread feeder([&] {
    std::ifstream in(source, std::ios::binary);
    std::ofstream out(fifo, std::ios::binary);  // blocks until the segmenter opens the FIFO
    out << in.rdbuf();
  });
  Params p;
  p.target_duration = 5.5;
  auto opened = Segmenter::Open(fifo.string(), p);
  if (!opened.ok()) {
    // Unblock the feeder before failing.
    int fd = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    if (fd >= 0) close(fd);
    feeder.join();
    FAIL(opened.status().message());
  }
  std::unique_ptr<Segmenter> seg = std::move(opened).value();
  CHECK_FALSE(seg->info().seekable);
  CHECK(seg->info().input_size == 0);
  CHECK(seg->info().planned_max_duration == 6 * kClock);
  CHECK(seg->info().estimated_peak_bps == 0);
  std::vector<Segment> segments;
  for (;;) {
    auto next = seg->Next();
    REQUIRE_MESSAGE(next.ok(), next.status().message());
    if (!next->has_value()) break;
    segments.push_back(std::move(**next));
  }
  feeder.join();
  // Same cuts as from the file.
  const Title ref = SegmentAll(source);
  REQUIRE(segments.size() == ref.segments.size());
  for (size_t k = 0; k < segments.size(); ++k) {
    CHECK(segments[k].duration == ref.segments[k].duration);
    CHECK(Fnv1a(segments[k].data) == Fnv1a(ref.segments[k].data));
  }
}
