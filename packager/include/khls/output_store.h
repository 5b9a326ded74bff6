// The output tree players read: DIR/<title>/... Every write is atomic (temp
// file in the same directory, fsync, rename, fsync of the directory), so a
// player never sees a half-written file, and no path can leave the root.
#pragma once

#include <filesystem>
#include <set>
#include <span>
#include <string>

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
};

class OutputStore {
 public:
  /// `root` is created if missing. `durable` = fsync files and directories
  /// (turn off only for throwaway output).
  static Result<OutputStore> Open(const std::filesystem::path& root, bool durable = true);

  const std::filesystem::path& root() const { return root_; }

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

  /// Reads a file under the root; kIo if missing.
  Result<std::string> Read(const std::filesystem::path& relative) const;

  /// Makes every rename since the last call durable (fsync of the directories
  /// involved). File contents are made durable before their rename; directory
  /// entries are batched here, and the packager calls this before it commits
  /// Kafka offsets, which is the only point where durability is promised.
  Status Sync() const;

  /// Removes leftover temp files (from a crash) in DIR/<relative_dir>.
  void RemoveTempFiles(const std::filesystem::path& relative_dir) const;

 private:
  OutputStore(std::filesystem::path root, bool durable) : root_(std::move(root)), durable_(durable) {}
  Result<std::filesystem::path> Resolve(const std::filesystem::path& relative) const;

  std::filesystem::path root_;
  bool durable_ = true;
  mutable std::set<std::filesystem::path> dirty_dirs_;  ///< renamed into since the last Sync()
};

}  // namespace khls::packager
