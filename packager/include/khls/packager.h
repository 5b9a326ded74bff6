// packager: consumes the topic and maintains the HLS tree under the output root.
//
//   DIR/<title>/master.m3u8          multivariant playlist (the player's entry point)
//   DIR/<title>/v<N>/index.m3u8      media playlist of version N
//   DIR/<title>/v<N>/seg-000000.ts   segments
//   DIR/<title>/.state.json          what the packager knows (not served)
//
// Order of writes: segment files, then state, then media playlist (and master on
// the first segment and at completion), each atomic and durable, so a playlist
// never lists a segment that is not complete on disk. Segments are written as
// they complete but published (made durable, renamed into place, listed) in
// batches: after every record by default, or, for the live packager and
// re-packaging, whenever Kafka has nothing more queued or a bound is reached
// (Batching). Kafka offsets are committed only up to records whose effects are
// durable; a restart replays the rest, and replays are recognised (by sequence
// and digest) and skipped.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>

#include "khls/kafka.h"
#include "khls/output_store.h"
#include "khls/proto.h"
#include "khls/status.h"
#include "khls/title_state.h"

namespace khls::packager {

struct Stats {
  uint64_t records = 0;
  uint64_t segments_written = 0;
  uint64_t duplicates_skipped = 0;  ///< replayed or re-ingested records already on disk
  uint64_t rejected = 0;            ///< malformed, hostile, orphaned or out-of-order records
  uint64_t titles_completed = 0;
  uint64_t other_titles = 0;  ///< records of titles this packager was told to ignore
};

/// Effect of one record, for offset bookkeeping.
struct RecordOutcome {
  std::string title;         ///< empty when the record names no valid title
  bool in_flight = false;    ///< after it, a segment of `title` is partly assembled
  bool started_in_flight = false;  ///< this record is the first chunk of that segment
  bool title_completed = false;    ///< this record completed the title
};

/// When the engine publishes what it has written (see the file comment).
struct Batching {
  /// Publish once this many segments wait; 1 = after every record.
  size_t max_segments = 1;
  /// ... or once this many bytes of segments wait ...
  uint64_t max_bytes = 256ull << 20;
  /// ... or once the oldest unpublished change is this old.
  std::chrono::milliseconds max_delay{100};
};

/// What the live packager and re-packaging use: a backlog is written at disk
/// speed, and a player waits at most ~max_delay longer for a segment.
inline constexpr Batching kBackgroundBatching{.max_segments = 4, .max_bytes = 64ull << 20,
                                              .max_delay = std::chrono::milliseconds(50)};

/// Kafka-free core: records in, files out. Used by the live packager and by
/// re-packaging, and driven directly by tests and the fuzzer.
class Engine {
 public:
  Engine(OutputStore store, proto::Reassembler::Limits limits, Batching batching = {});

  /// Handles one record. Malformed, hostile or stale records are logged, counted
  /// and skipped (Ok). Only a failure to write the output is returned as an
  /// error: the caller must stop without committing past this record.
  Result<RecordOutcome> OnRecord(std::string_view key, std::span<const uint8_t> value);

  /// True when the title is complete on disk or became complete here.
  bool IsComplete(const std::string& title);
  /// Forgets everything cached about `title` (its partition was revoked: another
  /// packager of the group may advance it on disk meanwhile).
  void Forget(const std::string& title);

  /// True when written segments or state changes wait to be published.
  bool HasUnpublished() const { return !dirty_.empty(); }
  /// Publishes every waiting segment and state change: segment files durable
  /// and renamed into place, then each changed title's state and playlists.
  Status Publish();
  /// Publish(), then make the directory entries durable; call before
  /// committing offsets.
  Status Flush();

  const Stats& stats() const { return stats_; }
  const OutputStore& store() const { return store_; }
  uint64_t buffered_bytes() const { return reassembler_.buffered_bytes(); }

 private:
  Result<TitleState*> Load(const std::string& title);
  Status Save(const TitleState& s, bool master);
  Result<RecordOutcome> OnStart(const proto::TitleStart& r);
  Result<RecordOutcome> OnChunk(const proto::SegmentChunk& c);
  Result<RecordOutcome> OnEnd(const proto::TitleEnd& r);
  void Reject(std::string_view key, const Status& why);
  /// Remembers that `title` changed (and whether its master must be rewritten).
  void MarkDirty(const std::string& title, bool master);
  /// Publishes if a Batching bound is reached.
  Status MaybePublish();

  OutputStore store_;
  proto::Reassembler reassembler_;
  Batching batching_;
  std::vector<StagedFile> staged_;          ///< written segments, not yet visible
  std::map<std::string, bool> dirty_;       ///< changed titles -> master to rewrite
  std::chrono::steady_clock::time_point dirty_since_;
  std::map<std::string, TitleState> titles_;
  std::set<std::string> missing_;  ///< titles known to have no state on disk
  Stats stats_;
};

struct Params {
  std::string out_dir;
  std::string brokers = "127.0.0.1:9092";
  /// The topic; created with these settings if it does not exist yet, so a
  /// packager can start before the first ingest.
  kafka::TopicSettings topic;
  std::string group_id = "kafka-hls-packager";
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
};

/// Runs the live packager until `stop`, or until the `until_complete` titles are done.
Result<Stats> Run(const Params& params, const std::atomic<bool>& stop);

/// Where a topic scan reads from.
struct ScanParams {
  std::string brokers = "127.0.0.1:9092";
  std::string topic = "kafka-hls";
  std::vector<std::pair<std::string, std::string>> kafka;  ///< extra consumer properties
};

struct RepackageParams {
  ScanParams source;
  std::string out_dir;
  std::set<std::string> titles;  ///< empty = every title in the topic
  proto::Reassembler::Limits limits;
  bool durable = true;
};

/// Rebuilds titles from the retained log into `out_dir`, byte-identical to what
/// a live packager writes. Fails (kInvalidArgument) if a requested title has no
/// record in the topic.
Result<Stats> Repackage(const RepackageParams& params, const std::atomic<bool>& stop);

/// One title as the topic holds it.
struct TitleSummary {
  std::string title;
  int32_t partition = -1;
  uint32_t runs = 0;             ///< ingest runs (title starts)
  uint32_t segments = 0;         ///< distinct segments of the latest source
  uint64_t bytes = 0;            ///< record bytes of the title in the topic
  double duration_s = 0;         ///< media seconds of the latest source's segments
  bool complete = false;         ///< the latest source's title end is in the topic
  uint64_t malformed = 0;        ///< records under this key that do not decode
};

/// Summarises every title in the topic (a scan; decodes headers, not media).
Result<std::vector<TitleSummary>> DescribeTopic(const ScanParams& params, const std::atomic<bool>& stop);

}  // namespace khls::packager
