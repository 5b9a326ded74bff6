#include "media_index.h"

#include <algorithm>
#include <bit>
#include <bitset>
#include <cstring>
#include <optional>

namespace khls::packager {
namespace {

// --- MPEG-TS (ISO/IEC 13818-1) -------------------------------------------------------------------------

constexpr size_t kTsPacket = 188;
constexpr uint8_t kSyncByte = 0x47;
constexpr uint8_t kStreamTypeH264 = 0x1B;
constexpr uint8_t kStreamTypeHevc = 0x24;
constexpr int64_t kPtsMask = (int64_t{1} << 33) - 1;
// A PES header is at most 9 + 255 bytes; the NAL scan looks at kTsNalScanBytes after it.
constexpr size_t kPesHeadCap = 9 + 255 + kTsNalScanBytes;

struct TsPacket {
  uint16_t pid = 0;
  bool pusi = false;                    // payload_unit_start_indicator
  bool random_access = false;           // adaptation field random_access_indicator
  std::span<const uint8_t> payload;     // empty without payload
};

Status TsError(uint64_t offset, std::string_view why) {
  return Error(ErrorCode::kMalformedRecord, "TS packet at byte {}: {}", offset, why);
}

Result<TsPacket> ReadTsPacket(std::span<const uint8_t> ts, uint64_t off) {
  if (ts.size() - off < kTsPacket) {
    return TsError(off, fmt::format("truncated packet ({} of {} bytes)", ts.size() - off, kTsPacket));
  }
  const uint8_t* p = ts.data() + off;
  if (p[0] != kSyncByte) return TsError(off, fmt::format("lost sync (byte 0x{:02x}, expected 0x47)", p[0]));
  TsPacket pkt;
  pkt.pusi = (p[1] & 0x40) != 0;
  pkt.pid = static_cast<uint16_t>(((p[1] & 0x1f) << 8) | p[2]);
  const int afc = (p[3] >> 4) & 3;  // adaptation_field_control
  size_t pos = 4;
  if (afc & 2) {
    const size_t len = p[4];
    // 2.4.3.5: 183 with an adaptation field only, 0..182 when a payload follows.
    const size_t max_len = (afc == 2) ? 183 : 182;
    if (len > max_len) {
      return TsError(off, fmt::format("adaptation_field_length {} exceeds the packet (at most {})", len, max_len));
    }
    if (len > 0) pkt.random_access = (p[5] & 0x40) != 0;
    pos = 5 + len;
  }
  // afc 0 is reserved: decoders discard the packet, so it carries no payload.
  if (afc & 1) pkt.payload = std::span<const uint8_t>(p + pos, kTsPacket - pos);
  return pkt;
}

// Assembles the first complete PSI section of one PID (2.4.4): pointer_field on payload_unit_start,
// sections continuing over packets.
class SectionAssembler {
 public:
  // Feeds one packet's payload; true once a whole section is held in section().
  bool Feed(const TsPacket& pkt) {
    if (done_) return true;
    std::span<const uint8_t> pl = pkt.payload;
    if (pkt.pusi) {
      if (pl.empty() || size_t{pl[0]} + 1 > pl.size()) return false;  // pointer_field past the payload
      if (!started_) {
        pl = pl.subspan(size_t{pl[0]} + 1);
        started_ = true;
      } else {
        pl = pl.subspan(1);  // the bytes before the pointed-to section end the section being assembled
      }
    } else if (!started_) {
      return false;
    }
    buf_.insert(buf_.end(), pl.begin(), pl.end());
    if (buf_.size() >= 3) {
      const size_t need = 3 + (((buf_[1] & 0x0f) << 8) | buf_[2]);
      if (buf_.size() >= need) {
        buf_.resize(need);
        done_ = true;
      }
    }
    return done_;
  }
  std::span<const uint8_t> section() const { return buf_; }

