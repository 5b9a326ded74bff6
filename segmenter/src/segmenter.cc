#include "khls/segmenter.h"

#include <algorithm>
#include <cmath>
#include <utility>

extern "C" {
#include <libavutil/log.h>
}

#include "av_handles.h"
#include "codec_string.h"
#include "cutter.h"
#include "input.h"
#include "language.h"
#include "sink.h"
#include "streams.h"

namespace khls::segmenter {
namespace {

using internal::Cutter;
using internal::CutterInput;
using internal::CutterRendition;
using internal::InputContextPtr;
using internal::PacketReader;
using internal::Selection;

// The shortest part (seconds): every part repeats PAT, PMT and PES headers, and
// a player asks for each one separately.
constexpr double kMinPartDuration = 0.1;

/// The inputs, readers and sinks of one pass over the title (the pre-scan or the
/// real one), and the cutter that drives them. Heap-allocated: the cutter keeps
/// references to the vectors.
struct Pass {
  std::vector<CutterInput> inputs;
  std::vector<CutterRendition> renditions;
  std::unique_ptr<Cutter> cutter;
};

/// Opens every input (or takes the already opened one from `opened`, when given),
/// selects the renditions' streams and starts the readers. The reference input's
/// first picture is where every other input's lands.
Result<std::unique_ptr<Pass>> OpenInputs(const std::vector<std::string>& urls, const Params& params,
                                         const std::vector<RenditionInfo>& renditions,
                                         std::vector<InputContextPtr>* opened = nullptr) {
  auto pass = std::make_unique<Pass>();
  for (size_t in = 0; in < urls.size(); ++in) {
    InputContextPtr ic;
    if (opened != nullptr && in < opened->size()) {
      ic = std::move((*opened)[in]);
    } else {
      KHLS_ASSIGN_OR_RETURN(ic, internal::OpenInput(urls[in], params));
    }
    CutterInput input;
    input.url = urls[in];
    std::vector<int> streams;
    for (size_t r = 0; r < renditions.size(); ++r) {
      if (renditions[r].input != static_cast<int>(in)) continue;
      const int index = renditions[r].stream;
      if (index >= static_cast<int>(ic->nb_streams))
        return Error(ErrorCode::kInvalidInput, "'{}' changed while it was read (stream {} is gone)", urls[in], index);
      streams.push_back(index);
      input.renditions.push_back(static_cast<int>(r));
    }
    for (unsigned i = 0; i < ic->nb_streams; ++i)
      if (std::find(streams.begin(), streams.end(), static_cast<int>(i)) == streams.end())
        ic->streams[i]->discard = AVDISCARD_ALL;
    input.reader = std::make_unique<PacketReader>(ic.get(), streams, urls[in]);
    input.ic = std::move(ic);
    pass->inputs.push_back(std::move(input));
  }
  KHLS_RETURN_IF_ERROR(pass->inputs[0].reader->Start());
  for (size_t in = 1; in < pass->inputs.size(); ++in)
    KHLS_RETURN_IF_ERROR(pass->inputs[in].reader->Start(pass->inputs[0].reader->first_picture()));
  for (size_t r = 0; r < renditions.size(); ++r) {
    CutterRendition c;
    c.kind = renditions[r].kind;
    c.id = renditions[r].id;
    c.input = renditions[r].input;
    if (c.input >= 0) {
      const auto& list = pass->inputs[c.input].renditions;
      c.output = static_cast<int>(std::find(list.begin(), list.end(), static_cast<int>(r)) - list.begin());
    }
    pass->renditions.push_back(std::move(c));
  }
  return pass;
}

/// Sinks for every rendition: muxers (real pass) or size estimates (pre-scan).
/// Sidecar cues move to the output timeline: their zero is the first picture.
Status MakeSinks(Pass& pass, const std::vector<RenditionInfo>& renditions,
                 const std::vector<std::vector<internal::Cue>>& sidecar_cues, bool estimate) {
  const int64_t zero = pass.inputs[0].reader->first_picture();
  for (size_t r = 0; r < renditions.size(); ++r) {
    const RenditionInfo& info = renditions[r];
    CutterRendition& c = pass.renditions[r];
    const std::string what =
        info.input >= 0 ? fmt::format("'{}' stream #{}", pass.inputs[info.input].url, info.stream) : info.codec_name;
    if (info.kind == TrackKind::kSubtitles) {
      std::vector<internal::Cue> cues;
      const AVCodecParameters* par = nullptr;
      if (info.input < 0) {
        cues = sidecar_cues[r];
        for (internal::Cue& cue : cues) cue.start += zero, cue.end += zero;
      } else {
        par = pass.inputs[info.input].ic->streams[info.stream]->codecpar;
      }
      KHLS_ASSIGN_OR_RETURN(c.sink, internal::MakeVttSink(par, std::move(cues), what));
      continue;
    }
    const AVStream& st = *pass.inputs[info.input].ic->streams[info.stream];
    if (estimate) {
      c.sink = internal::MakeTsEstimateSink(*st.codecpar);
    } else {
      const std::string lang = info.kind == TrackKind::kAudio ? internal::ToIso639_2B(info.language) : "";
      KHLS_ASSIGN_OR_RETURN(c.sink, internal::MakeTsSink(st, lang == "und" ? "" : lang, pass.inputs[info.input].url));
    }
  }
  return Status::Ok();
}

/// A quarter of the shortest video frame: a variant's keyframe this close to a cut is at it.
int64_t KeyframeTolerance(const std::vector<RenditionInfo>& renditions) {
  int64_t frame = 0;
  for (const RenditionInfo& r : renditions) {
    if (r.kind != TrackKind::kVideo || r.frame_rate_num <= 0) continue;
    const int64_t d = av_rescale(kClock, r.frame_rate_den, r.frame_rate_num);
    frame = frame == 0 ? d : std::min(frame, d);
  }
  return frame > 0 ? std::max<int64_t>(frame / 4, 2) : kClock / 1000;
}

RenditionSummary& Add(RenditionSummary& s, int64_t bytes, int64_t duration) {
  s.bytes += bytes;
  s.duration += duration;
  s.max_duration = std::max(s.max_duration, duration);
  s.peak_bps = std::max(s.peak_bps, av_rescale(bytes * 8, kClock, duration));
  s.average_bps = av_rescale(s.bytes * 8, kClock, s.duration);
  return s;
}

/// Adds the cutter's groups up into segments, per rendition. With parts a
/// segment is several groups: its size and duration are the sums of its parts',
/// and the totals count whole segments, as the playlists do (the bitrates a
/// variant announces and EXT-X-TARGETDURATION are about segments). Without parts
/// every group is a segment. The pre-scan and the real pass add up alike.
class SegmentTally {
 public:
  explicit SegmentTally(size_t renditions) : totals_(renditions), bytes_(renditions), durations_(renditions) {}

