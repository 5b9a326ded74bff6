// Metrics and health: the registry's exact Prometheus text, health checks, the
// /metrics + /healthz server, the engine's reject reasons, the config key; then
// the binary against the real broker: `package --metrics-port 0` (counters equal
// its log, lag reaches 0, /healthz ok), a packager that cannot reach Kafka
// (/healthz 503), and `serve --metrics-port 0` (requests by kind and status).
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <sstream>

#include <httplib.h>

#include "config.h"
#include "khls/engine.h"
#include "khls/metrics.h"
#include "khls/metrics_server.h"
#include "pipeline_util.h"

using namespace khls;
using namespace khls::test;
namespace fs = std::filesystem;

namespace {

// The value of one series ("name" or `name{a="b"}`) in Prometheus text; NaN when absent.
double Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  return std::nan("");
}

// Every series of a metric: label text ("{...}" or "") -> value.
std::map<std::string, double> Series(const std::string& text, const std::string& name) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, name.size(), name) != 0 || line.size() == name.size()) continue;
    const char next = line[name.size()];
    if (next != '{' && next != ' ') continue;
    const auto space = line.rfind(' ');
    out[line.substr(name.size(), space - name.size())] = std::stod(line.substr(space + 1));
  }
  return out;
}

void WriteFile(const fs::path& path, const std::string& data) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary);
  f << data;
  REQUIRE(f.good());
}

/// "http://127.0.0.1:PORT" of the metrics endpoint a kafka-hls process announced; "" at the timeout.
std::string WaitForMetricsUrl(const fs::path& log) {
  return WaitForUrl(log, 30s, R"(metrics at (http://127\.0\.0\.1:\d+)/metrics)");
}

struct Answer {
  int status = -1;
  std::string body;
};

Answer Get(const std::string& base, const std::string& path, httplib::Headers headers = {}) {
  httplib::Client c(base);
  c.set_connection_timeout(5);
  c.set_read_timeout(10);
  headers.emplace("Accept-Encoding", "identity");
  auto res = c.Get(path, headers);
  if (!res) return {};
  return {res->status, res->body};
}

bool WaitFor(const std::function<bool()>& done, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return done();
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);  // nothing listens there now
  return ntohs(a.sin_port);
}

}  // namespace

TEST_CASE("registry: exact text of a counter, a labelled gauge and a histogram") {
  metrics::Registry r;
  metrics::Counter& events = r.AddCounter("khls_test_events_total", "Events seen");
  events.Inc();
  events.Inc(2);
  events.Inc(-5);  // ignored: counters only go up
  auto& queue = r.AddGaugeFamily("khls_test_queue_bytes", "Queued bytes\nby queue, \\ included", {"queue"});
  queue.With({"b"}).Set(1.5);
  queue.With({"a \"quoted\"\nline\\"}).Set(-2);
  metrics::Histogram& h = r.AddHistogram("khls_test_duration_seconds", "Durations", {0.25, 1, 2.5});
  for (double v : {0.0625, 0.25, 2.0, 100.0}) h.Observe(v);  // 0.25 is in its bucket: bounds are inclusive
  r.AddCounterFamily("khls_test_empty_total", "No series yet", {"kind"});
  CHECK(r.Render() ==
        "# HELP khls_test_events_total Events seen\n"
        "# TYPE khls_test_events_total counter\n"
        "khls_test_events_total 3\n"
        "# HELP khls_test_queue_bytes Queued bytes\\nby queue, \\\\ included\n"
        "# TYPE khls_test_queue_bytes gauge\n"
        "khls_test_queue_bytes{queue=\"a \\\"quoted\\\"\\nline\\\\\"} -2\n"
        "khls_test_queue_bytes{queue=\"b\"} 1.5\n"
        "# HELP khls_test_duration_seconds Durations\n"
        "# TYPE khls_test_duration_seconds histogram\n"
        "khls_test_duration_seconds_bucket{le=\"0.25\"} 2\n"
        "khls_test_duration_seconds_bucket{le=\"1\"} 2\n"
        "khls_test_duration_seconds_bucket{le=\"2.5\"} 3\n"
        "khls_test_duration_seconds_bucket{le=\"+Inf\"} 4\n"
        "khls_test_duration_seconds_sum 102.3125\n"
        "khls_test_duration_seconds_count 4\n"
        "# HELP khls_test_empty_total No series yet\n"
        "# TYPE khls_test_empty_total counter\n");
}

