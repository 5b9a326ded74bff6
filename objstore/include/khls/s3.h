// An S3 client for writing and reading HLS trees in object storage
// (s3://BUCKET/PREFIX): libcurl with its own AWS SigV4 signing, path-style URLs
// (what S3Proxy, MinIO and AWS all accept), bounded retries with backoff.
//
// Configuration comes from the standard environment (S3Config::FromEnvironment)
// or explicitly. Every request carries x-amz-content-sha256 (the payload's
// SHA-256, signed) and every upload a Content-MD5 too, so a body corrupted on
// the way is refused by the server (BadDigest / XAmzContentSHA256Mismatch)
// instead of stored.
//
// Errors are Status values whose message names the operation, bucket/key, HTTP
// status and the S3 error code and message, e.g.
//   "s3 PUT media/movie/v1/seg-000001.ts: HTTP 403 SignatureDoesNotMatch: The request
//    signature we calculated does not match the signature you provided. (request id 4F2A...)"
// Codes: kInvalidArgument (bad URL, bucket name, key, range or configuration),
// kResourceLimit (an object above a configured bound), kIo (everything the
// server or the network refused). A missing object is not an error: Get and
// Head return an empty optional for it.
//
// Thread-safety: an S3Client is not thread-safe; use one client per thread
// (each keeps its own connection alive). Clients may be created on any thread.
// The first S3Client::Create initializes libcurl for the process
// (curl_global_init, once); nothing else in kafka-hls uses libcurl.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "khls/status.h"

namespace khls::s3 {

// --- names -----------------------------------------------------------------------

/// A parsed `s3://BUCKET/PREFIX`.
struct S3Url {
  std::string bucket;
  std::string prefix;  ///< "" or "a/b": no leading or trailing '/'

  /// The key of `relative` under the prefix: "prefix/relative", or `relative`
  /// when the prefix is empty. `relative` is not checked (ValidateKey is, by
  /// every operation).
  std::string Key(std::string_view relative) const;
  /// "s3://bucket/prefix" ("s3://bucket" without a prefix).
  std::string ToString() const;
};

/// Parses `s3://BUCKET[/PREFIX][/]` (scheme case-insensitive). The bucket must
/// be a valid S3 bucket name (ValidateBucketName) and the prefix, if any, a
/// valid key (ValidateKey); trailing slashes are dropped. Anything else is
/// kInvalidArgument naming the problem.
Result<S3Url> ParseS3Url(std::string_view url);

/// S3's bucket naming rules: 3-63 characters of a-z 0-9 . -, starting and ending
/// with a letter or digit, no "..", ".-" or "-.", not an IPv4 address, not the
/// reserved prefixes/suffixes (xn--, sthree-, -s3alias, --ol-s3).
Status ValidateBucketName(std::string_view bucket);

/// Keys this client reads and writes: 1-1024 bytes of valid UTF-8 without
/// control characters, made of '/'-separated segments none of which is empty,
/// "." or ".." (stricter than S3 on purpose: such keys are rewritten by URL
/// normalization in clients and proxies, and do not map onto filesystem
/// backends). Any other character is allowed and percent-encoded on the wire.
Status ValidateKey(std::string_view key);

/// RFC 3986 percent-encoding as SigV4 wants it: A-Z a-z 0-9 - . _ ~ stay, every
/// other byte becomes %XX (upper-case hex); '/' stays when `keep_slash`.
std::string UriEncode(std::string_view s, bool keep_slash);

// --- configuration ---------------------------------------------------------------

struct S3Config {
  /// scheme://host[:port] of the S3 API, e.g. "http://127.0.0.1:9300" or
  /// "https://s3.eu-west-1.amazonaws.com"; no path. Buckets are addressed
  /// path-style: ENDPOINT/BUCKET/KEY.
  std::string endpoint;
  std::string region = "us-east-1";  ///< the SigV4 signing region
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  ///< optional (temporary credentials): sent as x-amz-security-token

  std::chrono::milliseconds connect_timeout{5000};
  /// Bound on one attempt of one request, transfer included (0 = none).
  std::chrono::milliseconds request_timeout{std::chrono::minutes(10)};
  /// An attempt whose transfer stays below 1 KiB/s this long is aborted (and retried).
  std::chrono::seconds stall_timeout{30};

  /// Attempts per request (>= 1). A request is tried again, after a backoff,
  /// on a transport error (connect/send/receive failure, timeout), HTTP 5xx,
  /// 429, or S3's RequestTimeout / SlowDown; never on other 4xx. Every
  /// operation here is idempotent (a PUT writes the whole object), so all are
  /// retried.
  int max_attempts = 4;
  /// Backoff before attempt n+1: a random delay in [0, min(max, initial * 2^(n-1))]
  /// ("full jitter").
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};

