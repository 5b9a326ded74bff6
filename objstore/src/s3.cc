#include "khls/s3.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include <fmt/ranges.h>

#include "khls/log.h"
#include "khls/utf8.h"

#if LIBCURL_VERSION_NUM < 0x074b00
#error "libcurl >= 7.75 is needed (CURLOPT_AWS_SIGV4)"
#endif

namespace khls::s3 {
namespace {

constexpr uint64_t kMaxSinglePut = uint64_t{5} << 30;  // S3's limit for one PUT
constexpr size_t kMaxErrorBody = 64 * 1024;            // error bodies kept for the message
constexpr size_t kMaxListBody = 16 * 1024 * 1024;      // one ListObjectsV2 page (1000 keys) is far smaller
// SHA-256 of the empty payload (every request without a body signs this).
constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

bool IsUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

bool HasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

/// `s` for a message: control characters and bytes that are not UTF-8 as \xNN.
std::string Printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceLength(s, i);
    const auto c = static_cast<unsigned char>(s[i]);
    if (n == 0 || (n == 1 && (c < 0x20 || c == 0x7f))) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool ParseU64(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string StripQuotes(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  return s;
}

// --- digests -------------------------------------------------------------------

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

/// Digest of `data` with `md`, or empty if OpenSSL refuses (e.g. MD5 under a FIPS provider).
std::string Digest(const EVP_MD* md, std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int n = 0;
  if (!md || EVP_Digest(data.data(), data.size(), out.data(), &n, md, nullptr) != 1) return {};
  return std::string(reinterpret_cast<const char*>(out.data()), n);
}

std::string Base64(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(raw.data()), static_cast<int>(raw.size()));
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// --- minimal XML -----------------------------------------------------------------
// S3's responses are flat, attribute-free XML (only the root carries xmlns): a
// scan for <Tag>...</Tag> and the five entities plus character references is
// enough, and nothing else in kafka-hls reads XML.

/// Decodes entities; nullopt on a malformed or unknown one.
std::optional<std::string> XmlUnescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '&') {
      out += s[i++];
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string_view::npos || semi - i > 12) return std::nullopt;
    const std::string_view ent = s.substr(i + 1, semi - i - 1);
    i = semi + 1;
    if (ent == "amp") out += '&';
    else if (ent == "lt") out += '<';
    else if (ent == "gt") out += '>';
    else if (ent == "quot") out += '"';
    else if (ent == "apos") out += '\'';
    else if (ent.size() >= 2 && ent[0] == '#') {
      uint32_t cp = 0;
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      const std::string_view digits = ent.substr(hex ? 2 : 1);
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), cp, hex ? 16 : 10);
      if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
      if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return std::nullopt;
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      }
    } else {
      return std::nullopt;
    }
  }
  return out;
}

/// The raw contents of each <tag>...</tag> in `xml`, in order (`<tag/>` gives "").
std::vector<std::string_view> XmlElements(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  const std::string open = fmt::format("<{}>", tag), empty = fmt::format("<{}/>", tag),
                    close = fmt::format("</{}>", tag);
  size_t pos = 0;
  while (pos < xml.size()) {
    const size_t a = xml.find(open, pos), e = xml.find(empty, pos);
    if (e != std::string_view::npos && (a == std::string_view::npos || e < a)) {
      out.emplace_back();
      pos = e + empty.size();
      continue;
    }
    if (a == std::string_view::npos) break;
    const size_t start = a + open.size();
    const size_t end = xml.find(close, start);
    if (end == std::string_view::npos) break;
    out.push_back(xml.substr(start, end - start));
    pos = end + close.size();
  }
  return out;
}

/// The decoded text of the first <tag> in `xml`; nullopt if absent or malformed.
std::optional<std::string> XmlText(std::string_view xml, std::string_view tag) {
  auto all = XmlElements(xml, tag);
  if (all.empty()) return std::nullopt;
  return XmlUnescape(all.front());
}

