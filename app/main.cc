// kafka-hls: the command line. Parses flags and the config file, then hands a
// plain params struct to the module that does the work.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>

#include "config.h"
#include "khls/ingest.h"
#include "khls/keys.h"
#include "khls/log.h"
#include "khls/metrics.h"
#include "khls/metrics_server.h"
#include "khls/origin.h"
#include "khls/packager.h"
#include "khls/proto.h"
#include "khls/segmenter.h"

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
  int partitions = 0;
  int replication_factor = 0;
  int min_insync_replicas = 0;
  double retention_s = -2;  ///< -2 = the config's
  std::vector<std::string> props;
};

void AddCommon(CLI::App* cmd, Common& c) {
  cmd->add_option("--config", c.config_path, "YAML config file (default: $KHLS_CONFIG, else built-in defaults)");
  cmd->add_option("--brokers", c.brokers, "Kafka bootstrap servers host:port[,...]");
  cmd->add_option("--topic", c.topic, "Kafka topic");
  cmd->add_option("--partitions", c.partitions, "Partitions, when this command creates the topic")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--replication-factor", c.replication_factor,
                  "Replicas of each partition, when this command creates the topics (default: the broker's)")
      ->check(CLI::Range(1, 32));
  cmd->add_option("--min-insync-replicas", c.min_insync_replicas,
                  "Replicas that must have a record before it counts as written (acks=all), when this command "
                  "creates the topics (default: the broker's)")
      ->check(CLI::Range(1, 32));
  cmd->add_option("--retention", c.retention_s,
                  "Seconds the topic keeps records, when this command creates the topics (time-based retention for "
                  "a topic of live channels: live titles re-announce their start, so packagers joining later still "
                  "find them); -1 = forever, as VOD topics need (default: kafka.retention_ms in the config, else -1)")
      ->check(CLI::Range(-1.0, 1e9));
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
  if (c.partitions > 0) cfg.partitions = c.partitions;
  if (c.replication_factor > 0) cfg.replication_factor = c.replication_factor;
  if (c.min_insync_replicas > 0) cfg.min_insync_replicas = c.min_insync_replicas;
  if (c.retention_s >= 0) cfg.retention_ms = static_cast<int64_t>(std::llround(c.retention_s * 1000));
  else if (c.retention_s == -1) cfg.retention_ms = -1;
  // With acks=all a record needs min.insync.replicas copies: more than there are replicas
  // would make every write fail.
  if (cfg.replication_factor > 0 && cfg.min_insync_replicas > cfg.replication_factor)
    return Error(ErrorCode::kInvalidArgument,
                 "min.insync.replicas {} is more than the replication factor {}: no record could ever be written",
                 cfg.min_insync_replicas, cfg.replication_factor);
  return cfg;
}

// The configuration (file, then flags) and the -X properties of a subcommand.
struct Resolved {
  app::Config cfg;
  kafka::Properties props;
};

Result<Resolved> ResolveAll(const Common& c) {
  KHLS_ASSIGN_OR_RETURN(app::Config cfg, Resolve(c));
  KHLS_ASSIGN_OR_RETURN(kafka::Properties props, ParseProps(c.props));
  return Resolved{std::move(cfg), std::move(props)};
}

kafka::TopicSettings TopicFromConfig(const app::Config& cfg, uint64_t chunk_size) {
  kafka::TopicSettings t;
  t.name = cfg.topic;
  t.partitions = cfg.partitions;
  t.replication_factor = cfg.replication_factor;
  t.configs = {{"retention.ms", std::to_string(cfg.retention_ms)},
               {"retention.bytes", "-1"},
               {"max.message.bytes", std::to_string(std::max<uint64_t>(2 << 20, chunk_size + 65536))}};
  if (cfg.min_insync_replicas > 0) t.configs.emplace_back("min.insync.replicas", std::to_string(cfg.min_insync_replicas));
  return t;
}

// --subtitles FILE[:LANG]: the part after the last ':' is a language when it looks like one
// ("en", "fre", "pt-BR"); otherwise the whole argument is the path.
segmenter::Params::Sidecar ParseSidecar(const std::string& arg) {
  const auto colon = arg.rfind(':');
  if (colon != std::string::npos && colon > 0) {
    const std::string lang = arg.substr(colon + 1);
    bool ok = lang.size() >= 2 && lang.size() <= 35;
    size_t letters = 0;
    while (letters < lang.size() && std::isalpha(static_cast<unsigned char>(lang[letters]))) ++letters;
    ok = ok && letters >= 2 && letters <= 3 &&
         std::all_of(lang.begin(), lang.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; });
    if (ok) return {arg.substr(0, colon), lang};
  }
  return {arg, ""};
}

