// Error values shared by every kafka-hls module.
//
// Errors cross module boundaries as values, never as exceptions: a function
// that can fail returns Status (no value) or Result<T> (a value or a Status).
// Messages name what failed, on which input, and why, e.g.
//   "open input 'movie.mkv': Invalid data found when processing input".
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace khls {

/// Broad classes of failure; the CLI maps them to exit codes.
enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,  ///< bad flag, bad config, hostile title id
  kInvalidInput,     ///< unreadable / corrupt / unsupported media
  kMalformedRecord,  ///< a Kafka record that does not decode or validate
  kIo,               ///< filesystem failure
  kKafka,            ///< broker / delivery / transaction failure
  kResourceLimit,    ///< a configured memory or size bound would be exceeded
  kCancelled,        ///< stopped by a signal
  kInternal,
};

/// Outcome of an operation: ok, or a code and a human-readable message.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }

  /// Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const {
    if (ok()) return *this;
    return Status(code_, fmt::format("{}: {}", context, message_));
  }

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

template <typename... Args>
Status Error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

/// A value of type T, or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) { assert(!std::get<Status>(v_).ok()); }  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  /// The error; Status::Ok() when a value is held.
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace khls

#define KHLS_CONCAT_INNER(a, b) a##b
#define KHLS_CONCAT(a, b) KHLS_CONCAT_INNER(a, b)

/// Returns the Status from the enclosing function if `expr` is not ok.
#define KHLS_RETURN_IF_ERROR(expr)            \
  do {                                        \
    ::khls::Status khls_status_ = (expr);     \
    if (!khls_status_.ok()) return khls_status_; \
  } while (0)

/// `KHLS_ASSIGN_OR_RETURN(auto x, MakeX());`
#define KHLS_ASSIGN_OR_RETURN(lhs, rexpr) \
  KHLS_ASSIGN_OR_RETURN_IMPL(KHLS_CONCAT(khls_result_, __LINE__), lhs, rexpr)
#define KHLS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
