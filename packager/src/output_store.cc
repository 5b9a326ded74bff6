#include "khls/output_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "khls/proto.h"
#include "khls/s3.h"
#include "khls/title_state.h"
#include "fs_util.h"

namespace khls::packager {
namespace fs = std::filesystem;
using internal::Errno;
using internal::SyncDir;
namespace {

// One path step we generate: a title id or a file name like "seg-000001.ts" or
// ".state.json" (the title id's characters, dot-names allowed, never "." or "..").
bool IsSafeComponent(const std::string& s) {
  if (s.empty() || s.size() > proto::kMaxTitleLength || s == "." || s == "..") return false;
  return std::all_of(s.begin(), s.end(), proto::IsTitleIdChar);
}

std::string_view AsText(std::span<const uint8_t> d) { return {reinterpret_cast<const char*>(d.data()), d.size()}; }

}  // namespace

ObjectHeaders HeadersFor(const fs::path& name, std::span<const uint8_t> data) {
  if (name.filename() == kStateFileName) return {"application/json", "no-store"};
  const std::string ext = name.extension().string();
  const std::string_view mime = TreeFileMime(ext);
  if (mime.empty()) return {"application/octet-stream", kCacheRevalidate};
  if (ext != ".m3u8") return {std::string(mime), kCacheImmutable};
  // The master and growing playlists are revalidated; an ended media playlist no longer changes.
  const bool ended = AsText(data).find("#EXT-X-ENDLIST") != std::string_view::npos;
  return {std::string(mime), ended ? kCacheEndedPlaylist : kCacheRevalidate};
}

struct OutputStore::Remote {
  s3::S3Url url;
  mutable s3::S3Client client;
};

OutputStore::OutputStore(fs::path root, bool durable) : root_(std::move(root)), durable_(durable) {}

Result<OutputStore> OutputStore::Open(const fs::path& root, bool durable) {
  if (root.string().starts_with("s3://")) {
    KHLS_ASSIGN_OR_RETURN(s3::S3Url url, s3::ParseS3Url(root.string()));
    auto client = s3::S3Client::FromEnvironment();
    if (!client.ok()) return client.status().WithContext(fmt::format("output {}", root.string()));
    // The bucket must be there and ours to write: find out now, not at the first segment.
    KHLS_ASSIGN_OR_RETURN(std::vector<s3::ListEntry> probe,
                          client->List(url.bucket, url.Key(".khls-probe"), s3::ListOptions{.page_size = 1}));
    (void)probe;
    OutputStore store(fs::path(url.ToString()), durable);
    store.remote_ = std::make_shared<Remote>(Remote{std::move(url), std::move(client).value()});
    return store;
  }
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return Error(ErrorCode::kIo, "create output directory '{}': {}", root.string(), ec.message());
  fs::path canon = fs::canonical(root, ec);
  if (ec) return Error(ErrorCode::kIo, "resolve output directory '{}': {}", root.string(), ec.message());
  if (::access(canon.c_str(), W_OK) != 0) return Errno("output directory is not writable:", canon);
  return OutputStore(canon, durable);
}

Result<fs::path> OutputStore::TitleDir(std::string_view title) const {
  KHLS_RETURN_IF_ERROR(proto::CheckTitleId(title));
  return root_ / std::string(title);
}

Result<fs::path> OutputStore::Resolve(const fs::path& relative) const {
  if (relative.empty() || relative.is_absolute())
    return Error(ErrorCode::kInvalidArgument, "path '{}' is not relative to the output root", relative.string());
  for (const auto& part : relative)
    if (!IsSafeComponent(part.string()))
      return Error(ErrorCode::kInvalidArgument, "path '{}' has an unsafe component '{}'", relative.string(),
                   part.string());
  if (remote_) return fs::path(remote_->url.Key(relative.generic_string()));  // the object's key
  // Refuse to follow a symlink planted inside the tree that points out of it.
  fs::path full = root_;
  for (const auto& part : relative) {
    full /= part;
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(full, ec)))
      return Error(ErrorCode::kInvalidArgument, "path '{}' goes through a symbolic link", full.string());
  }
  return full;
}