// --- libcurl plumbing ----------------------------------------------------------------

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
struct UrlDeleter {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;
using UrlPtr = std::unique_ptr<CURLU, UrlDeleter>;

Status GlobalInit() {
  static std::once_flag once;
  static CURLcode rc = CURLE_OK;
  std::call_once(once, [] { rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (rc != CURLE_OK) return Error(ErrorCode::kInternal, "s3: curl_global_init: {}", curl_easy_strerror(rc));
  return Status::Ok();
}

/// One HTTP request of an operation.
struct Request {
  std::string_view op;  ///< for messages: "PUT", "GET", "LIST", ...
  std::string target;   ///< for messages: "bucket/key"
  const char* method = "GET";
  std::string path;   ///< percent-encoded, from '/'
  std::string query;  ///< canonical (sorted, encoded), without '?'
  std::vector<std::string> headers;
  std::optional<std::string_view> body;  ///< PUT payload
  uint64_t max_body = kMaxErrorBody;     ///< a larger successful response body is kResourceLimit
};

struct Response {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  ///< names lower-case
  std::string body;
  int attempts = 0;

  const std::string* Header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return &v;
    return nullptr;
  }
  std::string HeaderOr(std::string_view name, std::string fallback = {}) const {
    const std::string* v = Header(name);
    return v ? *v : std::move(fallback);
  }
};

/// State of one attempt, shared with libcurl's callbacks.
struct Transfer {
  Response* resp = nullptr;
  uint64_t max_body = 0;
  bool too_large = false;
  bool head = false;  ///< HEAD: Content-Length is the object's, no body follows
  std::string_view upload;
  size_t upload_pos = 0;
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.starts_with("HTTP/")) {  // a new response (after 100 Continue, too): start over
    t->resp->headers.clear();
    const size_t sp = line.find(' ');
    long code = 0;
    if (sp != std::string_view::npos) std::from_chars(line.data() + sp + 1, line.data() + line.size(), code);
    t->resp->status = code;
    return size * n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  if (name == "content-length" && t->resp->status / 100 == 2 && !t->head) {
    uint64_t len = 0;
    if (ParseU64(value, len)) {
      if (len > t->max_body) {
        t->too_large = true;
        return 0;  // refused before any of the body is read (CURLE_WRITE_ERROR)
      }
      t->resp->body.reserve(len);
    }
  }
  t->resp->headers.emplace_back(std::move(name), std::string(value));
  return size * n;
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  std::string& body = t->resp->body;
  if (t->resp->status / 100 != 2) {  // an error document: keep its start, read the rest away
    if (body.size() < kMaxErrorBody) body.append(data, std::min(len, kMaxErrorBody - body.size()));
    return len;
  }
  if (body.size() + len > t->max_body) {
    t->too_large = true;
    return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
  }
  body.append(data, len);
  return len;
}

size_t OnRead(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = std::min(size * n, t->upload.size() - t->upload_pos);
  std::copy_n(t->upload.data() + t->upload_pos, len, buf);
  t->upload_pos += len;
  return len;
}

int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->upload.size())
    return CURL_SEEKFUNC_CANTSEEK;
  t->upload_pos = static_cast<size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

bool RetryableTransport(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

bool RetryableHttp(const Response& r) {
  if (r.status >= 500 || r.status == 429) return true;
  if (r.status == 400 || r.status == 503) {
    auto code = XmlText(r.body, "Code");
    return code && (*code == "RequestTimeout" || *code == "SlowDown");
  }
  return false;
}

/// S3's error code for a body-less error response (HEAD).
std::string_view StatusName(long status) {
  switch (status) {
    case 301: return "PermanentRedirect";
    case 400: return "BadRequest";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 409: return "Conflict";
    case 412: return "PreconditionFailed";
    case 416: return "InvalidRange";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 501: return "NotImplemented";
    case 503: return "ServiceUnavailable";
    default: return "Error";
  }
}

/// libcurl's error text: the code's name, then the detail of the error buffer
/// (which older versions end with the same name again).
std::string TransportError(CURLcode rc, std::string_view detail) {
  const std::string_view name = curl_easy_strerror(rc);
  if (detail.size() > name.size() + 2 && detail.ends_with(name) &&
      detail.substr(detail.size() - name.size() - 2, 2) == ": ")
    detail.remove_suffix(name.size() + 2);
  if (detail.empty() || detail == name) return std::string(name);
  return fmt::format("{}: {}", name, detail);
}

std::string Attempts(int n) { return n > 1 ? fmt::format(" after {} attempts", n) : std::string(); }

}  // namespace

// --- names -------------------------------------------------------------------------

std::string UriEncode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() + s.size() / 2);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsUnreserved(c) || (keep_slash && c == '/')) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

