#include "key_route.h"

#include <unistd.h>

#include <cerrno>
#include <system_error>

#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace khls::origin {
namespace fs = std::filesystem;

namespace {

using Digest = std::array<unsigned char, 32>;

/// SHA-256 of `s`; nothing only if OpenSSL itself fails (then nothing matches).
std::optional<Digest> Sha256(std::string_view s) {
  Digest d{};
  unsigned int n = 0;
  if (EVP_Digest(s.data(), s.size(), d.data(), &n, EVP_sha256(), nullptr) != 1 || n != d.size()) return std::nullopt;
  return d;
}

bool EqualsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

bool KeyRoute::IsKeyPath(std::string_view url_path) {
  const auto slash = url_path.rfind('/');
  const std::string_view name = slash == std::string_view::npos ? url_path : url_path.substr(slash + 1);
  return name.size() >= 4 && EqualsNoCase(name.substr(name.size() - 4), ".key");
}

KeyRoute::KeyRoute(fs::path store, std::string_view token)
    : store_(std::make_unique<Beneath>(std::move(store), Beneath::Symlinks::kNever)) {
  // A failed digest leaves all zeros, which no SHA-256 of a presented token
  // equals in practice; Check() also refuses when its own digest fails.
  if (auto d = Sha256(token)) token_digest_ = *d;
}

// credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ] (RFC 9110 11.4,
// formerly RFC 7235 2.1): "Bearer", one or more spaces, then the token as a whole.
// Both sides are hashed before the comparison, so neither the token's length nor
// its first differing byte shows in the time taken (CRYPTO_memcmp has no early exit).
KeyRoute::Access KeyRoute::Check(std::span<const std::string_view> authorization) const {
  if (!store_) return Access::kNotServed;
  if (authorization.empty()) return Access::kNoCredentials;
  if (authorization.size() > 1) return Access::kRefused;
  const std::string_view value = TrimSpaces(authorization.front());
  const size_t space = value.find(' ');
  if (space == std::string_view::npos || !EqualsNoCase(value.substr(0, space), "bearer")) return Access::kRefused;
  std::string_view presented = value.substr(space);
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  if (presented.empty()) return Access::kRefused;
  const auto digest = Sha256(presented);
  if (!digest) return Access::kRefused;
  return CRYPTO_memcmp(digest->data(), token_digest_.data(), token_digest_.size()) == 0 ? Access::kGranted
                                                                                         : Access::kRefused;
}

Result<std::optional<KeyRoute::Key>> KeyRoute::Read(std::string_view url_path) const {
  if (!store_) return std::optional<Key>();
  std::optional<OpenFile> f = store_->Open(url_path);
  if (!f) return std::optional<Key>();
  const fs::path file = store_->dir() / fs::path(std::string(url_path.substr(1)));
  if (f->size != kKeySize) {
    return Error(ErrorCode::kInvalidInput,
                 "key file '{}' has {} bytes, not the {} of an AES-128 key: not served (is it a packager's key?)",
                 file.string(), f->size, kKeySize);
  }
  Key key{};
  size_t done = 0;
  while (done < key.size()) {
    const ssize_t n = ::pread(f->fd.get(), key.data() + done, key.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Error(ErrorCode::kIo, "key file '{}' cannot be read: {}", file.string(),
                   std::generic_category().message(errno));
    }
    if (n == 0) {
      return Error(ErrorCode::kIo, "key file '{}' shrank to {} bytes while being read", file.string(), done);
    }
    done += static_cast<size_t>(n);
  }
  return std::optional<Key>(key);
}

}  // namespace khls::origin
