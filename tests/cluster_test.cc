// A replicated Kafka cluster (3 KRaft nodes, replication factor 3, min ISR 2,
// no unclean leader election; scripts/kafka.sh cluster) and brokers killed with
// SIGKILL while titles are ingested and packaged: the partition leader, the
// transaction coordinator, the group coordinator. Nothing may hang or fail, and
// the trees must be the bytes a single-broker run writes. The cluster is started
// once for this binary (it is heavy on 2 cores) and stopped at its end.
#include <doctest/doctest.h>

#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "pipeline_util.h"

using namespace khls::test;
namespace fs = std::filesystem;

namespace {

const std::string kScript = (kSource / "scripts/kafka.sh").string();

// Starts the cluster on first use; stops it when the binary exits.
struct Cluster {
  std::string bootstrap;
  Cluster() {
    auto r = Run("bash " + Quote(kScript) + " cluster start");
    if (r.exit_code != 0) FAIL("cluster start: " << r.output);
    bootstrap = RunStdout("bash " + Quote(kScript) + " cluster bootstrap").output;
    while (!bootstrap.empty() && std::isspace(static_cast<unsigned char>(bootstrap.back()))) bootstrap.pop_back();
  }
  ~Cluster() {
    if (!std::getenv("KHLS_KEEP_CLUSTER")) (void)Run("bash " + Quote(kScript) + " cluster stop");
  }
  // Kills node `id` (SIGKILL) / starts it again and waits until it answers.
  void Kill(int id) {
    auto r = Run(fmt::format("bash {} cluster kill {}", Quote(kScript), id));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }
  void Restart(int id) {
    auto r = Run(fmt::format("bash {} cluster start-node {}", Quote(kScript), id));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }
  // The leader of partition `partition` of `topic` (node id), -1 if none.
  int Leader(const std::string& topic, int partition) const {
    for (int attempt = 0; attempt < 50; ++attempt) {
      auto r = RunStdout(fmt::format("kcat -b {} -L -J -t {} 2>/dev/null", bootstrap, topic));
      auto j = nlohmann::json::parse(r.output, nullptr, false);
      if (!j.is_discarded())
        for (const auto& t : j["topics"])
          for (const auto& p : t["partitions"])
            if (p["partition"] == partition && p["leader"].get<int>() >= 1) return p["leader"].get<int>();
      std::this_thread::sleep_for(200ms);
    }
    return -1;
  }
};

Cluster& TheCluster() {
  static Cluster c;
  return c;
}

// Kafka's partition of a coordinator key in an internal topic of 8 partitions
// (offsets.topic.num.partitions / transaction.state.log.num.partitions in
// scripts/kafka.sh): Utils.abs(key.hashCode()) % 8, Java's String.hashCode.
int CoordinatorPartition(const std::string& key) {
  int32_t h = 0;
  for (unsigned char c : key) h = static_cast<int32_t>(static_cast<uint32_t>(h) * 31u + c);
  return (h & 0x7fffffff) % 8;
}

std::vector<std::string> On(const std::string& bootstrap, std::vector<std::string> args) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--brokers") args[i + 1] = bootstrap;
  return args;
}

// The tree without the state files (they name the ingest runs, which differ between runs).
std::string TreeWithoutState(const fs::path& root) {
  std::string out;
  std::istringstream in(TreeDigest(root));
  for (std::string line; std::getline(in, line);)
    if (line.find(".state.json") == std::string::npos) out += line + "\n";
  return out;
}

// The tree a single-broker run writes for `input` as title `title`.
std::string SingleBrokerTree(const fs::path& input, const std::string& title, const fs::path& work) {
  const std::string topic = Unique("single");
  REQUIRE(RunToEnd(IngestArgs(input, title, topic), work / "single-ingest.log") == 0);
  const fs::path out = work / "single";
  REQUIRE(RunToEnd(PackageArgs(out, topic, Unique("g"), {title}), work / "single-package.log") == 0);
  return TreeWithoutState(out);
}

struct Outcome {
  int ingest = -1, package = -1;
  double seconds = 0;
};

// Ingests `input` at media speed into a new one-partition topic on the cluster
// while a packager reads it; `when_s` seconds in, kills the node `victim(topic)`
// names, and leaves it down until both have finished (at most `limit`).
template <typename Victim>
Outcome KillDuring(const fs::path& input, const std::string& title, const fs::path& work, double when_s,
                   Victim victim, const std::string& group, std::chrono::seconds limit = 150s) {
  Cluster& cl = TheCluster();
  const std::string topic = Unique("cl");
  const auto t0 = std::chrono::steady_clock::now();
  Child ingest(On(cl.bootstrap, IngestArgs(input, title, topic, {"--realtime", "--partitions", "1"})),
               work / "ingest.log");
  // The packager joins once the topic exists (it would create it otherwise, with the default partitions).
  for (int i = 0; i < 100 && cl.Leader(topic, 0) < 0; ++i) std::this_thread::sleep_for(100ms);
  Child package(On(cl.bootstrap, PackageArgs(work / "out", topic, group, {title})), work / "package.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(when_s * 1000)));
  const int node = victim(topic);
  REQUIRE(node >= 1);
  MESSAGE("killing node " << node);
  cl.Kill(node);
  Outcome o;
  const auto deadline = t0 + limit;
  while (std::chrono::steady_clock::now() < deadline && (o.ingest < 0 || o.package < 0)) {
    if (o.ingest < 0) o.ingest = ingest.Poll();
    if (o.package < 0) o.package = package.Poll();
    std::this_thread::sleep_for(50ms);
  }
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.ingest < 0) ingest.Kill();
  if (o.package < 0) package.Kill();
  cl.Restart(node);
  return o;
}

}  // namespace

