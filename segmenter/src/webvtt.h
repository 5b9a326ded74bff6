// Text subtitles -> WebVTT: decoding embedded subtitle streams and sidecar
// files into cues, and rendering the cues of one media segment as a WebVTT
// segment for an HLS SUBTITLES rendition.
//
// Every text subtitle decoder in libavcodec produces ASS events; libavcodec's
// "webvtt" encoder turns their markup into WebVTT markup (bold, italic and
// underline survive; colors, fonts, sizes, positioning and karaoke are
// dropped; text in ASS drawing mode is removed here first). Cue text is then
// made safe for WebVTT here: & < > escaped, only <i>, <b>, <u> kept, no blank
// line inside a cue.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "av_handles.h"
#include "khls/status.h"

namespace khls::segmenter::internal {

/// One cue on the output timeline (90 kHz), its text in WebVTT cue-text syntax: & < > escaped, only
/// <i>, <b>, <u> tags kept, lines separated by '\n', no empty lines inside (a blank line would end the cue).
struct Cue {
  int64_t start = 0;
  int64_t end = 0;
  std::string text;
  bool operator==(const Cue&) const = default;
};

/// Text subtitle codecs that can become WebVTT: mov_text, subrip, ass, ssa, webvtt, text. Not
/// AV_CODEC_ID_SRT (SubRip with the timing line inside each packet): FFmpeg 5.1 has no decoder for it (its
/// "srt" decoder is an alias of subrip) and no demuxer produces it.
bool IsTextSubtitleCodec(AVCodecID id);

/// Why a subtitle codec cannot become WebVTT, for users: "bitmap subtitles (PGS) cannot be converted to WebVTT
/// without OCR", "teletext subtitles (dvb_teletext) ...", "subtitle codec 'x' is not supported ...". "" for a
/// codec IsTextSubtitleCodec accepts.
std::string WhyNotText(AVCodecID id);

/// Owns an AVCodecContext (avcodec_free_context also frees its subtitle_header).
struct CodecContextDeleter {
  void operator()(AVCodecContext* ctx) const { avcodec_free_context(&ctx); }
};
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;

/// Decodes the packets of one text subtitle stream into cues, using libavcodec's own subtitle decoders
/// (they all produce ASS events) and libavcodec's "webvtt" subtitle encoder to turn ASS markup into WebVTT
/// markup (given the decoder's subtitle_header, as ffmpeg's CLI does). Times come from the packet.
class SubtitleDecoder {
 public:
  /// `par`: the stream's codec parameters (extradata carries the ASS header / mov_text style); `what` names
  /// the stream in messages ("'movie.mkv' stream #3"). kInvalidInput for a codec that is not text (the
  /// message says why, see WhyNotText) or a decoder that refuses the parameters.
  static Result<std::unique_ptr<SubtitleDecoder>> Create(const AVCodecParameters& par, std::string what);

  /// Decodes one packet whose pts and duration are already on the output timeline in 90 kHz, in
  /// presentation order. The cue lasts [pts, pts + duration) (shifted by the decoder's start_display_time,
  /// which the text decoders leave 0); duration 0 means unknown: the cue then stays pending until the next
  /// packet (a cue, or an empty "clear" packet as mov_text sends) or Flush(), and ends there, at most 10 s
  /// after its start. Appends the cues that are finished to `out`, in start order. An event with several
  /// dialogue lines becomes one cue, its lines joined. Cues whose text is empty once converted are dropped.
  /// kInvalidInput naming `what` and the time for a packet without pts or that does not decode (damaged
  /// data, invalid UTF-8, unparsable ASS event).
  Status Decode(const AVPacket& pkt, std::vector<Cue>& out);

  /// Closes pending open-ended cues (end of stream: they last 10 s) and appends them to `out`.
  void Flush(std::vector<Cue>& out);

  SubtitleDecoder(const SubtitleDecoder&) = delete;
  SubtitleDecoder& operator=(const SubtitleDecoder&) = delete;

 private:
  SubtitleDecoder(CodecContextPtr decoder, CodecContextPtr encoder, std::string what);
  /// Closes (and appends to `out`) the pending cues that start before `time`, ending them at `time` or
  /// 10 s after their start, whichever is earlier.
  void ClosePendingBefore(int64_t time, std::vector<Cue>& out);

  CodecContextPtr decoder_;
  CodecContextPtr encoder_;  ///< libavcodec's webvtt encoder, with the decoder's subtitle_header
  std::string what_;
  PacketPtr scratch_;            ///< a mutable reference to the packet being decoded
  std::vector<uint8_t> buffer_;  ///< the encoder's output
  std::vector<Cue> pending_;     ///< open-ended cues, in start order
};

/// Reads a whole sidecar subtitle file (.srt, .vtt, .ass/.ssa; libavformat probes it) into cues, times
/// relative to the file's zero (90 kHz), sorted by start. Fails with kInvalidInput naming the file and saying
/// which problem it has: missing or unreadable, empty, not a subtitle file (no format recognized, or no
/// subtitle stream in what libavformat recognized), bitmap subtitles, a damaged cue, or no cues.
Result<std::vector<Cue>> ReadSubtitleFile(const std::string& path);

/// One WebVTT segment for the media segment [start, end) (90 kHz, output timeline):
///   "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n" then every cue that overlaps
///   [start, end) (cue.end > start && cue.start < end), in start order (stable), each as
///   "HH:MM:SS.mmm --> HH:MM:SS.mmm\n<text>\n\n" with the cue's own full times (not clipped), times being
///   the output timeline in seconds (pts / 90000, rounded to the nearest millisecond, negative times shown as
///   0), so the map above is the identity (MPEG-TS 126000 ticks = 1.4 s, where the output timeline starts). A
///   cue that spans a segment boundary is in both segments (players de-duplicate identical cues). A segment
///   with no cue is just the header. Deterministic bytes; a cue is always shown ending at least 1 ms after it
///   starts, whatever the rounding.
std::string RenderVttSegment(std::span<const Cue> cues, int64_t start, int64_t end);

}  // namespace khls::segmenter::internal
