#include <algorithm>
#include <cstring>
#include <new>
#include <random>

#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include "khls/proto.h"
#include "khls/utf8.h"

namespace khls::proto {
namespace {

constexpr char kMagic[4] = {'K', 'H', 'L', 'S'};
constexpr size_t kMaxCodecsLength = 256;
constexpr size_t kMaxSourceNameLength = 1024;
constexpr size_t kMaxLanguageLength = 35;  // BCP 47 tags in practice (RFC 5646 4.4.1)
constexpr size_t kMaxNameLength = 256;
constexpr size_t kMaxCharacteristicsLength = 256;

// Appends big-endian fields to a byte vector.
class Writer {
 public:
  explicit Writer(RecordType type, size_t reserve = 256, uint8_t version = kPlainFormatVersion)
      : Writer(type, {}, reserve, version) {}
  /// Writes into `buffer`, reusing its capacity.
  Writer(RecordType type, std::vector<uint8_t> buffer, size_t reserve, uint8_t version = kPlainFormatVersion)
      : out_(std::move(buffer)) {
    out_.clear();
    out_.reserve(reserve);
    for (char c : kMagic) out_.push_back(static_cast<uint8_t>(c));
    U8(version);
    U8(static_cast<uint8_t>(type));
    U16(0);
  }
  void U8(uint8_t v) { out_.push_back(v); }
  void U16(uint16_t v) { Int(v, 2); }
  void U32(uint32_t v) { Int(v, 4); }
  void U64(uint64_t v) { Int(v, 8); }
  void Bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void Str(std::string_view s) {
    U16(static_cast<uint16_t>(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  std::vector<uint8_t> Finish() {
    U64(XXH64(out_.data(), out_.size(), 0));
    return std::move(out_);
  }
  /// Appends `payload` and finishes, hashing each block right after it is
  /// copied (one pass over a multi-MB payload instead of a copy, then a hash).
  std::vector<uint8_t> FinishWith(std::span<const uint8_t> payload) {
    constexpr size_t kBlock = 64 * 1024;  // still in L1/L2 when it is hashed
    XXH64_state_t st;
    XXH64_reset(&st, 0);
    XXH64_update(&st, out_.data(), out_.size());
    for (size_t done = 0; done < payload.size();) {
      const size_t n = std::min(kBlock, payload.size() - done);
      const size_t at = out_.size();
      out_.insert(out_.end(), payload.begin() + static_cast<std::ptrdiff_t>(done),
                  payload.begin() + static_cast<std::ptrdiff_t>(done + n));
      XXH64_update(&st, out_.data() + at, n);
      done += n;
    }
    U64(XXH64_digest(&st));
    return std::move(out_);
  }

 private:
  void Int(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> out_;
};

// Reads big-endian fields; the first failure sticks and is reported once.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  size_t remaining() const { return b_.size() - pos_; }

  uint8_t U8(const char* field) { return static_cast<uint8_t>(Int(1, field)); }
  uint16_t U16(const char* field) { return static_cast<uint16_t>(Int(2, field)); }
  uint32_t U32(const char* field) { return static_cast<uint32_t>(Int(4, field)); }
  uint64_t U64(const char* field) { return Int(8, field); }

  template <size_t N>
  std::array<uint8_t, N> Array(const char* field) {
    std::array<uint8_t, N> a{};
    if (Need(N, field)) {
      std::memcpy(a.data(), b_.data() + pos_, N);
      pos_ += N;
    }
    return a;
  }
  std::span<const uint8_t> Bytes(size_t n, const char* field) {
    if (!Need(n, field)) return {};
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::string Str(size_t max_len, const char* field) {
    uint16_t len = U16(field);
    if (!ok()) return {};
    if (len > max_len) {
      Fail(fmt::format("{} is {} bytes, longer than the limit of {}", field, len, max_len));
      return {};
    }
    auto s = Bytes(len, field);
    return std::string(s.begin(), s.end());
  }
  void Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }

 private:
  bool Need(size_t n, const char* field) {
    if (!ok()) return false;
    if (remaining() < n) {
      Fail(fmt::format("record ends inside field {} ({} bytes left, {} needed)", field, remaining(), n));
      return false;
    }
    return true;
  }
  uint64_t Int(size_t n, const char* field) {
    if (!Need(n, field)) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | b_[pos_ + i];
    pos_ += n;
    return v;
  }

  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  std::string error_;
};

// Codecs go into a quoted playlist attribute: no quotes, commas only as separators.
bool IsValidCodecs(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == ',' ||
           c == '-' || c == '_';
  });
}

void CheckTitle(Reader& r, const std::string& title) {
  if (r.ok() && !IsValidTitleId(title)) r.Fail(fmt::format("invalid title id '{}'", title.substr(0, 64)));
}

bool HasControlChars(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// The checks every title start must pass, whatever its version.
void CheckTitleStart(Reader& r, const TitleStart& t) {
  if (!r.ok()) return;
  if (t.title_version == 0) r.Fail("title_version is 0");
  else if (t.target_duration_s == 0 || t.target_duration_s > kMaxTargetDuration)
    r.Fail(fmt::format("target_duration_s {} is outside 1..{}", t.target_duration_s, kMaxTargetDuration));
  else if (t.segment_duration_ms == 0 || t.segment_duration_ms > kMaxTargetDuration * 1000)
    r.Fail(fmt::format("segment_duration_ms {} is out of range", t.segment_duration_ms));
  else if (t.start_offset > 10 * kClock)
    r.Fail(fmt::format("start_offset {} (90 kHz) is more than 10 s", t.start_offset));
  else if (HasControlChars(t.source_name))
    r.Fail("source_name contains control characters");
}

// The checks of one rendition (`i` for messages).
void CheckRendition(Reader& r, const Rendition& d, size_t i) {
  if (!r.ok()) return;
  const auto video = d.kind == RenditionKind::kVideo;
  const auto where = [&] { return fmt::format("rendition {} ('{}')", i, d.id.substr(0, 32)); };
  if (!d.codecs.empty() && !IsValidCodecs(d.codecs))
    r.Fail(fmt::format("{}: codecs '{}' is not an RFC 6381 list", where(), d.codecs.substr(0, 64)));
  else if (video && (d.width == 0 || d.height == 0 || d.width > 16384 || d.height > 16384))
    r.Fail(fmt::format("{}: video resolution {}x{} is out of range", where(), d.width, d.height));
  else if (d.fps_num != 0 && (d.fps_den == 0 || d.fps_num / d.fps_den > 1000))
    r.Fail(fmt::format("{}: frame rate {}/{} is out of range", where(), d.fps_num, d.fps_den));
  else if (d.channels > 64)
    r.Fail(fmt::format("{}: {} channels is out of range", where(), d.channels));
}

TitleStart ReadTitleStartV1(Reader& r) {
  TitleStart t;
  Rendition d;
  t.title = r.Str(kMaxTitleLength, "title");
  CheckTitle(r, t.title);
  t.run_id = r.Array<16>("run_id");
  t.title_version = r.U32("title_version");
  t.target_duration_s = r.U32("target_duration_s");
  t.segment_duration_ms = r.U32("segment_duration_ms");
  t.start_offset = r.U32("start_offset");
  const uint8_t flags = r.U8("media_flags");
  d.codecs = r.Str(kMaxCodecsLength, "codecs");
  d.width = r.U32("width");
  d.height = r.U32("height");
  d.fps_num = r.U32("fps_num");
  d.fps_den = r.U32("fps_den");
  d.est_peak_bps = r.U64("est_peak_bps");
  d.est_avg_bps = r.U64("est_avg_bps");
  t.input_duration = r.U64("input_duration");
  t.source_size = r.U64("source_size");
  t.source_fingerprint = r.Array<16>("source_fingerprint");
  // For humans only: older ingests wrote file names as they were, whatever their bytes.
  t.source_name = ToValidUtf8(r.Str(kMaxSourceNameLength, "source_name"));
  if (!r.ok()) return t;
  const bool has_video = flags & 1, has_audio = flags & 2;
  if (flags & ~3u) r.Fail(fmt::format("unknown media_flags bits 0x{:x}", flags));
  else if (!has_video && !has_audio) r.Fail("title has neither video nor audio");
  else if (d.codecs.empty()) r.Fail("codecs is empty");
  // The one muxed stream of a format-1 title, written directly in v<N>/.
  d.kind = has_video ? RenditionKind::kVideo : RenditionKind::kAudio;
  d.muxed_audio = has_video && has_audio;
  d.is_default = d.autoselect = true;
  if (!has_video) d.width = d.height = d.fps_num = 0, d.fps_den = 1;
  CheckTitleStart(r, t);
  CheckRendition(r, d, 0);
  t.renditions.push_back(std::move(d));
  return t;
}

bool IsValidRenditionId(std::string_view id) {
  if (id.empty() || id.size() > kMaxRenditionIdLength) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  return alnum(id.front()) && std::all_of(id.begin(), id.end(), [&](char c) { return alnum(c) || c == '-' || c == '_'; });
}

bool IsValidLanguage(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
  });
}

bool IsValidCharacteristics(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == ',' ||
           c == '-' || c == '_';
  });
}

