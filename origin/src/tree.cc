#include "tree.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "khls/title_state.h"

namespace khls::origin {
namespace fs = std::filesystem;

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

constexpr size_t kMaxStateBytes = 16 << 20;
constexpr size_t kMaxCachedTitles = 10000;
/// How much of a playlist's end is searched for #EXT-X-ENDLIST (the packager writes
/// it last).
constexpr size_t kTailBytes = 256;

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// fstat()s `fd` and keeps it when it is a regular file.
std::optional<OpenFile> Regular(Fd fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  OpenFile f;
  f.fd = std::move(fd);
  f.size = static_cast<size_t>(st.st_size);
  f.mtime = st.st_mtim;
  f.inode = st.st_ino;
  return f;
}

/// Reads up to `max` bytes at `offset`.
bool PreadAll(int fd, char* out, size_t n, off_t offset) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, out + done, n - done, offset + static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<size_t>(r);
  }
  return true;
}

bool NotOlder(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec >= b.tv_nsec);
}

std::string_view Extension(std::string_view name) {
  const auto slash = name.rfind('/');
  if (slash != std::string_view::npos) name.remove_prefix(slash + 1);
  const auto dot = name.rfind('.');
  return dot == std::string_view::npos || dot == 0 ? std::string_view() : name.substr(dot);
}