TEST_CASE("cluster: a packager started before its topic exists is assigned the partitions, every time") {
  Cluster& cl = TheCluster();
  TempDir work;
  constexpr int kTries = 20;  // as the issue asks; the previous build failed about 1 in 10
  int complete = 0;
  for (int i = 0; i < kTries; ++i) {
    const std::string topic = Unique("early");
    const fs::path out = work.path() / fmt::format("out{}", i);
    Child package(On(cl.bootstrap, PackageArgs(out, topic, Unique("g"), {"t"})), work.path() / "package.log");
    std::this_thread::sleep_for(300ms);
    REQUIRE(RunToEnd(On(cl.bootstrap, IngestArgs(kMedia / "h264_aac.mp4", "t", topic)), work.path() / "ingest.log") ==
            0);
    int rc = -1;
    for (int w = 0; w < 600 && rc < 0; ++w) {
      rc = package.Poll();
      std::this_thread::sleep_for(100ms);
    }
    complete += rc == 0;
  }
  CHECK_MESSAGE(complete == kTries, ReadFile(work.path() / "package.log"));
}

TEST_CASE("cluster: killing the partition leader, the transaction coordinator or the group coordinator costs a stall") {
  Cluster& cl = TheCluster();
  TempDir work;
  const fs::path input = kMedia / "h264_aac.mp4";  // 20 s, published at media speed
  const std::string expected = SingleBrokerTree(input, "movie", work.path());
  REQUIRE(!expected.empty());

  struct Case {
    const char* name;
    double when_s;
    std::function<int(const std::string& topic, const std::string& group)> victim;
  };
  const std::vector<Case> cases = {
      // Just after a segment group's transaction (the packager is reading, and nudging the leader's fetcher).
      {"partition leader, mid-title", 6.3, [&](const std::string& topic, const std::string&) { return cl.Leader(topic, 0); }},
      {"partition leader, near the end", 12.3,
       [&](const std::string& topic, const std::string&) { return cl.Leader(topic, 0); }},
      {"transaction coordinator", 9,
       [&](const std::string&, const std::string&) {
         return cl.Leader("__transaction_state", CoordinatorPartition("kafka-hls-ingest.movie"));
       }},
      {"group coordinator", 4,
       [&](const std::string&, const std::string& group) {
         return cl.Leader("__consumer_offsets", CoordinatorPartition(group));
       }},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    TempDir run;
    const std::string group = Unique("g");
    Outcome o = KillDuring(input, "movie", run.path(), c.when_s,
                           [&](const std::string& topic) { return c.victim(topic, group); }, group);
    MESSAGE(name << ": ingest exit " << o.ingest << ", packager exit " << o.package << ", " << o.seconds
                   << " s for a 20 s title (a stall of " << o.seconds - 20 << " s)");
    CHECK_MESSAGE(o.ingest == 0, ReadFile(run.path() / "ingest.log"));
    CHECK_MESSAGE(o.package == 0, ReadFile(run.path() / "package.log"));
    if (o.package == 0) CHECK(TreeWithoutState(run.path() / "out") == expected);
  }
}

TEST_CASE("cluster: --replication-factor and --min-insync-replicas set both topics, and topic describe shows them") {
  Cluster& cl = TheCluster();
  TempDir work;
  const std::string topic = Unique("rf");
  REQUIRE(RunToEnd(On(cl.bootstrap, IngestArgs(kMedia / "h264_aac.mp4", "t", topic,
                                               {"--replication-factor", "3", "--min-insync-replicas", "2",
                                                "--partitions", "2"})),
                   work.path() / "ingest.log") == 0);
  for (const std::string& t : {topic, topic + ".titles"}) {
    auto r = RunStdout(fmt::format("{} topic describe --brokers {} --topic {}", kBin, cl.bootstrap, t));
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    CHECK_MESSAGE(r.output.find(fmt::format("topic {}: {} partitions, replication factor 3, min.insync.replicas 2", t,
                                            t == topic ? 2 : 1)) != std::string::npos,
                  r.output);
  }
  // More in-sync replicas than replicas could never be written: refused before anything is created.
  auto bad = Run(fmt::format("{} ingest {} --title t --brokers {} --topic {} --replication-factor 2 "
                             "--min-insync-replicas 3",
                             kBin, Quote((kMedia / "h264_aac.mp4").string()), cl.bootstrap, Unique("bad")));
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(bad.output.find("min.insync.replicas 3 is more than the replication factor 2") != std::string::npos,
                bad.output);
}
