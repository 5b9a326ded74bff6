#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "khls/proto.h"
#include "khls/title_identity.h"

using namespace khls;
using namespace khls::proto;

namespace {

TitleStart SampleStart() {
  TitleStart t;
  t.title = "movie-2024_cut.v2";
  t.run_id = NewRunId();
  t.title_version = 3;
  t.target_duration_s = 6;
  t.segment_duration_ms = 6000;
  t.start_offset = 6006;
  Rendition v;
  v.id = "video-1080p";
  v.kind = RenditionKind::kVideo;
  v.codecs = "avc1.640028";
  v.width = 1920;
  v.height = 1080;
  v.fps_num = 30000;
  v.fps_den = 1001;
  v.est_peak_bps = 5'400'000;
  v.est_avg_bps = 5'000'000;
  v.is_default = v.autoselect = true;
  Rendition en;
  en.id = "audio-en";
  en.kind = RenditionKind::kAudio;
  en.language = "en";
  en.name = "English";
  en.codecs = "mp4a.40.2";
  en.channels = 2;
  en.is_default = en.autoselect = true;
  en.est_peak_bps = 130'000;
  en.est_avg_bps = 128'000;
  Rendition fr = en;
  fr.id = "audio-fr";
  fr.language = "fr-CA";
  fr.name = "Français (Canada)";
  fr.is_default = false;
  fr.channels = 6;
  fr.characteristics = "public.accessibility.describes-video";
  Rendition subs;
  subs.id = "subs-en_sdh";
  subs.kind = RenditionKind::kSubtitles;
  subs.language = "en";
  subs.name = "English SDH";
  subs.autoselect = subs.forced = true;
  subs.characteristics = "public.accessibility.transcribes-spoken-dialog,public.accessibility.describes-music-and-sound";
  t.renditions = {v, en, fr, subs};
  t.input_duration = 90000ull * 600;
  t.source_size = 4ull << 30;
  t.source_fingerprint = SegmentDigest(std::vector<uint8_t>{1, 2, 3});
  t.source_name = "Movie (2024).mkv";
  return t;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Re-seals a record after a deliberate edit, so the edit reaches field validation.
void Reseal(std::vector<uint8_t>& rec);

}  // namespace

#include <xxhash.h>
namespace {
void Reseal(std::vector<uint8_t>& rec) {
  uint64_t h = XXH64(rec.data(), rec.size() - 8, 0);
  for (int i = 0; i < 8; ++i) rec[rec.size() - 8 + i] = static_cast<uint8_t>(h >> (8 * (7 - i)));
}
}  // namespace

TEST_CASE("title ids") {
  CHECK(IsValidTitleId("a"));
  CHECK(IsValidTitleId("Movie_2024.v2-final"));
  CHECK(IsValidTitleId(std::string(128, 'x')));
  CHECK_FALSE(IsValidTitleId(std::string(129, 'x')));
  CHECK_FALSE(IsValidTitleId(""));
  CHECK_FALSE(IsValidTitleId("."));
  CHECK_FALSE(IsValidTitleId(".."));
  CHECK_FALSE(IsValidTitleId("..."));
  CHECK_FALSE(IsValidTitleId(".hidden"));  // the origin never serves dot-names
  CHECK(IsValidTitleId("a..b"));           // dots inside a name are fine
  CHECK(IsValidTitleId("_x"));
  CHECK_FALSE(IsValidTitleId("../../x"));
  CHECK_FALSE(IsValidTitleId("/etc/passwd"));
  CHECK_FALSE(IsValidTitleId("a b"));
  CHECK_FALSE(IsValidTitleId("a\\b"));
  CHECK_FALSE(IsValidTitleId(std::string("a\0b", 3)));
  CHECK_FALSE(IsValidTitleId("caf\xc3\xa9"));
  Status s = CheckTitleId("../../x");
  CHECK(s.code() == ErrorCode::kInvalidArgument);
  CHECK(s.message().find("../../x") != std::string::npos);
  CHECK(CheckTitleId(".hidden").message().find("not starting with '.'") != std::string::npos);
  CHECK(CheckTitleId(std::string(5000, 'a')).message().find("5000 bytes") != std::string::npos);
}

TEST_CASE("title start and end round trip") {
  TitleStart t = SampleStart();
  auto rec = Decode(Encode(t));
  REQUIRE(rec.ok());
  CHECK(std::get<TitleStart>(*rec) == t);

  TitleEnd e{"movie", NewRunId(), 100, 90000ull * 600, {}};
  e.renditions = {{375'000'000, 90000ull * 600, 5'600'000, 5'000'000, 90000ull * 6},
                  {9'600'000, 90000ull * 600 + 1024, 130'000, 128'000, 90000ull * 6 + 1024}};
  auto rec2 = Decode(Encode(e));
  REQUIRE(rec2.ok());
  CHECK(std::get<TitleEnd>(*rec2) == e);
  CHECK(TitleOf(*rec2) == "movie");

  TitleStatus st{"movie", NewRunId(), 2, SegmentDigest(std::vector<uint8_t>{9}), 12345,
                 TitleStatus::State::kComplete, 100, "movie.mkv"};
  auto rec3 = Decode(Encode(st));
  REQUIRE(rec3.ok());
  CHECK(std::get<TitleStatus>(*rec3) == st);
  auto bad_state = Encode(st);
  bad_state[bad_state.size() - 8 - 2 - 9 - 4 - 1] = 7;  // the state byte
  Reseal(bad_state);
  CHECK(Decode(bad_state).status().message().find("unknown title state 7") != std::string::npos);
}

TEST_CASE("segments split into chunks under the limit and reassemble") {
  auto data = RandomBytes(3'000'001, 7);
  SegmentMeta meta{"t1", NewRunId(), 3, 42, 126000, 540540};
  auto records = EncodeSegment(meta, data, kDefaultChunkSize);
  CHECK(records.size() == 6);  // ceil(3000001 / 524288)
  for (const auto& r : records) CHECK(r.size() < 1'000'000);

  Reassembler ra;
  std::optional<AssembledSegment> done;
  for (size_t i = 0; i < records.size(); ++i) {
    auto rec = Decode(records[i]);
    REQUIRE(rec.ok());
    auto& c = std::get<SegmentChunk>(*rec);
    CHECK(c.chunk_index == i);
    CHECK(c.chunk_count == records.size());
    auto r = ra.Add(c);
    REQUIRE(r.ok());
    if (i + 1 < records.size()) {
      CHECK_FALSE(r->has_value());
      CHECK(ra.buffered_bytes() == data.size());
    } else {
      done = std::move(*r);
    }
  }
  REQUIRE(done.has_value());
  CHECK(done->data == data);
  CHECK(done->sequence == 42);
  CHECK(done->rendition == 3);
  CHECK(done->start_pts == 126000);
  CHECK(done->duration == 540540);
  CHECK(done->digest == SegmentDigest(data));
  CHECK(ra.buffered_bytes() == 0);
  CHECK(ra.InFlight().empty());
}

TEST_CASE("a segment digest over pieces equals the digest of the whole, however it is cut") {
  const auto data = RandomBytes(1'000'003, 11);
  // Cuts at, around and far from the 64 KiB hashing block, and empty pieces.
  for (const std::vector<size_t>& cuts : std::vector<std::vector<size_t>>{
           {}, {0}, {1}, {65535}, {65536}, {65537}, {65536, 131072}, {1, 2, 3, 524288}, {999'999, 1'000'003}}) {
    SegmentDigester d;
    std::vector<uint8_t> assembled;
    size_t from = 0;
    for (size_t to : cuts) {
      d.Append(assembled, std::span(data).subspan(from, to - from));
      from = to;
    }
    d.Append(assembled, std::span(data).subspan(from));
    CHECK(assembled == data);
    CHECK(d.Final() == SegmentDigest(data));
  }
  SegmentDigester empty;
  CHECK(empty.Final() == SegmentDigest({}));
  // One byte changed anywhere changes it.
  auto other = data;
  other[700'000] ^= 1;
  SegmentDigester d;
  std::vector<uint8_t> sink;
  d.Append(sink, other);
  CHECK(d.Final() != SegmentDigest(data));
}

TEST_CASE("encoding into recycled buffers gives the same records and reuses their memory") {
  auto big = RandomBytes(3'000'001, 8);
  auto small = RandomBytes(700'000, 9);
  SegmentMeta meta{"t1", NewRunId(), 0, 1, 0, 540540};
  std::vector<std::vector<uint8_t>> records;
  EncodeSegmentInto(meta, big, kDefaultChunkSize, records);
  CHECK(records == EncodeSegment(meta, big, kDefaultChunkSize));
  REQUIRE(records.size() == 6);
  const uint8_t* first = records[0].data();
  const uint8_t* second = records[1].data();
  // A smaller segment into the same buffers: fewer records, same memory, other bytes.
  meta.sequence = 2;
  EncodeSegmentInto(meta, small, kDefaultChunkSize, records);
  CHECK(records == EncodeSegment(meta, small, kDefaultChunkSize));
  REQUIRE(records.size() == 2);
  CHECK(records[0].data() == first);
  CHECK(records[1].data() == second);
  auto rec = Decode(records[1]);
  REQUIRE(rec.ok());
  CHECK(std::get<SegmentChunk>(*rec).sequence == 2);
  // And a larger one again: the missing buffers are added.
  meta.sequence = 3;
  EncodeSegmentInto(meta, big, 1'000'000, records);
  CHECK(records == EncodeSegment(meta, big, 1'000'000));
}

TEST_CASE("an empty segment is one chunk") {
  auto records = EncodeSegment({"t", NewRunId(), 0, 0, 0, 1}, {}, 1024);
  REQUIRE(records.size() == 1);
  Reassembler ra;
  auto rec = Decode(records[0]);
  REQUIRE(rec.ok());
  auto r = ra.Add(std::get<SegmentChunk>(*rec));
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->data.empty());
}

TEST_CASE("malformed records are rejected with a reason") {
  auto good = Encode(SampleStart());

  SUBCASE("truncated anywhere") {
    for (size_t n = 0; n < good.size(); ++n) {
      auto r = Decode(std::span(good.data(), n));
      CHECK_FALSE(r.ok());
      CHECK(r.status().code() == ErrorCode::kMalformedRecord);
    }
  }
  SUBCASE("every single bit flip is detected") {
    for (size_t i = 0; i < good.size(); ++i) {
      auto bad = good;
      bad[i] ^= 0x10;
      CHECK_FALSE(Decode(bad).ok());
    }
  }
  SUBCASE("bad magic") {
    auto bad = good;
    bad[0] = 'X';
    CHECK(Decode(bad).status().message().find("magic") != std::string::npos);
  }
  SUBCASE("unknown version") {
    auto bad = good;
    bad[4] = 9;
    Reseal(bad);
    CHECK(Decode(bad).status().message().find("version 9") != std::string::npos);
  }
  SUBCASE("unknown type") {
    auto bad = good;
    bad[5] = 77;
    Reseal(bad);
    CHECK(Decode(bad).status().message().find("unknown record type 77") != std::string::npos);
  }
  SUBCASE("trailing bytes") {
    auto bad = good;
    bad.insert(bad.end() - 8, 0);
    Reseal(bad);
    CHECK(Decode(bad).status().message().find("unexpected bytes") != std::string::npos);
  }
  SUBCASE("hostile title ids in a well-formed record") {
    for (std::string id : std::vector<std::string>{"../../x", "/etc/passwd", "..", ".", std::string(128, 'a') + "b"}) {
      TitleStart t = SampleStart();
      t.title = id;
      auto r = Decode(Encode(t));
      CHECK_FALSE(r.ok());
    }
  }
  SUBCASE("random bytes never decode and never crash") {
    for (uint32_t seed = 0; seed < 2000; ++seed) {
      auto junk = RandomBytes(seed % 300, seed);
      CHECK_FALSE(Decode(junk).ok());
    }
  }
}

TEST_CASE("hostile chunk fields") {
  auto data = RandomBytes(1000, 1);
  SegmentChunk c;
  c.title = "t";
  c.run_id = NewRunId();
  c.sequence = 0;
  c.chunk_count = 1;
  c.segment_size = data.size();
  c.duration = 90000;
  c.segment_digest = SegmentDigest(data);
  c.payload = data;
  REQUIRE(Decode(Encode(c)).ok());

  auto mutate = [&](auto f) {
    SegmentChunk m = c;
    f(m);
    return Decode(Encode(m));
  };
  CHECK(mutate([](SegmentChunk& m) { m.chunk_count = 4'000'000'000u; }).status().message().find("chunk_count") !=
        std::string::npos);
  CHECK_FALSE(mutate([](SegmentChunk& m) { m.chunk_count = 0; }).ok());
  CHECK_FALSE(mutate([](SegmentChunk& m) { m.chunk_index = 1; }).ok());
  CHECK(mutate([](SegmentChunk& m) { m.segment_size = 5ull << 40; }).status().message().find("segment_size") !=
        std::string::npos);
  CHECK_FALSE(mutate([](SegmentChunk& m) { m.segment_size = 10; }).ok());  // payload larger than the segment
  CHECK_FALSE(mutate([](SegmentChunk& m) { m.duration = 0; }).ok());
  CHECK(mutate([](SegmentChunk& m) { m.rendition = 64; }).status().message().find("rendition 64") !=
        std::string::npos);
  CHECK(mutate([](SegmentChunk& m) { m.rendition = 63; }).ok());

  SUBCASE("digest mismatch is caught at reassembly") {
    SegmentChunk m = c;
    m.segment_digest[0] ^= 1;
    auto bytes = Encode(m);
    auto rec = Decode(bytes);
    REQUIRE(rec.ok());
    Reassembler ra;
    auto r = ra.Add(std::get<SegmentChunk>(*rec));
    CHECK_FALSE(r.ok());
    CHECK(r.status().message().find("digest mismatch") != std::string::npos);
    CHECK(ra.buffered_bytes() == 0);
  }
}

TEST_CASE("reassembler enforces order and memory bounds") {
  auto data = RandomBytes(10'000, 3);
  SegmentMeta meta{"t", NewRunId(), 0, 0, 0, 90000};
  auto records = EncodeSegment(meta, data, 1000);
  std::vector<SegmentChunk> chunks;
  for (auto& r : records) chunks.push_back(std::get<SegmentChunk>(*Decode(r)));

  SUBCASE("a chunk without its first chunk") {
    Reassembler ra;
    auto r = ra.Add(chunks[3]);
    CHECK_FALSE(r.ok());
    CHECK(r.status().message().find("first chunk is missing") != std::string::npos);
  }
  SUBCASE("a skipped chunk drops the segment") {
    Reassembler ra;
    REQUIRE(ra.Add(chunks[0]).ok());
    auto r = ra.Add(chunks[2]);
    CHECK_FALSE(r.ok());
    CHECK(ra.buffered_bytes() == 0);
  }
  SUBCASE("the next rendition's first chunk replaces a segment cut short; a chunk of another rendition does not continue it") {
    auto other = EncodeSegment({"t", meta.run_id, 1, 0, 0, 90000}, data, 1000);
    Reassembler ra;
    REQUIRE(ra.Add(chunks[0]).ok());
    auto wrong = ra.Add(std::get<SegmentChunk>(*Decode(other[1])));
    CHECK_FALSE(wrong.ok());
    CHECK(wrong.status().message().find("rendition 0 segment 0 chunk 1/10") != std::string::npos);
    std::optional<AssembledSegment> done;
    for (auto& r : other) {
      auto added = ra.Add(std::get<SegmentChunk>(*Decode(r)));
      REQUIRE(added.ok());
      if (added->has_value()) done = std::move(*added);
    }
    REQUIRE(done.has_value());
    CHECK(done->rendition == 1);
  }
  SUBCASE("a restarted segment replaces the unfinished one") {
    Reassembler ra;
    REQUIRE(ra.Add(chunks[0]).ok());
    REQUIRE(ra.Add(chunks[1]).ok());
    std::optional<AssembledSegment> done;
    for (auto& c : chunks) {
      auto r = ra.Add(c);
      REQUIRE(r.ok());
      if (r->has_value()) done = std::move(*r);
    }
    REQUIRE(done.has_value());
    CHECK(done->data == data);
  }
  SUBCASE("per-segment limit") {
    Reassembler ra({.max_segment_bytes = 5000, .max_buffered_bytes = 1 << 20});
    auto r = ra.Add(chunks[0]);
    CHECK(r.status().code() == ErrorCode::kResourceLimit);
  }
  SUBCASE("total limit across titles") {
    Reassembler ra({.max_segment_bytes = 1 << 20, .max_buffered_bytes = 25'000});
    // The decoded chunks view these buffers, so they must outlive them.
    std::vector<std::vector<uint8_t>> firsts;
    for (std::string t : {"a", "b", "c"}) firsts.push_back(EncodeSegment({t, meta.run_id, 0, 0, 0, 1}, data, 1000)[0]);
    for (int i = 0; i < 2; ++i) REQUIRE(ra.Add(std::get<SegmentChunk>(*Decode(firsts[i]))).ok());
    auto third = std::get<SegmentChunk>(*Decode(firsts[2]));
    CHECK(ra.Add(third).status().code() == ErrorCode::kResourceLimit);
    CHECK(ra.buffered_bytes() == 20'000);
    ra.Drop("a");
    CHECK(ra.buffered_bytes() == 10'000);
    CHECK(ra.Add(third).ok());
  }
}

TEST_CASE("renditions: every field round trips and is validated") {
  const TitleStart good = SampleStart();
  auto bad = [&](auto f) {
    TitleStart t = good;
    f(t);
    auto r = Decode(Encode(t));
    CHECK_FALSE(r.ok());
    return r.status().message();
  };
  CHECK(bad([](TitleStart& t) { t.renditions.clear(); }).find("rendition_count 0") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions.resize(65, t.renditions[1]); }).find("rendition_count 65") !=
        std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].id = "../x"; }).find("id '../x'") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].id = ""; }).find("id ''") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].id = "Audio"; }).find("a-z 0-9") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].id = std::string(33, 'a'); }).find("rendition id") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[2].id = "audio-en"; }).find("used twice") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[2].is_default = true; }).find("second default audio") !=
        std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].autoselect = false; }).find("DEFAULT without AUTOSELECT") !=
        std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].name = "say \"hi\""; }).find("quotes") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].name = "a\nb"; }).find("control") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].name = "Fran\xe7" "ais"; }).find("not UTF-8") != std::string::npos);
  {
    // A file name is any bytes: decoded as UTF-8 with the stray bytes replaced (it is for humans).
    TitleStart t = good;
    t.source_name = "caf\xe9.mkv";
    auto r = Decode(Encode(t));
    REQUIRE(r.ok());
    CHECK(std::get<TitleStart>(*r).source_name == "caf?.mkv");
  }
  CHECK(bad([](TitleStart& t) { t.renditions[1].language = "en us"; }).find("BCP 47") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].codecs = "mp4a\"40"; }).find("RFC 6381") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[0].width = 0; }).find("resolution") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[1].channels = 65; }).find("channels") != std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions[3].characteristics = "a b"; }).find("characteristics") !=
        std::string::npos);
  CHECK(bad([](TitleStart& t) { t.renditions = {t.renditions[3]}; }).find("no video or audio") != std::string::npos);
  auto kind = Encode(good);
  // The first rendition's kind byte follows its id ("video-1080p", 2 + 11 bytes).
  const size_t at = std::string_view(reinterpret_cast<const char*>(kind.data()), kind.size()).find("video-1080p") + 11;
  kind[at] = 9;
  Reseal(kind);
  CHECK(Decode(kind).status().message().find("unknown kind 9") != std::string::npos);
}

