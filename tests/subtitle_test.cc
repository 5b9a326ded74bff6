// Language tags (language.h) and text subtitles -> WebVTT (webvtt.h): exact
// tag and name values, exact WebVTT segment text, sidecar files written here,
// and embedded SubRip / ASS / mov_text streams made from them with the ffmpeg CLI.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "language.h"
#include "webvtt.h"

namespace fs = std::filesystem;
using khls::ErrorCode;
using khls::segmenter::internal::Cue;
using khls::segmenter::internal::InputContextPtr;
using khls::segmenter::internal::IsTextSubtitleCodec;
using khls::segmenter::internal::kTimeBase90k;
using khls::segmenter::internal::LanguageName;
using khls::segmenter::internal::PacketPtr;
using khls::segmenter::internal::ReadSubtitleFile;
using khls::segmenter::internal::RenderVttSegment;
using khls::segmenter::internal::SubtitleDecoder;
using khls::segmenter::internal::ToBcp47;
using khls::segmenter::internal::ToIso639_2B;
using khls::segmenter::internal::WhyNotText;

namespace doctest {
template <>
struct StringMaker<Cue> {
  static String convert(const Cue& c) { return fmt::format("{{{}, {}, \"{}\"}}", c.start, c.end, c.text).c_str(); }
};
template <>
struct StringMaker<std::vector<Cue>> {
  static String convert(const std::vector<Cue>& cues) {
    std::string out = "\n";
    for (const Cue& c : cues) out += fmt::format("  {{{}, {}, \"{}\"}}\n", c.start, c.end, c.text);
    return out.c_str();
  }
};
}  // namespace doctest

namespace {

constexpr int64_t kSecond = 90000;
/// Where the output timeline starts (khls::segmenter::kOutputStartPts).
constexpr int64_t kStart = 126000;

/// A scratch directory removed at the end of the test (kept when KHLS_KEEP_TEST_DIRS is set).
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "khls-subtitle-test-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    if (std::getenv("KHLS_KEEP_TEST_DIRS") == nullptr) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
  REQUIRE(out.good());
}

/// Runs a shell command (ffmpeg), failing the test with its output when it fails.
void Run(const std::string& cmd) {
  std::string output;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output.append(buf, n);
  const int status = pclose(p);
  INFO(cmd, "\n", output);
  REQUIRE(status == 0);
}

std::string Q(const std::string& s) { return "'" + s + "'"; }

/// The SubRip fixture: italics, a two-line cue, characters WebVTT must escape, an ASS alignment override and a
/// font color (both dropped), a cue after the first minute.
const std::string kSrt =
    "1\n"
    "00:00:01,000 --> 00:00:03,500\n"
    "Hello <i>world</i> & 1 < 2 > 0\n"
    "\n"
    "2\n"
    "00:00:04,000 --> 00:00:06,250\n"
    "Two lines\n"
    "<i>second</i> line\n"
    "\n"
    "3\n"
    "00:01:02,345 --> 00:01:04,000\n"
    "<b>Bold</b> {\\an8}top <font color=\"red\">red</font>\n"
    "\n";

std::vector<Cue> SrtCues(int64_t offset) {
  return {
      {offset + 1 * kSecond, offset + 3 * kSecond + kSecond / 2, "Hello <i>world</i> &amp; 1 &lt; 2 &gt; 0"},
      {offset + 4 * kSecond, offset + 6 * kSecond + kSecond / 4, "Two lines\n<i>second</i> line"},
      {offset + 62345 * 90, offset + 64 * kSecond, "<b>Bold</b> top red"},
  };
}

