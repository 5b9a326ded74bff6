#include "title_index.h"

#include "khls/log.h"

namespace khls::ingest::internal {

kafka::Properties ConnectionProps(const kafka::Properties& producer) {
  kafka::Properties out;
  for (const auto& [k, v] : producer)
    if (k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") || k == "client.dns.lookup")
      out.emplace_back(k, v);
  return out;
}

Result<std::optional<proto::TitleStatus>> LatestStatus(const Params& p, const std::atomic<bool>& stop,
                                                       bool missing_is_empty) {
  std::optional<proto::TitleStatus> latest;
  Status s = kafka::ScanTopic(
      p.brokers, proto::IndexTopic(p.topic.name), ConnectionProps(p.kafka),
      [&](int32_t, int64_t, std::string_view key, std::span<const uint8_t> value) -> Status {
        if (key != p.title) return Status::Ok();
        auto rec = proto::Decode(value);
        if (rec.ok() && std::holds_alternative<proto::TitleStatus>(*rec)) latest = std::get<proto::TitleStatus>(*rec);
        else log::Warn("index topic: skipped a malformed status record for '{}'", p.title);
        return Status::Ok();
      },
      stop, missing_is_empty);
  if (!s.ok()) return s.WithContext(fmt::format("read the title index '{}'", proto::IndexTopic(p.topic.name)));
  return latest;
}

}  // namespace khls::ingest::internal
