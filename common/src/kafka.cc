#include "khls/kafka.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "khls/log.h"

namespace khls::kafka {

namespace {

// librdkafka's own log lines, in our format. Connection failures ("FAIL") also
// reach the error callbacks, which report them once; here they are debug output.
void LogCb(const rd_kafka_t*, int level, const char* facility, const char* message) {
  if (level <= 4 && std::string_view(facility) != "FAIL") log::Warn("Kafka {}: {}", facility, message);
  else log::Debug("Kafka {}: {}", facility, message);
}

}  // namespace

Result<ConfPtr> MakeConf(const Properties& props) {
  ConfPtr conf(rd_kafka_conf_new());
  rd_kafka_conf_set_log_cb(conf.get(), LogCb);
  char err[512];
  for (const auto& [key, value] : props) {
    if (rd_kafka_conf_set(conf.get(), key.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK)
      return Error(ErrorCode::kInvalidArgument, "Kafka setting {}={}: {}", key, value, err);
  }
  return conf;
}

Result<HandlePtr> MakeHandle(rd_kafka_type_t type, ConfPtr conf) {
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf.get(), err, sizeof err);
  if (!rk)
    return Error(ErrorCode::kKafka, "create Kafka {}: {}", type == RD_KAFKA_PRODUCER ? "producer" : "consumer", err);
  conf.release();  // owned by rk now
  return HandlePtr(rk);
}

Status FromError(rd_kafka_error_t* error, std::string_view context) {
  if (!error) return Status::Ok();
  ErrorPtr owned(error);
  return Error(ErrorCode::kKafka, "{}: {}", context, rd_kafka_error_string(error));
}

namespace {

// "'a', 'b'": topic names for a message.
std::string QuotedNames(const std::vector<std::string>& names) {
  return fmt::format("'{}'", fmt::join(names, "', '"));
}

}  // namespace

Status EnsureTopics(rd_kafka_t* rk, const std::vector<TopicSettings>& topics, int timeout_ms) {
  if (topics.empty()) return Status::Ok();
  char err[512];
  std::vector<std::unique_ptr<rd_kafka_NewTopic_t, decltype(&rd_kafka_NewTopic_destroy)>> owned;
  std::vector<rd_kafka_NewTopic_t*> new_topics;
  for (const TopicSettings& s : topics) {
    rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(s.name.c_str(), s.partitions, s.replication_factor, err, sizeof err);
    if (!nt) return Error(ErrorCode::kInvalidArgument, "topic '{}' settings: {}", s.name, err);
    owned.emplace_back(nt, rd_kafka_NewTopic_destroy);
    new_topics.push_back(nt);
    for (const auto& [k, v] : s.configs) {
      if (rd_kafka_NewTopic_set_config(nt, k.c_str(), v.c_str()) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return Error(ErrorCode::kInvalidArgument, "topic '{}' config {}={} rejected", s.name, k, v);
    }
  }
  std::vector<std::string> topic_names;
  for (const TopicSettings& s : topics) topic_names.push_back(s.name);
  const std::string names = QuotedNames(topic_names);

  std::unique_ptr<rd_kafka_queue_t, decltype(&rd_kafka_queue_destroy)> queue(rd_kafka_queue_new(rk),
                                                                             rd_kafka_queue_destroy);
  std::unique_ptr<rd_kafka_AdminOptions_t, decltype(&rd_kafka_AdminOptions_destroy)> opts(
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS), rd_kafka_AdminOptions_destroy);
  rd_kafka_AdminOptions_set_operation_timeout(opts.get(), timeout_ms, err, sizeof err);
  rd_kafka_AdminOptions_set_request_timeout(opts.get(), timeout_ms, err, sizeof err);
  // One request for all of them: one round trip to the controller.
  rd_kafka_CreateTopics(rk, new_topics.data(), new_topics.size(), opts.get(), queue.get());

  std::unique_ptr<rd_kafka_event_t, decltype(&rd_kafka_event_destroy)> ev(
      rd_kafka_queue_poll(queue.get(), timeout_ms + 2000), rd_kafka_event_destroy);
  if (!ev) return Error(ErrorCode::kKafka, "create topic {}: no answer from the broker within {} ms", names, timeout_ms);
  if (rd_kafka_event_error(ev.get()))
    return Error(ErrorCode::kKafka, "create topic {}: {}", names, rd_kafka_event_error_string(ev.get()));
  const rd_kafka_CreateTopics_result_t* res = rd_kafka_event_CreateTopics_result(ev.get());
  size_t n = 0;
  const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(res, &n);
  for (size_t i = 0; i < n; ++i) {
    rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
      const char* msg = rd_kafka_topic_result_error_string(results[i]);
      return Error(ErrorCode::kKafka, "create topic '{}': {}", rd_kafka_topic_result_name(results[i]),
                   msg ? msg : rd_kafka_err2str(e));
    }
  }
  return Status::Ok();
}

