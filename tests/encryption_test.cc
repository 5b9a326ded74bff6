// Segment encryption in the Engine (no Kafka): keys, rotation, IVs, the key
// store's crash safety, and what the playlists say. The Kafka and player side
// (keys never in the topic, playback through the origin with a token) is in
// encryption_e2e_test.cc.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "khls/engine.h"
#include "khls/keys.h"
#include "khls/playlist.h"
#include "rendition_util.h"
#include "test_util.h"

using namespace khls;
using namespace khls::packager;
namespace fs = std::filesystem;

namespace {

using proto::Rendition;
using proto::RenditionKind;

std::vector<Rendition> Renditions() {
  return {test::Video("video-240p", 320, 240), test::Audio("audio-en", "en", "English", true),
          test::Subs("subs-en", "en", "English")};
}

// The clear bytes of segment i of rendition r (what the records carry).
std::vector<uint8_t> Clear(int i, size_t r) {
  std::mt19937 rng(static_cast<uint32_t>(1000 + i * 10 + r));
  std::vector<uint8_t> v(4000 + static_cast<size_t>(i) * 37 + r * 5);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  if (r == 2) std::fill(v.begin(), v.end(), 'a');  // subtitles: text
  return v;
}

std::vector<std::vector<uint8_t>> Records(const std::string& title, proto::RunId run, int n) {
  proto::TitleStart t;
  t.title = title;
  t.title_version = 1;
  t.run_id = run;
  t.target_duration_s = 2;
  t.segment_duration_ms = 2000;
  t.renditions = Renditions();
  t.source_fingerprint[0] = 7;
  std::vector<std::vector<uint8_t>> out{proto::Encode(t)};
  for (int i = 0; i < n; ++i)
    for (size_t r = 0; r < t.renditions.size(); ++r)
      for (auto& rec : proto::EncodeSegment({title, run, static_cast<uint16_t>(r), static_cast<uint32_t>(i), 0, 180000},
                                            Clear(i, r), 1500))
        out.push_back(std::move(rec));
  proto::TitleEnd end{title, run, static_cast<uint32_t>(n), 180000ull * n, {}};
  end.renditions.resize(t.renditions.size());
  out.push_back(proto::Encode(end));
  return out;
}

Encryption Aes(uint32_t rotation, std::string key_store, std::string prefix = "") {
  return Encryption{EncryptionMethod::kAes128, rotation, std::move(key_store), std::move(prefix)};
}

void Feed(Engine& e, const std::vector<std::vector<uint8_t>>& records, size_t from, size_t to) {
  for (size_t i = from; i < to && i < records.size(); ++i) REQUIRE(e.OnRecord("film", records[i]).ok());
}

std::vector<uint8_t> Bytes(const fs::path& p) {
  std::string s = test::ReadFile(p);
  return {s.begin(), s.end()};
}

// The (key URI, IV) an EXT-X-KEY line of `playlist` gives each segment URI.
std::map<std::string, std::pair<std::string, std::string>> KeysOf(const std::string& playlist) {
  std::map<std::string, std::pair<std::string, std::string>> out;
  std::istringstream in(playlist);
  std::pair<std::string, std::string> current;
  const std::regex key_re(R"re(#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)",IV=(0x[0-9a-f]{32}))re");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, m, key_re)) current = {m[1], m[2]};
    else if (line == "#EXT-X-KEY:METHOD=NONE") current = {};
    else if (!line.empty() && line[0] != '#') out[line] = current;
  }
  return out;
}

}  // namespace

TEST_CASE("AES-128-CBC with PKCS#7 round-trips, and matches the openssl command") {
  const AesKey key{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  const AesIv iv = SegmentIv(key, "film/v1/video-240p", 3);
  CHECK(iv == SegmentIv(key, "film/v1/video-240p", 3));
  CHECK(iv != SegmentIv(key, "film/v1/video-240p", 4));
  CHECK(iv != SegmentIv(key, "film/v1/audio-en", 3));
  CHECK(IvFromHex(IvToHex(iv)) == iv);
  CHECK_FALSE(IvFromHex("0x00"));
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{188 * 100}}) {
    std::vector<uint8_t> clear(n, 0x47);
    auto cipher = EncryptAes128Cbc(clear, key, iv);
    REQUIRE(cipher.ok());
    CHECK(cipher->size() == (n / 16 + 1) * 16);  // PKCS#7 always pads
    auto back = DecryptAes128Cbc(*cipher, key, iv);
    REQUIRE(back.ok());
    CHECK(*back == clear);
    AesKey wrong = key;
    wrong[0] ^= 1;
    auto bad = DecryptAes128Cbc(*cipher, wrong, iv);
    CHECK((!bad.ok() || *bad != clear));
  }
  // Another implementation decrypts what we encrypt.
  test::TempDir d;
  std::vector<uint8_t> clear(10000);
  for (size_t i = 0; i < clear.size(); ++i) clear[i] = static_cast<uint8_t>(i * 7);
  auto cipher = EncryptAes128Cbc(clear, key, iv);
  REQUIRE(cipher.ok());
  {
    std::ofstream out(d.path() / "c.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(cipher->data()), static_cast<std::streamsize>(cipher->size()));
  }
  std::string key_hex;
  for (uint8_t b : key) key_hex += fmt::format("{:02x}", b);
  auto r = test::Run(fmt::format("openssl enc -d -aes-128-cbc -K {} -iv {} -in {} -out {}", key_hex,
                                 IvToHex(iv).substr(2), (d.path() / "c.bin").string(), (d.path() / "p.bin").string()));
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(Bytes(d.path() / "p.bin") == clear);
}

