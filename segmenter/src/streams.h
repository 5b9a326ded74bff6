// Which streams of a title's inputs become renditions, and how players will see
// them (ids, languages, names, default / autoselect / forced). Every stream of
// every input gets a StreamReport: carried as a rendition, or skipped and why.
#pragma once

#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/segmenter.h"
#include "webvtt.h"

namespace khls::segmenter::internal {

struct Selection {
  std::vector<RenditionInfo> renditions;  ///< video (input order), audio, subtitles
  std::vector<StreamReport> reports;
  /// Cues of each sidecar subtitle rendition (parallel to renditions; empty for the others),
  /// times relative to the movie's first picture.
  std::vector<std::vector<Cue>> sidecar_cues;
};

/// Decides what the title carries. `inputs[0]` is the reference (video, every
/// audio track it has, subject to params.audio_languages, and its text
/// subtitles); every other input contributes its video, as one more variant.
/// Sidecar files are read here. Errors: kInvalidInput naming the input (no audio
/// or video; a codec HLS over MPEG-TS cannot carry when nothing else of that kind
/// can be carried; an input after the first without video; an unreadable
/// sidecar), kInvalidArgument for an audio language the first input lacks.
Result<Selection> SelectRenditions(const std::vector<const AVFormatContext*>& inputs,
                                   const std::vector<std::string>& urls, const Params& params);

/// The language a sidecar file name carries before its extension ("movie.fr.srt" -> "fr"), or "".
std::string LanguageFromFileName(const std::string& path);

}  // namespace khls::segmenter::internal
