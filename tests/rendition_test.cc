// Titles of several tracks through the real broker: audio languages, subtitles
// (embedded and sidecar) and a bitrate ladder become renditions of one master
// playlist; nothing is lost; a misaligned ladder is refused before anything is
// published; re-packaging from the log rebuilds them byte for byte.
#include <doctest/doctest.h>

#include <regex>

#include <fmt/format.h>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

struct Pipeline {
  std::string topic = Unique("renditions");
  TempDir out;

  CommandResult Ingest(const std::string& inputs, const std::string& title, const std::string& extra = "") {
    return Run(fmt::format("{} ingest {} --title {} --brokers {} --topic {} {}", kBin, inputs, Quote(title), Brokers(),
                           topic, extra));
  }
  CommandResult Package(const std::string& title, const fs::path& dir) {
    return Run(fmt::format("timeout 120 {} package --out {} --brokers {} --topic {} --group {} --until-complete {}",
                           kBin, Quote(dir.string()), Brokers(), topic, Unique("g"), Quote(title)));
  }
};

std::string M(const char* name) { return Quote((kMedia / name).string()); }

// ffmpeg decodes `url` (decoding, and copying: timestamps must never go backwards) without a word.
void CheckDecodes(const std::string& url) {
  for (const char* mode : {"-c:s webvtt ", "-c copy "}) {
    auto r = Run(fmt::format("ffmpeg -nostdin -v error -i {} -map 0 {}-f null -", Quote(url), mode));
    CHECK_MESSAGE(r.exit_code == 0, url << " " << mode << r.output);
    CHECK_MESSAGE(r.output.empty(), url << " " << mode << r.output);
  }
}

std::string Attr(const std::map<std::string, std::string>& attrs, const std::string& key) {
  auto it = attrs.find(key);
  return it == attrs.end() ? "" : it->second;
}

}  // namespace

