#include "khls/keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "fs_util.h"
#include "khls/proto.h"

namespace khls::packager {
namespace fs = std::filesystem;
namespace {

Status Errno(std::string_view what, const fs::path& p) { return internal::Errno(what, p).WithContext("key store"); }
Status SyncDir(const fs::path& dir) { return internal::SyncDir(dir).WithContext("key store"); }

// A component of a key path: a title id or a name we generate ("v1", "video-720p",
// "key-000000.key"); never "." or "..", never a dot name.
bool IsSafeComponent(const std::string& s) {
  if (s.empty() || s.size() > proto::kMaxTitleLength || s.front() == '.') return false;
  return std::all_of(s.begin(), s.end(), proto::IsTitleIdChar);
}

Status CheckRelative(const fs::path& relative) {
  if (relative.empty() || relative.is_absolute())
    return Error(ErrorCode::kInvalidArgument, "key path '{}' is not relative to the key store", relative.string());
  for (const auto& part : relative)
    if (!IsSafeComponent(part.string()))
      return Error(ErrorCode::kInvalidArgument, "key path '{}' has an unsafe component '{}'", relative.string(),
                   part.string());
  return Status::Ok();
}

// "a" is "b" or below it (both canonical or made absolute and normal).
bool IsWithin(const fs::path& a, const fs::path& b) {
  auto ai = a.begin(), bi = b.begin();
  for (; bi != b.end(); ++ai, ++bi) {
    if (bi->empty() && std::next(bi) == b.end()) break;  // a trailing "/" of b
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

// The path with symlinks of its existing part resolved (weakly_canonical), else absolute.
fs::path Normal(const fs::path& p) {
  std::error_code ec;
  fs::path out = fs::weakly_canonical(p, ec);
  if (ec) out = fs::absolute(p, ec).lexically_normal();
  return out;
}

struct CipherCtx {
  EVP_CIPHER_CTX* p = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(p); }
};

Result<std::vector<uint8_t>> Cbc(std::span<const uint8_t> in, const AesKey& key, const AesIv& iv, bool encrypt) {
  CipherCtx ctx;
  if (!ctx.p) return Status(ErrorCode::kInternal, "AES-128-CBC: out of memory");
  if (EVP_CipherInit_ex(ctx.p, EVP_aes_128_cbc(), nullptr, key.data(), iv.data(), encrypt ? 1 : 0) != 1)
    return Status(ErrorCode::kInternal, "AES-128-CBC: cipher init failed");
  std::vector<uint8_t> out(in.size() + 16);
  int n = 0, tail = 0;
  // EVP lengths are int: feed large segments in slices.
  size_t done = 0, written = 0;
  constexpr size_t kSlice = size_t{1} << 30;
  do {
    const size_t len = std::min(kSlice, in.size() - done);
    if (EVP_CipherUpdate(ctx.p, out.data() + written, &n, in.data() + done, static_cast<int>(len)) != 1)
      return Status(ErrorCode::kInternal, "AES-128-CBC: update failed");
    done += len;
    written += static_cast<size_t>(n);
  } while (done < in.size());
  if (EVP_CipherFinal_ex(ctx.p, out.data() + written, &tail) != 1)
    return Status(ErrorCode::kInvalidInput, "AES-128-CBC: bad padding (wrong key or IV, or not a whole ciphertext)");
  out.resize(written + static_cast<size_t>(tail));
  return out;
}

}  // namespace

std::string_view ToString(EncryptionMethod m) { return m == EncryptionMethod::kAes128 ? "aes-128" : "none"; }

Result<EncryptionMethod> ParseEncryptionMethod(std::string_view name) {
  if (name == "none" || name.empty()) return EncryptionMethod::kNone;
  if (name == "aes-128") return EncryptionMethod::kAes128;
  return Error(ErrorCode::kInvalidArgument, "encryption '{}' is not one of: none, aes-128", name);
}

std::string KeyFileName(uint32_t first_sequence) { return fmt::format("key-{:06d}.key", first_sequence); }

bool IsKeyFileName(std::string_view name) {
  return name.size() == KeyFileName(0).size() && name.starts_with("key-") && name.ends_with(".key") &&
         std::all_of(name.begin() + 4, name.end() - 4, [](char c) { return c >= '0' && c <= '9'; });
}

bool IsQuotableUriPrefix(std::string_view prefix) {
  return std::none_of(prefix.begin(), prefix.end(), [](char c) {
    return static_cast<unsigned char>(c) <= 0x20 || c == '"' || c == 0x7f;
  });
}

uint32_t KeyPeriodStart(uint32_t sequence, uint32_t rotation) {
  return rotation == 0 ? 0 : sequence / rotation * rotation;
}

AesIv SegmentIv(const AesKey& key, std::string_view rendition_path, uint32_t sequence) {
  const std::string message = fmt::format("{}/{}", rendition_path, sequence);
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const uint8_t*>(message.data()),
       message.size(), mac, &len);
  AesIv iv{};
  std::copy_n(mac, iv.size(), iv.begin());
  return iv;
}

Result<std::vector<uint8_t>> EncryptAes128Cbc(std::span<const uint8_t> clear, const AesKey& key, const AesIv& iv) {
  return Cbc(clear, key, iv, true);
}

Result<std::vector<uint8_t>> DecryptAes128Cbc(std::span<const uint8_t> cipher, const AesKey& key, const AesIv& iv) {
  if (cipher.empty() || cipher.size() % 16 != 0)
    return Error(ErrorCode::kInvalidInput, "AES-128-CBC: {} bytes is not a whole number of blocks", cipher.size());
  return Cbc(cipher, key, iv, false);
}

std::string IvToHex(const AesIv& iv) {
  std::string out = "0x";
  for (uint8_t b : iv) out += fmt::format("{:02x}", b);
  return out;
}

std::optional<AesIv> IvFromHex(std::string_view text) {
  if (text.size() != 34 || text[0] != '0' || (text[1] != 'x' && text[1] != 'X')) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  AesIv iv{};
  for (size_t i = 0; i < 16; ++i) {
    const int hi = nibble(text[2 + 2 * i]), lo = nibble(text[3 + 2 * i]);
    if (hi < 0 || lo < 0) return std::nullopt;
    iv[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return iv;
}

fs::path KeyStore::DefaultFor(const fs::path& output_root) {
  fs::path root = output_root.lexically_normal();
  if (!root.empty() && root.filename().empty()) root = root.parent_path();  // "out/" -> "out"
  return fs::path(root.string() + ".keys");
}

Result<KeyStore> KeyStore::Open(const fs::path& dir, const fs::path& output_root, bool durable) {
  if (dir.empty()) return Status(ErrorCode::kInvalidArgument, "key store: no directory given");
  if (dir.string().find("://") != std::string::npos)
    return Error(ErrorCode::kInvalidArgument,
                 "key store '{}': keys are kept on local disk only (a bucket behind a CDN is public); give a "
                 "directory",
                 dir.string());
  if (!output_root.empty() && IsWithin(Normal(dir), Normal(output_root)))
    return Error(ErrorCode::kInvalidArgument,
                 "key store '{}' lies inside the output root '{}': its keys would be served as plain files; put it "
                 "beside the root (the default is '{}')",
                 dir.string(), output_root.string(), DefaultFor(output_root).string());
  std::error_code ec;
  const bool existed = fs::is_directory(dir, ec);
  if (!existed) {
    fs::create_directories(dir, ec);
    if (ec) return Error(ErrorCode::kIo, "create key store '{}': {}", dir.string(), ec.message());
    fs::permissions(dir, fs::perms::owner_all, ec);
    if (durable) KHLS_RETURN_IF_ERROR(SyncDir(Normal(dir).parent_path()));
  }
  fs::path canon = fs::canonical(dir, ec);
  if (ec) return Error(ErrorCode::kIo, "resolve key store '{}': {}", dir.string(), ec.message());
  if (::access(canon.c_str(), W_OK) != 0) return Errno("directory is not writable:", canon);
  return KeyStore(std::move(canon), durable);
}

Result<AesKey> KeyStore::Read(const fs::path& relative) const {
  KHLS_RETURN_IF_ERROR(CheckRelative(relative));
  if (auto it = cache_.find(relative); it != cache_.end()) return it->second;
  const fs::path full = dir_ / relative;
  const int fd = ::open(full.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Errno("open", full);
  AesKey key{};
  uint8_t extra = 0;
  const ssize_t n = ::read(fd, key.data(), key.size());
  const ssize_t more = n == static_cast<ssize_t>(key.size()) ? ::read(fd, &extra, 1) : 0;
  ::close(fd);
  if (n < 0 || more < 0) return Errno("read", full);
  if (n != static_cast<ssize_t>(key.size()) || more != 0)
    return Error(ErrorCode::kInvalidInput, "key store: '{}' is not a 16-byte AES-128 key", full.string());
  return key;
}

Result<AesKey> KeyStore::GetOrCreate(const fs::path& relative, bool* created) {
  if (created) *created = false;
  KHLS_RETURN_IF_ERROR(CheckRelative(relative));
  if (auto it = cache_.find(relative); it != cache_.end()) return it->second;
  const fs::path full = dir_ / relative;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(full, ec))) {
    KHLS_ASSIGN_OR_RETURN(AesKey key, Read(relative));
    return cache_[relative] = key;
  }
  AesKey key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1)
    return Status(ErrorCode::kInternal, "key store: the random generator failed (RAND_bytes)");
  // Directories one by one, none of them a symlink, each new one made durable in its parent.
  fs::path dir = dir_;
  const fs::path parent_rel = relative.parent_path();
  for (const auto& part : parent_rel) {
    const fs::path next = dir / part;
    if (::mkdir(next.c_str(), 0700) == 0) {
      if (durable_) KHLS_RETURN_IF_ERROR(SyncDir(dir));
    } else if (errno != EEXIST) {
      return Errno("create directory", next);
    }
    struct stat st {};
    if (::lstat(next.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      return Error(ErrorCode::kIo, "key store: '{}' is not a directory", next.string());
    dir = next;
  }
  const fs::path tmp = dir / fmt::format(".{}.{}.tmp", full.filename().string(), ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return Errno("create", tmp);
  const bool written = ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size());
  const bool synced = !durable_ || ::fsync(fd) == 0;
  const bool closed = ::close(fd) == 0;
  if (!written || !synced || !closed) {
    Status s = Errno(!written ? "write" : !synced ? "fsync" : "close", tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  // link(), not rename(): a key another process made meanwhile is never replaced.
  if (::link(tmp.c_str(), full.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    if (err != EEXIST) {
      errno = err;
      return Errno("link into place", full);
    }
    KHLS_ASSIGN_OR_RETURN(AesKey theirs, Read(relative));
    return cache_[relative] = theirs;
  }
  ::unlink(tmp.c_str());
  if (durable_) KHLS_RETURN_IF_ERROR(SyncDir(dir));
  if (created) *created = true;
  return cache_[relative] = key;
}

}  // namespace khls::packager