/// Demuxes the first subtitle stream of `path`, moves its packets to the output timeline (90 kHz, + kStart)
/// and decodes them with a SubtitleDecoder.
std::vector<Cue> DecodeEmbedded(const std::string& path, AVCodecID expected_codec) {
  AVFormatContext* raw = nullptr;
  REQUIRE(avformat_open_input(&raw, path.c_str(), nullptr, nullptr) == 0);
  InputContextPtr ic(raw);
  REQUIRE(avformat_find_stream_info(ic.get(), nullptr) >= 0);
  const int index = av_find_best_stream(ic.get(), AVMEDIA_TYPE_SUBTITLE, -1, -1, nullptr, 0);
  REQUIRE(index >= 0);
  const AVStream* st = ic->streams[index];
  REQUIRE(st->codecpar->codec_id == expected_codec);
  auto decoder = SubtitleDecoder::Create(*st->codecpar, fmt::format("'{}' stream #{}", path, index));
  REQUIRE_MESSAGE(decoder.ok(), decoder.status().message());

  std::vector<Cue> cues;
  PacketPtr pkt(av_packet_alloc());
  while (av_read_frame(ic.get(), pkt.get()) >= 0) {
    if (pkt->stream_index == index) {
      av_packet_rescale_ts(pkt.get(), st->time_base, kTimeBase90k);
      pkt->pts += kStart;
      pkt->dts += kStart;
      const khls::Status status = (*decoder)->Decode(*pkt, cues);
      REQUIRE_MESSAGE(status.ok(), status.message());
    }
    av_packet_unref(pkt.get());
  }
  (*decoder)->Flush(cues);
  return cues;
}

/// A decoder (SubRip unless said) fed with hand-made packets.
std::unique_ptr<SubtitleDecoder> MakeDecoder(AVCodecID id = AV_CODEC_ID_SUBRIP) {
  AVCodecParameters* par = avcodec_parameters_alloc();
  REQUIRE(par != nullptr);
  par->codec_type = AVMEDIA_TYPE_SUBTITLE;
  par->codec_id = id;
  auto decoder = SubtitleDecoder::Create(*par, "'test' stream #0");
  avcodec_parameters_free(&par);
  REQUIRE_MESSAGE(decoder.ok(), decoder.status().message());
  return std::move(decoder).value();
}

khls::Status Feed(SubtitleDecoder& decoder, int64_t pts, int64_t duration, const std::string& text,
                  std::vector<Cue>& out) {
  PacketPtr pkt(av_packet_alloc());
  REQUIRE(av_new_packet(pkt.get(), static_cast<int>(text.size())) == 0);
  std::copy(text.begin(), text.end(), pkt->data);
  pkt->pts = pts;
  pkt->dts = pts;
  pkt->duration = duration;
  return decoder.Decode(*pkt, out);
}

}  // namespace

TEST_CASE("ToBcp47 normalizes container language tags") {
  CHECK(ToBcp47("fre") == "fr");
  CHECK(ToBcp47("fra") == "fr");
  CHECK(ToBcp47("FR") == "fr");
  CHECK(ToBcp47("eng") == "en");
  CHECK(ToBcp47("ger") == "de");
  CHECK(ToBcp47("deu") == "de");
  CHECK(ToBcp47("chi") == "zh");
  CHECK(ToBcp47("zho") == "zh");
  CHECK(ToBcp47("en-us") == "en-US");
  CHECK(ToBcp47("pt-BR") == "pt-BR");
  CHECK(ToBcp47("pt_br") == "pt-BR");
  CHECK(ToBcp47("zh-Hant") == "zh-Hant");
  CHECK(ToBcp47("ZH-HANT-tw") == "zh-Hant-TW");
  CHECK(ToBcp47("zh-Hant-TW") == "zh-Hant-TW");
  CHECK(ToBcp47("es-419") == "es-419");
  CHECK(ToBcp47("sr-latn-rs") == "sr-Latn-RS");
  CHECK(ToBcp47("de-CH-1996") == "de-CH-1996");
  CHECK(ToBcp47("en-x-SDH") == "en-x-sdh");
  CHECK(ToBcp47("chi-TW") == "zh-TW");
  CHECK(ToBcp47("haw") == "haw");
  CHECK(ToBcp47("HAW") == "haw");
  CHECK(ToBcp47("fil") == "fil");
  CHECK(ToBcp47(std::string_view("fre\0", 4)) == "fr");  // MPEG-TS descriptors are NUL padded
  CHECK(ToBcp47(" eng ") == "en");
  // Deprecated codes.
  CHECK(ToBcp47("iw") == "he");
  CHECK(ToBcp47("in") == "id");
  CHECK(ToBcp47("mol") == "ro");
  CHECK(ToBcp47("scc") == "sr");
  // No language, or not a tag.
  CHECK(ToBcp47("") == "");
  CHECK(ToBcp47("und") == "");
  CHECK(ToBcp47("UND") == "");
  CHECK(ToBcp47("mul") == "");
  CHECK(ToBcp47("zxx") == "");
  CHECK(ToBcp47("mis") == "");
  CHECK(ToBcp47("e") == "");
  CHECK(ToBcp47("english") == "");
  CHECK(ToBcp47("12") == "");
  CHECK(ToBcp47("xx") == "");  // two letters, but not ISO 639-1
  CHECK(ToBcp47("en-") == "");
  CHECK(ToBcp47("en--US") == "");
  CHECK(ToBcp47("en-US-") == "");
  CHECK(ToBcp47("en US") == "");
  CHECK(ToBcp47("en-a") == "");  // an extension needs a subtag
  CHECK(ToBcp47("e1") == "");
}

