#include "config.h"

#include <set>

#include <yaml-cpp/yaml.h>

namespace khls::app {
namespace {

Status Bad(const std::string& path, const YAML::Node& node, const std::string& key, const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, "{}:{}: {}: {}", path, node.Mark().line + 1, key, why);
}

template <typename T>
Status Get(const std::string& path, const YAML::Node& parent, const std::string& section, const char* key, T& out) {
  const YAML::Node n = parent[key];
  if (!n) return Status::Ok();
  try {
    out = n.as<T>();
  } catch (const YAML::Exception&) {
    return Bad(path, n, section + "." + key, fmt::format("'{}' is not a valid value", n.Scalar()));
  }
  return Status::Ok();
}

Status CheckKeys(const std::string& path, const YAML::Node& map, const std::string& section,
                 const std::set<std::string>& known) {
  if (!map) return Status::Ok();
  if (!map.IsMap()) return Bad(path, map, section, "expected a mapping");
  for (const auto& kv : map) {
    const std::string k = kv.first.as<std::string>();
    if (!known.count(k)) return Bad(path, kv.first, section.empty() ? k : section + "." + k, "unknown setting");
  }
  return Status::Ok();
}

Status GetProps(const std::string& path, const YAML::Node& parent, const std::string& section, const char* key,
                kafka::Properties& out) {
  const YAML::Node n = parent[key];
  if (!n || n.IsNull()) return Status::Ok();
  if (!n.IsMap()) return Bad(path, n, section + "." + key, "expected a mapping of librdkafka properties");
  for (const auto& kv : n) out.emplace_back(kv.first.as<std::string>(), kv.second.as<std::string>());
  return Status::Ok();
}

}  // namespace

Result<Config> LoadConfig(const std::string& path) {
  Config c;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return Error(ErrorCode::kInvalidArgument, "config file '{}' cannot be read", path);
  } catch (const YAML::Exception& e) {
    return Error(ErrorCode::kInvalidArgument, "{}:{}: {}", path, e.mark.line + 1, e.msg);
  }
  if (root.IsNull()) return c;
  KHLS_RETURN_IF_ERROR(CheckKeys(path, root, "", {"kafka", "ingest", "packager", "serve"}));
  const YAML::Node k = root["kafka"], i = root["ingest"], p = root["packager"];
  KHLS_RETURN_IF_ERROR(CheckKeys(path, k, "kafka",
                                 {"brokers", "topic", "partitions", "replication_factor", "min_insync_replicas",
                                  "retention_ms", "producer", "consumer"}));
  KHLS_RETURN_IF_ERROR(
      CheckKeys(path, i, "ingest", {"segment_duration", "chunk_size", "max_transaction_bytes", "stall_timeout", "part_duration"}));
  KHLS_RETURN_IF_ERROR(
      CheckKeys(path, p, "packager",
                {"out", "group", "max_segment_bytes", "max_buffered_bytes", "durable", "container", "metrics_port", "encrypt",
                 "key_rotation", "key_store", "key_uri_prefix", "window", "low_latency"}));
  if (k) {
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "brokers", c.brokers));
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "topic", c.topic));
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "partitions", c.partitions));
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "replication_factor", c.replication_factor));
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "min_insync_replicas", c.min_insync_replicas));
    if (c.replication_factor == 0 || c.replication_factor < -1)
      return Bad(path, k["replication_factor"], "kafka.replication_factor", "must be -1 (the broker's) or at least 1");
    if (c.min_insync_replicas < 0)
      return Bad(path, k["min_insync_replicas"], "kafka.min_insync_replicas", "must be 0 (the broker's) or at least 1");
    KHLS_RETURN_IF_ERROR(Get(path, k, "kafka", "retention_ms", c.retention_ms));
    KHLS_RETURN_IF_ERROR(GetProps(path, k, "kafka", "producer", c.producer));
    KHLS_RETURN_IF_ERROR(GetProps(path, k, "kafka", "consumer", c.consumer));
    if (c.partitions < 1) return Bad(path, k["partitions"], "kafka.partitions", "must be at least 1");
  }
  if (i) {
    KHLS_RETURN_IF_ERROR(Get(path, i, "ingest", "segment_duration", c.segment_duration));
    KHLS_RETURN_IF_ERROR(Get(path, i, "ingest", "chunk_size", c.chunk_size));
    KHLS_RETURN_IF_ERROR(Get(path, i, "ingest", "max_transaction_bytes", c.max_transaction_bytes));
    KHLS_RETURN_IF_ERROR(Get(path, i, "ingest", "stall_timeout", c.stall_timeout));
    // Written so that NaN fails too.
    if (!(c.stall_timeout > 0 && c.stall_timeout <= 3600))
      return Bad(path, i["stall_timeout"], "ingest.stall_timeout", "must be in (0, 3600] seconds");
    KHLS_RETURN_IF_ERROR(Get(path, i, "ingest", "part_duration", c.part_duration));
    if (!(c.part_duration == 0 || (c.part_duration >= 0.1 && c.part_duration <= 60)))
      return Bad(path, i["part_duration"], "ingest.part_duration",
                 "must be 0 (whole segments) or 0.1 to 60 seconds (at most the segment duration)");
  }
  if (p) {
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "out", c.out_dir));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "group", c.group));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "max_segment_bytes", c.max_segment_bytes));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "max_buffered_bytes", c.max_buffered_bytes));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "durable", c.durable));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "container", c.container));
    if (c.container != "ts" && c.container != "fmp4")
      return Bad(path, p["container"], "packager.container", fmt::format("'{}' is not one of: ts, fmp4", c.container));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "metrics_port", c.metrics_port));
    if (c.metrics_port < -1 || c.metrics_port > 65535)
      return Bad(path, p["metrics_port"], "packager.metrics_port", "must be -1 (off), 0 (any free port) or a port");
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "encrypt", c.encrypt));
    if (c.encrypt != "none" && c.encrypt != "aes-128")
      return Bad(path, p["encrypt"], "packager.encrypt", fmt::format("'{}' is not one of: none, aes-128", c.encrypt));
    int64_t rotation = 0;
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "key_rotation", rotation));
    if (rotation < 0 || rotation > 1000000)
      return Bad(path, p["key_rotation"], "packager.key_rotation", "must be 0 (one key) to 1000000 segments");
    c.key_rotation = static_cast<uint32_t>(rotation);
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "key_store", c.key_store));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "key_uri_prefix", c.key_uri_prefix));
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "window", c.window));
    if (!(c.window >= 0 && c.window <= 86400))
      return Bad(path, p["window"], "packager.window", "must be 0 (keep every segment) to 86400 seconds");
    KHLS_RETURN_IF_ERROR(Get(path, p, "packager", "low_latency", c.low_latency));
  }
  return c;
}

}  // namespace khls::app
