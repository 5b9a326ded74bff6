#include <doctest/doctest.h>

#include <fstream>

#include <fmt/format.h>

#include "config.h"
#include "test_util.h"

using namespace khls;

namespace {

std::string Write(const test::TempDir& d, const std::string& text) {
  auto p = d.path() / "c.yaml";
  std::ofstream(p) << text;
  return p.string();
}

}  // namespace

TEST_CASE("the shipped configs/local.yaml loads with the documented values") {
  auto c = app::LoadConfig(std::string(KHLS_SOURCE_DIR) + "/configs/local.yaml");
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->brokers == "127.0.0.1:9092");
  CHECK(c->topic == "kafka-hls");
  CHECK(c->partitions == 6);
  CHECK(c->replication_factor == -1);
  CHECK(c->min_insync_replicas == 0);
  CHECK(c->retention_ms == -1);
  CHECK(c->segment_duration == 6.0);
  CHECK(c->chunk_size == 0);  // as large as the topic accepts
  CHECK(c->max_transaction_bytes == 8388608);
  CHECK(c->stall_timeout == 10.0);
  CHECK(c->out_dir == "out");
  CHECK(c->group == "kafka-hls-packager");
  CHECK(c->durable);
  CHECK(c->producer.empty());  // ingest's own producer settings suit the local broker
  CHECK(c->encrypt == "none");
  CHECK(c->key_rotation == 0);
  CHECK(c->key_store.empty());
  CHECK(c->key_uri_prefix.empty());
  CHECK(c->window == 60);
  CHECK(c->part_duration == 0);
  CHECK_FALSE(c->low_latency);
}

TEST_CASE("LL-HLS settings load and are checked") {
  test::TempDir d;
  auto c = app::LoadConfig(Write(d, "ingest:\n  part_duration: 0.5\npackager:\n  low_latency: true\n"));
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->part_duration == 0.5);
  CHECK(c->low_latency);
  for (const char* bad : {"0.05", "-1", "61", ".nan"}) {
    CAPTURE(bad);
    auto r = app::LoadConfig(Write(d, fmt::format("ingest:\n  part_duration: {}\n", bad)));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("c.yaml:2: ingest.part_duration: must be 0 (whole segments) or 0.1 to 60") !=
          std::string::npos);
  }
  CHECK(app::LoadConfig(Write(d, "packager:\n  low_latency: maybe\n")).status().message().find(
            "packager.low_latency") != std::string::npos);
}

TEST_CASE("encryption settings load and are checked") {
  test::TempDir d;
  auto c = app::LoadConfig(Write(d, "packager:\n  encrypt: aes-128\n  key_rotation: 10\n  key_store: /srv/k\n"
                                       "  key_uri_prefix: https://keys.example.com/\n"));
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->encrypt == "aes-128");
  CHECK(c->key_rotation == 10);
  CHECK(c->key_store == "/srv/k");
  CHECK(c->key_uri_prefix == "https://keys.example.com/");
  auto method = app::LoadConfig(Write(d, "packager:\n  encrypt: sample-aes\n"));
  CHECK(method.status().message().find("c.yaml:2: packager.encrypt: 'sample-aes' is not one of: none, aes-128") !=
        std::string::npos);
  auto window = app::LoadConfig(Write(d, "packager:\n  window: -5\n"));
  CHECK(window.status().message().find("c.yaml:2: packager.window: must be 0") != std::string::npos);
  auto rotation = app::LoadConfig(Write(d, "packager:\n  key_rotation: -1\n"));
  CHECK(rotation.status().message().find("packager.key_rotation: must be 0") != std::string::npos);
}

TEST_CASE("ingest.stall_timeout loads and is checked") {
  test::TempDir d;
  auto c = app::LoadConfig(Write(d, "ingest:\n  stall_timeout: 2.5\n"));
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->stall_timeout == 2.5);
  CHECK(app::LoadConfig(Write(d, "ingest:\n  stall_timeout: 3600\n"))->stall_timeout == 3600.0);
  CHECK(app::LoadConfig(Write(d, "kafka:\n  topic: t\n"))->stall_timeout == 10.0);  // the default
  for (const char* bad : {"0", "-1", "3601", ".nan"}) {
    CAPTURE(bad);
    auto r = app::LoadConfig(Write(d, fmt::format("kafka:\n  topic: t\ningest:\n  segment_duration: 2\n  stall_timeout: {}\n", bad)));
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.status().message().find("c.yaml:5: ingest.stall_timeout: must be in (0, 3600] seconds") !=
                      std::string::npos,
                  r.status().message());
  }
  auto word = app::LoadConfig(Write(d, "ingest:\n  stall_timeout: forever\n"));
  CHECK(word.status().message().find("c.yaml:2: ingest.stall_timeout: 'forever' is not a valid value") !=
        std::string::npos);
}

TEST_CASE("config errors name the file, the line and the key") {
  test::TempDir d;
  auto unknown = app::LoadConfig(Write(d, "kafka:\n  brokers: a:1\n  bogus: 3\n"));
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message().find("c.yaml:3: kafka.bogus: unknown setting") != std::string::npos);
  auto bad_value = app::LoadConfig(Write(d, "ingest:\n  chunk_size: lots\n"));
  REQUIRE_FALSE(bad_value.ok());
  CHECK(bad_value.status().message().find("c.yaml:2: ingest.chunk_size: 'lots' is not a valid value") !=
        std::string::npos);
  auto syntax = app::LoadConfig(Write(d, "kafka: [unclosed\n"));
  CHECK_FALSE(syntax.ok());
  CHECK(app::LoadConfig((d.path() / "missing.yaml").string()).status().message().find("cannot be read") !=
        std::string::npos);
  auto partitions = app::LoadConfig(Write(d, "kafka:\n  partitions: 0\n"));
  CHECK(partitions.status().message().find("kafka.partitions: must be at least 1") != std::string::npos);
  auto cluster = app::LoadConfig(Write(d, "kafka:\n  replication_factor: 3\n  min_insync_replicas: 2\n"));
  REQUIRE_MESSAGE(cluster.ok(), cluster.status().message());
  CHECK(cluster->replication_factor == 3);
  CHECK(cluster->min_insync_replicas == 2);
  auto rf = app::LoadConfig(Write(d, "kafka:\n  replication_factor: 0\n"));
  CHECK(rf.status().message().find("c.yaml:2: kafka.replication_factor: must be -1 (the broker's) or at least 1") !=
        std::string::npos);
}

TEST_CASE("librdkafka pass-through keeps every property") {
  test::TempDir d;
  auto c = app::LoadConfig(Write(d, "kafka:\n  consumer:\n    fetch.max.bytes: 1048576\n    client.rack: r1\n"
                                       "  producer:\n    linger.ms: 5\n"));
  REQUIRE(c.ok());
  CHECK(c->consumer.size() == 2);
  CHECK(c->consumer[1].second == "r1");
  REQUIRE(c->producer.size() == 1);
  CHECK(c->producer[0] == std::pair<std::string, std::string>{"linger.ms", "5"});
}
