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
// new run of it is never "the same source".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "khls/proto.h"

namespace khls::proto {

/// What a title start or status says about its source.
struct SourceId {
  uint32_t version = 1;
  Digest fingerprint{};
};
inline SourceId SourceOf(const TitleStart& t) { return {t.title_version, t.source_fingerprint}; }
inline SourceId SourceOf(const TitleStatus& t) { return {t.title_version, t.source_fingerprint}; }

/// True when two fingerprints name the same source: equal, and not the zero
/// fingerprint of a live input.
bool SameSource(const Digest& a, const Digest& b);

/// How an incoming title start relates to the version a reader holds.
enum class Succession {
  kContinues,   ///< same version, same source: a re-run; its segments are the same
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
    kAlreadyComplete,  ///< the same source, complete: nothing to publish
    kRefuse,           ///< a different source without --replace
  };
  Action action = Action::kPublish;
  uint32_t version = 1;
};
Admission Admit(const std::optional<TitleStatus>& latest, const Digest& fingerprint, bool replace);

}  // namespace khls::proto