TEST_CASE("ToIso639_2B gives the bibliographic code MPEG-TS wants") {
  CHECK(ToIso639_2B("fr") == "fre");
  CHECK(ToIso639_2B("de") == "ger");
  CHECK(ToIso639_2B("zh-Hant-TW") == "chi");
  CHECK(ToIso639_2B("pt-BR") == "por");
  CHECK(ToIso639_2B("en") == "eng");
  CHECK(ToIso639_2B("haw") == "haw");
  CHECK(ToIso639_2B("fra") == "fre");
  CHECK(ToIso639_2B("cy") == "wel");
  CHECK(ToIso639_2B("") == "und");
  CHECK(ToIso639_2B("und") == "und");
  CHECK(ToIso639_2B("xx") == "und");
  CHECK(ToIso639_2B("english") == "und");
  CHECK(ToIso639_2B("12") == "und");
}

TEST_CASE("LanguageName: autonyms, with script and region") {
  CHECK(LanguageName("en") == "English");
  CHECK(LanguageName("fr") == "Français");
  CHECK(LanguageName("fre") == "Français");
  CHECK(LanguageName("de") == "Deutsch");
  CHECK(LanguageName("es") == "Español");
  CHECK(LanguageName("it") == "Italiano");
  CHECK(LanguageName("pt") == "Português");
  CHECK(LanguageName("ja") == "日本語");
  CHECK(LanguageName("zh") == "中文");
  CHECK(LanguageName("ko") == "한국어");
  CHECK(LanguageName("ru") == "Русский");
  CHECK(LanguageName("ar") == "العربية");
  CHECK(LanguageName("hi") == "हिन्दी");
  CHECK(LanguageName("el") == "Ελληνικά");
  CHECK(LanguageName("zu") == "isiZulu");  // CLDR's inner capital kept
  CHECK(LanguageName("pt-BR") == "Português (Brazil)");
  CHECK(LanguageName("en-US") == "English (United States)");
  CHECK(LanguageName("es-419") == "Español (Latin America)");
  CHECK(LanguageName("zh-Hant-TW") == "中文 (Traditional, Taiwan)");
  CHECK(LanguageName("zh-Hans") == "中文 (Simplified)");
  CHECK(LanguageName("zh-HK") == "中文 (Hong Kong)");
  CHECK(LanguageName("en-XZ") == "English (XZ)");  // unknown region: its code
  CHECK(LanguageName("haw") == "ʻŌlelo Hawaiʻi");
  CHECK(LanguageName("yue") == "粵語");
  CHECK(LanguageName("fil") == "Filipino");
  CHECK(LanguageName("aa") == "Afar");  // no autonym in CLDR: the English name
  CHECK(LanguageName("") == "");
  CHECK(LanguageName("und") == "");
  CHECK(LanguageName("qaa") == "");  // well formed, but unknown
  CHECK(LanguageName("english") == "");
}

TEST_CASE("every ISO 639-1 code round-trips through ISO 639-2/B, and the B/T pairs agree") {
  const std::string codes =
      "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de "
      "dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id "
      "ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu "
      "lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu "
      "rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr "
      "ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu";
  std::istringstream in(codes);
  int count = 0;
  for (std::string code; in >> code; ++count) {
    CAPTURE(code);
    const std::string b = ToIso639_2B(code);
    CHECK(b.size() == 3);
    CHECK(b != "und");
    CHECK(ToBcp47(b) == code);
    CHECK(ToBcp47(code) == code);
    CHECK(!LanguageName(code).empty());
  }
  CHECK(count == 184);

  const char* pairs[][3] = {
      {"sq", "alb", "sqi"}, {"hy", "arm", "hye"}, {"eu", "baq", "eus"}, {"my", "bur", "mya"}, {"zh", "chi", "zho"},
      {"cs", "cze", "ces"}, {"nl", "dut", "nld"}, {"fr", "fre", "fra"}, {"ka", "geo", "kat"}, {"de", "ger", "deu"},
      {"el", "gre", "ell"}, {"is", "ice", "isl"}, {"mk", "mac", "mkd"}, {"mi", "mao", "mri"}, {"ms", "may", "msa"},
      {"fa", "per", "fas"}, {"ro", "rum", "ron"}, {"sk", "slo", "slk"}, {"bo", "tib", "bod"}, {"cy", "wel", "cym"},
  };
  for (const auto& [alpha2, b, t] : pairs) {
    CAPTURE(alpha2);
    CHECK(ToBcp47(b) == alpha2);
    CHECK(ToBcp47(t) == alpha2);
    CHECK(ToIso639_2B(alpha2) == b);
    CHECK(ToIso639_2B(t) == b);
  }
}