TEST_CASE("format 1 records stay readable: the records kafka-hls 0.1 wrote to a real broker") {
  std::ifstream in(std::string(KHLS_SOURCE_DIR) + "/tests/fixtures/v1/records.bin", std::ios::binary);
  std::vector<uint8_t> all{std::istreambuf_iterator<char>(in), {}};
  REQUIRE(all.size() > 1000);
  size_t pos = 0, n = 0, starts = 0, chunks = 0, ends = 0;
  auto u32 = [&] {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | all[pos++];
    return v;
  };
  while (pos < all.size()) {
    const uint32_t klen = u32();
    const std::string key(all.begin() + pos, all.begin() + pos + klen);
    pos += klen;
    const uint32_t vlen = u32();
    const std::span<const uint8_t> value(all.data() + pos, vlen);
    pos += vlen;
    ++n;
    CHECK(value[4] == 1);  // written as format 1
    auto rec = Decode(value);
    REQUIRE_MESSAGE(rec.ok(), rec.status().message());
    CHECK(TitleOf(*rec) == key);
    if (auto* t = std::get_if<TitleStart>(&*rec)) {
      ++starts;
      REQUIRE(t->renditions.size() == 1);
      const Rendition& d = t->renditions[0];
      CHECK(d.id.empty());
      CHECK(d.kind == RenditionKind::kVideo);
      CHECK(d.muxed_audio);
      CHECK(d.codecs.find(",mp4a.40.2") != std::string::npos);
      CHECK(d.width > 0);
      if (key == "fixture" && t->title_version == 2) CHECK(d.width == 96);
    } else if (auto* c = std::get_if<SegmentChunk>(&*rec)) {
      ++chunks;
      CHECK(c->rendition == 0);
    } else if (auto* e = std::get_if<TitleEnd>(&*rec)) {
      ++ends;
      REQUIRE(e->renditions.size() == 1);
      CHECK(e->renditions[0].bytes > 0);
      CHECK(e->renditions[0].peak_bps >= e->renditions[0].avg_bps);
      CHECK(e->renditions[0].duration == e->total_duration);
    }
  }
  CHECK(n == 74);
  CHECK(starts == 4);
  CHECK(ends == 3);
  CHECK(chunks == 67);
}

