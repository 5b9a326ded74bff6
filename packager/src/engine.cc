#include <algorithm>
#include <chrono>

#include "khls/cmaf.h"
#include "khls/segmenter.h"
#include "khls/engine.h"
#include "khls/log.h"
#include "khls/playlist.h"
#include "media_index.h"
#include "khls/title_identity.h"

namespace khls::packager {
namespace fs = std::filesystem;
namespace {

// What a video segment's own bytes say about it (media_index.h): whether a
// player can start decoding at it, and, for I-frame playlists, the pictures of
// it that decode alone and the PSI they need first. Read from the TS the
// records carry, whatever the output container.
struct VideoFacts {
  bool independent = false;
  uint64_t map = 0;             ///< PAT/PMT... at the start of the TS
  std::vector<IFrame> iframes;  ///< TS byte ranges
  int first_nal = -1;           ///< first VCL NAL type of the first picture
};

Result<VideoFacts> ReadVideoFacts(std::span<const uint8_t> ts) {
  KHLS_ASSIGN_OR_RETURN(TsIndex index, IndexTs(ts));
  VideoFacts f;
  f.independent = index.starts_independent;
  if (index.video.empty()) return f;
  f.first_nal = index.video.front().nal_type;
  if (!index.psi_in_header) return f;  // no map a player could be given
  f.map = index.header_size;
  const int64_t first_pts = index.video.front().pts;
  for (const TsAccessUnit& au : index.video) {
    // An H.264 IDR or an HEVC IRAP carries its parameter sets in band (the
    // ingest's bitstream filters put them there) and needs no other picture;
    // a recovery-point I picture of H.264 has neither.
    const bool alone = au.keyframe && (index.hevc ? au.nal_type >= 16 && au.nal_type <= 21 : au.nal_type == 5);
    if (!alone || au.pts < 0 || first_pts < 0) continue;
    const uint64_t time = static_cast<uint64_t>(au.pts - first_pts) & ((uint64_t{1} << 33) - 1);
    if (time >= (uint64_t{1} << 32)) continue;  // before the first picture (33-bit wrap): not in this segment's span
    f.iframes.push_back({au.offset, au.size, time});
  }
  std::sort(f.iframes.begin(), f.iframes.end(), [](const IFrame& a, const IFrame& b) { return a.time < b.time; });
  return f;
}

// The I-frame of a CMAF fragment: its first sample (a segment starts on a
// keyframe; its parameter sets are in the init segment), from the moof to the
// end of that sample. One per segment: the fragment's other keyframes cannot be
// reached without a moof of their own.
std::vector<IFrame> FirstSampleIFrame(const segmenter::CmafSegment& cmaf, const std::string& what) {
  auto tracks = IndexInit(cmaf.init);
  auto fragments = tracks.ok() ? IndexFmp4(cmaf.media, *tracks) : Result<std::vector<Fmp4Fragment>>(tracks.status());
  if (!fragments.ok()) {
    log::Warn("{}: its fragment cannot be indexed ({}); it has no I-frame", what, fragments.status().message());
    return {};
  }
  if (fragments->empty() || fragments->front().tracks.empty()) return {};
  const Fmp4Fragment& f = fragments->front();
  const Fmp4Fragment::Track& t = f.tracks.front();
  if (!t.sample_count || !t.first_sample_sync || t.first_sample_offset < f.moof_offset) return {};
  return {IFrame{f.moof_offset, t.first_sample_offset + t.first_sample_size - f.moof_offset, 0}};
}

bool StartsWithIFrame(const SegmentEntry& e) { return e.iframes && !e.iframes->empty() && e.iframes->front().time == 0; }

// The I-frame playlist lists segments while each starts with an I-frame (see
// HasIFramePlaylist); said once, at the segment where that stops.
void WarnIfIFramesStop(const std::vector<SegmentEntry>& before, const SegmentEntry& entry, const std::string& what) {
  if (!entry.iframes || StartsWithIFrame(entry) || !std::all_of(before.begin(), before.end(), StartsWithIFrame)) return;
  log::Warn("{} does not start with a picture that decodes alone; the rendition's I-frame playlist stops before it "
            "and the multivariant playlist no longer lists it",
            what);
}

}  // namespace

std::string_view ToString(RejectReason reason) {
  switch (reason) {
    case RejectReason::kMalformed: return "malformed";
    case RejectReason::kKeyMismatch: return "key_mismatch";
    case RejectReason::kOrphan: return "orphan";
    case RejectReason::kConflict: return "conflict";
    case RejectReason::kUnknownRendition: return "unknown_rendition";
    case RejectReason::kOutOfOrder: return "out_of_order";
    case RejectReason::kAfterEnd: return "after_end";
    case RejectReason::kReassembly: return "reassembly";
    case RejectReason::kBadMedia: return "bad_media";
    case RejectReason::kEndMismatch: return "end_mismatch";
  }
  return "unknown";
}

Engine::Engine(OutputStore store, proto::Reassembler::Limits limits, Batching batching, Container container)
    : store_(std::move(store)), limits_(limits), reassembler_(limits), batching_(batching), container_(container) {}

void Engine::set_live_options(LiveOptions o) { live_ = std::move(o); }

Status Engine::set_low_latency(bool on) {
  if (on && encryption_.enabled())
    return Error(ErrorCode::kInvalidArgument,
                 "low-latency packaging does not encrypt yet: use --encrypt or --low-latency, not both");
  low_latency_ = on;
  return Status::Ok();
}

bool Engine::HoldsNothing(const TitleState& s) {
  for (const std::vector<SegmentEntry>& list : s.segments)
    if (!list.empty()) return false;
  for (const std::vector<PartEntry>& parts : s.pending)
    if (!parts.empty()) return false;
  return true;
}

bool Engine::InFlight(const std::string& title) const {
  if (reassembler_.InFlight(title)) return true;
  auto it = parts_.find(title);
  if (it == parts_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(), [](const PartBuffer& b) { return b.count > 0; });
}

void Engine::DropParts(const std::string& title) {
  auto it = parts_.find(title);
  if (it == parts_.end()) return;
  for (const PartBuffer& b : it->second) part_bytes_ -= b.data.size();
  parts_.erase(it);
}

int64_t Engine::NowMs() const {
  if (live_.now_ms) return live_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Engine::Slide(TitleState& s) {
  if (!s.window) return;
  const size_t listed = s.ListedCount();
  if (listed < 2) return;
  // Group durations as the first rendition has them (groups are cut together).
  const std::vector<SegmentEntry>& lead = s.segments.front();
  uint64_t total = 0;
  for (size_t i = 0; i < listed; ++i) total += lead[i].duration;
  // Keep the shortest run of the newest groups that still lasts the window.
  size_t drop = 0;
  while (drop + 1 < listed && total - lead[drop].duration >= s.window) total -= lead[drop++].duration;
  if (drop == 0) return;
  const int64_t now = NowMs();
  const uint64_t target = uint64_t{s.start.target_duration_s} * kClock;
  for (size_t i = 0; i < drop; ++i) {
    // Available for its own duration plus the longest playlist that held it (at most window + a target duration).
    const uint64_t grace = lead[i].duration + s.window + target;
    uint32_t parts = 0;
    for (const std::vector<SegmentEntry>& list : s.segments)
      parts = std::max(parts, static_cast<uint32_t>(list[i].parts.size()));
    s.expired.push_back({s.first + static_cast<uint32_t>(i), now + static_cast<int64_t>(grace / 90), parts});
    s.first_time += lead[i].duration;
  }
  for (std::vector<SegmentEntry>& list : s.segments) {
    // The init segment in effect goes on being named before the first segment still
    // listed (a player joining now has no other way to learn it).
    std::string map;
    for (size_t i = 0; i < drop; ++i)
      if (!list[i].map.empty()) map = list[i].map;
    if (!map.empty() && list[drop].map.empty()) list[drop].map = map;
    list.erase(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(drop));
  }
  s.first += static_cast<uint32_t>(drop);
  // Runs that began before the first segment still listed: their discontinuities
  // left with their segments (EXT-X-DISCONTINUITY-SEQUENCE counts them), and the
  // last one's anchor times what remains.
  while (!s.run_starts.empty() && s.run_starts.front().sequence < s.first) {
    if (s.run_starts.front().pdt_anchor_ms) s.pdt_anchor_ms = s.run_starts.front().pdt_anchor_ms;
    s.run_starts.erase(s.run_starts.begin());
    ++s.discontinuity_sequence;
  }
}

Status Engine::RemoveExpired(TitleState& s) {
  if (s.expired.empty()) return Status::Ok();
  const int64_t now = NowMs();
  const fs::path dir(s.title);
  size_t done = 0;
  for (; done < s.expired.size() && s.expired[done].remove_at_ms <= now; ++done) {
    for (size_t r = 0; r < s.start.renditions.size(); ++r) {
      const TitleState::Expired& e = s.expired[done];
      const proto::RenditionKind kind = s.start.renditions[r].kind;
      KHLS_RETURN_IF_ERROR(store_.Remove(dir / s.RenditionDir(r) / SegmentFileName(e.sequence, kind, s.container)));
      if (kind == proto::RenditionKind::kSubtitles) continue;
      for (uint32_t k = 0; k < e.parts; ++k)
        KHLS_RETURN_IF_ERROR(store_.Remove(dir / s.RenditionDir(r) / PartFileName(e.sequence, k, kind, s.container)));
    }
  }
  if (done == 0) return Status::Ok();
  log::Debug("title '{}': removed the files of {} segment groups that left the live window", s.title, done);
  s.expired.erase(s.expired.begin(), s.expired.begin() + static_cast<std::ptrdiff_t>(done));
  return Status::Ok();
}

Status Engine::EnableEncryption(const Encryption& e) {
  if (e.enabled() && low_latency_)
    return Error(ErrorCode::kInvalidArgument,
                 "low-latency packaging does not encrypt yet: use --encrypt or --low-latency, not both");
  if (!e.enabled()) {
    encryption_ = e;
    keys_.reset();
    return Status::Ok();
  }
  if (!IsQuotableUriPrefix(e.key_uri_prefix))
    return Error(ErrorCode::kInvalidArgument,
                 "key URI prefix '{}' has a space, quote or control character (it goes into EXT-X-KEY's quoted URI)",
                 e.key_uri_prefix);
  const bool remote = store_.root().string().starts_with("s3://");
  if (remote && e.key_store.empty())
    return Error(ErrorCode::kInvalidArgument,
                 "the output '{}' is object storage: give a local --key-store directory for the keys (they are never "
                 "written to the bucket)",
                 store_.root().string());
  const fs::path dir = e.key_store.empty() ? KeyStore::DefaultFor(store_.root()) : fs::path(e.key_store);
  auto opened = KeyStore::Open(dir, remote ? fs::path() : store_.root(), store_.durable());
  if (!opened.ok()) return opened.status();
  keys_ = std::move(opened).value();
  encryption_ = e;
  log::Info("encrypting new titles with {} (a new key every {}), keys in '{}'", ToString(e.method),
            e.key_rotation ? fmt::format("{} segments", e.key_rotation) : std::string("title version"),
            keys_->dir().string());
  return Status::Ok();
}

void Engine::MarkDirty(const std::string& title, bool master) {
  if (dirty_.empty()) dirty_since_ = std::chrono::steady_clock::now();
  dirty_[title] |= master;
}

Status Engine::MaybePublish() {
  if (dirty_.empty()) return Status::Ok();
  uint64_t staged_bytes = 0;
  for (const StagedFile& f : staged_) staged_bytes += f.size();
  if (batching_.max_segments <= 1 || staged_.size() >= batching_.max_segments ||
      staged_bytes >= batching_.max_bytes || std::chrono::steady_clock::now() - dirty_since_ >= batching_.max_delay)
    return Publish();
  return Status::Ok();
}

Status Engine::Publish() {
  if (dirty_.empty()) return Status::Ok();  // every staged segment marked its title dirty
  const auto t0 = std::chrono::steady_clock::now();
  const size_t segments = staged_.size(), titles = dirty_.size();
  Status st = PublishDirty();
  const auto took = std::chrono::steady_clock::now() - t0;
  if (publish_observer_) publish_observer_(took, st);
  KHLS_RETURN_IF_ERROR(st);
  log::Debug("published {} segments of {} titles in {:.1f} ms", segments, titles,
             std::chrono::duration<double, std::milli>(took).count());
  return Status::Ok();
}

Status Engine::PublishDirty() {
  // Segments first: a playlist written below may list any of them.
  size_t done = 0;
  Status st;
  for (; done < staged_.size() && st.ok(); ++done) {
    const uint64_t size = staged_[done].size();
    st = store_.Publish(staged_[done]);
    if (st.ok()) stats_.written_bytes += size;
  }
  if (!st.ok()) --done;  // the failed one stays staged; a retry picks it up
  staged_.erase(staged_.begin(), staged_.begin() + static_cast<std::ptrdiff_t>(done));
  KHLS_RETURN_IF_ERROR(st);
  for (const auto& [title, master] : dirty_) {
    auto it = titles_.find(title);
    if (it == titles_.end()) continue;
    KHLS_RETURN_IF_ERROR(Save(it->second, master));
    // After the playlists that no longer list them.
    KHLS_RETURN_IF_ERROR(RemoveExpired(it->second));
  }
  dirty_.clear();
  return Status::Ok();
}

Status Engine::Flush() {
  KHLS_RETURN_IF_ERROR(Publish());
  return store_.Sync();
}

void Engine::Reject(std::string_view key, RejectReason reason, const Status& why) {
  ++stats_.rejected;
  ++stats_.rejected_by_reason[static_cast<size_t>(reason)];
  std::string shown(key.substr(0, 64));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  log::Warn("skipped record (key '{}'): {}", shown, why.message());
}

Result<TitleState*> Engine::Load(const std::string& title) {
  if (auto it = titles_.find(title); it != titles_.end()) return &it->second;
  if (missing_.count(title)) return static_cast<TitleState*>(nullptr);
  // A crash may have left temp files (a segment staged before the title's first
  // state was written, or any write cut short): no other writer owns them.
  store_.RemoveTempFiles(title);
  fs::path rel = fs::path(title) / kStateFileName;
  KHLS_ASSIGN_OR_RETURN(bool exists, store_.Exists(rel));
  if (!exists) {
    missing_.insert(title);
    return static_cast<TitleState*>(nullptr);
  }
  KHLS_ASSIGN_OR_RETURN(std::string text, store_.Read(rel));
  auto parsed = ParseState(text);
  if (!parsed.ok()) return parsed.status().WithContext(fmt::format("state of title '{}'", title));
  if (parsed->container != container_)
    return Error(ErrorCode::kInvalidArgument,
                 "title '{}' in '{}' is packaged as {}; this packager writes {}: give it another output directory",
                 title, store_.root().string(), ToString(parsed->container), ToString(container_));
  if (parsed->encryption != encryption_.method)
    return Error(ErrorCode::kInvalidArgument,
                 "title '{}' in '{}' is packaged with encryption {}; this packager's is {}: {}", title,
                 store_.root().string(), ToString(parsed->encryption), ToString(encryption_.method),
                 parsed->encryption != EncryptionMethod::kNone
                     ? "start it with --encrypt " + std::string(ToString(parsed->encryption)) +
                           " and the key store the title's keys are in"
                     : std::string("give it another output directory"));
  TitleState& s = titles_[title] = std::move(parsed).value();
  // A crash may have come between the state and the playlists: bring the playlists
  // in line with the state.
  if (!s.segments.empty()) {
    KHLS_RETURN_IF_ERROR(Save(s, true));
    KHLS_RETURN_IF_ERROR(RemoveExpired(s));
  }
  return &s;
}

Status Engine::Save(const TitleState& s, bool master) {
  const fs::path dir(s.title);
  KHLS_RETURN_IF_ERROR(store_.WriteAtomic(dir / kStateFileName, SerializeState(s)));
  const size_t listed = s.ListedCount();
  // Low latency: the parts of the segment in progress are listed too (from the first one on).
  const size_t parts = s.low_latency ? LowLatencyCursor(s).parts : 0;
  if (listed == 0 && parts == 0) return Status::Ok();
  // The media playlists change together (they list whole segment groups, and
  // parts every rendition has): rewrite them only when what they list has changed
  // since they were last written.
  const std::tuple<size_t, bool, size_t> shown{s.first + listed, s.complete, parts};
  auto [it, fresh] = rendered_.try_emplace(s.title, shown);
  if (fresh || it->second != shown || master) {
    for (size_t r = 0; r < s.start.renditions.size(); ++r) {
      KHLS_RETURN_IF_ERROR(
          store_.WriteAtomic(dir / s.RenditionDir(r) / kMediaPlaylistName, RenderMediaPlaylist(s, r)));
      if (HasIFramePlaylist(s, r))
        KHLS_RETURN_IF_ERROR(
            store_.WriteAtomic(dir / s.RenditionDir(r) / kIFramePlaylistName, RenderIFramePlaylist(s, r)));
    }
    it->second = shown;
  }
  if (master) KHLS_RETURN_IF_ERROR(store_.WriteAtomic(dir / kMasterPlaylistName, RenderMasterPlaylist(s)));
  return Status::Ok();
}

void Engine::Forget(const std::string& title) {
  if (dirty_.count(title)) {
    if (Status st = Publish(); !st.ok()) log::Warn("title '{}': {}", title, st.message());
  }
  reassembler_.Drop(title);
  DropParts(title);
  titles_.erase(title);
  rendered_.erase(title);
  missing_.erase(title);
}

bool Engine::IsComplete(const std::string& title) {
  auto s = Load(title);
  return s.ok() && *s && (*s)->complete;
}

Result<RecordOutcome> Engine::OnRecord(std::string_view key, std::span<const uint8_t> value, int64_t timestamp_ms) {
  ++stats_.records;
  record_time_ms_ = timestamp_ms;
  auto rec = proto::Decode(value);
  if (!rec.ok()) {
    Reject(key, RejectReason::kMalformed, rec.status());
    return RecordOutcome{};
  }
  const std::string& title = proto::TitleOf(*rec);
  if (key != title) {
    Reject(key, RejectReason::kKeyMismatch,
           Error(ErrorCode::kMalformedRecord, "record for title '{}' carries a different Kafka key", title));
    return RecordOutcome{};
  }
  auto outcome = std::visit(
      [&](const auto& r) -> Result<RecordOutcome> {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, proto::TitleStart>) return OnStart(r);
        else if constexpr (std::is_same_v<T, proto::SegmentChunk>) return OnChunk(r);
        else if constexpr (std::is_same_v<T, proto::TitleEnd>) return OnEnd(r);
        else {
          // Index records belong in "<topic>.titles", never in the media topic.
          Reject(key, RejectReason::kMalformed,
                 Status(ErrorCode::kMalformedRecord, "a title status record in the media topic"));
          return RecordOutcome{};
        }
      },
      *rec);
  if (outcome.ok()) KHLS_RETURN_IF_ERROR(MaybePublish());
  return outcome;
}

Result<RecordOutcome> Engine::OnStart(const proto::TitleStart& r) {
  RecordOutcome out{r.title};
  const std::string run = proto::ToHex(r.run_id);
  KHLS_ASSIGN_OR_RETURN(TitleState * s, Load(r.title));
  if (s && s->HasRun(run)) {
    // A live title's start, re-announced (or replayed): what is in flight stays so.
    ++stats_.duplicates_skipped;
    out.in_flight = InFlight(r.title);
    return out;
  }
  const proto::Succession succession =
      s ? proto::Classify(proto::SourceOf(s->start), proto::SourceOf(r)) : proto::Succession::kNewVersion;
  if (succession == proto::Succession::kContinues) {
    // The same source ingested again (after a crash, or by mistake): its
    // segments are identical, so it continues this version.
    log::Info("title '{}': run {} re-ingests the same source; continuing version {} at segment {}", r.title, run,
              s->version, s->first + s->ListedCount());
    s->runs.push_back(run);
    MarkDirty(r.title, false);
    return out;
  }
  if (succession == proto::Succession::kResumes) return OnResume(*s, r);
  if (succession == proto::Succession::kStale) {
    // An older version's start, replayed (a restart from an earlier offset): superseded.
    log::Debug("title '{}': run {} starts version {}, older than version {}; skipped", r.title, run, r.title_version,
               s->start.title_version);
    ++stats_.duplicates_skipped;
    return out;
  }
  if (succession == proto::Succession::kConflict) {
    Reject(r.title, RejectReason::kConflict,
           Error(ErrorCode::kMalformedRecord,
                 "title '{}': run {} publishes version {} from another source than the one it holds (two "
                 "ingests raced?); its records are ignored",
                 r.title, run, r.title_version));
    return out;
  }
  // The previous version's last changes land under it before the switch.
  if (dirty_.count(r.title)) KHLS_RETURN_IF_ERROR(Publish());
  TitleState fresh;
  fresh.title = r.title;
  // The output directory is v<title_version>; a state from before the version counter
  // was the ingest's alone may already use that number.
  fresh.version = s ? std::max(r.title_version, s->version + 1) : r.title_version;
  fresh.runs = {run};
  fresh.start = r;
  fresh.segments.resize(r.renditions.size());
  fresh.container = container_;
  fresh.encryption = encryption_.method;
  if (encryption_.enabled()) {
    fresh.key_rotation = encryption_.key_rotation;
    fresh.key_uri_prefix = encryption_.key_uri_prefix;
  }
  if (container_ != Container::kTs) fresh.init_digests.resize(r.renditions.size());
  if (low_latency_ && r.part_target_ms > 0) {
    fresh.low_latency = true;
    fresh.pending.resize(r.renditions.size());
    fresh.pending_maps.resize(r.renditions.size());
  }
  if (IsLive(r) && live_.window_s > 0) {
    const double floor_s = 3.0 * r.target_duration_s;
    if (live_.window_s < floor_s)
      log::Info("title '{}': live window raised from {:.1f} s to {:.0f} s (three target durations, RFC 8216 6.2.2)",
                r.title, live_.window_s, floor_s);
    fresh.window = static_cast<uint64_t>(std::llround(std::max(live_.window_s, floor_s) * kClock));
  }
  if (s) {
    log::Info("title '{}': run {} publishes a different source; it becomes version {}", r.title, run, fresh.version);
    reassembler_.Drop(r.title);
    DropParts(r.title);
  } else {
    std::string renditions;
    for (const proto::Rendition& d : r.renditions)
      renditions += fmt::format("{}{} {}", renditions.empty() ? "" : ", ", d.id.empty() ? "muxed" : d.id, d.codecs);
    log::Info("title '{}': started by run {} ({}; target duration {} s)", r.title, run, renditions,
              r.target_duration_s);
  }
  if (container_ == Container::kTs) {
    for (const proto::Rendition& d : r.renditions)
      if (d.codecs.starts_with("hvc1") || d.codecs.starts_with("hev1"))
        log::Warn("title '{}': rendition '{}' is HEVC ({}) in MPEG-TS, which Safari and hls.js do not play (Apple "
                  "requires fMP4 for HEVC); package it with --container fmp4",
                  r.title, d.id.empty() ? "muxed" : d.id, d.codecs);
  }
  missing_.erase(r.title);
  rendered_.erase(r.title);
  TitleState& slot = titles_[r.title] = std::move(fresh);
  // Nothing is visible to players yet: the playlists appear with the first segment.
  MarkDirty(slot.title, false);
  return out;
}

Result<RecordOutcome> Engine::OnChunk(const proto::SegmentChunk& c) {
  RecordOutcome out{c.title};
  KHLS_ASSIGN_OR_RETURN(TitleState * s, Load(c.title));
  const std::string run = proto::ToHex(c.run_id);
  if (!s) {
    Reject(c.title, RejectReason::kOrphan,
           Error(ErrorCode::kMalformedRecord, "segment {} of title '{}' arrived before any title start", c.sequence,
                 c.title));
    return out;
  }
  if (!s->HasRun(run)) {
    // A chunk of an older version or of an unknown run: not part of what is served.
    ++stats_.duplicates_skipped;
    return out;
  }
  if (c.rendition >= s->start.renditions.size()) {
    reassembler_.Drop(c.title);
    Reject(c.title, RejectReason::kUnknownRendition,
           Error(ErrorCode::kMalformedRecord, "title '{}': segment {} of rendition {}, which the title does not have ({})",
                 c.title, c.sequence, c.rendition, s->start.renditions.size()));
    return out;
  }
  // A live title joined after its first segments (a packager that came later than
  // the topic's retention, or started at the end of the log): it begins at the
  // first whole segment group that reaches it after the (re-announced) title start.
  if (IsLive(s->start) && c.sequence > s->first && !InFlight(c.title) && HoldsNothing(*s)) {
    if (c.rendition != 0 || c.part != 0 || c.chunk_index != 0) {
      ++stats_.duplicates_skipped;  // the rest of a group begun before this packager joined
      return RecordOutcome{c.title};
    }
    log::Info("title '{}': live, joined at segment {} (the segments before it were not read: they were published "
              "before this packager's first offset or left the topic's retention)",
              c.title, c.sequence);
    s->first = c.sequence;
    s->first_time = c.start_pts > static_cast<uint64_t>(segmenter::kOutputStartPts)
                        ? c.start_pts - static_cast<uint64_t>(segmenter::kOutputStartPts)
                        : 0;
  }
  const std::vector<SegmentEntry>& segments = s->segments[c.rendition];
  const proto::Rendition& rendition = s->start.renditions[c.rendition];
  const uint32_t next = s->NextSequence(c.rendition);
  const bool whole = c.part == 0 && c.independent && c.last_part;
  // Which offsets can be committed: a record that starts something partly assembled
  // (a chunked segment, or the first part of a segment) is where a restart replays from.
  const bool was_in_flight = InFlight(c.title);
  auto in_flight = [&](RecordOutcome o) {
    o.in_flight = InFlight(c.title);
    o.started_in_flight = o.in_flight && (whole ? c.chunk_index == 0 : !was_in_flight);
    return o;
  };
  if (c.sequence < next) {
    // (A segment that has left a live window is a replay too: nothing to compare it with.)
    if (whole && c.chunk_index == 0 && c.sequence >= s->first &&
        proto::ToHex(c.segment_digest) != segments[c.sequence - s->first].digest)
      log::Warn("title '{}': run {} segment {} of rendition '{}' differs from the one already published; keeping the "
                "first", c.title, run, c.sequence, rendition.id);
    ++stats_.duplicates_skipped;
    return in_flight(out);
  }
  if (c.sequence > next) {
    reassembler_.Drop(c.title);
    DropParts(c.title);
    Reject(c.title, RejectReason::kOutOfOrder,
           Error(ErrorCode::kMalformedRecord, "title '{}': segment {} of rendition '{}' arrived but segment {} is next",
                 c.title, c.sequence, rendition.id, next));
    return in_flight(out);
  }
  if (s->complete) {
    Reject(c.title, RejectReason::kAfterEnd,
           Error(ErrorCode::kMalformedRecord, "title '{}' is complete; segment {} is extra", c.title, c.sequence));
    return in_flight(out);
  }
  auto added = reassembler_.Add(c);
  if (!added.ok()) {
    Reject(c.title, RejectReason::kReassembly, added.status());
    return in_flight(out);
  }
  if (!added->has_value()) return in_flight(out);
  const proto::AssembledSegment& seg = **added;
  // A title cut into parts has all its segments go through OnPart (a segment may be one part).
  Status st = s->start.part_target_ms == 0 ? OnSegment(*s, c.rendition, seg, {}) : OnPart(*s, c.rendition, seg);
  if (!st.ok()) {
    if (st.code() != ErrorCode::kInvalidInput) return st;
    // Media the remuxer cannot read: this version cannot go on (its next segments
    // are rejected as out of order); what is listed stays playable.
    reassembler_.Drop(c.title);
    DropParts(c.title);
    Reject(c.title, RejectReason::kBadMedia, st);
  }
  return in_flight(out);
}

Status Engine::OnPart(TitleState& s, size_t r, const proto::AssembledSegment& part) {
  const proto::Rendition& rendition = s.start.renditions[r];
  std::vector<PartBuffer>& buffers = parts_[s.title];
  buffers.resize(s.start.renditions.size());
  PartBuffer& b = buffers[r];
  if (b.sequence != part.sequence) {
    part_bytes_ -= b.data.size();
    b = {};
    b.sequence = part.sequence;
  }
  const std::string what = fmt::format("title '{}' rendition '{}' segment {} part {}", s.title, rendition.id,
                                       part.sequence, part.part);
  if (part.part < b.count) {
    ++stats_.duplicates_skipped;  // replayed (a re-run of the same source)
    return Status::Ok();
  }
  if (part.part > b.count) {
    Reject(s.title, RejectReason::kOutOfOrder,
           Error(ErrorCode::kMalformedRecord, "{} arrived but part {} is next", what, b.count));
    return Status::Ok();
  }
  // The parts of a segment are held until it is whole: within the same bounds as a segment's chunks.
  if (b.data.size() + part.data.size() > limits_.max_segment_bytes ||
      buffered_bytes() + part.data.size() > limits_.max_buffered_bytes) {
    const uint64_t held = b.data.size();
    part_bytes_ -= held;
    b = {};
    b.sequence = part.sequence;
    Reject(s.title, RejectReason::kReassembly,
           Error(ErrorCode::kResourceLimit,
                 "{}: holding its segment's parts ({} + {} bytes) would pass the segment bound of {} bytes or the "
                 "reassembly bound of {} bytes",
                 what, held, part.data.size(), limits_.max_segment_bytes, limits_.max_buffered_bytes));
    return Status::Ok();
  }
  // Low latency: the part's own file, listed at once. A part the state already
  // lists (this packager restarted mid-segment and replays it) is on disk.
  if (s.low_latency && rendition.kind != proto::RenditionKind::kSubtitles) {
    std::vector<PartEntry>& pending = s.pending[r];
    const std::string digest = proto::ToHex(part.digest);
    if (part.part < pending.size()) {
      if (pending[part.part].digest != digest)
        log::Warn("{} differs from the one already listed; keeping the listed one", what);
    } else {
      PartEntry entry{part.duration, 0, digest, part.independent, part.last_part};
      const fs::path dir = fs::path(s.title) / s.RenditionDir(r);
      const std::string name = PartFileName(part.sequence, part.part, rendition.kind, s.container);
      std::span<const uint8_t> bytes = part.data;
      segmenter::CmafSegment cmaf;
      if (s.container == Container::kFmp4) {
        // A part that does not start on a keyframe has no SPS/PPS: part 0's describe it.
        std::span<const uint8_t> reference;
        if (!part.independent && b.count > 0) reference = std::span<const uint8_t>(b.data).first(b.first_size);
        KHLS_ASSIGN_OR_RETURN(cmaf,
                              segmenter::RemuxTsToCmaf(part.data, part.sequence + 1, part.duration, what, reference));
        // A new init segment is the one the segment this part belongs to starts.
        KHLS_ASSIGN_OR_RETURN(std::string map, StageInit(s, r, part.sequence, cmaf.init, what));
        if (!map.empty()) s.pending_maps[r] = std::move(map);
        bytes = cmaf.media;
      }
      KHLS_ASSIGN_OR_RETURN(StagedFile file, store_.Stage(dir / name, bytes));
      entry.size = bytes.size();
      staged_.push_back(std::move(file));
      pending.push_back(std::move(entry));
      // The master appears with the first part every rendition has.
      MarkDirty(s.title, s.ListedCount() == 0 && part.sequence == s.first && LowLatencyCursor(s).parts == 1);
    }
  }
  if (b.count == 0) {
    b.start_pts = part.start_pts;
    b.first_size = part.data.size();
  }
  b.data.insert(b.data.end(), part.data.begin(), part.data.end());
  part_bytes_ += part.data.size();
  b.duration += part.duration;
  ++b.count;
  if (!part.last_part) return Status::Ok();
  return CloseSegment(s, r, b);
}

Status Engine::CloseSegment(TitleState& s, size_t r, PartBuffer& b) {
  // The segment is whole: the concatenation of its parts.
  proto::AssembledSegment seg;
  seg.title = s.title;
  seg.rendition = static_cast<uint16_t>(r);
  seg.sequence = b.sequence;
  seg.start_pts = b.start_pts;
  seg.duration = b.duration;
  seg.data = std::move(b.data);
  seg.digest = proto::SegmentDigest(seg.data);
  part_bytes_ -= seg.data.size();
  const uint32_t next = b.sequence + 1;
  b = {};
  b.sequence = next;
  std::vector<PartEntry> listed;
  if (s.low_latency && r < s.pending.size()) listed = std::exchange(s.pending[r], {});
  if (!listed.empty()) listed.back().last = true;
  return OnSegment(s, r, seg, std::move(listed));
}

Result<RecordOutcome> Engine::OnResume(TitleState& s, const proto::TitleStart& r) {
  RecordOutcome out{r.title};
  const std::string run = proto::ToHex(r.run_id);
  if (s.complete) {
    Reject(r.title, RejectReason::kAfterEnd,
           Error(ErrorCode::kMalformedRecord, "title '{}' has ended; run {} cannot resume it at segment {}", r.title,
                 run, r.first_sequence));
    return out;
  }
  // Whatever the previous run left half done is not coming: a segment whose parts
  // arrived (listed already, with low latency) ends with its last part here.
  reassembler_.Drop(r.title);
  if (auto it = parts_.find(r.title); it != parts_.end()) {
    // Parts come for every rendition in one transaction: each has the same ones,
    // or (never from an ingest) the segment cannot end in all and is dropped.
    std::vector<PartBuffer>& buffers = it->second;
    bool every = buffers.size() == s.start.renditions.size();
    for (size_t i = 0; every && i < buffers.size(); ++i)
      every = buffers[i].count > 0 && buffers[i].sequence == s.NextSequence(i);
    for (size_t i = 0; every && i < buffers.size(); ++i) {
      log::Info("title '{}': segment {} of rendition '{}' ends after its {} parts (run {} resumes the title)",
                r.title, buffers[i].sequence, s.start.renditions[i].id, buffers[i].count, run);
      KHLS_RETURN_IF_ERROR(CloseSegment(s, i, buffers[i]));
    }
    DropParts(r.title);
  }
  for (std::vector<PartEntry>& pending : s.pending) pending.clear();  // parts of a segment that could not end
  const uint32_t next = s.first + static_cast<uint32_t>(s.ListedCount());
  const bool nothing = HoldsNothing(s);
  if (!nothing && r.first_sequence != next) {
    Reject(r.title, r.first_sequence > next ? RejectReason::kOutOfOrder : RejectReason::kConflict,
           Error(ErrorCode::kMalformedRecord,
                 "title '{}': run {} resumes it at segment {} but segment {} is next here (records before it were "
                 "not read: they left the topic's retention?); its records are ignored",
                 r.title, run, r.first_sequence, next));
    return out;
  }
  s.runs.push_back(run);
  // A title that holds nothing yet begins with this run's first whole segment group (a late join).
  if (!nothing && !s.StartsRun(next)) s.run_starts.push_back({next, 0});
  log::Info("title '{}': run {} resumes live version {} at segment {}{}", r.title, run, s.version, r.first_sequence,
            nothing ? "" : " (after a discontinuity)");
  MarkDirty(r.title, false);
  return out;
}

Status Engine::OnSegment(TitleState& s, size_t r, const proto::AssembledSegment& seg, std::vector<PartEntry> parts) {
  const proto::Rendition& rendition = s.start.renditions[r];
  const double seconds = ToSeconds(seg.duration);
  if (std::llround(seconds) > s.start.target_duration_s)
    log::Warn("title '{}': segment {} of rendition '{}' lasts {:.3f} s, above EXT-X-TARGETDURATION {}", s.title,
              seg.sequence, rendition.id, seconds, s.start.target_duration_s);
  KHLS_ASSIGN_OR_RETURN(SegmentEntry entry, StageSegment(s, r, seg));
  if (s.low_latency && r < s.pending_maps.size() && !s.pending_maps[r].empty()) {
    // Its first part brought the init segment it starts.
    entry.map = std::exchange(s.pending_maps[r], {});
  }
  entry.parts = std::move(parts);
  const size_t listed_before = s.ListedCount();
  if (s.window && s.pdt_anchor_ms == 0) {
    // Time 0 of the title in wall-clock time: a live segment is published when its end
    // is cut (its records' timestamp; a packager that starts late or catches up a
    // backlog dates it the same).
    s.pdt_anchor_ms = ProducedMs() - static_cast<int64_t>((seg.duration + s.first_time) / 90);
  }
  if (s.window && !s.run_starts.empty() && s.run_starts.back().sequence == seg.sequence &&
      s.run_starts.back().pdt_anchor_ms == 0 && seg.sequence >= s.first) {
    // A resumed run: its own anchor (its timestamps started over), never behind the run before it.
    uint64_t at = s.first_time;
    for (size_t i = 0; i < seg.sequence - s.first && i < s.segments.front().size(); ++i)
      at += s.segments.front()[i].duration;
    const int64_t before = s.PdtAnchor(seg.sequence - 1);
    s.run_starts.back().pdt_anchor_ms =
        std::max(before, ProducedMs() - static_cast<int64_t>((seg.duration + at) / 90));
  }
  s.segments[r].push_back(std::move(entry));
  // The master appears with the first complete segment group.
  const bool first_group = listed_before == 0 && s.ListedCount() == 1;
  if (s.ListedCount() > listed_before) Slide(s);
  MarkDirty(s.title, first_group);
  ++stats_.segments_written;
  log::Debug("title '{}': segment {} of rendition '{}' staged ({} bytes, {:.3f} s)", s.title, seg.sequence,
             rendition.id, seg.data.size(), seconds);
  return Status::Ok();
}

Result<SegmentEntry> Engine::StageSegment(TitleState& s, size_t r, const proto::AssembledSegment& seg) {
  const proto::Rendition& rendition = s.start.renditions[r];
  const std::string name = SegmentFileName(seg.sequence, rendition.kind, s.container);
  SegmentEntry entry;
  entry.sequence = seg.sequence;
  entry.duration = seg.duration;
  entry.size = seg.data.size();
  entry.digest = proto::ToHex(seg.digest);
  const std::string what = fmt::format("title '{}' rendition '{}' segment {}", s.title, rendition.id, seg.sequence);
  std::optional<VideoFacts> facts;
  if (rendition.kind == proto::RenditionKind::kVideo) {
    auto read = ReadVideoFacts(seg.data);
    if (read.ok()) {
      facts = std::move(read).value();
    } else {
      // Written all the same (it decoded at the ingest), but nothing is claimed for it.
      log::Warn("{}: its video cannot be indexed ({}); it is not claimed independent and has no I-frames", what,
                read.status().message());
      facts.emplace();
    }
    entry.independent = facts->independent;
    const std::vector<SegmentEntry>& before = s.segments[r];
    if (!entry.independent && std::all_of(before.begin(), before.end(), [](const SegmentEntry& e) { return e.independent; }))
      log::Warn("{} does not start with a picture that decodes alone (first picture's NAL type {}: {}); the "
                "playlists no longer claim EXT-X-INDEPENDENT-SEGMENTS",
                what, facts->first_nal,
                facts->first_nal == 21 ? "a CRA followed by leading pictures that need the previous segment"
                                       : "not an IDR/IRAP");
    // The I-frame playlist of a format-1 (muxed, 0.1) title is not written: its tree stays 0.1's.
    if (!rendition.id.empty() && s.container == Container::kTs) {
      entry.iframes = facts->iframes;
      entry.iframe_map = facts->map;
    }
  }
  // Encrypted: no I-frame playlist (a byte range of an AES-CBC segment does not decrypt alone).
  if (s.encryption != EncryptionMethod::kNone) entry.iframes.reset();
  if (s.container == Container::kTs || rendition.kind == proto::RenditionKind::kSubtitles) {
    WarnIfIFramesStop(s.segments[r], entry, what);
    KHLS_RETURN_IF_ERROR(StageMedia(s, r, name, seg.data, entry));
    return entry;
  }
  KHLS_ASSIGN_OR_RETURN(segmenter::CmafSegment cmaf,
                        segmenter::RemuxTsToCmaf(seg.data, seg.sequence + 1, seg.duration, what));
  KHLS_ASSIGN_OR_RETURN(entry.map, StageInit(s, r, seg.sequence, cmaf.init, what));
  if (facts && !rendition.id.empty() && s.encryption == EncryptionMethod::kNone)
    entry.iframes = FirstSampleIFrame(cmaf, what);
  WarnIfIFramesStop(s.segments[r], entry, what);
  KHLS_RETURN_IF_ERROR(StageMedia(s, r, name, cmaf.media, entry));
  return entry;
}

Result<std::string> Engine::StageInit(TitleState& s, size_t r, uint32_t sequence, std::span<const uint8_t> init,
                                      const std::string& what) {
  // A new init segment where the codec configuration changes (and for the first segment).
  const std::string digest = proto::ToHex(proto::SegmentDigest(init));
  if (s.init_digests[r] == digest) return std::string();
  if (!s.init_digests[r].empty())
    log::Info("{}: the codec configuration changes; new init segment {}", what, InitFileName(sequence));
  std::string name = InitFileName(sequence);
  KHLS_ASSIGN_OR_RETURN(StagedFile file, store_.Stage(fs::path(s.title) / s.RenditionDir(r) / name, init));
  staged_.push_back(std::move(file));
  s.init_digests[r] = digest;
  return name;
}

Status Engine::StageMedia(TitleState& s, size_t r, const std::string& name, std::span<const uint8_t> bytes,
                          SegmentEntry& entry) {
  const fs::path dir = fs::path(s.title) / s.RenditionDir(r);
  // WebVTT stays clear: players fetch and parse subtitles outside their media decryption path.
  if (s.encryption == EncryptionMethod::kNone || s.start.renditions[r].kind == proto::RenditionKind::kSubtitles) {
    KHLS_ASSIGN_OR_RETURN(StagedFile file, store_.Stage(dir / name, bytes));
    staged_.push_back(std::move(file));
    entry.size = bytes.size();
    return Status::Ok();
  }
  if (!keys_)
    return Error(ErrorCode::kInternal, "title '{}' is encrypted but the packager has no key store", s.title);
  // The key of this segment's period, made durable before anything it encrypts is written.
  const std::string key_name = KeyFileName(KeyPeriodStart(entry.sequence, s.key_rotation));
  bool created = false;
  auto key = keys_->GetOrCreate(dir / key_name, &created);
  if (!key.ok()) return key.status().WithContext(fmt::format("title '{}' segment {}", s.title, entry.sequence));
  if (created) log::Debug("title '{}': new key {}", s.title, (dir / key_name).string());
  const AesIv iv = SegmentIv(*key, dir.generic_string(), entry.sequence);
  KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> cipher, EncryptAes128Cbc(bytes, *key, iv));
  KHLS_ASSIGN_OR_RETURN(StagedFile file, store_.Stage(dir / name, cipher));
  staged_.push_back(std::move(file));
  entry.size = cipher.size();
  entry.key = key_name;
  entry.iv = IvToHex(iv);
  return Status::Ok();
}