TEST_CASE("RenderVttSegment: exact text") {
  const std::string header = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n";
  // Segments of 6 s on the output timeline: [1.4, 7.4), [7.4, 13.4).
  const int64_t s0 = kStart, s1 = kStart + 6 * kSecond, s2 = kStart + 12 * kSecond;

  SUBCASE("no cue: just the header") {
    CHECK(RenderVttSegment({}, s0, s1) == header);
    const std::vector<Cue> later = {{s2, s2 + kSecond, "later"}};
    CHECK(RenderVttSegment(later, s0, s1) == header);
  }
  SUBCASE("a cue inside, and cues touching the boundaries") {
    const std::vector<Cue> cues = {
        {kStart + kSecond, kStart + 2 * kSecond, "inside"},
        {s1 - kSecond, s1, "ends at the boundary"},
        {s1, s1 + kSecond, "starts at the boundary"},
    };
    CHECK(RenderVttSegment(cues, s0, s1) == header +
                                                "00:00:02.400 --> 00:00:03.400\ninside\n\n"
                                                "00:00:06.400 --> 00:00:07.400\nends at the boundary\n\n");
    CHECK(RenderVttSegment(cues, s1, s2) == header + "00:00:07.400 --> 00:00:08.400\nstarts at the boundary\n\n");
  }
  SUBCASE("a cue spanning the boundary is in both segments, with its full times") {
    const std::vector<Cue> cues = {{s1 - kSecond / 2, s1 + kSecond, "<i>across</i>\nsecond line"}};
    const std::string body = "00:00:06.900 --> 00:00:08.400\n<i>across</i>\nsecond line\n\n";
    CHECK(RenderVttSegment(cues, s0, s1) == header + body);
    CHECK(RenderVttSegment(cues, s1, s2) == header + body);
  }
  SUBCASE("cues in start order, whatever the input order") {
    const std::vector<Cue> cues = {{kStart + 3 * kSecond, kStart + 4 * kSecond, "b"},
                                   {kStart + kSecond, kStart + 5 * kSecond, "a"}};
    CHECK(RenderVttSegment(cues, s0, s1) == header +
                                                "00:00:02.400 --> 00:00:06.400\na\n\n"
                                                "00:00:04.400 --> 00:00:05.400\nb\n\n");
  }
  SUBCASE("escaped text passes through as is") {
    const std::vector<Cue> cues = {{kStart, kStart + kSecond, "a &lt; b &amp;&amp; c &gt; d"}};
    CHECK(RenderVttSegment(cues, s0, s1) == header + "00:00:01.400 --> 00:00:02.400\na &lt; b &amp;&amp; c &gt; d\n\n");
  }
  SUBCASE("millisecond rounding: nearest, half up, and never an end at or before the start") {
    const std::vector<Cue> cues = {
        {kSecond + 44, kSecond + 46, "0.49 ms and 0.51 ms"},  // 1000.489 -> 1000, 1000.511 -> 1001
        {2 * kSecond + 45, 2 * kSecond + 134, "half up"},      // 2000.5 -> 2001, 2001.489 -> 2001 -> 2002
        {3 * kSecond, 3 * kSecond + 1, "one tick"},            // 3000 -> 3000, 3000.011 -> 3000 -> 3001
        {25 * 3600 * kSecond + 59 * kSecond + 89999, 25 * 3600 * kSecond + 61 * kSecond, "hours"},
    };
    const std::string expected = header +
                                 "00:00:01.000 --> 00:00:01.001\n0.49 ms and 0.51 ms\n\n"
                                 "00:00:02.001 --> 00:00:02.002\nhalf up\n\n"
                                 "00:00:03.000 --> 00:00:03.001\none tick\n\n"
                                 "25:01:00.000 --> 25:01:01.000\nhours\n\n";
    CHECK(RenderVttSegment(cues, 0, 26 * 3600 * kSecond) == expected);
  }
}