Status ValidateBucketName(std::string_view b) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorCode::kInvalidArgument, "invalid S3 bucket name '{}': {}", Printable(b), why);
  };
  if (b.empty()) return Error(ErrorCode::kInvalidArgument, "empty S3 bucket name");
  if (b.size() < 3 || b.size() > 63) return bad("must be 3 to 63 characters long");
  for (char c : b)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-'))
      return bad("only lower-case letters, digits, '.' and '-' are allowed");
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(b.front()) || !alnum(b.back())) return bad("must start and end with a letter or digit");
  if (b.find("..") != std::string_view::npos || b.find(".-") != std::string_view::npos ||
      b.find("-.") != std::string_view::npos)
    return bad("no '..', '.-' or '-.'");
  if (b.starts_with("xn--") || b.starts_with("sthree-") || b.ends_with("-s3alias") || b.ends_with("--ol-s3"))
    return bad("reserved prefix or suffix");
  int dots = 0;
  bool ip = true;
  for (char c : b) {
    if (c == '.') ++dots;
    else if (c < '0' || c > '9') ip = false;
  }
  if (ip && dots == 3) return bad("must not look like an IP address");
  return Status::Ok();
}

Status ValidateKey(std::string_view key) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorCode::kInvalidArgument, "invalid S3 key '{}': {}", Printable(key), why);
  };
  if (key.empty()) return Error(ErrorCode::kInvalidArgument, "empty S3 key");
  if (key.size() > 1024) return bad("longer than 1024 bytes");
  if (!IsValidUtf8(key)) return bad("not valid UTF-8");
  if (HasControl(key)) return bad("control characters");
  size_t start = 0;
  while (true) {
    const size_t slash = key.find('/', start);
    const std::string_view seg = key.substr(start, slash == std::string_view::npos ? std::string_view::npos
                                                                                    : slash - start);
    if (seg.empty()) return bad("empty path segment (leading, trailing or double '/')");
    if (seg == "." || seg == "..") return bad("'.' or '..' path segment");
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status::Ok();
}

std::string S3Url::Key(std::string_view relative) const {
  if (prefix.empty()) return std::string(relative);
  return fmt::format("{}/{}", prefix, relative);
}

std::string S3Url::ToString() const {
  return prefix.empty() ? fmt::format("s3://{}", bucket) : fmt::format("s3://{}/{}", bucket, prefix);
}

Result<S3Url> ParseS3Url(std::string_view url) {
  constexpr std::string_view kScheme = "s3://";
  std::string scheme(url.substr(0, kScheme.size()));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (scheme != kScheme)
    return Error(ErrorCode::kInvalidArgument, "'{}' is not an s3:// URL (s3://BUCKET/PREFIX)", Printable(url));
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  S3Url out;
  out.bucket = std::string(rest.substr(0, slash));
  if (out.bucket.empty())
    return Error(ErrorCode::kInvalidArgument, "'{}': no bucket (s3://BUCKET/PREFIX)", Printable(url));
  KHLS_RETURN_IF_ERROR(ValidateBucketName(out.bucket).WithContext(fmt::format("'{}'", Printable(url))));
  if (slash != std::string_view::npos) {
    std::string_view prefix = rest.substr(slash + 1);
    while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
    if (!prefix.empty()) {
      KHLS_RETURN_IF_ERROR(ValidateKey(prefix).WithContext(fmt::format("'{}': prefix", Printable(url))));
      out.prefix = std::string(prefix);
    }
  }
  return out;
}

// --- configuration -----------------------------------------------------------------