TitleStart ReadTitleStartV2(Reader& r, uint8_t version) {
  TitleStart t;
  t.title = r.Str(kMaxTitleLength, "title");
  CheckTitle(r, t.title);
  t.run_id = r.Array<16>("run_id");
  t.title_version = r.U32("title_version");
  t.target_duration_s = r.U32("target_duration_s");
  t.segment_duration_ms = r.U32("segment_duration_ms");
  t.start_offset = r.U32("start_offset");
  if (version >= 3) {
    t.part_target_ms = r.U32("part_target_ms");
    // A part lasts at least 100 ms (the ingest refuses less) and at most a segment;
    // format 4 carries 0 for a title of whole segments.
    if (r.ok() && !(version >= 4 && t.part_target_ms == 0) &&
        (t.part_target_ms < 100 || t.part_target_ms > t.segment_duration_ms))
      r.Fail(fmt::format("part_target_ms {} is outside 100..segment_duration_ms ({})", t.part_target_ms,
                         t.segment_duration_ms));
  }
  if (version >= 4) {
    t.first_sequence = r.U32("first_sequence");
    if (r.ok() && t.first_sequence == 0) r.Fail("first_sequence 0 in a resumed title's start (format 4)");
  }
  t.input_duration = r.U64("input_duration");
  t.source_size = r.U64("source_size");
  t.source_fingerprint = r.Array<16>("source_fingerprint");
  t.source_name = ToValidUtf8(r.Str(kMaxSourceNameLength, "source_name"));
  if (r.ok() && t.first_sequence > 0 &&
      (t.input_duration != 0 || t.source_size != 0 || t.source_fingerprint != Digest{}))
    r.Fail("a resumed title's start (format 4) describes a source file; only a live title is resumed");
  const uint16_t count = r.U16("rendition_count");
  CheckTitleStart(r, t);
  if (r.ok() && (count == 0 || count > kMaxRenditions))
    r.Fail(fmt::format("rendition_count {} is outside 1..{}", count, kMaxRenditions));
  bool media = false;
  int defaults[4] = {};
  for (size_t i = 0; i < count && r.ok(); ++i) {
    Rendition d;
    d.id = r.Str(kMaxRenditionIdLength, "rendition id");
    const uint8_t kind = r.U8("rendition kind");
    const uint8_t flags = r.U8("rendition flags");
    d.language = r.Str(kMaxLanguageLength, "language");
    d.name = r.Str(kMaxNameLength, "name");
    d.characteristics = r.Str(kMaxCharacteristicsLength, "characteristics");
    d.codecs = r.Str(kMaxCodecsLength, "codecs");
    d.width = r.U32("width");
    d.height = r.U32("height");
    d.fps_num = r.U32("fps_num");
    d.fps_den = r.U32("fps_den");
    d.channels = r.U16("channels");
    d.est_peak_bps = r.U64("est_peak_bps");
    d.est_avg_bps = r.U64("est_avg_bps");
    if (!r.ok()) break;
    d.kind = static_cast<RenditionKind>(kind);
    d.is_default = flags & 1;
    d.autoselect = flags & 2;
    d.forced = flags & 4;
    if (!IsValidRenditionId(d.id))
      r.Fail(fmt::format("rendition {}: id '{}' is not 1-{} characters of a-z 0-9 - _ starting with a letter or digit", i,
                         d.id.substr(0, 32), kMaxRenditionIdLength));
    else if (kind < 1 || kind > 3) r.Fail(fmt::format("rendition {}: unknown kind {}", i, kind));
    else if (flags & ~7u) r.Fail(fmt::format("rendition {}: unknown flag bits 0x{:x}", i, flags));
    else if (d.is_default && !d.autoselect) r.Fail(fmt::format("rendition {}: DEFAULT without AUTOSELECT", i));
    else if (!IsValidLanguage(d.language)) r.Fail(fmt::format("rendition {}: language is not a BCP 47 tag", i));
    else if (HasControlChars(d.name) || d.name.find('"') != std::string::npos || !IsValidUtf8(d.name))
      r.Fail(fmt::format("rendition {}: name contains control characters or quotes, or is not UTF-8", i));
    else if (!IsValidCharacteristics(d.characteristics))
      r.Fail(fmt::format("rendition {}: characteristics '{}' are not a list of UTIs", i, d.characteristics.substr(0, 64)));
    else if (std::any_of(t.renditions.begin(), t.renditions.end(), [&](const Rendition& o) { return o.id == d.id; }))
      r.Fail(fmt::format("rendition {}: id '{}' is used twice", i, d.id));
    else if (d.is_default && ++defaults[kind] > 1)
      r.Fail(fmt::format("rendition {}: a second default {} rendition", i, ToString(d.kind)));
    CheckRendition(r, d, i);
    media |= d.kind != RenditionKind::kSubtitles;
    t.renditions.push_back(std::move(d));
  }
  if (r.ok() && !media) r.Fail("title has no video or audio rendition");
  return t;
}

