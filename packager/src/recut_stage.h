// Re-packaging jobs that change a title's segment length or its renditions: a
// record transform between the topic scan and the Engine (khls/engine.h).
//
// The Engine writes what the records say. To re-cut a title at a new target
// duration, or to keep only some of its renditions, this stage reads the
// ingest's records and hands the Engine the records an ingest with those options
// would have published, one title version at a time:
//
// - Versions follow the Engine's rule (khls/title_identity.h): a title start of a
//   higher version starts the title over, a re-run of the same source continues
//   the version (its segments already seen are skipped: the first one stands), a
//   stale or conflicting start is ignored. Chunks are reassembled and verified
//   (proto::Reassembler) and checked for order exactly as the Engine checks them.
// - Renditions not asked for are dropped before reassembly. Without a new
//   duration, kept segments pass through unchanged (re-indexed); with one, every
//   complete old segment is pushed into a segmenter::Recutter and each new
//   segment group it pops is encoded as chunk records at once. Memory is the
//   Recutter's (about one old group plus one new segment per title being cut)
//   and one segment in reassembly per title: never a whole title.
// - The records emitted for a version: one TitleStart (the kept renditions with
//   every attribute of the ingest's, EXT-X-TARGETDURATION ceil(S) when re-cut),
//   the chunks, and, when the ingest's TitleEnd completes the version, a
//   TitleEnd with the new totals. A version that never completes in the log is
//   emitted up to the last new cut its media decides: the tail after it (at most
//   one target plus one GOP) waits for media that is not in the log yet, so a
//   later job into the same tree continues it with the same bytes.
// - Run id and source fingerprint of the emitted records are digests of the
//   ingest's and of the options, so two jobs write byte-identical trees
//   (.state.json included), and a tree re-cut one way never takes records of
//   another cut or of the live packager as its own (a different source of the
//   same version is a conflict, khls/title_identity.h).
//
// What cannot be done to a version (a --rendition id it does not have, nothing
// left but subtitles, a format-1 title, media the Recutter refuses) makes its
// records be skipped and is reported by Finish(), naming the title: a later
// version in the log replaces it. Records that do not decode, or belong to no
// title start the stage has seen, go to the sink unchanged: the Engine rejects
// or skips them with its own reasons.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "khls/proto.h"
#include "khls/status.h"

namespace khls::packager {

struct RecutOptions {
  /// New target segment duration in seconds, in (0, 3600]; 0 = keep the ingest's segments.
  double segment_duration = 0;
  /// Ids of the renditions to keep ("video-240p", "audio-fr", "subs-en"); empty = all.
  std::set<std::string> renditions;
  /// Bounds of the stage's own reassembly (as the Engine's).
  proto::Reassembler::Limits limits;
  /// Log a progress line per title every this many new segment groups.
  uint32_t progress_every = 100;
};

/// Receives the stage's records in order (the Engine's OnRecord); an error stops the job.
using RecordSink = std::function<Status(std::string_view key, std::span<const uint8_t> value)>;

struct RecutStats {
  uint64_t records = 0;             ///< records read
  uint64_t duplicates_skipped = 0;  ///< re-run segments already seen, stale runs and versions
  uint64_t rejected = 0;            ///< out-of-order, orphaned or damaged records (logged)
  uint64_t segments_in = 0;         ///< old segments of kept renditions reassembled
  uint64_t groups_out = 0;          ///< new segment groups emitted
  uint64_t media_out = 0;           ///< 90 kHz of the emitted groups (reference rendition)
};

class RecutStage {
 public:
  /// kInvalidArgument for a segment duration outside (0, 3600] (0 = keep) or an
  /// empty rendition id.
  static Result<std::unique_ptr<RecutStage>> Create(RecutOptions options, RecordSink sink);

  RecutStage(const RecutStage&) = delete;
  RecutStage& operator=(const RecutStage&) = delete;
  ~RecutStage();

  /// Handles one record of the log. Only an error of the sink is returned.
  Status OnRecord(std::string_view key, std::span<const uint8_t> value);

  /// The end of the log: logs how far incomplete titles went, and returns an
  /// error naming every title whose current version could not be re-packaged
  /// (the first problem's code; kInvalidArgument for options that do not fit it).
  Status Finish();

  const RecutStats& stats() const { return stats_; }
  /// Titles with at least one well-formed record in the log.
  const std::set<std::string>& titles() const { return titles_; }
  /// True when the current version of `title` could not be re-packaged.
  bool Refused(const std::string& title) const;
  /// The run id of the records emitted for the current version of `title`, if any.
  std::optional<proto::RunId> EmittedRun(const std::string& title) const;

 private:
  struct Job;
  RecutStage(RecutOptions options, RecordSink sink);

  Status OnStart(const proto::TitleStart& r);
  Status OnChunk(std::string_view key, std::span<const uint8_t> value, const proto::SegmentChunk& c);
  Status OnEnd(std::string_view key, std::span<const uint8_t> value, const proto::TitleEnd& r);
  /// Which renditions `start` keeps, or why these options do not fit it.
  Result<std::vector<uint16_t>> SelectRenditions(const proto::TitleStart& start) const;
  /// A live title resumed by a later run (proto::Succession::kResumes): passed on
  /// as a resumed start of the job's own; refused when re-cutting.
  Status Resume(Job& job, const proto::TitleStart& r);
  /// Plans a version from its first start, and emits the new title start.
  Status Begin(Job& job);
  /// The old segment of new rendition `rendition` held as parts is whole (its last
  /// part came, or its run ended): Feed() it as their concatenation.
  Status FeedParts(Job& job, uint16_t rendition);
  /// One complete old segment of new rendition `rendition`.
  Status Feed(Job& job, uint16_t rendition, const proto::AssembledSegment& seg);
  /// Emits every new segment group the Recutter has ready.
  Status Drain(Job& job);
  /// Emits one part of a new group as chunk records, and counts it.
  Status Emit(Job& job, uint16_t rendition, uint32_t sequence, int64_t start_pts, int64_t duration,
              std::span<const uint8_t> data);
  /// The version cannot go on: its further records are skipped, Finish() reports `why`.
  void Refuse(Job& job, Status why);
  void Reject(const Status& why);

  RecutOptions options_;
  RecordSink sink_;
  std::string params_;  ///< the options as the derived ids hash them
  proto::Reassembler reassembler_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;  ///< by title: its current version
  std::set<std::string> titles_;
  std::vector<std::vector<uint8_t>> records_;  ///< reused chunk record buffers
  RecutStats stats_;
};

}  // namespace khls::packager