 private:
  bool started_ = false, done_ = false;
  std::vector<uint8_t> buf_;
};

// Returns the PMT PID of the first program (program_number != 0) of a PAT section.
Result<uint16_t> ParsePat(std::span<const uint8_t> s, uint64_t off) {
  if (s.size() < 12 || s[0] != 0x00) return TsError(off, "PAT section: bad table_id or too short");
  const size_t end = s.size() - 4;  // CRC_32
  for (size_t i = 8; i + 4 <= end; i += 4) {
    const uint16_t program = static_cast<uint16_t>((s[i] << 8) | s[i + 1]);
    if (program != 0) return static_cast<uint16_t>(((s[i + 2] & 0x1f) << 8) | s[i + 3]);
  }
  return TsError(off, "PAT lists no program");
}

struct Pmt {
  std::bitset<8192> es_pids;
  uint16_t video_pid = 0;
  bool hevc = false;
};

Result<Pmt> ParsePmt(std::span<const uint8_t> s, uint64_t off) {
  if (s.size() < 16 || s[0] != 0x02) return TsError(off, "PMT section: bad table_id or too short");
  const size_t end = s.size() - 4;  // CRC_32
  const size_t program_info_length = ((s[10] & 0x0f) << 8) | s[11];
  size_t i = 12 + program_info_length;
  if (i > end) return TsError(off, "PMT program_info_length overflows the section");
  Pmt pmt;
  while (i + 5 <= end) {
    const uint8_t stream_type = s[i];
    const uint16_t pid = static_cast<uint16_t>(((s[i + 1] & 0x1f) << 8) | s[i + 2]);
    const size_t es_info_length = ((s[i + 3] & 0x0f) << 8) | s[i + 4];
    i += 5 + es_info_length;
    if (i > end) return TsError(off, "PMT ES_info_length overflows the section");
    pmt.es_pids.set(pid);
    if (pmt.video_pid == 0 && (stream_type == kStreamTypeH264 || stream_type == kStreamTypeHevc)) {
      pmt.video_pid = pid;
      pmt.hevc = stream_type == kStreamTypeHevc;
    }
  }
  return pmt;
}

int64_t ReadPesTimestamp(const uint8_t* p) {
  return (int64_t{(p[0] >> 1) & 0x07} << 30) | (int64_t{p[1]} << 22) | (int64_t{p[2] >> 1} << 15) |
         (int64_t{p[3]} << 7) | (p[4] >> 1);
}

bool IsVcl(int nal_type, bool hevc) { return hevc ? nal_type <= 31 : (nal_type >= 1 && nal_type <= 5); }

// Type of the first VCL NAL unit of an Annex B byte stream, or -1.
int FirstVclNalType(std::span<const uint8_t> es, bool hevc) {
  const uint8_t* p = es.data();
  const size_t n = es.size();
  size_t i = 2;
  while (i + 1 < n) {  // a start code 00 00 01 ending at i, and its NAL header byte at i + 1
    const void* hit = std::memchr(p + i, 0x01, n - 1 - i);
    if (!hit) break;
    i = static_cast<size_t>(static_cast<const uint8_t*>(hit) - p);
    if (p[i - 1] == 0 && p[i - 2] == 0) {
      const uint8_t h = p[i + 1];
      const int type = hevc ? (h >> 1) & 0x3f : h & 0x1f;
      if (IsVcl(type, hevc)) return type;
    }
    i += 1;
  }
  return -1;
}

// One video PES being assembled.
struct PendingAu {
  TsAccessUnit au;
  uint64_t last_payload_packet = 0;
  std::vector<uint8_t> head;  // the first kPesHeadCap bytes of the PES
};

// Fills pts, dts, nal_type and keyframe of `pending` from its PES header and first bytes of payload.
Status FinishAu(PendingAu& pending, bool hevc) {
  TsAccessUnit& au = pending.au;
  au.size = pending.last_payload_packet + kTsPacket - au.offset;
  const std::span<const uint8_t> h = pending.head;
  const auto pes_error = [&](std::string_view why) {
    return Error(ErrorCode::kMalformedRecord, "video PES at byte {}: {}", au.offset, why);
  };
  if (h.size() < 9) return pes_error("PES header truncated");
  if (h[0] != 0 || h[1] != 0 || h[2] != 1) return pes_error("no packet_start_code_prefix");
  if ((h[3] & 0xf0) != 0xe0) return pes_error(fmt::format("stream_id 0x{:02x} is not a video stream", h[3]));
  if ((h[6] & 0xc0) != 0x80) return pes_error("bad PES header marker bits");
  const int pts_dts_flags = h[7] >> 6;
  const size_t header_data_length = h[8];
  if (h.size() < 9 + header_data_length) return pes_error("PES header truncated");
  if (pts_dts_flags == 1) return pes_error("PTS_DTS_flags 01 (forbidden)");
  const size_t ts_bytes = pts_dts_flags == 3 ? 10 : pts_dts_flags == 2 ? 5 : 0;
  if (header_data_length < ts_bytes) return pes_error("PES_header_data_length too short for PTS/DTS");
  au.pts = au.dts = -1;
  if (pts_dts_flags & 2) au.pts = au.dts = ReadPesTimestamp(&h[9]);
  if (pts_dts_flags == 3) au.dts = ReadPesTimestamp(&h[14]);
  au.nal_type = FirstVclNalType(h.subspan(9 + header_data_length), hevc);
  const bool irap = hevc ? (au.nal_type >= 16 && au.nal_type <= 21) : au.nal_type == 5;
  au.keyframe = au.random_access || irap;
  return Status::Ok();
}

// True when `later` is below `pts` (33-bit timestamps that may have wrapped in between).
bool PtsBefore(int64_t later, int64_t pts) { return ((later - pts) & kPtsMask) >= (int64_t{1} << 32); }

bool StartsIndependent(const TsIndex& index, bool leading_orphan) {
  if (index.video_pid == 0) return true;
  if (leading_orphan) return false;  // the tail of a PES from an earlier segment
  if (index.video.empty()) return true;
  const TsAccessUnit& first = index.video.front();
  if (!first.keyframe) return false;
  if (!index.hevc) return first.nal_type == 5;
  if (first.nal_type >= 16 && first.nal_type <= 20) return true;  // BLA, IDR
  if (first.nal_type != 21 || first.pts < 0) return false;
  // CRA: its leading pictures (later in decode order, earlier in output order) that are RASL, or whose
  // type is unknown, reference pictures before the CRA. RADL (6, 7) ones decode.
  for (size_t i = 1; i < index.video.size(); ++i) {
    const TsAccessUnit& au = index.video[i];
    if (au.pts >= 0 && PtsBefore(au.pts, first.pts) && au.nal_type != 6 && au.nal_type != 7) return false;
  }
  return true;
}

// --- ISO BMFF (ISO/IEC 14496-12) ------------------------------------------------------------------------

constexpr uint32_t FourCc(const char (&s)[5]) {
  return (uint32_t{static_cast<uint8_t>(s[0])} << 24) | (uint32_t{static_cast<uint8_t>(s[1])} << 16) |
         (uint32_t{static_cast<uint8_t>(s[2])} << 8) | uint32_t{static_cast<uint8_t>(s[3])};
}

std::string FourCcName(uint32_t t) {
  std::string s(4, '?');
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>((t >> (24 - 8 * i)) & 0xff);
    if (c >= 0x20 && c < 0x7f) s[i] = c;
  }
  return s;
}

uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
uint64_t Be64(const uint8_t* p) { return (uint64_t{Be32(p)} << 32) | Be32(p + 4); }

struct Box {
  uint32_t type = 0;
  uint64_t offset = 0;  // of the box header, in the file
  uint64_t header = 0;  // 8, or 16 with a largesize
  uint64_t size = 0;    // header included
  uint64_t body() const { return offset + header; }
  uint64_t end() const { return offset + size; }
};

Status BoxError(uint64_t offset, std::string_view why) {
  return Error(ErrorCode::kMalformedRecord, "MP4 box at byte {}: {}", offset, why);
}

// Reads the header of the box at `pos`, which must end by `end` (its parent's end).
Result<Box> ReadBox(std::span<const uint8_t> d, uint64_t pos, uint64_t end) {
  if (end - pos < 8) return BoxError(pos, fmt::format("truncated box header ({} bytes left)", end - pos));
  Box b;
  b.offset = pos;
  b.type = Be32(&d[pos + 4]);
  const uint32_t size32 = Be32(&d[pos]);
  b.header = 8;
  b.size = size32;
  if (size32 == 1) {
    if (end - pos < 16) return BoxError(pos, fmt::format("'{}': truncated largesize", FourCcName(b.type)));
    b.size = Be64(&d[pos + 8]);
    b.header = 16;
  } else if (size32 == 0) {
    b.size = end - pos;  // extends to the end of its parent
  }
  if (b.size < b.header) {
    return BoxError(pos, fmt::format("'{}': size {} is smaller than its header", FourCcName(b.type), b.size));
  }
  if (b.size > end - pos) {
    return BoxError(pos, fmt::format("'{}': size {} overflows its parent ({} bytes left)", FourCcName(b.type),
                                     b.size, end - pos));
  }
  return b;
}

// Calls fn(box) for each child box in [begin, end); stops at fn's first error.
template <typename Fn>
Status ForEachBox(std::span<const uint8_t> d, uint64_t begin, uint64_t end, Fn&& fn) {
  for (uint64_t pos = begin; pos < end;) {
    KHLS_ASSIGN_OR_RETURN(Box b, ReadBox(d, pos, end));
    KHLS_RETURN_IF_ERROR(fn(b));
    pos = b.end();
  }
  return Status::Ok();
}

// Bounds-checked big-endian reads over one box body; a read past the end makes ok() false for good
// and returns 0.
class Reader {
 public:
  Reader(std::span<const uint8_t> d, const Box& box) : d_(d), pos_(box.body()), end_(box.end()) {}
  uint8_t U8() { return Need(1) ? d_[pos_++] : 0; }
  uint32_t U24() {
    if (!Need(3)) return 0;
    const uint32_t v = (uint32_t{d_[pos_]} << 16) | (uint32_t{d_[pos_ + 1]} << 8) | d_[pos_ + 2];
    pos_ += 3;
    return v;
  }
  uint32_t U32() {
    if (!Need(4)) return 0;
    const uint32_t v = Be32(&d_[pos_]);
    pos_ += 4;
    return v;
  }
  uint64_t U64() {
    if (!Need(8)) return 0;
    const uint64_t v = Be64(&d_[pos_]);
    pos_ += 8;
    return v;
  }
  void Skip(uint64_t n) {
    if (Need(n)) pos_ += n;
  }
  uint64_t remaining() const { return ok_ ? end_ - pos_ : 0; }
  bool ok() const { return ok_; }