  /// Get refuses objects (or ranges) larger than this: kResourceLimit.
  uint64_t max_object_bytes = uint64_t{1} << 30;
  /// Verify the server's TLS certificate (https endpoints).
  bool verify_tls = true;

  /// From the standard AWS variables: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
  /// (default https://s3.REGION.amazonaws.com), AWS_REGION or AWS_DEFAULT_REGION
  /// (default us-east-1), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
  /// (required), AWS_SESSION_TOKEN (optional). kInvalidArgument names a
  /// missing variable.
  static Result<S3Config> FromEnvironment();
};

// --- operations' values ----------------------------------------------------------

struct PutOptions {
  std::string content_type = "application/octet-stream";
  std::string cache_control;  ///< empty: no Cache-Control stored
};

struct PutResult {
  std::string etag;  ///< without the surrounding quotes (single-part: the hex MD5 on most servers)
};

/// What HEAD (or a GET) says about an object.
struct ObjectInfo {
  uint64_t size = 0;  ///< of the whole object, also for a ranged Get
  std::string content_type;
  std::string cache_control;
  std::string etag;           ///< without quotes
  std::string last_modified;  ///< as sent (RFC 7231 date)
};

/// Bytes [offset, offset + length) of an object; no length = to its end.
struct ByteRange {
  uint64_t offset = 0;
  std::optional<uint64_t> length;  ///< >= 1 when set
};

struct Object {
  std::string data;
  uint64_t offset = 0;  ///< where `data` starts in the object (0 unless ranged)
  ObjectInfo info;
};

struct ListEntry {
  std::string key;
  uint64_t size = 0;
  std::string etag;  ///< without quotes
  std::string last_modified;
};

struct ListOptions {
  /// max-keys of each ListObjectsV2 page (1..1000; servers may send fewer).
  int page_size = 1000;
};

// --- the client --------------------------------------------------------------------

/// Not thread-safe: one per thread (see the top of this file). Movable.
class S3Client {
 public:
  /// Checks `config` (endpoint scheme://host[:port], region, credentials,
  /// attempts) and prepares a connection handle; no request is made.
  static Result<S3Client> Create(S3Config config);
  /// Create(S3Config::FromEnvironment()).
  static Result<S3Client> FromEnvironment();

  S3Client(S3Client&&) noexcept;
  S3Client& operator=(S3Client&&) noexcept;
  ~S3Client();

  const S3Config& config() const;

  /// Stores `data` as the whole object `key` (replacing any), with its content
  /// type and cache control. Single PUT: at most 5 GiB (kResourceLimit above).
  Result<PutResult> Put(std::string_view bucket, std::string_view key, std::string_view data,
                        const PutOptions& options = {});

  /// The object (or `range` of it); nullopt if there is no such key. A range
  /// starting at or past the end is kInvalidArgument (HTTP 416); a range
  /// running past the end is cut at the end, as HTTP does. A missing bucket is
  /// an error (NoSuchBucket), not nullopt.
  Result<std::optional<Object>> Get(std::string_view bucket, std::string_view key,
                                    std::optional<ByteRange> range = std::nullopt);

  /// The object's size, content type, cache control and ETag; nullopt if there
  /// is no such key (HEAD has no body, so a missing bucket reads as missing too).
  Result<std::optional<ObjectInfo>> Head(std::string_view bucket, std::string_view key);

  /// Calls `fn` for every key starting with `prefix` (any string, "" = all), in
  /// key order, following ListObjectsV2 pages to the end. Stops at the first
  /// error, from the server or from `fn`, and returns it.
  Status ListEach(std::string_view bucket, std::string_view prefix,
                  const std::function<Status(const ListEntry&)>& fn, const ListOptions& options = {});
  /// Every key starting with `prefix`, in key order.
  Result<std::vector<ListEntry>> List(std::string_view bucket, std::string_view prefix,
                                      const ListOptions& options = {});

  /// Removes `key`; removing a missing key succeeds (S3 semantics).
  Status Delete(std::string_view bucket, std::string_view key);

  /// Creates `bucket` in the configured region unless it exists and is ours
  /// (for tests and first-time setup). A bucket owned by someone else is an
  /// error (403 / BucketAlreadyExists).
  Status CreateBucketIfMissing(std::string_view bucket);

 private:
  struct Impl;
  explicit S3Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace khls::s3
