// Writes the fuzzer's seed corpus: well-formed record streams of format 2 in the
// fuzz input format (see record_fuzz.cc). Run: make_seeds DIR. (The corpus also
// keeps the format-1 seeds an older make_seeds wrote: whole_title, interleaved,
// title_start.)
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "khls/proto.h"

using namespace khls::proto;

namespace {

void Append(std::vector<uint8_t>& out, const std::string& key, const std::vector<uint8_t>& value) {
  out.push_back(static_cast<uint8_t>(key.size() | 0x80));  // re-seal after mutation
  out.insert(out.end(), key.begin(), key.end());
  out.push_back(static_cast<uint8_t>(value.size() >> 8));
  out.push_back(static_cast<uint8_t>(value.size()));
  out.insert(out.end(), value.begin(), value.end());
}

TitleStart Start(const std::string& title, RunId run) {
  TitleStart t;
  t.title = title;
  t.run_id = run;
  t.target_duration_s = 2;
  t.segment_duration_ms = 2000;
  Rendition v;
  v.id = "video-240p";
  v.codecs = "avc1.640028";
  v.width = 320;
  v.height = 240;
  v.fps_num = 25;
  v.is_default = v.autoselect = true;
  Rendition a;
  a.id = "audio-en";
  a.kind = RenditionKind::kAudio;
  a.language = "en";
  a.name = "English";
  a.codecs = "mp4a.40.2";
  a.channels = 2;
  a.is_default = a.autoselect = true;
  Rendition s;
  s.id = "subs-fr";
  s.kind = RenditionKind::kSubtitles;
  s.language = "fr";
  s.name = "Français";
  t.renditions = {v, a, s};
  return t;
}

TitleEnd End(const std::string& title, RunId run, uint32_t segments) {
  TitleEnd e{title, run, segments, 180000ull * segments, {}};
  e.renditions.resize(3, RenditionTotals{6000, 360000, 24000, 24000, 180000});
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  std::filesystem::create_directories(argv[1]);
  RunId run{};
  run[0] = 1;
  auto write = [&](const char* name, const std::vector<uint8_t>& bytes) {
    std::ofstream(std::filesystem::path(argv[1]) / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  };
  std::vector<uint8_t> seg(3000);
  for (size_t i = 0; i < seg.size(); ++i) seg[i] = static_cast<uint8_t>(i * 7);

  std::vector<uint8_t> whole;
  Append(whole, "t", Encode(Start("t", run)));
  for (uint32_t s = 0; s < 2; ++s)
    for (uint16_t r = 0; r < 3; ++r)
      for (auto& rec : EncodeSegment({"t", run, r, s, 0, 180000}, seg, 1024)) Append(whole, "t", rec);
  Append(whole, "t", Encode(End("t", run, 2)));
  write("v2_whole_title", whole);

  std::vector<uint8_t> interleaved;
  RunId run2 = run;
  run2[0] = 2;
  Append(interleaved, "a", Encode(Start("a", run)));
  Append(interleaved, "b", Encode(Start("b", run2)));
  auto ca = EncodeSegment({"a", run, 0, 0, 0, 90000}, seg, 700);
  auto cb = EncodeSegment({"b", run2, 1, 0, 0, 90000}, seg, 700);
  for (size_t i = 0; i < ca.size(); ++i) {
    Append(interleaved, "a", ca[i]);
    Append(interleaved, "b", cb[i]);
  }
  write("v2_interleaved", interleaved);

  // An LL-HLS title: segments as parts (format 3), video and audio only.
  std::vector<uint8_t> parted;
  TitleStart ll = Start("p", run);
  ll.part_target_ms = 500;
  ll.renditions.pop_back();
  Append(parted, "p", Encode(ll));
  for (uint32_t s = 0; s < 2; ++s)
    for (uint16_t p = 0; p < 4; ++p)
      for (uint16_t r = 0; r < 2; ++r)
        for (auto& rec : EncodeSegment({"p", run, r, s, p * 45000u, 45000, p, p == 0, p == 3},
                                       std::span<const uint8_t>(seg).first(700 + p), 512))
          Append(parted, "p", rec);
  TitleEnd ll_end = End("p", run, 2);
  ll_end.renditions.pop_back();
  Append(parted, "p", Encode(ll_end));
  write("v3_parted_title", parted);

  // A live LL-HLS title whose ingest died in segment 2 and was resumed (format 4) at segment 3.
  std::vector<uint8_t> resumed;
  TitleStart live = ll;
  live.title = "l";
  live.input_duration = live.source_size = 0;
  live.source_fingerprint = {};
  RunId run3 = run;
  run3[0] = 3;
  Append(resumed, "l", Encode(live));
  auto parts = [&](const RunId& id, uint32_t s, uint16_t count, uint16_t of) {
    for (uint16_t p = 0; p < count; ++p)
      for (uint16_t r = 0; r < 2; ++r)
        for (auto& rec : EncodeSegment({"l", id, r, s, p * 45000u, 45000, p, p == 0, p + 1 == of},
                                       std::span<const uint8_t>(seg).first(600 + p), 512))
          Append(resumed, "l", rec);
  };
  live.run_id = run;
  parts(run, 0, 4, 4);
  parts(run, 1, 4, 4);
  parts(run, 2, 2, 4);
  TitleStart again = live;
  again.run_id = run3;
  again.first_sequence = 3;
  Append(resumed, "l", Encode(again));
  parts(run3, 3, 4, 4);
  TitleEnd live_end = End("l", run3, 4);
  live_end.renditions.pop_back();
  Append(resumed, "l", Encode(live_end));
  write("v4_resumed_live_title", resumed);

  std::vector<uint8_t> single;
  Append(single, "t", Encode(Start("t", run)));
  write("v2_title_start", single);
  return 0;
}
