#include "streams.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "codec_string.h"
#include "khls/utf8.h"
#include "language.h"

namespace khls::segmenter::internal {
namespace {

bool IsSupportedVideo(AVCodecID id) { return id == AV_CODEC_ID_H264 || id == AV_CODEC_ID_HEVC; }

bool IsSupportedAudio(AVCodecID id) {
  return id == AV_CODEC_ID_AAC || id == AV_CODEC_ID_MP3 || id == AV_CODEC_ID_AC3 || id == AV_CODEC_ID_EAC3;
}

constexpr char kVideoCodecs[] = "HLS over MPEG-TS carries H.264 or HEVC";
constexpr char kAudioCodecs[] = "HLS over MPEG-TS carries AAC, MP3, AC-3 or E-AC-3";
// WebVTT segments are not cut into parts (yet): with parts, a title carries no subtitles.
constexpr char kNoSubtitlesInParts[] = "subtitles are not carried in low-latency (part) mode";

std::string Tag(const AVStream& st, const char* key) {
  const AVDictionaryEntry* e = av_dict_get(st.metadata, key, nullptr, 0);
  return e != nullptr && e->value != nullptr ? e->value : "";
}

bool IsCoverArt(const AVStream& st) { return (st.disposition & AV_DISPOSITION_ATTACHED_PIC) != 0; }

/// A name safe in a quoted playlist attribute: UTF-8, no control characters, no '"', at most 128 bytes.
std::string CleanName(std::string s) {
  s = ToValidUtf8(s);
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    if (c == '"') c = '\'';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  if (s.size() > 128) {
    s.resize(128);
    while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xc0) == 0x80) s.pop_back();  // cut UTF-8 cleanly
    if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0x80) != 0) s.pop_back();
  }
  return s;
}

std::string Describe(const AVStream& st) {
  const AVCodecParameters& par = *st.codecpar;
  std::string d;
  switch (par.codec_type) {
    case AVMEDIA_TYPE_VIDEO: {
      d = fmt::format("video {} {}x{}", CodecDisplayName(par), par.width, par.height);
      const AVRational rate = VideoFrameRate(st);
      if (rate.num > 0) d += fmt::format(" {:.3g} fps", av_q2d(rate));
      if (IsCoverArt(st)) d += " (attached picture)";
      break;
    }
    case AVMEDIA_TYPE_AUDIO:
      d = fmt::format("audio {} {} ch {} Hz", CodecDisplayName(par), par.ch_layout.nb_channels, par.sample_rate);
      break;
    case AVMEDIA_TYPE_SUBTITLE: d = fmt::format("subtitles {}", avcodec_get_name(par.codec_id)); break;
    case AVMEDIA_TYPE_ATTACHMENT: d = fmt::format("attachment {}", avcodec_get_name(par.codec_id)); break;
    case AVMEDIA_TYPE_DATA: d = fmt::format("data {}", avcodec_get_name(par.codec_id)); break;
    default: d = "unknown stream"; break;
  }
  if (const std::string lang = Tag(st, "language"); !lang.empty()) d += fmt::format(" lang={}", lang);
  if (const std::string title = Tag(st, "title"); !title.empty()) d += fmt::format(" \"{}\"", CleanName(title));
  if (st.disposition & AV_DISPOSITION_DEFAULT) d += " [default]";
  if (st.disposition & AV_DISPOSITION_FORCED) d += " [forced]";
  return d;
}