SegmentChunk ReadChunk(Reader& r, uint8_t version) {
  SegmentChunk c;
  c.title = r.Str(kMaxTitleLength, "title");
  CheckTitle(r, c.title);
  c.run_id = r.Array<16>("run_id");
  if (version >= 2) c.rendition = r.U16("rendition");
  c.sequence = r.U32("sequence");
  if (version >= 3) {
    c.part = r.U16("part");
    const uint8_t flags = r.U8("part_flags");
    if (r.ok() && (flags & ~3u)) r.Fail(fmt::format("unknown part_flags bits 0x{:x}", flags));
    c.independent = flags & 1;
    c.last_part = flags & 2;
    if (r.ok() && c.part == 0 && !c.independent) r.Fail("part 0 of a segment does not start on a keyframe");
  }
  c.chunk_index = r.U32("chunk_index");
  c.chunk_count = r.U32("chunk_count");
  c.segment_size = r.U64("segment_size");
  c.start_pts = r.U64("start_pts");
  c.duration = r.U64("duration");
  c.segment_digest = r.Array<16>("segment_digest");
  uint32_t payload_size = r.U32("payload_size");
  if (!r.ok()) return c;
  if (c.rendition >= kMaxRenditions)
    r.Fail(fmt::format("rendition {} is outside 0..{}", c.rendition, kMaxRenditions - 1));
  else if (c.chunk_count == 0 || c.chunk_count > kMaxChunkCount)
    r.Fail(fmt::format("chunk_count {} is outside 1..{}", c.chunk_count, kMaxChunkCount));
  else if (c.chunk_index >= c.chunk_count)
    r.Fail(fmt::format("chunk_index {} is not below chunk_count {}", c.chunk_index, c.chunk_count));
  else if (c.segment_size > kMaxSegmentSize)
    r.Fail(fmt::format("segment_size {} exceeds the format limit of {}", c.segment_size, kMaxSegmentSize));
  else if (payload_size > c.segment_size)
    r.Fail(fmt::format("payload_size {} exceeds segment_size {}", payload_size, c.segment_size));
  else if (c.duration == 0 || c.duration > uint64_t{kMaxTargetDuration} * kClock * 10)
    r.Fail(fmt::format("duration {} (90 kHz) is out of range", c.duration));
  else if (c.start_pts >= (1ull << 62))
    r.Fail(fmt::format("start_pts {} is out of range", c.start_pts));
  if (!r.ok()) return c;
  if (r.remaining() != payload_size + kTrailerSize) {
    r.Fail(fmt::format("payload_size {} does not match the {} bytes present", payload_size,
                       r.remaining() >= kTrailerSize ? r.remaining() - kTrailerSize : 0));
    return c;
  }
  c.payload = r.Bytes(payload_size, "payload");
  return c;
}