 private:
  bool Need(uint64_t n) {
    if (ok_ && end_ - pos_ >= n) return true;
    ok_ = false;
    return false;
  }
  std::span<const uint8_t> d_;
  uint64_t pos_, end_;
  bool ok_ = true;
};

Status Truncated(const Box& b) {
  return BoxError(b.offset, fmt::format("'{}' body truncated ({} bytes)", FourCcName(b.type), b.size - b.header));
}

// tfhd flags (8.8.7.1) and trun flags (8.8.8.1).
constexpr uint32_t kTfhdBaseDataOffset = 0x000001, kTfhdSampleDescriptionIndex = 0x000002,
                   kTfhdDefaultDuration = 0x000008, kTfhdDefaultSize = 0x000010, kTfhdDefaultFlags = 0x000020,
                   kTfhdDefaultBaseIsMoof = 0x020000;
constexpr uint32_t kTrunDataOffset = 0x001, kTrunFirstSampleFlags = 0x004, kTrunDuration = 0x100,
                   kTrunSize = 0x200, kTrunFlags = 0x400, kTrunCompositionOffset = 0x800;
constexpr uint32_t kSampleIsNonSync = 0x00010000;

struct Tfhd {
  uint32_t flags = 0, track_id = 0;
  uint64_t base_data_offset = 0;
  std::optional<uint32_t> duration, size, sample_flags;  // tfhd defaults, else trex defaults
};

Result<Tfhd> ParseTfhd(std::span<const uint8_t> d, const Box& b, std::span<const Fmp4TrackInfo> init_tracks) {
  Reader r(d, b);
  Tfhd t;
  r.Skip(1);  // version
  t.flags = r.U24();
  t.track_id = r.U32();
  if (t.flags & kTfhdBaseDataOffset) t.base_data_offset = r.U64();
  if (t.flags & kTfhdSampleDescriptionIndex) r.Skip(4);
  if (t.flags & kTfhdDefaultDuration) t.duration = r.U32();
  if (t.flags & kTfhdDefaultSize) t.size = r.U32();
  if (t.flags & kTfhdDefaultFlags) t.sample_flags = r.U32();
  if (!r.ok()) return Truncated(b);
  for (const Fmp4TrackInfo& info : init_tracks) {
    if (info.track_id != t.track_id || !info.has_trex) continue;
    if (!t.duration) t.duration = info.default_sample_duration;
    if (!t.size) t.size = info.default_sample_size;
    if (!t.sample_flags) t.sample_flags = info.default_sample_flags;
  }
  return t;
}

// Adds one trun's samples to `track`; `data_pos` is where its data starts when it has no data_offset,
// and becomes the end of its data.
Status ParseTrun(std::span<const uint8_t> d, const Box& b, const Tfhd& tfhd, uint64_t base, uint64_t& data_pos,
                 Fmp4Fragment::Track& track) {
  Reader r(d, b);
  r.Skip(1);  // version
  const uint32_t flags = r.U24();
  const uint32_t count = r.U32();
  if (flags & kTrunDataOffset) {
    const int64_t off = static_cast<int32_t>(r.U32());
    if ((off < 0 && static_cast<uint64_t>(-off) > base) || (off > 0 && base > UINT64_MAX - off)) {
      return BoxError(b.offset, fmt::format("trun data_offset {} outside the file", off));
    }
    data_pos = base + off;
  }
  std::optional<uint32_t> first_flags;
  if (flags & kTrunFirstSampleFlags) first_flags = r.U32();
  if (!r.ok()) return Truncated(b);
  const uint64_t per_sample = 4 * static_cast<uint64_t>(std::popcount(
                                      flags & (kTrunDuration | kTrunSize | kTrunFlags | kTrunCompositionOffset)));
  if (uint64_t{count} * per_sample > r.remaining()) {
    return BoxError(b.offset, fmt::format("trun: {} samples do not fit in the box", count));
  }
  if (count == 0) return Status::Ok();
  if (!(flags & kTrunDuration) && !tfhd.duration) {
    return BoxError(b.offset, fmt::format("trun of track {}: no sample duration (trun, tfhd or trex)", tfhd.track_id));
  }
  if (!(flags & kTrunSize) && !tfhd.size) {
    return BoxError(b.offset, fmt::format("trun of track {}: no sample size (trun, tfhd or trex)", tfhd.track_id));
  }
  const uint64_t start = data_pos;
  uint64_t bytes = 0, duration = 0;
  if (per_sample == 0) {  // every sample takes the defaults: no loop over a hostile count
    bytes = uint64_t{count} * *tfhd.size;
    duration = uint64_t{count} * *tfhd.duration;
  }
  for (uint32_t i = 0; per_sample != 0 && i < count; ++i) {
    const uint32_t dur = (flags & kTrunDuration) ? r.U32() : *tfhd.duration;
    const uint32_t size = (flags & kTrunSize) ? r.U32() : *tfhd.size;
    std::optional<uint32_t> sflags = tfhd.sample_flags;
    if (flags & kTrunFlags) sflags = r.U32();
    if (flags & kTrunCompositionOffset) r.Skip(4);
    if (i == 0 && first_flags) sflags = first_flags;
    if (i == 0 && track.sample_count == 0) track.first_sample_sync = sflags && !(*sflags & kSampleIsNonSync);
    if (i == 0 && track.sample_count == 0) track.first_sample_size = size;
    bytes += size;
    duration += dur;
  }
  if (per_sample == 0 && track.sample_count == 0) {
    const std::optional<uint32_t> sflags = first_flags ? first_flags : tfhd.sample_flags;
    track.first_sample_sync = sflags && !(*sflags & kSampleIsNonSync);
    track.first_sample_size = *tfhd.size;
  }
  if (!r.ok()) return Truncated(b);
  if (start > d.size() || bytes > d.size() - start) {
    return BoxError(b.offset, fmt::format("trun of track {}: sample data [{}, {}) outside the file ({} bytes)",
                                          tfhd.track_id, start, start + bytes, d.size()));
  }
  if (track.sample_count == 0) track.first_sample_offset = start;
  track.sample_count += count;
  track.duration += duration;
  data_pos = start + bytes;
  return Status::Ok();
}

Result<Fmp4Fragment> ParseMoof(std::span<const uint8_t> d, const Box& moof,
                               std::span<const Fmp4TrackInfo> init_tracks) {
  Fmp4Fragment f;
  f.moof_offset = moof.offset;
  f.moof_size = moof.size;
  bool has_mfhd = false;
  uint64_t prev_traf_data_end = moof.offset;
  KHLS_RETURN_IF_ERROR(ForEachBox(d, moof.body(), moof.end(), [&](const Box& b) -> Status {
    if (b.type == FourCc("mfhd")) {
      Reader r(d, b);
      r.Skip(4);
      f.sequence_number = r.U32();
      if (!r.ok()) return Truncated(b);
      has_mfhd = true;
      return Status::Ok();
    }
    if (b.type != FourCc("traf")) return Status::Ok();
    std::optional<Tfhd> tfhd;
    Fmp4Fragment::Track track;
    uint64_t base = 0, data_pos = 0;
    KHLS_RETURN_IF_ERROR(ForEachBox(d, b.body(), b.end(), [&](const Box& c) -> Status {
      if (c.type == FourCc("tfhd")) {
        if (tfhd) return BoxError(c.offset, "second tfhd in a traf");
        KHLS_ASSIGN_OR_RETURN(tfhd, ParseTfhd(d, c, init_tracks));
        track.track_id = tfhd->track_id;
        // 8.8.7.1: explicit base_data_offset; else the moof for default-base-is-moof and the first traf;
        // else the end of the previous traf's data.
        if (tfhd->flags & kTfhdBaseDataOffset) {
          base = tfhd->base_data_offset;
        } else if ((tfhd->flags & kTfhdDefaultBaseIsMoof) || f.tracks.empty()) {
          base = moof.offset;
        } else {
          base = prev_traf_data_end;
        }
        data_pos = base;
        return Status::Ok();
      }
      if (c.type == FourCc("tfdt")) {
        Reader r(d, c);
        const uint8_t version = r.U8();
        r.Skip(3);
        track.base_decode_time = version == 1 ? r.U64() : r.U32();
        return r.ok() ? Status::Ok() : Truncated(c);
      }
      if (c.type == FourCc("trun")) {
        if (!tfhd) return BoxError(c.offset, "trun before tfhd");
        return ParseTrun(d, c, *tfhd, base, data_pos, track);
      }
      return Status::Ok();
    }));
    if (!tfhd) return BoxError(b.offset, "traf without tfhd");
    prev_traf_data_end = data_pos;
    f.tracks.push_back(track);
    return Status::Ok();
  }));
  if (!has_mfhd) return BoxError(moof.offset, "moof without mfhd");
  return f;
}

}  // namespace

