// media_index: the pure-code indexes of TS and fMP4 segments, checked against ffprobe/ffmpeg on media
// made by the ffmpeg CLI at test time, and against hostile input.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "media_index.h"
#include "test_util.h"

using namespace khls;
using namespace khls::packager;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;
using Entry = std::map<std::string, std::string>;

fs::path Media(const std::string& name) { return fs::path(KHLS_TEST_MEDIA_DIR) / name; }

// `p` quoted for the shell (the temp paths hold no quote).
std::string Q(const fs::path& p) {
  std::string q = "'";
  q += p.string();
  q += '\'';
  return q;
}

Bytes ReadBytes(const fs::path& p) {
  const std::string s = test::ReadFile(p);
  return Bytes(s.begin(), s.end());
}

void WriteBytes(const fs::path& p, std::span<const uint8_t> a, std::span<const uint8_t> b = {}) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(a.data()), static_cast<std::streamsize>(a.size()));
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Runs the ffmpeg CLI (quiet); fails the test when it fails.
void Ffmpeg(const std::string& args) {
  const auto r = test::Run("ffmpeg -nostdin -hide_banner -loglevel error -y " + args);
  REQUIRE_MESSAGE(r.exit_code == 0, "ffmpeg " << args << ": " << r.output);
}

// ffprobe's `-of compact=p=0` lines as key -> value maps (empty lines skipped).
std::vector<Entry> Probe(const std::string& args, const std::string& loglevel = "error") {
  const auto r = test::RunStdout("ffprobe -v " + loglevel + " " + args + " -of compact=p=0");
  REQUIRE_MESSAGE(r.exit_code == 0, "ffprobe " << args);
  std::vector<Entry> out;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    Entry e;
    std::istringstream fields(line);
    for (std::string kv; std::getline(fields, kv, '|');) {
      const size_t eq = kv.find('=');
      if (eq != std::string::npos) e[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    out.push_back(std::move(e));
  }
  return out;
}

struct ProbePacket {
  int stream = 0;
  int64_t pts = 0, dts = 0;
  uint64_t pos = 0, size = 0;
  bool key = false;
};

std::vector<ProbePacket> ProbePackets(const fs::path& file, const std::string& select = "v:0") {
  std::vector<ProbePacket> out;
  for (Entry& e : Probe((select.empty() ? "" : "-select_streams " + select) +
                        " -show_entries packet=stream_index,pts,dts,pos,size,flags " + Q(file))) {
    ProbePacket p;
    p.stream = std::stoi(e.at("stream_index"));
    p.pts = e.at("pts") == "N/A" ? -1 : std::stoll(e.at("pts"));
    p.dts = e.at("dts") == "N/A" ? p.pts : std::stoll(e.at("dts"));
    p.pos = std::stoull(e.at("pos"));
    p.size = std::stoull(e.at("size"));
    p.key = e.at("flags").find('K') != std::string::npos;
    out.push_back(p);
  }
  return out;
}

// The picture types of the video frames ffprobe decodes from `file` (quiet about a cut-short last sample).
std::string DecodedPictTypes(const fs::path& file) {
  std::string types;
  for (Entry& e : Probe("-select_streams v:0 -show_entries frame=pict_type " + Q(file), "fatal")) {
    types += e.at("pict_type");
  }
  return types;
}

// The type of the first VCL NAL unit of every video packet, as ffmpeg's trace_headers parses them.
std::vector<int> TraceVclNalTypes(const fs::path& file, bool hevc) {
  const auto r = test::Run("ffmpeg -nostdin -hide_banner -i " + Q(file) +
                           " -map 0:v:0 -c copy -bsf:v trace_headers -f null - 2>&1 | grep -E 'Packet:|nal_unit_type'");
  REQUIRE(r.exit_code == 0);
  std::vector<int> out;
  bool want = false;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("Packet:") != std::string::npos) {
      out.push_back(-1);
      want = true;
      continue;
    }
    if (!want) continue;  // extradata
    const int type = std::stoi(line.substr(line.rfind('=') + 1));
    if (hevc ? type <= 31 : (type >= 1 && type <= 5)) {
      out.back() = type;
      want = false;
    }
  }
  return out;
}

uint16_t PidAt(std::span<const uint8_t> ts, uint64_t off) {
  return static_cast<uint16_t>(((ts[off + 1] & 0x1f) << 8) | ts[off + 2]);
}

// The payload of the TS packet at `off` (after its adaptation field); empty without one.
std::span<const uint8_t> TsPayload(std::span<const uint8_t> ts, uint64_t off) {
  const int afc = (ts[off + 3] >> 4) & 3;
  if (!(afc & 1)) return {};
  const size_t start = (afc & 2) ? 5 + ts[off + 4] : 4;
  return ts.subspan(off + start, 188 - start);
}

bool IsError(const Status& s) { return !s.ok() && s.code() == ErrorCode::kMalformedRecord; }

