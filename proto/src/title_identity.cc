#include "khls/title_identity.h"

#include <algorithm>

namespace khls::proto {

bool SameSource(const Digest& a, const Digest& b) {
  return a == b && std::any_of(a.begin(), a.end(), [](uint8_t x) { return x != 0; });
}

Succession Classify(const SourceId& held, const SourceId& incoming) {
  if (incoming.version > held.version) return Succession::kNewVersion;
  if (incoming.version < held.version) return Succession::kStale;
  return SameSource(held.fingerprint, incoming.fingerprint) ? Succession::kContinues : Succession::kConflict;
}

const char* ToString(Succession s) {
  switch (s) {
    case Succession::kContinues: return "continues";
    case Succession::kNewVersion: return "new version";
    case Succession::kStale: return "stale";
    case Succession::kConflict: return "conflict";
  }
  return "?";
}

Admission Admit(const std::optional<TitleStatus>& latest, const Digest& fingerprint, bool replace) {
  if (!latest) return {Admission::Action::kPublish, 1};
  if (replace) return {Admission::Action::kPublish, latest->title_version + 1};
  if (!SameSource(latest->source_fingerprint, fingerprint)) return {Admission::Action::kRefuse, latest->title_version + 1};
  if (latest->state == TitleStatus::State::kComplete) return {Admission::Action::kAlreadyComplete, latest->title_version};
  return {Admission::Action::kContinue, latest->title_version};
}

}  // namespace khls::proto