TEST_CASE("registry: labelled histograms, removal, re-registration, special values") {
  metrics::Registry r;
  auto& h = r.AddHistogramFamily("khls_test_op_seconds", "Op time", {"op"}, {0.5});
  h.With({"write"}).Observe(1);
  auto& g = r.AddGaugeFamily("khls_test_lag_records", "Lag", {"topic", "partition"});
  g.With({"t", "0"}).Set(3);
  g.With({"t", "1"}).Set(std::numeric_limits<double>::infinity());
  g.With({"t", "2"}).Set(std::nan(""));
  g.Remove({"t", "0"});
  g.Remove({"t", "9"});  // absent: a no-op
  // The same definition again is the same metric.
  CHECK(&r.AddGaugeFamily("khls_test_lag_records", "Lag", {"topic", "partition"}) == &g);
  metrics::Counter& a = r.AddCounter("khls_test_x_total", "x");
  CHECK(&r.AddCounter("khls_test_x_total", "x") == &a);
  CHECK(r.Render() ==
        "# HELP khls_test_op_seconds Op time\n"
        "# TYPE khls_test_op_seconds histogram\n"
        "khls_test_op_seconds_bucket{op=\"write\",le=\"0.5\"} 0\n"
        "khls_test_op_seconds_bucket{op=\"write\",le=\"+Inf\"} 1\n"
        "khls_test_op_seconds_sum{op=\"write\"} 1\n"
        "khls_test_op_seconds_count{op=\"write\"} 1\n"
        "# HELP khls_test_lag_records Lag\n"
        "# TYPE khls_test_lag_records gauge\n"
        "khls_test_lag_records{topic=\"t\",partition=\"1\"} +Inf\n"
        "khls_test_lag_records{topic=\"t\",partition=\"2\"} NaN\n"
        "# HELP khls_test_x_total x\n"
        "# TYPE khls_test_x_total counter\n"
        "khls_test_x_total 0\n");
}

TEST_CASE("registry: concurrent updates are all counted") {
  metrics::Registry r;
  auto& c = r.AddCounterFamily("khls_test_hits_total", "Hits", {"worker"});
  auto& h = r.AddHistogram("khls_test_wait_seconds", "Waits", {1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        c.With({std::to_string(t % 2)}).Inc();
        h.Observe(0.5);
        if (i % 1000 == 0) (void)r.Render();
      }
    });
  for (auto& t : threads) t.join();
  CHECK(c.With({"0"}).Value() == 20000);
  CHECK(c.With({"1"}).Value() == 20000);
  CHECK(h.Read().count == 40000);
  CHECK(h.Read().cumulative.front() == 40000);
}

