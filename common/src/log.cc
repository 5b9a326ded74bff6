#include "khls/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace khls::log {
namespace {

std::atomic<Level> g_level{[] {
  const char* env = std::getenv("KHLS_LOG");
  if (env && std::strcmp(env, "debug") == 0) return Level::kDebug;
  if (env && std::strcmp(env, "warn") == 0) return Level::kWarn;
  return Level::kInfo;
}()};
std::mutex g_mutex;
bool g_line_open = false;  // a live progress line is on the terminal

const char* Name(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warning";
    case Level::kError: return "error";
  }
  return "?";
}

}  // namespace

void SetLevel(Level level) { g_level = level; }
Level GetLevel() { return g_level; }

void Write(Level level, const std::string& message) {
  if (level < g_level) return;
  std::lock_guard lock(g_mutex);
  if (g_line_open) {
    std::fputs("\n", stderr);
    g_line_open = false;
  }
  std::fprintf(stderr, "kafka-hls %s: %s\n", Name(level), message.c_str());
}

ProgressLine::ProgressLine(std::chrono::milliseconds interval)
    : tty_(isatty(STDERR_FILENO) == 1), interval_(interval) {}

ProgressLine::~ProgressLine() { Finish(); }

bool ProgressLine::Due() const {
  auto wait = tty_ ? std::chrono::milliseconds(200) : interval_;
  return last_.time_since_epoch().count() == 0 || std::chrono::steady_clock::now() - last_ >= wait;
}

void ProgressLine::Update(const std::string& text, bool force) {
  if (!force && !Due()) return;
  auto now = std::chrono::steady_clock::now();
  last_ = now;
  std::lock_guard lock(g_mutex);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    open_line_ = g_line_open = true;
  } else {
    std::fprintf(stderr, "kafka-hls progress: %s\n", text.c_str());
  }
}

void ProgressLine::Finish() {
  std::lock_guard lock(g_mutex);
  if (open_line_ && g_line_open) std::fputs("\n", stderr);
  open_line_ = g_line_open = false;
}

}  // namespace khls::log