TitleEnd ReadTitleEnd(Reader& r, uint8_t version) {
  TitleEnd e;
  e.title = r.Str(kMaxTitleLength, "title");
  CheckTitle(r, e.title);
  e.run_id = r.Array<16>("run_id");
  e.segment_count = r.U32("segment_count");
  e.total_duration = r.U64("total_duration");
  if (version == 1) {
    RenditionTotals t;
    t.bytes = r.U64("total_bytes");
    t.peak_bps = r.U64("peak_bps");
    t.avg_bps = r.U64("avg_bps");
    t.max_segment_duration = r.U64("max_segment_duration");
    t.duration = e.total_duration;
    e.renditions.push_back(t);
  } else {
    const uint16_t count = r.U16("rendition_count");
    if (r.ok() && (count == 0 || count > kMaxRenditions))
      r.Fail(fmt::format("rendition_count {} is outside 1..{}", count, kMaxRenditions));
    for (size_t i = 0; i < count && r.ok(); ++i) {
      RenditionTotals t;
      t.bytes = r.U64("bytes");
      t.duration = r.U64("duration");
      t.peak_bps = r.U64("peak_bps");
      t.avg_bps = r.U64("avg_bps");
      t.max_segment_duration = r.U64("max_segment_duration");
      e.renditions.push_back(t);
    }
  }
  if (r.ok() && e.segment_count == 0) r.Fail("title end with zero segments");
  return e;
}

