// Opening an input with libavformat, with errors that name the input.
#pragma once

#include <string>

#include "av_handles.h"
#include "khls/segmenter.h"

namespace khls::segmenter::internal {

/// Opens `url` with `params.input_format` / `params.input_options` and reads its
/// stream info. kInvalidArgument for an unknown format or an option nobody
/// recognized, kInvalidInput when the input cannot be opened or understood.
Result<InputContextPtr> OpenInput(const std::string& url, const Params& params);

/// True for a seekable input of known size (a file): it can be pre-scanned.
bool IsSeekableFile(const AVFormatContext& ic);

}  // namespace khls::segmenter::internal