Status EnsureTopic(rd_kafka_t* rk, const TopicSettings& s, int timeout_ms) {
  return EnsureTopics(rk, {s}, timeout_ms);
}

namespace {

// How `md` describes `topic`: ok with a leader for every partition, or why not.
std::string TopicProblem(const rd_kafka_metadata_t* md) {
  if (md->topic_cnt != 1) return "not in the answer";
  const rd_kafka_metadata_topic_t& t = md->topics[0];
  if (t.err) return rd_kafka_err2str(t.err);
  if (t.partition_cnt == 0) return "no partitions";
  for (int i = 0; i < t.partition_cnt; ++i)
    if (t.partitions[i].leader < 0) return fmt::format("partition {} has no leader", t.partitions[i].id);
  return "";
}

}  // namespace

Result<int> PartitionCount(rd_kafka_t* rk, const std::string& topic, int timeout_ms) {
  std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> t(rd_kafka_topic_new(rk, topic.c_str(), nullptr),
                                                                         rd_kafka_topic_destroy);
  // A topic created a moment ago may not be in every broker's metadata yet, and its
  // partitions may have no leader yet: ask again until the deadline.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto pause = std::chrono::milliseconds(10);  // then 20, 40, 80, 100, 100, ...
  for (;;) {
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t.get(), &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
      return Error(ErrorCode::kKafka, "metadata for topic '{}': {}", topic, rd_kafka_err2str(e));
    std::unique_ptr<const rd_kafka_metadata_t, decltype(&rd_kafka_metadata_destroy)> owned(md, rd_kafka_metadata_destroy);
    const std::string problem = TopicProblem(md);
    if (problem.empty()) return md->topics[0].partition_cnt;
    if (std::chrono::steady_clock::now() >= deadline) return Error(ErrorCode::kKafka, "topic '{}': {}", topic, problem);
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, std::chrono::milliseconds(100));
  }
}

namespace {

constexpr char kUnreachable[] = "unreachable";

// How the broker that `rk` asks sees each of `topics`: the first problem ("topic 'x':
// ...") or "" when it serves them all.
std::string AskClient(rd_kafka_t* rk, const std::vector<std::string>& topics) {
  for (const std::string& topic : topics) {
    std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> t(
        rd_kafka_topic_new(rk, topic.c_str(), nullptr), rd_kafka_topic_destroy);
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t.get(), &md, 3000);
    // A broker that does not answer (down, fenced, unreachable) serves no client either.
    if (e) return kUnreachable;
    std::unique_ptr<const rd_kafka_metadata_t, decltype(&rd_kafka_metadata_destroy)> owned(md, rd_kafka_metadata_destroy);
    if (std::string problem = TopicProblem(md); !problem.empty()) return fmt::format("topic '{}': {}", topic, problem);
  }
  return "";
}