TEST_CASE("title identity: one rule for same source, new version, stale and conflicting starts") {
  using namespace khls::proto;
  Digest a{}, b{}, zero{};
  a[0] = 1;
  b[0] = 2;
  CHECK(SameSource(a, a));
  CHECK_FALSE(SameSource(a, b));
  CHECK_FALSE(SameSource(zero, zero));  // a live input is never the same source again

  CHECK(Classify({1, a}, {1, a}) == Succession::kContinues);
  CHECK(Classify({1, a}, {2, a}) == Succession::kNewVersion);
  CHECK(Classify({1, a}, {2, b}) == Succession::kNewVersion);
  CHECK(Classify({3, a}, {2, b}) == Succession::kStale);
  CHECK(Classify({1, a}, {1, b}) == Succession::kConflict);
  CHECK(Classify({1, zero}, {1, zero}) == Succession::kConflict);

  using Action = Admission::Action;
  CHECK(Admit(std::nullopt, a, false).action == Action::kPublish);
  CHECK(Admit(std::nullopt, a, false).version == 1);
  CHECK(Admit(std::nullopt, a, true).version == 1);
  TitleStatus st;
  st.title = "t";
  st.title_version = 4;
  st.source_fingerprint = a;
  st.state = TitleStatus::State::kStarted;
  CHECK(Admit(st, a, false).action == Action::kContinue);
  CHECK(Admit(st, a, false).version == 4);
  CHECK(Admit(st, b, false).action == Action::kRefuse);
  CHECK(Admit(st, b, false).version == 5);  // what --replace would publish
  CHECK(Admit(st, b, true).action == Action::kPublish);
  CHECK(Admit(st, b, true).version == 5);
  CHECK(Admit(st, a, true).version == 5);   // --replace always starts a new version
  st.state = TitleStatus::State::kComplete;
  CHECK(Admit(st, a, false).action == Action::kAlreadyComplete);
  CHECK(Admit(st, a, false).version == 4);
  st.source_fingerprint = zero;
  CHECK(Admit(st, zero, false).action == Action::kRefuse);  // an older build's live title: only with --replace
}

