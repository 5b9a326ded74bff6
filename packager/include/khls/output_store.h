// The output tree players read: DIR/<title>/... Every write is atomic (temp
// file in the same directory, fsync, rename, fsync of the directory), so a
// player never sees a half-written file, and no path can leave the root.
//
// The root may also be object storage, `s3://BUCKET/PREFIX` (any S3-compatible
// store; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_REGION): every file is then one object under the
// prefix, written by a single PUT, which S3 makes visible only once whole and
// durable (so no temp objects, and nothing to fsync); staged files wait in
// memory until published. Each object gets the Content-Type and Cache-Control
// a CDN in front of the bucket should pass on (ObjectHeaders). The title
// state (.state.json) lives in the bucket too, so packagers on other machines,
// or a restarted one, continue from it. Not thread-safe (the packager's loop
// is its only user).
#pragma once

#include <filesystem>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "khls/status.h"

namespace khls::packager {

class OutputStore;

/// A file written under a temporary name in its final directory, not yet
/// visible (OutputStore::Stage). Destroying it without Publish removes it.
class StagedFile {
 public:
  StagedFile() = default;
  StagedFile(StagedFile&& o) noexcept { *this = std::move(o); }
  StagedFile& operator=(StagedFile&& o) noexcept;
  ~StagedFile() { Discard(); }

  uint64_t size() const { return size_; }
  const std::filesystem::path& target() const { return target_; }

 private:
  friend class OutputStore;
  void Discard();

  int fd_ = -1;
  uint64_t size_ = 0;
  std::filesystem::path tmp_, target_;
  bool remote_ = false;         ///< object storage: the bytes wait here, target_ is the key
  std::vector<uint8_t> bytes_;
};

/// Content-Type and Cache-Control of an output file in object storage, by its
/// name (and, for a media playlist, whether it has ended).
struct ObjectHeaders {
  std::string content_type;
  std::string cache_control;
};
ObjectHeaders HeadersFor(const std::filesystem::path& name, std::span<const uint8_t> data);

class OutputStore {
 public:
  /// `root` is created if missing. `durable` = fsync files and directories
  /// (turn off only for throwaway output). `s3://BUCKET/PREFIX` opens object
  /// storage (see the top of this file); its bucket must exist and be writable.
  static Result<OutputStore> Open(const std::filesystem::path& root, bool durable = true);

  const std::filesystem::path& root() const { return root_; }
  bool durable() const { return durable_; }

  /// DIR/<title>, after checking the title id (a hostile id is kInvalidArgument).
  Result<std::filesystem::path> TitleDir(std::string_view title) const;

  /// Writes `data` to `relative` (a path under the root made only of safe
  /// components) atomically, creating parent directories.
  Status WriteAtomic(const std::filesystem::path& relative, std::span<const uint8_t> data) const;
  Status WriteAtomic(const std::filesystem::path& relative, std::string_view text) const;

  /// First half of WriteAtomic: writes `data` to a temp file next to
  /// `relative` and starts its writeback to disk without waiting for it, so
  /// the disk works while the caller goes on. Nothing is visible yet.
  Result<StagedFile> Stage(const std::filesystem::path& relative, std::span<const uint8_t> data) const;
  /// Second half: waits until the staged bytes are durable, then renames the
  /// file into place (its directory entry becomes durable at the next Sync()).
  Status Publish(StagedFile& file) const;

  /// Deletes a file (an object) under the root; Ok if it is not there.
  Status Remove(const std::filesystem::path& relative) const;

  /// Reads a file under the root; kIo if missing.
  Result<std::string> Read(const std::filesystem::path& relative) const;
  /// Whether a file exists under the root.
  Result<bool> Exists(const std::filesystem::path& relative) const;

  /// Makes every rename since the last call durable (fsync of the directories
  /// involved). File contents are made durable before their rename; directory
  /// entries are batched here, and the packager calls this before it commits
  /// Kafka offsets, which is the only point where durability is promised.
  Status Sync() const;

  /// Removes leftover temp files (from a crash) in DIR/<relative_dir>.
  void RemoveTempFiles(const std::filesystem::path& relative_dir) const;

 private:
  struct Remote;
  OutputStore(std::filesystem::path root, bool durable);
  Result<std::filesystem::path> Resolve(const std::filesystem::path& relative) const;

  std::filesystem::path root_;  ///< a directory, or "s3://bucket/prefix"
  bool durable_ = true;
  /// Object storage; null for a directory. Copies of the store share it.
  std::shared_ptr<Remote> remote_;
  mutable std::set<std::filesystem::path> dirty_dirs_;  ///< renamed into since the last Sync()
};

}  // namespace khls::packager