Result<RecordOutcome> Engine::OnEnd(const proto::TitleEnd& r) {
  RecordOutcome out{r.title};
  KHLS_ASSIGN_OR_RETURN(TitleState * s, Load(r.title));
  const std::string run = proto::ToHex(r.run_id);
  if (!s || !s->HasRun(run)) {
    if (!s)
      Reject(r.title, RejectReason::kOrphan,
             Error(ErrorCode::kMalformedRecord, "title end for '{}' without a title start", r.title));
    else ++stats_.duplicates_skipped;
    return out;
  }
  if (s->complete) {
    ++stats_.duplicates_skipped;
    return out;
  }
  for (size_t i = 0; i < s->segments.size(); ++i) {
    if (r.segment_count != s->NextSequence(i)) {
      Reject(r.title, RejectReason::kEndMismatch,
             Error(ErrorCode::kMalformedRecord,
                   "title '{}' ends with {} segments but {} of rendition '{}' were received; it stays "
                   "incomplete",
                   r.title, r.segment_count, s->NextSequence(i), s->start.renditions[i].id));
      return out;
    }
  }
  if (r.renditions.size() != s->start.renditions.size()) {
    Reject(r.title, RejectReason::kEndMismatch,
           Error(ErrorCode::kMalformedRecord,
                 "title '{}' ends with totals of {} renditions but has {}; it stays incomplete", r.title,
                 r.renditions.size(), s->start.renditions.size()));
    return out;
  }
  s->complete = true;
  MarkDirty(r.title, true);
  ++stats_.titles_completed;
  out.title_completed = true;
  log::Info("title '{}' complete: {} segments of {} renditions, {:.1f} s, playlist {}", r.title,
            s->first + s->ListedCount(),
            s->start.renditions.size(),
            ToSeconds(r.total_duration),
            (store_.root() / r.title / kMasterPlaylistName).string());
  return out;
}

}  // namespace khls::packager
