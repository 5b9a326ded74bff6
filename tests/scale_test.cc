// Scale-out through Kafka: many ingests at once on a partitioned topic, three
// packagers in one consumer group sharing the titles (one of them killed), and
// a second group (another origin) fed from the same topic. Every tree must be
// byte-identical to what a single packager writes.
#include <doctest/doctest.h>

#include <set>

#include "hls_check.h"
#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

// Every media playlist the master names has #EXT-X-ENDLIST.
bool Complete(const fs::path& title_dir) {
  if (!fs::exists(title_dir / "master.m3u8")) return false;
  const Master m = ParseMaster(ReadFile(title_dir / "master.m3u8"));
  const auto playlists = m.Playlists();
  return !playlists.empty() && std::all_of(playlists.begin(), playlists.end(), [&](const std::string& uri) {
    return ReadFile(title_dir / uri).find("#EXT-X-ENDLIST") != std::string::npos;
  });
}

}  // namespace

TEST_CASE("eight concurrent ingests, a packager group that loses a member, and a second origin") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("scale");
  const std::vector<std::string> files = {"h264_aac.mp4", "multilang.mkv", "h264_aac.mov", "h264_aac.ts",
                                          "h264_aac.flv", "longgop.mp4", "ntsc.mp4", "clip40.mp4"};
  std::vector<std::string> titles;
  for (size_t i = 0; i < files.size(); ++i) titles.push_back(fmt::format("title{}", i));

  // The first member creates the topic, with 8 partitions.
  const fs::path group_out = work.path() / "group";
  const std::string group = Unique("origin-a");
  auto member = [&](int i) {
    std::vector<std::string> a = PackageArgs(group_out, topic, group, {});
    a.insert(a.end(), {"--partitions", "8"});
    return std::make_unique<Child>(a, work.path() / fmt::format("member{}.log", i));
  };
  std::vector<std::unique_ptr<Child>> members;
  for (int i = 0; i < 3; ++i) members.push_back(member(i));
  std::this_thread::sleep_for(4s);  // let the group form

  // Eight ingests at media speed, all at once.
  std::vector<std::unique_ptr<Child>> ingests;
  for (size_t i = 0; i < files.size(); ++i) {
    std::vector<std::string> extra = {"--realtime", "--segment-duration", "2", "--partitions", "8"};
    // One title of 2 variants, 2 audio languages and subtitles.
    if (files[i] == "multilang.mkv")
      extra.insert(extra.end(), {(kMedia / "ladder_b.mp4").string(), "--subtitles", (kMedia / "sidecar.fr.vtt").string()});
    ingests.push_back(std::make_unique<Child>(IngestArgs(kMedia / files[i], titles[i], topic, extra),
                                              work.path() / fmt::format("ingest{}.log", i)));
  }

  // Mid-way, one member dies without warning; the others take its partitions.
  std::this_thread::sleep_for(8s);
  members[0]->Kill(SIGKILL);
  members[0]->Wait();

  for (size_t i = 0; i < ingests.size(); ++i) {
    INFO(ReadFile(work.path() / fmt::format("ingest{}.log", i)));
    CHECK(ingests[i]->Wait() == 0);
  }
  // Wait for the group to finish every title (session timeout + catch-up).
  auto deadline = std::chrono::steady_clock::now() + 120s;
  size_t done = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    done = 0;
    for (const auto& t : titles) done += Complete(group_out / t);
    if (done == titles.size()) break;
    std::this_thread::sleep_for(200ms);
  }
  for (size_t i = 1; i < members.size(); ++i) {
    members[i]->Kill(SIGTERM);
    CHECK(members[i]->Wait() == 0);
  }
  REQUIRE(done == titles.size());

  // The members split the work: more than one of them wrote segments.
  int writers = 0;
  for (int i = 0; i < 3; ++i) {
    std::string log = ReadFile(work.path() / fmt::format("member{}.log", i));
    writers += log.find("started by run") != std::string::npos;
  }
  CHECK(writers >= 2);
  // The survivors were assigned partitions again after the kill (the takeover).
  int assignments = 0;
  for (int i = 1; i < 3; ++i) {
    std::string log = ReadFile(work.path() / fmt::format("member{}.log", i));
    for (size_t pos = 0; (pos = log.find("assigned partitions", pos)) != std::string::npos; ++pos) ++assignments;
  }
  CHECK(assignments >= 4);

  // Reference: one packager alone. Fan-out: another group, another origin. Re-packaging: no group at all.
  const fs::path single = work.path() / "single", origin_b = work.path() / "origin-b", rebuilt = work.path() / "rebuilt";
  REQUIRE(RunToEnd(PackageArgs(single, topic, Unique("single"), titles), work.path() / "single.log") == 0);
  REQUIRE(RunToEnd(PackageArgs(origin_b, topic, Unique("origin-b"), titles), work.path() / "b.log") == 0);
  REQUIRE(RunToEnd({kBin, "repackage", "--all", "--out", rebuilt.string(), "--brokers", Brokers(), "--topic", topic},
                   work.path() / "repackage.log") == 0);
  const std::string expected = TreeDigest(single);
  CHECK(expected.find("title7/v1/video-360p/seg-000019.ts") != std::string::npos);  // clip40: 20 segments of 2 s
  CHECK(expected.find("title1/v1/subs-fr-2/seg-000009.vtt") != std::string::npos);  // the multi-rendition title
  CHECK(TreeDigest(group_out) == expected);
  CHECK(TreeDigest(origin_b) == expected);
  CHECK(TreeDigest(rebuilt) == expected);

  // topic describe sees all eight, complete.
  auto describe = Run(fmt::format("{} topic describe --brokers {} --topic {}", kBin, Brokers(), topic));
  REQUIRE(describe.exit_code == 0);
  for (const auto& t : titles) CHECK(describe.output.find(t) != std::string::npos);
  size_t complete = 0;
  for (size_t pos = 0; (pos = describe.output.find(" complete ", pos)) != std::string::npos; ++pos) ++complete;
  CHECK(complete == titles.size());
}