Result<TsIndex> IndexTs(std::span<const uint8_t> ts) {
  if (ts.empty()) return Error(ErrorCode::kMalformedRecord, "empty TS segment");
  TsIndex index;

  // Pass 1: PAT, then the PMT of its first program (usually the first few packets).
  SectionAssembler pat, pmt_section;
  std::optional<Pmt> pmt;
  uint64_t pat_end = 0, pmt_end = 0;  // end of the packet that completed each section
  for (uint64_t off = 0; off < ts.size() && !pmt; off += kTsPacket) {
    KHLS_ASSIGN_OR_RETURN(TsPacket pkt, ReadTsPacket(ts, off));
    if (pkt.pid == 0 && pat_end == 0 && pat.Feed(pkt)) {
      KHLS_ASSIGN_OR_RETURN(index.pmt_pid, ParsePat(pat.section(), off));
      pat_end = off + kTsPacket;
    } else if (pat_end != 0 && pkt.pid == index.pmt_pid && pmt_section.Feed(pkt)) {
      KHLS_ASSIGN_OR_RETURN(pmt, ParsePmt(pmt_section.section(), off));
      pmt_end = off + kTsPacket;
    }
  }
  if (pat_end == 0) return Error(ErrorCode::kMalformedRecord, "TS segment of {} bytes has no PAT", ts.size());
  if (!pmt) {
    return Error(ErrorCode::kMalformedRecord, "TS segment of {} bytes has no PMT (PID {})", ts.size(),
                 index.pmt_pid);
  }
  index.video_pid = pmt->video_pid;
  index.hevc = pmt->hevc;

  // Pass 2: every packet; the video PES headers and first NAL units.
  std::optional<uint64_t> header_size;
  std::optional<PendingAu> pending;
  bool leading_orphan = false;
  for (uint64_t off = 0; off < ts.size(); off += kTsPacket) {
    KHLS_ASSIGN_OR_RETURN(TsPacket pkt, ReadTsPacket(ts, off));
    if (!header_size && pmt->es_pids.test(pkt.pid)) header_size = off;
    if (pkt.pid != index.video_pid || index.video_pid == 0) continue;
    if (pkt.pusi) {
      if (pending) {
        KHLS_RETURN_IF_ERROR(FinishAu(*pending, index.hevc));
        index.video.push_back(pending->au);
      } else {
        pending.emplace();
        pending->head.reserve(kPesHeadCap);
      }
      pending->au = TsAccessUnit{};
      pending->au.offset = off;
      pending->au.random_access = pkt.random_access;
      pending->last_payload_packet = off;
      pending->head.clear();
    } else if (!pending) {
      leading_orphan |= !pkt.payload.empty();  // the tail of a PES that started before the segment
      continue;
    }
    if (pkt.payload.empty()) continue;
    pending->last_payload_packet = off;
    const size_t take = std::min(pkt.payload.size(), kPesHeadCap - pending->head.size());
    pending->head.insert(pending->head.end(), pkt.payload.begin(), pkt.payload.begin() + take);
  }
  if (pending) {
    KHLS_RETURN_IF_ERROR(FinishAu(*pending, index.hevc));
    index.video.push_back(pending->au);
  }
  index.header_size = header_size.value_or(ts.size());
  index.psi_in_header = pat_end <= index.header_size && pmt_end <= index.header_size;
  index.starts_independent = StartsIndependent(index, leading_orphan);
  return index;
}