Result<S3Config> S3Config::FromEnvironment() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  S3Config c;
  if (auto r = env("AWS_REGION"); !r.empty()) c.region = r;
  else if (auto d = env("AWS_DEFAULT_REGION"); !d.empty()) c.region = d;
  c.endpoint = env("AWS_ENDPOINT_URL_S3");
  if (c.endpoint.empty()) c.endpoint = env("AWS_ENDPOINT_URL");
  if (c.endpoint.empty()) c.endpoint = fmt::format("https://s3.{}.amazonaws.com", c.region);
  c.access_key_id = env("AWS_ACCESS_KEY_ID");
  c.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
  c.session_token = env("AWS_SESSION_TOKEN");
  if (c.access_key_id.empty() || c.secret_access_key.empty())
    return Error(ErrorCode::kInvalidArgument, "S3 credentials: {} not set in the environment",
                 c.access_key_id.empty() ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY");
  return c;
}

// --- the client ----------------------------------------------------------------------

struct S3Client::Impl {
  S3Config config;
  std::string sigv4;  ///< CURLOPT_AWS_SIGV4: "aws:amz:REGION:s3"
  CurlPtr curl;
  std::minstd_rand rng{std::random_device{}()};
  std::array<char, CURL_ERROR_SIZE> errbuf{};

  std::string Url(const Request& req) const {
    return config.endpoint + req.path + (req.query.empty() ? "" : "?" + req.query);
  }

