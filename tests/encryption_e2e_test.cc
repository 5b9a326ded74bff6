// Encrypted titles end to end, on the real broker: keys never in the topic,
// every segment decrypts with the key its playlist names, playback through the
// origin with a bearer token (ffmpeg's HLS demuxer, hls.js in Chromium), key
// access control, and a packager killed mid-title resuming to the same bytes.
#include <doctest/doctest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <xxhash.h>

#include "khls/keys.h"
#include "pipeline_util.h"

using namespace khls::test;
using khls::packager::AesKey;
namespace fs = std::filesystem;

namespace {

const char kToken[] = "s3cret-token_for.tests";

struct Listed {
  std::string segment, key_uri, iv;
};

// The segments of a media playlist with the key URI and IV each is encrypted with ("" = clear).
std::vector<Listed> ListedSegments(const std::string& playlist) {
  std::vector<Listed> out;
  std::istringstream in(playlist);
  std::string uri, iv;
  const std::regex key_re(R"re(#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)",IV=(0x[0-9a-f]{32}))re");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, m, key_re)) {
      uri = m[1];
      iv = m[2];
    } else if (line == "#EXT-X-KEY:METHOD=NONE") {
      uri.clear();
      iv.clear();
    } else if (!line.empty() && line[0] != '#') {
      out.push_back({line, uri, iv});
    }
  }
  return out;
}

std::vector<uint8_t> Bytes(const fs::path& p) {
  const std::string s = ReadFile(p);
  return {s.begin(), s.end()};
}

AesKey KeyAt(const fs::path& p) {
  const std::string s = ReadFile(p);
  REQUIRE_MESSAGE(s.size() == 16, p.string() << " is not a 16-byte key");
  AesKey k{};
  std::copy(s.begin(), s.end(), k.begin());
  return k;
}

