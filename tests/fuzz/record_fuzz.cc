// libFuzzer target: arbitrary bytes as a stream of Kafka records fed to the
// decoder, the reassembler and the packager engine (output in a scratch dir).
// Input format: repeated [u8 flags|key_len][key][u16 value_len][value]. When the
// flag bit 0x80 is set, the harness re-seals the value's XXH64 trailer, so
// mutations reach field validation and reassembly instead of stopping at the
// checksum.
// Properties checked: no crash, no sanitizer report, buffered bytes stay within
// the configured bound, and nothing is written outside the scratch root.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include <xxhash.h>

#include "khls/log.h"
#include "khls/engine.h"

namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMaxBuffered = 4 << 20;

fs::path Root() {
  static fs::path root = [] {
    fs::path base = fs::temp_directory_path() / ("khls-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(base / "root");
    return base;
  }();
  return root;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  khls::log::SetLevel(khls::log::Level::kError);
  const fs::path base = Root();
  fs::remove_all(base / "root");
  auto store = khls::packager::OutputStore::Open(base / "root", /*durable=*/false);
  if (!store.ok()) std::abort();
  khls::packager::Engine engine(std::move(*store), {.max_segment_bytes = 1 << 20, .max_buffered_bytes = kMaxBuffered});
  // Titles cut into parts take the low-latency paths (part files, pending parts in the state).
  if (!engine.set_low_latency(true).ok()) std::abort();

  size_t pos = 0;
  while (pos < size) {
    const bool reseal = data[pos] & 0x80;
    size_t klen = data[pos++] & 0x7f;
    if (pos + klen + 2 > size) break;
    std::string_view key(reinterpret_cast<const char*>(data + pos), klen);
    pos += klen;
    size_t vlen = static_cast<size_t>(data[pos]) << 8 | data[pos + 1];
    pos += 2;
    vlen = std::min(vlen, size - pos);
    std::vector<uint8_t> value(data + pos, data + pos + vlen);
    if (reseal && value.size() >= 8) {
      uint64_t h = XXH64(value.data(), value.size() - 8, 0);
      for (int i = 0; i < 8; ++i) value[value.size() - 8 + i] = static_cast<uint8_t>(h >> (8 * (7 - i)));
    }
    auto r = engine.OnRecord(key, value);
    pos += vlen;
    if (!r.ok() && r.status().code() != khls::ErrorCode::kIo) std::abort();
    if (engine.buffered_bytes() > kMaxBuffered) std::abort();
  }
  // Nothing may appear next to the root.
  for (auto& e : fs::directory_iterator(base))
    if (e.path().filename() != "root") std::abort();
  return 0;
}
