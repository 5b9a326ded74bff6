#include "input.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <charconv>
#include <memory>
#include <string_view>

#include <fmt/ranges.h>

#include "read_watchdog.h"

namespace khls::segmenter::internal {
namespace {

/// The local path `url` names, or "" when it is not a plain file URL.
std::string LocalPath(const std::string& url) {
  std::string_view v(url);
  if (v.starts_with("file:")) return std::string(v.substr(5));
  return v.find("://") == std::string_view::npos ? url : std::string();
}

/// The descriptor a `pipe:` or `pipe:N` URL reads, or -1.
int PipeDescriptor(const std::string& url) {
  std::string_view v(url);
  if (!v.starts_with("pipe:")) return -1;
  v.remove_prefix(5);
  if (v.empty()) return 0;
  int fd = -1;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), fd);
  return ec == std::errc() && end == v.data() + v.size() ? fd : -1;
}

/// libavformat reads a pipe with a blocking read(2), which no interrupt callback
/// reaches: a writer that stalls would hold the ingest forever, Ctrl-C included.
/// Non-blocking, an empty pipe makes libavformat retry every millisecond and ask
/// the callback each time; a closed writer still reads as the end of the input.
/// Only pipes and sockets (a terminal on stdin stays as it is).
void MakeNonBlocking(int fd) {
  struct stat sb {};
  if (fd < 0 || fstat(fd, &sb) != 0 || !(S_ISFIFO(sb.st_mode) || S_ISSOCK(sb.st_mode))) return;
  if (const int flags = fcntl(fd, F_GETFL); flags >= 0 && (flags & O_NONBLOCK) == 0)
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/// The error for an open or probe the watchdog interrupted; Ok when it did not.
Status Interrupted(const ReadWatchdog& watchdog, const std::string& url) {
  if (watchdog.stopped()) return Error(ErrorCode::kCancelled, "open input '{}': interrupted", url);
  if (!watchdog.stalled()) return Status::Ok();
  if (!watchdog.data_seen()) {
    return Error(ErrorCode::kInvalidInput,
                 "open input '{}': nothing arrived within {:g} s (the stall timeout, --stall-timeout): no live feed "
                 "is sending to it",
                 url, watchdog.stall_timeout());
  }
  return Error(ErrorCode::kInvalidInput,
               "open input '{}': the live feed stalled for {:g} s (the stall timeout, --stall-timeout) before its "
               "streams could be read",
               url, watchdog.stall_timeout());
}

}  // namespace

Result<InputContextPtr> OpenInput(const std::string& url, const Params& params) {
  const AVInputFormat* format = nullptr;
  if (!params.input_format.empty()) {
    format = av_find_input_format(params.input_format.c_str());
    if (format == nullptr) {
      return Error(ErrorCode::kInvalidArgument, "open input '{}': unknown input format '{}'", url,
                   params.input_format);
    }
  }
  Dictionary options;
  for (const auto& [key, value] : params.input_options) {
    if (const int err = options.Set(key, value); err < 0) {
      return Error(ErrorCode::kInvalidArgument, "open input '{}': option {}={}: {}", url, key, value,
                   AvErrorString(err));
    }
  }

  MakeNonBlocking(PipeDescriptor(url));
  // Whether the input is live is known once it is open: until then every input
  // is held to the stall timeout (a file does not keep a read waiting that long).
  auto watchdog = std::make_shared<ReadWatchdog>(params.stall_timeout, params.stop);
  AVFormatContext* raw = avformat_alloc_context();
  if (raw == nullptr) return Error(ErrorCode::kInternal, "open input '{}': out of memory", url);
  watchdog->Attach(raw);
  watchdog->Arm();
  if (const int err = avformat_open_input(&raw, url.c_str(), format, options.out()); err < 0) {
    // avformat_open_input freed the context. An empty file gets a plainer message.
    KHLS_RETURN_IF_ERROR(Interrupted(*watchdog, url));
    struct stat sb {};
    if (const std::string path = LocalPath(url);
        err == AVERROR_INVALIDDATA && !path.empty() && stat(path.c_str(), &sb) == 0 && S_ISREG(sb.st_mode) &&
        sb.st_size == 0) {
      return Error(ErrorCode::kInvalidInput, "open input '{}': the file is empty (0 bytes)", url);
    }
    if (err == AVERROR_INVALIDDATA) {
      return Error(ErrorCode::kInvalidInput,
                   "open input '{}': {} (not a media file libavformat recognizes, or damaged, e.g. an MP4 "
                   "cut short before its moov index)",
                   url, AvErrorString(err));
    }
    return Error(ErrorCode::kInvalidInput, "open input '{}': {}", url, AvErrorString(err));
  }
  InputContextPtr ic(raw, InputContextDeleter{watchdog});
  if (const auto unused = options.Keys(); !unused.empty()) {
    return Error(ErrorCode::kInvalidArgument, "open input '{}': option(s) {} not recognized by the {} demuxer or the protocol",
                 url, fmt::join(unused, ", "), ic->iformat->name);
  }
  watchdog->Arm();
  const int err = avformat_find_stream_info(ic.get(), nullptr);
  // Interrupted, it may still return what it had: streams without all their parameters.
  KHLS_RETURN_IF_ERROR(Interrupted(*watchdog, url));
  if (err < 0) return Error(ErrorCode::kInvalidInput, "read stream info of '{}': {}", url, AvErrorString(err));
  watchdog->set_live(!IsSeekableFile(*ic));
  return ic;
}

bool IsSeekableFile(const AVFormatContext& ic) {
  return ic.pb != nullptr && (ic.pb->seekable & AVIO_SEEKABLE_NORMAL) != 0 && avio_size(ic.pb) > 0;
}

}  // namespace khls::segmenter::internal