TitleStatus ReadTitleStatus(Reader& r) {
  TitleStatus t;
  t.title = r.Str(kMaxTitleLength, "title");
  CheckTitle(r, t.title);
  t.run_id = r.Array<16>("run_id");
  t.title_version = r.U32("title_version");
  t.source_fingerprint = r.Array<16>("source_fingerprint");
  t.source_size = r.U64("source_size");
  uint8_t state = r.U8("state");
  t.segment_count = r.U32("segment_count");
  t.source_name = r.Str(kMaxSourceNameLength, "source_name");
  if (!r.ok()) return t;
  if (state != 1 && state != 2) r.Fail(fmt::format("unknown title state {}", state));
  else if (t.title_version == 0) r.Fail("title_version is 0");
  t.state = static_cast<TitleStatus::State>(state);
  return t;
}

}  // namespace

bool IsValidTitleId(std::string_view id) {
  // No leading dot: "." and ".." are path steps, and dot-names are hidden (the
  // origin never serves them; the packager's temporary files are dot-files).
  if (id.empty() || id.size() > kMaxTitleLength || id.front() == '.') return false;
  return std::all_of(id.begin(), id.end(), IsTitleIdChar);
}

Status CheckTitleId(std::string_view id) {
  if (IsValidTitleId(id)) return Status::Ok();
  std::string shown(id.substr(0, 64));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return Error(ErrorCode::kInvalidArgument,
               "invalid title id '{}{}' ({} bytes): a title id is 1 to {} characters of A-Z a-z 0-9 . _ -, "
               "not starting with '.'",
               shown, id.size() > 64 ? "..." : "", id.size(), kMaxTitleLength);
}

Digest SegmentDigest(std::span<const uint8_t> data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, h);
  Digest d;
  std::memcpy(d.data(), canon.digest, d.size());
  return d;
}

struct SegmentDigester::State {
  XXH3_state_t* xxh = XXH3_createState();
  State() {
    if (xxh == nullptr) throw std::bad_alloc();
    XXH3_128bits_reset(xxh);
  }
  ~State() { XXH3_freeState(xxh); }
  State(const State&) = delete;
  State& operator=(const State&) = delete;
};

SegmentDigester::SegmentDigester() : state_(std::make_unique<State>()) {}
SegmentDigester::~SegmentDigester() = default;
SegmentDigester::SegmentDigester(SegmentDigester&&) noexcept = default;
SegmentDigester& SegmentDigester::operator=(SegmentDigester&&) noexcept = default;

void SegmentDigester::Append(std::vector<uint8_t>& dst, std::span<const uint8_t> src) {
  for (size_t done = 0; done < src.size();) {
    constexpr size_t kBlock = 64 * 1024;  // still in L1/L2 when it is hashed
    const size_t n = std::min(kBlock, src.size() - done);
    const size_t at = dst.size();
    dst.insert(dst.end(), src.begin() + static_cast<std::ptrdiff_t>(done),
               src.begin() + static_cast<std::ptrdiff_t>(done + n));
    XXH3_128bits_update(state_->xxh, dst.data() + at, n);
    done += n;
  }
}

