// packager: a consumer-group member feeding the Engine (khls/engine.h), re-packaging
// from the retained log, and topic summaries. See khls/engine.h for what is written
// and in which order.
#pragma once

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "khls/defaults.h"
#include "khls/engine.h"
#include "khls/kafka.h"
#include "khls/metrics.h"
#include "khls/status.h"

namespace khls::packager {

struct Params {
  std::string out_dir;
  std::string brokers = defaults::kBrokers;
  /// The topic; created with these settings if it does not exist yet, so a
  /// packager can start before the first ingest.
  kafka::TopicSettings topic;
  std::string group_id = defaults::kGroup;
  /// Exit 0 once all of these titles are complete and every assigned partition
  /// has been read to its end (so a newer version already in the log is not
  /// missed). Empty: run until stopped. Meant for a single packager (batch jobs,
  /// tests): in a group, titles on other members' partitions never complete here.
  std::set<std::string> until_complete;
  /// Handle only these titles (by Kafka key, before decoding); empty = all.
  std::set<std::string> only_titles;
  proto::Reassembler::Limits limits;
  /// Extra librdkafka consumer properties (-X key=value), applied last.
  std::vector<std::pair<std::string, std::string>> kafka;
  bool durable = true;  ///< fsync output (off only for throwaway output)
  /// Commit offsets to the group (a live origin). Off for one-shot jobs that
  /// always read from the beginning (`run`): they leave nothing in the broker.
  bool commit_offsets = true;
  /// How video and audio segments are written; one output tree has one container.
  Container container = Container::kTs;
  /// Encryption of the titles it starts (khls/keys.h); none by default.
  Encryption encryption;
  /// Seconds a live title's playlists list (a sliding window, khls/engine.h
  /// LiveOptions); 0 = every segment (an EVENT playlist that grows).
  double live_window_s = kDefaultLiveWindow;
  /// LL-HLS: list the parts of titles ingested with parts as they arrive (Engine::set_low_latency).
  bool low_latency = false;
  /// Where Run() reports what it does (both must outlive it; null = nowhere).
  /// `metrics`: records consumed, segments and bytes written, titles completed,
  /// records rejected by reason, duplicates, publish latency, output write
  /// errors, and consumer lag per assigned partition (from librdkafka's
  /// statistics: with `metrics` set, statistics.interval.ms defaults to 1000).
  metrics::Registry* metrics = nullptr;
  /// `health`: Run() adds the checks "kafka" (reached the cluster within the
  /// last 15 s: a record, a fetch at the end of a partition, or a statistics
  /// report with a broker up; failed at once by "all brokers are down") and
  /// "output" (the last publish to the output succeeded).
  metrics::Health* health = nullptr;
};

/// Runs the live packager until `stop`, or until the `until_complete` titles are done.
Result<Stats> Run(const Params& params, const std::atomic<bool>& stop);

/// Where a topic scan reads from.
struct ScanParams {
  std::string brokers = defaults::kBrokers;
  std::string topic = defaults::kTopic;
  std::vector<std::pair<std::string, std::string>> kafka;  ///< extra consumer properties
};

struct RepackageParams {
  ScanParams source;
  std::string out_dir;
  std::set<std::string> titles;  ///< empty = every title in the topic
  proto::Reassembler::Limits limits;
  bool durable = true;
  Container container = Container::kTs;
  /// Encryption (khls/keys.h). Keys are reused from the key store when it has
  /// them (give the live packager's --key-store to keep its keys), else made.
  Encryption encryption;
  /// Re-cut every title at its keyframes to this target segment duration, in
  /// seconds, in (0, 3600]: no new segment is longer; EXT-X-TARGETDURATION
  /// becomes ceil(S). A title with a GOP longer than that cannot be cut so at
  /// keyframes: it is refused (kInvalidInput naming the GOP and a length that
  /// works) and left incomplete. 0 = keep the ingest's segments.
  double segment_duration = 0;
  /// Keep only these renditions of every title, by id as its records name them
  /// ("video-240p", "audio-fr", "subs-en"); at least one video or audio. Each id
  /// must exist in every title re-packaged (kInvalidArgument naming the title and
  /// listing its ids). Empty = every rendition.
  std::set<std::string> renditions;
};

/// Rebuilds titles from the retained log into `out_dir`. Without a segment
/// duration or renditions, the tree is byte-identical to what a live packager
/// writes; with them, it is what an ingest with those options would have
/// published (packager/src/recut_stage.h), the same bytes on every run. Fails
/// (kInvalidArgument) if a requested title has no record in the topic, or with
/// the reason a title could not be re-cut (after writing everything else).
Result<Stats> Repackage(const RepackageParams& params, const std::atomic<bool>& stop);

/// One title as the topic holds it.
struct TitleSummary {
  std::string title;
  int32_t partition = -1;
  uint32_t version = 0;          ///< the latest version (title_version)
  uint32_t runs = 0;             ///< ingest runs (title starts)
  std::string renditions;        ///< of the latest version: "2v2a1s" (video, audio, subtitles), or "muxed" (format 1)
  uint32_t segments = 0;         ///< distinct segments of the latest version
  uint64_t bytes = 0;            ///< record bytes of the title in the topic
  double duration_s = 0;         ///< media seconds of the latest version's segments
  bool complete = false;         ///< the latest version's title end is in the topic
  uint64_t malformed = 0;        ///< records under this key that do not decode
};

/// Summarises every title in the topic (a scan; decodes headers, not media).
Result<std::vector<TitleSummary>> DescribeTopic(const ScanParams& params, const std::atomic<bool>& stop);

}  // namespace khls::packager
