#include "khls/kafka.h"

namespace khls::kafka {

Result<ConfPtr> MakeConf(const Properties& props) {
  ConfPtr conf(rd_kafka_conf_new());
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

Status EnsureTopic(rd_kafka_t* rk, const TopicSettings& s, int timeout_ms) {
  char err[512];
  rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(s.name.c_str(), s.partitions, s.replication_factor, err, sizeof err);
  if (!nt) return Error(ErrorCode::kInvalidArgument, "topic '{}' settings: {}", s.name, err);
  std::unique_ptr<rd_kafka_NewTopic_t, decltype(&rd_kafka_NewTopic_destroy)> new_topic(nt, rd_kafka_NewTopic_destroy);
  for (const auto& [k, v] : s.configs) {
    if (rd_kafka_NewTopic_set_config(nt, k.c_str(), v.c_str()) != RD_KAFKA_RESP_ERR_NO_ERROR)
      return Error(ErrorCode::kInvalidArgument, "topic '{}' config {}={} rejected", s.name, k, v);
  }

  std::unique_ptr<rd_kafka_queue_t, decltype(&rd_kafka_queue_destroy)> queue(rd_kafka_queue_new(rk),
                                                                             rd_kafka_queue_destroy);
  std::unique_ptr<rd_kafka_AdminOptions_t, decltype(&rd_kafka_AdminOptions_destroy)> opts(
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS), rd_kafka_AdminOptions_destroy);
  rd_kafka_AdminOptions_set_operation_timeout(opts.get(), timeout_ms, err, sizeof err);
  rd_kafka_AdminOptions_set_request_timeout(opts.get(), timeout_ms, err, sizeof err);
  rd_kafka_CreateTopics(rk, &nt, 1, opts.get(), queue.get());

  std::unique_ptr<rd_kafka_event_t, decltype(&rd_kafka_event_destroy)> ev(
      rd_kafka_queue_poll(queue.get(), timeout_ms + 2000), rd_kafka_event_destroy);
  if (!ev) return Error(ErrorCode::kKafka, "create topic '{}': no answer from the broker within {} ms", s.name, timeout_ms);
  if (rd_kafka_event_error(ev.get()))
    return Error(ErrorCode::kKafka, "create topic '{}': {}", s.name, rd_kafka_event_error_string(ev.get()));
  const rd_kafka_CreateTopics_result_t* res = rd_kafka_event_CreateTopics_result(ev.get());
  size_t n = 0;
  const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(res, &n);
  for (size_t i = 0; i < n; ++i) {
    rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
      const char* msg = rd_kafka_topic_result_error_string(results[i]);
      return Error(ErrorCode::kKafka, "create topic '{}': {}", s.name, msg ? msg : rd_kafka_err2str(e));
    }
  }
  return Status::Ok();
}

Result<int> PartitionCount(rd_kafka_t* rk, const std::string& topic, int timeout_ms) {
  std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> t(rd_kafka_topic_new(rk, topic.c_str(), nullptr),
                                                                         rd_kafka_topic_destroy);
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t.get(), &md, timeout_ms);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
    return Error(ErrorCode::kKafka, "metadata for topic '{}': {}", topic, rd_kafka_err2str(e));
  std::unique_ptr<const rd_kafka_metadata_t, decltype(&rd_kafka_metadata_destroy)> owned(md, rd_kafka_metadata_destroy);
  if (md->topic_cnt != 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
    return Error(ErrorCode::kKafka, "topic '{}': {}", topic,
                 md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "not found");
  return md->topics[0].partition_cnt;
}

}  // namespace khls::kafka