TEST_CASE("ReadSubtitleFile: SubRip, WebVTT and ASS sidecars") {
  TempDir dir;
  SUBCASE("srt") {
    WriteFile(dir / "movie.en.srt", kSrt);
    auto cues = ReadSubtitleFile(dir / "movie.en.srt");
    REQUIRE_MESSAGE(cues.ok(), cues.status().message());
    CHECK(*cues == SrtCues(0));
  }
  SUBCASE("vtt: cue settings dropped, entities decoded and escaped again, voice and class spans dropped") {
    WriteFile(dir / "movie.fr.vtt",
              "WEBVTT\n\n"
              "NOTE a comment\n\n"
              "1\n"
              "00:00:01.000 --> 00:00:02.500 align:start position:10%\n"
              "Caf\u00e9 &amp; cr\u00e8me &lt;3\n"
              "\n"
              "00:00:03.000 --> 00:00:04.000\n"
              "<v Roger>Tr\u00e8s <c.yellow>bien</c></v>\n"
              "<i>oui</i>\n"
              "\n"
              "01:00:00.000 --> 01:00:01.000\n"
              "<b>fin</b>\n");
    auto cues = ReadSubtitleFile(dir / "movie.fr.vtt");
    REQUIRE_MESSAGE(cues.ok(), cues.status().message());
    const std::vector<Cue> expected = {
        {1 * kSecond, 2 * kSecond + kSecond / 2, "Caf\u00e9 &amp; cr\u00e8me &lt;3"},
        {3 * kSecond, 4 * kSecond, "Tr\u00e8s bien\n<i>oui</i>"},
        {3600 * kSecond, 3601 * kSecond, "<b>fin</b>"},
    };
    CHECK(*cues == expected);
  }
  SUBCASE("ass: styles, overrides, positioning dropped, drawings removed, comments skipped") {
    WriteFile(dir / "movie.ass",
              "[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n"
              "[V4+ Styles]\n"
              "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, "
              "Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, "
              "Alignment, MarginL, MarginR, MarginV, Encoding\n"
              "Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n"
              "Style: Thought,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,-1,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
              "[Events]\n"
              "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
              "Dialogue: 0,0:00:04.00,0:00:06.25,Thought,,0,0,0,,I think\\Nso{\\i0} plain\n"
              "Dialogue: 0,0:00:01.00,0:00:03.50,Default,,0,0,0,,{\\an8}{\\pos(10,20)}Top {\\c&H00FFFF&}yellow{\\c} "
              "and {\\b1}bold{\\b0}\n"
              "Comment: 0,0:00:02.00,0:00:03.00,Default,,0,0,0,,not shown\n"
              "Dialogue: 0,0:00:05.00,0:00:07.00,Default,,0,0,0,,a\\hb < c & {\\u1}d{\\u0}\\N\\N{\\s1}strike{\\s0}\n"
              "Dialogue: 0,0:00:08.00,0:00:09.00,Default,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100{\\p0}\n"
              "Dialogue: 0,0:01:02.35,0:01:04.00,Default,,0,0,0,,last\n");
    auto cues = ReadSubtitleFile(dir / "movie.ass");
    REQUIRE_MESSAGE(cues.ok(), cues.status().message());
    const std::vector<Cue> expected = {
        {1 * kSecond, 3 * kSecond + kSecond / 2, "Top yellow and <b>bold</b>"},
        {4 * kSecond, 6 * kSecond + kSecond / 4, "<i>I think\nso</i> plain"},
        {5 * kSecond, 7 * kSecond, "a\u00a0b &lt; c &amp; <u>d</u>\nstrike"},
        {6235 * 900, 64 * kSecond, "last"},
    };
    CHECK(*cues == expected);
  }
}

