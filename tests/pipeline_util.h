// Helpers for tests that run the kafka-hls binary against the real broker.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "test_util.h"

extern char** environ;

namespace khls::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// KHLS_BIN overrides the binary under test (e.g. a sanitizer build).
inline const std::string kBin = std::getenv("KHLS_BIN") ? std::getenv("KHLS_BIN") : KHLS_BINARY;
inline const fs::path kMedia = KHLS_TEST_MEDIA_DIR;
inline const fs::path kSource = KHLS_SOURCE_DIR;

inline std::string Brokers() {
  const char* b = std::getenv("KHLS_BROKERS");
  return b ? b : "127.0.0.1:9092";
}

/// A fresh name, so tests never share topics or groups.
inline std::string Unique(const std::string& prefix) {
  static std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{}-{:x}", prefix, rng() & 0xffffffffff);
}

/// Kafka must be up: these tests fail (never skip) without it.
inline void RequireBroker() {
  auto r = Run("kcat -b " + Brokers() + " -L -m 5 >/dev/null");
  REQUIRE_MESSAGE(r.exit_code == 0, "no Kafka broker at " << Brokers()
                                                          << " (start it with scripts/kafka.sh start): " << r.output);
}

// A child process (argv, no shell) whose output goes to a log file.
class Child {
 public:
  Child(const std::vector<std::string>& args, const fs::path& log) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    REQUIRE(posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  void Kill(int sig = SIGKILL) { ::kill(pid_, sig); }
  /// Exit code (128+signal when killed).
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  /// Exit code if it has ended, else -1.
  int Poll() {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return -1;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

/// A UDP port nobody listens on now (bound once to port 0, then released; usually free for TCP too).
inline int FreeUdpPort() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

inline std::vector<std::string> IngestArgs(const fs::path& input, const std::string& title, const std::string& topic,
                                    std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {kBin, "ingest", input.string(), "--title", title, "--brokers", Brokers(), "--topic", topic};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

inline std::vector<std::string> PackageArgs(const fs::path& out, const std::string& topic, const std::string& group,
                                     const std::vector<std::string>& titles) {
  std::vector<std::string> a = {kBin, "package", "--out", out.string(), "--brokers", Brokers(), "--topic", topic,
                                "--group", group};
  for (const auto& t : titles) {
    a.push_back("--until-complete");
    a.push_back(t);
  }
  return a;
}

/// Where scripts/setup.sh put the npm modules the player harnesses need (KHLS_NODE_MODULES overrides).
inline std::string NodeModules() {
  if (const char* d = std::getenv("KHLS_NODE_MODULES"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/kafka-hls/node/node_modules";
}

/// The URL a kafka-hls process announced in its log ("... at http://127.0.0.1:PORT/"), or the first
/// group of `pattern` where it first matches the log; "" at the timeout.
inline std::string WaitForUrl(const fs::path& log, std::chrono::seconds timeout = 30s,
                              const char* pattern = R"((http://127\.0\.0\.1:\d+/))") {
  const std::regex url(pattern);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    const std::string text = ReadFile(log);
    if (std::regex_search(text, m, url)) return m[1];
    std::this_thread::sleep_for(50ms);
  }
  return "";
}

inline int RunToEnd(const std::vector<std::string>& args, const fs::path& log, std::chrono::seconds timeout = 180s) {
  Child c(args, log);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int rc = c.Poll();
    if (rc >= 0) return rc;
    std::this_thread::sleep_for(20ms);
  }
  c.Kill();
  return c.Wait();
}

}  // namespace khls::test