  /// One attempt; `resp` holds whatever arrived.
  CURLcode Attempt(const Request& req, const std::string& payload_sha256, Transfer& t) {
    CURL* h = curl.get();
    curl_easy_reset(h);  // keeps the connection cache
    errbuf[0] = '\0';
    const std::string url = Url(req);
    SlistPtr headers;
    auto add = [&](const std::string& line) {
      curl_slist* l = curl_slist_append(headers.get(), line.c_str());
      if (l) {
        (void)headers.release();
        headers.reset(l);
      }
      return l != nullptr;
    };
    // Signed by libcurl with everything else in CURLOPT_HTTPHEADER; S3 checks the payload against it.
    bool ok = add("x-amz-content-sha256: " + payload_sha256);
    if (!config.session_token.empty()) ok = ok && add("x-amz-security-token: " + config.session_token);
    for (const auto& line : req.headers) ok = ok && add(line);
    if (!ok) return CURLE_OUT_OF_MEMORY;

    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf.data());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);  // keys are sent exactly as encoded
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(h, CURLOPT_USERNAME, config.access_key_id.c_str());
    curl_easy_setopt(h, CURLOPT_PASSWORD, config.secret_access_key.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config.connect_timeout.count()));
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(config.request_timeout.count()));
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(config.stall_timeout.count()));
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, config.verify_tls ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, config.verify_tls ? 2L : 0L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    const std::string_view method = req.method;
    if (method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(t.upload.size()));
      curl_easy_setopt(h, CURLOPT_READFUNCTION, OnRead);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, OnSeek);
      curl_easy_setopt(h, CURLOPT_SEEKDATA, &t);
    } else if (method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method);
    }
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status) t.resp->status = status;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, nullptr);
    return rc;
  }

  std::chrono::milliseconds Backoff(int attempt) {
    const auto cap = std::min<int64_t>(config.max_backoff.count(),
                                       config.initial_backoff.count() << std::min(attempt - 1, 20));
    return std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(cap, 0))(rng));
  }

  /// Runs `req`, retrying transport errors and retryable statuses. Returns the
  /// final response, whatever its status; an error only when no response came.
  Result<Response> Perform(const Request& req) {
    std::string sha = kEmptySha256;
    if (req.body) {
      const std::string raw = Digest(EVP_sha256(), *req.body);
      if (raw.size() != 32) return Error(ErrorCode::kInternal, "s3 {} {}: SHA-256 failed", req.op, req.target);
      sha = Hex(reinterpret_cast<const unsigned char*>(raw.data()), raw.size());
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (int attempt = 1;; ++attempt) {
      Response resp;
      resp.attempts = attempt;
      Transfer t;
      t.resp = &resp;
      t.max_body = req.max_body;
      if (req.body) t.upload = *req.body;
      t.head = std::string_view(req.method) == "HEAD";
      const CURLcode rc = Attempt(req, sha, t);
      const bool last = attempt >= config.max_attempts;
      std::string why;
      if (rc == CURLE_OK) {
        if (!RetryableHttp(resp) || last) {
          log::Debug("s3 {} {}: HTTP {} ({} bytes in, {} out, {} ms, {} attempt(s))", req.op, req.target,
                     resp.status, resp.body.size(), t.upload.size(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
                         .count(),
                     attempt);
          return resp;
        }
        why = fmt::format("HTTP {} {}", resp.status,
                          XmlText(resp.body, "Code").value_or(std::string(StatusName(resp.status))));
      } else {
        if (t.too_large)
          return Error(ErrorCode::kResourceLimit, "s3 {} {}: the response is larger than the limit of {} bytes",
                       req.op, req.target, req.max_body);
        why = TransportError(rc, errbuf.data());
        if (!RetryableTransport(rc) || last)
          return Error(ErrorCode::kIo, "s3 {} {}: {} ({}){}", req.op, req.target, why, config.endpoint,
                       Attempts(attempt));
      }
      const auto delay = Backoff(attempt);
      log::Warn("s3 {} {}: {}; retrying in {} ms (attempt {} of {})", req.op, req.target, why, delay.count(),
                attempt + 1, config.max_attempts);
      std::this_thread::sleep_for(delay);
    }
  }

  /// The error for a response that is not what the operation wanted.
  Status HttpError(const Request& req, const Response& r) const {
    const std::string code = XmlText(r.body, "Code").value_or(std::string(StatusName(r.status)));
    const std::string message = XmlText(r.body, "Message").value_or("");
    const std::string id = XmlText(r.body, "RequestId").value_or(r.HeaderOr("x-amz-request-id"));
    std::string text = fmt::format("s3 {} {}: HTTP {} {}", req.op, req.target, r.status, code);
    if (!message.empty()) text += ": " + message;
    std::vector<std::string> notes;
    if (!id.empty()) notes.push_back("request id " + id);
    if (r.attempts > 1) notes.push_back(fmt::format("{} attempts", r.attempts));
    if (const std::string* region = r.Header("x-amz-bucket-region"); region && *region != config.region)
      notes.push_back(fmt::format("the bucket is in {}, requests are signed for {}", *region, config.region));
    if (!notes.empty()) text += fmt::format(" ({})", fmt::join(notes, "; "));
    return Status(r.status == 416 ? ErrorCode::kInvalidArgument : ErrorCode::kIo, std::move(text));
  }

  static Request ObjectRequest(std::string_view op, const char* method, std::string_view bucket,
                               std::string_view key) {
    Request r;
    r.op = op;
    r.method = method;
    r.target = fmt::format("{}/{}", bucket, key);
    r.path = fmt::format("/{}/{}", bucket, UriEncode(key, true));
    return r;
  }
};

S3Client::S3Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
S3Client::S3Client(S3Client&&) noexcept = default;
S3Client& S3Client::operator=(S3Client&&) noexcept = default;
S3Client::~S3Client() = default;

const S3Config& S3Client::config() const { return impl_->config; }

Result<S3Client> S3Client::FromEnvironment() {
  KHLS_ASSIGN_OR_RETURN(S3Config config, S3Config::FromEnvironment());
  return Create(std::move(config));
}

Result<S3Client> S3Client::Create(S3Config config) {
  auto bad = [](std::string what) { return Status(ErrorCode::kInvalidArgument, "S3 config: " + what); };
  // endpoint: scheme://host[:port], normalized through libcurl's own URL parser
  {
    UrlPtr u(curl_url());
    if (!u) return Error(ErrorCode::kInternal, "s3: curl_url: out of memory");
    if (curl_url_set(u.get(), CURLUPART_URL, config.endpoint.c_str(), 0) != CURLUE_OK)
      return bad(fmt::format("endpoint '{}' is not a URL (http[s]://host[:port])", config.endpoint));
    auto part = [&](CURLUPart which) -> std::optional<std::string> {
      char* v = nullptr;
      if (curl_url_get(u.get(), which, &v, 0) != CURLUE_OK || !v) return std::nullopt;
      std::string s(v);
      curl_free(v);
      return s;
    };
    auto scheme = part(CURLUPART_SCHEME), host = part(CURLUPART_HOST), port = part(CURLUPART_PORT),
         path = part(CURLUPART_PATH);
    if (!scheme || (*scheme != "http" && *scheme != "https"))
      return bad(fmt::format("endpoint '{}': the scheme must be http or https", config.endpoint));
    if (!host || host->empty()) return bad(fmt::format("endpoint '{}' has no host", config.endpoint));
    if ((path && *path != "/" && !path->empty()) || part(CURLUPART_QUERY) || part(CURLUPART_FRAGMENT) ||
        part(CURLUPART_USER))
      return bad(fmt::format("endpoint '{}' must be scheme://host[:port] only", config.endpoint));
    config.endpoint = fmt::format("{}://{}{}{}", *scheme, *host, port ? ":" : "", port ? *port : "");
  }
  if (config.region.empty() || config.region.size() > 64 ||
      !std::all_of(config.region.begin(), config.region.end(),
                   [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; }))
    return bad(fmt::format("region '{}' is not a region name (e.g. us-east-1)", config.region));
  if (config.access_key_id.empty() || config.secret_access_key.empty())
    return bad("access key id and secret access key are required");
  if (HasControl(config.access_key_id) || HasControl(config.secret_access_key) || HasControl(config.session_token))
    return bad("credentials contain control characters");
  if (config.max_attempts < 1) return bad(fmt::format("max_attempts {} (at least 1)", config.max_attempts));
  if (config.connect_timeout.count() < 0 || config.request_timeout.count() < 0 || config.stall_timeout.count() < 0 ||
      config.initial_backoff.count() < 0 || config.max_backoff.count() < 0)
    return bad("negative timeout or backoff");

  KHLS_RETURN_IF_ERROR(GlobalInit());
  auto impl = std::make_unique<Impl>();
  impl->curl.reset(curl_easy_init());
  if (!impl->curl) return Error(ErrorCode::kInternal, "s3: curl_easy_init failed");
  impl->sigv4 = fmt::format("aws:amz:{}:s3", config.region);
  impl->config = std::move(config);
  return S3Client(std::move(impl));
}

Result<PutResult> S3Client::Put(std::string_view bucket, std::string_view key, std::string_view data,
                                const PutOptions& options) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  KHLS_RETURN_IF_ERROR(ValidateKey(key));
  if (data.size() > kMaxSinglePut)
    return Error(ErrorCode::kResourceLimit, "s3 PUT {}/{}: {} bytes is above the single-PUT limit of 5 GiB", bucket,
                 key, data.size());
  if (HasControl(options.content_type) || HasControl(options.cache_control))
    return Error(ErrorCode::kInvalidArgument, "s3 PUT {}/{}: control characters in Content-Type or Cache-Control",
                 bucket, key);
  Request req = Impl::ObjectRequest("PUT", "PUT", bucket, key);
  req.body = data;
  req.headers.push_back("Content-Type: " +
                        (options.content_type.empty() ? std::string("application/octet-stream") : options.content_type));
  if (!options.cache_control.empty()) req.headers.push_back("Cache-Control: " + options.cache_control);
  if (std::string md5 = Digest(EVP_md5(), data); !md5.empty()) req.headers.push_back("Content-MD5: " + Base64(md5));
  KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(req));
  if (resp.status != 200) return impl_->HttpError(req, resp);
  return PutResult{StripQuotes(resp.HeaderOr("etag"))};
}

