// Interrupts the reads of one input: all of them once the process is asked to
// stop, and, for a live input, one that has waited for data longer than the
// stall timeout.
//
// libavformat asks the context's interrupt callback before every protocol read,
// and again while a read waits for data (network protocols every 100 ms, a
// non-blocking pipe every millisecond): a deadline checked there bounds how long
// a read can block. The deadline counts only time spent waiting inside reads
// (Arm() starts it when a read begins, every byte that arrives moves it on, and
// time blocked out of libavformat's reach is not counted), so a reader held up
// downstream (Kafka slower than the feed) is never taken for a stalled feed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "av_handles.h"

namespace khls::segmenter::internal {

class ReadWatchdog {
 public:
  /// `stall_timeout` in seconds (<= 0: reads may wait forever); `stop` (may be
  /// null) interrupts every read once true.
  ReadWatchdog(double stall_timeout, const std::atomic<bool>* stop);
  ReadWatchdog(const ReadWatchdog&) = delete;
  ReadWatchdog& operator=(const ReadWatchdog&) = delete;

  /// Installs the interrupt callback on `ic`, before avformat_open_input (so the
  /// probing is covered too). The watchdog must outlive the context.
  void Attach(AVFormatContext* ic);
  /// The context is about to be closed: from now on no byte can be seen arriving
  /// (avformat_close_input frees the context before it closes the protocol, whose
  /// goodbye, e.g. RTMP's, still runs this callback).
  void Detach() { ic_ = nullptr; }
  /// The watchdog attached to `ic`; null for a context opened without one.
  static ReadWatchdog* Of(const AVFormatContext& ic);

  /// A read begins: it may wait for data until the stall timeout from now.
  void Arm();
  /// Stalls count only for live inputs; an input is taken for live until it is
  /// opened and known to be a seekable file (whose reads then wait as long as they take).
  void set_live(bool live) { live_ = live; }
  bool live() const { return live_; }

  /// A read was interrupted because `stop` was set.
  bool stopped() const { return stopped_; }
  /// A read was interrupted because no data came for the stall timeout; every
  /// later read is interrupted at once.
  bool stalled() const { return stalled_; }
  /// Some bytes of the input arrived.
  bool data_seen() const { return data_seen_; }
  double stall_timeout() const { return stall_timeout_; }

 private:
  using Clock = std::chrono::steady_clock;

  static int Interrupt(void* opaque);
  int Check();

  double stall_timeout_;
  Clock::duration timeout_;
  const std::atomic<bool>* stop_;
  const AVFormatContext* ic_ = nullptr;
  bool live_ = true;
  bool stopped_ = false;
  bool stalled_ = false;
  bool data_seen_ = false;
  int64_t last_pos_ = 0;  ///< bytes the protocol had delivered at the previous check
  Clock::time_point last_check_;
  Clock::time_point deadline_;
};

}  // namespace khls::segmenter::internal
