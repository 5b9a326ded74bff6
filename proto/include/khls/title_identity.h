// Title identity: the one rule that decides whether records continue a title's
// current version, start a new one, or are stale. Ingest (admission against the
// index topic), the packager engine, re-packaging and `topic describe` all ask
// these functions; nobody else compares fingerprints or versions.
//
// A title has one counter, `title_version`, assigned by ingest: 1 for a new
// title, the same number when the same source is ingested again (a re-run after
// a crash continues it), the latest + 1 with --replace. The packager writes
// version N under DIR/<title>/v<N>/. A source is named by its fingerprint, which
// covers everything that decides the bytes of its segments (the input files, the
// segment duration, the tracks chosen); a live input has none (all zero), so a
// new run of it is never "the same source". A live title is instead *resumed*:
// an ingest of a live input on a live title that is neither complete nor
// replaced publishes the same version from the next segment group on
// (TitleStart::first_sequence), provided it keeps the title's layout (LiveLayout:
// durations and renditions as playlists show them); packagers mark where it
// starts with EXT-X-DISCONTINUITY.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "khls/proto.h"

namespace khls::proto {

/// True for the title start of a live input: no fingerprint, size or duration.
bool IsLive(const TitleStart& t);

/// What a run that resumes a live title must keep, as a digest: the target,
/// segment and part durations and the renditions as the playlists describe them
/// (everything of them but the rate estimates). Never all zero. A live title's
/// index status carries it as its source_fingerprint (with source_size 0).
Digest LiveLayout(const TitleStart& t);

/// True for the status of a live title (khls/proto.h TitleStatus: no source size,
/// its LiveLayout as fingerprint; a status of an earlier release's live title has none).
bool IsLiveStatus(const TitleStatus& t);

/// What a title start says about its source.
struct SourceId {
  uint32_t version = 1;
  Digest fingerprint{};
  /// A live title's LiveLayout; zero for a title from a source file.
  Digest layout{};
  /// > 0: the start of a run that resumes a live title at this segment group.
  uint32_t first_sequence = 0;
};
SourceId SourceOf(const TitleStart& t);

/// True when two fingerprints name the same source: equal, and not the zero
/// fingerprint of a live input.
bool SameSource(const Digest& a, const Digest& b);

/// How an incoming title start relates to the version a reader holds.
enum class Succession {
  kContinues,   ///< same version, same source: a re-run; its segments are the same
  /// Same version, a live title resumed by a new run with the same layout: its
  /// segments follow the ones held, after a discontinuity.
  kResumes,
  kNewVersion,  ///< a higher version: the reader switches to it
  kStale,       ///< a lower version: an old record (or a producer fenced long ago); ignore it
  kConflict,    ///< same version, different source: two ingests raced; the first one stands
};
Succession Classify(const SourceId& held, const SourceId& incoming);
const char* ToString(Succession s);

/// What an ingest does with a title, given its latest status in the index topic.
struct Admission {
  enum class Action {
    kPublish,          ///< publish `version` from its first segment (a new title, or --replace)
    kContinue,         ///< the same source, incomplete: publish `version` again (packagers skip what they have)
    kResume,           ///< a live title, incomplete, same layout: publish `version` from group `first_sequence`
    kAlreadyComplete,  ///< the same source, complete: nothing to publish
    kRefuse,           ///< a different source without --replace
  };
  Action action = Action::kPublish;
  uint32_t version = 1;
  uint32_t first_sequence = 0;  ///< kResume
  /// kRefuse of a live input: the title is a running live title whose layout differs.
  bool layout_differs = false;
};
/// `fingerprint`: the ingest's source fingerprint (zero for a live input);
/// `live_layout`: for a live input, LiveLayout of its title start (zero otherwise).
/// A live input on a live title that is incomplete and has the same layout resumes
/// it after the `segment_count` groups its status records (a new version when it
/// recorded none: nothing of it was published); on an ended or different title it
/// is refused without --replace.
Admission Admit(const std::optional<TitleStatus>& latest, const Digest& fingerprint, bool replace,
                const Digest& live_layout = {});

}  // namespace khls::proto
