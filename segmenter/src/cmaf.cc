#include "khls/cmaf.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "av_handles.h"
#include "memory_input.h"

extern "C" {
#include <libavutil/opt.h>
}

namespace khls::segmenter {
namespace {

using namespace internal;

constexpr int kAvioBufferSize = 64 * 1024;

struct MemoryWriter {
  std::vector<uint8_t> out;
#if LIBAVFORMAT_VERSION_MAJOR >= 61
  using Buffer = const uint8_t*;
#else
  using Buffer = uint8_t*;
#endif
  static int Write(void* opaque, Buffer buf, int size) {
    auto* w = static_cast<MemoryWriter*>(opaque);
    w->out.insert(w->out.end(), buf, buf + size);
    return size;
  }
};

AvioContextPtr MakeWriteAvio(MemoryWriter* writer) {
  auto* buffer = static_cast<uint8_t*>(av_malloc(kAvioBufferSize));
  if (buffer == nullptr) return nullptr;
  AVIOContext* pb = avio_alloc_context(buffer, kAvioBufferSize, 1, writer, nullptr, &MemoryWriter::Write, nullptr);
  if (pb == nullptr) av_free(buffer);
  return AvioContextPtr(pb);
}

uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Top-level ISO BMFF boxes of the muxer's output: (type, offset, size).
struct Box {
  std::string type;
  size_t offset = 0, size = 0;
};
Result<std::vector<Box>> TopLevelBoxes(std::span<const uint8_t> data, const std::string& what) {
  std::vector<Box> boxes;
  size_t pos = 0;
  while (pos < data.size()) {
    if (data.size() - pos < 8) return Error(ErrorCode::kInternal, "{}: MP4 muxer output ends inside a box header", what);
    uint64_t size = Be32(&data[pos]);
    if (size == 1 && data.size() - pos >= 16)
      size = (uint64_t{Be32(&data[pos + 8])} << 32) | Be32(&data[pos + 12]);
    else if (size == 0)
      size = data.size() - pos;
    if (size < 8 || size > data.size() - pos)
      return Error(ErrorCode::kInternal, "{}: MP4 muxer output has a box of bad size {} at {}", what, size, pos);
    boxes.push_back({std::string(reinterpret_cast<const char*>(&data[pos + 4]), 4), pos, static_cast<size_t>(size)});
    pos += static_cast<size_t>(size);
  }
  return boxes;
}

// Sets mfhd.sequence_number of the moof at `moof` (the muxer numbers every
// segment's only fragment 1).
void SetSequence(std::span<uint8_t> data, const Box& moof, uint32_t sequence) {
  size_t pos = moof.offset + 8;
  const size_t end = moof.offset + moof.size;
  while (end - pos >= 16) {
    const uint32_t size = Be32(&data[pos]);
    if (size < 8 || size > end - pos) return;
    if (std::memcmp(&data[pos + 4], "mfhd", 4) == 0) {
      for (int i = 0; i < 4; ++i) data[pos + 12 + i] = static_cast<uint8_t>(sequence >> (24 - 8 * i));
      return;
    }
    pos += size;
  }
}

// ADTS (how AAC travels in MPEG-TS) -> raw AAC frames plus the
// AudioSpecificConfig an MP4 sample entry needs. (libavformat's MP4 muxer only
// inserts aac_adtstoasc for the interleaved path of a normal moov.)
struct Adts {
  size_t header = 0;  ///< 7, or 9 with CRC
  uint8_t asc[2] = {};
};
std::optional<Adts> ParseAdts(const uint8_t* p, size_t n) {
  if (n < 7 || p[0] != 0xff || (p[1] & 0xf6) != 0xf0) return std::nullopt;
  const int object_type = ((p[2] >> 6) & 3) + 1;
  const int sf_index = (p[2] >> 2) & 0xf;
  const int channels = ((p[2] & 1) << 2) | (p[3] >> 6);
  const int raw_blocks = p[6] & 3;
  if (sf_index > 12 || channels == 0 || raw_blocks != 0) return std::nullopt;  // PCE or multi-block: not handled
  Adts a;
  a.header = (p[1] & 1) ? 7 : 9;
  a.asc[0] = static_cast<uint8_t>((object_type << 3) | (sf_index >> 1));
  a.asc[1] = static_cast<uint8_t>(((sf_index & 1) << 7) | (channels << 3));
  return a;
}

}  // namespace

Result<CmafSegment> RemuxTsToCmaf(std::span<const uint8_t> ts, uint32_t sequence, uint64_t duration,
                                  const std::string& what, std::span<const uint8_t> parameters_from) {
  auto fail = [&](const char* step, int err) {
    return Error(ErrorCode::kInvalidInput, "{}: cannot remux MPEG-TS to fMP4 ({}): {}", what, step,
                 AvErrorString(err));
  };

  // --- demux the whole segment (it is in memory already; packets share its copy)
  // With `parameters_from`, that TS is read first (its parameter sets and timing
  // reach the demuxer and its parsers as if the two were one stream), and only the
  // packets that start in `ts` are kept.
  std::vector<uint8_t> joined;
  size_t skip_before = 0;
  if (!parameters_from.empty()) {
    joined.reserve(parameters_from.size() + ts.size());
    joined.insert(joined.end(), parameters_from.begin(), parameters_from.end());
    joined.insert(joined.end(), ts.begin(), ts.end());
    skip_before = parameters_from.size();
    ts = joined;
  }
  // The whole segment may be read to find every stream's parameters.
  KHLS_ASSIGN_OR_RETURN(std::unique_ptr<MemoryTsInput> input,
                        MemoryTsInput::Open(ts, 0, what, std::max<int64_t>(static_cast<int64_t>(ts.size()), 32)));
  AVFormatContext* in = input->get();
  in->max_analyze_duration = 60 * AV_TIME_BASE;
  int err = avformat_find_stream_info(in, nullptr);
  if (err < 0) return fail("find stream info", err);

  std::vector<int> map(in->nb_streams, -1);
  std::vector<const AVStream*> inputs;
  for (unsigned i = 0; i < in->nb_streams; ++i) {
    const AVCodecParameters* par = in->streams[i]->codecpar;
    if ((par->codec_type != AVMEDIA_TYPE_VIDEO && par->codec_type != AVMEDIA_TYPE_AUDIO) ||
        par->codec_id == AV_CODEC_ID_NONE)
      continue;
    map[i] = static_cast<int>(inputs.size());
    inputs.push_back(in->streams[i]);
  }
  if (inputs.empty())
    return Error(ErrorCode::kInvalidInput, "{}: the MPEG-TS segment has no audio or video stream", what);

  std::vector<std::vector<PacketPtr>> packets(inputs.size());
  // Where each kept packet came from in the input, while `parameters_from` is being dropped.
  std::vector<std::vector<int64_t>> positions(inputs.size());
  for (PacketPtr pkt(av_packet_alloc());;) {
    if (!pkt) return Error(ErrorCode::kInternal, "{}: out of memory", what);
    err = av_read_frame(in, pkt.get());
    if (err == AVERROR_EOF) break;
    if (err < 0) return fail("read", err);
    const int s = static_cast<unsigned>(pkt->stream_index) < map.size() ? map[pkt->stream_index] : -1;
    if (s < 0 || pkt->dts == AV_NOPTS_VALUE || pkt->size == 0) {
      av_packet_unref(pkt.get());
      continue;
    }
    av_packet_rescale_ts(pkt.get(), in->streams[pkt->stream_index]->time_base, kTimeBase90k);
    if (pkt->pts == AV_NOPTS_VALUE) pkt->pts = pkt->dts;
    pkt->stream_index = s;
    if (skip_before) positions[s].push_back(pkt->pos);
    pkt->pos = -1;
    packets[s].push_back(std::move(pkt));
    pkt.reset(av_packet_alloc());
  }
  if (skip_before) {
    // A stream's samples of `ts` start with its first PES there (a parser's later
    // frames of a PES may not carry its position; decode times tell them apart).
    for (size_t s = 0; s < packets.size(); ++s) {
      std::vector<PacketPtr>& list = packets[s];
      size_t first = 0;
      while (first < list.size() && positions[s][first] < static_cast<int64_t>(skip_before)) ++first;
      const int64_t from = first < list.size() ? list[first]->dts : INT64_MAX;
      list.erase(std::remove_if(list.begin(), list.end(), [&](const PacketPtr& p) { return p->dts < from; }),
                 list.end());
    }
  }

  // ADTS headers to drop from each AAC frame, and the AudioSpecificConfig they stand for.
  std::vector<std::optional<Adts>> adts(inputs.size());
  for (size_t s = 0; s < inputs.size(); ++s) {
    if (inputs[s]->codecpar->codec_id != AV_CODEC_ID_AAC || packets[s].empty()) continue;
    const AVPacket& first = *packets[s].front();
    if (first.size < 2 || first.data[0] != 0xff || (first.data[1] & 0xf0) != 0xf0) continue;  // raw AAC (LATM is not)
    adts[s] = ParseAdts(first.data, static_cast<size_t>(first.size));
    if (!adts[s])
      return Error(ErrorCode::kInvalidInput,
                   "{}: AAC in ADTS with a program config element or several raw data blocks per frame cannot be "
                   "written to fMP4",
                   what);
  }
  // Every sample gets its real duration: a video sample lasts until the next
  // one's decode time, the last one until the segment's end.
  for (size_t s = 0; s < packets.size(); ++s) {
    std::vector<PacketPtr>& list = packets[s];
    if (inputs[s]->codecpar->codec_type != AVMEDIA_TYPE_VIDEO || list.empty()) continue;
    const int64_t first_dts = list.front()->dts;
    for (size_t i = 0; i + 1 < list.size(); ++i) list[i]->duration = list[i + 1]->dts - list[i]->dts;
    AVPacket* p = list.back().get();
    int64_t d = list.size() > 1 ? p->dts - list[list.size() - 2]->dts : p->duration;
    const int64_t to_end = first_dts + static_cast<int64_t>(duration) - p->dts;
    if (duration > 0 && to_end > 0 && (d <= 0 || to_end <= 4 * d)) d = to_end;
    p->duration = std::max<int64_t>(d, 1);
  }
  for (size_t s = 0; s < packets.size(); ++s) {
    if (!adts[s]) continue;
    for (size_t i = 0; i < packets[s].size(); ++i) {
      AVPacket* p = packets[s][i].get();
      const std::optional<Adts> h = ParseAdts(p->data, static_cast<size_t>(p->size));
      if (!h || h->header >= static_cast<size_t>(p->size))
        return Error(ErrorCode::kInvalidInput, "{}: AAC frame {} has no valid ADTS header", what, i);
      p->data += h->header;
      p->size -= static_cast<int>(h->header);
    }
  }

  // The MP4 muxer runs twice: once with each track's first sample only (and no
  // duration), for an init segment that does not depend on the segment's
  // content, then with every sample, for the fragment.
  auto mux = [&](bool init_only) -> Result<std::vector<uint8_t>> {
    MemoryWriter writer;
    AvioContextPtr out_pb = MakeWriteAvio(&writer);
    if (!out_pb) return Error(ErrorCode::kInternal, "{}: out of memory", what);
    AVFormatContext* raw_out = nullptr;
    int e = avformat_alloc_output_context2(&raw_out, nullptr, "mp4", nullptr);
    if (e < 0) return fail("create muxer", e);
    OutputContextPtr out(raw_out);
    out->pb = out_pb.get();
    out->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_BITEXACT;
    for (size_t s = 0; s < inputs.size(); ++s) {
      const AVStream* ist = inputs[s];
      AVStream* ost = avformat_new_stream(out.get(), nullptr);
      if (ost == nullptr) return Error(ErrorCode::kInternal, "{}: out of memory", what);
      e = avcodec_parameters_copy(ost->codecpar, ist->codecpar);
      if (e < 0) return fail("copy codec parameters", e);
      AVCodecParameters* par = ost->codecpar;
      par->codec_tag = par->codec_id == AV_CODEC_ID_HEVC ? MKTAG('h', 'v', 'c', '1') : 0;
      par->bit_rate = 0;  // libavformat's estimate from this segment alone: not part of the init
      ost->time_base = kTimeBase90k;
      if (const AVDictionaryEntry* lang = av_dict_get(ist->metadata, "language", nullptr, 0))
        av_dict_set(&ost->metadata, "language", lang->value, 0);
      if (adts[s]) {
        av_freep(&par->extradata);
        par->extradata = static_cast<uint8_t*>(av_mallocz(2 + AV_INPUT_BUFFER_PADDING_SIZE));
        if (par->extradata == nullptr) return Error(ErrorCode::kInternal, "{}: out of memory", what);
        std::memcpy(par->extradata, adts[s]->asc, 2);
        par->extradata_size = 2;
      }
    }
    Dictionary opts;
    // frag_custom: one fragment, written when we flush; delay_moov: the moov is
    // written with the fragment, once every track's configuration is known (AC-3
    // and E-AC-3 take theirs from the first frame); frag_discont without an edit
    // list: the fragment keeps the segment's own decode times.
    opts.Set("movflags", "+frag_custom+delay_moov+default_base_moof+frag_discont+skip_trailer");
    opts.Set("use_editlist", "0");
    opts.Set("avoid_negative_ts", "disabled");
    e = avformat_write_header(out.get(), opts.out());
    if (e < 0) return fail("write header", e);
    for (size_t s = 0; s < packets.size(); ++s) {
      for (const PacketPtr& src : packets[s]) {
        PacketPtr p(av_packet_clone(src.get()));
        if (!p) return Error(ErrorCode::kInternal, "{}: out of memory", what);
        if (init_only) p->duration = 0;
        av_packet_rescale_ts(p.get(), kTimeBase90k, out->streams[s]->time_base);
        e = av_write_frame(out.get(), p.get());
        if (e < 0) return fail("write sample", e);
        if (init_only) break;
      }
    }
    e = av_write_frame(out.get(), nullptr);  // flush: moov (delayed), then the fragment
    if (e < 0) return fail("flush fragment", e);
    e = av_write_trailer(out.get());
    if (e < 0) return fail("write trailer", e);
    avio_flush(out_pb.get());
    return std::move(writer.out);
  };

  KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> head, mux(true));
  KHLS_ASSIGN_OR_RETURN(std::vector<uint8_t> body, mux(false));
  CmafSegment seg;
  KHLS_ASSIGN_OR_RETURN(std::vector<Box> head_boxes, TopLevelBoxes(head, what));
  for (const Box& b : head_boxes)
    if (b.type == "ftyp" || b.type == "moov") seg.init.insert(seg.init.end(), head.begin() + b.offset, head.begin() + b.offset + b.size);
  KHLS_ASSIGN_OR_RETURN(std::vector<Box> boxes, TopLevelBoxes(body, what));
  for (const Box& b : boxes) {
    if (b.type != "moof" && b.type != "mdat") continue;
    const size_t at = seg.media.size();
    seg.media.insert(seg.media.end(), body.begin() + b.offset, body.begin() + b.offset + b.size);
    if (b.type == "moof") SetSequence(seg.media, Box{b.type, at, b.size}, sequence);
  }
  if (seg.init.empty() || seg.media.empty())
    return Error(ErrorCode::kInvalidInput, "{}: the MPEG-TS segment holds no samples", what);
  return seg;
}

}  // namespace khls::segmenter
