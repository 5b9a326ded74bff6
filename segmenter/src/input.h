// Opening an input with libavformat, with errors that name the input.
#pragma once

#include <string>

#include "av_handles.h"
#include "khls/segmenter.h"

namespace khls::segmenter::internal {

/// Opens `url` with `params.input_format` / `params.input_options` and reads its
/// stream info, under a ReadWatchdog (`params.stall_timeout`, `params.stop`)
/// that stays attached to the context: stalls count from then on only if it is
/// not a seekable file. kInvalidArgument for an unknown format or an option
/// nobody recognized, kInvalidInput when the input cannot be opened or
/// understood, or sent nothing for the stall timeout; kCancelled once `stop` is set.
Result<InputContextPtr> OpenInput(const std::string& url, const Params& params);

/// True for a seekable input of known size (a file): it can be pre-scanned.
bool IsSeekableFile(const AVFormatContext& ic);

}  // namespace khls::segmenter::internal
