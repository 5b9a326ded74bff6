#include "recut_stage.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <utility>
#include <variant>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "khls/log.h"
#include "khls/recut.h"
#include "khls/title_identity.h"

namespace khls::packager {
namespace {

using Clock = std::chrono::steady_clock;

// size * 8 / duration in bits per second, rounded to the nearest: the ingest's
// totals (av_rescale), so a pass-through title ends with the ingest's figures.
uint64_t Rate(uint64_t bytes, uint64_t duration) {
  if (duration == 0) return 0;
  __extension__ using U128 = unsigned __int128;  // bytes * 8 * 90000 outgrows 64 bits past 25 TB
  const U128 num = static_cast<U128>(bytes) * 8 * kClock;
  return static_cast<uint64_t>((num + duration / 2) / duration);
}

// A 16-byte id of the records a job emits, from the ingest's id and the job's
// options: the same log and options give the same ids, other options other ones.
proto::Digest Derive(std::string_view what, std::span<const uint8_t> id, std::string_view params) {
  std::string bytes = fmt::format("kafka-hls repackage {}\n", what);
  bytes.append(reinterpret_cast<const char*>(id.data()), id.size());
  bytes += params;
  return proto::SegmentDigest({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

std::string RenditionIds(const std::vector<proto::Rendition>& renditions) {
  std::string out;
  for (const proto::Rendition& r : renditions) out += fmt::format("{}{}", out.empty() ? "" : ", ", r.id);
  return out;
}

}  // namespace

/// One title's current version, as the Engine would hold it, and what is made of it.
struct RecutStage::Job {
  proto::TitleStart start;     ///< the version's first title start, as the ingest published it
  std::set<std::string> runs;  ///< hex ids of the ingest runs that feed it
  /// Not ok: the version cannot be re-packaged; its records are skipped, Finish() reports this.
  Status refused;
  bool complete = false;
  std::vector<uint16_t> kept;         ///< the old index of each new rendition
  std::vector<int> new_index;         ///< old index -> new index; -1 = left out
  std::vector<uint32_t> next;         ///< per new rendition: the old segment due next
  proto::TitleStart out;              ///< the title start emitted for it
  std::string legend;                 ///< "0 = video-240p, 1 = audio-en", for the Recutter's messages
  std::unique_ptr<segmenter::Recutter> recutter;  ///< null: kept segments pass through
  bool pushed = false;                ///< an old segment went into the Recutter
  std::vector<uint32_t> emitted;      ///< per new rendition: new segments emitted
  std::vector<proto::RenditionTotals> totals;  ///< per new rendition (avg_bps filled at the end)
  uint32_t groups = 0;                ///< new segment groups emitted
  uint64_t media = 0;                 ///< 90 kHz of them (reference rendition)
  Clock::time_point began;
  /// A title cut into LL-HLS parts: per new rendition, the parts of its old
  /// segment so far (the segment is their concatenation; it is re-cut whole).
  std::vector<proto::AssembledSegment> parts;
  std::vector<uint32_t> part_count;
};

RecutStage::RecutStage(RecutOptions options, RecordSink sink)
    : options_(std::move(options)), sink_(std::move(sink)), reassembler_(options_.limits) {
  std::string ids;
  for (const std::string& id : options_.renditions) ids += fmt::format("{}{}", ids.empty() ? "" : ",", id);
  params_ = fmt::format("segment_duration={};renditions={}", options_.segment_duration, ids);
}

RecutStage::~RecutStage() = default;

Result<std::unique_ptr<RecutStage>> RecutStage::Create(RecutOptions options, RecordSink sink) {
  const double s = options.segment_duration;
  if (!std::isfinite(s) || s < 0 || s > proto::kMaxTargetDuration)
    return Error(ErrorCode::kInvalidArgument, "repackage: segment duration {} s is not in (0, {}]", s,
                 proto::kMaxTargetDuration);
  for (const std::string& id : options.renditions)
    if (id.empty()) return Status(ErrorCode::kInvalidArgument, "repackage: an empty rendition id");
  if (options.progress_every == 0) options.progress_every = 1;
  return std::unique_ptr<RecutStage>(new RecutStage(std::move(options), std::move(sink)));
}

void RecutStage::Reject(const Status& why) {
  ++stats_.rejected;
  log::Warn("repackage: skipped record: {}", why.message());
}

void RecutStage::Refuse(Job& job, Status why) {
  log::Warn("repackage: {}; the rest of this version is skipped", why.message());
  job.refused = std::move(why);
  job.recutter.reset();
  reassembler_.Drop(job.start.title);
}

Status RecutStage::OnRecord(std::string_view key, std::span<const uint8_t> value) {
  ++stats_.records;
  auto rec = proto::Decode(value);
  // The Engine has the reasons for what does not decode or does not belong in the media topic.
  if (!rec.ok() || proto::TitleOf(*rec) != key || std::holds_alternative<proto::TitleStatus>(*rec))
    return sink_(key, value);
  titles_.emplace(key);
  if (const auto* start = std::get_if<proto::TitleStart>(&*rec)) return OnStart(*start);
  if (const auto* chunk = std::get_if<proto::SegmentChunk>(&*rec)) return OnChunk(key, value, *chunk);
  return OnEnd(key, value, std::get<proto::TitleEnd>(*rec));
}

Result<std::vector<uint16_t>> RecutStage::SelectRenditions(const proto::TitleStart& start) const {
  const auto& all = start.renditions;
  if (std::any_of(all.begin(), all.end(), [](const proto::Rendition& r) { return r.id.empty(); }))
    return Error(ErrorCode::kInvalidArgument,
                 "title '{}' version {} is in record format 1 (kafka-hls 0.1: one rendition of muxed audio and "
                 "video): it can be re-packaged only as it is, without --segment-duration or --rendition",
                 start.title, start.title_version);
  std::vector<std::string> unknown;
  for (const std::string& id : options_.renditions)
    if (std::none_of(all.begin(), all.end(), [&](const proto::Rendition& r) { return r.id == id; }))
      unknown.push_back(fmt::format("'{}'", id));
  if (!unknown.empty())
    return Error(ErrorCode::kInvalidArgument, "title '{}' version {} has no rendition {} (--rendition); its renditions: {}",
                 start.title, start.title_version, fmt::join(unknown, ", "), RenditionIds(all));
  std::vector<uint16_t> kept;
  bool media = false;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!options_.renditions.empty() && !options_.renditions.count(all[i].id)) continue;
    kept.push_back(static_cast<uint16_t>(i));
    media |= all[i].kind != proto::RenditionKind::kSubtitles;
  }
  if (!media)
    return Error(ErrorCode::kInvalidArgument,
                 "title '{}' version {}: --rendition keeps only subtitles; keep at least one video or audio rendition "
                 "(its renditions: {})",
                 start.title, start.title_version, RenditionIds(all));
  return kept;
}

Status RecutStage::Begin(Job& job) {
  const proto::TitleStart& in = job.start;
  auto kept = SelectRenditions(in);
  if (!kept.ok()) {
    Refuse(job, kept.status());
    return Status::Ok();
  }
  job.kept = std::move(kept).value();
  job.new_index.assign(in.renditions.size(), -1);
  job.out = in;
  job.out.renditions.clear();
  bool video = false;
  std::vector<segmenter::RecutKind> kinds;
  for (size_t n = 0; n < job.kept.size(); ++n) {
    const proto::Rendition& r = in.renditions[job.kept[n]];
    job.new_index[job.kept[n]] = static_cast<int>(n);
    job.out.renditions.push_back(r);
    video |= r.kind == proto::RenditionKind::kVideo;
    kinds.push_back(r.kind == proto::RenditionKind::kSubtitles ? segmenter::RecutKind::kWebVtt
                                                               : segmenter::RecutKind::kTs);
    job.legend += fmt::format("{}{} = {}", n ? ", " : "", n, r.id);
  }
  job.next.assign(job.kept.size(), 0);
  job.emitted.assign(job.kept.size(), 0);
  job.totals.assign(job.kept.size(), {});
  job.out.run_id = Derive("run", in.run_id, params_);
  job.out.part_target_ms = 0;  // it emits whole segments
  // A live input has no fingerprint (never "the same source"); it keeps none.
  if (in.source_fingerprint != proto::Digest{})
    job.out.source_fingerprint = Derive("source", in.source_fingerprint, params_);
  // The first picture's delay is a video matter: audio alone starts at once.
  if (!video) job.out.start_offset = 0;
  const double target = options_.segment_duration;
  if (target > 0) {
    // No new segment exceeds the target but a GOP longer than it, which would
    // break EXT-X-TARGETDURATION: such a title is refused where the GOP is met
    // (Drain), with the length that would work.
    job.out.target_duration_s = static_cast<uint32_t>(std::max(1.0, std::ceil(target)));
    job.out.segment_duration_ms = static_cast<uint32_t>(std::max(1L, std::lround(target * 1000)));  // 1.. in records
    auto made = segmenter::Recutter::Create(std::move(kinds), segmenter::RecutParams{
        target, fmt::format("re-cut of title '{}' version {}", in.title, in.title_version)});
    if (!made.ok()) {
      Refuse(job, made.status().WithContext(fmt::format("title '{}' version {}", in.title, in.title_version)));
      return Status::Ok();
    }
    job.recutter = std::move(made).value();
  }
  log::Info("repackage: title '{}' version {}: {} of {} renditions ({}), {}", in.title, in.title_version,
            job.kept.size(), in.renditions.size(), RenditionIds(job.out.renditions),
            target > 0 ? fmt::format("re-cut from {:g} s to {:g} s segments (target duration {} s)",
                                     in.segment_duration_ms / 1000.0, target, job.out.target_duration_s)
                       : std::string("segments as ingested"));
  return sink_(in.title, proto::Encode(job.out));
}

Status RecutStage::OnStart(const proto::TitleStart& r) {
  std::unique_ptr<Job>& slot = jobs_[r.title];
  const std::string run = proto::ToHex(r.run_id);
  if (slot && slot->runs.count(run)) {
    ++stats_.duplicates_skipped;
    return Status::Ok();
  }
  // The Engine's rule, on the ingest's records: what it would serve is what is re-packaged.
  const proto::Succession succession =
      slot ? proto::Classify(proto::SourceOf(slot->start), proto::SourceOf(r)) : proto::Succession::kNewVersion;
  switch (succession) {
    case proto::Succession::kContinues:
      // The same source again: its segments are the ones already seen, then the rest.
      log::Info("repackage: title '{}': run {} re-ingests the same source; it continues version {}", r.title, run,
                r.title_version);
      slot->runs.insert(run);
      return Status::Ok();
    case proto::Succession::kResumes:
      slot->runs.insert(run);
      return Resume(*slot, r);
    case proto::Succession::kStale:
      log::Debug("repackage: title '{}': run {} starts version {}, older than version {}; skipped", r.title, run,
                 r.title_version, slot->start.title_version);
      ++stats_.duplicates_skipped;
      return Status::Ok();
    case proto::Succession::kConflict:
      Reject(Error(ErrorCode::kMalformedRecord,
                   "title '{}': run {} publishes version {} from another source than the one it holds (two ingests "
                   "raced?); its records are ignored",
                   r.title, run, r.title_version));
      return Status::Ok();
    case proto::Succession::kNewVersion:
      break;
  }
  if (slot) {
    log::Info("repackage: title '{}': run {} publishes version {}; re-packaging starts over from it", r.title, run,
              r.title_version);
    reassembler_.Drop(r.title);
  }
  slot = std::make_unique<Job>();
  slot->start = r;
  slot->runs = {run};
  slot->began = Clock::now();
  return Begin(*slot);
}

Status RecutStage::Resume(Job& job, const proto::TitleStart& r) {
  if (!job.refused.ok() || job.complete) return Status::Ok();
  const std::string run = proto::ToHex(r.run_id);
  if (job.recutter) {
    Refuse(job, Error(ErrorCode::kInvalidArgument,
                      "title '{}' version {} is a live title resumed by run {} at segment {} (its timestamps start "
                      "over there): it can be re-packaged only with its own segments, without --segment-duration",
                      r.title, r.title_version, run, r.first_sequence));
    return Status::Ok();
  }
  // As the Engine does: a segment the previous run left in parts ends with the parts it has.
  reassembler_.Drop(r.title);
  for (size_t n = 0; n < job.part_count.size(); ++n)
    if (job.part_count[n] > 0 && job.parts[n].sequence == job.next[n])
      KHLS_RETURN_IF_ERROR(FeedParts(job, static_cast<uint16_t>(n)));
  for (size_t n = 0; n < job.next.size(); ++n) {
    if (job.next[n] == r.first_sequence) continue;
    Reject(Error(ErrorCode::kMalformedRecord,
                 "title '{}': run {} resumes it at segment {} but segment {} of rendition '{}' is next; its records "
                 "are ignored",
                 r.title, run, r.first_sequence, job.next[n], job.out.renditions[n].id));
    job.runs.erase(run);
    return Status::Ok();
  }
  log::Info("repackage: title '{}': run {} resumes live version {} at segment {}", r.title, run, r.title_version,
            r.first_sequence);
  // The Engine learns of the discontinuity from a resumed start of the job's own.
  job.out.run_id = Derive("run", r.run_id, params_);
  job.out.first_sequence = r.first_sequence;
  return sink_(r.title, proto::Encode(job.out));
}

Status RecutStage::OnChunk(std::string_view key, std::span<const uint8_t> value, const proto::SegmentChunk& c) {
  auto it = jobs_.find(c.title);
  if (it == jobs_.end()) return sink_(key, value);  // no title start yet: the Engine rejects it
  Job& job = *it->second;
  if (!job.runs.count(proto::ToHex(c.run_id))) {
    ++stats_.duplicates_skipped;  // an older version's, or a stale run's
    return Status::Ok();
  }
  if (!job.refused.ok()) return Status::Ok();
  if (c.rendition >= job.start.renditions.size()) {
    reassembler_.Drop(c.title);
    Reject(Error(ErrorCode::kMalformedRecord, "title '{}': segment {} of rendition {}, which the title does not have ({})",
                 c.title, c.sequence, c.rendition, job.start.renditions.size()));
    return Status::Ok();
  }
  const int n = job.new_index[c.rendition];
  if (n < 0) return Status::Ok();  // a rendition left out: not even reassembled
  const auto rendition = static_cast<uint16_t>(n);
  const std::string& id = job.start.renditions[c.rendition].id;
  uint32_t& next = job.next[rendition];
  if (c.sequence < next) {
    ++stats_.duplicates_skipped;  // a re-run's copy: the first one stands
    return Status::Ok();
  }
  if (c.sequence > next) {
    reassembler_.Drop(c.title);
    Reject(Error(ErrorCode::kMalformedRecord, "title '{}': segment {} of rendition '{}' arrived but segment {} is next",
                 c.title, c.sequence, id, next));
    return Status::Ok();
  }
  if (job.complete) {
    Reject(Error(ErrorCode::kMalformedRecord, "title '{}' is complete; segment {} is extra", c.title, c.sequence));
    return Status::Ok();
  }
  auto added = reassembler_.Add(c);
  if (!added.ok()) {
    Reject(added.status());
    return Status::Ok();
  }
  if (!added->has_value()) return Status::Ok();
  proto::AssembledSegment& got = **added;
  if (job.start.part_target_ms > 0) {
    // A part: the segment is whole at its last part (the Engine checks the same way).
    job.parts.resize(job.kept.size());
    job.part_count.resize(job.kept.size());
    proto::AssembledSegment& seg = job.parts[rendition];
    uint32_t& count = job.part_count[rendition];
    if (count > 0 && seg.sequence != got.sequence) count = 0;
    if (got.part < count) {
      ++stats_.duplicates_skipped;
      return Status::Ok();
    }
    if (got.part > count) {
      Reject(Error(ErrorCode::kMalformedRecord, "title '{}': segment {} part {} of rendition '{}' arrived but part {} "
                   "is next", c.title, got.sequence, got.part, id, count));
      return Status::Ok();
    }
    if (count == 0) {
      seg = std::move(got);
    } else {
      seg.data.insert(seg.data.end(), got.data.begin(), got.data.end());
      seg.duration += got.duration;
    }
    ++count;
    if (!c.last_part) return Status::Ok();
    return FeedParts(job, rendition);
  }
  ++next;
  ++stats_.segments_in;
  return Feed(job, rendition, got);
}

Status RecutStage::FeedParts(Job& job, uint16_t rendition) {
  proto::AssembledSegment whole = std::exchange(job.parts[rendition], {});
  job.part_count[rendition] = 0;
  whole.digest = proto::SegmentDigest(whole.data);
  ++job.next[rendition];
  ++stats_.segments_in;
  return Feed(job, rendition, whole);
}

Status RecutStage::Feed(Job& job, uint16_t rendition, const proto::AssembledSegment& seg) {
  if (!job.recutter) {
    // Only renditions are dropped: the segment goes on as it came, under its new index.
    KHLS_RETURN_IF_ERROR(Emit(job, rendition, seg.sequence, static_cast<int64_t>(seg.start_pts),
                              static_cast<int64_t>(seg.duration), seg.data));
    return Status::Ok();
  }
  // The ingest's start and duration make the new parts add up to the old ones exactly.
  const segmenter::OldPartTiming timing{static_cast<int64_t>(seg.start_pts), static_cast<int64_t>(seg.duration)};
  if (Status st = job.recutter->Push(rendition, seg.data, timing); !st.ok()) {
    Refuse(job, st.WithContext(fmt::format("title '{}' version {}: re-cut at old segment {} of rendition '{}' "
                                           "(re-cut renditions: {})",
                                           job.start.title, job.start.title_version, seg.sequence,
                                           job.out.renditions[rendition].id, job.legend)));
    return Status::Ok();
  }
  job.pushed = true;
  return Drain(job);
}

Status RecutStage::Drain(Job& job) {
  while (std::optional<segmenter::Segment> group = job.recutter->Pop()) {
    // A GOP longer than the target is a segment of its own: its duration, rounded,
    // would exceed EXT-X-TARGETDURATION (RFC 8216 4.3.3.1), which must hold for every
    // segment and never change. Refused, saying which length would do.
    const double seconds = ToSeconds(group->duration);
    if (std::llround(seconds) > static_cast<long long>(job.out.target_duration_s)) {
      Refuse(job, Error(ErrorCode::kInvalidInput,
                        "title '{}' version {}: its GOP at {:.3f} s lasts {:.3f} s, so it cannot be cut at keyframes "
                        "into segments of at most {:g} s (EXT-X-TARGETDURATION {}); re-cut it with "
                        "--segment-duration {} or more",
                        job.start.title, job.start.title_version, ToSeconds(job.media), seconds,
                        options_.segment_duration, job.out.target_duration_s, std::llround(std::ceil(seconds))));
      return Status::Ok();
    }
    for (size_t r = 0; r < group->parts.size(); ++r) {
      const segmenter::Part& part = group->parts[r];
      KHLS_RETURN_IF_ERROR(
          Emit(job, static_cast<uint16_t>(r), group->sequence, part.start_pts, part.duration, part.data));
    }
  }
  return Status::Ok();
}

Status RecutStage::Emit(Job& job, uint16_t rendition, uint32_t sequence, int64_t start_pts, int64_t duration,
                        std::span<const uint8_t> data) {
  const std::string& title = job.start.title;
  const proto::SegmentMeta meta{title, job.out.run_id, rendition, sequence, static_cast<uint64_t>(start_pts),
                                static_cast<uint64_t>(duration)};
  proto::EncodeSegmentInto(meta, data, proto::kDefaultChunkSize, records_);
  for (const std::vector<uint8_t>& record : records_) KHLS_RETURN_IF_ERROR(sink_(title, record));

  proto::RenditionTotals& t = job.totals[rendition];
  const auto d = static_cast<uint64_t>(duration);
  t.bytes += data.size();
  t.duration += d;
  t.max_segment_duration = std::max(t.max_segment_duration, d);
  t.peak_bps = std::max(t.peak_bps, Rate(data.size(), d));
  ++job.emitted[rendition];
  // The reference (the first rendition) counts the groups.
  if (rendition != 0) return Status::Ok();
  ++job.groups;
  job.media += d;
  ++stats_.groups_out;
  stats_.media_out += d;
  if (job.groups % options_.progress_every == 0)
    log::Info("repackage: title '{}': {} segments, {:.1f} s of media ({:.1f} s)", title, job.groups,
              ToSeconds(job.media), std::chrono::duration<double>(Clock::now() - job.began).count());
  return Status::Ok();
}

Status RecutStage::OnEnd(std::string_view key, std::span<const uint8_t> value, const proto::TitleEnd& r) {
  auto it = jobs_.find(r.title);
  if (it == jobs_.end()) return sink_(key, value);  // no title start yet: the Engine rejects it
  Job& job = *it->second;
  if (!job.runs.count(proto::ToHex(r.run_id))) {
    ++stats_.duplicates_skipped;
    return Status::Ok();
  }
  if (!job.refused.ok()) return Status::Ok();
  if (job.complete) {
    ++stats_.duplicates_skipped;
    return Status::Ok();
  }
  // The Engine's checks: a title end completes the version only if every segment it counts arrived.
  for (size_t n = 0; n < job.kept.size(); ++n) {
    if (job.next[n] != r.segment_count) {
      Reject(Error(ErrorCode::kMalformedRecord,
                   "title '{}' ends with {} segments but {} of rendition '{}' were received; it stays incomplete",
                   r.title, r.segment_count, job.next[n], job.out.renditions[n].id));
      return Status::Ok();
    }
  }
  if (r.renditions.size() != job.start.renditions.size()) {
    Reject(Error(ErrorCode::kMalformedRecord, "title '{}' ends with totals of {} renditions but has {}; it stays incomplete",
                 r.title, r.renditions.size(), job.start.renditions.size()));
    return Status::Ok();
  }
  if (job.recutter) {
    // The rest of the title: its last new segment runs to the end of the media.
    if (job.pushed) {
      if (Status st = job.recutter->Finish(); !st.ok()) {
        Refuse(job, st.WithContext(fmt::format("title '{}' version {}: re-cut at its end (re-cut renditions: {})",
                                               r.title, job.start.title_version, job.legend)));
        return Status::Ok();
      }
      KHLS_RETURN_IF_ERROR(Drain(job));
    }
    job.recutter.reset();
  }
  job.complete = true;
  proto::TitleEnd end{r.title, job.out.run_id, job.emitted[0], job.totals[0].duration, {}};
  for (proto::RenditionTotals t : job.totals) {
    t.avg_bps = Rate(t.bytes, t.duration);
    end.renditions.push_back(t);
  }
  KHLS_RETURN_IF_ERROR(sink_(r.title, proto::Encode(end)));
  const double seconds = std::chrono::duration<double>(Clock::now() - job.began).count();
  log::Info("repackage: title '{}' version {} done: {} segments became {}, {:.1f} s of media in {:.2f} s ({:.0f}x media "
            "speed)",
            r.title, job.start.title_version, r.segment_count, end.segment_count, ToSeconds(end.total_duration),
            seconds, seconds > 0 ? ToSeconds(end.total_duration) / seconds : 0.0);
  return Status::Ok();
}

bool RecutStage::Refused(const std::string& title) const {
  auto it = jobs_.find(title);
  return it != jobs_.end() && !it->second->refused.ok();
}

std::optional<proto::RunId> RecutStage::EmittedRun(const std::string& title) const {
  auto it = jobs_.find(title);
  if (it == jobs_.end() || !it->second->refused.ok()) return std::nullopt;
  return it->second->out.run_id;
}

Status RecutStage::Finish() {
  std::vector<std::string> failed;
  ErrorCode code = ErrorCode::kOk;
  for (auto& [title, job] : jobs_) {
    if (!job->refused.ok()) {
      if (code == ErrorCode::kOk) code = job->refused.code();
      failed.push_back(job->refused.message());
      continue;
    }
    if (!job->complete)
      log::Info("repackage: title '{}' version {} is incomplete in the log: {} segments ({:.1f} s of media) made; the "
                "rest waits for media the log does not hold yet",
                title, job->start.title_version, job->groups, ToSeconds(job->media));
    job->recutter.reset();
  }
  reassembler_.Clear();
  if (failed.empty()) return Status::Ok();
  if (failed.size() == 1) return Status(code, failed.front());
  return Error(code, "{} titles could not be re-packaged: {}", failed.size(), fmt::join(failed, "; "));
}

}  // namespace khls::packager
