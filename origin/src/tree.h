// The served tree: maps request paths to open regular files under the root, and
// answers what the tree's rules make of them (MIME type, Cache-Control, titles).
//
// Only regular files under the root whose every path component is a plain,
// non-dot name are served. The common case (no symlink on the way) is one
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) relative to the root's
// descriptor: the kernel refuses "..", absolute paths and symlinks atomically.
// A path that meets a symlink takes the slow path: canonicalised, and served only
// when the target is still under the root through plain names. The key store
// (key_route.h) opens its files by the same rules through the same class, Beneath,
// minus the symlinks.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace khls::origin {

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_;
};

/// A regular file opened for a response.
struct OpenFile {
  Fd fd;
  size_t size = 0;
  struct timespec mtime {};
  ino_t inode = 0;
  dev_t device = 0;
  /// The served name's extension (".ts"), from the target's name when a symlink was followed.
  std::string extension;
  /// "master.m3u8" when the file is a title's multivariant playlist.
  bool is_master = false;
};

/// `fd` as an OpenFile when it is a regular file (its extension left empty).
std::optional<OpenFile> RegularFile(Fd fd);

/// A directory whose regular files are opened by decoded URL paths, never
/// reaching outside it: every component of the path must be a plain, non-dot
/// name ("..", "//", a trailing "/", NUL and backslashes are refused before the
/// file system is asked), and the open itself is confined to the directory.
class Beneath {
 public:
  enum class Symlinks {
    kWithin,  ///< followed when the target is still under the directory through plain names
    kNever,   ///< a symlink anywhere on the way is a refusal
  };
  /// `dir` must be canonical and an existing directory; it is opened (O_PATH) now.
  Beneath(std::filesystem::path dir, Symlinks symlinks);

  const std::filesystem::path& dir() const { return dir_; }
  /// False when the directory could not be opened (then only the slower
  /// path-based checks are available, which keep the same rules).
  bool opened() const { return dir_fd_.valid(); }
  /// errno of that failed open (0 when opened).
  int open_error() const { return open_error_; }

  /// The regular file at `url_path` ("/t/v1/index.m3u8") under the directory,
  /// or nothing (for every refusal alike: missing, hidden, outside, special).
  /// Its `extension` is set; `is_master` is left to the caller.
  std::optional<OpenFile> Open(std::string_view url_path) const;

 private:
  /// The fast path; `try_slow` says whether a refusal may be a symlink (or no openat2).
  std::optional<OpenFile> OpenRelative(const std::string& rel, bool& try_slow) const;
  std::optional<OpenFile> OpenSlow(const std::string& rel) const;

  std::filesystem::path dir_;
  Symlinks symlinks_;
  Fd dir_fd_;
  int open_error_ = 0;
  mutable std::atomic<bool> openat2_works_{true};  ///< cleared when the kernel lacks openat2
};

class Tree {
 public:
  /// `root` must be canonical and an existing directory.
  explicit Tree(std::filesystem::path root);

  const std::filesystem::path& root() const { return files_.dir(); }

  /// Opens the regular file a decoded URL path ("/t/v1/index.m3u8") names, or
  /// nothing (for every refusal alike: missing, hidden, outside, special).
  std::optional<OpenFile> Open(std::string_view url_path) const;

  /// Cache-Control of a playlist: final (cacheable) once it cannot change.
  /// `whole` is the playlist's content when it was read whole; when empty, the
  /// file's tail is read instead.
  std::string_view PlaylistCacheControl(std::string_view url_path, const OpenFile& f, std::string_view whole) const;

  /// Reads a whole file of at most `max` bytes; nothing when larger or unreadable.
  static std::optional<std::string> ReadWhole(const OpenFile& f, size_t max);

  /// [{"title", "complete", "url"}] of every title with a master playlist, sorted.
  std::string TitlesJson() const;

 private:
  /// What .state.json of a title says: complete or not, and when it was written.
  struct TitleInfo {
    bool complete = false;
    struct timespec state_mtime {};
    ino_t inode = 0;
    size_t size = 0;
  };
  std::optional<TitleInfo> ReadTitleInfo(const std::filesystem::path& title_dir) const;

  Beneath files_;
  mutable std::mutex info_mutex_;
  mutable std::unordered_map<std::string, TitleInfo> info_cache_;  ///< by title directory
};

/// Where a media playlist stands, for blocking playlist reload (RFC 8216bis
/// 6.2.5.2), preload hints (6.2.6) and delta updates (6.2.5.1).
struct PlaylistPosition {
  bool media = false;          ///< has #EXTINF or #EXT-X-TARGETDURATION (not a multivariant playlist)
  uint64_t media_sequence = 0;  ///< #EXT-X-MEDIA-SEQUENCE (0 when absent)
  uint64_t segments = 0;        ///< #EXTINF entries
  double target_duration = 0;   ///< #EXT-X-TARGETDURATION, seconds
  bool ended = false;           ///< #EXT-X-ENDLIST
  /// LL-HLS: #EXT-X-PART-INF's PART-TARGET, seconds (0: a playlist without
  /// partial segments, whose _HLS_part waits for the whole segment).
  double part_target = 0;
  uint64_t last_segment_parts = 0;  ///< #EXT-X-PART tags of the last complete segment
  uint64_t trailing_parts = 0;      ///< #EXT-X-PART tags after it: the segment in progress
  double skip_until = 0;            ///< #EXT-X-SERVER-CONTROL's CAN-SKIP-UNTIL (0: no delta updates)
  bool has_skip = false;            ///< already a delta update (#EXT-X-SKIP): never skipped again
  std::string preload_part;         ///< URI of #EXT-X-PRELOAD-HINT:TYPE=PART ("" when none)

  /// Whether Media Sequence Number `msn` is in the playlist.
  bool Has(uint64_t msn) const { return segments > 0 && msn < media_sequence + segments; }
  /// The MSN of the segment after the last #EXTINF (the one in progress).
  uint64_t next() const { return media_sequence + segments; }
};
PlaylistPosition ScanPlaylist(std::string_view text);

/// What a blocking playlist reload (`_HLS_msn=msn[&_HLS_part=part]`) makes of a
/// playlist: answer now, wait for a newer one, or refuse (400) as too far ahead.
enum class Reload { kReady, kWait, kTooFar };
Reload BlockingReload(const PlaylistPosition& pos, uint64_t msn, std::optional<uint64_t> part);

/// The Playlist Delta Update (RFC 8216bis 6.2.5.1) of `text`, whose position is
/// `pos`: the segments ending more than CAN-SKIP-UNTIL seconds before the end
/// of the playlist (its last part included) replaced by one
/// #EXT-X-SKIP:SKIPPED-SEGMENTS=n, and EXT-X-VERSION raised to 9. Nothing when
/// the playlist offers no delta updates, has ended, or nothing would be skipped
/// (the whole playlist is the answer then).
std::optional<std::string> DeltaUpdate(std::string_view text, const PlaylistPosition& pos);

/// True for a name that may be served: non-empty, not starting with '.'.
inline bool IsPlainName(std::string_view c) { return !c.empty() && c.front() != '.'; }

/// "%41" → "A"; a '%' not followed by two hex digits stays as it is.
void PercentDecode(std::string_view in, std::string& out);

/// Content-Type of a file by extension (".m3u8" → "application/vnd.apple.mpegurl").
std::string_view MimeType(std::string_view extension);

}  // namespace khls::origin