TEST_CASE("health: pending, passing, failing and stale checks") {
  metrics::Health h;
  CHECK(h.Report().ok);  // no checks: nothing is wrong
  h.Add("kafka", std::chrono::milliseconds(200), "not reached yet");
  h.Add("output");
  metrics::HealthReport r = h.Report();
  CHECK_FALSE(r.ok);
  CHECK(r.text == "kafka: not reached yet\n");
  h.Pass("kafka");
  r = h.Report();
  CHECK(r.ok);
  CHECK(r.text == "ok");
  h.Fail("output", "write 'x/seg-000001.ts': No space left on device");
  h.Fail("unknown", "ignored");
  r = h.Report();
  CHECK_FALSE(r.ok);
  CHECK(r.text == "output: write 'x/seg-000001.ts': No space left on device\n");
  h.Pass("output");
  CHECK(h.Report().ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  r = h.Report();
  CHECK_FALSE(r.ok);
  CHECK(r.text.starts_with("kafka: not confirmed for 1."));
  CHECK(r.text.ends_with(" s (at most 0.2 s allowed)\n"));
  h.Pass("kafka");
  h.Fail("kafka", "_ALL_BROKERS_DOWN: 1/1 brokers are down");
  CHECK(h.Report().text == "kafka: _ALL_BROKERS_DOWN: 1/1 brokers are down\n");
}

TEST_CASE("metrics server: /metrics, /healthz, 404, 405, a taken port, clean stop") {
  metrics::Registry r;
  r.AddCounter("khls_test_scrapes_total", "Scrapes").Inc(7);
  std::atomic<bool> healthy{true};
  auto server = metrics::Server::Start({"127.0.0.1", 0}, r, [&] {
    return healthy ? metrics::HealthReport{} : metrics::HealthReport{false, "kafka: not reached yet\n"};
  });
  REQUIRE_MESSAGE(server.ok(), server.status().message());
  const int port = (*server)->port();
  CHECK(port > 0);
  CHECK((*server)->url() == fmt::format("http://127.0.0.1:{}/metrics", port));
  httplib::Client c("127.0.0.1", port);
  auto m = c.Get("/metrics");
  REQUIRE(m);
  CHECK(m->status == 200);
  CHECK(m->body == r.Render());
  CHECK(m->get_header_value("Content-Type") == metrics::kContentType);
  auto ok = c.Get("/healthz");
  REQUIRE(ok);
  CHECK(ok->status == 200);
  CHECK(ok->body == "ok\n");
  healthy = false;
  auto bad = c.Get("/healthz");
  REQUIRE(bad);
  CHECK(bad->status == 503);
  CHECK(bad->body == "kafka: not reached yet\n");
  CHECK(c.Get("/")->status == 404);
  CHECK(c.Get("/movie/master.m3u8")->status == 404);
  CHECK(c.Post("/metrics", "", "text/plain")->status == 405);
  CHECK(c.Head("/metrics")->status == 200);

  auto again = metrics::Server::Start({"127.0.0.1", port}, r, nullptr);
  REQUIRE_FALSE(again.ok());
  CHECK(again.status().code() == ErrorCode::kIo);
  CHECK(metrics::Server::Start({"127.0.0.1", 70000}, r, nullptr).status().code() == ErrorCode::kInvalidArgument);

  (*server)->Stop();
  (*server)->Stop();  // idempotent
  httplib::Client after("127.0.0.1", port);
  after.set_connection_timeout(1);
  CHECK_FALSE(after.Get("/metrics"));
}

TEST_CASE("engine: rejected records are counted by reason; publishes are timed; segment bytes counted") {
  using namespace khls::packager;
  TempDir d;
  auto store = OutputStore::Open(d.path().string(), false);
  REQUIRE(store.ok());
  Engine e(std::move(*store), {});
  std::vector<Status> published;
  e.set_publish_observer([&](std::chrono::steady_clock::duration took, const Status& st) {
    CHECK(took.count() >= 0);
    published.push_back(st);
  });
  const auto run = proto::NewRunId();
  proto::Rendition audio;
  audio.id = "audio-en";
  audio.kind = proto::RenditionKind::kAudio;
  audio.language = "en";
  audio.codecs = "mp4a.40.2";
  proto::TitleStart start;
  start.title = "t";
  start.run_id = run;
  start.target_duration_s = 2;
  start.segment_duration_ms = 2000;
  start.renditions = {audio};
  auto feed = [&](std::string_view key, const std::vector<uint8_t>& value) {
    auto r = e.OnRecord(key, value);
    REQUIRE(r.ok());
  };
  feed("t", {1, 2, 3});                // malformed
  feed("other", proto::Encode(start));  // key_mismatch
  const std::vector<uint8_t> data(3000, 0x47);
  feed("ghost", proto::EncodeSegment({"ghost", run, 0, 0, 0, 180000}, data)[0]);  // orphan
  feed("t", proto::Encode(start));
  uint64_t bytes = 0;
  for (uint32_t seq = 0; seq < 2; ++seq) {
    std::vector<uint8_t> seg(4000 + seq, static_cast<uint8_t>(seq));
    bytes += seg.size();
    for (const auto& rec : proto::EncodeSegment({"t", run, 0, seq, seq * 180000ull, 180000}, seg, 1500)) feed("t", rec);
  }
  feed("t", proto::EncodeSegment({"t", run, 0, 5, 0, 180000}, data)[0]);  // out_of_order
  feed("t", proto::EncodeSegment({"t", run, 1, 2, 0, 180000}, data)[0]);  // unknown_rendition
  proto::TitleEnd wrong{"t", run, 3, 540000, {proto::RenditionTotals{}}};
  feed("t", proto::Encode(wrong));  // end_mismatch: 3 segments announced, 2 received
  proto::TitleEnd end{"t", run, 2, 360000, {proto::RenditionTotals{}}};
  feed("t", proto::Encode(end));
  CHECK(e.IsComplete("t"));
  const std::vector<uint8_t> extra(10, 1);
  feed("t", proto::EncodeSegment({"t", run, 0, 2, 0, 180000}, extra)[0]);  // after_end

  const Stats& st = e.stats();
  CHECK(st.rejected == 7);
  std::map<std::string, uint64_t> by_reason;
  for (size_t r = 0; r < kRejectReasonCount; ++r)
    if (st.rejected_by_reason[r]) by_reason[std::string(ToString(static_cast<RejectReason>(r)))] = st.rejected_by_reason[r];
  CHECK(by_reason == std::map<std::string, uint64_t>{{"malformed", 1},
                                                     {"key_mismatch", 1},
                                                     {"orphan", 1},
                                                     {"out_of_order", 1},
                                                     {"unknown_rendition", 1},
                                                     {"end_mismatch", 1},
                                                     {"after_end", 1}});
  CHECK(st.segments_written == 2);
  CHECK(st.written_bytes == bytes);
  REQUIRE_FALSE(published.empty());
  for (const Status& s : published) CHECK(s.ok());
}

TEST_CASE("config: packager.metrics_port") {
  auto shipped = app::LoadConfig(std::string(KHLS_SOURCE_DIR) + "/configs/local.yaml");
  REQUIRE_MESSAGE(shipped.ok(), shipped.status().message());
  CHECK(shipped->metrics_port == -1);  // off unless asked for
  TempDir d;
  const fs::path file = d.path() / "c.yaml";
  WriteFile(file, "packager:\n  metrics_port: 9464\n");
  auto c = app::LoadConfig(file.string());
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->metrics_port == 9464);
  WriteFile(file, "packager:\n  out: o\n  metrics_port: 70000\n");
  auto bad = app::LoadConfig(file.string());
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("c.yaml:3: packager.metrics_port: must be -1 (off), 0 (any free port) or a port") !=
        std::string::npos);
}