Result<std::vector<Fmp4Fragment>> IndexFmp4(std::span<const uint8_t> m4s, std::span<const Fmp4TrackInfo> init_tracks) {
  std::vector<Fmp4Fragment> out;
  std::optional<Fmp4Fragment> open;  // a moof waiting for its mdat
  KHLS_RETURN_IF_ERROR(ForEachBox(m4s, 0, m4s.size(), [&](const Box& b) -> Status {
    if (b.type == FourCc("moof")) {
      if (open) {
        return BoxError(b.offset, fmt::format("moof after the moof at byte {} without mdat", open->moof_offset));
      }
      KHLS_ASSIGN_OR_RETURN(open, ParseMoof(m4s, b, init_tracks));
    } else if (b.type == FourCc("mdat")) {
      if (!open) return BoxError(b.offset, "mdat without a moof before it");
      open->mdat_offset = b.offset;
      open->mdat_size = b.size;
      open->mdat_header = b.header;
      out.push_back(std::move(*open));
      open.reset();
    }
    return Status::Ok();
  }));
  if (open) return BoxError(open->moof_offset, "moof without mdat");
  if (out.empty()) return Error(ErrorCode::kMalformedRecord, "fMP4 segment of {} bytes has no moof", m4s.size());
  return out;
}

Status SetFragmentSequence(std::span<uint8_t> m4s, uint32_t first) {
  // Every position first, so that a malformed segment is left untouched.
  std::vector<uint64_t> positions;
  const std::span<const uint8_t> d = m4s;
  KHLS_RETURN_IF_ERROR(ForEachBox(d, 0, d.size(), [&](const Box& b) -> Status {
    if (b.type != FourCc("moof")) return Status::Ok();
    std::optional<uint64_t> pos;
    KHLS_RETURN_IF_ERROR(ForEachBox(d, b.body(), b.end(), [&](const Box& c) -> Status {
      if (c.type != FourCc("mfhd") || pos) return Status::Ok();
      if (c.size - c.header < 8) return Truncated(c);
      pos = c.body() + 4;  // after version and flags
      return Status::Ok();
    }));
    if (!pos) return BoxError(b.offset, "moof without mfhd");
    positions.push_back(*pos);
    return Status::Ok();
  }));
  if (positions.empty()) return Error(ErrorCode::kMalformedRecord, "fMP4 segment of {} bytes has no moof", m4s.size());
  uint32_t seq = first;
  for (uint64_t pos : positions) {
    m4s[pos] = static_cast<uint8_t>(seq >> 24);
    m4s[pos + 1] = static_cast<uint8_t>(seq >> 16);
    m4s[pos + 2] = static_cast<uint8_t>(seq >> 8);
    m4s[pos + 3] = static_cast<uint8_t>(seq);
    ++seq;
  }
  return Status::Ok();
}