TEST_CASE("title identity: a live title is resumed by a run of the same layout, after what its status counts") {
  using namespace khls::proto;
  TitleStart live = SampleStart();
  live.input_duration = live.source_size = 0;
  live.source_fingerprint = {};
  REQUIRE(IsLive(live));
  CHECK_FALSE(IsLive(SampleStart()));
  const Digest layout = LiveLayout(live);
  CHECK(layout != Digest{});
  // What playlists do not show may differ between runs: run id, version, rates, source name, start offset.
  TitleStart again = live;
  again.run_id = NewRunId();
  again.title_version = 9;
  again.source_name = "udp://other";
  again.start_offset = 0;
  again.first_sequence = 12;
  for (Rendition& r : again.renditions) r.est_peak_bps = r.est_avg_bps = 0;
  CHECK(LiveLayout(again) == layout);
  // What they show may not.
  for (int change = 0; change < 5; ++change) {
    TitleStart other = live;
    switch (change) {
      case 0: other.renditions[0].codecs = "avc1.64001f"; break;
      case 1: other.renditions[0].height = 720; break;
      case 2: other.renditions.pop_back(); break;
      case 3: other.target_duration_s = 4; break;
      case 4: other.part_target_ms = 1000; break;
    }
    CAPTURE(change);
    CHECK(LiveLayout(other) != layout);
  }

  // Classify: a resumed start of the same version and layout resumes; anything else conflicts.
  SourceId held = SourceOf(live);
  CHECK(held.layout == layout);
  again.title_version = live.title_version;
  CHECK(Classify(held, SourceOf(again)) == Succession::kResumes);
  TitleStart fresh_run = again;
  fresh_run.first_sequence = 0;  // a second live run that does not say it resumes
  CHECK(Classify(held, SourceOf(fresh_run)) == Succession::kConflict);
  TitleStart wider = again;
  wider.renditions.pop_back();
  CHECK(Classify(held, SourceOf(wider)) == Succession::kConflict);
  CHECK(Classify(SourceOf(SampleStart()), SourceOf(again)) == Succession::kConflict);  // a file's title is not resumed
  again.title_version = live.title_version + 1;
  CHECK(Classify(held, SourceOf(again)) == Succession::kNewVersion);

  // Admit: a live input on a live title that is running, with the same layout, resumes it.
  using Action = Admission::Action;
  TitleStatus st;
  st.title = live.title;
  st.title_version = 2;
  st.source_fingerprint = layout;  // what a live ingest's status carries
  st.state = TitleStatus::State::kStarted;
  st.segment_count = 57;
  Admission ad = Admit(st, Digest{}, false, layout);
  CHECK(ad.action == Action::kResume);
  CHECK(ad.version == 2);
  CHECK(ad.first_sequence == 57);
  // ... with --replace, a new version instead;
  CHECK(Admit(st, Digest{}, true, layout).action == Action::kPublish);
  CHECK(Admit(st, Digest{}, true, layout).version == 3);
  // ... a run that published nothing leaves nothing to resume: a new version;
  st.segment_count = 0;
  CHECK(Admit(st, Digest{}, false, layout).action == Action::kPublish);
  CHECK(Admit(st, Digest{}, false, layout).version == 3);
  st.segment_count = 57;
  // ... another layout is refused, saying so;
  Digest other = layout;
  other[3] ^= 1;
  CHECK(Admit(st, Digest{}, false, other).action == Action::kRefuse);
  CHECK(Admit(st, Digest{}, false, other).layout_differs);
  // ... an ended live title, or a file's title, is refused;
  st.state = TitleStatus::State::kComplete;
  CHECK(Admit(st, Digest{}, false, layout).action == Action::kRefuse);
  CHECK_FALSE(Admit(st, Digest{}, false, layout).layout_differs);
  st.state = TitleStatus::State::kStarted;
  st.source_size = 1000;  // a file's status with that fingerprint
  CHECK(Admit(st, Digest{}, false, layout).action == Action::kRefuse);
  // ... and a file on a live title too.
  st.source_size = 0;
  Digest file{};
  file[0] = 7;
  CHECK(Admit(st, file, false).action == Action::kRefuse);
}