std::string Xxh128Hex(const std::vector<uint8_t>& data) {
  const XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

// Every media playlist under out/<title>: its rendition dir relative to the title.
std::vector<fs::path> MediaPlaylists(const fs::path& title_dir) {
  std::vector<fs::path> out;
  for (auto& e : fs::recursive_directory_iterator(title_dir))
    if (e.path().filename() == "index.m3u8") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// Checks that every listed A/V segment decrypts with the key its playlist names (from
// `keys`), that the clear bytes are what the state says the records carried (TS), and
// that the encrypted file is not readable media. Returns the distinct keys seen.
std::set<std::string> CheckDecrypts(const fs::path& out, const fs::path& keys, const std::string& title, bool ts) {
  std::set<std::string> distinct;
  const std::string state = ReadFile(out / title / ".state.json");
  for (const fs::path& playlist : MediaPlaylists(out / title)) {
    const fs::path dir = playlist.parent_path();
    const fs::path rel = fs::relative(dir, out);
    const bool subtitles = dir.filename().string().starts_with("subs");
    CAPTURE(rel);
    const auto listed = ListedSegments(ReadFile(playlist));
    REQUIRE_FALSE(listed.empty());
    for (const Listed& l : listed) {
      CAPTURE(l.segment);
      if (subtitles) {
        CHECK(l.key_uri.empty());
        CHECK(ReadFile(dir / l.segment).starts_with("WEBVTT"));
        continue;
      }
      REQUIRE_FALSE(l.key_uri.empty());
      CHECK(fs::exists(keys / rel / l.key_uri));
      CHECK_FALSE(fs::exists(dir / l.key_uri));  // never in the served tree
      const AesKey key = KeyAt(keys / rel / l.key_uri);
      distinct.insert(std::string(key.begin(), key.end()));
      const std::vector<uint8_t> cipher = Bytes(dir / l.segment);
      if (ts) CHECK((cipher[0] != 0x47 || cipher[188] != 0x47));  // not MPEG-TS as it lies on disk
      auto clear = khls::packager::DecryptAes128Cbc(cipher, key, *khls::packager::IvFromHex(l.iv));
      REQUIRE_MESSAGE(clear.ok(), clear.status().message());
      if (ts) {
        CHECK((*clear)[0] == 0x47);
        // The clear segment is the one the records carried (its digest is in the state).
        CHECK(state.find("\"" + Xxh128Hex(*clear) + "\"") != std::string::npos);
      }
    }
  }
  return distinct;
}

// The Kafka records of `topic`, values concatenated.
std::string TopicBytes(const std::string& topic, const fs::path& file) {
  auto r = Run("kcat -C -b " + Brokers() + " -t " + Quote(topic) + " -e -q -f '%k%s' > " + Quote(file.string()));
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  return ReadFile(file);
}

std::string Curl(const std::string& url, const std::string& header = "") {
  return RunStdout("curl -s --path-as-is -o /dev/null -w '%{http_code}' " + (header.empty() ? "" : "-H " + Quote(header) + " ") +
                   Quote(url))
      .output;
}

}  // namespace

TEST_CASE("encrypted titles: keys never in Kafka, every segment decrypts, ffmpeg and hls.js play with a token") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("enc");
  // 20 s at 2 s segments: 10 segments per rendition; a key every 3: 4 keys per rendition.
  REQUIRE(RunToEnd(IngestArgs(kMedia / "h264_aac.mp4", "film", topic,
                              {"--segment-duration", "2", "--subtitles", (kMedia / "sidecar.fr.vtt").string()}),
                   work.path() / "ingest.log") == 0);

  for (const std::string container : {"ts", "fmp4"}) {
    CAPTURE(container);
    const fs::path out = work.path() / ("out-" + container), keys = work.path() / ("out-" + container + ".keys");
    std::vector<std::string> args = PackageArgs(out, topic, Unique("enc"), {"film"});
    args.insert(args.end(), {"--container", container, "--encrypt", "aes-128", "--key-rotation", "3"});
    const fs::path log = work.path() / ("package-" + container + ".log");
    REQUIRE_MESSAGE(RunToEnd(args, log) == 0, ReadFile(log));

    // Keys: 4 per audio/video rendition, all distinct, in the key store only.
    const std::set<std::string> distinct = CheckDecrypts(out, keys, "film", container == "ts");
    CHECK(distinct.size() == 8);
    size_t key_files = 0;
    for (auto& e : fs::recursive_directory_iterator(keys)) key_files += e.is_regular_file();
    CHECK(key_files == 8);
    for (auto& e : fs::recursive_directory_iterator(out)) CHECK(e.path().extension() != ".key");
    const std::string master = ReadFile(out / "film/master.m3u8");
    CHECK(master.find("I-FRAME") == std::string::npos);

    // No key's bytes anywhere in the topic (or in the served tree).
    const std::string log_bytes = TopicBytes(topic, work.path() / "topic.bin");
    REQUIRE(log_bytes.size() > 1'000'000);
    for (const std::string& k : distinct) {
      CHECK(log_bytes.find(k) == std::string::npos);
      for (auto& e : fs::recursive_directory_iterator(out))
        if (e.is_regular_file()) CHECK(ReadFile(e.path()).find(k) == std::string::npos);
    }

    // An encrypted segment alone is not media.
    const fs::path seg = out / "film/v1/video-240p" / (container == "ts" ? "seg-000000.ts" : "seg-000000.m4s");
    if (container == "ts") {
      auto probe = Run("ffprobe -v error -show_entries stream=codec_name -of csv=p=0 " + Quote(seg.string()));
      CHECK((probe.exit_code != 0 || probe.output.find("h264") == std::string::npos));
    }

    // The origin: keys to the token only, never cached publicly.
    const fs::path serve_log = work.path() / ("serve-" + container + ".log");
    Child serve({kBin, "serve", out.string(), "--port", "0", "--key-token", kToken}, serve_log);
    const std::string base = WaitForUrl(serve_log);
    REQUIRE_MESSAGE(!base.empty(), ReadFile(serve_log));
    const std::string key_url = base + "film/v1/video-240p/key-000003.key";
    CHECK(Curl(key_url) == "401");
    CHECK(Curl(key_url, "Authorization: Bearer wrong") == "403");
    CHECK(Curl(key_url, std::string("Authorization: Bearer ") + kToken) == "200");
    auto body = RunStdout("curl -s -D " + Quote((work.path() / "h.txt").string()) + " -H " +
                          Quote(std::string("Authorization: Bearer ") + kToken) + " " + Quote(key_url));
    CHECK(body.output == ReadFile(keys / "film/v1/video-240p/key-000003.key"));
    CHECK(ReadFile(work.path() / "h.txt").find("Cache-Control: private, no-store") != std::string::npos);
    // Nothing reaches the key store but the key route, even with the token.
    const std::string auth = std::string("Authorization: Bearer ") + kToken;
    const std::string store = "out-" + container + ".keys";
    for (const std::string& path : std::vector<std::string>{"../" + store + "/film/v1/video-240p/key-000000.key",
                                   "%2e%2e/" + store + "/film/v1/video-240p/key-000000.key",
                                   "film/%2e%2e/%2e%2e/" + store + "/film/v1/video-240p/key-000000.key",
                                   "film/v1/video-240p/..%2fkey-000000.key", "film/.state.json"}) {
      CAPTURE(path);
      CHECK(Curl(base + path, auth) == "404");
    }

    // ffmpeg's HLS demuxer: every frame with the token, an error without it.
    const std::string url = base + "film/master.m3u8";
    auto frames = RunStdout("ffprobe -v error -headers " + Quote(std::string("Authorization: Bearer ") + kToken + "\r\n") +
                            " -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 " +
                            Quote(url));
    CHECK(frames.exit_code == 0);
    CHECK(frames.output.find("500") == 0);  // 20 s at 25 fps
    auto decode = Run("ffmpeg -nostdin -v error -headers " +
                      Quote(std::string("Authorization: Bearer ") + kToken + "\r\n") + " -i " + Quote(url) +
                      " -map 0:v -map 0:a -f null -");
    CHECK(decode.exit_code == 0);
    CHECK_MESSAGE(decode.output.empty(), decode.output);
    auto refused = Run("ffmpeg -nostdin -v error -i " + Quote(url) + " -map 0:v -f null -");
    CHECK((refused.exit_code != 0 || refused.output.find("401") != std::string::npos));

    // hls.js in Chromium, the bearer header added by xhrSetup: to the end with no error.
    auto play = RunStdout("KHLS_NODE_MODULES=" + Quote(NodeModules()) + " node " +
                          Quote((kSource / "tests/player/play.mjs").string()) + " --url " + Quote(url) +
                          " --expect-ended --timeout 120 --bearer " + Quote(kToken));
    INFO("hls.js: " << play.output);
    CHECK(play.exit_code == 0);
    CHECK(play.output.find("\"errors\":[]") != std::string::npos);
    CHECK(play.output.find("\"ended\":true") != std::string::npos);
    serve.Kill(SIGTERM);
    CHECK(serve.Wait() == 0);
  }

  // Re-packaging from the log: with the live packager's key store, the same bytes; with a new store, new keys.
  {
    const fs::path rebuilt = work.path() / "rebuilt";
    const std::vector<std::string> base_args = {kBin, "repackage", "--title", "film", "--brokers", Brokers(),
                                                "--topic", topic, "--encrypt", "aes-128", "--key-rotation", "3"};
    std::vector<std::string> reuse = base_args;
    reuse.insert(reuse.end(), {"--out", rebuilt.string(), "--key-store", (work.path() / "out-ts.keys").string()});
    const std::string keys_before = TreeDigest(work.path() / "out-ts.keys");
    REQUIRE(RunToEnd(reuse, work.path() / "repackage.log") == 0);
    CHECK(TreeDigest(rebuilt) == TreeDigest(work.path() / "out-ts"));
    CHECK(TreeDigest(work.path() / "out-ts.keys") == keys_before);
    const fs::path fresh = work.path() / "fresh";
    std::vector<std::string> renew = base_args;
    renew.insert(renew.end(), {"--out", fresh.string()});
    REQUIRE(RunToEnd(renew, work.path() / "repackage-new.log") == 0);
    CHECK(ReadFile(fresh / "film/v1/video-240p/seg-000000.ts") !=
          ReadFile(work.path() / "out-ts/film/v1/video-240p/seg-000000.ts"));
    const std::set<std::string> fresh_keys = CheckDecrypts(fresh, work.path() / "fresh.keys", "film", true);
    CHECK(fresh_keys.size() == 8);
    // A packager without --encrypt refuses to continue an encrypted tree, and says how.
    std::vector<std::string> clear = {kBin, "repackage", "--title", "film", "--brokers", Brokers(), "--topic", topic,
                                      "--out", fresh.string()};
    const fs::path clear_log = work.path() / "repackage-clear.log";
    CHECK(RunToEnd(clear, clear_log) == 2);
    CHECK(ReadFile(clear_log).find("--encrypt aes-128") != std::string::npos);
  }

  // An origin without --key-token serves no key, and says why.
  const fs::path out = work.path() / "out-ts";
  const fs::path plain_log = work.path() / "serve-plain.log";
  Child plain({kBin, "serve", out.string(), "--port", "0"}, plain_log);
  const std::string base = WaitForUrl(plain_log);
  REQUIRE(!base.empty());
  CHECK(Curl(base + "film/v1/video-240p/key-000000.key", std::string("Authorization: Bearer ") + kToken) == "403");
  CHECK(RunStdout("curl -s " + Quote(base + "film/v1/video-240p/key-000000.key")).output.find("--key-token") !=
        std::string::npos);
  CHECK(ReadFile(plain_log).find("--key-token") != std::string::npos);
  CHECK(Curl(base + "film/.state.json") == "404");
}

