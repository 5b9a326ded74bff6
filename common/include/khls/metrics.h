// Metrics and health, as plain code: a registry of counters, gauges and
// histograms rendered in the Prometheus text exposition format 0.0.4, and the
// named checks behind a /healthz answer. No I/O: the HTTP side is khls_metrics
// (khls/metrics_server.h); components get a Registry* / Health* in their params.
//
// Every metric is a family (a name, a help text, label names) of series (one per
// combination of label values); a metric without labels is a family with one
// series. Updates are thread-safe and lock-free for counters and gauges (a
// mutex per histogram keeps its buckets, sum and count consistent); rendering
// may run on another thread at any time.
//
// Names follow Prometheus practice: a `khls_<component>_` prefix, the unit in
// the name (`_bytes`, `_seconds`, `_records`), `_total` on counters.
//
// Registering a name that is not a valid Prometheus name, a label name that is
// not valid (or `le` on a histogram), histogram bounds that are not strictly
// increasing, or a name already registered with another type, help, label names
// or bounds is a programming error: it aborts, naming the metric. Registering
// the same definition again returns the existing family.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace khls::metrics {

/// Label values of one series, in the order of its family's label names.
using Labels = std::vector<std::string>;

/// A value that only goes up (restarts at 0 with the process).
class Counter {
 public:
  /// Adds `by` (>= 0; a negative or NaN increment is ignored).
  void Inc(double by = 1);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double by);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// Observations counted into fixed buckets (upper bounds, inclusive; +Inf implied).
class Histogram {
 public:
  /// `bounds`: strictly increasing, finite (checked by the Registry).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  ///< per bound, then +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  ///< per bucket (not cumulative), +Inf last
  double sum_ = 0;
  uint64_t count_ = 0;
};

/// Buckets for durations of file-system work: 1 ms to 10 s.
inline const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,   0.25,   0.5,   1,    2.5,   5,    10};

namespace detail {
enum class Type { kCounter, kGauge, kHistogram };

/// What the Registry keeps of every family, whatever its type.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> label_names,
             std::vector<double> bounds);
  virtual ~FamilyBase() = default;
  /// Appends the family's HELP, TYPE and sample lines.
  virtual void Render(std::string& out) const = 0;

  const std::string name;
  const std::string help;
  const Type type;
  const std::vector<std::string> label_names;
  const std::vector<double> bounds;  ///< histograms only

 protected:
  /// Checks that `values` has one value per label name (aborts otherwise).
  void CheckArity(const Labels& values) const;
  /// `{a="x",b="y"}` (escaped), with `extra` (e.g. `le="0.1"`) last; "" when empty.
  std::string LabelText(const Labels& values, std::string_view extra = {}) const;
  void RenderHeader(std::string& out) const;
};
}  // namespace detail

/// The series of one metric, by label values.
template <typename M>
class Family final : public detail::FamilyBase {
 public:
  using detail::FamilyBase::FamilyBase;

  /// The series with these label values, created (at 0) on first use. The
  /// reference stays valid until Remove() of the same values.
  M& With(const Labels& values) {
    CheckArity(values);
    std::lock_guard lock(mu_);
    auto& slot = series_[values];
    if (!slot) slot = Make();
    return *slot;
  }
  /// Drops a series (e.g. a partition no longer assigned); a no-op if absent.
  void Remove(const Labels& values) {
    std::lock_guard lock(mu_);
    series_.erase(values);
  }

  void Render(std::string& out) const override;

 private:
  std::unique_ptr<M> Make() const;
  mutable std::mutex mu_;
  std::map<Labels, std::unique_ptr<M>> series_;  ///< sorted by label values: a stable order
};

// Defined in metrics.cc for the three metric types.
template <>
std::unique_ptr<Counter> Family<Counter>::Make() const;
template <>
std::unique_ptr<Gauge> Family<Gauge>::Make() const;
template <>
std::unique_ptr<Histogram> Family<Histogram>::Make() const;
template <>
void Family<Counter>::Render(std::string& out) const;
template <>
void Family<Gauge>::Render(std::string& out) const;
template <>
void Family<Histogram>::Render(std::string& out) const;

/// A set of metric families, rendered together.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& AddCounterFamily(std::string name, std::string help, std::vector<std::string> label_names);
  Family<Gauge>& AddGaugeFamily(std::string name, std::string help, std::vector<std::string> label_names);
  Family<Histogram>& AddHistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                                        std::vector<double> bounds);
  /// A metric without labels (its family's one series).
  Counter& AddCounter(std::string name, std::string help);
  Gauge& AddGauge(std::string name, std::string help);
  Histogram& AddHistogram(std::string name, std::string help, std::vector<double> bounds);

  /// Every family in registration order, each series in the order of its label
  /// values, as the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
  std::string Render() const;

 private:
  detail::FamilyBase& Add(std::unique_ptr<detail::FamilyBase> family);
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<detail::FamilyBase>> families_;
};

/// The Content-Type of Registry::Render()'s text.
inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

/// A /healthz answer: 200 with "ok", or 503 with what is wrong.
struct HealthReport {
  bool ok = true;
  std::string text = "ok";  ///< "ok", or one "check: reason" line per failing check
};

/// Named checks a component keeps up to date from its own threads; healthy
/// when every check passes. Thread-safe.
class Health {
 public:
  using Clock = std::chrono::steady_clock;

  /// Declares check `name` (again: redefines it, as new). Without `max_age` it
  /// passes from the start, until Fail(). With `max_age`, it passes only while
  /// its last Pass() is at most that old ("reached Kafka within 15 s"), and
  /// fails with `pending` until the first Pass().
  void Add(std::string name, std::optional<Clock::duration> max_age = std::nullopt, std::string pending = "");
  /// The check holds now (clears a failure). Unknown names are ignored.
  void Pass(std::string_view name);
  /// The check fails with `reason` until the next Pass(). Unknown names are ignored.
  void Fail(std::string_view name, std::string reason);
  /// Every check now, in the order they were added.
  HealthReport Report() const;

 private:
  struct Check {
    std::string name;
    std::optional<Clock::duration> max_age;
    std::string pending;
    std::optional<Clock::time_point> last_pass;
    std::optional<std::string> failure;
  };
  Check* Find(std::string_view name);
  mutable std::mutex mu_;
  std::vector<Check> checks_;
};

}  // namespace khls::metrics