// Asks the broker at `address` alone (a new client whose only bootstrap server it is:
// its first request goes there) how it sees each of `topics` (AskClient).
std::string AskBroker(rd_kafka_type_t type, const Properties& props, const std::string& address,
                      const std::vector<std::string>& topics) {
  Properties p = props;
  p.emplace_back("bootstrap.servers", address);
  p.emplace_back("topic.metadata.refresh.interval.ms", "-1");
  auto conf = MakeConf(p);
  if (!conf.ok()) return conf.status().message();
  // The caller's kind of client, so its properties apply as they are.
  auto rk = MakeHandle(type, std::move(conf).value());
  if (!rk.ok()) return rk.status().message();
  return AskClient(rk->get(), topics);
}

}  // namespace

Status WaitForTopics(rd_kafka_t* rk, const Properties& props, const std::vector<std::string>& topics, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  const std::string names = fmt::format("topic{} {} {}", topics.size() == 1 ? "" : "s", QuotedNames(topics),
                                        topics.size() == 1 ? "is" : "are");
  // The brokers, as the caller's client knows them.
  std::vector<std::pair<int32_t, std::string>> brokers;
  {
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, nullptr, &md, timeout_ms);
    if (e) return Error(ErrorCode::kKafka, "cluster metadata: {}", rd_kafka_err2str(e));
    std::unique_ptr<const rd_kafka_metadata_t, decltype(&rd_kafka_metadata_destroy)> owned(md, rd_kafka_metadata_destroy);
    for (int i = 0; i < md->broker_cnt; ++i)
      brokers.emplace_back(md->brokers[i].id, fmt::format("{}:{}", md->brokers[i].host, md->brokers[i].port));
  }
  // The only broker of a single-node cluster is asked by the caller's client (every
  // request of it goes there). Decided once: when one broker of a larger cluster is
  // left to wait for, the caller's client may ask another one.
  const bool single_node = brokers.size() == 1;
  std::string waiting;
  // A fresh topic is usually known everywhere within tens of milliseconds: ask
  // again soon at first, then every 100 ms.
  auto pause = std::chrono::milliseconds(10);
  for (int round = 0;; ++round) {
    // A client of its own per broker costs ~20 ms to start: the brokers are asked at once.
    std::vector<std::string> problems;
    if (single_node) {
      problems.push_back(AskClient(rk, topics));
    } else {
      std::vector<std::future<std::string>> answers;
      for (const auto& [id, address] : brokers)
        answers.push_back(std::async(std::launch::async, AskBroker, rd_kafka_type(rk), std::cref(props),
                                     std::cref(address), std::cref(topics)));
      for (auto& answer : answers) problems.push_back(answer.get());
    }
    waiting.clear();
    std::vector<std::pair<int32_t, std::string>> still;  // the brokers still to wait for
    for (size_t i = 0; i < brokers.size(); ++i) {
      const auto& [id, address] = brokers[i];
      if (problems[i] == kUnreachable) log::Debug("broker {} ({}) does not answer; not waiting for it", id, address);
      if (problems[i].empty() || problems[i] == kUnreachable) continue;
      waiting += fmt::format("{}broker {} ({}): {}", waiting.empty() ? "" : "; ", id, address, problems[i]);
      still.push_back(brokers[i]);
    }
    brokers = std::move(still);
    if (brokers.empty()) return Status::Ok();
    if (round == 0) log::Debug("{} not known everywhere yet: {}", names, waiting);
    if (std::chrono::steady_clock::now() >= deadline)
      return Error(ErrorCode::kKafka, "{} not served by every broker after {} ms: {}", names, timeout_ms,
                   waiting);
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, std::chrono::milliseconds(100));
  }
}

Status WaitForTopic(rd_kafka_t* rk, const Properties& props, const std::string& topic, int timeout_ms) {
  return WaitForTopics(rk, props, {topic}, timeout_ms);
}

struct FetchNudge::Shared {
  rd_kafka_t* rk;
  std::string topic;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> wanted;  ///< partitions to nudge next; empty: nothing to do
  bool busy = false;            ///< a query is out
  bool stopping = false;
  std::thread worker;
};

