// Small POSIX helpers the output store and the key store share.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "khls/status.h"

namespace khls::packager::internal {

/// kIo "<what> '<path>': <strerror(errno)>".
inline Status Errno(std::string_view what, const std::filesystem::path& p) {
  return Error(ErrorCode::kIo, "{} '{}': {}", what, p.string(), std::strerror(errno));
}

/// fsync of a directory: makes the entries created or renamed in it durable.
inline Status SyncDir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("fsync directory", dir);
  return Status::Ok();
}

}  // namespace khls::packager::internal