Result<std::optional<Object>> S3Client::Get(std::string_view bucket, std::string_view key,
                                            std::optional<ByteRange> range) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  KHLS_RETURN_IF_ERROR(ValidateKey(key));
  Request req = Impl::ObjectRequest("GET", "GET", bucket, key);
  req.max_body = impl_->config.max_object_bytes;
  if (range) {
    if (range->length) {
      if (*range->length == 0 || *range->length > UINT64_MAX - range->offset)
        return Error(ErrorCode::kInvalidArgument, "s3 GET {}: bad byte range (offset {}, length {})", req.target,
                     range->offset, *range->length);
      if (*range->length > impl_->config.max_object_bytes)
        return Error(ErrorCode::kResourceLimit, "s3 GET {}: range of {} bytes is above the limit of {} bytes",
                     req.target, *range->length, impl_->config.max_object_bytes);
      req.headers.push_back(fmt::format("Range: bytes={}-{}", range->offset, range->offset + *range->length - 1));
    } else {
      req.headers.push_back(fmt::format("Range: bytes={}-", range->offset));
    }
  }
  KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(req));
  if (resp.status == 404) {
    if (XmlText(resp.body, "Code").value_or("") == "NoSuchBucket") return impl_->HttpError(req, resp);
    return std::optional<Object>();
  }
  if (resp.status != 200 && resp.status != 206) return impl_->HttpError(req, resp);

  Object obj;
  obj.info.content_type = resp.HeaderOr("content-type");
  obj.info.cache_control = resp.HeaderOr("cache-control");
  obj.info.etag = StripQuotes(resp.HeaderOr("etag"));
  obj.info.last_modified = resp.HeaderOr("last-modified");
  if (resp.status == 206) {
    // Content-Range: bytes FIRST-LAST/TOTAL
    const std::string cr = resp.HeaderOr("content-range");
    uint64_t first = 0, last = 0, total = 0;
    const size_t sp = cr.find(' '), dash = cr.find('-'), slash = cr.find('/');
    if (!cr.starts_with("bytes ") || dash == std::string::npos || slash == std::string::npos || dash < sp ||
        slash < dash || !ParseU64(std::string_view(cr).substr(sp + 1, dash - sp - 1), first) ||
        !ParseU64(std::string_view(cr).substr(dash + 1, slash - dash - 1), last) ||
        !ParseU64(std::string_view(cr).substr(slash + 1), total) || last < first ||
        resp.body.size() != last - first + 1)
      return Error(ErrorCode::kIo, "s3 GET {}: bad Content-Range '{}' for {} bytes", req.target, cr,
                   resp.body.size());
    obj.offset = first;
    obj.info.size = total;
    obj.data = std::move(resp.body);
  } else {
    obj.info.size = resp.body.size();
    if (range) {  // the server sent the whole object: cut the range out of it
      if (range->offset >= resp.body.size())
        return Error(ErrorCode::kInvalidArgument, "s3 GET {}: range starts at {}, past the end ({} bytes)",
                     req.target, range->offset, resp.body.size());
      obj.offset = range->offset;
      obj.data = resp.body.substr(range->offset, range->length.value_or(std::string::npos));
    } else {
      obj.data = std::move(resp.body);
    }
  }
  return std::optional<Object>(std::move(obj));
}