/// libavformat's choice of stream of `type` when HLS can carry it, else the first
/// one HLS can carry, else -1. Cover art is never video; audio needs a sample rate.
int PickVideo(const AVFormatContext& ic) {
  auto usable = [&](int i) {
    const AVStream& st = *ic.streams[i];
    return st.codecpar->codec_type == AVMEDIA_TYPE_VIDEO && !IsCoverArt(st);
  };
  const int best = av_find_best_stream(const_cast<AVFormatContext*>(&ic), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (best >= 0 && usable(best) && IsSupportedVideo(ic.streams[best]->codecpar->codec_id)) return best;
  for (int i = 0; i < static_cast<int>(ic.nb_streams); ++i)
    if (usable(i) && IsSupportedVideo(ic.streams[i]->codecpar->codec_id)) return i;
  return -1;
}

bool HasVideo(const AVFormatContext& ic) {
  for (unsigned i = 0; i < ic.nb_streams; ++i)
    if (ic.streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO && !IsCoverArt(*ic.streams[i])) return true;
  return false;
}

/// "video-360p", "audio-en", "subs-pt-br": lower case, then -2, -3 ... when taken.
std::string UniqueId(std::string base, std::set<std::string>& used) {
  std::string id;
  for (char c : base) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    id += (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ? c : '-';
  }
  id = id.substr(0, 28);
  std::string out = id;
  for (int n = 2; used.count(out); ++n) out = fmt::format("{}-{}", id, n);
  used.insert(out);
  return out;
}

/// `name`, or "name 2", "name 3" ... when another rendition of the kind has it.
std::string UniqueName(const std::string& name, std::set<std::string>& used) {
  std::string out = name;
  for (int n = 2; used.count(out); ++n) out = fmt::format("{} {}", name, n);
  used.insert(out);
  return out;
}

bool LanguageMatches(const std::string& wanted, const std::string& bcp47) {
  const std::string w = ToBcp47(wanted);
  if (w.empty() || bcp47.empty()) return false;
  if (w == bcp47) return true;
  // "en" selects "en-US" and "en-GB"; "pt-BR" selects only itself.
  return w.find('-') == std::string::npos && bcp47.starts_with(w + "-");
}

}  // namespace

std::string LanguageFromFileName(const std::string& path) {
  const std::filesystem::path stem = std::filesystem::path(path).stem();  // "movie.fr"
  const std::string ext = stem.extension().string();                     // ".fr"
  return ext.size() > 1 ? ToBcp47(ext.substr(1)) : "";
}

