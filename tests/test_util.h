// Helpers shared by the tests: temp dirs, running commands, digests of trees.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <xxhash.h>

namespace khls::test {

/// A fresh directory removed at scope exit (kept when KHLS_KEEP_TEST_DIRS is set).
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "khls-test-XXXXXX").string();
    char* made = mkdtemp(tmpl.data());
    path_ = made ? made : tmpl;
  }
  ~TempDir() {
    if (!std::getenv("KHLS_KEEP_TEST_DIRS")) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  ///< stdout and stderr interleaved
};

/// Runs `cmd` with /bin/sh, capturing its stdout (stderr goes to the test log).
inline CommandResult RunStdout(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

/// Runs `cmd` with /bin/sh, capturing stdout and stderr interleaved.
inline CommandResult Run(const std::string& cmd) { return RunStdout(cmd + " 2>&1"); }

inline std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// Relative path -> XXH64 of the content, for every regular file under `root`
/// (hidden files included), as one comparable string.
inline std::string TreeDigest(const std::filesystem::path& root) {
  std::map<std::string, uint64_t> files;
  for (auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    std::string data = ReadFile(e.path());
    files[std::filesystem::relative(e.path(), root).string()] = XXH64(data.data(), data.size(), 0);
  }
  std::string out;
  for (auto& [k, v] : files) out += k + " " + std::to_string(v) + "\n";
  return out;
}

/// The URI lines of a playlist (every line that is not empty and not a tag), in order.
inline std::vector<std::string> PlaylistUris(const std::string& playlist) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < playlist.size()) {
    size_t end = playlist.find('\n', pos);
    if (end == std::string::npos) end = playlist.size();
    std::string line = playlist.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty() && line[0] != '#') out.push_back(std::move(line));
    pos = end + 1;
  }
  return out;
}

/// Single-quotes `s` for /bin/sh.
inline std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

}  // namespace khls::test