FetchNudge::FetchNudge(rd_kafka_t* rk, std::string topic) : shared_(std::make_shared<Shared>()) {
  shared_->rk = rk;
  shared_->topic = std::move(topic);
  // The thread holds the shared state, so a thread left behind by Stop() never
  // touches freed memory.
  shared_->worker = std::thread([sh = shared_] {
    std::unique_lock lock(sh->mu);
    for (;;) {
      sh->cv.wait(lock, [&] { return sh->stopping || !sh->wanted.empty(); });
      if (sh->stopping) return;
      std::vector<int32_t> partitions;
      partitions.swap(sh->wanted);
      sh->busy = true;
      lock.unlock();
      for (int32_t partition : partitions) {
        int64_t lo = 0, hi = 0;
        (void)rd_kafka_query_watermark_offsets(sh->rk, sh->topic.c_str(), partition, &lo, &hi, 1000);
      }
      lock.lock();
      sh->busy = false;
      sh->cv.notify_all();
    }
  });
}

FetchNudge::~FetchNudge() { Stop(); }

Result<TopicDescription> DescribeTopicSettings(const std::string& brokers, const std::string& topic,
                                               const Properties& extra) {
  Properties props = {{"bootstrap.servers", brokers}, {"client.id", "kafka-hls-describe"}};
  props.insert(props.end(), extra.begin(), extra.end());
  KHLS_ASSIGN_OR_RETURN(ConfPtr conf, MakeConf(props));
  KHLS_ASSIGN_OR_RETURN(HandlePtr rk, MakeHandle(RD_KAFKA_PRODUCER, std::move(conf)));
  TopicDescription out;
  {
    std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> t(
        rd_kafka_topic_new(rk.get(), topic.c_str(), nullptr), rd_kafka_topic_destroy);
    const rd_kafka_metadata_t* md = nullptr;
    if (rd_kafka_resp_err_t e = rd_kafka_metadata(rk.get(), 0, t.get(), &md, 10000))
      return Error(ErrorCode::kKafka, "metadata for topic '{}' from {}: {}", topic, brokers, rd_kafka_err2str(e));
    std::unique_ptr<const rd_kafka_metadata_t, decltype(&rd_kafka_metadata_destroy)> owned(md, rd_kafka_metadata_destroy);
    if (md->topic_cnt != 1 || md->topics[0].err)
      return Error(ErrorCode::kKafka, "topic '{}': {}", topic,
                   md->topic_cnt == 1 ? rd_kafka_err2str(md->topics[0].err) : "not found");
    out.partitions = md->topics[0].partition_cnt;
    if (out.partitions > 0) out.replication_factor = md->topics[0].partitions[0].replica_cnt;
  }
  KHLS_ASSIGN_OR_RETURN(auto configs, DescribeTopicConfigs(rk.get(), topic, 15000));
  out.min_insync_replicas = configs["min.insync.replicas"];
  out.retention_ms = configs["retention.ms"];
  out.max_message_bytes = configs["max.message.bytes"];
  return out;
}