Result<std::optional<ObjectInfo>> S3Client::Head(std::string_view bucket, std::string_view key) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  KHLS_RETURN_IF_ERROR(ValidateKey(key));
  Request req = Impl::ObjectRequest("HEAD", "HEAD", bucket, key);
  KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(req));
  if (resp.status == 404) return std::optional<ObjectInfo>();
  if (resp.status != 200) return impl_->HttpError(req, resp);
  ObjectInfo info;
  if (!ParseU64(resp.HeaderOr("content-length"), info.size))
    return Error(ErrorCode::kIo, "s3 HEAD {}: no valid Content-Length", req.target);
  info.content_type = resp.HeaderOr("content-type");
  info.cache_control = resp.HeaderOr("cache-control");
  info.etag = StripQuotes(resp.HeaderOr("etag"));
  info.last_modified = resp.HeaderOr("last-modified");
  return std::optional<ObjectInfo>(std::move(info));
}

Status S3Client::ListEach(std::string_view bucket, std::string_view prefix,
                          const std::function<Status(const ListEntry&)>& fn, const ListOptions& options) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  if (options.page_size < 1 || options.page_size > 1000)
    return Error(ErrorCode::kInvalidArgument, "s3 LIST: page size {} (1..1000)", options.page_size);
  std::optional<std::string> token;
  for (int page = 1;; ++page) {
    Request req;
    req.op = "LIST";
    req.target = fmt::format("{}/{}*", bucket, prefix);
    req.path = fmt::format("/{}", bucket);
    req.max_body = kMaxListBody;
    // The canonical query string: parameters sorted by name, values strictly encoded
    // (libcurl < 8.1 signs the query exactly as given).
    if (token) req.query += "continuation-token=" + UriEncode(*token, false) + "&";
    req.query += fmt::format("list-type=2&max-keys={}", options.page_size);
    if (!prefix.empty()) req.query += "&prefix=" + UriEncode(prefix, false);
    KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(req));
    if (resp.status != 200) return impl_->HttpError(req, resp);
    if (resp.body.find("<ListBucketResult") == std::string::npos)
      return Error(ErrorCode::kIo, "s3 LIST {}: page {} is not a ListBucketResult", req.target, page);
    for (std::string_view contents : XmlElements(resp.body, "Contents")) {
      ListEntry e;
      auto key = XmlText(contents, "Key");
      auto size = XmlText(contents, "Size");
      if (!key || key->empty() || !size || !ParseU64(*size, e.size))
        return Error(ErrorCode::kIo, "s3 LIST {}: page {} has an entry without a valid Key and Size", req.target,
                     page);
      e.key = std::move(*key);
      e.etag = StripQuotes(XmlText(contents, "ETag").value_or(""));
      e.last_modified = XmlText(contents, "LastModified").value_or("");
      KHLS_RETURN_IF_ERROR(fn(e));
    }
    if (XmlText(resp.body, "IsTruncated").value_or("false") != "true") return Status::Ok();
    auto next = XmlText(resp.body, "NextContinuationToken");
    if (!next || next->empty() || next == token)
      return Error(ErrorCode::kIo, "s3 LIST {}: page {} is truncated but has no new continuation token", req.target,
                   page);
    token = std::move(next);
  }
}