TEST_CASE("ReadSubtitleFile: errors name the file and the problem") {
  TempDir dir;
  const auto check = [](const std::string& path, const std::string& problem) {
    auto cues = ReadSubtitleFile(path);
    REQUIRE(!cues.ok());
    CHECK(cues.status().code() == ErrorCode::kInvalidInput);
    const std::string message = cues.status().message();
    CAPTURE(message);
    CHECK(message.find("'" + path + "'") != std::string::npos);
    CHECK(message.find(problem) != std::string::npos);
  };
  check(dir / "missing.srt", "No such file or directory");
  WriteFile(dir / "empty.srt", "");
  check(dir / "empty.srt", "the file is empty");
  WriteFile(dir / "words.srt", "the quick brown fox jumps over\nthe lazy dog, again and again\n");
  check(dir / "words.srt", "not a subtitle file");
  WriteFile(dir / "nocue.vtt", "WEBVTT\n\n");
  check(dir / "nocue.vtt", "no cues");
  // An MKV with audio only: a media file, but no subtitle stream in it.
  Run(fmt::format("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i sine=d=0.2 -c:a pcm_s16le {}",
                  Q(dir / "audio.mkv")));
  check(dir / "audio.mkv", "no subtitle stream");
}

TEST_CASE("SubtitleDecoder on embedded SubRip, ASS and mov_text streams gives the sidecar's cues") {
  TempDir dir;
  const std::string srt = dir / "in.srt";
  WriteFile(srt, kSrt);
  auto sidecar = ReadSubtitleFile(srt);
  REQUIRE_MESSAGE(sidecar.ok(), sidecar.status().message());
  std::vector<Cue> expected = *sidecar;
  for (Cue& cue : expected) {
    cue.start += kStart;
    cue.end += kStart;
  }
  CHECK(expected == SrtCues(kStart));

  const std::string ffmpeg = "ffmpeg -nostdin -hide_banner -loglevel error -y";
  SUBCASE("SubRip in Matroska") {
    Run(fmt::format("{} -i {} -c:s srt {}", ffmpeg, Q(srt), Q(dir / "subrip.mkv")));
    CHECK(DecodeEmbedded(dir / "subrip.mkv", AV_CODEC_ID_SUBRIP) == expected);
  }
  SUBCASE("ASS in Matroska") {
    Run(fmt::format("{} -i {} -c:s ass {}", ffmpeg, Q(srt), Q(dir / "ass.mkv")));
    CHECK(DecodeEmbedded(dir / "ass.mkv", AV_CODEC_ID_ASS) == expected);
  }
  SUBCASE("mov_text in MP4 (its style records keep italics and bold; the empty samples between cues are dropped)") {
    Run(fmt::format("{} -i {} -c:s mov_text {}", ffmpeg, Q(srt), Q(dir / "movtext.mp4")));
    CHECK(DecodeEmbedded(dir / "movtext.mp4", AV_CODEC_ID_MOV_TEXT) == expected);
  }
}