// Checks a TS index against ffprobe and trace_headers on the same file; returns the index.
TsIndex CheckTsAgainstFfprobe(const fs::path& file, bool hevc) {
  const Bytes ts = ReadBytes(file);
  auto index = IndexTs(ts);
  REQUIRE_MESSAGE(index.ok(), index.status().message());
  CHECK(index->hevc == hevc);

  // PIDs: the video stream's id, the PMT PID, every elementary stream PID.
  std::set<uint16_t> es_pids;
  uint16_t probed_video_pid = 0, probed_pmt_pid = 0;
  for (Entry& e : Probe("-show_entries program=pmt_pid:stream=index,id,codec_type " + Q(file))) {
    if (e.count("pmt_pid")) probed_pmt_pid = static_cast<uint16_t>(std::stoi(e["pmt_pid"]));
    if (!e.count("id")) continue;
    const auto pid = static_cast<uint16_t>(std::stoi(e["id"], nullptr, 16));
    es_pids.insert(pid);
    if (e["codec_type"] == "video" && probed_video_pid == 0) probed_video_pid = pid;
  }
  CHECK(index->video_pid == probed_video_pid);
  CHECK(index->pmt_pid == probed_pmt_pid);

  // header_size: exactly the PSI packets before the first elementary-stream packet.
  REQUIRE(index->header_size % 188 == 0);
  REQUIRE(index->header_size < ts.size());
  CHECK(index->psi_in_header);
  bool pat = false, pmt = false;
  for (uint64_t off = 0; off < index->header_size; off += 188) {
    const uint16_t pid = PidAt(ts, off);
    CHECK_MESSAGE(es_pids.count(pid) == 0, "ES packet at " << off);
    pat |= pid == 0;
    pmt |= pid == probed_pmt_pid;
  }
  CHECK(pat);
  CHECK(pmt);
  CHECK(es_pids.count(PidAt(ts, index->header_size)) == 1);

  // Every access unit: ffprobe's position, timestamps and key flag; trace_headers' NAL type.
  const std::vector<ProbePacket> packets = ProbePackets(file);
  const std::vector<int> nal_types = TraceVclNalTypes(file, hevc);
  REQUIRE(index->video.size() == packets.size());
  REQUIRE(nal_types.size() == packets.size());
  uint64_t prev_end = 0, es_total = 0, probe_total = 0;
  for (size_t i = 0; i < packets.size(); ++i) {
    const TsAccessUnit& au = index->video[i];
    INFO("access unit " << i << " at byte " << au.offset);
    CHECK(au.offset == packets[i].pos);
    CHECK(au.pts == packets[i].pts);
    CHECK(au.dts == packets[i].dts);
    CHECK(au.keyframe == packets[i].key);
    CHECK(au.nal_type == nal_types[i]);
    CHECK(au.offset % 188 == 0);
    CHECK(au.size % 188 == 0);
    CHECK(au.offset >= prev_end);  // PES of one PID do not share packets
    CHECK(au.offset + au.size <= ts.size());
    CHECK(PidAt(ts, au.offset) == index->video_pid);
    CHECK(PidAt(ts, au.offset + au.size - 188) == index->video_pid);
    prev_end = au.offset + au.size;

    // The video payload of its packets, less the PES header, is ffprobe's packet; no video payload
    // follows before the next access unit.
    uint64_t es_bytes = 0;
    for (uint64_t off = au.offset; off < au.offset + au.size; off += 188) {
      if (PidAt(ts, off) != index->video_pid) continue;
      const auto payload = TsPayload(ts, off);
      const bool start = (ts[off + 1] & 0x40) != 0;
      CHECK(start == (off == au.offset));
      es_bytes += payload.size() - (start ? 9 + payload[8] : 0);
    }
    // (ffmpeg's HEVC parser moves a zero byte of a 4-byte start code between the first and last packets.)
    CHECK(es_bytes <= packets[i].size + (hevc ? 1 : 0));
    CHECK(es_bytes + (hevc ? 1 : 0) >= packets[i].size);
    es_total += es_bytes;
    probe_total += packets[i].size;
    const uint64_t next = i + 1 < packets.size() ? index->video[i + 1].offset : ts.size();
    for (uint64_t off = au.offset + au.size; off < next; off += 188) {
      CHECK_MESSAGE((PidAt(ts, off) != index->video_pid || TsPayload(ts, off).empty()), "video payload at " << off);
    }
  }
  CHECK(es_total == probe_total);
  return std::move(index).value();
}

// header + one keyframe's bytes decode to exactly one I picture.
void CheckKeyframeCut(const fs::path& file, const TsIndex& index, const TsAccessUnit& au, const fs::path& dir) {
  const Bytes ts = ReadBytes(file);
  Bytes cut(ts.begin(), ts.begin() + static_cast<ptrdiff_t>(index.header_size));
  cut.insert(cut.end(), ts.begin() + static_cast<ptrdiff_t>(au.offset),
             ts.begin() + static_cast<ptrdiff_t>(au.offset + au.size));
  const fs::path out = dir / "iframe.ts";
  WriteBytes(out, cut);
  INFO("keyframe at byte " << au.offset << " of " << file.filename().string());
  CHECK(DecodedPictTypes(out) == "I");
}

