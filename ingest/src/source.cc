#include "source.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace khls::ingest::internal {
namespace {

// Changes whenever what the fingerprint covers changes, so that an older
// ingest's source is never taken for this one's.
constexpr uint8_t kLayout = 2;

void PutU64(std::vector<uint8_t>& buf, uint64_t v) {
  for (int i = 0; i < 8; ++i) buf.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

/// Appends the size and the first and last MiB of `path`; false when it is not a readable regular file.
bool AppendFile(const std::string& path, std::vector<uint8_t>& buf, uint64_t& size_out) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::unique_ptr<FILE, decltype(&std::fclose)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) return false;
  const auto size = static_cast<uint64_t>(st.st_size);
  size_out += size;
  PutU64(buf, size);
  constexpr uint64_t kPart = 1 << 20;
  auto read_at = [&](uint64_t off, uint64_t n) {
    const size_t old = buf.size();
    buf.resize(old + n);
    size_t got = 0;
    if (std::fseek(f.get(), static_cast<long>(off), SEEK_SET) == 0) got = std::fread(buf.data() + old, 1, n, f.get());
    buf.resize(old + got);
  };
  read_at(0, std::min(size, kPart));
  if (size > kPart) read_at(size - std::min(size - kPart, kPart), std::min(size - kPart, kPart));
  return true;
}

}  // namespace

SourceFingerprint Fingerprint(const Params& p) {
  SourceFingerprint out;
  std::vector<uint8_t> buf{kLayout};
  auto put_str = [&](const std::string& v) {
    PutU64(buf, v.size());
    buf.insert(buf.end(), v.begin(), v.end());
  };
  PutU64(buf, p.inputs.size());
  for (const std::string& in : p.inputs)
    if (!AppendFile(in, buf, out.size)) return {};
  PutU64(buf, static_cast<uint64_t>(std::llround(p.segmenter.target_duration * 1000)));
  PutU64(buf, p.segmenter.audio_languages.size());
  for (const std::string& lang : p.segmenter.audio_languages) put_str(lang);
  PutU64(buf, p.segmenter.subtitles.size());
  for (const auto& side : p.segmenter.subtitles) {
    uint64_t ignored = 0;
    if (!AppendFile(side.path, buf, ignored)) return {};
    put_str(side.language);
  }
  // Cut into LL-HLS parts, the same source gives other records: another version.
  if (p.segmenter.part_duration > 0) {
    buf.push_back('P');
    PutU64(buf, static_cast<uint64_t>(std::llround(p.segmenter.part_duration * 1000)));
  }
  out.digest = proto::SegmentDigest(buf);
  return out;
}

}  // namespace khls::ingest::internal