  /// Counts `group`; true when it ends a segment (the totals then include it).
  bool Count(const internal::CutGroup& group) {
    for (size_t r = 0; r < group.parts.size() && r < totals_.size(); ++r) {
      bytes_[r] += group.parts[r].output.size;
      durations_[r] += group.parts[r].duration;
    }
    if (!group.ends_segment) return false;
    for (size_t r = 0; r < totals_.size(); ++r) {
      Add(totals_[r], bytes_[r], durations_[r]);
      max_duration_ = std::max(max_duration_, durations_[r]);
      bytes_[r] = 0;
      durations_[r] = 0;
    }
    return true;
  }

  const std::vector<RenditionSummary>& totals() const { return totals_; }
  /// Longest segment of any rendition.
  int64_t max_duration() const { return max_duration_; }

 private:
  std::vector<RenditionSummary> totals_;
  std::vector<int64_t> bytes_;      ///< of the segment being added up
  std::vector<int64_t> durations_;  ///< of the segment being added up
  int64_t max_duration_ = 0;
};

class SegmenterImpl final : public Segmenter {
 public:
  SegmenterImpl(TitleInfo info, std::unique_ptr<Pass> pass)
      : info_(std::move(info)), pass_(std::move(pass)), tally_(info_.renditions.size()) {
    summary_.renditions.resize(info_.renditions.size());
  }