std::vector<fs::path> Segments(const fs::path& dir, const std::string& prefix, const std::string& ext) {
  std::vector<fs::path> out;
  for (int i = 0;; ++i) {
    fs::path p = dir / (prefix + std::to_string(i) + ext);
    if (!fs::exists(p)) break;
    out.push_back(p);
  }
  return out;
}

}  // namespace

TEST_CASE("IndexTs: H.264 with B-frames, whole file and HLS segments, matches ffprobe") {
  test::TempDir dir;
  const fs::path ts = dir.path() / "ladder_a.ts";
  Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -c copy -f mpegts " + Q(ts));
  const TsIndex index = CheckTsAgainstFfprobe(ts, /*hevc=*/false);
  CHECK(index.starts_independent);
  const auto keyframes = std::count_if(index.video.begin(), index.video.end(), [](auto& au) { return au.keyframe; });
  CHECK(keyframes == 10);  // ladder_a: 20 s, 2 s GOPs (make_media.sh checks the grid)
  for (const TsAccessUnit& au : index.video) {
    if (au.keyframe) CHECK(au.nal_type == 5);
  }
  // The first, a middle and the last keyframe, cut out with the header, decode alone to one I picture.
  std::vector<const TsAccessUnit*> kf;
  for (const TsAccessUnit& au : index.video) {
    if (au.keyframe) kf.push_back(&au);
  }
  for (const TsAccessUnit* au : {kf.front(), kf[kf.size() / 2], kf.back()}) {
    CheckKeyframeCut(ts, index, *au, dir.path());
  }

  // x264 with a 1 s GOP and 2 B-frames, cut by the HLS muxer: every segment starts on an IDR.
  Ffmpeg("-f lavfi -i testsrc2=size=320x240:rate=25:duration=4 -c:v libx264 -preset ultrafast -pix_fmt yuv420p "
         "-g 25 -keyint_min 25 -bf 2 -sc_threshold 0 -f hls -hls_time 1 -hls_segment_filename " +
         Q(dir.path() / "h264_%d.ts") + " " + Q(dir.path() / "h264.m3u8"));
  const auto segments = Segments(dir.path(), "h264_", ".ts");
  REQUIRE(segments.size() >= 3);
  for (const fs::path& seg : segments) {
    INFO(seg.filename().string());
    const TsIndex s = CheckTsAgainstFfprobe(seg, false);
    REQUIRE(!s.video.empty());
    CHECK(s.video.front().keyframe);
    CHECK(s.video.front().nal_type == 5);
    CHECK(s.starts_independent);
    CheckKeyframeCut(seg, s, s.video.front(), dir.path());
  }

  // x264 open GOP: the keyframes after the first are recovery-point I pictures (nal 1, no SPS/PPS
  // repeated) that the muxer flags random access. A segment cut there is not independent.
  const fs::path og = dir.path() / "open_gop.ts";
  Ffmpeg("-f lavfi -i testsrc2=size=320x240:rate=25:duration=3 -c:v libx264 -preset ultrafast -pix_fmt yuv420p "
         "-g 25 -keyint_min 25 -bf 2 -sc_threshold 0 -x264-params open-gop=1 -f mpegts " + Q(og));
  const TsIndex ogi = CheckTsAgainstFfprobe(og, false);
  const Bytes og_bytes = ReadBytes(og);
  int recovery_points = 0;
  for (const TsAccessUnit& au : ogi.video) {
    if (!au.keyframe) continue;
    CHECK(au.random_access);
    recovery_points += au.nal_type == 1;
    Bytes cut(og_bytes.begin(), og_bytes.begin() + static_cast<ptrdiff_t>(ogi.header_size));
    cut.insert(cut.end(), og_bytes.begin() + static_cast<ptrdiff_t>(au.offset), og_bytes.end());
    auto s = IndexTs(cut);
    REQUIRE(s.ok());
    CHECK(s->video.front().nal_type == au.nal_type);
    CHECK(s->starts_independent == (au.nal_type == 5));
  }
  CHECK(ogi.video.front().nal_type == 5);
  CHECK(recovery_points == 2);
}

TEST_CASE("IndexTs: HEVC closed GOP segments all start independent") {
  test::TempDir dir;
  Ffmpeg("-f lavfi -i testsrc2=size=320x240:rate=25:duration=3 -c:v libx265 -preset ultrafast -pix_fmt yuv420p "
         "-x265-params log-level=error:keyint=25:min-keyint=25:no-open-gop=1:bframes=3:scenecut=0 "
         "-f hls -hls_time 1 -hls_segment_filename " + Q(dir.path() / "closed_%d.ts") + " " +
         Q(dir.path() / "closed.m3u8"));
  const auto segments = Segments(dir.path(), "closed_", ".ts");
  REQUIRE(segments.size() == 3);
  for (const fs::path& seg : segments) {
    INFO(seg.filename().string());
    const TsIndex s = CheckTsAgainstFfprobe(seg, /*hevc=*/true);
    REQUIRE(!s.video.empty());
    CHECK((s.video.front().nal_type == 19 || s.video.front().nal_type == 20));
    CHECK(s.starts_independent);
    CheckKeyframeCut(seg, s, s.video.front(), dir.path());
  }
}