TEST_CASE("SubtitleDecoder: open-ended cues, empty cues, damaged packets") {
  std::vector<Cue> out;
  SUBCASE("duration 0: until the next packet, at most 10 s; Flush closes the last one") {
    auto decoder = MakeDecoder();
    REQUIRE(Feed(*decoder, 1 * kSecond, 0, "A", out).ok());
    CHECK(out.empty());
    REQUIRE(Feed(*decoder, 3 * kSecond, 0, "B", out).ok());
    CHECK(out == std::vector<Cue>{{1 * kSecond, 3 * kSecond, "A"}});
    REQUIRE(Feed(*decoder, 20 * kSecond, 2 * kSecond, "C", out).ok());  // B is capped at 10 s
    REQUIRE(Feed(*decoder, 30 * kSecond, 0, "D", out).ok());
    REQUIRE(Feed(*decoder, 31 * kSecond, 0, "", out).ok());  // an empty packet clears D
    REQUIRE(Feed(*decoder, 40 * kSecond, 0, "E", out).ok());
    decoder->Flush(out);
    const std::vector<Cue> expected = {
        {1 * kSecond, 3 * kSecond, "A"},  {3 * kSecond, 13 * kSecond, "B"},  {20 * kSecond, 22 * kSecond, "C"},
        {30 * kSecond, 31 * kSecond, "D"}, {40 * kSecond, 50 * kSecond, "E"},
    };
    CHECK(out == expected);
  }
  SUBCASE("escaping, kept tags, dropped tags, no blank line inside a cue") {
    auto decoder = MakeDecoder();
    REQUIRE(Feed(*decoder, kSecond, kSecond, "x < y && y > z --> <i>ok</i> <s>gone</s> <u>u</u>", out).ok());
    REQUIRE(Feed(*decoder, 3 * kSecond, kSecond, "<i>\nline</i>", out).ok());
    REQUIRE(Feed(*decoder, 5 * kSecond, kSecond, "   \n  ", out).ok());  // nothing visible: no cue
    const std::vector<Cue> expected = {
        {kSecond, 2 * kSecond, "x &lt; y &amp;&amp; y &gt; z --&gt; <i>ok</i> gone <u>u</u>"},
        {3 * kSecond, 4 * kSecond, "<i>line</i>"},
    };
    CHECK(out == expected);
  }
  SUBCASE("raw text: the ASS escapes its decoder adds are undone") {
    auto decoder = MakeDecoder(AV_CODEC_ID_TEXT);
    REQUIRE(Feed(*decoder, kSecond, kSecond, "a {b} \\ c & d\nline 2\n", out).ok());
    CHECK(out == std::vector<Cue>{{kSecond, 2 * kSecond, "a {b} \\ c &amp; d\nline 2"}});
  }
  SUBCASE("a damaged packet is kInvalidInput naming the stream and the time") {
    auto decoder = MakeDecoder();
    const khls::Status status = Feed(*decoder, 2 * kSecond + 4500, kSecond, "bad \xff\xfe utf-8", out);
    REQUIRE(!status.ok());
    CHECK(status.code() == ErrorCode::kInvalidInput);
    CAPTURE(status.message());
    CHECK(status.message().find("'test' stream #0") != std::string::npos);
    CHECK(status.message().find("at 2.050 s") != std::string::npos);
  }
  SUBCASE("a packet without pts") {
    auto decoder = MakeDecoder();
    const khls::Status status = Feed(*decoder, AV_NOPTS_VALUE, kSecond, "x", out);
    CHECK(status.code() == ErrorCode::kInvalidInput);
    CHECK(status.message().find("no timestamp") != std::string::npos);
  }
}

TEST_CASE("text and bitmap subtitle codecs") {
  for (AVCodecID id : {AV_CODEC_ID_MOV_TEXT, AV_CODEC_ID_SUBRIP, AV_CODEC_ID_ASS, AV_CODEC_ID_SSA,
                       AV_CODEC_ID_WEBVTT, AV_CODEC_ID_TEXT}) {
    CAPTURE(avcodec_get_name(id));
    CHECK(IsTextSubtitleCodec(id));
    CHECK(WhyNotText(id) == "");
  }
  for (AVCodecID id : {AV_CODEC_ID_HDMV_PGS_SUBTITLE, AV_CODEC_ID_DVB_SUBTITLE, AV_CODEC_ID_DVD_SUBTITLE,
                       AV_CODEC_ID_XSUB, AV_CODEC_ID_DVB_TELETEXT, AV_CODEC_ID_EIA_608, AV_CODEC_ID_SRT,
                       AV_CODEC_ID_MICRODVD, AV_CODEC_ID_H264}) {
    CAPTURE(avcodec_get_name(id));
    CHECK(!IsTextSubtitleCodec(id));
    CHECK(!WhyNotText(id).empty());
  }
  CHECK(WhyNotText(AV_CODEC_ID_HDMV_PGS_SUBTITLE) ==
        "bitmap subtitles (PGS) cannot be converted to WebVTT without OCR");
  CHECK(WhyNotText(AV_CODEC_ID_DVD_SUBTITLE) ==
        "bitmap subtitles (DVD/VobSub) cannot be converted to WebVTT without OCR");

  AVCodecParameters* par = avcodec_parameters_alloc();
  REQUIRE(par != nullptr);
  par->codec_type = AVMEDIA_TYPE_SUBTITLE;
  par->codec_id = AV_CODEC_ID_HDMV_PGS_SUBTITLE;
  auto decoder = SubtitleDecoder::Create(*par, "'movie.mkv' stream #3");
  avcodec_parameters_free(&par);
  REQUIRE(!decoder.ok());
  CHECK(decoder.status().code() == ErrorCode::kInvalidInput);
  CHECK(decoder.status().message() ==
        "subtitles of 'movie.mkv' stream #3: bitmap subtitles (PGS) cannot be converted to WebVTT without OCR");
}