TEST_CASE("resumed live title: format 4 only for its start, first_sequence round trips and is checked") {
  TitleStart t = SampleStart();
  t.input_duration = t.source_size = 0;
  t.source_fingerprint = {};
  t.first_sequence = 1234;
  auto bytes = Encode(t);
  CHECK(bytes[4] == kResumeFormatVersion);
  auto rec = Decode(bytes);
  REQUIRE(rec.ok());
  CHECK(std::get<TitleStart>(*rec) == t);
  // With parts too.
  t.part_target_ms = 400;
  rec = Decode(Encode(t));
  REQUIRE(rec.ok());
  CHECK(std::get<TitleStart>(*rec) == t);
  // The chunks of a resumed run are format 2 (whole segments) or 3 (parts), as any.
  auto whole = EncodeSegment({t.title, t.run_id, 0, 1234, 126000, 90000}, RandomBytes(500, 2), 400);
  for (const auto& r : whole) CHECK(r[4] == kPlainFormatVersion);
  // first_sequence 0 in format 4, and a resumed start that describes a file, do not decode.
  auto zero = Encode(t);
  // first_sequence follows part_target_ms after start_offset: find it by its value and zero it.
  const std::array<uint8_t, 4> want{0, 0, 0x04, 0xd2};
  auto at = std::search(zero.begin() + 8, zero.end(), want.begin(), want.end());
  REQUIRE(at != zero.end());
  std::fill(at, at + 4, 0);
  const uint64_t sum = XXH64(zero.data(), zero.size() - 8, 0);
  for (int i = 0; i < 8; ++i) zero[zero.size() - 8 + i] = static_cast<uint8_t>(sum >> (56 - 8 * i));
  CHECK(Decode(zero).status().message().find("first_sequence 0") != std::string::npos);
  t.input_duration = 90000;
  CHECK(Decode(Encode(t)).status().message().find("only a live title is resumed") != std::string::npos);
}

