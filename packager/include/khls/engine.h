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

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "khls/keys.h"
#include "khls/output_store.h"
#include "khls/proto.h"
#include "khls/status.h"
#include "khls/title_identity.h"
#include "khls/title_state.h"

namespace khls::packager {

/// Why a record was rejected (logged with the details, counted per reason).
enum class RejectReason : uint8_t {
  kMalformed,         ///< does not decode, or a record type that does not belong in the media topic
  kKeyMismatch,       ///< its Kafka key is not the title it names
  kOrphan,            ///< a segment or title end of a title never started
  kConflict,          ///< a version from another source than the one held (two ingests raced)
  kUnknownRendition,  ///< a segment of a rendition the title does not have
  kOutOfOrder,        ///< a segment ahead of the next one expected
  kAfterEnd,          ///< a segment of a title already complete
  kReassembly,        ///< a chunk that does not reassemble (missing first chunk, sizes, digest, memory bound)
  kBadMedia,          ///< a segment whose media the remuxer cannot read
  kEndMismatch,       ///< a title end whose counts disagree with what arrived
};
inline constexpr size_t kRejectReasonCount = 10;
/// The reason as a metric label: "malformed", "key_mismatch", "orphan", "conflict",
/// "unknown_rendition", "out_of_order", "after_end", "reassembly", "bad_media", "end_mismatch".
std::string_view ToString(RejectReason reason);

struct Stats {
  uint64_t records = 0;
  uint64_t segments_written = 0;
  uint64_t duplicates_skipped = 0;  ///< replayed or re-ingested records already on disk
  uint64_t rejected = 0;            ///< malformed, hostile, orphaned or out-of-order records
  uint64_t titles_completed = 0;
  uint64_t other_titles = 0;  ///< records of titles this packager was told to ignore
  /// `rejected`, by RejectReason.
  std::array<uint64_t, kRejectReasonCount> rejected_by_reason{};
  /// Bytes of segment (and init segment) files published (playlists and state not counted).
  uint64_t written_bytes = 0;
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

/// Live titles (a live input: no file size, no duration): the sliding window.
struct LiveOptions {
  /// Seconds of segment groups the playlists of a live title list (at least three
  /// target durations, as RFC 8216 6.2.2 asks); groups that leave the window are
  /// dropped from the state and their files deleted after the grace period. 0 =
  /// keep every segment (an EVENT playlist that grows). Fixed per title version
  /// when it starts.
  double window_s = 60;
  /// Wall clock, ms since the Unix epoch (PROGRAM-DATE-TIME, grace periods); tests replace it.
  std::function<int64_t()> now_ms;
};
/// The window a live title gets by default, seconds.
inline constexpr double kDefaultLiveWindow = 60;

/// True for the title start of a live input (no fingerprint, size or duration).
using proto::IsLive;

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
  /// `timestamp_ms`: the record's Kafka timestamp (when the ingest produced it,
  /// ms since the Unix epoch), which dates a live title's segments
  /// (#EXT-X-PROGRAM-DATE-TIME) the same in every packager; 0 = unknown (the
  /// packager's clock when the record arrives stands in).
  Result<RecordOutcome> OnRecord(std::string_view key, std::span<const uint8_t> value, int64_t timestamp_ms = 0);

  /// Encrypts the titles this engine starts from now on (khls/keys.h), with keys
  /// in `e.key_store` (default "<output root>.keys"), which is opened (created)
  /// here: kInvalidArgument when it lies inside the output root, when the output
  /// is object storage and no key store is given, or on a bad key URI prefix.
  /// A title keeps the encryption it was started with; the engine refuses to
  /// continue one whose method differs from its own.
  Status EnableEncryption(const Encryption& e);

  /// How live titles started from now on are windowed (see LiveOptions).
  void set_live_options(LiveOptions o);

  /// LL-HLS: titles whose records come in parts (ingest --part-duration) and start
  /// from now on are packaged with low latency: each part is written and listed
  /// (EXT-X-PART, PRELOAD-HINT, SERVER-CONTROL, RENDITION-REPORT) as soon as every
  /// rendition has it, before its segment is complete. Off, such titles are
  /// listed segment by segment (their parts are put back together). Not with
  /// encryption (kInvalidArgument).
  Status set_low_latency(bool on);

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

  /// Called after every Publish() that had something to publish, with how long
  /// it took and how it ended (for metrics; keep it cheap).
  using PublishObserver = std::function<void(std::chrono::steady_clock::duration, const Status&)>;
  void set_publish_observer(PublishObserver observer) { publish_observer_ = std::move(observer); }

  const Stats& stats() const { return stats_; }
  const OutputStore& store() const { return store_; }
  uint64_t buffered_bytes() const { return reassembler_.buffered_bytes() + part_bytes_; }