// --stall-timeout of a command that ingests: how long a live input may send nothing.
CLI::Option* AddStallTimeout(CLI::App* cmd, double& seconds) {
  return cmd->add_option("--stall-timeout", seconds,
                         "Live inputs (udp://, srt://, rtmp://, pipe:): seconds without data after which the title "
                         "is ended (before any data: an error), in (0, 3600] (default: ingest.stall_timeout in the "
                         "config, else 10)");
}

// The stall timeout from the flag (when given) or the config; (0, 3600], NaN refused.
Result<double> ResolveStallTimeout(const CLI::Option* flag, double seconds, const app::Config& cfg, const char* cmd) {
  if (flag->count() == 0) return cfg.stall_timeout;
  if (!(seconds > 0 && seconds <= 3600))
    return Error(ErrorCode::kInvalidArgument, "{}: --stall-timeout {} is not in (0, 3600] seconds", cmd, seconds);
  return seconds;
}

// The track options every command that segments shares.
struct TrackOptions {
  std::vector<std::string> audio;
  std::vector<std::string> subtitles;
  std::vector<std::string> input_options;  ///< KEY=VALUE
};

void AddContainerOption(CLI::App* cmd, std::string& container) {
  cmd->add_option("--container", container,
                  "Segment container: ts (MPEG-TS, as Kafka carries it) or fmp4 (CMAF; needed for HEVC in "
                  "browsers and Safari). Default: packager.container in the config, else ts")
      ->check(CLI::IsMember({"ts", "fmp4"}));
}

void AddTrackOptions(CLI::App* cmd, TrackOptions& t) {
  cmd->add_option("--audio", t.audio,
                  "Audio languages to carry from the first input, e.g. en,fr (BCP 47 or ISO 639; default: every track)")
      ->delimiter(',');
  cmd->add_option("--subtitles", t.subtitles,
                  "A subtitle file (.srt, .vtt, .ass) to carry as a WebVTT rendition, FILE[:LANG] (repeatable; "
                  "without LANG, from the file name: movie.fr.srt)");
  cmd->add_option("--input-option", t.input_options,
                  "A libavformat option for opening the inputs, KEY=VALUE (repeatable), e.g. listen=1 to accept an "
                  "rtmp:// push (an option neither the demuxer nor the protocol knows is an error)");
}

Status ApplyTrackOptions(const TrackOptions& t, segmenter::Params& p) {
  p.audio_languages = t.audio;
  for (const std::string& s : t.subtitles) p.subtitles.push_back(ParseSidecar(s));
  for (const std::string& o : t.input_options) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      return Error(ErrorCode::kInvalidArgument, "--input-option '{}' is not KEY=VALUE", o);
    p.input_options.emplace_back(o.substr(0, eq), o.substr(eq + 1));
  }
  return Status::Ok();
}

// --encrypt / --key-rotation / --key-store / --key-uri-prefix of a command that packages.
struct EncryptionOptions {
  std::string method;     ///< "" = the config's
  int64_t rotation = -1;  ///< -1 = the config's
  std::string key_store, key_uri_prefix;
};

void AddEncryptionOptions(CLI::App* cmd, EncryptionOptions& e) {
  cmd->add_option("--encrypt", e.method,
                  "Encrypt video and audio segments: aes-128 (RFC 8216 AES-128, a random key per rendition; keys "
                  "never go to Kafka) or none. Default: packager.encrypt in the config, else none")
      ->check(CLI::IsMember({"none", "aes-128"}));
  cmd->add_option("--key-rotation", e.rotation, "With --encrypt: a new key every N segments of a rendition (0 = one key)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  cmd->add_option("--key-store", e.key_store,
                  "With --encrypt: the directory keeping the keys, outside the output root (default: <out>.keys); "
                  "keys already in it are reused");
  cmd->add_option("--key-uri-prefix", e.key_uri_prefix,
                  "With --encrypt: key URIs become PREFIX<title>/v<N>/<rendition>/key-000000.key, for an external key "
                  "server (default: next to each playlist, served by 'serve --key-token')");
}

