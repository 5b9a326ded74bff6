#include "input.h"

#include <sys/stat.h>

#include <string_view>

#include <fmt/ranges.h>

namespace khls::segmenter::internal {
namespace {

/// The local path `url` names, or "" when it is not a plain file URL.
std::string LocalPath(const std::string& url) {
  std::string_view v(url);
  if (v.starts_with("file:")) return std::string(v.substr(5));
  return v.find("://") == std::string_view::npos ? url : std::string();
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

  AVFormatContext* raw = nullptr;
  if (const int err = avformat_open_input(&raw, url.c_str(), format, options.out()); err < 0) {
    // avformat_open_input freed the context. An empty file gets a plainer message.
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
  InputContextPtr ic(raw);
  if (const auto unused = options.Keys(); !unused.empty()) {
    return Error(ErrorCode::kInvalidArgument, "open input '{}': option(s) {} not recognized by the {} demuxer or the protocol",
                 url, fmt::join(unused, ", "), ic->iformat->name);
  }
  if (const int err = avformat_find_stream_info(ic.get(), nullptr); err < 0) {
    return Error(ErrorCode::kInvalidInput, "read stream info of '{}': {}", url, AvErrorString(err));
  }
  return ic;
}

bool IsSeekableFile(const AVFormatContext& ic) {
  return ic.pb != nullptr && (ic.pb->seekable & AVIO_SEEKABLE_NORMAL) != 0 && avio_size(ic.pb) > 0;
}

}  // namespace khls::segmenter::internal
