#include "read_watchdog.h"

namespace khls::segmenter::internal {
namespace {

// libavformat asks again at least every 100 ms while a protocol waits for data:
// a longer gap between two checks was spent blocked where it cannot ask (the
// open(2) of a FIFO until its writer comes, a name lookup), not in a wait the
// timeout can end, and is not counted.
constexpr std::chrono::seconds kUnobserved{1};

}  // namespace

ReadWatchdog::ReadWatchdog(double stall_timeout, const std::atomic<bool>* stop)
    : stall_timeout_(stall_timeout),
      timeout_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(stall_timeout > 0 ? stall_timeout : 0))),
      stop_(stop),
      last_check_(Clock::now()),
      deadline_(last_check_ + timeout_) {}

void ReadWatchdog::Attach(AVFormatContext* ic) {
  ic_ = ic;
  ic->interrupt_callback.callback = &ReadWatchdog::Interrupt;
  ic->interrupt_callback.opaque = this;
}

ReadWatchdog* ReadWatchdog::Of(const AVFormatContext& ic) {
  return ic.interrupt_callback.callback == &ReadWatchdog::Interrupt ? static_cast<ReadWatchdog*>(ic.interrupt_callback.opaque)
                                                                    : nullptr;
}

void ReadWatchdog::Arm() {
  if (!live_ || stall_timeout_ <= 0) return;
  last_check_ = Clock::now();
  deadline_ = last_check_ + timeout_;
}

int ReadWatchdog::Interrupt(void* opaque) { return static_cast<ReadWatchdog*>(opaque)->Check(); }

int ReadWatchdog::Check() {
  if (stop_ != nullptr && stop_->load(std::memory_order_relaxed)) {
    stopped_ = true;
    return 1;
  }
  if (stalled_) return 1;
  if (!live_ || stall_timeout_ <= 0) return 0;
  // The AVIOContext's position moves whenever the protocol delivers bytes (it
  // is null while the protocol itself is being opened).
  const int64_t pos = ic_ == nullptr ? last_pos_ : ic_->pb != nullptr ? ic_->pb->pos : 0;
  const Clock::time_point now = Clock::now();
  if (now - last_check_ > kUnobserved) deadline_ += now - last_check_;
  last_check_ = now;
  if (pos != last_pos_) {
    last_pos_ = pos;
    data_seen_ = true;
    deadline_ = now + timeout_;
    return 0;
  }
  if (now < deadline_) return 0;
  stalled_ = true;
  return 1;
}

void InputContextDeleter::operator()(AVFormatContext* ctx) const {
  if (watchdog) watchdog->Detach();
  avformat_close_input(&ctx);
}

}  // namespace khls::segmenter::internal
