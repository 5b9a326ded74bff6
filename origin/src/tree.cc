#include "tree.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "khls/title_state.h"

namespace khls::origin {
namespace fs = std::filesystem;

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::optional<OpenFile> RegularFile(Fd fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  OpenFile f;
  f.fd = std::move(fd);
  f.size = static_cast<size_t>(st.st_size);
  f.mtime = st.st_mtim;
  f.inode = st.st_ino;
  f.device = st.st_dev;
  return f;
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
  auto f = RegularFile(std::move(fd));
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

namespace {

/// Calls fn(line) for every line of `text`, without its "\n" or "\r\n".
template <typename Fn>
void ForEachLine(std::string_view text, Fn&& fn) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    start = end + 1;
    fn(line);
  }
}

uint64_t LeadingNumber(std::string_view v) {
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') break;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n;
}

/// A decimal-floating-point number at the start of `v` ("2.000000," -> 2); 0 when none.
double LeadingDecimal(std::string_view v) {
  double d = 0;
  std::from_chars(v.data(), v.data() + v.size(), d);
  return d;
}

/// The value of attribute `name` in an attribute list (`A=1,B="x,y"`), quotes
/// removed; empty when absent.
std::string_view Attribute(std::string_view list, std::string_view name) {
  size_t i = 0;
  while (i < list.size()) {
    const size_t eq = list.find('=', i);
    if (eq == std::string_view::npos) return {};
    const std::string_view key = list.substr(i, eq - i);
    std::string_view value;
    size_t next;
    if (eq + 1 < list.size() && list[eq + 1] == '"') {
      const size_t close = list.find('"', eq + 2);
      value = list.substr(eq + 2, close == std::string_view::npos ? std::string_view::npos : close - eq - 2);
      next = close == std::string_view::npos ? close : list.find(',', close);
    } else {
      next = list.find(',', eq + 1);
      value = list.substr(eq + 1, next == std::string_view::npos ? std::string_view::npos : next - eq - 1);
    }
    if (key == name) return value;
    if (next == std::string_view::npos) return {};
    i = next + 1;
  }
  return {};
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

/// The tag name of a line ("#EXT-X-MAP:URI=..." -> "#EXT-X-MAP").
std::string_view TagName(std::string_view line) { return line.substr(0, line.find(':')); }

/// Tags of the playlist as a whole (RFC 8216bis 4.4.1-4.4.3, and the ones that
/// follow the segments: 4.4.5): a delta update keeps them wherever they are.
/// Every other line (Media Segment tags, URIs, unknown tags, comments) belongs
/// to the segment it precedes.
bool IsPlaylistTag(std::string_view tag) {
  static constexpr std::string_view kTags[] = {
      "#EXTM3U",           "#EXT-X-VERSION",       "#EXT-X-TARGETDURATION",       "#EXT-X-MEDIA-SEQUENCE",
      "#EXT-X-DISCONTINUITY-SEQUENCE", "#EXT-X-PLAYLIST-TYPE", "#EXT-X-I-FRAMES-ONLY", "#EXT-X-PART-INF",
      "#EXT-X-SERVER-CONTROL", "#EXT-X-INDEPENDENT-SEGMENTS", "#EXT-X-START", "#EXT-X-DEFINE",
      "#EXT-X-ENDLIST",    "#EXT-X-PRELOAD-HINT",  "#EXT-X-RENDITION-REPORT",     "#EXT-X-SKIP",
  };
  return std::find(std::begin(kTags), std::end(kTags), tag) != std::end(kTags);
}

}  // namespace

PlaylistPosition ScanPlaylist(std::string_view text) {
  PlaylistPosition pos;
  uint64_t parts = 0;        // #EXT-X-PART since the last segment's URI
  bool awaiting_uri = false;  // an #EXTINF whose URI line has not come yet
  ForEachLine(text, [&](std::string_view line) {
    if (line.empty()) return;
    if (line[0] != '#') {
      if (awaiting_uri) {  // the URI closes the segment: the parts so far were its own
        pos.last_segment_parts = parts;
        parts = 0;
        awaiting_uri = false;
      }
      return;
    }
    if (StartsWith(line, "#EXTINF:")) {
      ++pos.segments;
      pos.media = true;
      awaiting_uri = true;
    } else if (StartsWith(line, "#EXT-X-PART:")) {
      ++parts;
    } else if (StartsWith(line, "#EXT-X-MEDIA-SEQUENCE:")) {
      pos.media_sequence = LeadingNumber(line.substr(22));
    } else if (StartsWith(line, "#EXT-X-TARGETDURATION:")) {
      pos.target_duration = static_cast<double>(LeadingNumber(line.substr(22)));
      pos.media = true;
    } else if (StartsWith(line, "#EXT-X-ENDLIST")) {
      pos.ended = true;
    } else if (StartsWith(line, "#EXT-X-PART-INF:")) {
      pos.part_target = LeadingDecimal(Attribute(line.substr(16), "PART-TARGET"));
    } else if (StartsWith(line, "#EXT-X-SERVER-CONTROL:")) {
      pos.skip_until = LeadingDecimal(Attribute(line.substr(22), "CAN-SKIP-UNTIL"));
    } else if (StartsWith(line, "#EXT-X-PRELOAD-HINT:")) {
      if (Attribute(line.substr(20), "TYPE") == "PART") pos.preload_part = std::string(Attribute(line.substr(20), "URI"));
    } else if (StartsWith(line, "#EXT-X-SKIP:")) {
      pos.has_skip = true;
    }
  });
  pos.trailing_parts = parts;
  return pos;
}

// RFC 8216bis 6.2.5.2. `_HLS_part` counts only in a playlist with partial
// segments (#EXT-X-PART-INF); elsewhere the request waits for segment `msn`.
Reload BlockingReload(const PlaylistPosition& pos, uint64_t msn, std::optional<uint64_t> part) {
  if (!pos.media || pos.ended) return Reload::kReady;  // the directives are ignored once it ended
  const bool partial = pos.part_target > 0;
  const uint64_t next = pos.next();
  // "More than two past the last Media Segment in the Playlist": the segment in
  // progress is in it once one of its parts is.
  if (msn > next + (partial && pos.trailing_parts > 0 ? 2 : 1)) return Reload::kTooFar;
  if (!partial || !part) return pos.Has(msn) ? Reload::kReady : Reload::kWait;
  uint64_t m = msn;
  uint64_t p = *part;
  // A part index past the last part of a complete segment is part 0 of the next.
  if (pos.segments > 0 && m + 1 == next && pos.last_segment_parts > 0 && p >= pos.last_segment_parts) {
    m = next;
    p = 0;
  }
  if (m < next) return pos.segments > 0 || pos.trailing_parts > 0 ? Reload::kReady : Reload::kWait;
  if (m == next && p < pos.trailing_parts) return Reload::kReady;
  // How many parts the one asked for lies past the last part listed (for a later
  // segment, at least this many: every segment has one part or more).
  const uint64_t ahead = m == next ? p + 1 - pos.trailing_parts
                                   : (pos.trailing_parts == 0 ? 1 : 0) + (m - next - 1) + p + 1;
  // The Advance Part Limit: three seconds of parts, and at least three parts.
  const double limit = pos.part_target < 1 ? 3 / pos.part_target : 3;
  return static_cast<double>(ahead) > limit + 1e-6 ? Reload::kTooFar : Reload::kWait;
}

// The Skip Boundary is measured from the end of the last (parent) segment,
// which is the segment in progress when the playlist lists parts of it. The
// skipped segments are replaced where they stood; the EXT-X-MAP and EXT-X-KEY in
// force for the first kept segment are carried over when that segment has none
// of its own (RFC 8216bis 4.4.5.2: tags the kept segments depend on stay).
// EXT-X-DATERANGE stays (_HLS_skip=v2 may drop old ones; the packager writes none).
std::optional<std::string> DeltaUpdate(std::string_view text, const PlaylistPosition& pos) {
  if (pos.skip_until <= 0 || pos.ended || pos.has_skip || !pos.media || pos.segments == 0) return std::nullopt;
  enum What { kOther, kMap, kKey, kDateRange, kVersion };
  struct Line {
    std::string_view text;
    int64_t segment;  ///< the segment it goes with; -1 for a playlist tag
    What what;
  };
  std::vector<Line> lines;
  std::vector<double> durations;  // of the complete segments
  double parts = 0;               // durations of the parts since the last segment's URI
  int64_t segment = 0;
  bool awaiting_uri = false;
  bool versioned = false;
  ForEachLine(text, [&](std::string_view line) {
    if (line.empty() || line[0] != '#') {
      lines.push_back({line, segment, kOther});
      if (!line.empty() && awaiting_uri) {
        awaiting_uri = false;
        parts = 0;
        ++segment;
      }
      return;
    }
    const std::string_view tag = TagName(line);
    if (IsPlaylistTag(tag)) {
      const bool version = tag == "#EXT-X-VERSION";
      versioned |= version;
      lines.push_back({line, -1, version ? kVersion : kOther});
      return;
    }
    What what = kOther;
    if (tag == "#EXTINF") {
      durations.push_back(LeadingDecimal(line.substr(8)));
      awaiting_uri = true;
    } else if (tag == "#EXT-X-PART") {
      parts += LeadingDecimal(Attribute(line.substr(12), "DURATION"));
    } else if (tag == "#EXT-X-MAP") {
      what = kMap;
    } else if (tag == "#EXT-X-KEY") {
      what = kKey;
    } else if (tag == "#EXT-X-DATERANGE") {
      what = kDateRange;
    }
    lines.push_back({line, segment, what});
  });
  double end = parts;  // the parts left are those of the segment in progress
  for (double d : durations) end += d;
  int64_t skipped = 0;
  double segment_end = 0;
  for (double d : durations) {
    segment_end += d;
    if (end - segment_end <= pos.skip_until + 1e-6) break;
    ++skipped;
  }
  if (skipped == 0) return std::nullopt;

  bool kept_map = false;  // the first kept segment has its own
  bool kept_key = false;
  for (const Line& l : lines) {
    if (l.segment != skipped) continue;
    kept_map |= l.what == kMap;
    kept_key |= l.what == kKey;
  }
  std::string out;
  out.reserve(text.size());
  auto put = [&out](std::string_view line) {
    out += line;
    out += '\n';
  };
  const Line* map = nullptr;
  const Line* key = nullptr;
  bool skip_written = false;
  bool carried = false;
  for (const Line& l : lines) {
    if (l.segment < 0) {
      if (l.what == kVersion && LeadingNumber(l.text.substr(15)) < 9) {
        put("#EXT-X-VERSION:9");
      } else {
        put(l.text);
        if (!versioned && l.text == "#EXTM3U") put("#EXT-X-VERSION:9");
      }
      continue;
    }
    if (l.segment < skipped) {
      if (!skip_written) {
        out += fmt::format("#EXT-X-SKIP:SKIPPED-SEGMENTS={}\n", skipped);
        skip_written = true;
      }
      if (l.what == kMap) map = &l;
      if (l.what == kKey) key = &l;
      if (l.what == kDateRange) put(l.text);
      continue;
    }
    if (!carried) {
      carried = true;
      // In their original order: a KEY before the MAP stays before it.
      const Line* first = key && map && map < key ? map : key;
      const Line* second = first == key ? map : key;
      for (const Line* c : {first, second}) {
        if (c && !(c->what == kMap ? kept_map : kept_key)) put(c->text);
      }
    }
    put(l.text);
  }
  return out;
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
  return RegularFile(Fd(fd));
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
  auto f = RegularFile(std::move(fd));
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
