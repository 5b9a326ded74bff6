// The local S3 server of tests (S3Proxy through scripts/s3proxy.sh), shared by
// the test binaries that need one: started once per binary if it is not
// running, stopped at exit only by the binary that started it and only when no
// other test binary still uses it.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "khls/s3.h"
#include "test_util.h"

namespace khls::test {

inline std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

/// The S3Proxy of scripts/s3proxy.sh, for the whole binary. Every user holds a
/// shared lock on a file in the server's dir, so the binary that started it
/// stops it at exit only when no other test binary is still using it.
class S3ProxyServer {
 public:
  S3ProxyServer() {
    script_ = std::filesystem::path(KHLS_SOURCE_DIR) / "scripts/s3proxy.sh";
    const std::string port = Env("S3PROXY_PORT", "9300");
    const std::filesystem::path cache = Env("KHLS_CACHE", (Env("HOME", "/tmp") + "/.cache/kafka-hls").c_str());
    const std::filesystem::path dir = Env("KHLS_S3PROXY_DIR", (cache / ("s3proxy-run-" + port)).c_str());
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    lock_fd_ = ::open((dir / ".users").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ >= 0) ::flock(lock_fd_, LOCK_SH);

    if (Run("bash " + Quote(script_) + " status").exit_code != 0) {
      auto r = Run("bash " + Quote(script_) + " start");
      if (r.exit_code != 0) {
        error_ = "scripts/s3proxy.sh start failed:\n" + r.output;
        return;
      }
      started_ = true;
    }
    auto env = khls::test::RunStdout("bash " + Quote(script_) + " env");
    if (env.exit_code != 0) {
      error_ = "scripts/s3proxy.sh env failed:\n" + env.output;
      return;
    }
    std::istringstream in(env.output);
    for (std::string line; std::getline(in, line);) {
      const size_t eq = line.find('=');
      if (eq != std::string::npos) env_[line.substr(0, eq)] = line.substr(eq + 1);
    }
    for (const char* k : {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"})
      if (!env_.count(k)) error_ = fmt::format("scripts/s3proxy.sh env printed no {}:\n{}", k, env.output);
  }
  ~S3ProxyServer() {
    if (started_ && lock_fd_ >= 0 && ::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0)
      Run("bash " + Quote(script_) + " stop");
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  const std::string& error() const { return error_; }
  /// Puts the server's AWS_* variables in this process's environment (children inherit them).
  void Export() const {
    for (const auto& [k, v] : env_) ::setenv(k.c_str(), v.c_str(), 1);
  }
  const std::map<std::string, std::string>& env() const { return env_; }

  khls::s3::S3Config Config() const {
    khls::s3::S3Config c;
    c.endpoint = env_.at("AWS_ENDPOINT_URL");
    c.access_key_id = env_.at("AWS_ACCESS_KEY_ID");
    c.secret_access_key = env_.at("AWS_SECRET_ACCESS_KEY");
    c.region = env_.at("AWS_REGION");
    return c;
  }

 private:
  std::filesystem::path script_;
  std::map<std::string, std::string> env_;
  std::string error_;
  bool started_ = false;
  int lock_fd_ = -1;
};

}  // namespace khls::test