Result<packager::Encryption> ResolveEncryption(const EncryptionOptions& e, const app::Config& cfg) {
  packager::Encryption out;
  KHLS_ASSIGN_OR_RETURN(out.method, packager::ParseEncryptionMethod(e.method.empty() ? cfg.encrypt : e.method));
  out.key_rotation = e.rotation >= 0 ? static_cast<uint32_t>(e.rotation) : cfg.key_rotation;
  out.key_store = e.key_store.empty() ? cfg.key_store : e.key_store;
  out.key_uri_prefix = e.key_uri_prefix.empty() ? cfg.key_uri_prefix : e.key_uri_prefix;
  if (!out.enabled() && (e.rotation >= 0 || !e.key_store.empty() || !e.key_uri_prefix.empty()))
    return Status(ErrorCode::kInvalidArgument,
                  "--key-rotation, --key-store and --key-uri-prefix apply to encrypted output: add --encrypt aes-128");
  return out;
}

// --part-duration of a command that ingests: LL-HLS parts.
CLI::Option* AddPartDuration(CLI::App* cmd, double& seconds) {
  return cmd->add_option("--part-duration", seconds,
                         "LL-HLS: also cut every segment into parts of at most S seconds (0.1 to the segment "
                         "duration, e.g. 0.5), each published as soon as it is cut, for packagers with --low-latency "
                         "(default: ingest.part_duration in the config, else 0: whole segments)")
      ->check(CLI::Range(0.0, 60.0));
}

// --low-latency of a command that packages.
void AddLowLatency(CLI::App* cmd, bool& on) {
  cmd->add_flag("--low-latency", on,
                "LL-HLS: titles ingested with --part-duration are listed part by part as the parts arrive "
                "(EXT-X-PART, PRELOAD-HINT, SERVER-CONTROL, RENDITION-REPORT); serve the output with 'kafka-hls "
                "serve' (blocking reloads, delta updates). Default: packager.low_latency in the config");
}

void AddWindowOption(CLI::App* cmd, double& window) {
  cmd->add_option("--window", window,
                  "Seconds of segments the playlists of a live title list (a sliding window; at least three target "
                  "durations; 0 = keep every segment). Default: packager.window in the config, else 60. Titles from "
                  "files keep every segment")
      ->check(CLI::Range(0.0, 86400.0));
}

// The origin's key settings: --key-token (else $KHLS_KEY_TOKEN) and --key-store
// (else <root>.keys when it exists).
struct KeyServeOptions {
  std::string token, key_store;
};

void AddKeyServeOptions(CLI::App* cmd, KeyServeOptions& k) {
  cmd->add_option("--key-token", k.token,
                  "Serve AES-128 keys, only to requests with 'Authorization: Bearer TOKEN' (default: $KHLS_KEY_TOKEN; "
                  "without one, keys are not served)");
  cmd->add_option("--key-store", k.key_store, "The key store to serve keys from (default: <dir>.keys)");
}

void ApplyKeyServeOptions(const KeyServeOptions& k, const std::string& root, origin::OriginParams& op) {
  op.key_token = k.token;
  if (op.key_token.empty()) {
    if (const char* env = std::getenv("KHLS_KEY_TOKEN")) op.key_token = env;
  }
  op.key_store = k.key_store.empty() ? packager::KeyStore::DefaultFor(root).string() : k.key_store;
  std::error_code ec;
  if (op.key_token.empty() && std::filesystem::is_directory(op.key_store, ec))
    log::Warn("'{}' holds keys, which this origin does not serve: players of encrypted titles get 403 for them; give "
              "--key-token TOKEN (or $KHLS_KEY_TOKEN) to serve them to requests bearing it",
              op.key_store);
}

// --metrics-port / --metrics-bind of a subcommand.
struct MetricsOptions {
  int port = -1;  ///< -1: not given
  std::string bind = "127.0.0.1";
};

void AddMetricsOptions(CLI::App* cmd, MetricsOptions& m, const char* what, const char* default_port = "off") {
  cmd->add_option("--metrics-port", m.port,
                  fmt::format("Serve the Prometheus metrics of {} at /metrics, and its health at /healthz, on this "
                              "port (0 = any free port; default: {})",
                              what, default_port))
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--metrics-bind", m.bind, "Address of the metrics port");
}

