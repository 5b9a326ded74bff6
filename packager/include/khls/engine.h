// The packager's Kafka-free core: records in, files out.
//
// The tree it writes is described in khls/title_state.h.
//
// Order of writes: segment files, then state, then the media playlists (and the
// master on the first segment group and at completion), each atomic and durable,
// so a playlist never lists a segment that is not complete on disk. A segment
// group (segment g of every rendition) is listed once all of it is on disk, in
// every rendition's playlist at once. Segments are written as
// they complete but published (made durable, renamed into place, listed) in
// batches: after every record by default, or, for the live packager and
// re-packaging, whenever Kafka has nothing more queued or a bound is reached
// (Batching). Kafka offsets are committed only up to records whose effects are
// durable; a restart replays the rest, and replays are recognised (by sequence
// and digest) and skipped.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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
  /// `container`: how video and audio segments are written (khls/title_state.h).
  Engine(OutputStore store, proto::Reassembler::Limits limits, Batching batching = {},
         Container container = Container::kTs);

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
  /// Stages the files of one assembled segment of rendition `r` (the TS or
  /// WebVTT as it came, or its CMAF remux and, when new, its init segment) and
  /// returns its state entry.
  Result<SegmentEntry> StageSegment(TitleState& s, size_t r, const proto::AssembledSegment& seg);
  void Reject(std::string_view key, const Status& why);
  /// Remembers that `title` changed (and whether its master must be rewritten).
  void MarkDirty(const std::string& title, bool master);
  /// Publishes if a Batching bound is reached.
  Status MaybePublish();

  OutputStore store_;
  proto::Reassembler reassembler_;
  Batching batching_;
  Container container_;
  std::vector<StagedFile> staged_;          ///< written segments, not yet visible
  std::map<std::string, bool> dirty_;       ///< changed titles -> master to rewrite
  std::chrono::steady_clock::time_point dirty_since_;
  std::map<std::string, TitleState> titles_;
  /// What each title's media playlists last listed: (segment groups, complete).
  std::map<std::string, std::pair<size_t, bool>> rendered_;
  std::set<std::string> missing_;  ///< titles known to have no state on disk
  Stats stats_;
};

}  // namespace khls::packager
