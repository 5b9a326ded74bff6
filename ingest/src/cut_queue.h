// Hands cut segments from the cutter thread to the publishing thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include <fmt/format.h>

#include "khls/segmenter.h"
#include "khls/status.h"

namespace khls::ingest::internal {

// A segment group cut and encoded into records (every rendition's segment,
// one after another), waiting for its transaction.
struct Cut {
  uint32_t sequence = 0;
  /// LL-HLS: which part of segment `sequence` this is, and whether it ends it
  /// (part 0 and last for a whole segment).
  uint32_t part = 0;
  bool last_part = true;
  uint64_t bytes = 0;  ///< segment bytes of all renditions
  std::vector<std::vector<uint8_t>> records;
  segmenter::Progress progress;  ///< input progress when it was cut

  /// "segment 12", or "segment 12 part 3" (for logs and errors).
  std::string Name() const {
    return part == 0 && last_part ? fmt::format("segment {}", sequence)
                                  : fmt::format("segment {} part {}", sequence, part);
  }

  uint64_t record_bytes() const {
    uint64_t n = 0;
    for (const auto& r : records) n += r.size();
    return n;
  }
};

// Hands cut segments from the cutter thread to the publishing thread, holding
// at most `max_bytes` (but always one segment, however large).
class CutQueue {
 public:
  explicit CutQueue(uint64_t max_bytes) : max_bytes_(std::max<uint64_t>(max_bytes, 1)) {}

  /// Cutter side: waits for room. False when the publisher gave up (Cancel).
  bool Push(Cut cut) {
    std::unique_lock lock(mu_);
    const uint64_t size = cut.record_bytes();
    room_.wait(lock, [&] { return cancelled_ || queue_.empty() || bytes_ + size <= max_bytes_; });
    if (cancelled_) return false;
    bytes_ += size;
    queue_.push_back(std::move(cut));
    ready_.notify_one();
    return true;
  }
  /// Cutter side: no more segments; `status` says whether the input ended well,
  /// `input_ended` whether it ended at all (else the cutter was stopped).
  void Finish(Status status, bool input_ended) {
    std::lock_guard lock(mu_);
    finished_ = true;
    input_ended_ = input_ended && status.ok();
    status_ = std::move(status);
    ready_.notify_one();
  }
  /// Publisher side: waits for at least one segment, then takes every queued one
  /// up to max_bytes. Empty when the cutter has finished (or `stop`).
  std::vector<Cut> TakeBatch(const std::atomic<bool>& stop) {
    std::unique_lock lock(mu_);
    while (queue_.empty() && !finished_ && !stop) ready_.wait_for(lock, std::chrono::milliseconds(100));
    std::vector<Cut> batch;
    if (stop) return batch;
    uint64_t taken = 0;
    while (!queue_.empty() && (batch.empty() || taken + queue_.front().record_bytes() <= max_bytes_)) {
      taken += queue_.front().record_bytes();
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    bytes_ -= taken;
    room_.notify_one();
    return batch;
  }
  /// Publisher side: the input has ended, without error (not: the cutter was
  /// stopped), and nothing is queued: the batch taken last was the title's last.
  bool Drained() {
    std::lock_guard lock(mu_);
    return input_ended_ && queue_.empty();
  }
  /// Cutter side: the record buffers of a committed segment, to encode the next one
  /// into (empty when none is spare).
  std::vector<std::vector<uint8_t>> TakeSpareRecords() {
    std::lock_guard lock(mu_);
    if (spare_.empty()) return {};
    std::vector<std::vector<uint8_t>> records = std::move(spare_.back());
    spare_.pop_back();
    return records;
  }
  /// Publisher side: a committed segment's records, given back for reuse. There are
  /// never more spares than segments that were alive at once (bounded by max_bytes).
  void GiveBackRecords(std::vector<std::vector<uint8_t>> records) {
    std::lock_guard lock(mu_);
    spare_.push_back(std::move(records));
  }
  /// Publisher side: stop the cutter (it finishes its current segment first).
  void Cancel() {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    room_.notify_all();
  }
  bool cancelled() {
    std::lock_guard lock(mu_);
    return cancelled_;
  }
  Status status() {
    std::lock_guard lock(mu_);
    return status_;
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_, room_;
  std::deque<Cut> queue_;
  std::vector<std::vector<std::vector<uint8_t>>> spare_;
  uint64_t bytes_ = 0;
  const uint64_t max_bytes_;
  bool finished_ = false;
  bool input_ended_ = false;
  bool cancelled_ = false;
  Status status_;
};

}  // namespace khls::ingest::internal