  const TitleInfo& info() const override { return info_; }
  const Summary& summary() const override { return summary_; }

  void Recycle(Segment segment) override {
    for (size_t r = 0; r < segment.parts.size() && r < pass_->renditions.size(); ++r)
      pass_->renditions[r].sink->Recycle(std::move(segment.parts[r].data));
  }

  Progress progress() const override {
    Progress p;
    p.bytes_read = pass_->cutter->bytes_read();
    p.input_size = info_.input_size;
    p.media_time = pass_->cutter->media_time();
    return p;
  }

  Result<std::optional<Segment>> Next() override {
    if (!error_.ok()) return error_;
    auto group = pass_->cutter->Next();
    if (!group.ok()) {
      error_ = group.status();  // a failed title stays failed
      return error_;
    }
    if (!group->has_value()) {
      const internal::PacketReader& reader = *pass_->inputs[0].reader;
      summary_.input_end = reader.end();
      summary_.input_end_detail = reader.end_detail();
      return std::optional<Segment>();
    }
    internal::CutGroup& g = **group;
    Segment seg;
    // Without parts every group ends its segment: sequence = the group's index, part 0.
    seg.sequence = sequence_;
    seg.part = part_;
    seg.independent = g.independent;
    seg.last_part = g.ends_segment;
    seg.start_pts = g.parts[0].start;
    seg.duration = g.parts[0].duration;
    if (tally_.Count(g)) {
      summary_.renditions = tally_.totals();
      summary_.max_duration = tally_.max_duration();
      summary_.segment_count += 1;
      ++sequence_;
      part_ = 0;
    } else {
      ++part_;
    }
    for (size_t r = 0; r < g.parts.size(); ++r) {
      internal::CutPart& p = g.parts[r];
      summary_.total_bytes += p.output.size;
      seg.parts.push_back(Part{p.start, p.duration, std::move(p.output.data)});
    }
    summary_.total_duration += seg.duration;
    return std::optional<Segment>(std::move(seg));
  }