TEST_CASE("IndexTs: HEVC open GOP: a segment starting on a CRA with leading pictures is not independent") {
  test::TempDir dir;
  // x265 open GOP: IDR first, then CRA keyframes every 2 s followed by RASL leading pictures.
  Ffmpeg("-f lavfi -i testsrc2=size=320x240:rate=25:duration=6 -c:v libx265 -preset ultrafast -pix_fmt yuv420p "
         "-x265-params log-level=error:keyint=50:min-keyint=50:open-gop=1:bframes=3:scenecut=0 "
         "-f hls -hls_time 2 -hls_segment_filename " + Q(dir.path() / "open_%d.ts") + " " +
         Q(dir.path() / "open.m3u8"));
  // Without B-frames an open-GOP CRA has no leading pictures.
  Ffmpeg("-f lavfi -i testsrc2=size=320x240:rate=25:duration=4 -c:v libx265 -preset ultrafast -pix_fmt yuv420p "
         "-x265-params log-level=error:keyint=50:min-keyint=50:open-gop=1:bframes=0:scenecut=0 "
         "-f hls -hls_time 2 -hls_segment_filename " + Q(dir.path() / "nob_%d.ts") + " " +
         Q(dir.path() / "nob.m3u8"));
  auto segments = Segments(dir.path(), "open_", ".ts");
  const auto nob = Segments(dir.path(), "nob_", ".ts");
  REQUIRE(segments.size() == 3);
  REQUIRE(nob.size() == 2);
  segments.insert(segments.end(), nob.begin(), nob.end());
  int cra_with_leading = 0, cra_without = 0, idr = 0;
  for (const fs::path& seg : segments) {
    INFO(seg.filename().string());
    const TsIndex s = CheckTsAgainstFfprobe(seg, /*hevc=*/true);
    // The expectation from ffprobe's timestamps and trace_headers' NAL types (checked equal above).
    const std::vector<ProbePacket> packets = ProbePackets(seg);
    const std::vector<int> types = TraceVclNalTypes(seg, true);
    REQUIRE(!packets.empty());
    bool rasl_leading = false;
    for (size_t i = 1; i < packets.size(); ++i) {
      if (packets[i].pts < packets[0].pts && types[i] != 6 && types[i] != 7) rasl_leading = true;
    }
    if (types[0] == 19 || types[0] == 20) {
      ++idr;
      CHECK(s.starts_independent);
    } else {
      REQUIRE(types[0] == 21);
      CHECK(packets[0].key);
      (rasl_leading ? cra_with_leading : cra_without)++;
      CHECK(s.starts_independent == !rasl_leading);
    }
    CheckKeyframeCut(seg, s, s.video.front(), dir.path());
  }
  CHECK(idr == 2);               // the first segment of each encode
  CHECK(cra_with_leading == 2);  // open_1, open_2
  CHECK(cra_without == 1);       // nob_1

  // A CRA whose leading pictures are all RADL (decodable) starts independent: open_1.ts with the NAL
  // header of each RASL picture (type 8, 9) rewritten as RADL_N (6). Index-only: no decoder involved.
  Bytes ts = ReadBytes(dir.path() / "open_1.ts");
  const TsIndex before = *IndexTs(ts);
  REQUIRE(before.video.front().nal_type == 21);
  REQUIRE(!before.starts_independent);
  int rewritten = 0;
  for (const TsAccessUnit& au : before.video) {
    if (au.nal_type != 8 && au.nal_type != 9) continue;
    const auto payload = TsPayload(ts, au.offset);
    const size_t start = static_cast<size_t>(payload.data() - ts.data());
    for (size_t i = start; i + 4 < start + payload.size(); ++i) {
      if (ts[i] == 0 && ts[i + 1] == 0 && ts[i + 2] == 1 && ((ts[i + 3] >> 1) & 0x3f) == au.nal_type) {
        ts[i + 3] = static_cast<uint8_t>((ts[i + 3] & 0x81) | (6 << 1));
        ++rewritten;
        break;
      }
    }
  }
  CHECK(rewritten > 0);
  const TsIndex radl = *IndexTs(ts);
  CHECK(radl.video.front().nal_type == 21);
  CHECK(radl.starts_independent);
}