Result<std::map<std::string, std::string>> DescribeTopicConfigs(rd_kafka_t* rk, const std::string& topic,
                                                                int timeout_ms) {
  std::unique_ptr<rd_kafka_ConfigResource_t, decltype(&rd_kafka_ConfigResource_destroy)> res(
      rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str()), rd_kafka_ConfigResource_destroy);
  std::unique_ptr<rd_kafka_queue_t, decltype(&rd_kafka_queue_destroy)> queue(rd_kafka_queue_new(rk),
                                                                             rd_kafka_queue_destroy);
  char err[512];
  std::unique_ptr<rd_kafka_AdminOptions_t, decltype(&rd_kafka_AdminOptions_destroy)> opts(
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS), rd_kafka_AdminOptions_destroy);
  rd_kafka_AdminOptions_set_request_timeout(opts.get(), timeout_ms, err, sizeof err);
  rd_kafka_ConfigResource_t* list[] = {res.get()};
  rd_kafka_DescribeConfigs(rk, list, 1, opts.get(), queue.get());
  std::unique_ptr<rd_kafka_event_t, decltype(&rd_kafka_event_destroy)> ev(
      rd_kafka_queue_poll(queue.get(), timeout_ms + 2000), rd_kafka_event_destroy);
  if (!ev) return Error(ErrorCode::kKafka, "configs of topic '{}': no answer within {} ms", topic, timeout_ms);
  if (rd_kafka_event_error(ev.get()))
    return Error(ErrorCode::kKafka, "configs of topic '{}': {}", topic, rd_kafka_event_error_string(ev.get()));
  std::map<std::string, std::string> out;
  size_t n = 0;
  const rd_kafka_ConfigResource_t** results =
      rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev.get()), &n);
  for (size_t i = 0; i < n; ++i) {
    if (rd_kafka_ConfigResource_error(results[i]))
      return Error(ErrorCode::kKafka, "configs of topic '{}': {}", topic,
                   rd_kafka_ConfigResource_error_string(results[i]));
    size_t cnt = 0;
    const rd_kafka_ConfigEntry_t** entries = rd_kafka_ConfigResource_configs(results[i], &cnt);
    for (size_t k = 0; k < cnt; ++k) {
      const char* value = rd_kafka_ConfigEntry_value(entries[k]);
      out[rd_kafka_ConfigEntry_name(entries[k])] = value ? value : "";
    }
  }
  return out;
}

Result<int64_t> TopicMaxMessageBytes(rd_kafka_t* rk, const std::string& topic, int timeout_ms) {
  KHLS_ASSIGN_OR_RETURN(auto configs, DescribeTopicConfigs(rk, topic, timeout_ms));
  const std::string& value = configs["max.message.bytes"];
  char* end = nullptr;
  const long long bytes = value.empty() ? 0 : std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || bytes <= 0)
    return Error(ErrorCode::kKafka, "topic '{}': max.message.bytes is '{}'", topic, value);
  return static_cast<int64_t>(bytes);
}

bool FetchNudge::OnIdle() {
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(active_, [&](const auto& kv) { return now - kv.second > std::chrono::seconds(1); });
  if (active_.empty()) return false;
  if (now - last_ < std::chrono::milliseconds(20)) return true;
  last_ = now;
  std::lock_guard lock(shared_->mu);
  if (shared_->busy || shared_->stopping || !shared_->wanted.empty()) return true;  // one nudge at a time
  for (const auto& [partition, at] : active_) shared_->wanted.push_back(partition);
  shared_->cv.notify_all();
  return true;
}

bool FetchNudge::Stop(std::chrono::milliseconds wait) {
  std::unique_lock lock(shared_->mu);
  if (!shared_->worker.joinable()) return !shared_->busy;
  shared_->stopping = true;
  shared_->cv.notify_all();
  const bool idle = shared_->cv.wait_for(lock, wait, [&] { return !shared_->busy; });
  lock.unlock();
  if (idle) {
    shared_->worker.join();
    return true;
  }
  log::Warn("Kafka: a watermark query to a broker that is down has not returned in {} ms (librdkafka 2.0 "
            "retries it until the broker is back); leaving it behind",
            wait.count());
  shared_->worker.detach();
  return false;
}