TEST_CASE("two variants, two audio languages, embedded and sidecar subtitles: every track is a rendition") {
  RequireBroker();
  Pipeline p;
  auto ing = p.Ingest(M("multilang.mkv") + " " + M("ladder_b.mp4"), "movie",
                      "--segment-duration 2 --subtitles " + M("sidecar.fr.vtt") + ":fr-CA");
  REQUIRE_MESSAGE(ing.exit_code == 0, ing.output);
  // Ingest says, per input stream, what it carries and what it skips and why.
  for (const char* line : {"input 1 stream #0: video h264", "-> rendition video-240p",
                           "input 1 stream #1: audio aac LC 2 ch 48000 Hz lang=eng \"English\" [default] -> rendition audio-en",
                           "input 1 stream #2: audio aac LC 2 ch 48000 Hz lang=fre \"Français\" -> rendition audio-fr",
                           "input 1 stream #3: subtitles subrip lang=eng -> rendition subs-en",
                           "input 1 stream #4: subtitles ass lang=fre -> rendition subs-fr",
                           "input 2 stream #0: video h264 High 480x270", "-> rendition video-270p",
                           "input 2 stream #1: audio aac", "skipped: audio and subtitles are taken from the first input",
                           "sidecar.fr.vtt': subtitle file, 3 cues -> rendition subs-fr-ca"})
    CHECK_MESSAGE(ing.output.find(line) != std::string::npos, line << "\n" << ing.output);

  const fs::path dir = p.out.path() / "live";
  auto pkg = p.Package("movie", dir);
  REQUIRE_MESSAGE(pkg.exit_code == 0, pkg.output);
  const fs::path title = dir / "movie";
  const std::string master_text = ReadFile(title / "master.m3u8");
  const Master master = ParseMaster(master_text);
  INFO(master_text);

  // Audio: one group, English the default, both with their language, name and channels.
  auto audio = master.Media("AUDIO");
  REQUIRE(audio.size() == 2);
  CHECK(Attr(audio[0], "LANGUAGE") == "en");
  CHECK(Attr(audio[0], "NAME") == "English");
  CHECK(Attr(audio[0], "DEFAULT") == "YES");
  CHECK(Attr(audio[1], "LANGUAGE") == "fr");
  CHECK(Attr(audio[1], "NAME") == "Français");
  CHECK(Attr(audio[1], "DEFAULT") == "NO");
  for (const auto& a : audio) {
    CHECK(Attr(a, "GROUP-ID") == "audio-mp4a.40.2");
    CHECK(Attr(a, "AUTOSELECT") == "YES");
    CHECK(Attr(a, "CHANNELS") == "2");
  }
  // Subtitles: the two embedded tracks and the sidecar file.
  auto subs = master.Media("SUBTITLES");
  REQUIRE(subs.size() == 3);
  CHECK(Attr(subs[0], "LANGUAGE") == "en");
  CHECK(Attr(subs[1], "LANGUAGE") == "fr");
  CHECK(Attr(subs[2], "LANGUAGE") == "fr-CA");
  CHECK(Attr(subs[2], "NAME") == "Français (Canada)");
  // Two variants referring to both groups, with both codecs and measured bandwidths.
  REQUIRE(master.variants.size() == 2);
  for (const auto& v : master.variants) {
    CHECK(Attr(v.attrs, "AUDIO") == "audio-mp4a.40.2");
    CHECK(Attr(v.attrs, "SUBTITLES") == "subs");
    CHECK(std::regex_match(Attr(v.attrs, "CODECS"), std::regex(R"(avc1\.[0-9a-f]{6},mp4a\.40\.2)")));
    CHECK(std::stoll(Attr(v.attrs, "BANDWIDTH")) >= std::stoll(Attr(v.attrs, "AVERAGE-BANDWIDTH")));
    CHECK(Attr(v.attrs, "FRAME-RATE") == "25.000");
  }
  CHECK(Attr(master.variants[0].attrs, "RESOLUTION") == "320x240");
  CHECK(Attr(master.variants[1].attrs, "RESOLUTION") == "480x270");

  // hls-parser in strict mode accepts every playlist (RFC 8216 MUSTs).
  std::string files = Quote((title / "master.m3u8").string());
  for (const std::string& uri : master.Playlists()) files += " " + Quote((title / uri).string());
  auto valid = Run("node " + Quote((kSource / "tests/player/validate.mjs").string()) + " " + files);
  CHECK_MESSAGE(valid.exit_code == 0, valid.output);

  // Every playlist decodes cleanly, and the whole title too.
  CheckDecodes((title / "master.m3u8").string());
  for (const std::string& uri : master.Playlists()) {
    CAPTURE(uri);
    const std::string pl = ReadFile(title / uri);
    CHECK(pl.ends_with("#EXT-X-ENDLIST\n"));
    CHECK(PlaylistSegments(pl).size() == 10);  // 20 s in 2 s groups, in every rendition
    CheckDecodes((title / uri).string());
  }
  // Each track lasts what it lasts in its source (within 0.1 s).
  const std::string multilang = (kMedia / "multilang.mkv").string();
  CHECK(std::abs(PlaylistDuration(ReadFile(title / "v1/audio-en/index.m3u8")) - TrackDuration(multilang, "a:0")) < 0.1);
  CHECK(std::abs(PlaylistDuration(ReadFile(title / "v1/audio-fr/index.m3u8")) - TrackDuration(multilang, "a:1")) < 0.1);
  CHECK(std::abs(PlaylistDuration(ReadFile(title / "v1/video-240p/index.m3u8")) - TrackDuration(multilang, "v:0")) < 0.1);
  CHECK(std::abs(PlaylistDuration(ReadFile(title / "v1/video-270p/index.m3u8")) -
                 TrackDuration((kMedia / "ladder_b.mp4").string(), "v:0")) < 0.1);

  // The French audio is French in the TS (ISO 639 language descriptor), and is the 660 Hz tone.
  auto lang = RunStdout("ffprobe -v error -show_entries stream_tags=language -of csv=p=0 " +
                        Quote((title / "v1/audio-fr/seg-000003.ts").string()));
  CHECK(lang.output == "fre\n");
  auto en = RunStdout("ffprobe -v error -show_entries stream_tags=language -of csv=p=0 " +
                      Quote((title / "v1/audio-en/seg-000003.ts").string()));
  CHECK(en.output == "eng\n");

  // Cues land in the WebVTT segments of their time, a boundary cue in both; the timeline map is the identity.
  const std::string vtt2 = ReadFile(title / "v1/subs-en/seg-000002.vtt");
  CHECK(vtt2.starts_with("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:126000,LOCAL:00:00:01.400\n\n"));
  CHECK(vtt2.find("00:00:05.400 --> 00:00:06.900\n<i>Italic cue</i>\n") != std::string::npos);
  CHECK(vtt2.find("00:00:06.900 --> 00:00:07.900\nBoundary cue\n") != std::string::npos);
  CHECK(ReadFile(title / "v1/subs-en/seg-000003.vtt").find("Boundary cue") != std::string::npos);
  CHECK(ReadFile(title / "v1/subs-fr/seg-000003.vtt").find("Réplique en <i>italique</i>") != std::string::npos);
  CHECK(ReadFile(title / "v1/subs-fr-ca/seg-000001.vtt").find("00:00:03.400 --> 00:00:05.400\nBonjour du fichier à côté") !=
        std::string::npos);

  // topic describe sees the renditions; repackage rebuilds the same bytes from the log alone.
  auto describe = Run(fmt::format("{} topic describe --brokers {} --topic {}", kBin, Brokers(), p.topic));
  CHECK_MESSAGE(std::regex_search(describe.output, std::regex(R"(movie\s+\d+\s+1\s+2v2a3s\s+1\s+10\s+20\.0)")),
                describe.output);
  const fs::path rebuilt = p.out.path() / "rebuilt";
  auto re = Run(fmt::format("{} repackage --title movie --out {} --brokers {} --topic {}", kBin,
                            Quote(rebuilt.string()), Brokers(), p.topic));
  REQUIRE_MESSAGE(re.exit_code == 0, re.output);
  CHECK(TreeDigest(rebuilt) == TreeDigest(dir));

  // The same inputs again: complete, nothing to publish. Other options are another source.
  auto again = p.Ingest(M("multilang.mkv") + " " + M("ladder_b.mp4"), "movie",
                        "--segment-duration 2 --subtitles " + M("sidecar.fr.vtt") + ":fr-CA");
  CHECK(again.exit_code == 0);
  CHECK(again.output.find("already complete") != std::string::npos);
  auto other = p.Ingest(M("multilang.mkv") + " " + M("ladder_b.mp4"), "movie", "--segment-duration 2 --audio fr");
  CHECK(other.exit_code == 2);
  CHECK(other.output.find("different source") != std::string::npos);
}