Digest SegmentDigester::Final() const {
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(state_->xxh));
  Digest d;
  std::memcpy(d.data(), canon.digest, d.size());
  return d;
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s.push_back(kHex[b >> 4]);
    s.push_back(kHex[b & 15]);
  }
  return s;
}

RunId NewRunId() {
  std::random_device rd;
  RunId id;
  for (size_t i = 0; i < id.size(); i += 4) {
    uint32_t v = rd();
    std::memcpy(id.data() + i, &v, 4);
  }
  return id;
}

std::vector<uint8_t> Encode(const TitleStart& t) {
  const bool parts = t.part_target_ms > 0;
  const bool resumed = t.first_sequence > 0;
  Writer w(RecordType::kTitleStart, 256 + 128 * t.renditions.size(),
           resumed ? kResumeFormatVersion : parts ? kPartFormatVersion : kPlainFormatVersion);
  w.Str(t.title);
  w.Bytes(t.run_id);
  w.U32(t.title_version);
  w.U32(t.target_duration_s);
  w.U32(t.segment_duration_ms);
  w.U32(t.start_offset);
  if (parts || resumed) w.U32(t.part_target_ms);
  if (resumed) w.U32(t.first_sequence);
  w.U64(t.input_duration);
  w.U64(t.source_size);
  w.Bytes(t.source_fingerprint);
  w.Str(t.source_name.substr(0, kMaxSourceNameLength));
  w.U16(static_cast<uint16_t>(t.renditions.size()));
  for (const Rendition& d : t.renditions) {
    w.Str(d.id);
    w.U8(static_cast<uint8_t>(d.kind));
    w.U8(static_cast<uint8_t>((d.is_default ? 1 : 0) | (d.autoselect ? 2 : 0) | (d.forced ? 4 : 0)));
    w.Str(d.language);
    w.Str(d.name);
    w.Str(d.characteristics);
    w.Str(d.codecs);
    w.U32(d.width);
    w.U32(d.height);
    w.U32(d.fps_num);
    w.U32(d.fps_den);
    w.U16(static_cast<uint16_t>(d.channels));
    w.U64(d.est_peak_bps);
    w.U64(d.est_avg_bps);
  }
  return w.Finish();
}

std::vector<uint8_t> Encode(const TitleEnd& e) {
  Writer w(RecordType::kTitleEnd, 128 + 40 * e.renditions.size());
  w.Str(e.title);
  w.Bytes(e.run_id);
  w.U32(e.segment_count);
  w.U64(e.total_duration);
  w.U16(static_cast<uint16_t>(e.renditions.size()));
  for (const RenditionTotals& t : e.renditions) {
    w.U64(t.bytes);
    w.U64(t.duration);
    w.U64(t.peak_bps);
    w.U64(t.avg_bps);
    w.U64(t.max_segment_duration);
  }
  return w.Finish();
}

std::vector<uint8_t> Encode(const TitleStatus& t) {
  Writer w(RecordType::kTitleStatus);
  w.Str(t.title);
  w.Bytes(t.run_id);
  w.U32(t.title_version);
  w.Bytes(t.source_fingerprint);
  w.U64(t.source_size);
  w.U8(static_cast<uint8_t>(t.state));
  w.U32(t.segment_count);
  w.Str(t.source_name.substr(0, kMaxSourceNameLength));
  return w.Finish();
}

namespace {

std::vector<uint8_t> EncodeChunk(const SegmentChunk& c, std::vector<uint8_t> buffer) {
  const bool part = c.part != 0 || !c.independent || !c.last_part;
  Writer w(RecordType::kSegmentChunk, std::move(buffer), 128 + c.title.size() + c.payload.size(),
           part ? kPartFormatVersion : kPlainFormatVersion);
  w.Str(c.title);
  w.Bytes(c.run_id);
  w.U16(c.rendition);
  w.U32(c.sequence);
  if (part) {
    w.U16(c.part);
    w.U8(static_cast<uint8_t>((c.independent ? 1 : 0) | (c.last_part ? 2 : 0)));
  }
  w.U32(c.chunk_index);
  w.U32(c.chunk_count);
  w.U64(c.segment_size);
  w.U64(c.start_pts);
  w.U64(c.duration);
  w.Bytes(c.segment_digest);
  w.U32(static_cast<uint32_t>(c.payload.size()));
  return w.FinishWith(c.payload);
}

}  // namespace