Status ScanTopic(const std::string& brokers, const std::string& topic, const Properties& extra, const RecordFn& fn,
                 const std::atomic<bool>& stop, bool missing_is_empty) {
  Properties props = {
      {"bootstrap.servers", brokers},
      // Required by librdkafka for a consumer; never joined (assign, not subscribe) and never committed.
      {"group.id", "kafka-hls-scan"},
      {"client.id", "kafka-hls-scan"},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"isolation.level", "read_committed"},
      {"enable.partition.eof", "true"},
      {"queued.max.messages.kbytes", "16384"},
      {"max.partition.fetch.bytes", "4194304"},  // fewer, larger fetches: less broker CPU per byte
      // The end of a partition is seen only when a fetch comes back empty; don't
      // let the broker hold that fetch for the default 500 ms.
      {"fetch.wait.max.ms", "10"},
  };
  props.insert(props.end(), extra.begin(), extra.end());
  KHLS_ASSIGN_OR_RETURN(ConfPtr conf, MakeConf(props));
  KHLS_ASSIGN_OR_RETURN(HandlePtr rk, MakeHandle(RD_KAFKA_CONSUMER, std::move(conf)));
  rd_kafka_poll_set_consumer(rk.get());
  if (missing_is_empty) {
    std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> t(
        rd_kafka_topic_new(rk.get(), topic.c_str(), nullptr), rd_kafka_topic_destroy);
    const rd_kafka_metadata_t* md = nullptr;
    if (rd_kafka_metadata(rk.get(), 0, t.get(), &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const bool missing = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
      rd_kafka_metadata_destroy(md);
      if (missing) return Status::Ok();
    }
  }
  KHLS_ASSIGN_OR_RETURN(int partitions, PartitionCount(rk.get(), topic, 10000));

  // Every partition from its beginning to the end it has when the fetch reaches
  // it (enable.partition.eof; an empty partition ends at once). No watermark
  // query up front: in librdkafka 2.0 one to a dead leader blocks past its
  // timeout (see FetchNudge), and a scan must finish while a broker is down.
  PartitionListPtr list(rd_kafka_topic_partition_list_new(partitions));
  std::set<int32_t> pending;
  for (int32_t i = 0; i < partitions; ++i) {
    pending.insert(i);
    rd_kafka_topic_partition_list_add(list.get(), topic.c_str(), i)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  if (rd_kafka_resp_err_t err = rd_kafka_assign(rk.get(), list.get()))
    return Error(ErrorCode::kKafka, "assign '{}': {}", topic, rd_kafka_err2str(err));
  // The size of the log for the progress line, from the watermarks fetches bring back (cached, never a request).
  auto total = [&] {
    int64_t sum = 0;
    for (int32_t i = 0; i < partitions; ++i) {
      int64_t lo = 0, hi = 0;
      if (rd_kafka_get_watermark_offsets(rk.get(), topic.c_str(), i, &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          lo >= 0 && hi > lo)
        sum += hi - lo;
    }
    return sum;
  };
  log::ProgressLine progress;
  FetchNudge nudge(rk.get(), topic);
  bool flowing = false;
  int64_t seen = 0;
  Status result;
  while (!pending.empty() && result.ok()) {
    if (stop) {
      result = Status(ErrorCode::kCancelled, fmt::format("scan of '{}' interrupted", topic));
      break;
    }
    MessagePtr m(rd_kafka_consumer_poll(rk.get(), flowing ? 5 : 200));
    if (!m) {
      flowing = nudge.OnIdle();
      continue;
    }
    if (!m->err) nudge.OnRecord(m->partition);
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      pending.erase(m->partition);
      continue;
    }
    if (m->err) {
      result = Error(ErrorCode::kKafka, "read '{}' partition {}: {}", topic, m->partition,
                     rd_kafka_message_errstr(m.get()));
      break;
    }
    ++seen;
    std::string_view key(static_cast<const char*>(m->key), m->key ? m->key_len : 0);
    result = fn(m->partition, m->offset, key, std::span(static_cast<const uint8_t*>(m->payload), m->len));
    if (progress.Due()) {
      const int64_t all = std::max(total(), seen);
      progress.Update(fmt::format("scan {}: {} of about {} records ({:.0f}%)", topic, seen, all,
                                  100.0 * static_cast<double>(seen) / static_cast<double>(all)));
    }
  }
  progress.Finish();
  const bool clean = nudge.Stop();
  rd_kafka_consumer_close(rk.get());
  if (!clean) (void)rk.release();  // a query thread still uses it (FetchNudge::Stop)
  return result;
}

}  // namespace khls::kafka