Status OutputStore::WriteAtomic(const fs::path& relative, std::string_view text) const {
  return WriteAtomic(relative, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

StagedFile& StagedFile::operator=(StagedFile&& o) noexcept {
  if (this != &o) {
    Discard();
    fd_ = std::exchange(o.fd_, -1);
    size_ = o.size_;
    tmp_ = std::move(o.tmp_);
    target_ = std::move(o.target_);
    remote_ = o.remote_;
    bytes_ = std::move(o.bytes_);
    o.tmp_.clear();
    o.bytes_.clear();
  }
  return *this;
}

void StagedFile::Discard() {
  bytes_.clear();
  bytes_.shrink_to_fit();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_.clear();
}

Status OutputStore::WriteAtomic(const fs::path& relative, std::span<const uint8_t> data) const {
  KHLS_ASSIGN_OR_RETURN(StagedFile f, Stage(relative, data));
  return Publish(f);
}

Result<StagedFile> OutputStore::Stage(const fs::path& relative, std::span<const uint8_t> data) const {
  KHLS_ASSIGN_OR_RETURN(fs::path target, Resolve(relative));
  if (remote_) {
    StagedFile f;
    f.remote_ = true;
    f.target_ = std::move(target);
    f.size_ = data.size();
    f.bytes_.assign(data.begin(), data.end());
    return f;
  }
  const fs::path dir = target.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir)) {
    fs::create_directories(dir, ec);
    if (ec) return Error(ErrorCode::kIo, "create directory '{}': {}", dir.string(), ec.message());
    if (durable_) {
      // Every new directory's entry in its parent, up to the root.
      for (fs::path d = dir; d != root_ && d.has_parent_path(); d = d.parent_path()) dirty_dirs_.insert(d.parent_path());
    }
  }
  StagedFile f;
  // A dot name: never listed in a playlist, never served by the origin.
  f.tmp_ = dir / fmt::format(".{}.{}.tmp", target.filename().string(), ::getpid());
  f.target_ = std::move(target);
  f.size_ = data.size();
  f.fd_ = ::open(f.tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (f.fd_ < 0) {
    Status s = Errno("create", f.tmp_);
    f.tmp_.clear();  // not ours to remove
    return s;
  }
  size_t done = 0;
  while (done < data.size()) {
    // At most 1 MiB per write(): a single multi-MB write() has the page cache
    // allocate 2 MiB folios, which on a VM that hands freed memory back to its
    // host (free page reporting) are fresh host pages on every first touch: 400 MB
    // of segments cost 0.9-1.3 CPU-s written whole, 0.11-0.21 in 1 MiB writes.
    constexpr size_t kMaxWrite = size_t{1} << 20;
    ssize_t n = ::write(f.fd_, data.data() + done, std::min(data.size() - done, kMaxWrite));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", f.tmp_);
    }
    done += static_cast<size_t>(n);
  }
  // Start writing the pages out now; Publish() then finds most of them on disk.
  if (durable_ && !data.empty()) (void)::sync_file_range(f.fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
  return f;
}

Status OutputStore::Publish(StagedFile& f) const {
  if (f.remote_) {
    if (!remote_) return Error(ErrorCode::kInternal, "publish '{}': staged for object storage", f.target_.string());
    const ObjectHeaders h = HeadersFor(f.target_, f.bytes_);
    auto put = remote_->client.Put(remote_->url.bucket, f.target_.generic_string(), AsText(f.bytes_),
                                   s3::PutOptions{h.content_type, h.cache_control});
    if (!put.ok()) return put.status();
    f.remote_ = false;  // published: nothing left to discard
    f.bytes_.clear();
    f.bytes_.shrink_to_fit();
    return Status::Ok();
  }
  if (f.fd_ < 0 || f.tmp_.empty())
    return Error(ErrorCode::kInternal, "publish '{}': the file is not staged", f.target_.string());
  if (durable_ && ::fdatasync(f.fd_) != 0) return Errno("fsync", f.tmp_);
  const int fd = std::exchange(f.fd_, -1);
  if (::close(fd) != 0) return Errno("close", f.tmp_);
  if (::rename(f.tmp_.c_str(), f.target_.c_str()) != 0) return Errno("rename into place", f.target_);
  f.tmp_.clear();
  if (durable_) dirty_dirs_.insert(f.target_.parent_path());
  return Status::Ok();
}

Status OutputStore::Sync() const {
  // Object storage: a PUT has returned only once the object is durable.
  while (!dirty_dirs_.empty()) {
    KHLS_RETURN_IF_ERROR(SyncDir(*dirty_dirs_.begin()));
    dirty_dirs_.erase(dirty_dirs_.begin());
  }
  return Status::Ok();
}

Result<std::string> OutputStore::Read(const fs::path& relative) const {
  KHLS_ASSIGN_OR_RETURN(fs::path full, Resolve(relative));
  if (remote_) {
    KHLS_ASSIGN_OR_RETURN(std::optional<s3::Object> object, remote_->client.Get(remote_->url.bucket, full.generic_string()));
    if (!object) return Error(ErrorCode::kIo, "read s3://{}/{}: no such object", remote_->url.bucket, full.generic_string());
    return std::move(object->data);
  }
  std::ifstream in(full, std::ios::binary);
  if (!in) return Error(ErrorCode::kIo, "read '{}': {}", full.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status OutputStore::Remove(const fs::path& relative) const {
  KHLS_ASSIGN_OR_RETURN(fs::path full, Resolve(relative));
  if (remote_) return remote_->client.Delete(remote_->url.bucket, full.generic_string());
  if (::unlink(full.c_str()) != 0 && errno != ENOENT) return Errno("remove", full);
  // Not made durable: a removal lost in a crash is done again (the state still lists it as expired).
  return Status::Ok();
}

Result<bool> OutputStore::Exists(const fs::path& relative) const {
  KHLS_ASSIGN_OR_RETURN(fs::path full, Resolve(relative));
  if (remote_) {
    KHLS_ASSIGN_OR_RETURN(std::optional<s3::ObjectInfo> info,
                          remote_->client.Head(remote_->url.bucket, full.generic_string()));
    return info.has_value();
  }
  std::error_code ec;
  const bool there = fs::exists(full, ec);
  if (ec) return Error(ErrorCode::kIo, "look for '{}': {}", full.string(), ec.message());
  return there;
}

void OutputStore::RemoveTempFiles(const fs::path& relative_dir) const {
  if (remote_) return;  // no temp objects: a PUT is atomic
  auto dir = Resolve(relative_dir);
  if (!dir.ok()) return;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(*dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 5 && name[0] == '.' && name.ends_with(".tmp") && it->is_regular_file(ec)) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }
}

}  // namespace khls::packager