Result<std::vector<ListEntry>> S3Client::List(std::string_view bucket, std::string_view prefix,
                                              const ListOptions& options) {
  std::vector<ListEntry> out;
  KHLS_RETURN_IF_ERROR(ListEach(
      bucket, prefix,
      [&](const ListEntry& e) {
        out.push_back(e);
        return Status::Ok();
      },
      options));
  return out;
}

Status S3Client::Delete(std::string_view bucket, std::string_view key) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  KHLS_RETURN_IF_ERROR(ValidateKey(key));
  Request req = Impl::ObjectRequest("DELETE", "DELETE", bucket, key);
  KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(req));
  if (resp.status == 204 || resp.status == 200) return Status::Ok();
  if (resp.status == 404 && XmlText(resp.body, "Code").value_or("NoSuchKey") == "NoSuchKey") return Status::Ok();
  return impl_->HttpError(req, resp);
}

Status S3Client::CreateBucketIfMissing(std::string_view bucket) {
  KHLS_RETURN_IF_ERROR(ValidateBucketName(bucket));
  Request head;
  head.op = "HEAD BUCKET";
  head.method = "HEAD";
  head.target = std::string(bucket);
  head.path = fmt::format("/{}", bucket);
  KHLS_ASSIGN_OR_RETURN(Response exists, impl_->Perform(head));
  if (exists.status == 200) return Status::Ok();
  if (exists.status != 404) return impl_->HttpError(head, exists);

  Request create = head;
  create.op = "CREATE BUCKET";
  create.method = "PUT";
  std::string body;
  if (impl_->config.region != "us-east-1") {  // us-east-1 is the default location and takes no constraint
    body = fmt::format(
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
        impl_->config.region);
    create.headers.push_back("Content-Type: application/xml");
  }
  create.body = body;
  KHLS_ASSIGN_OR_RETURN(Response resp, impl_->Perform(create));
  if (resp.status == 200) {
    log::Info("s3: created bucket {} ({})", bucket, impl_->config.region);
    return Status::Ok();
  }
  if (resp.status == 409 && XmlText(resp.body, "Code").value_or("") == "BucketAlreadyOwnedByYou") return Status::Ok();
  return impl_->HttpError(create, resp);
}

}  // namespace khls::s3