TEST_CASE("IndexInit / IndexFmp4 / SetFragmentSequence: ffmpeg's HLS fMP4 and a fragmented MP4") {
  test::TempDir dir;
  Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -c copy -f hls -hls_segment_type fmp4 -hls_time 2 " +
         "-hls_fmp4_init_filename init.mp4 -hls_segment_filename " + Q(dir.path() / "seg%d.m4s") + " " +
         Q(dir.path() / "f.m3u8"));
  const Bytes init = ReadBytes(dir.path() / "init.mp4");
  auto tracks = IndexInit(init);
  REQUIRE_MESSAGE(tracks.ok(), tracks.status().message());
  const auto streams = Probe("-show_entries stream=index,id,codec_type,time_base " + Q(dir.path() / "init.mp4"));
  REQUIRE(tracks->size() == streams.size());
  REQUIRE(tracks->size() == 2);
  std::map<uint32_t, int> stream_of_track;
  for (size_t i = 0; i < streams.size(); ++i) {
    const Fmp4TrackInfo& t = (*tracks)[i];
    const Entry& e = streams[i];
    CHECK(t.track_id == std::stoul(e.at("id"), nullptr, 16));
    CHECK("1/" + std::to_string(t.timescale) == e.at("time_base"));
    CHECK(t.handler == (e.at("codec_type") == "video" ? "vide" : "soun"));
    CHECK(t.has_trex);
    stream_of_track[t.track_id] = static_cast<int>(i);
  }
  const uint32_t video_track = (*tracks)[0].handler == "vide" ? (*tracks)[0].track_id : (*tracks)[1].track_id;

  const auto segments = Segments(dir.path(), "seg", ".m4s");
  REQUIRE(segments.size() == 10);

  SUBCASE("every fragment: tfdt continuity, first samples where ffprobe finds them, one picture decodes") {
    std::map<uint32_t, uint64_t> next_tfdt, total_samples;
    for (const fs::path& seg : segments) {
      INFO(seg.filename().string());
      const Bytes m4s = ReadBytes(seg);
      auto frags = IndexFmp4(m4s, *tracks);
      REQUIRE_MESSAGE(frags.ok(), frags.status().message());
      REQUIRE(!frags->empty());
      const fs::path joined = dir.path() / "joined.mp4";
      WriteBytes(joined, init, m4s);
      std::map<uint64_t, ProbePacket> by_pos;
      for (const ProbePacket& p : ProbePackets(joined, "")) by_pos[p.pos - init.size()] = p;
      bool first_fragment = true;
      for (const Fmp4Fragment& f : *frags) {
        CHECK(f.mdat_header == 8);
        CHECK(f.mdat_offset == f.moof_offset + f.moof_size);
        CHECK(f.tracks.size() == 2);
        for (const Fmp4Fragment::Track& t : f.tracks) {
          INFO("track " << t.track_id << " of the moof at " << f.moof_offset);
          if (next_tfdt.count(t.track_id)) CHECK(t.base_decode_time == next_tfdt[t.track_id]);
          next_tfdt[t.track_id] = t.base_decode_time + t.duration;
          total_samples[t.track_id] += t.sample_count;
          REQUIRE(t.sample_count > 0);
          CHECK(t.first_sample_offset >= f.mdat_offset + f.mdat_header);
          CHECK(t.first_sample_offset + t.first_sample_size <= f.mdat_offset + f.mdat_size);
          REQUIRE(by_pos.count(t.first_sample_offset) == 1);
          const ProbePacket& p = by_pos[t.first_sample_offset];
          CHECK(p.stream == stream_of_track[t.track_id]);
          CHECK(p.size == t.first_sample_size);
          CHECK(p.key == t.first_sample_sync);
          if (t.track_id == video_track && first_fragment) CHECK(t.first_sample_sync);
        }
        first_fragment = false;
      }

      // init + [moof, end of the first video sample) decodes to exactly one (I) picture.
      const Fmp4Fragment& f = frags->front();
      const auto v = std::find_if(f.tracks.begin(), f.tracks.end(), [&](auto& t) { return t.track_id == video_track; });
      REQUIRE(v != f.tracks.end());
      const std::span<const uint8_t> cut(m4s.data() + f.moof_offset,
                                         v->first_sample_offset + v->first_sample_size - f.moof_offset);
      WriteBytes(dir.path() / "iframe.mp4", init, cut);
      CHECK(DecodedPictTypes(dir.path() / "iframe.mp4") == "I");
    }
    // Every sample of the source is in some fragment.
    for (const auto& [track_id, count] : total_samples) {
      const auto packets = ProbePackets(Media("ladder_a.mp4"), std::to_string(stream_of_track[track_id]));
      CHECK(count == packets.size());
    }
  }

  SUBCASE("SetFragmentSequence renumbers every mfhd and nothing else") {
    const fs::path seg = segments[3];
    Bytes m4s = ReadBytes(seg);
    const Bytes before = m4s;
    auto frags = IndexFmp4(m4s, *tracks);
    REQUIRE(frags.ok());
    REQUIRE(SetFragmentSequence(m4s, 1000).ok());
    auto after = IndexFmp4(m4s, *tracks);
    REQUIRE(after.ok());
    REQUIRE(after->size() == frags->size());
    size_t changed_bytes = 0;
    for (size_t i = 0; i < m4s.size(); ++i) changed_bytes += m4s[i] != before[i];
    CHECK(changed_bytes >= 1);
    CHECK(changed_bytes <= 4 * frags->size());
    for (size_t i = 0; i < after->size(); ++i) {
      CHECK((*after)[i].sequence_number == 1000 + i);
      CHECK((*after)[i].tracks[0].first_sample_offset == (*frags)[i].tracks[0].first_sample_offset);
    }
    WriteBytes(dir.path() / "a.mp4", init, before);
    WriteBytes(dir.path() / "b.mp4", init, m4s);
    const std::string decoded = DecodedPictTypes(dir.path() / "a.mp4");
    CHECK(decoded.size() == 50);
    CHECK(DecodedPictTypes(dir.path() / "b.mp4") == decoded);
  }

  SUBCASE("fragmented MP4s without default-base-is-moof; a last mdat of size 0") {
    // frag_keyframe+empty_moov: tfhd base_data_offset; with omit_tfhd_offset: no base, so the second traf's
    // data starts where the first traf's ends.
    for (const std::string flags : {"frag_keyframe+empty_moov", "frag_keyframe+empty_moov+omit_tfhd_offset"}) {
      INFO(flags);
      const fs::path frag = dir.path() / "frag.mp4";
      Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -c copy -movflags " + flags + " " + Q(frag));
      Bytes file = ReadBytes(frag);
      auto ftracks = IndexInit(file);
      REQUIRE(ftracks.ok());
      auto frags = IndexFmp4(file, *ftracks);
      REQUIRE_MESSAGE(frags.ok(), frags.status().message());
      CHECK(frags->size() == 10);
      std::map<uint64_t, ProbePacket> by_pos;
      for (const ProbePacket& p : ProbePackets(frag, "")) by_pos[p.pos] = p;
      for (const Fmp4Fragment& f : *frags) {
        CHECK(f.tracks.size() == 2);
        for (const Fmp4Fragment::Track& t : f.tracks) {
          INFO("track " << t.track_id << " of the moof at " << f.moof_offset);
          REQUIRE(by_pos.count(t.first_sample_offset) == 1);
          CHECK(by_pos[t.first_sample_offset].size == t.first_sample_size);
          CHECK(by_pos[t.first_sample_offset].key == t.first_sample_sync);
        }
      }
      // An mdat of size 0 extends to the end of the file (ISO 14496-12 4.2); the mfra after it dropped.
      const Fmp4Fragment last = frags->back();
      file.resize(last.mdat_offset + last.mdat_size);
      std::memset(&file[last.mdat_offset], 0, 4);
      auto zero = IndexFmp4(file, *ftracks);
      REQUIRE(zero.ok());
      CHECK(zero->back().mdat_size == last.mdat_size);

      // The first traf's base_data_offset 1000 bytes on and its trun data_offset 1000 back: same samples.
      if (flags.find("omit_tfhd_offset") == std::string::npos) {
        Bytes moved = ReadBytes(frag);
        const Fmp4Fragment& f = (*frags)[1];
        auto find = [&](const char* type) {
          for (uint64_t i = f.moof_offset; i + 4 < f.moof_offset + f.moof_size; ++i) {
            if (std::memcmp(&moved[i], type, 4) == 0) return i - 4;
          }
          return uint64_t{0};
        };
        const uint64_t tfhd = find("tfhd"), trun = find("trun");
        REQUIRE((tfhd != 0 && trun != 0));
        REQUIRE((moved[tfhd + 11] & 0x01) != 0);  // base-data-offset-present
        REQUIRE((moved[trun + 11] & 0x01) != 0);  // data-offset-present
        auto add = [&](uint64_t at, int bytes, int64_t delta) {
          uint64_t v = 0;
          for (int i = 0; i < bytes; ++i) v = (v << 8) | moved[at + i];
          v += static_cast<uint64_t>(delta);
          for (int i = bytes - 1; i >= 0; --i, v >>= 8) moved[at + i] = static_cast<uint8_t>(v);
        };
        add(tfhd + 16, 8, 1000);
        add(trun + 16, 4, -1000);
        auto again = IndexFmp4(moved, *ftracks);
        REQUIRE(again.ok());
        CHECK((*again)[1].tracks[0].first_sample_offset == f.tracks[0].first_sample_offset);
        CHECK((*again)[1].tracks[1].first_sample_offset == f.tracks[1].first_sample_offset);
      }
    }
  }
}