std::vector<uint8_t> Encode(const SegmentChunk& c) { return EncodeChunk(c, {}); }

std::vector<std::vector<uint8_t>> EncodeSegment(const SegmentMeta& meta, std::span<const uint8_t> data,
                                                size_t chunk_size) {
  std::vector<std::vector<uint8_t>> out;
  EncodeSegmentInto(meta, data, chunk_size, out);
  return out;
}

void EncodeSegmentInto(const SegmentMeta& meta, std::span<const uint8_t> data, size_t chunk_size,
                       std::vector<std::vector<uint8_t>>& records) {
  EncodeSegmentAt(meta, data, chunk_size, records, 0);
}

size_t EncodeSegmentAt(const SegmentMeta& meta, std::span<const uint8_t> data, size_t chunk_size,
                       std::vector<std::vector<uint8_t>>& records, size_t first) {
  chunk_size = std::max<size_t>(chunk_size, 1);
  const size_t count = std::max<size_t>(1, (data.size() + chunk_size - 1) / chunk_size);
  SegmentChunk c;
  c.title = meta.title;
  c.run_id = meta.run_id;
  c.rendition = meta.rendition;
  c.sequence = meta.sequence;
  c.part = meta.part;
  c.independent = meta.independent;
  c.last_part = meta.last_part;
  c.chunk_count = static_cast<uint32_t>(count);
  c.segment_size = data.size();
  c.start_pts = meta.start_pts;
  c.duration = meta.duration;
  c.segment_digest = SegmentDigest(data);
  records.resize(first + count);
  for (size_t i = 0; i < count; ++i) {
    c.chunk_index = static_cast<uint32_t>(i);
    size_t begin = i * chunk_size;
    c.payload = data.subspan(begin, std::min(chunk_size, data.size() - begin));
    records[first + i] = EncodeChunk(c, std::move(records[first + i]));
  }
  return count;
}

Result<Record> Decode(std::span<const uint8_t> bytes) {
  auto bad = [](std::string why) { return Status(ErrorCode::kMalformedRecord, std::move(why)); };
  if (bytes.size() < kHeaderSize + kTrailerSize)
    return bad(fmt::format("record of {} bytes is shorter than the {}-byte minimum", bytes.size(),
                           kHeaderSize + kTrailerSize));
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) return bad("record does not start with the KHLS magic");
  const uint8_t version = bytes[4];
  if (version < kOldestFormatVersion || version > kFormatVersion)
    return bad(fmt::format("record format version {} is not supported (this build reads versions {} to {})", version,
                           kOldestFormatVersion, kFormatVersion));
  const size_t body_end = bytes.size() - kTrailerSize;
  uint64_t stored = 0;
  for (size_t i = 0; i < 8; ++i) stored = (stored << 8) | bytes[body_end + i];
  if (XXH64(bytes.data(), body_end, 0) != stored) return bad("record checksum mismatch (corrupted record)");
  if (bytes[6] != 0 || bytes[7] != 0) return bad("reserved flags are not zero");

  Reader r(bytes.first(bytes.size()));
  r.Bytes(kHeaderSize, "header");
  Record rec;
  switch (static_cast<RecordType>(bytes[5])) {
    case RecordType::kTitleStart: rec = version == 1 ? ReadTitleStartV1(r) : ReadTitleStartV2(r, version); break;
    case RecordType::kSegmentChunk: rec = ReadChunk(r, version); break;
    case RecordType::kTitleEnd: rec = ReadTitleEnd(r, version); break;
    case RecordType::kTitleStatus: rec = ReadTitleStatus(r); break;
    default: return bad(fmt::format("unknown record type {}", bytes[5]));
  }
  if (!r.ok()) return bad(r.error());
  if (r.remaining() != kTrailerSize)
    return bad(fmt::format("{} unexpected bytes after the record body", r.remaining() - kTrailerSize));
  return rec;
}

const char* ToString(RenditionKind k) {
  switch (k) {
    case RenditionKind::kVideo: return "video";
    case RenditionKind::kAudio: return "audio";
    case RenditionKind::kSubtitles: return "subtitles";
  }
  return "unknown";
}

const std::string& TitleOf(const Record& r) {
  return std::visit([](const auto& v) -> const std::string& { return v.title; }, r);
}

}  // namespace khls::proto