TEST_CASE("package --metrics-port 0: counters equal the log, lag reaches 0, /healthz ok") {
  RequireBroker();
  TempDir work;
  const std::string topic = Unique("metrics");
  REQUIRE(RunToEnd(IngestArgs(kMedia / "h264_aac.mp4", "movie", topic), work.path() / "ingest.log") == 0);
  const fs::path log = work.path() / "package.log", out = work.path() / "out";
  std::vector<std::string> args = PackageArgs(out, topic, Unique("g-metrics"), {});
  args.insert(args.end(), {"--metrics-port", "0"});
  Child packager(args, log);
  const std::string base = WaitForMetricsUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  REQUIRE_MESSAGE(WaitFor([&] { return ReadFile(log).find("title 'movie' complete") != std::string::npos; }, 60s),
                  ReadFile(log));

  // Every assigned partition read to its end: lag 0 (the transaction markers included).
  std::string text;
  const bool caught_up = WaitFor(
      [&] {
        text = Get(base, "/metrics").body;
        const auto lag = Series(text, "khls_packager_consumer_lag_records");
        const double assigned = Sample(text, "khls_packager_assigned_partitions");
        if (lag.empty() || static_cast<double>(lag.size()) != assigned) return false;
        for (const auto& [labels, v] : lag)
          if (v != 0) return false;
        return true;
      },
      20s);
  CHECK_MESSAGE(caught_up, text);
  CHECK(Sample(text, "khls_packager_assigned_partitions") == 6);  // the topic's partitions, one member
  CHECK(Sample(text, fmt::format("khls_packager_consumer_lag_records{{topic=\"{}\",partition=\"0\"}}", topic)) == 0);
  const Answer health = Get(base, "/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "ok\n");

  packager.Kill(SIGTERM);
  CHECK(packager.Wait() == 0);
  const std::string logged = ReadFile(log);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(logged, m,
                                    std::regex(R"(packager: (\d+) records, (\d+) segments written, (\d+) titles )"
                                               R"(completed, (\d+) duplicates skipped, (\d+) rejected)")),
                  logged);
  CHECK(Sample(text, "khls_packager_records_consumed_total") == std::stod(m[1]));
  CHECK(Sample(text, "khls_packager_segments_written_total") == std::stod(m[2]));
  CHECK(Sample(text, "khls_packager_segments_written_total") == 8);  // 4 segment groups of video and audio
  CHECK(Sample(text, "khls_packager_titles_completed_total") == std::stod(m[3]));
  CHECK(Sample(text, "khls_packager_titles_completed_total") == 1);
  CHECK(Sample(text, "khls_packager_duplicates_skipped_total") == std::stod(m[4]));
  double rejected = 0;
  for (const auto& [labels, v] : Series(text, "khls_packager_records_rejected_total")) rejected += v;
  CHECK(rejected == std::stod(m[5]));
  CHECK(Sample(text, "khls_packager_records_rejected_total{reason=\"malformed\"}") == 0);
  CHECK(Sample(text, "khls_packager_output_write_errors_total") == 0);
  // Bytes written: exactly the segment files on disk.
  double on_disk = 0;
  for (const auto& e : fs::recursive_directory_iterator(out / "movie"))
    if (e.is_regular_file() && e.path().extension() == ".ts") on_disk += static_cast<double>(e.file_size());
  CHECK(on_disk > 0);
  CHECK(Sample(text, "khls_packager_written_bytes_total") == on_disk);
  CHECK(Sample(text, "khls_packager_publish_duration_seconds_count") > 0);
  CHECK(Sample(text, "khls_packager_publish_duration_seconds_bucket{le=\"+Inf\"}") ==
        Sample(text, "khls_packager_publish_duration_seconds_count"));
  CHECK(Sample(text, "khls_packager_reassembly_buffered_bytes") == 0);
}

