// Logging to stderr and progress lines for long jobs.
//
// Logs are single lines "kafka-hls <level>: message". Progress is a live,
// rewritten line on a terminal and a plain line every few seconds otherwise
// (so CI logs and files stay readable).
#pragma once

#include <chrono>
#include <string>

#include <fmt/format.h>

namespace khls::log {

enum class Level { kDebug = 0, kInfo, kWarn, kError };

/// Messages below this level are dropped (default kInfo; KHLS_LOG=debug lowers it).
void SetLevel(Level level);
Level GetLevel();
void Write(Level level, const std::string& message);

template <typename... Args>
void Debug(fmt::format_string<Args...> f, Args&&... args) {
  if (GetLevel() <= Level::kDebug) Write(Level::kDebug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Info(fmt::format_string<Args...> f, Args&&... args) {
  if (GetLevel() <= Level::kInfo) Write(Level::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Warn(fmt::format_string<Args...> f, Args&&... args) {
  Write(Level::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Error(fmt::format_string<Args...> f, Args&&... args) {
  Write(Level::kError, fmt::format(f, std::forward<Args>(args)...));
}

/// Rate-limited progress output for one job.
class ProgressLine {
 public:
  /// `interval` applies to non-terminal output; a terminal is refreshed every 200 ms.
  explicit ProgressLine(std::chrono::milliseconds interval = std::chrono::seconds(5));
  ~ProgressLine();
  /// Shows `text` if enough time has passed since the last line (or `force`).
  void Update(const std::string& text, bool force = false);
  /// True when Update would show a line now (to skip building its text otherwise).
  bool Due() const;
  /// Ends a live terminal line so following logs start on a fresh line.
  void Finish();

 private:
  bool tty_;
  bool open_line_ = false;
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace khls::log