TEST_CASE("encrypted title: a key per rotation period per rendition, outside the tree; every segment decrypts") {
  test::TempDir d;
  const fs::path out = d.path() / "out", keys = d.path() / "out.keys";
  const auto run = proto::NewRunId();
  const auto records = Records("film", run, 5);
  Engine e(*OutputStore::Open(out), {});
  REQUIRE(e.EnableEncryption(Aes(2, "")).ok());  // the default store: out.keys
  Feed(e, records, 0, records.size());
  REQUIRE(e.IsComplete("film"));

  // Keys: periods starting at 0, 2, 4 for video and audio; none for subtitles; none in the tree.
  for (const char* r : {"video-240p", "audio-en"}) {
    std::set<std::string> names;
    for (auto& f : fs::directory_iterator(keys / "film/v1" / r)) {
      names.insert(f.path().filename().string());
      CHECK(fs::file_size(f.path()) == 16);
      CHECK((fs::status(f.path()).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
    }
    CHECK(names == std::set<std::string>{"key-000000.key", "key-000002.key", "key-000004.key"});
  }
  CHECK_FALSE(fs::exists(keys / "film/v1/subs-en"));
  for (auto& f : fs::recursive_directory_iterator(out)) CHECK(f.path().extension() != ".key");
  // Six distinct keys, none of them in any file of the tree.
  std::set<std::string> distinct;
  for (auto& f : fs::recursive_directory_iterator(keys))
    if (f.is_regular_file()) distinct.insert(test::ReadFile(f.path()));
  CHECK(distinct.size() == 6);
  for (auto& f : fs::recursive_directory_iterator(out)) {
    if (!f.is_regular_file()) continue;
    const std::string data = test::ReadFile(f.path());
    for (const std::string& k : distinct) CHECK(data.find(k) == std::string::npos);
  }

  for (size_t r = 0; r < 3; ++r) {
    const fs::path dir = out / "film/v1" / Renditions()[r].id;
    const std::string playlist = test::ReadFile(dir / "index.m3u8");
    const auto keys_of = KeysOf(playlist);
    REQUIRE(keys_of.size() == 5);
    std::set<std::string> ivs;
    for (int i = 0; i < 5; ++i) {
      const std::string name = SegmentFileName(static_cast<uint32_t>(i), Renditions()[r].kind);
      const auto [uri, iv_hex] = keys_of.at(name);
      const std::vector<uint8_t> on_disk = Bytes(dir / name);
      if (r == 2) {  // WebVTT stays clear
        CHECK(uri.empty());
        CHECK(on_disk == Clear(i, r));
        continue;
      }
      CHECK(uri == KeyFileName(static_cast<uint32_t>(i / 2 * 2)));
      ivs.insert(iv_hex);
      CHECK(on_disk != Clear(i, r));
      CHECK(on_disk.size() == (Clear(i, r).size() / 16 + 1) * 16);
      const std::string key_bytes = test::ReadFile(keys / "film/v1" / Renditions()[r].id / uri);
      AesKey key{};
      std::copy(key_bytes.begin(), key_bytes.end(), key.begin());
      auto clear = DecryptAes128Cbc(on_disk, key, *IvFromHex(iv_hex));
      REQUIRE(clear.ok());
      CHECK(*clear == Clear(i, r));
    }
    if (r < 2) CHECK(ivs.size() == 5);  // an explicit IV per segment
  }
  // No I-frame playlists: a byte range of an AES-CBC segment does not decrypt alone.
  CHECK(test::ReadFile(out / "film/master.m3u8").find("I-FRAME") == std::string::npos);
  CHECK_FALSE(fs::exists(out / "film/v1/video-240p/iframes.m3u8"));
  const std::string video = test::ReadFile(out / "film/v1/video-240p/index.m3u8");
  CHECK(video.find("#EXT-X-KEY:METHOD=AES-128,URI=\"key-000000.key\",IV=0x") != std::string::npos);
}

TEST_CASE("encrypted title: a packager killed mid-title resumes to the bytes an uninterrupted run writes with its keys") {
  test::TempDir d;
  const auto run = proto::NewRunId();
  const auto records = Records("film", run, 6);
  const fs::path out_a = d.path() / "a", keys_a = d.path() / "a.keys";
  // Run A: killed after 8 segment records (staged files and keys made, nothing committed), then restarted from
  // the start of the log (nothing was committed).
  {
    Engine e(*OutputStore::Open(out_a), {}, Batching{.max_segments = 3});
    REQUIRE(e.EnableEncryption(Aes(4, "")).ok());
    Feed(e, records, 0, 1 + 3 * 4 + 2);
    // No Flush: the engine is dropped as a crash would leave it.
  }
  {
    Engine e(*OutputStore::Open(out_a), {});
    REQUIRE(e.EnableEncryption(Aes(4, "")).ok());
    Feed(e, records, 0, records.size());
    REQUIRE(e.IsComplete("film"));
  }
  // Run B: uninterrupted, with a copy of A's key store (the keys A issued).
  const fs::path out_b = d.path() / "b", keys_b = d.path() / "b.keys";
  fs::copy(keys_a, keys_b, fs::copy_options::recursive);
  {
    Engine e(*OutputStore::Open(out_b), {});
    REQUIRE(e.EnableEncryption(Aes(4, keys_b.string())).ok());
    Feed(e, records, 0, records.size());
    REQUIRE(e.IsComplete("film"));
  }
  CHECK(test::TreeDigest(out_a) == test::TreeDigest(out_b));
  CHECK(test::TreeDigest(keys_a) == test::TreeDigest(keys_b));
  // Run C: another output (another consumer group's origin) gets its own keys.
  const fs::path out_c = d.path() / "c";
  {
    Engine e(*OutputStore::Open(out_c), {});
    REQUIRE(e.EnableEncryption(Aes(4, "")).ok());
    Feed(e, records, 0, records.size());
  }
  CHECK(test::ReadFile(keys_a / "film/v1/video-240p/key-000000.key") !=
        test::ReadFile(d.path() / "c.keys/film/v1/video-240p/key-000000.key"));
  CHECK(test::ReadFile(out_a / "film/v1/video-240p/seg-000000.ts") !=
        test::ReadFile(out_c / "film/v1/video-240p/seg-000000.ts"));
}

TEST_CASE("encryption settings: key store placement, URI prefix, a title keeps its method") {
  test::TempDir d;
  const fs::path out = d.path() / "out";
  Engine e(*OutputStore::Open(out), {});
  auto inside = e.EnableEncryption(Aes(0, (out / "keys").string()));
  CHECK(inside.code() == ErrorCode::kInvalidArgument);
  CHECK(inside.message().find("inside the output root") != std::string::npos);
  CHECK(e.EnableEncryption(Aes(0, out.string())).code() == ErrorCode::kInvalidArgument);
  CHECK(e.EnableEncryption(Aes(0, "", "https://keys.example.com/a\"b")).code() == ErrorCode::kInvalidArgument);

  // A key already in the store is used, not replaced; the prefix makes absolute key URIs.
  const AesKey known{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9};
  fs::create_directories(d.path() / "ks/film/v1/video-240p");
  {
    std::ofstream k(d.path() / "ks/film/v1/video-240p/key-000000.key", std::ios::binary);
    k.write(reinterpret_cast<const char*>(known.data()), 16);
  }
  REQUIRE(e.EnableEncryption(Aes(0, (d.path() / "ks").string(), "https://keys.example.com/k/")).ok());
  const auto records = Records("film", proto::NewRunId(), 2);
  Feed(e, records, 0, records.size());
  const std::string video = test::ReadFile(out / "film/v1/video-240p/index.m3u8");
  const auto keys_of = KeysOf(video);
  REQUIRE(keys_of.size() == 2);
  CHECK(keys_of.at("seg-000001.ts").first == "https://keys.example.com/k/film/v1/video-240p/key-000000.key");
  auto clear = DecryptAes128Cbc(Bytes(out / "film/v1/video-240p/seg-000001.ts"), known,
                                *IvFromHex(keys_of.at("seg-000001.ts").second));
  REQUIRE(clear.ok());
  CHECK(*clear == Clear(1, 0));
  CHECK(test::ReadFile(d.path() / "ks/film/v1/video-240p/key-000000.key") ==
        std::string(reinterpret_cast<const char*>(known.data()), 16));

  // A packager without encryption refuses to continue the encrypted title, saying how.
  Engine clear_engine(*OutputStore::Open(out), {});
  auto st = clear_engine.OnRecord("film", records.back());
  REQUIRE_FALSE(st.ok());
  CHECK(st.status().code() == ErrorCode::kInvalidArgument);
  CHECK(st.status().message().find("--encrypt aes-128") != std::string::npos);
}