TEST_CASE("a packager that cannot reach Kafka answers /healthz 503 with the reason") {
  TempDir work;
  const fs::path log = work.path() / "package.log";
  Child packager({kBin, "package", "--out", (work.path() / "out").string(), "--brokers",
                  fmt::format("127.0.0.1:{}", FreePort()), "--topic", Unique("metrics-down"), "--metrics-port", "0"},
                 log);
  const std::string base = WaitForMetricsUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  Answer health;
  const bool down = WaitFor(
      [&] {
        health = Get(base, "/healthz");
        return health.status == 503;
      },
      20s);
  CHECK_MESSAGE(down, health.status << " " << health.body);
  CHECK(health.body.starts_with("kafka: "));
  CHECK(Get(base, "/metrics").status == 200);
}  // the packager is killed here (it would give up on the topic after 30 s)

TEST_CASE("serve --metrics-port 0: requests by kind and status, bytes sent, /healthz follows the root") {
  TempDir work;
  const fs::path root = work.path() / "root";
  const std::string master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nv1/index.m3u8\n";
  WriteFile(root / "t" / "master.m3u8", master);
  WriteFile(root / "t" / "v1" / "seg-000000.ts", std::string(1000, 'G'));
  const fs::path log = work.path() / "serve.log";
  Child serve({kBin, "serve", root.string(), "--port", "0", "--metrics-port", "0"}, log);
  const std::string base = WaitForMetricsUrl(log);
  REQUIRE_MESSAGE(!base.empty(), ReadFile(log));
  std::smatch m;
  const std::string logged = ReadFile(log);
  REQUIRE(std::regex_search(logged, m, std::regex(R"(serving '.*' at (http://127\.0\.0\.1:\d+)/)")));
  const std::string origin = m[1];
  CHECK(origin != base);  // never the origin's port

  for (int i = 0; i < 3; ++i) CHECK(Get(origin, "/t/master.m3u8").status == 200);
  for (int i = 0; i < 2; ++i) CHECK(Get(origin, "/t/v1/seg-000000.ts").status == 200);
  CHECK(Get(origin, "/t/v1/seg-000000.ts", {{"Range", "bytes=0-99"}}).status == 206);
  for (int i = 0; i < 2; ++i) CHECK(Get(origin, "/t/missing.m3u8").status == 404);
  CHECK(Get(origin, "/nope/seg-000001.ts").status == 404);
  CHECK(Get(origin, "/t/.state.json").status == 404);
  CHECK(Get(origin, "/").status == 200);
  httplib::Client head(origin);
  CHECK(head.Head("/t/master.m3u8")->status == 200);  // counted, no body sent

  const std::map<std::string, double> expected = {
      {"{kind=\"other\",code=\"200\"}", 1},   {"{kind=\"other\",code=\"404\"}", 1},
      {"{kind=\"playlist\",code=\"200\"}", 4}, {"{kind=\"playlist\",code=\"404\"}", 2},
      {"{kind=\"segment\",code=\"200\"}", 2},  {"{kind=\"segment\",code=\"206\"}", 1},
      {"{kind=\"segment\",code=\"404\"}", 1},
  };
  std::string text;
  // A response is counted once it is written: the last one may still be on its way.
  const bool counted = WaitFor(
      [&] {
        text = Get(base, "/metrics").body;
        return Series(text, "khls_origin_requests_total") == expected;
      },
      10s);
  CHECK_MESSAGE(counted, text);
  CHECK(Sample(text, "khls_origin_sent_bytes_total{kind=\"playlist\"}") == 3.0 * master.size());
  CHECK(Sample(text, "khls_origin_sent_bytes_total{kind=\"segment\"}") == 2 * 1000 + 100);
  CHECK(Sample(text, "khls_origin_sent_bytes_total{kind=\"other\"}") > 0);  // the page

  Answer health = Get(base, "/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "ok\n");
  fs::rename(root, work.path() / "moved");
  health = Get(base, "/healthz");
  CHECK(health.status == 503);
  CHECK(health.body.find("origin: root '") == 0);
  CHECK(health.body.find("No such file or directory") != std::string::npos);
  fs::rename(work.path() / "moved", root);
  CHECK(Get(base, "/healthz").status == 200);
  serve.Kill(SIGTERM);
  CHECK(serve.Wait() == 0);
}