 private:
  Result<TitleState*> Load(const std::string& title);
  Status Save(const TitleState& s, bool master);
  Result<RecordOutcome> OnStart(const proto::TitleStart& r);
  Result<RecordOutcome> OnChunk(const proto::SegmentChunk& c);
  Result<RecordOutcome> OnEnd(const proto::TitleEnd& r);
  /// A live title resumed by a new run of its ingest (proto::Succession::kResumes):
  /// the segment the previous run left half done ends with the parts it has, and
  /// the run's first segment group starts after a discontinuity.
  Result<RecordOutcome> OnResume(TitleState& s, const proto::TitleStart& r);
  /// A part of a segment (records from ingest --part-duration): kept until its
  /// segment is whole, and with low latency written and listed at once.
  Status OnPart(TitleState& s, size_t r, const proto::AssembledSegment& part);
  /// A whole segment of rendition r: staged and added to the state (`parts`: the
  /// parts it was listed as, low latency).
  Status OnSegment(TitleState& s, size_t r, const proto::AssembledSegment& seg, std::vector<PartEntry> parts);
  /// Something of `title` is partly assembled: a chunked record or a segment's parts.
  bool InFlight(const std::string& title) const;
  /// No segment and no part of the title's current version is held yet.
  static bool HoldsNothing(const TitleState& s);
  void DropParts(const std::string& title);
  struct PartBuffer;
  /// Rendition r's segment in `b` is whole: it is staged and listed from its parts.
  Status CloseSegment(TitleState& s, size_t r, PartBuffer& b);
  /// Stages the files of one assembled segment of rendition `r` (the TS or
  /// WebVTT as it came, or its CMAF remux and, when new, its init segment) and
  /// returns its state entry.
  Result<SegmentEntry> StageSegment(TitleState& s, size_t r, const proto::AssembledSegment& seg);
  /// fmp4: stages `init` as rendition r's init segment named for `sequence` when it
  /// differs from the one in effect, and returns that name ("" when unchanged).
  Result<std::string> StageInit(TitleState& s, size_t r, uint32_t sequence, std::span<const uint8_t> init,
                                const std::string& what);
  /// Stages `bytes` as segment file `name` of rendition r, encrypted when the
  /// title is (recording its key and IV in `entry`), and sets entry.size.
  Status StageMedia(TitleState& s, size_t r, const std::string& name, std::span<const uint8_t> bytes,
                    SegmentEntry& entry);
  void Reject(std::string_view key, RejectReason reason, const Status& why);
  /// Live window: drops the listed groups that left it (the state keeps only
  /// the window), scheduling their files for deletion.
  void Slide(TitleState& s);
  /// Deletes the files of expired groups whose grace period is over.
  Status RemoveExpired(TitleState& s);
  int64_t NowMs() const;
  /// When the record being handled was produced (its timestamp, else NowMs()).
  int64_t ProducedMs() const { return record_time_ms_ > 0 ? record_time_ms_ : NowMs(); }
  /// Publish() with something to publish.
  Status PublishDirty();
  /// Remembers that `title` changed (and whether its master must be rewritten).
  void MarkDirty(const std::string& title, bool master);
  /// Publishes if a Batching bound is reached.
  Status MaybePublish();

  OutputStore store_;
  proto::Reassembler::Limits limits_;
  proto::Reassembler reassembler_;
  Batching batching_;
  Container container_;
  Encryption encryption_;
  LiveOptions live_;
  bool low_latency_ = false;
  int64_t record_time_ms_ = 0;  ///< the timestamp of the record being handled; 0 = unknown
  /// The parts of each title's segments in progress, per rendition, until whole.
  struct PartBuffer {
    uint32_t sequence = 0;
    uint32_t count = 0;  ///< parts held
    uint64_t start_pts = 0;
    uint64_t duration = 0;
    size_t first_size = 0;  ///< bytes of part 0 (its stream parameters describe the later parts)
    std::vector<uint8_t> data;
  };
  std::map<std::string, std::vector<PartBuffer>> parts_;
  uint64_t part_bytes_ = 0;
  std::optional<KeyStore> keys_;  ///< set when encryption_ is enabled
  std::vector<StagedFile> staged_;          ///< written segments, not yet visible
  std::map<std::string, bool> dirty_;       ///< changed titles -> master to rewrite
  std::chrono::steady_clock::time_point dirty_since_;
  std::map<std::string, TitleState> titles_;
  /// What each title's media playlists last listed: (segment groups, complete,
  /// parts of the segment in progress with low latency).
  std::map<std::string, std::tuple<size_t, bool, size_t>> rendered_;
  std::set<std::string> missing_;  ///< titles known to have no state on disk
  Stats stats_;
  PublishObserver publish_observer_;
};

}  // namespace khls::packager
