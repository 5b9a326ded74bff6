#include "webvtt.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace khls::segmenter::internal {
namespace {

/// The decoder for a text codec: SSA events go to the "ass" decoder (FFmpeg 5.1 has none registered for
/// AV_CODEC_ID_SSA; its ASS parser reads both).
const AVCodec* TextDecoder(AVCodecID id) {
  return avcodec_find_decoder(id == AV_CODEC_ID_SSA ? AV_CODEC_ID_ASS : id);
}

/// Longest a cue of unknown duration lasts (90 kHz).
constexpr int64_t kMaxOpenCue = 10 * 90000;

/// The MPEG-TS time at which the output timeline starts (khls::segmenter::kOutputStartPts, 1.4 s).
constexpr std::string_view kHeader = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n";

/// An AVSubtitle that is always freed (avsubtitle_free is a no-op on a zeroed one).
struct SubtitleGuard {
  AVSubtitle sub{};
  SubtitleGuard() = default;
  SubtitleGuard(const SubtitleGuard&) = delete;
  SubtitleGuard& operator=(const SubtitleGuard&) = delete;
  ~SubtitleGuard() { avsubtitle_free(&sub); }
};

std::string Seconds(int64_t pts) { return fmt::format("{:.3f} s", static_cast<double>(pts) / 90000.0); }

/// The webvtt encoder's output (`markup`) made safe for WebVTT: its <i> <b> <u> tags kept, any other & < >
/// escaped (the encoder copies text verbatim, so "a < b" or a literal "-->" would otherwise reach the cue), the
/// ASS escapes the encoder leaves in text (\h hard space; \{ \} \\ literal braces and backslash, as the text and
/// webvtt decoders write them) resolved, and no blank line: a
/// line with only tags on it is joined to the next one. Plain text (!`markup`) has every & < > escaped. ""
/// when nothing visible is left.
std::string CleanCueText(std::string_view in, bool markup) {
  constexpr size_t npos = std::string_view::npos;
  static constexpr std::string_view kTags[] = {"<i>", "</i>", "<b>", "</b>", "<u>", "</u>"};
  std::vector<std::string> lines(1);
  std::vector<bool> visible(1, false);
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    std::string& line = lines.back();
    if (c == '<') {
      const std::string_view rest = in.substr(i);
      const auto tag = std::ranges::find_if(kTags, [&](std::string_view t) { return rest.starts_with(t); });
      if (markup && tag != std::end(kTags)) {
        line += *tag;
        i += tag->size() - 1;
      } else {
        line += "&lt;";
        visible.back() = true;
      }
    } else if (c == '>') {
      line += "&gt;";
      visible.back() = true;
    } else if (c == '&') {
      line += "&amp;";
      visible.back() = true;
    } else if (markup && c == '\\' && i + 1 < in.size() && std::string_view("h{}\\").find(in[i + 1]) != npos) {
      line += in[i + 1] == 'h' ? "\u00a0" : std::string_view(&in[i + 1], 1);
      visible.back() = visible.back() || in[i + 1] != 'h';
      ++i;
    } else if (c == '\n') {
      lines.emplace_back();
      visible.push_back(false);
    } else if (c != '\r') {
      line += c;
      if (c != ' ' && c != '\t') visible.back() = true;
    }
  }
  std::string out;
  std::string carry;  // the tags of lines with nothing visible, moved to the next visible line
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string line = std::move(lines[i]);
    if (!visible[i]) {
      // Only tags and blanks here (CleanCueText writes no other '<'): keep the tags, in order.
      std::string tags;
      for (size_t pos = line.find('<'); pos != std::string::npos; pos = line.find('<', pos + 1)) {
        tags += line.substr(pos, line.find('>', pos) - pos + 1);
      }
      carry += tags;
      continue;
    }
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.pop_back();
    line.erase(0, line.find_first_not_of(" \t"));
    if (!out.empty()) out += '\n';
    out += carry;
    out += line;
    carry.clear();
  }
  if (out.empty()) return "";
  return out + carry;
}