Result<std::vector<Fmp4TrackInfo>> IndexInit(std::span<const uint8_t> init) {
  std::vector<Fmp4TrackInfo> tracks;
  std::vector<Fmp4TrackInfo> trex;
  bool has_moov = false;
  KHLS_RETURN_IF_ERROR(ForEachBox(init, 0, init.size(), [&](const Box& moov) -> Status {
    if (moov.type != FourCc("moov")) return Status::Ok();
    has_moov = true;
    return ForEachBox(init, moov.body(), moov.end(), [&](const Box& b) -> Status {
      if (b.type == FourCc("mvex")) {
        return ForEachBox(init, b.body(), b.end(), [&](const Box& c) -> Status {
          if (c.type != FourCc("trex")) return Status::Ok();
          Reader r(init, c);
          r.Skip(4);
          Fmp4TrackInfo t;
          t.has_trex = true;
          t.track_id = r.U32();
          r.Skip(4);  // default_sample_description_index
          t.default_sample_duration = r.U32();
          t.default_sample_size = r.U32();
          t.default_sample_flags = r.U32();
          if (!r.ok()) return Truncated(c);
          trex.push_back(t);
          return Status::Ok();
        });
      }
      if (b.type != FourCc("trak")) return Status::Ok();
      Fmp4TrackInfo t;
      bool has_tkhd = false, has_mdhd = false, has_hdlr = false;
      KHLS_RETURN_IF_ERROR(ForEachBox(init, b.body(), b.end(), [&](const Box& c) -> Status {
        if (c.type == FourCc("tkhd")) {
          Reader r(init, c);
          const uint8_t version = r.U8();
          r.Skip(3 + (version == 1 ? 16 : 8));  // flags, creation and modification times
          t.track_id = r.U32();
          has_tkhd = true;
          return r.ok() ? Status::Ok() : Truncated(c);
        }
        if (c.type != FourCc("mdia")) return Status::Ok();
        return ForEachBox(init, c.body(), c.end(), [&](const Box& m) -> Status {
          Reader r(init, m);
          if (m.type == FourCc("mdhd")) {
            const uint8_t version = r.U8();
            r.Skip(3 + (version == 1 ? 16 : 8));
            t.timescale = r.U32();
            has_mdhd = true;
          } else if (m.type == FourCc("hdlr")) {
            r.Skip(8);  // version, flags, pre_defined
            t.handler = FourCcName(r.U32());
            has_hdlr = true;
          }
          return r.ok() ? Status::Ok() : Truncated(m);
        });
      }));
      if (!has_tkhd || !has_mdhd || !has_hdlr) return BoxError(b.offset, "trak without tkhd, mdia/mdhd or mdia/hdlr");
      tracks.push_back(std::move(t));
      return Status::Ok();
    });
  }));
  if (!has_moov) return Error(ErrorCode::kMalformedRecord, "init segment of {} bytes has no moov", init.size());
  if (tracks.empty()) return Error(ErrorCode::kMalformedRecord, "init segment has no trak");
  for (Fmp4TrackInfo& t : tracks) {
    for (const Fmp4TrackInfo& x : trex) {
      if (x.track_id != t.track_id) continue;
      t.has_trex = true;
      t.default_sample_duration = x.default_sample_duration;
      t.default_sample_size = x.default_sample_size;
      t.default_sample_flags = x.default_sample_flags;
    }
  }
  return tracks;
}

}  // namespace khls::packager
