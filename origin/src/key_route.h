// The key route: the AES-128 keys of encrypted titles (RFC 8216 METHOD=AES-128),
// from the key store beside the served root, to clients that present the
// origin's key token as `Authorization: Bearer <token>`.
//
// The packager writes the key of a rendition's key period to
//   <key store>/<title>/v<N>/<rendition>/key-000000.key      16 raw bytes
// (packager/include/khls/keys.h), the same relative path the rendition's
// playlist directory has under the root: the relative URI "key-000000.key" in
// .../<rendition>/index.m3u8 is requested as /<title>/v<N>/<rendition>/key-000000.key,
// and that path is looked up in the store by the served tree's rules (Beneath:
// plain non-dot names, openat2 RESOLVE_BENEATH from the store's descriptor),
// with no symlink followed at all: the packager writes plain files.
//
// A key request never reaches the served tree, so a stray key file there (or
// a store misplaced under the root) is not published by this origin.
#pragma once

#include <array>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "khls/status.h"
#include "tree.h"

namespace khls::origin {

class KeyRoute {
 public:
  static constexpr size_t kKeySize = 16;  ///< an AES-128 key
  using Key = std::array<char, kKeySize>;

  /// Whether a decoded URL path asks for a key: its last component ends in
  /// ".key", in any case (on a case-insensitive file system "KEY.KEY" would
  /// open "key.key", so no spelling of it is looked up in the served tree).
  static bool IsKeyPath(std::string_view url_path);

  /// Keys are not served: every key request is refused (kNotServed).
  KeyRoute() = default;
  /// Keys from `store` (canonical, an existing directory: opened now) to
  /// `Bearer <token>`; `token` must not be empty. Only its SHA-256 is kept.
  KeyRoute(std::filesystem::path store, std::string_view token);

  bool serving() const { return store_ != nullptr; }
  /// The store's directory (serving() only).
  const std::filesystem::path& store() const { return store_->dir(); }
  /// Whether the store's directory could be opened, and errno when not (serving() only).
  bool opened() const { return store_->opened(); }
  int open_error() const { return store_->open_error(); }

  enum class Access {
    kNotServed,      ///< this origin has no key token: 403
    kNoCredentials,  ///< no Authorization field: 401 with a Bearer challenge
    kRefused,        ///< not `Bearer <token>` with this origin's token: 403
    kGranted,
  };
  /// What a request's Authorization field values allow. The scheme is matched
  /// without regard to case (RFC 9110 11.1); the token exactly, in time
  /// independent of where (or whether) it differs. Several fields are
  /// ambiguous, and refused.
  Access Check(std::span<const std::string_view> authorization) const;

  /// The key at the decoded `url_path`: nothing when the store has no such key
  /// (or the path is refused by the rules above); an error naming the file when
  /// the file there is not 16 bytes, or cannot be read.
  Result<std::optional<Key>> Read(std::string_view url_path) const;

 private:
  std::unique_ptr<Beneath> store_;
  std::array<unsigned char, 32> token_digest_{};  ///< SHA-256 of the token
};

}  // namespace khls::origin