 private:
  TitleInfo info_;
  Summary summary_;
  std::unique_ptr<Pass> pass_;
  SegmentTally tally_;
  uint32_t sequence_ = 0;  ///< the segment the next group belongs to
  uint32_t part_ = 0;      ///< its index in that segment
  Status error_;
};

}  // namespace

bool TitleInfo::has_video() const {
  return std::any_of(renditions.begin(), renditions.end(), [](const RenditionInfo& r) { return r.kind == TrackKind::kVideo; });
}

void SetLibraryLogLevel(bool verbose) { av_log_set_level(verbose ? AV_LOG_INFO : AV_LOG_ERROR); }

Result<std::unique_ptr<Segmenter>> Segmenter::Open(const std::vector<std::string>& urls, const Params& params) {
  if (urls.empty()) return Error(ErrorCode::kInvalidArgument, "segmenting: no input");
  const std::string& url = urls.front();
  if (!std::isfinite(params.target_duration) || params.target_duration <= 0 || params.target_duration > 3600) {
    return Error(ErrorCode::kInvalidArgument, "segmenting '{}': target duration {} s is not in (0, 3600]", url,
                 params.target_duration);
  }
  const auto target = static_cast<int64_t>(std::llround(params.target_duration * kClock));
  int64_t part_target = 0;
  if (params.part_duration != 0) {
    // LL-HLS parts: a part no longer than a segment, and not so short that the
    // PAT/PMT and PES headers each part repeats outweigh its media.
    if (!std::isfinite(params.part_duration) || params.part_duration < kMinPartDuration ||
        params.part_duration > params.target_duration) {
      return Error(ErrorCode::kInvalidArgument,
                   "segmenting '{}': part duration {} s is not in [{} s, {} s]: a part lasts at least {} s and at most "
                   "the target duration",
                   url, params.part_duration, kMinPartDuration, params.target_duration, kMinPartDuration);
    }
    // The variants would have to cut parts at the same frames, which they need not have keyframes at.
    if (urls.size() > 1) {
      return Error(ErrorCode::kInvalidArgument,
                   "segmenting '{}' and {} more input{}: --part-duration takes one input: a ladder's variants cannot "
                   "be cut into parts yet",
                   url, urls.size() - 1, urls.size() > 2 ? "s" : "");
    }
    if (!params.subtitles.empty()) {
      return Error(ErrorCode::kInvalidArgument,
                   "segmenting '{}': subtitle file '{}': subtitles are not carried in low-latency (part) mode "
                   "(--part-duration)",
                   url, params.subtitles.front().path);
    }
    part_target = std::llround(params.part_duration * kClock);
  }

  // Which streams become renditions, decided on the opened inputs.
  std::vector<InputContextPtr> probes;
  std::vector<const AVFormatContext*> contexts;
  for (const std::string& u : urls) {
    KHLS_ASSIGN_OR_RETURN(InputContextPtr ic, internal::OpenInput(u, params));
    contexts.push_back(ic.get());
    probes.push_back(std::move(ic));
  }
  KHLS_ASSIGN_OR_RETURN(Selection sel, internal::SelectRenditions(contexts, urls, params));

  TitleInfo info;
  info.renditions = sel.renditions;
  info.streams = sel.reports;
  const AVFormatContext& first = *probes[0];
  info.container = first.iformat->name;
  info.part_target = part_target;
  if (first.duration != AV_NOPTS_VALUE && first.duration > 0)
    info.input_duration = av_rescale(first.duration, kClock, AV_TIME_BASE);
  info.seekable = true;
  for (const InputContextPtr& ic : probes) {
    info.seekable = info.seekable && internal::IsSeekableFile(*ic);
    if (ic->pb != nullptr) info.input_size += std::max<int64_t>(avio_size(ic->pb), 0);
  }
  // A live input (a pipe, a FIFO, a stream) cannot be read twice: its real pass
  // reads on from the contexts opened here. A file's pre-scan does (nothing has
  // been read from them since their stream info: they are what opening the file
  // again would give), and its real pass opens it again.
  const int64_t tolerance = KeyframeTolerance(info.renditions);

  if (info.seekable) {
    // The pre-scan: the whole title through the same cutter, sizes estimated instead of muxed.
    KHLS_ASSIGN_OR_RETURN(std::unique_ptr<Pass> plan, OpenInputs(urls, params, info.renditions, &probes));
    KHLS_RETURN_IF_ERROR(MakeSinks(*plan, info.renditions, sel.sidecar_cues, /*estimate=*/true));
    // With parts too: each part's PAT/PMT and flushed audio PES count in the
    // estimates, and the parts add up to the segments the real pass will make.
    plan->cutter = std::make_unique<Cutter>(&plan->inputs, &plan->renditions, target, tolerance, part_target);
    plan->cutter->set_quiet(true);
    SegmentTally planned(info.renditions.size());
    for (;;) {
      KHLS_ASSIGN_OR_RETURN(std::optional<internal::CutGroup> g, plan->cutter->Next());
      if (!g) break;
      planned.Count(*g);
    }
    info.planned_max_duration = planned.max_duration();
    for (size_t r = 0; r < planned.totals().size(); ++r) {
      info.renditions[r].estimated_peak_bps = planned.totals()[r].peak_bps;
      info.renditions[r].estimated_avg_bps = planned.totals()[r].average_bps;
    }
  } else {
    info.planned_max_duration = static_cast<int64_t>(std::ceil(params.target_duration)) * kClock;
  }

  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<Pass> pass,
                        OpenInputs(urls, params, info.renditions, info.seekable ? nullptr : &probes));
  // The longest B-frame lead of any variant (they all show their first picture at the same time).
  for (const CutterInput& in : pass->inputs) info.decode_lead = std::max(info.decode_lead, in.reader->decode_lead());
  KHLS_RETURN_IF_ERROR(MakeSinks(*pass, info.renditions, sel.sidecar_cues, /*estimate=*/false));
  pass->cutter = std::make_unique<Cutter>(&pass->inputs, &pass->renditions, target, tolerance, part_target);
  if (!info.seekable) pass->cutter->set_live_target(info.planned_max_duration);
  return std::unique_ptr<Segmenter>(std::make_unique<SegmenterImpl>(std::move(info), std::move(pass)));
}

}  // namespace khls::segmenter
