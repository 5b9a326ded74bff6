// Segment encryption (RFC 8216 METHOD=AES-128: each segment file AES-128-CBC
// with PKCS#7 padding, an explicit IV per segment) and the key store.
//
// Keys never enter Kafka (the packager makes them; the records carry clear
// media) and never enter the served tree: they live in a key store beside the
// output, by default "<out>.keys", laid out like the tree so the origin can map
// a key URI to its file:
//   <key store>/<title>/v<N>/<rendition>/key-000000.key   16 raw bytes
// named after the first segment the key encrypts (key-000010.key with rotation
// 10). A media playlist at <title>/v<N>/<rendition>/index.m3u8 names it by the
// relative URI "key-000000.key" (served by `kafka-hls serve --key-token`), or
// by "<key_uri_prefix><title>/v<N>/<rendition>/key-000000.key" for an external
// key server.
//
// Crash safety: a key is made durable (temp file, fsync, rename, fsync of the
// directory) before any segment it encrypts is staged, and a key already in
// the store is reused, never remade; the IV of a segment is derived from its
// key and its place (HMAC-SHA256), so a packager that restarts and re-packages
// a segment writes the same bytes.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "khls/status.h"

namespace khls::packager {

using AesKey = std::array<uint8_t, 16>;
using AesIv = std::array<uint8_t, 16>;

enum class EncryptionMethod : uint8_t {
  kNone,
  kAes128,  ///< RFC 8216 METHOD=AES-128
};
std::string_view ToString(EncryptionMethod m);
/// "none" / "aes-128"; kInvalidArgument otherwise.
Result<EncryptionMethod> ParseEncryptionMethod(std::string_view name);

/// How a packager encrypts the titles it starts (a title keeps what it was
/// started with: see TitleState::encryption).
struct Encryption {
  EncryptionMethod method = EncryptionMethod::kNone;
  /// A new key every this many segments of a rendition; 0 = one key per
  /// rendition for the whole title version.
  uint32_t key_rotation = 0;
  /// The key store directory; "" = "<output root>.keys". Must not lie inside the
  /// output root; required when the output is object storage.
  std::string key_store;
  /// "" = key URIs relative to the media playlist ("key-000000.key", served by
  /// the origin's key route); else this prefix + "<title>/v<N>/<rendition>/key-000000.key".
  std::string key_uri_prefix;

  bool enabled() const { return method != EncryptionMethod::kNone; }
};

/// "key-000010.key": the key that starts at segment `first_sequence`.
std::string KeyFileName(uint32_t first_sequence);
/// True for a name KeyFileName() makes.
bool IsKeyFileName(std::string_view name);
/// True when `prefix` can stand in EXT-X-KEY's quoted URI: no space, quote or control character.
bool IsQuotableUriPrefix(std::string_view prefix);
/// The first segment of the key period of `sequence` (rotation 0: 0).
uint32_t KeyPeriodStart(uint32_t sequence, uint32_t rotation);

/// The IV of segment `sequence` of the rendition at `rendition_path`
/// ("<title>/v<N>/<rendition>"): HMAC-SHA256(key, "<rendition_path>/<sequence>"),
/// first 16 bytes. Unpredictable without the key, the same on every run.
AesIv SegmentIv(const AesKey& key, std::string_view rendition_path, uint32_t sequence);

/// AES-128-CBC with PKCS#7 padding (what RFC 8216 AES-128 segments are).
Result<std::vector<uint8_t>> EncryptAes128Cbc(std::span<const uint8_t> clear, const AesKey& key, const AesIv& iv);
/// The inverse; kInvalidInput when the padding is wrong (a wrong key or IV).
Result<std::vector<uint8_t>> DecryptAes128Cbc(std::span<const uint8_t> cipher, const AesKey& key, const AesIv& iv);

/// "0x" + 32 hex digits, as EXT-X-KEY's IV attribute; and back.
std::string IvToHex(const AesIv& iv);
std::optional<AesIv> IvFromHex(std::string_view text);

/// The keys of one output root, on local disk (never object storage: a bucket
/// behind a CDN is public). Not thread-safe (the packager's loop is its user).
class KeyStore {
 public:
  /// `dir` is created (mode 0700) if missing. kInvalidArgument when it is, or
  /// lies inside, `output_root` (a directory; for object storage pass "").
  static Result<KeyStore> Open(const std::filesystem::path& dir, const std::filesystem::path& output_root,
                               bool durable = true);
  /// The default store of an output root: "<root>.keys" (for "out/": "out.keys").
  static std::filesystem::path DefaultFor(const std::filesystem::path& output_root);

  const std::filesystem::path& dir() const { return dir_; }

  /// The key at `relative` ("<title>/v<N>/<rendition>/key-000000.key"): read
  /// if the store has it, else made (OpenSSL RAND_bytes) and made durable
  /// before it is returned. `created` (optional) tells which.
  Result<AesKey> GetOrCreate(const std::filesystem::path& relative, bool* created = nullptr);
  /// Reads a key that must exist (kIo if missing, kInvalidInput if not 16 bytes).
  Result<AesKey> Read(const std::filesystem::path& relative) const;

 private:
  KeyStore(std::filesystem::path dir, bool durable) : dir_(std::move(dir)), durable_(durable) {}
  std::filesystem::path dir_;
  bool durable_ = true;
  std::map<std::filesystem::path, AesKey> cache_;
};

}  // namespace khls::packager
