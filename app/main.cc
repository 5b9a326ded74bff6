// kafka-hls: the command line. Parses flags and the config file, then hands a
// plain params struct to the module that does the work.
#include <csignal>
#include <cstdlib>
#include <filesystem>

#include <CLI/CLI.hpp>

#include "config.h"
#include "khls/ingest.h"
#include "khls/log.h"
#include "khls/packager.h"

namespace {

using namespace khls;

// Exit codes.
enum Exit : int {
  kExitOk = 0,
  kExitFailure = 1,
  kExitUsage = 2,
  kExitBadInput = 3,
  kExitKafka = 4,
  kExitIo = 5,
  kExitInterrupted = 130,
};

std::atomic<bool> g_stop{false};

void OnSignal(int) {
  if (g_stop.exchange(true)) std::_Exit(kExitInterrupted);  // a second signal: stop now
}

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case ErrorCode::kOk: return kExitOk;
    case ErrorCode::kInvalidArgument: return kExitUsage;
    case ErrorCode::kInvalidInput:
    case ErrorCode::kMalformedRecord: return kExitBadInput;
    case ErrorCode::kKafka: return kExitKafka;
    case ErrorCode::kIo: return kExitIo;
    case ErrorCode::kCancelled: return kExitInterrupted;
    default: return kExitFailure;
  }
}

int Fail(const Status& s) {
  log::Error("{}", s.message());
  return ExitCodeFor(s);
}

// -X key=value pairs.
Result<kafka::Properties> ParseProps(const std::vector<std::string>& items) {
  kafka::Properties out;
  for (const auto& item : items) {
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      return Error(ErrorCode::kInvalidArgument, "-X {}: expected librdkafka key=value", item);
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

struct Common {
  std::string config_path;
  std::string brokers, topic;
  std::vector<std::string> props;
};

void AddCommon(CLI::App* cmd, Common& c) {
  cmd->add_option("--config", c.config_path, "YAML config file (default: $KHLS_CONFIG, else built-in defaults)");
  cmd->add_option("--brokers", c.brokers, "Kafka bootstrap servers host:port[,...]");
  cmd->add_option("--topic", c.topic, "Kafka topic");
  cmd->add_option("-X", c.props, "librdkafka property key=value (repeatable)");
}

Result<app::Config> Resolve(const Common& c) {
  std::string path = c.config_path;
  if (path.empty()) {
    if (const char* env = std::getenv("KHLS_CONFIG")) path = env;
  }
  app::Config cfg;
  if (!path.empty()) {
    KHLS_ASSIGN_OR_RETURN(cfg, app::LoadConfig(path));
  }
  if (!c.brokers.empty()) cfg.brokers = c.brokers;
  if (!c.topic.empty()) cfg.topic = c.topic;
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"kafka-hls: HLS packaging through Apache Kafka.\n"
               "ingest publishes a movie as MPEG-TS segments to Kafka; package writes HLS from the topic."};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");

  // ingest
  Common ic;
  std::string input, title;
  double segment_duration = 0;
  uint64_t chunk_size = 0;
  bool realtime = false;
  CLI::App* ingest_cmd = app.add_subcommand("ingest", "Segment INPUT (a file or URL) and publish it to Kafka as a title");
  ingest_cmd->add_option("input", input, "Input file or URL (anything libavformat opens)")->required();
  ingest_cmd->add_option("--title", title, "Title id: 1-128 characters of A-Z a-z 0-9 . _ -")->required();
  ingest_cmd->add_option("--segment-duration", segment_duration, "Target segment duration in seconds")
      ->check(CLI::Range(1.0, 60.0));
  ingest_cmd->add_option("--chunk-size", chunk_size, "Payload bytes per Kafka record")
      ->check(CLI::Range(uint64_t{1024}, uint64_t{64} << 20));
  ingest_cmd->add_flag("--realtime", realtime, "Publish at media speed, as a live encoder would");
  AddCommon(ingest_cmd, ic);

  // package
  Common pc;
  std::string out_dir, group;
  std::vector<std::string> until;
  CLI::App* package_cmd = app.add_subcommand("package", "Consume the topic and write HLS titles under --out");
  package_cmd->add_option("--out", out_dir, "Output root (DIR/<title>/master.m3u8)");
  package_cmd->add_option("--group", group, "Kafka consumer group (one group per origin)");
  package_cmd->add_option("--until-complete", until, "Exit 0 once this title is complete (repeatable)");
  AddCommon(package_cmd, pc);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (verbose) log::SetLevel(log::Level::kDebug);

  if (*ingest_cmd) {
    auto cfg = Resolve(ic);
    if (!cfg.ok()) return Fail(cfg.status());
    auto props = ParseProps(ic.props);
    if (!props.ok()) return Fail(props.status());
    ingest::Params p;
    p.input = input;
    p.title = title;
    p.brokers = cfg->brokers;
    p.topic.name = cfg->topic;
    p.topic.partitions = cfg->partitions;
    p.topic.replication_factor = cfg->replication_factor;
    p.topic.configs = {{"retention.ms", std::to_string(cfg->retention_ms)},
                       {"retention.bytes", "-1"},
                       {"max.message.bytes", "2097152"}};
    p.segmenter.target_duration = segment_duration > 0 ? segment_duration : cfg->segment_duration;
    p.chunk_size = chunk_size ? chunk_size : cfg->chunk_size;
    p.realtime = realtime;
    p.kafka = cfg->producer;
    p.kafka.insert(p.kafka.end(), props->begin(), props->end());
    auto r = ingest::Run(p, g_stop);
    if (!r.ok()) return Fail(r.status());
    return kExitOk;
  }

  if (*package_cmd) {
    auto cfg = Resolve(pc);
    if (!cfg.ok()) return Fail(cfg.status());
    auto props = ParseProps(pc.props);
    if (!props.ok()) return Fail(props.status());
    packager::Params p;
    p.out_dir = out_dir.empty() ? cfg->out_dir : out_dir;
    p.brokers = cfg->brokers;
    p.topic = cfg->topic;
    p.group_id = group.empty() ? cfg->group : group;
    p.until_complete = {until.begin(), until.end()};
    p.limits.max_segment_bytes = cfg->max_segment_bytes;
    p.limits.max_buffered_bytes = cfg->max_buffered_bytes;
    p.durable = cfg->durable;
    p.kafka = cfg->consumer;
    p.kafka.insert(p.kafka.end(), props->begin(), props->end());
    auto r = packager::Run(p, g_stop);
    if (!r.ok()) return Fail(r.status());
    return kExitOk;
  }
  return kExitUsage;
}