TEST_CASE("a three-variant ladder with sidecar subtitles, and --audio choosing languages") {
  RequireBroker();
  Pipeline p;
  auto ing = p.Ingest(M("ladder_a.mp4") + " " + M("ladder_b.mp4") + " " + M("ladder_c.mp4"), "ladder",
                      "--subtitles " + M("sidecar.en.srt"));
  REQUIRE_MESSAGE(ing.exit_code == 0, ing.output);
  const fs::path dir = p.out.path() / "out";
  REQUIRE(p.Package("ladder", dir).exit_code == 0);
  const Master master = ParseMaster(ReadFile(dir / "ladder/master.m3u8"));
  REQUIRE(master.variants.size() == 3);
  std::vector<std::string> sizes;
  for (const auto& v : master.variants) sizes.push_back(Attr(v.attrs, "RESOLUTION"));
  CHECK(sizes == std::vector<std::string>{"640x360", "480x270", "320x180"});
  // Measured bandwidths follow the ladder.
  CHECK(std::stoll(Attr(master.variants[0].attrs, "AVERAGE-BANDWIDTH")) >
        std::stoll(Attr(master.variants[1].attrs, "AVERAGE-BANDWIDTH")));
  CHECK(std::stoll(Attr(master.variants[1].attrs, "AVERAGE-BANDWIDTH")) >
        std::stoll(Attr(master.variants[2].attrs, "AVERAGE-BANDWIDTH")));
  REQUIRE(master.Media("SUBTITLES").size() == 1);
  CHECK(Attr(master.Media("SUBTITLES")[0], "LANGUAGE") == "en");  // from the file name
  // Every variant cut at the same points.
  const std::string a = ReadFile(dir / "ladder/v1/video-360p/index.m3u8");
  for (const char* v : {"v1/video-270p/index.m3u8", "v1/video-180p/index.m3u8"}) {
    const std::string other = ReadFile(dir / "ladder" / v);
    CHECK(PlaylistSegments(other).size() == PlaylistSegments(a).size());
    CHECK(std::abs(PlaylistDuration(other) - PlaylistDuration(a)) < 0.05);
  }
  CheckDecodes((dir / "ladder/master.m3u8").string());

  // --audio: only the French track of multilang.mkv; a language it lacks is a usage error.
  auto fr = p.Ingest(M("multilang.mkv"), "french", "--audio fr");
  REQUIRE_MESSAGE(fr.exit_code == 0, fr.output);
  CHECK(fr.output.find("lang=eng \"English\" [default] -> skipped: language 'en' is not in --audio") != std::string::npos);
  REQUIRE(p.Package("french", dir).exit_code == 0);
  auto audio = ParseMaster(ReadFile(dir / "french/master.m3u8")).Media("AUDIO");
  REQUIRE(audio.size() == 1);
  CHECK(Attr(audio[0], "LANGUAGE") == "fr");
  CHECK(Attr(audio[0], "DEFAULT") == "YES");
  auto de = p.Ingest(M("multilang.mkv"), "german", "--audio de");
  CHECK(de.exit_code == 2);
  CHECK(de.output.find("has no audio track in that language (it has: en, fr)") != std::string::npos);
}