TEST_CASE("encrypted: a packager killed mid-title resumes to the tree and keys an uninterrupted run writes with them") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("enc-crash");
  REQUIRE(RunToEnd(IngestArgs(kMedia / "clip40.mp4", "clip", topic, {"--segment-duration", "2", "--chunk-size", "32768"}),
                   work.path() / "ingest.log") == 0);
  const fs::path out = work.path() / "out", keys = work.path() / "out.keys";
  auto package = [&](const fs::path& dir, const std::string& group, std::vector<std::string> extra) {
    std::vector<std::string> a = PackageArgs(dir, topic, group, {"clip"});
    a.insert(a.end(), {"--encrypt", "aes-128", "--key-rotation", "4"});
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const std::string group = Unique("victim");
  auto segments_on_disk = [&] {
    size_t n = 0;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec))
      n += it->path().extension() == ".ts";
    return n;
  };
  int kills = 0, rc = -1;
  for (int attempt = 0; attempt < 8 && rc != 0; ++attempt) {
    Child c(package(out, group, {}), work.path() / "victim.log");
    if (attempt < 3) {
      const size_t target = segments_on_disk() + 4;
      while ((rc = c.Poll()) < 0 && segments_on_disk() < target) std::this_thread::sleep_for(1ms);
      if (rc < 0) {
        c.Kill(SIGKILL);
        c.Wait();
        ++kills;
      }
    } else {
      rc = c.Wait();
    }
  }
  INFO(ReadFile(work.path() / "victim.log").substr(0, 4000));
  REQUIRE(rc == 0);
  CHECK(kills >= 2);
  for (auto& e : fs::recursive_directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    CHECK_FALSE((e.is_regular_file() && !name.starts_with(".") && name.ends_with(".tmp")));
  }

  // The reference: an undisturbed packager given a copy of the keys the victim issued.
  const fs::path ref = work.path() / "ref", ref_keys = work.path() / "ref.keys";
  fs::copy(keys, ref_keys, fs::copy_options::recursive);
  const std::string keys_before = TreeDigest(ref_keys);
  REQUIRE(RunToEnd(package(ref, Unique("ref"), {"--key-store", ref_keys.string()}), work.path() / "ref.log") == 0);
  CHECK(TreeDigest(out) == TreeDigest(ref));
  CHECK(TreeDigest(keys) == TreeDigest(ref_keys));
  CHECK(TreeDigest(ref_keys) == keys_before);  // the reference made no key of its own
  // 20 segments per rendition at a key every 4: 5 keys each for video and audio.
  CHECK(CheckDecrypts(out, keys, "clip", true).size() == 10);
  MESSAGE("encrypting packager survived " << kills << " SIGKILLs");
}