// Starts the metrics endpoints when a port is given (else returns null) and
// announces them: "metrics at http://127.0.0.1:PORT/metrics".
Result<std::unique_ptr<metrics::Server>> StartMetrics(int port, const std::string& bind,
                                                      const metrics::Registry& registry,
                                                      std::function<metrics::HealthReport()> health) {
  if (port < 0) return std::unique_ptr<metrics::Server>();
  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<metrics::Server> server,
                        metrics::Server::Start({bind, port}, registry, std::move(health)));
  log::Info("metrics at {}", server->url());
  return server;
}

// The origin's part of /healthz: its root can be listed.
metrics::HealthReport WithOriginRoot(metrics::HealthReport report, const origin::Origin* origin) {
  if (!origin) return report;
  const Status root = origin->CheckRoot();
  if (root.ok()) return report;
  if (report.ok) report.text.clear();
  report.ok = false;
  report.text += fmt::format("origin: {}\n", root.message());
  return report;
}

// A title id made from a file name: "My Movie (2024).mkv" -> "My-Movie-2024".
std::string TitleFromPath(const std::string& input) {
  std::string stem = std::filesystem::path(input).stem().string();
  std::string out;
  for (char c : stem) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (ok) out += c;
    else if (!out.empty() && out.back() != '-') out += '-';
  }
  while (!out.empty() && (out.back() == '-' || out.back() == '.')) out.pop_back();
  if (out.size() > 128) out.resize(128);
  if (out.empty() || out == "." || out == "..") out = "title";
  return out;
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
  std::vector<std::string> inputs;
  std::string title;
  TrackOptions ingest_tracks;
  double segment_duration = 0;
  uint64_t chunk_size = 0;
  bool realtime = false, replace = false;
  CLI::App* ingest_cmd = app.add_subcommand("ingest", "Segment INPUT (a file or URL) and publish it to Kafka as a title");
  ingest_cmd
      ->add_option("input", inputs,
                   "Input file or URL (anything libavformat opens); more inputs are further video variants of the "
                   "title (a bitrate ladder with aligned keyframes)")
      ->required();
  ingest_cmd->add_option("--title", title, "Title id: 1-128 characters of A-Z a-z 0-9 . _ -, not starting with .")->required();
  ingest_cmd->add_option("--segment-duration", segment_duration, "Target segment duration in seconds")
      ->check(CLI::Range(1.0, 60.0));
  ingest_cmd->add_option("--chunk-size", chunk_size, "Payload bytes per Kafka record (default: as large as the topic's max.message.bytes allows, up to 1984 KiB)")
      ->check(CLI::Range(uint64_t{1024}, uint64_t{64} << 20));
  ingest_cmd->add_flag("--realtime", realtime, "Publish at media speed, as a live encoder would");
  double stall_timeout = 0;
  const CLI::Option* stall_timeout_opt = AddStallTimeout(ingest_cmd, stall_timeout);
  double part_duration = 0;
  const CLI::Option* part_duration_opt = AddPartDuration(ingest_cmd, part_duration);
  ingest_cmd->add_flag("--replace", replace,
                       "Publish even if the title holds a different source: packagers switch to the new version");
  AddTrackOptions(ingest_cmd, ingest_tracks);
  AddCommon(ingest_cmd, ic);

  // package
  Common pc;
  std::string out_dir, group;
  std::vector<std::string> until;
  CLI::App* package_cmd = app.add_subcommand("package", "Consume the topic and write HLS titles under --out");
  package_cmd->add_option("--out", out_dir, "Output root (DIR/<title>/master.m3u8)");
  package_cmd->add_option("--group", group, "Kafka consumer group (one group per origin)");
  package_cmd->add_option("--until-complete", until, "Exit 0 once this title is complete (repeatable)");
  std::string package_container;
  AddContainerOption(package_cmd, package_container);
  EncryptionOptions package_encryption;
  AddEncryptionOptions(package_cmd, package_encryption);
  double package_window = -1;
  AddWindowOption(package_cmd, package_window);
  bool package_low_latency = false;
  AddLowLatency(package_cmd, package_low_latency);
  MetricsOptions package_metrics;
  AddMetricsOptions(package_cmd, package_metrics, "the packager", "packager.metrics_port in the config, else off");
  AddCommon(package_cmd, pc);

  // serve
  std::string serve_dir, bind = "127.0.0.1";
  int port = 8080;
  CLI::App* serve_cmd = app.add_subcommand("serve", "HTTP origin for an output root (players read HLS over HTTP)");
  serve_cmd->add_option("dir", serve_dir, "Output root written by 'package'")->required();
  serve_cmd->add_option("--port", port, "TCP port (0 = any free port)")->check(CLI::Range(0, 65535));
  serve_cmd->add_option("--bind", bind, "Address to listen on");
  KeyServeOptions serve_keys;
  AddKeyServeOptions(serve_cmd, serve_keys);
  MetricsOptions serve_metrics;
  AddMetricsOptions(serve_cmd, serve_metrics, "the origin");

  // run
  Common rc;
  std::vector<std::string> run_inputs;
  std::string run_title, run_out;
  TrackOptions run_tracks;
  double run_segment_duration = 0;
  int run_port = -1;
  bool run_realtime = false, run_exit = false;
  CLI::App* run_cmd = app.add_subcommand(
      "run", "Ingest INPUT and package it in one process (optionally serving it): the quickest way to watch a file");
  run_cmd->add_option("input", run_inputs, "Input file or URL; more inputs are further video variants")->required();
  run_cmd->add_option("--title", run_title, "Title id (default: from the file name)");
  run_cmd->add_option("--out", run_out, "Output root");
  run_cmd->add_option("--segment-duration", run_segment_duration, "Target segment duration in seconds")
      ->check(CLI::Range(1.0, 60.0));
  run_cmd->add_option("--serve", run_port, "Serve the output over HTTP on this port while and after it runs")
      ->check(CLI::Range(0, 65535));
  run_cmd->add_option("--bind", bind, "Address to serve on");
  run_cmd->add_flag("--realtime", run_realtime, "Publish at media speed, as a live encoder would");
  double run_stall_timeout = 0;
  const CLI::Option* run_stall_timeout_opt = AddStallTimeout(run_cmd, run_stall_timeout);
  double run_part_duration = 0;
  const CLI::Option* run_part_duration_opt = AddPartDuration(run_cmd, run_part_duration);
  run_cmd->add_flag("--exit-when-done", run_exit, "With --serve: exit once the title is complete");
  std::string run_container;
  AddContainerOption(run_cmd, run_container);
  EncryptionOptions run_encryption;
  AddEncryptionOptions(run_cmd, run_encryption);
  double run_window = -1;
  AddWindowOption(run_cmd, run_window);
  std::string run_key_token;
  run_cmd->add_option("--key-token", run_key_token,
                      "With --serve and --encrypt: serve keys to requests with 'Authorization: Bearer TOKEN' "
                      "(default: $KHLS_KEY_TOKEN)");
  MetricsOptions run_metrics;
  AddMetricsOptions(run_cmd, run_metrics, "the packager and the origin");
  AddTrackOptions(run_cmd, run_tracks);
  AddCommon(run_cmd, rc);

  // repackage
  Common xc;
  std::vector<std::string> re_titles;
  bool re_all = false;
  std::string re_out;
  CLI::App* re_cmd = app.add_subcommand(
      "repackage", "Rebuild titles from the retained topic (no source file, no consumer group), then exit");
  auto* re_title_opt = re_cmd->add_option("--title", re_titles, "Title to rebuild (repeatable)");
  auto* re_all_opt = re_cmd->add_flag("--all", re_all, "Rebuild every title in the topic");
  re_title_opt->excludes(re_all_opt);
  re_cmd->add_option("--out", re_out, "Output root")->required();
  std::string re_container;
  AddContainerOption(re_cmd, re_container);
  EncryptionOptions re_encryption;
  AddEncryptionOptions(re_cmd, re_encryption);
  double re_segment_duration = 0;
  auto* re_duration_opt = re_cmd->add_option(
      "--segment-duration", re_segment_duration,
      "Re-cut every title at its keyframes to this target segment duration, seconds, in (0, 3600] (default: keep "
      "the ingest's segments; a title with a GOP longer than it is refused)");
  std::vector<std::string> re_renditions;
  re_cmd->add_option("--rendition", re_renditions,
                     "Keep only this rendition, by id as in the title (video-240p, audio-fr, subs-en; repeatable; at "
                     "least one video or audio)");
  AddCommon(re_cmd, xc);

  // topic describe
  Common tc;
  CLI::App* topic_cmd = app.add_subcommand("topic", "Inspect the topic");
  topic_cmd->require_subcommand(1);
  CLI::App* describe_cmd = topic_cmd->add_subcommand("describe", "Titles in the topic: size, segments, completeness");
  AddCommon(describe_cmd, tc);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (verbose) log::SetLevel(log::Level::kDebug);
  segmenter::SetLibraryLogLevel(verbose);

  if (*ingest_cmd) {
    auto resolved = ResolveAll(ic);
    if (!resolved.ok()) return Fail(resolved.status());
    const app::Config* cfg = &resolved->cfg;
    const kafka::Properties* props = &resolved->props;
    ingest::Params p;
    p.inputs = inputs;
    if (Status st = ApplyTrackOptions(ingest_tracks, p.segmenter); !st.ok()) return Fail(st);
    p.title = title;
    p.brokers = cfg->brokers;
    p.segmenter.target_duration = segment_duration > 0 ? segment_duration : cfg->segment_duration;
    auto stall = ResolveStallTimeout(stall_timeout_opt, stall_timeout, *cfg, "ingest");
    if (!stall.ok()) return Fail(stall.status());
    p.segmenter.stall_timeout = *stall;
    p.segmenter.part_duration = part_duration_opt->count() ? part_duration : cfg->part_duration;
    p.chunk_size = chunk_size ? chunk_size : cfg->chunk_size;
    p.max_transaction_bytes = cfg->max_transaction_bytes;
    p.topic = TopicFromConfig(*cfg, p.chunk_size);
    p.realtime = realtime;
    p.replace = replace;
    p.kafka = cfg->producer;
    p.kafka.insert(p.kafka.end(), props->begin(), props->end());
    auto r = ingest::Run(p, g_stop);
    if (!r.ok()) return Fail(r.status());
    return kExitOk;
  }

  if (*package_cmd) {
    auto resolved = ResolveAll(pc);
    if (!resolved.ok()) return Fail(resolved.status());
    const app::Config* cfg = &resolved->cfg;
    const kafka::Properties* props = &resolved->props;
    packager::Params p;
    p.out_dir = out_dir.empty() ? cfg->out_dir : out_dir;
    p.brokers = cfg->brokers;
    p.topic = TopicFromConfig(*cfg, cfg->chunk_size);
    p.group_id = group.empty() ? cfg->group : group;
    p.until_complete = {until.begin(), until.end()};
    p.limits.max_segment_bytes = cfg->max_segment_bytes;
    p.limits.max_buffered_bytes = cfg->max_buffered_bytes;
    p.durable = cfg->durable;
    p.container = *packager::ParseContainer(package_container.empty() ? cfg->container : package_container);
    auto encryption = ResolveEncryption(package_encryption, *cfg);
    if (!encryption.ok()) return Fail(encryption.status());
    p.encryption = *encryption;
    p.live_window_s = package_window >= 0 ? package_window : cfg->window;
    p.low_latency = package_low_latency || cfg->low_latency;
    p.kafka = cfg->consumer;
    p.kafka.insert(p.kafka.end(), props->begin(), props->end());
    metrics::Registry registry;
    metrics::Health health;
    const int metrics_port = package_metrics.port >= 0 ? package_metrics.port : cfg->metrics_port;
    if (metrics_port >= 0) {
      p.metrics = &registry;
      p.health = &health;
    }
    auto metrics_server =
        StartMetrics(metrics_port, package_metrics.bind, registry, [&health] { return health.Report(); });
    if (!metrics_server.ok()) return Fail(metrics_server.status());
    auto r = packager::Run(p, g_stop);
    if (!r.ok()) return Fail(r.status());
    return kExitOk;
  }
  if (*re_cmd) {
    if (re_titles.empty() && !re_all) return Fail(Status(ErrorCode::kInvalidArgument, "repackage: give --title ID (repeatable) or --all"));
    // (0, 3600]: 0 would mean "keep", and NaN passes CLI11's range checks.
    if (*re_duration_opt && !(re_segment_duration > 0 && re_segment_duration <= 3600))
      return Fail(Error(ErrorCode::kInvalidArgument, "repackage: --segment-duration {} is not in (0, 3600] seconds",
                        re_segment_duration));
    for (const std::string& id : re_renditions)
      if (id.empty()) return Fail(Status(ErrorCode::kInvalidArgument, "repackage: --rendition needs a rendition id"));
    auto resolved = ResolveAll(xc);
    if (!resolved.ok()) return Fail(resolved.status());
    const app::Config* cfg = &resolved->cfg;
    const kafka::Properties* props = &resolved->props;
    packager::RepackageParams p;
    p.source = {cfg->brokers, cfg->topic, cfg->consumer};
    p.source.kafka.insert(p.source.kafka.end(), props->begin(), props->end());
    p.out_dir = re_out;
    p.titles = {re_titles.begin(), re_titles.end()};
    p.limits.max_segment_bytes = cfg->max_segment_bytes;
    p.limits.max_buffered_bytes = cfg->max_buffered_bytes;
    p.durable = cfg->durable;
    p.container = *packager::ParseContainer(re_container.empty() ? cfg->container : re_container);
    auto encryption = ResolveEncryption(re_encryption, *cfg);
    if (!encryption.ok()) return Fail(encryption.status());
    p.encryption = *encryption;
    p.segment_duration = re_segment_duration;
    p.renditions = {re_renditions.begin(), re_renditions.end()};
    auto r = packager::Repackage(p, g_stop);
    if (!r.ok()) return Fail(r.status());
    return kExitOk;
  }

  if (*describe_cmd) {
    auto resolved = ResolveAll(tc);
    if (!resolved.ok()) return Fail(resolved.status());
    const app::Config* cfg = &resolved->cfg;
    const kafka::Properties* props = &resolved->props;
    packager::ScanParams sp{cfg->brokers, cfg->topic, cfg->consumer};
    sp.kafka.insert(sp.kafka.end(), props->begin(), props->end());
    auto settings = kafka::DescribeTopicSettings(sp.brokers, sp.topic, sp.kafka);
    if (!settings.ok()) return Fail(settings.status());
    std::printf("topic %s: %d partitions, replication factor %d, min.insync.replicas %s, retention.ms %s\n",
                sp.topic.c_str(), settings->partitions, settings->replication_factor,
                settings->min_insync_replicas.c_str(), settings->retention_ms.c_str());
    auto r = packager::DescribeTopic(sp, g_stop);
    if (!r.ok()) return Fail(r.status());
    std::printf("%-40s %9s %7s %-10s %5s %8s %10s %10s %-10s %s\n", "TITLE", "PARTITION", "VERSION", "RENDITIONS",
                "RUNS", "SEGMENTS", "DURATION_S", "MB", "STATUS", "MALFORMED");
    for (const auto& t : *r)
      std::printf("%-40s %9d %7u %-10s %5u %8u %10.1f %10.1f %-10s %llu\n", t.title.c_str(), t.partition, t.version,
                  t.renditions.c_str(), t.runs, t.segments,
                  t.duration_s, static_cast<double>(t.bytes) / 1e6, t.complete ? "complete" : "incomplete",
                  static_cast<unsigned long long>(t.malformed));
    return kExitOk;
  }

  if (*serve_cmd) {
    metrics::Registry registry;
    origin::OriginParams op;
    op.root = serve_dir;
    op.bind = bind;
    op.port = port;
    op.metrics = &registry;
    ApplyKeyServeOptions(serve_keys, serve_dir, op);
    auto origin = origin::Origin::Start(op);
    if (!origin.ok()) return Fail(origin.status());
    log::Info("serving '{}' at {} (Ctrl-C to stop)", serve_dir, (*origin)->url());
    const origin::Origin* serving = origin->get();
    auto metrics_server = StartMetrics(serve_metrics.port, serve_metrics.bind, registry,
                                       [serving] { return WithOriginRoot({}, serving); });
    if (!metrics_server.ok()) return Fail(metrics_server.status());
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (*metrics_server) (*metrics_server)->Stop();
    (*origin)->Stop();
    return kExitOk;
  }

  if (*run_cmd) {
    auto resolved = ResolveAll(rc);
    if (!resolved.ok()) return Fail(resolved.status());
    const app::Config* cfg = &resolved->cfg;
    const kafka::Properties* props = &resolved->props;
    const std::string title = run_title.empty() ? TitleFromPath(run_inputs.front()) : run_title;
    if (Status s = proto::CheckTitleId(title); !s.ok()) return Fail(s);

    ingest::Params ip;
    ip.inputs = run_inputs;
    if (Status st = ApplyTrackOptions(run_tracks, ip.segmenter); !st.ok()) return Fail(st);
    ip.title = title;
    ip.brokers = cfg->brokers;
    ip.segmenter.target_duration = run_segment_duration > 0 ? run_segment_duration : cfg->segment_duration;
    auto stall = ResolveStallTimeout(run_stall_timeout_opt, run_stall_timeout, *cfg, "run");
    if (!stall.ok()) return Fail(stall.status());
    ip.segmenter.stall_timeout = *stall;
    ip.segmenter.part_duration = run_part_duration_opt->count() ? run_part_duration : cfg->part_duration;
    ip.chunk_size = cfg->chunk_size;
    ip.max_transaction_bytes = cfg->max_transaction_bytes;
    ip.topic = TopicFromConfig(*cfg, ip.chunk_size);
    ip.realtime = run_realtime;
    ip.kafka = cfg->producer;
    ip.kafka.insert(ip.kafka.end(), props->begin(), props->end());

    packager::Params pp;
    pp.out_dir = run_out.empty() ? cfg->out_dir : run_out;
    pp.brokers = cfg->brokers;
    pp.topic = ip.topic;
    // Its own group, never joined before and never committed: it reads the title from the
    // start of the log every time (whatever the output dir holds) and takes no titles from
    // live packagers.
    pp.group_id = fmt::format("kafka-hls-run.{}.{}", title, ::getpid());
    pp.commit_offsets = false;
    pp.only_titles = {title};
    pp.until_complete = {title};
    pp.limits.max_segment_bytes = cfg->max_segment_bytes;
    pp.limits.max_buffered_bytes = cfg->max_buffered_bytes;
    pp.durable = cfg->durable;
    pp.container = *packager::ParseContainer(run_container.empty() ? cfg->container : run_container);
    auto encryption = ResolveEncryption(run_encryption, *cfg);
    if (!encryption.ok()) return Fail(encryption.status());
    pp.encryption = *encryption;
    pp.live_window_s = run_window >= 0 ? run_window : cfg->window;
    // One process: the parts it cuts are listed as they come.
    pp.low_latency = ip.segmenter.part_duration > 0;
    pp.kafka = cfg->consumer;
    metrics::Registry registry;
    metrics::Health health;
    if (run_metrics.port >= 0) {
      pp.metrics = &registry;
      pp.health = &health;
    }

    std::unique_ptr<origin::Origin> origin;
    if (run_port >= 0) {
      std::error_code ec;
      std::filesystem::create_directories(pp.out_dir, ec);
      origin::OriginParams op;
      op.root = pp.out_dir;
      op.bind = bind;
      op.port = run_port;
      op.metrics = &registry;
      if (pp.encryption.enabled()) {
        ApplyKeyServeOptions({run_key_token, pp.encryption.key_store}, pp.out_dir, op);
        // The origin opens the key store now; the packager would make it only at the first segment.
        if (!op.key_token.empty()) {
          auto store = packager::KeyStore::Open(op.key_store, pp.out_dir, pp.durable);
          if (!store.ok()) return Fail(store.status());
        }
      }
      auto started = origin::Origin::Start(op);
      if (!started.ok()) return Fail(started.status());
      origin = std::move(*started);
    }
    const std::filesystem::path master = std::filesystem::absolute(pp.out_dir) / title / "master.m3u8";
    if (origin)
      log::Info("watch it at {}  (stream: {}{}/master.m3u8)", origin->url(), origin->url(), title);
    // The packager's checks count while it runs; once the title is complete only the origin's do.
    std::atomic<bool> packaging{true};
    auto metrics_server = StartMetrics(run_metrics.port, run_metrics.bind, registry, [&] {
      return WithOriginRoot(packaging ? health.Report() : metrics::HealthReport{}, origin.get());
    });
    if (!metrics_server.ok()) return Fail(metrics_server.status());

    // The packager runs beside the ingest, so the title is playable from its first segment.
    // It stops by itself once the title is complete; either side failing stops the other.
    Result<packager::Stats> packaged = packager::Stats{};
    std::thread packager_thread([&] {
      packaged = packager::Run(pp, g_stop);
      if (!packaged.ok()) g_stop = true;
    });
    auto ingested = ingest::Run(ip, g_stop);
    if (!ingested.ok()) g_stop = true;
    packager_thread.join();
    packaging = false;
    if (!packaged.ok() && packaged.status().code() != ErrorCode::kCancelled) return Fail(packaged.status());
    if (!ingested.ok()) return Fail(ingested.status());
    if (!packaged.ok()) return Fail(packaged.status());
    log::Info("title '{}' is ready: {}", title, master.string());
    if (origin) {
      if (!run_exit) {
        log::Info("still serving at {}{}/master.m3u8 (Ctrl-C to stop)", origin->url(), title);
        while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (*metrics_server) (*metrics_server)->Stop();
      origin->Stop();
    }
    std::printf("%s\n", master.string().c_str());
    return kExitOk;
  }
  return kExitUsage;
}