Result<Selection> SelectRenditions(const std::vector<const AVFormatContext*>& inputs,
                                   const std::vector<std::string>& urls, const Params& params) {
  Selection sel;
  std::set<std::string> ids;
  std::vector<RenditionInfo> video, audio, subs;
  std::vector<std::vector<Cue>> subs_cues;
  std::set<std::string> audio_names, subs_names;

  auto report = [&](int input, int stream, const std::string& desc, const std::string& rendition,
                    const std::string& reason) {
    sel.reports.push_back({input, stream, input >= 0 ? urls[input] : "", desc, rendition, reason});
    return &sel.reports.back();
  };

  for (size_t in = 0; in < inputs.size(); ++in) {
    const AVFormatContext& ic = *inputs[in];
    const std::string& url = urls[in];
    const int v = PickVideo(ic);
    if (v < 0 && HasVideo(ic)) {
      for (unsigned i = 0; i < ic.nb_streams; ++i) {
        const AVStream& st = *ic.streams[i];
        if (st.codecpar->codec_type == AVMEDIA_TYPE_VIDEO && !IsCoverArt(st))
          return Error(ErrorCode::kInvalidInput, "unsupported video codec {} in '{}': {}",
                       avcodec_get_name(st.codecpar->codec_id), url, kVideoCodecs);
      }
    }
    if (in > 0 && v < 0)
      return Error(ErrorCode::kInvalidInput,
                   "'{}' has no video stream: every input after the first is another video variant of the title", url);

    bool any_audio = false, audio_carried = false;
    std::string unsupported_audio;
    for (unsigned i = 0; i < ic.nb_streams; ++i) {
      const AVStream& st = *ic.streams[i];
      const AVCodecParameters& par = *st.codecpar;
      const int index = static_cast<int>(i);
      const std::string desc = Describe(st);
      if (par.codec_type == AVMEDIA_TYPE_VIDEO) {
        if (index != v) {
          report(static_cast<int>(in), index, desc, "",
                 IsCoverArt(st)                   ? "cover art (an attached picture), not a video track"
                 : !IsSupportedVideo(par.codec_id) ? std::string(kVideoCodecs)
                                                   : "a second video stream of this input: give each video variant "
                                                     "as an input of its own");
          continue;
        }
        RenditionInfo r;
        r.kind = TrackKind::kVideo;
        r.input = static_cast<int>(in);
        r.stream = index;
        r.codecs = CodecString(par);
        r.codec_name = CodecDisplayName(par);
        r.width = par.width;
        r.height = par.height;
        const AVRational rate = VideoFrameRate(st);
        r.frame_rate_num = rate.num;
        r.frame_rate_den = rate.num > 0 ? rate.den : 1;
        r.is_default = video.empty();
        r.id = UniqueId(fmt::format("video-{}p", par.height), ids);
        report(static_cast<int>(in), index, desc, r.id, "");
        video.push_back(std::move(r));
        continue;
      }
      if (in > 0) {
        report(static_cast<int>(in), index, desc, "",
               par.codec_type == AVMEDIA_TYPE_AUDIO || par.codec_type == AVMEDIA_TYPE_SUBTITLE
                   ? "audio and subtitles are taken from the first input"
                   : "not audio, video or subtitles");
        continue;
      }
      if (par.codec_type == AVMEDIA_TYPE_AUDIO) {
        if (par.sample_rate <= 0) {
          report(0, index, desc, "", "no sample rate: not a playable audio track");
          continue;
        }
        any_audio = true;
        if (!IsSupportedAudio(par.codec_id)) {
          if (unsupported_audio.empty()) unsupported_audio = avcodec_get_name(par.codec_id);
          report(0, index, desc, "", kAudioCodecs);
          continue;
        }
        RenditionInfo r;
        r.kind = TrackKind::kAudio;
        r.input = 0;
        r.stream = index;
        r.language = ToBcp47(Tag(st, "language"));
        if (!params.audio_languages.empty() &&
            std::none_of(params.audio_languages.begin(), params.audio_languages.end(),
                         [&](const std::string& w) { return LanguageMatches(w, r.language); })) {
          report(0, index, desc, "", fmt::format("language '{}' is not in --audio", r.language.empty() ? "und" : r.language));
          continue;
        }
        audio_carried = true;
        r.codecs = CodecString(par);
        r.codec_name = CodecDisplayName(par);
        r.channels = par.ch_layout.nb_channels;
        r.is_default = (st.disposition & AV_DISPOSITION_DEFAULT) != 0;
        // Commentary is never picked for a viewer automatically.
        r.autoselect = (st.disposition & AV_DISPOSITION_COMMENT) == 0;
        if (st.disposition & AV_DISPOSITION_VISUAL_IMPAIRED) r.characteristics = "public.accessibility.describes-video";
        std::string name = CleanName(Tag(st, "title"));
        if (name.empty()) name = LanguageName(r.language);
        if (name.empty()) name = fmt::format("Audio {}", audio.size() + 1);
        r.name = UniqueName(name, audio_names);
        r.id = UniqueId(r.language.empty() ? fmt::format("audio-{}", audio.size() + 1) : "audio-" + r.language, ids);
        report(0, index, desc, r.id, "");
        audio.push_back(std::move(r));
        continue;
      }
      if (par.codec_type == AVMEDIA_TYPE_SUBTITLE) {
        if (!IsTextSubtitleCodec(par.codec_id)) {
          report(0, index, desc, "", WhyNotText(par.codec_id));
          continue;
        }
        if (params.part_duration > 0) {
          report(0, index, desc, "", kNoSubtitlesInParts);
          continue;
        }
        RenditionInfo r;
        r.kind = TrackKind::kSubtitles;
        r.input = 0;
        r.stream = index;
        r.language = ToBcp47(Tag(st, "language"));
        r.codec_name = avcodec_get_name(par.codec_id);
        r.is_default = (st.disposition & AV_DISPOSITION_DEFAULT) != 0;
        r.forced = (st.disposition & AV_DISPOSITION_FORCED) != 0;
        if (st.disposition & AV_DISPOSITION_HEARING_IMPAIRED)
          r.characteristics =
              "public.accessibility.transcribes-spoken-dialog,public.accessibility.describes-music-and-sound";
        std::string name = CleanName(Tag(st, "title"));
        if (name.empty()) name = LanguageName(r.language);
        if (name.empty()) name = fmt::format("Subtitles {}", subs.size() + 1);
        r.name = UniqueName(name, subs_names);
        r.id = UniqueId(r.language.empty() ? fmt::format("subs-{}", subs.size() + 1) : "subs-" + r.language, ids);
        report(0, index, desc, r.id, "");
        subs.push_back(std::move(r));
        subs_cues.emplace_back();
        continue;
      }
      report(0, index, desc, "", "not audio, video or subtitles");
    }
    if (in == 0) {
      if (any_audio && !audio_carried && !unsupported_audio.empty() && params.audio_languages.empty())
        return Error(ErrorCode::kInvalidInput, "unsupported audio codec {} in '{}': {}", unsupported_audio, url,
                     kAudioCodecs);
      if (v < 0 && !any_audio) return Error(ErrorCode::kInvalidInput, "no audio or video stream in '{}'", url);
      // Every --audio language must match a carried track.
      for (const std::string& wanted : params.audio_languages) {
        if (std::any_of(audio.begin(), audio.end(), [&](const RenditionInfo& r) { return LanguageMatches(wanted, r.language); }))
          continue;
        std::string have;
        for (unsigned i = 0; i < ic.nb_streams; ++i)
          if (ic.streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) {
            const std::string lang = ToBcp47(Tag(*ic.streams[i], "language"));
            have += fmt::format("{}{}", have.empty() ? "" : ", ", lang.empty() ? "und" : lang);
          }
        return Error(ErrorCode::kInvalidArgument, "--audio {}: '{}' has no audio track in that language (it has: {})",
                     wanted, url, have.empty() ? "no audio" : have);
      }
      if (v < 0 && audio.empty())
        return Error(ErrorCode::kInvalidInput, "no audio or video stream HLS can carry in '{}'", url);
    }
  }

  for (const Params::Sidecar& side : params.subtitles) {
    KHLS_ASSIGN_OR_RETURN(std::vector<Cue> cues, ReadSubtitleFile(side.path));
    RenditionInfo r;
    r.kind = TrackKind::kSubtitles;
    r.input = -1;
    r.stream = -1;
    r.language = ToBcp47(side.language.empty() ? LanguageFromFileName(side.path) : side.language);
    if (!side.language.empty() && r.language.empty())
      return Error(ErrorCode::kInvalidArgument, "--subtitles {}:{}: '{}' is not a language tag", side.path,
                   side.language, side.language);
    r.codec_name = std::filesystem::path(side.path).extension().string();
    std::string name = LanguageName(r.language);
    if (name.empty()) name = fmt::format("Subtitles {}", subs.size() + 1);
    r.name = UniqueName(name, subs_names);
    r.id = UniqueId(r.language.empty() ? fmt::format("subs-{}", subs.size() + 1) : "subs-" + r.language, ids);
    sel.reports.push_back({-1, -1, side.path, fmt::format("subtitle file, {} cues", cues.size()), r.id, ""});
    subs.push_back(std::move(r));
    subs_cues.push_back(std::move(cues));
  }

  // One default per kind: the source's first flagged track, else the first one (audio only).
  auto one_default = [](std::vector<RenditionInfo>& list, bool first_if_none) {
    bool seen = false;
    for (RenditionInfo& r : list) {
      if (r.is_default && !seen) seen = true;
      else r.is_default = false;
    }
    if (!seen && first_if_none && !list.empty()) {
      auto it = std::find_if(list.begin(), list.end(), [](const RenditionInfo& r) { return r.autoselect; });
      (it != list.end() ? *it : list.front()).is_default = true;
    }
    for (RenditionInfo& r : list)
      if (r.is_default) r.autoselect = true;
  };
  one_default(audio, true);
  one_default(subs, false);

  for (auto* list : {&video, &audio, &subs})
    for (RenditionInfo& r : *list) sel.renditions.push_back(std::move(r));
  sel.sidecar_cues.resize(video.size() + audio.size());
  for (auto& cues : subs_cues) sel.sidecar_cues.push_back(std::move(cues));
  return sel;
}

}  // namespace khls::segmenter::internal