TEST_CASE("run --encrypt --serve --key-token: the origin serves the keys of the title it packages") {
  RequireBroker();
  TempDir work;
  const fs::path out = work.path() / "out", log = work.path() / "run.log";
  Child run({kBin, "run", (kMedia / "h264_aac.mp4").string(), "--title", "enc", "--out", out.string(), "--brokers",
             Brokers(), "--topic", Unique("enc-run"), "--segment-duration", "2", "--encrypt", "aes-128", "--serve", "0",
             "--key-token", kToken},
            log);
  const std::string base = WaitForUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  for (int i = 0; i < 600 && ReadFile(log).find("is ready") == std::string::npos; ++i) std::this_thread::sleep_for(50ms);
  REQUIRE_MESSAGE(ReadFile(log).find("is ready") != std::string::npos, ReadFile(log));
  CHECK(Curl(base + "enc/v1/video-240p/key-000000.key", std::string("Authorization: Bearer ") + kToken) == "200");
  CHECK(Curl(base + "enc/v1/video-240p/key-000000.key") == "401");
  auto frames = RunStdout("ffprobe -v error -headers " + Quote(std::string("Authorization: Bearer ") + kToken + "\r\n") +
                          " -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 " +
                          Quote(base + "enc/master.m3u8"));
  CHECK(frames.output.find("500") == 0);
  run.Kill(SIGTERM);
  CHECK(run.Wait() == 0);
  CHECK(fs::exists(work.path() / "out.keys/enc/v1/video-240p/key-000000.key"));
}