TEST_CASE("LL-HLS parts: format 3 only where parts are, flags round trip and are checked") {
  // A title without parts is written in format 2 (a packager of the previous release reads it).
  TitleStart plain = SampleStart();
  CHECK(Encode(plain)[4] == kPlainFormatVersion);
  auto whole = EncodeSegment({"t1", NewRunId(), 0, 7, 126000, 90000}, RandomBytes(1000, 1), 400);
  for (const auto& r : whole) CHECK(r[4] == kPlainFormatVersion);

  TitleStart t = SampleStart();
  t.part_target_ms = 500;
  auto start_bytes = Encode(t);
  CHECK(start_bytes[4] == 3);
  auto rec = Decode(start_bytes);
  REQUIRE(rec.ok());
  CHECK(std::get<TitleStart>(*rec) == t);
  t.part_target_ms = 50;  // under 100 ms
  CHECK(Decode(Encode(t)).status().message().find("part_target_ms 50") != std::string::npos);
  t.part_target_ms = t.segment_duration_ms + 1;  // longer than a segment
  CHECK(Decode(Encode(t)).status().message().find("part_target_ms") != std::string::npos);

  // Parts 0 (independent), 1 and 2 (last) of segment 7, each reassembled on its own.
  const RunId run = NewRunId();
  std::vector<std::vector<uint8_t>> datas = {RandomBytes(1500, 2), RandomBytes(700, 3), RandomBytes(1, 4)};
  Reassembler ra;
  for (uint16_t p = 0; p < 3; ++p) {
    SegmentMeta meta{"t1", run, 1, 7, 126000u + p * 45000u, 45000, p, p == 0, p == 2};
    auto records = EncodeSegment(meta, datas[p], 512);
    std::optional<AssembledSegment> done;
    for (const auto& bytes : records) {
      CHECK(bytes[4] == 3);  // part 0 of a parted segment is a part too (not last)
      auto d = Decode(bytes);
      REQUIRE(d.ok());
      const auto& c = std::get<SegmentChunk>(*d);
      CHECK(c.part == p);
      CHECK(c.independent == (p == 0));
      CHECK(c.last_part == (p == 2));
      auto r = ra.Add(c);
      REQUIRE(r.ok());
      if (r->has_value()) done = std::move(*r);
    }
    REQUIRE(done.has_value());
    CHECK(done->part == p);
    CHECK(done->independent == (p == 0));
    CHECK(done->last_part == (p == 2));
    CHECK(done->data == datas[p]);
    CHECK(done->digest == SegmentDigest(datas[p]));
  }

  // A chunk of another part does not continue the part in flight.
  auto p1 = EncodeSegment({"t1", run, 0, 8, 0, 45000, 1, false, false}, RandomBytes(2000, 5), 512);
  auto p2 = EncodeSegment({"t1", run, 0, 8, 0, 45000, 2, false, false}, RandomBytes(2000, 5), 512);
  REQUIRE(ra.Add(std::get<SegmentChunk>(*Decode(p1[0]))).ok());
  auto wrong = ra.Add(std::get<SegmentChunk>(*Decode(p2[1])));
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().message().find("expected rendition 0 segment 8 part 1 chunk 1/4") != std::string::npos);

  // Part 0 always starts on a keyframe; unknown flag bits are refused.
  auto bad = EncodeSegment({"t1", run, 0, 9, 0, 45000, 0, false, false}, RandomBytes(10, 6), 512);
  CHECK(Decode(bad[0]).status().message().find("part 0 of a segment does not start on a keyframe") !=
        std::string::npos);
  auto flags = EncodeSegment({"t1", run, 0, 9, 0, 45000, 1, false, false}, RandomBytes(10, 6), 512);
  // header 8, title "t1" 2+2, run 16, rendition 2, sequence 4, part 2 -> part_flags at 36
  flags[0][36] = 0x80;
  Reseal(flags[0]);
  CHECK(Decode(flags[0]).status().message().find("unknown part_flags bits 0x80") != std::string::npos);
}