TEST_CASE("IndexTs / IndexFmp4 / IndexInit: malformed input gives errors, never a crash") {
  test::TempDir dir;
  const fs::path tsfile = dir.path() / "a.ts";
  Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -t 4 -c copy -f mpegts " + Q(tsfile));
  const Bytes ts = ReadBytes(tsfile);
  REQUIRE(IndexTs(ts).ok());

  SUBCASE("TS") {
    CHECK(IsError(IndexTs({}).status()));
    auto truncated = IndexTs(std::span(ts).first(188 * 10 + 100));
    CHECK(IsError(truncated.status()));
    CHECK(truncated.status().message().find("byte 1880") != std::string::npos);
    Bytes bad = ts;
    bad[188 * 7] = 0x48;
    auto lost = IndexTs(bad);
    CHECK(IsError(lost.status()));
    CHECK(lost.status().message().find("byte 1316") != std::string::npos);
    // Without the PAT, or without the PMT.
    auto without = [&](uint16_t drop) {
      Bytes out;
      for (size_t off = 0; off < ts.size(); off += 188) {
        if (PidAt(ts, off) != drop) out.insert(out.end(), ts.begin() + off, ts.begin() + off + 188);
      }
      return out;
    };
    auto no_pat = IndexTs(without(0));
    CHECK(no_pat.status().message().find("no PAT") != std::string::npos);
    const uint16_t pmt_pid = IndexTs(ts)->pmt_pid;
    auto no_pmt = IndexTs(without(pmt_pid));
    CHECK(no_pmt.status().message().find("no PMT") != std::string::npos);
    // A video PES without its start code; an adaptation field longer than the packet.
    const TsIndex index = *IndexTs(ts);
    bad = ts;
    const uint64_t first = index.video.front().offset;
    const size_t payload = (bad[first + 3] & 0x20) ? 5 + bad[first + 4] : 4;
    bad[first + payload + 2] = 0x02;
    CHECK(IsError(IndexTs(bad).status()));
    bad = ts;
    bad[first + 3] |= 0x30;
    bad[first + 4] = 183;
    CHECK(IsError(IndexTs(bad).status()));
    CHECK(IsError(IndexTs(ReadBytes(Media("random.bin"))).status()));
    // A segment that starts inside a PES (the PAT and PMT repeat later): indexed, but not independent.
    const auto split = std::find_if(index.video.begin() + 1, index.video.end(), [](auto& au) { return au.size > 188; });
    REQUIRE(split != index.video.end());
    auto mid = IndexTs(std::span(ts).subspan(split->offset + 188));
    REQUIRE(mid.ok());
    CHECK(!mid->psi_in_header);
    CHECK(!mid->starts_independent);
    Bytes headed(ts.begin(), ts.begin() + static_cast<ptrdiff_t>(index.header_size));
    headed.insert(headed.end(), ts.begin() + static_cast<ptrdiff_t>(split->offset + 188), ts.end());
    auto orphan = IndexTs(headed);
    REQUIRE(orphan.ok());
    CHECK(orphan->psi_in_header);
    CHECK(!orphan->starts_independent);
    CHECK(orphan->video.size() == mid->video.size());
    // The last packet of the PES before a keyframe, then the keyframe: still not independent.
    const auto kf = std::find_if(index.video.begin() + 1, index.video.end(),
                                 [](auto& au) { return au.keyframe && (&au - 1)->size > 188; });
    REQUIRE(kf != index.video.end());
    Bytes tail(ts.begin(), ts.begin() + static_cast<ptrdiff_t>(index.header_size));
    const uint64_t last_packet = (kf - 1)->offset + (kf - 1)->size - 188;
    tail.insert(tail.end(), ts.begin() + static_cast<ptrdiff_t>(last_packet), ts.end());
    auto tailed = IndexTs(tail);
    REQUIRE(tailed.ok());
    CHECK(tailed->video.front().keyframe);
    CHECK(!tailed->starts_independent);
    tail.erase(tail.begin() + static_cast<ptrdiff_t>(index.header_size),
               tail.begin() + static_cast<ptrdiff_t>(index.header_size + kf->offset - last_packet));
    CHECK(IndexTs(tail)->starts_independent);  // cut at the keyframe's first packet
  }

  SUBCASE("TS mutations") {
    std::mt19937 rng(1234);
    const std::span<const uint8_t> small = std::span(ts).first(std::min<size_t>(ts.size(), 188 * 200));
    for (int iter = 0; iter < 3000; ++iter) {
      Bytes m(small.begin(), small.end());
      const int edits = 1 + static_cast<int>(rng() % 8);
      for (int e = 0; e < edits; ++e) {
        size_t at = rng() % m.size();
        if (at % 188 == 0) ++at;  // keep the sync bytes, to reach the deeper parsers
        m[at] = static_cast<uint8_t>(rng());
      }
      if (iter % 10 == 0) m.resize(rng() % m.size());
      auto r = IndexTs(m);
      if (!r.ok()) CHECK(IsError(r.status()));
    }
  }

  SUBCASE("fMP4") {
    Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -t 4 -c copy -f hls -hls_segment_type fmp4 -hls_time 2 " +
           "-hls_fmp4_init_filename init.mp4 -hls_segment_filename " + Q(dir.path() / "seg%d.m4s") + " " +
           Q(dir.path() / "f.m3u8"));
    const Bytes init = ReadBytes(dir.path() / "init.mp4");
    const Bytes seg = ReadBytes(dir.path() / "seg1.m4s");
    const auto tracks = *IndexInit(init);
    const auto frags = *IndexFmp4(seg, tracks);

    CHECK(IsError(IndexFmp4({}).status()));
    CHECK(IsError(IndexInit({}).status()));
    CHECK(IsError(IndexFmp4(std::span(seg).first(100)).status()));         // truncated box
    CHECK(IsError(IndexFmp4(std::span(seg).first(seg.size() - 1)).status()));  // mdat one byte short
    CHECK(IsError(IndexInit(std::span(init).first(init.size() - 9)).status()));
    CHECK(IsError(IndexFmp4(init).status()));  // no moof
    CHECK(IsError(IndexInit(seg).status()));   // no moov
    CHECK(IsError(IndexFmp4(ReadBytes(Media("random.bin"))).status()));

    auto patched = [&](uint64_t at, std::initializer_list<uint8_t> bytes) {
      Bytes b = seg;
      std::copy(bytes.begin(), bytes.end(), b.begin() + static_cast<ptrdiff_t>(at));
      return b;
    };
    const uint64_t moof = frags.front().moof_offset;
    CHECK(IsError(IndexFmp4(patched(moof, {0xff, 0xff, 0xff, 0xf0})).status()));  // size past the end
    CHECK(IsError(IndexFmp4(patched(moof, {0, 0, 0, 4})).status()));              // smaller than its header
    const auto largesize =
        patched(moof, {0, 0, 0, 1, 'm', 'o', 'o', 'f', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
    CHECK(IsError(IndexFmp4(largesize).status()));  // a 64-bit size past the end
    // A moof of size 0 extends to the end: it swallows the mdat (no loop, an error).
    CHECK(IsError(IndexFmp4(patched(moof, {0, 0, 0, 0})).status()));
    // A box of size 0 inside the moof swallows the trafs: no samples, but no loop either.
    auto swallowed = IndexFmp4(patched(moof + 8, {0, 0, 0, 0}));
    REQUIRE(swallowed.ok());
    CHECK(swallowed->front().tracks.empty());
    // A huge trun sample_count, a data_offset outside the file.
    const Bytes b = seg;
    uint64_t trun = 0;
    for (uint64_t i = moof; i + 4 < b.size(); ++i) {
      if (std::memcmp(&b[i], "trun", 4) == 0) {
        trun = i - 4;
        break;
      }
    }
    REQUIRE(trun != 0);
    CHECK(IsError(IndexFmp4(patched(trun + 12, {0xff, 0xff, 0xff, 0xff})).status()));
    CHECK(IsError(IndexFmp4(patched(trun + 16, {0x7f, 0xff, 0xff, 0xff})).status()));
    CHECK(IsError(IndexFmp4(patched(trun + 16, {0x80, 0, 0, 0})).status()));

    // SetFragmentSequence: no moof is an error, and a malformed segment is left untouched.
    Bytes no_moof = init;
    CHECK(IsError(SetFragmentSequence(no_moof, 1)));
    CHECK(no_moof == init);
    Bytes broken = seg;
    broken.resize(seg.size() - 1);
    const Bytes broken_before = broken;
    CHECK(IsError(SetFragmentSequence(broken, 7)));
    CHECK(broken == broken_before);

    std::mt19937 rng(99);
    for (int iter = 0; iter < 3000; ++iter) {
      Bytes m = (iter % 2) ? seg : init;
      const size_t span = std::min<size_t>(m.size(), 4096);  // the boxes, not the sample data
      const int edits = 1 + static_cast<int>(rng() % 6);
      for (int e = 0; e < edits; ++e) m[rng() % span] = static_cast<uint8_t>(rng());
      if (iter % 7 == 0) m.resize(rng() % m.size());
      auto f = IndexFmp4(m, tracks);
      if (!f.ok()) CHECK(IsError(f.status()));
      auto t = IndexInit(m);
      if (!t.ok()) CHECK(IsError(t.status()));
      Status s = SetFragmentSequence(m, 5);
      if (!s.ok()) CHECK(IsError(s));
    }
  }
}

TEST_CASE("IndexTs: speed on a 2.5 MB segment") {
  test::TempDir dir;
  const fs::path tsfile = dir.path() / "a.ts";
  Ffmpeg("-i " + Q(Media("ladder_a.mp4")) + " -c copy -f mpegts " + Q(tsfile));
  const Bytes ts = ReadBytes(tsfile);
  constexpr int kRuns = 20;
  size_t aus = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kRuns; ++i) aus += IndexTs(ts)->video.size();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kRuns;
  MESSAGE("IndexTs: " << ts.size() << " bytes, " << aus / kRuns << " access units in " << ms << " ms");
  CHECK(ms < 50.0);  // generous: sanitizer builds; a release build takes about 1 ms per MB or less
}
