#include "khls/proto.h"

namespace khls::proto {
namespace {

bool IsWhole(const SegmentChunk& c) { return c.part == 0 && c.independent && c.last_part; }

}  // namespace

void Reassembler::Erase(std::map<std::string, Pending>::iterator it) {
  buffered_ -= it->second.segment_size;
  pending_.erase(it);
}

void Reassembler::Drop(const std::string& title) {
  if (auto it = pending_.find(title); it != pending_.end()) Erase(it);
}

void Reassembler::Clear() {
  pending_.clear();
  buffered_ = 0;
}

std::vector<std::string> Reassembler::InFlight() const {
  std::vector<std::string> titles;
  titles.reserve(pending_.size());
  for (const auto& [title, p] : pending_) titles.push_back(title);
  return titles;
}

Result<std::optional<AssembledSegment>> Reassembler::Add(const SegmentChunk& c) {
  auto where = [&] {
    return fmt::format("title '{}' rendition {} segment {}{} chunk {}/{}", c.title, c.rendition, c.sequence,
                       IsWhole(c) ? "" : fmt::format(" part {}", c.part), c.chunk_index, c.chunk_count);
  };
  auto it = pending_.find(c.title);

  if (c.chunk_index == 0) {
    // A new segment; an unfinished one for this title is abandoned (its
    // transaction was aborted, or its producer died).
    if (it != pending_.end()) Erase(it);
    if (c.segment_size > limits_.max_segment_bytes)
      return Error(ErrorCode::kResourceLimit, "{}: segment of {} bytes exceeds the limit of {} bytes", where(),
                   c.segment_size, limits_.max_segment_bytes);
    if (buffered_ + c.segment_size > limits_.max_buffered_bytes)
      return Error(ErrorCode::kResourceLimit,
                   "{}: buffering {} more bytes would exceed the reassembly bound of {} bytes ({} in use)", where(),
                   c.segment_size, limits_.max_buffered_bytes, buffered_);
    // Chunks are at least payload-sized; a segment cannot need more chunks than bytes (plus one for empty).
    if (c.chunk_count > c.segment_size + 1)
      return Error(ErrorCode::kMalformedRecord, "{}: {} chunks for a segment of {} bytes", where(), c.chunk_count,
                   c.segment_size);
    Pending p;
    p.run_id = c.run_id;
    p.rendition = c.rendition;
    p.sequence = c.sequence;
    p.part = c.part;
    p.independent = c.independent;
    p.last_part = c.last_part;
    p.chunk_count = c.chunk_count;
    p.segment_size = c.segment_size;
    p.start_pts = c.start_pts;
    p.duration = c.duration;
    p.digest = c.segment_digest;
    p.data.reserve(c.segment_size);
    it = pending_.emplace(c.title, std::move(p)).first;
    buffered_ += c.segment_size;
  } else {
    if (it == pending_.end())
      return Error(ErrorCode::kMalformedRecord, "{}: no segment in flight for this chunk (its first chunk is missing)",
                   where());
    const Pending& p = it->second;
    if (p.run_id != c.run_id || p.rendition != c.rendition || p.sequence != c.sequence || p.part != c.part ||
        p.independent != c.independent || p.last_part != c.last_part || p.next_index != c.chunk_index ||
        p.chunk_count != c.chunk_count || p.segment_size != c.segment_size || p.digest != c.segment_digest ||
        p.start_pts != c.start_pts || p.duration != c.duration) {
      const bool whole = p.part == 0 && p.independent && p.last_part;
      std::string expected = fmt::format("rendition {} segment {}{} chunk {}/{}", p.rendition, p.sequence,
                                         whole ? "" : fmt::format(" part {}", p.part), p.next_index, p.chunk_count);
      Erase(it);
      return Error(ErrorCode::kMalformedRecord, "{}: does not continue the segment in flight (expected {})", where(),
                   expected);
    }
  }

  Pending& p = it->second;
  if (p.data.size() + c.payload.size() > p.segment_size) {
    Erase(it);
    return Error(ErrorCode::kMalformedRecord, "{}: chunks carry more bytes than the declared segment size", where());
  }
  p.digester.Append(p.data, c.payload);
  ++p.next_index;
  if (p.next_index < p.chunk_count) return std::optional<AssembledSegment>{};

  if (p.data.size() != p.segment_size) {
    auto got = p.data.size();
    Erase(it);
    return Error(ErrorCode::kMalformedRecord, "{}: segment has {} bytes, {} declared", where(), got,
                 c.segment_size);
  }
  if (p.digester.Final() != p.digest) {
    Erase(it);
    return Error(ErrorCode::kMalformedRecord, "{}: segment digest mismatch (corrupted or forged data)", where());
  }
  AssembledSegment seg;
  seg.title = c.title;
  seg.run_id = p.run_id;
  seg.rendition = p.rendition;
  seg.sequence = p.sequence;
  seg.part = p.part;
  seg.independent = p.independent;
  seg.last_part = p.last_part;
  seg.start_pts = p.start_pts;
  seg.duration = p.duration;
  seg.digest = p.digest;
  seg.data = std::move(p.data);
  Erase(it);
  return std::optional<AssembledSegment>(std::move(seg));
}

}  // namespace khls::proto