/// `event` (an ASS event as the decoders produce it) without the text written in drawing mode: between
/// {\p1} (any non-zero scale) and {\p0} the "text" is vector shapes ("m 0 0 l 100 0"), not words, and the
/// webvtt encoder would print it. Override blocks are kept for the encoder.
std::string StripAssDrawings(std::string_view event) {
  std::string out;
  bool drawing = false;
  for (size_t i = 0; i < event.size();) {
    if (event[i] != '{') {
      if (!drawing) out += event[i];
      ++i;
      continue;
    }
    const size_t close = std::min(event.find('}', i), event.size() - 1);
    const std::string_view block = event.substr(i, close - i + 1);
    for (size_t p = block.find("\\p"); p != std::string_view::npos; p = block.find("\\p", p + 2)) {
      size_t d = p + 2;
      if (d >= block.size() || block[d] < '0' || block[d] > '9') continue;  // \pos, \pbo
      int scale = 0;
      for (; d < block.size() && block[d] >= '0' && block[d] <= '9'; ++d) {
        scale = std::min(scale * 10 + (block[d] - '0'), 100);
      }
      drawing = scale != 0;
    }
    out += block;
    i = close + 1;
  }
  return out;
}

}  // namespace

namespace {

// The text subtitle codecs this project converts, whether or not this FFmpeg build decodes them.
bool IsTextCodecId(AVCodecID id) {
  switch (id) {
    case AV_CODEC_ID_MOV_TEXT:
    case AV_CODEC_ID_SUBRIP:
    case AV_CODEC_ID_ASS:
    case AV_CODEC_ID_SSA:
    case AV_CODEC_ID_WEBVTT:
    case AV_CODEC_ID_TEXT:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool IsTextSubtitleCodec(AVCodecID id) { return IsTextCodecId(id) && TextDecoder(id) != nullptr; }

std::string WhyNotText(AVCodecID id) {
  constexpr std::string_view kOcr = "cannot be converted to WebVTT without OCR";
  switch (id) {
    case AV_CODEC_ID_HDMV_PGS_SUBTITLE: return fmt::format("bitmap subtitles (PGS) {}", kOcr);
    case AV_CODEC_ID_DVB_SUBTITLE: return fmt::format("bitmap subtitles (DVB) {}", kOcr);
    case AV_CODEC_ID_DVD_SUBTITLE: return fmt::format("bitmap subtitles (DVD/VobSub) {}", kOcr);
    case AV_CODEC_ID_XSUB: return fmt::format("bitmap subtitles (XSUB) {}", kOcr);
    case AV_CODEC_ID_DVB_TELETEXT:
      return "teletext subtitles (DVB teletext) are not converted to WebVTT (they need a teletext page decoder)";
    case AV_CODEC_ID_EIA_608:
      return "closed captions (EIA-608/CEA-708) are not converted to WebVTT";
    case AV_CODEC_ID_ARIB_CAPTION:
      return "ARIB captions are not converted to WebVTT";
    case AV_CODEC_ID_SRT:
      return "SubRip with timing inside the packets (codec srt) has no decoder in this FFmpeg";
    default:
      break;
  }
  if (IsTextSubtitleCodec(id)) return "";
  const char* name = avcodec_get_name(id);
  if (IsTextCodecId(id)) return fmt::format("this FFmpeg build has no {} decoder", name);
  return fmt::format(
      "subtitle codec '{}' is not converted to WebVTT (supported: subrip, ass, ssa, mov_text, webvtt, text)", name);
}

SubtitleDecoder::SubtitleDecoder(CodecContextPtr decoder, CodecContextPtr encoder, std::string what)
    : decoder_(std::move(decoder)),
      encoder_(std::move(encoder)),
      what_(std::move(what)),
      scratch_(av_packet_alloc()) {}

Result<std::unique_ptr<SubtitleDecoder>> SubtitleDecoder::Create(const AVCodecParameters& par, std::string what) {
  if (!IsTextSubtitleCodec(par.codec_id)) {
    return Error(ErrorCode::kInvalidInput, "subtitles of {}: {}", what, WhyNotText(par.codec_id));
  }
  const AVCodec* codec = TextDecoder(par.codec_id);
  CodecContextPtr decoder(avcodec_alloc_context3(codec));
  if (decoder == nullptr) return Error(ErrorCode::kInternal, "subtitles of {}: out of memory", what);
  if (const int err = avcodec_parameters_to_context(decoder.get(), &par); err < 0) {
    return Error(ErrorCode::kInternal, "subtitles of {}: copy codec parameters: {}", what, AvErrorString(err));
  }
  decoder->codec_id = codec->id;  // SSA -> ASS
  // Packets arrive in 90 kHz: the decoders compute AVSubtitle.pts and end_display_time from this.
  decoder->pkt_timebase = kTimeBase90k;
  if (const int err = avcodec_open2(decoder.get(), codec, nullptr); err < 0) {
    return Error(ErrorCode::kInvalidInput, "subtitles of {}: open the {} decoder: {}", what, codec->name,
                 AvErrorString(err));
  }
  if (decoder->subtitle_header == nullptr) {
    return Error(ErrorCode::kInternal, "subtitles of {}: the {} decoder gave no ASS header", what, codec->name);
  }

  const AVCodec* webvtt = avcodec_find_encoder(AV_CODEC_ID_WEBVTT);
  if (webvtt == nullptr) {
    return Error(ErrorCode::kInternal, "subtitles of {}: this FFmpeg build has no webvtt encoder", what);
  }
  CodecContextPtr encoder(avcodec_alloc_context3(webvtt));
  if (encoder == nullptr) return Error(ErrorCode::kInternal, "subtitles of {}: out of memory", what);
  encoder->time_base = AVRational{1, 1000};
  // The encoder resolves the style names of ASS events (bold/italic/underline styles) through this header,
  // as ffmpeg's CLI sets it up; avcodec_free_context frees it.
  const int header_size = decoder->subtitle_header_size;
  encoder->subtitle_header = static_cast<uint8_t*>(av_mallocz(static_cast<size_t>(header_size) + 1));
  if (encoder->subtitle_header == nullptr) return Error(ErrorCode::kInternal, "subtitles of {}: out of memory", what);
  std::memcpy(encoder->subtitle_header, decoder->subtitle_header, static_cast<size_t>(header_size));
  encoder->subtitle_header_size = header_size;
  if (const int err = avcodec_open2(encoder.get(), webvtt, nullptr); err < 0) {
    return Error(ErrorCode::kInvalidInput, "subtitles of {}: the ASS header of its {} decoder is not usable: {}",
                 what, codec->name, AvErrorString(err));
  }
  std::unique_ptr<SubtitleDecoder> result(new SubtitleDecoder(std::move(decoder), std::move(encoder), std::move(what)));
  if (result->scratch_ == nullptr) return Error(ErrorCode::kInternal, "subtitles of {}: out of memory", result->what_);
  return result;
}

void SubtitleDecoder::ClosePendingBefore(int64_t time, std::vector<Cue>& out) {
  auto it = pending_.begin();
  for (; it != pending_.end() && it->start < time; ++it) {
    it->end = std::min(time, it->start + kMaxOpenCue);
    out.push_back(std::move(*it));
  }
  pending_.erase(pending_.begin(), it);
}

Status SubtitleDecoder::Decode(const AVPacket& pkt, std::vector<Cue>& out) {
  if (pkt.pts == AV_NOPTS_VALUE) {
    return Error(ErrorCode::kInvalidInput, "subtitles of {}: a packet has no timestamp", what_);
  }
  av_packet_unref(scratch_.get());
  // A reference (or, for a packet that is not reference-counted, a padded copy): the decoders read the
  // payload as a C string and rely on the zero padding after it.
  if (const int err = av_packet_ref(scratch_.get(), &pkt); err < 0) {
    return Error(ErrorCode::kInternal, "subtitles of {}: copy packet at {}: {}", what_, Seconds(pkt.pts),
                 AvErrorString(err));
  }
  SubtitleGuard decoded;
  int got = 0;
  const int ret = avcodec_decode_subtitle2(decoder_.get(), &decoded.sub, &got, scratch_.get());
  av_packet_unref(scratch_.get());
  if (ret < 0) {
    return Error(ErrorCode::kInvalidInput, "subtitles of {}: the packet at {} does not decode: {}", what_,
                 Seconds(pkt.pts), AvErrorString(ret));
  }
  // Any event, even an empty "clear" one, ends the open-ended cues before it.
  ClosePendingBefore(pkt.pts, out);
  if (got == 0) return Status::Ok();

  std::string text;
  for (unsigned i = 0; i < decoded.sub.num_rects; ++i) {
    AVSubtitleRect* rect = decoded.sub.rects[i];
    std::string part;
    if (rect->type == SUBTITLE_ASS && rect->ass != nullptr) {
      // One rect at a time, so that two dialogue lines of one event become two lines of the cue (the
      // encoder would glue them together). The encoder insists on start_display_time == 0.
      const std::string event = StripAssDrawings(rect->ass);
      AVSubtitleRect stripped = *rect;
      stripped.ass = const_cast<char*>(event.c_str());  // the encoder only reads it
      AVSubtitleRect* one_rect = &stripped;
      AVSubtitle one{};
      one.num_rects = 1;
      one.rects = &one_rect;
      one.end_display_time = decoded.sub.end_display_time;
      const size_t size = 2 * event.size() + 1024;  // tags get shorter, styles add a few bytes
      if (buffer_.size() < size) buffer_.resize(size);
      const int n = avcodec_encode_subtitle(encoder_.get(), buffer_.data(), static_cast<int>(buffer_.size()), &one);
      if (n < 0) {
        return Error(ErrorCode::kInvalidInput, "subtitles of {}: the event at {} is not valid ASS ('{:.100}'): {}",
                     what_, Seconds(pkt.pts), rect->ass, AvErrorString(n));
      }
      part = CleanCueText(std::string_view(reinterpret_cast<const char*>(buffer_.data()), static_cast<size_t>(n)),
                          /*markup=*/true);
    } else if (rect->type == SUBTITLE_TEXT && rect->text != nullptr) {
      part = CleanCueText(rect->text, /*markup=*/false);
    }
    if (part.empty()) continue;
    if (!text.empty()) text += '\n';
    text += part;
  }
  if (text.empty()) return Status::Ok();

  Cue cue;
  cue.start = pkt.pts + av_rescale(decoded.sub.start_display_time, 90, 1);
  cue.text = std::move(text);
  if (pkt.duration > 0) {
    cue.end = pkt.pts + pkt.duration;
  } else if (decoded.sub.end_display_time > decoded.sub.start_display_time &&
             decoded.sub.end_display_time != std::numeric_limits<uint32_t>::max()) {
    cue.end = pkt.pts + av_rescale(decoded.sub.end_display_time, 90, 1);
  } else {
    pending_.push_back(std::move(cue));
    return Status::Ok();
  }
  out.push_back(std::move(cue));
  return Status::Ok();
}

void SubtitleDecoder::Flush(std::vector<Cue>& out) {
  ClosePendingBefore(std::numeric_limits<int64_t>::max(), out);
}

Result<std::vector<Cue>> ReadSubtitleFile(const std::string& path) {
  AVFormatContext* raw = nullptr;
  if (const int err = avformat_open_input(&raw, path.c_str(), nullptr, nullptr); err < 0) {
    struct stat sb {};
    if (err == AVERROR_INVALIDDATA && stat(path.c_str(), &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0) {
      return Error(ErrorCode::kInvalidInput, "read subtitles '{}': the file is empty (0 bytes)", path);
    }
    if (err == AVERROR_INVALIDDATA) {
      return Error(ErrorCode::kInvalidInput,
                   "read subtitles '{}': not a subtitle file (libavformat recognizes no format in it; expected "
                   "SubRip, WebVTT or ASS/SSA)",
                   path);
    }
    return Error(ErrorCode::kInvalidInput, "read subtitles '{}': {}", path, AvErrorString(err));
  }
  InputContextPtr ic(raw);
  if (const int err = avformat_find_stream_info(ic.get(), nullptr); err < 0) {
    return Error(ErrorCode::kInvalidInput, "read subtitles '{}': {}", path, AvErrorString(err));
  }
  const int index = av_find_best_stream(ic.get(), AVMEDIA_TYPE_SUBTITLE, -1, -1, nullptr, 0);
  if (index < 0) {
    return Error(ErrorCode::kInvalidInput,
                 "read subtitles '{}': not a subtitle file (libavformat reads it as {} and finds no subtitle "
                 "stream in it)",
                 path, ic->iformat->long_name != nullptr ? ic->iformat->long_name : ic->iformat->name);
  }
  const AVStream* st = ic->streams[index];
  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<SubtitleDecoder> decoder,
                        SubtitleDecoder::Create(*st->codecpar, fmt::format("'{}'", path)));

  std::vector<Cue> cues;
  PacketPtr pkt(av_packet_alloc());
  if (pkt == nullptr) return Error(ErrorCode::kInternal, "read subtitles '{}': out of memory", path);
  while (true) {
    const int err = av_read_frame(ic.get(), pkt.get());
    if (err == AVERROR_EOF) break;
    if (err < 0) return Error(ErrorCode::kInvalidInput, "read subtitles '{}': {}", path, AvErrorString(err));
    if (pkt->stream_index == index) {
      av_packet_rescale_ts(pkt.get(), st->time_base, kTimeBase90k);
      const Status status = decoder->Decode(*pkt, cues);
      if (!status.ok()) {
        av_packet_unref(pkt.get());
        return status;
      }
    }
    av_packet_unref(pkt.get());
  }
  decoder->Flush(cues);
  if (cues.empty()) {
    return Error(ErrorCode::kInvalidInput, "read subtitles '{}': no cues (a {} file with no subtitle text in it)",
                 path, ic->iformat->name);
  }
  std::ranges::stable_sort(cues, {}, &Cue::start);
  return cues;
}

std::string RenderVttSegment(std::span<const Cue> cues, int64_t start, int64_t end) {
  std::vector<const Cue*> selected;
  for (const Cue& cue : cues) {
    if (cue.end > start && cue.start < end) selected.push_back(&cue);
  }
  std::ranges::stable_sort(selected, {}, [](const Cue* c) { return c->start; });

  // Nearest millisecond, half up; negative times are shown as 0.
  const auto ms = [](int64_t pts) -> int64_t { return pts <= 0 ? 0 : pts / 90 + (pts % 90 >= 45 ? 1 : 0); };
  const auto timestamp = [](int64_t t) {
    return fmt::format("{:02}:{:02}:{:02}.{:03}", t / 3600000, t / 60000 % 60, t / 1000 % 60, t % 1000);
  };
  std::string out(kHeader);
  for (const Cue* cue : selected) {
    const int64_t from = ms(cue->start);
    const int64_t to = std::max(ms(cue->end), from + 1);
    out += timestamp(from);
    out += " --> ";
    out += timestamp(to);
    out += '\n';
    out += cue->text;
    out += "\n\n";
  }
  return out;
}

}  // namespace khls::segmenter::internal
