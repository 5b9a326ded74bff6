#include "khls/title_identity.h"

#include <algorithm>
#include <vector>

namespace khls::proto {

bool IsLive(const TitleStart& t) {
  return t.input_duration == 0 && t.source_size == 0 && t.source_fingerprint == Digest{};
}

Digest LiveLayout(const TitleStart& t) {
  // The start as every run of the title must give it: only what playlists show.
  TitleStart layout;
  layout.title = t.title;
  layout.target_duration_s = t.target_duration_s;
  layout.segment_duration_ms = t.segment_duration_ms;
  layout.part_target_ms = t.part_target_ms;
  layout.renditions = t.renditions;
  for (Rendition& r : layout.renditions) r.est_peak_bps = r.est_avg_bps = 0;
  std::vector<uint8_t> bytes = Encode(layout);
  static constexpr char kTag[] = "kafka-hls live layout 1";
  bytes.insert(bytes.begin(), kTag, kTag + sizeof kTag);
  Digest d = SegmentDigest(bytes);
  if (d == Digest{}) d[0] = 1;  // never the "no source" fingerprint
  return d;
}

bool IsLiveStatus(const TitleStatus& t) { return t.source_size == 0 && t.source_fingerprint != Digest{}; }

SourceId SourceOf(const TitleStart& t) {
  return {t.title_version, t.source_fingerprint, IsLive(t) ? LiveLayout(t) : Digest{}, t.first_sequence};
}

bool SameSource(const Digest& a, const Digest& b) {
  return a == b && std::any_of(a.begin(), a.end(), [](uint8_t x) { return x != 0; });
}

Succession Classify(const SourceId& held, const SourceId& incoming) {
  if (incoming.version > held.version) return Succession::kNewVersion;
  if (incoming.version < held.version) return Succession::kStale;
  if (SameSource(held.fingerprint, incoming.fingerprint)) return Succession::kContinues;
  if (incoming.first_sequence > 0 && held.layout != Digest{} && held.layout == incoming.layout)
    return Succession::kResumes;
  return Succession::kConflict;
}

const char* ToString(Succession s) {
  switch (s) {
    case Succession::kContinues: return "continues";
    case Succession::kResumes: return "resumes";
    case Succession::kNewVersion: return "new version";
    case Succession::kStale: return "stale";
    case Succession::kConflict: return "conflict";
  }
  return "?";
}

Admission Admit(const std::optional<TitleStatus>& latest, const Digest& fingerprint, bool replace,
                const Digest& live_layout) {
  if (!latest) return {Admission::Action::kPublish, 1};
  const uint32_t next = latest->title_version + 1;
  if (replace) return {Admission::Action::kPublish, next};
  if (live_layout != Digest{}) {
    // A live input: it resumes a running live title of the same layout, nothing else.
    if (!IsLiveStatus(*latest) || latest->state != TitleStatus::State::kStarted)
      return {Admission::Action::kRefuse, next};
    if (latest->source_fingerprint != live_layout) return {Admission::Action::kRefuse, next, 0, true};
    if (latest->segment_count == 0) return {Admission::Action::kPublish, next};
    return {Admission::Action::kResume, latest->title_version, latest->segment_count};
  }
  if (!SameSource(latest->source_fingerprint, fingerprint)) return {Admission::Action::kRefuse, next};
  if (latest->state == TitleStatus::State::kComplete) return {Admission::Action::kAlreadyComplete, latest->title_version};
  return {Admission::Action::kContinue, latest->title_version};
}

}  // namespace khls::proto