TEST_CASE("bitmap subtitles are listed as skipped, with the reason; the title is carried without them") {
  RequireBroker();
  Pipeline p;
  auto r = p.Ingest(M("pgs.mkv"), "pgs");
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("stream #2: subtitles hdmv_pgs_subtitle lang=eng -> skipped: bitmap subtitles (PGS) cannot be "
                      "converted to WebVTT without OCR") != std::string::npos);
  const fs::path dir = p.out.path() / "out";
  REQUIRE(p.Package("pgs", dir).exit_code == 0);
  const Master master = ParseMaster(ReadFile(dir / "pgs/master.m3u8"));
  CHECK(master.Media("SUBTITLES").empty());
  CHECK(master.Media("AUDIO").size() == 1);
}

TEST_CASE("a ladder whose keyframes disagree is refused before anything is published") {
  RequireBroker();
  Pipeline p;
  auto r = p.Ingest(M("ladder_a.mp4") + " " + M("ladder_misaligned.mp4"), "bad");
  CHECK(r.exit_code == 3);
  CHECK_MESSAGE(r.output.find("ladder_misaligned.mp4' has no keyframe at 6.000 s, where '") != std::string::npos,
                r.output);
  CHECK(r.output.find("its nearest keyframes are at 4.800 s and 7.200 s") != std::string::npos);
  // Nothing reached the broker: the topic was never created.
  auto topic = Run("kcat -b " + Brokers() + " -L -t " + p.topic + " -m 5");
  CHECK(topic.output.find("partition 0") == std::string::npos);
  // An input after the first must have video.
  auto audio_only = p.Ingest(M("h264_aac.mp4") + " " + M("audio_only.m4a"), "bad");
  CHECK(audio_only.exit_code == 3);
  CHECK(audio_only.output.find("audio_only.m4a' has no video stream") != std::string::npos);
}

TEST_CASE("a file joined from copies of one clip plays with strictly increasing timestamps") {
  RequireBroker();
  Pipeline p;
  REQUIRE(p.Ingest(M("concat5.mp4"), "joined").exit_code == 0);
  const fs::path dir = p.out.path() / "out";
  REQUIRE(p.Package("joined", dir).exit_code == 0);
  const Master master = ParseMaster(ReadFile(dir / "joined/master.m3u8"));
  CheckDecodes((dir / "joined/master.m3u8").string());
  for (const std::string& uri : master.Playlists()) CheckDecodes((dir / "joined" / uri).string());
  const std::string source = (kMedia / "concat5.mp4").string();
  CHECK(std::abs(PlaylistDuration(ReadFile(dir / "joined" / master.Media("AUDIO").at(0).at("URI"))) -
                 TrackDuration(source, "a:0")) < 0.1);
  CHECK(std::abs(PlaylistDuration(ReadFile(dir / "joined" / master.variants.at(0).uri)) - TrackDuration(source, "v:0")) <
        0.1);
}

TEST_CASE("audio that stops before the video: silence, not holes or empty segments, so players go on") {
  RequireBroker();
  Pipeline p;
  auto ing = p.Ingest(M("short_audio.mp4"), "short", "--segment-duration 2");
  REQUIRE_MESSAGE(ing.exit_code == 0, ing.output);
  CHECK(ing.output.find("has no audio from 5.0") != std::string::npos);
  const fs::path dir = p.out.path() / "out";
  REQUIRE(p.Package("short", dir).exit_code == 0);
  const std::string audio = ReadFile(dir / "short/v1/audio-1/index.m3u8");
  const std::string video = ReadFile(dir / "short/v1/video-240p/index.m3u8");
  CHECK(std::abs(PlaylistDuration(audio) - PlaylistDuration(video)) < 0.05);
  for (const std::string& seg : PlaylistSegments(audio)) {
    CAPTURE(seg);
    CHECK(fs::file_size(dir / "short/v1/audio-1" / seg) > 1000);
  }
  CheckDecodes((dir / "short/master.m3u8").string());
  // The silence decodes as silence after 5 s.
  auto vol = Run("ffmpeg -nostdin -v info -ss 7 -i " + Quote((dir / "short/v1/audio-1/index.m3u8").string()) +
                 " -af volumedetect -f null - 2>&1 | grep max_volume");
  CHECK_MESSAGE(vol.output.find("max_volume: -91") != std::string::npos, vol.output);
}