std::string_view BaseName(std::string_view path) {
  const auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace

// The state file can be large (a long title's I-frame index): it is parsed again
// only when its inode, size or mtime changed.
std::optional<Tree::TitleInfo> Tree::ReadTitleInfo(const fs::path& title_dir) const {
  Fd fd(::open((title_dir / packager::kStateFileName).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return std::nullopt;
  auto f = Regular(std::move(fd));
  if (!f || f->size > kMaxStateBytes) return std::nullopt;
  const std::string key = title_dir.string();
  {
    std::lock_guard lock(info_mutex_);
    auto it = info_cache_.find(key);
    if (it != info_cache_.end() && it->second.inode == f->inode && it->second.size == f->size &&
        it->second.state_mtime.tv_sec == f->mtime.tv_sec && it->second.state_mtime.tv_nsec == f->mtime.tv_nsec) {
      return it->second;
    }
  }
  std::string text(f->size, '\0');
  if (!PreadAll(f->fd.get(), text.data(), text.size(), 0)) return std::nullopt;
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto it = j.find("complete");
  TitleInfo info{it != j.end() && it->is_boolean() && it->get<bool>(), f->mtime, f->inode, f->size};
  std::lock_guard lock(info_mutex_);
  if (info_cache_.size() >= kMaxCachedTitles) info_cache_.clear();
  info_cache_[key] = info;
  return info;
}

namespace {

/// Splits "/a/b/c" into checked components joined as "a/b/c"; nothing when any
/// component is not a plain name (also "//", a trailing "/", NUL, backslash).
std::optional<std::string> RelativePath(std::string_view url_path) {
  if (url_path.size() < 2 || url_path.front() != '/') return std::nullopt;
  if (url_path.find('\0') != std::string_view::npos || url_path.find('\\') != std::string_view::npos) {
    return std::nullopt;
  }
  size_t pos = 1;
  while (true) {
    size_t slash = url_path.find('/', pos);
    std::string_view c = url_path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    if (!IsPlainName(c)) return std::nullopt;
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  return std::string(url_path.substr(1));
}

}  // namespace

void PercentDecode(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const int hi = HexDigit(in[i + 1]);
      const int lo = HexDigit(in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(in[i]);
  }
}

PlaylistPosition ScanPlaylist(std::string_view text) {
  PlaylistPosition pos;
  auto number = [](std::string_view v) {
    uint64_t n = 0;
    for (char c : v) {
      if (c < '0' || c > '9') break;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    return n;
  };
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (line.size() < 7 || line[0] != '#') continue;
    if (line.substr(0, 8) == "#EXTINF:") {
      ++pos.segments;
      pos.media = true;
    } else if (line.substr(0, 22) == "#EXT-X-MEDIA-SEQUENCE:") {
      pos.media_sequence = number(line.substr(22));
    } else if (line.substr(0, 22) == "#EXT-X-TARGETDURATION:") {
      pos.target_duration = static_cast<double>(number(line.substr(22)));
      pos.media = true;
    } else if (line.substr(0, 14) == "#EXT-X-ENDLIST") {
      pos.ended = true;
    }
  }
  return pos;
}

std::string_view MimeType(std::string_view ext) {
  if (std::string_view tree = packager::TreeFileMime(ext); !tree.empty()) return tree;
  if (ext == ".html" || ext == ".htm") return "text/html; charset=utf-8";
  if (ext == ".js" || ext == ".mjs") return "application/javascript";
  if (ext == ".json") return "application/json";
  if (ext == ".aac") return "audio/aac";
  if (ext == ".txt") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

Beneath::Beneath(fs::path dir, Symlinks symlinks)
    : dir_(std::move(dir)),
      symlinks_(symlinks),
      dir_fd_(::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)),
      open_error_(dir_fd_.valid() ? 0 : errno) {}

std::optional<OpenFile> Beneath::OpenRelative(const std::string& rel, bool& try_slow) const {
  try_slow = true;
  if (!openat2_works_ || !dir_fd_.valid()) return std::nullopt;
  struct open_how how {};
  how.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW;  // O_NONBLOCK: a FIFO must not block us
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  int fd;
  do {
    fd = static_cast<int>(::syscall(SYS_openat2, dir_fd_.get(), rel.c_str(), &how, sizeof(how)));
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == ENOSYS || errno == EPERM || errno == E2BIG) {
      openat2_works_ = false;  // an old kernel, or seccomp
    } else {
      try_slow = errno == ELOOP && symlinks_ == Symlinks::kWithin;  // a symlink on the way
    }
    return std::nullopt;
  }
  try_slow = false;
  return Regular(Fd(fd));
}

// Paths through a symlink (or every path, without openat2): canonicalised, then
// served only if every component of the target relative to the directory is a
// plain name (so a link out of it or to a dotfile inside it is refused). With
// Symlinks::kNever the canonical path must be the requested one: no link was
// followed. (Without openat2 a symlink swapped in between the check and the open
// could still be followed; O_NOFOLLOW guards the last component only.)
std::optional<OpenFile> Beneath::OpenSlow(const std::string& rel) const {
  const fs::path requested = dir_ / fs::path(rel);
  std::error_code ec;
  fs::path canon = fs::canonical(requested, ec);
  if (ec) return std::nullopt;
  if (symlinks_ == Symlinks::kNever && canon != requested) return std::nullopt;
  fs::path inside = canon.lexically_relative(dir_);
  if (inside.empty()) return std::nullopt;
  for (const auto& c : inside) {
    if (!IsPlainName(c.native())) return std::nullopt;
  }
  Fd fd(::open(canon.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return std::nullopt;
  auto f = Regular(std::move(fd));
  if (f) f->extension = std::string(Extension(canon.native()));
  return f;
}

std::optional<OpenFile> Beneath::Open(std::string_view url_path) const {
  auto rel = RelativePath(url_path);
  if (!rel) return std::nullopt;
  bool try_slow = false;
  std::optional<OpenFile> f = OpenRelative(*rel, try_slow);
  if (f) {
    f->extension = std::string(Extension(*rel));
    return f;
  }
  if (!try_slow) return std::nullopt;
  return OpenSlow(*rel);
}

Tree::Tree(fs::path root) : files_(std::move(root), Beneath::Symlinks::kWithin) {}

std::optional<OpenFile> Tree::Open(std::string_view url_path) const {
  std::optional<OpenFile> f = files_.Open(url_path);
  if (f) f->is_master = BaseName(url_path) == packager::kMasterPlaylistName;
  return f;
}

// A media playlist with #EXT-X-ENDLIST can no longer change (RFC 8216 4.3.3.4;
// the packager starts a new v<N>/ for a new source). The master is rewritten at
// completion after .state.json, so it is final only when the state says
// complete and the master is not older than that state. A new version of the
// title would change it again: one hour of caching bounds that staleness.
std::string_view Tree::PlaylistCacheControl(std::string_view url_path, const OpenFile& f,
                                            std::string_view whole) const {
  if (f.is_master) {
    std::string_view dir = url_path.substr(1, url_path.rfind('/'));
    auto info = ReadTitleInfo(root() / fs::path(std::string(dir)));
    return info && info->complete && NotOlder(f.mtime, info->state_mtime) ? packager::kCacheEndedPlaylist
                                                                         : packager::kCacheRevalidate;
  }
  // #EXT-X-ENDLIST is looked for at the end, where the packager (and ffmpeg) write it.
  std::string tail_buf;
  std::string_view text = whole.substr(whole.size() - std::min(whole.size(), kTailBytes));
  if (whole.empty() && f.size > 0) {
    const size_t n = std::min(f.size, kTailBytes);
    tail_buf.resize(n);
    if (!PreadAll(f.fd.get(), tail_buf.data(), n, static_cast<off_t>(f.size - n))) return packager::kCacheRevalidate;
    text = tail_buf;
  }
  return text.find("#EXT-X-ENDLIST") != std::string_view::npos ? packager::kCacheEndedPlaylist
                                                                : packager::kCacheRevalidate;
}

std::optional<std::string> Tree::ReadWhole(const OpenFile& f, size_t max) {
  if (f.size > max) return std::nullopt;
  std::string text(f.size, '\0');
  if (!PreadAll(f.fd.get(), text.data(), text.size(), 0)) return std::nullopt;
  return text;
}

std::string Tree::TitlesJson() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(root(), ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!IsPlainName(name)) continue;
    if (Open("/" + name + "/" + packager::kMasterPlaylistName)) names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  auto list = nlohmann::json::array();
  for (const auto& name : names) {
    auto info = ReadTitleInfo(root() / name);
    list.push_back({{"title", name},
                    {"complete", info && info->complete},
                    {"url", "/" + name + "/" + packager::kMasterPlaylistName}});
  }
  return list.dump();
}

}  // namespace khls::origin
