#include "khls/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace khls::metrics {
namespace {

[[noreturn]] void Misuse(const std::string& what) {
  std::fprintf(stderr, "kafka-hls: metrics: %s\n", what.c_str());
  std::abort();
}

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool ValidMetricName(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s.front()))) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; });
}

// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved for Prometheus itself).
bool ValidLabelName(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s.front())) || s.starts_with("__")) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

// Values as Go's ParseFloat reads them: integers without a fraction, the
// shortest text that reads back to the same double, and the special values.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// HELP text: backslash and line feed escaped.
std::string EscapeHelp(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

// Label values: backslash, double quote and line feed escaped.
std::string EscapeLabelValue(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

const char* TypeName(detail::Type t) {
  switch (t) {
    case detail::Type::kCounter: return "counter";
    case detail::Type::kGauge: return "gauge";
    case detail::Type::kHistogram: return "histogram";
  }
  return "untyped";
}

}  // namespace

void Counter::Inc(double by) {
  if (!(by >= 0)) return;
  value_.fetch_add(by, std::memory_order_relaxed);
}

void Gauge::Add(double by) { value_.fetch_add(by, std::memory_order_relaxed); }

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  // The first bucket whose bound is >= v (bounds are inclusive upper bounds); NaN goes to +Inf.
  const size_t i = std::isnan(v) ? bounds_.size()
                                 : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::Read() const {
  std::lock_guard lock(mu_);
  Snapshot s;
  s.cumulative.reserve(counts_.size());
  uint64_t running = 0;
  for (uint64_t n : counts_) s.cumulative.push_back(running += n);
  s.sum = sum_;
  s.count = count_;
  return s;
}

namespace detail {

FamilyBase::FamilyBase(std::string name_in, std::string help_in, Type type_in, std::vector<std::string> labels_in,
                       std::vector<double> bounds_in)
    : name(std::move(name_in)),
      help(std::move(help_in)),
      type(type_in),
      label_names(std::move(labels_in)),
      bounds(std::move(bounds_in)) {
  if (!ValidMetricName(name)) Misuse(fmt::format("'{}' is not a valid metric name", name));
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& l = label_names[i];
    if (!ValidLabelName(l) || (type == Type::kHistogram && l == "le"))
      Misuse(fmt::format("metric '{}': '{}' is not a valid label name", name, l));
    if (std::find(label_names.begin(), label_names.begin() + static_cast<std::ptrdiff_t>(i), l) !=
        label_names.begin() + static_cast<std::ptrdiff_t>(i))
      Misuse(fmt::format("metric '{}': label '{}' given twice", name, l));
  }
  if (type == Type::kHistogram) {
    if (bounds.empty()) Misuse(fmt::format("histogram '{}' has no buckets", name));
    for (size_t i = 0; i < bounds.size(); ++i)
      if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
        Misuse(fmt::format("histogram '{}': bucket bounds must be finite and strictly increasing", name));
  }
}

void FamilyBase::CheckArity(const Labels& values) const {
  if (values.size() != label_names.size())
    Misuse(fmt::format("metric '{}' has {} labels, {} values given", name, label_names.size(), values.size()));
}

std::string FamilyBase::LabelText(const Labels& values, std::string_view extra) const {
  if (values.empty() && extra.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i)
    out += fmt::format("{}{}=\"{}\"", i ? "," : "", label_names[i], EscapeLabelValue(values[i]));
  if (!extra.empty()) {
    if (!values.empty()) out += ',';
    out += extra;
  }
  return out + "}";
}

void FamilyBase::RenderHeader(std::string& out) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, EscapeHelp(help), name, TypeName(type));
}

}  // namespace detail

template <>
std::unique_ptr<Counter> Family<Counter>::Make() const {
  return std::make_unique<Counter>();
}
template <>
std::unique_ptr<Gauge> Family<Gauge>::Make() const {
  return std::make_unique<Gauge>();
}
template <>
std::unique_ptr<Histogram> Family<Histogram>::Make() const {
  return std::make_unique<Histogram>(bounds);
}

template <>
void Family<Counter>::Render(std::string& out) const {
  RenderHeader(out);
  std::lock_guard lock(mu_);
  for (const auto& [values, c] : series_) out += fmt::format("{}{} {}\n", name, LabelText(values), FormatValue(c->Value()));
}

template <>
void Family<Gauge>::Render(std::string& out) const {
  RenderHeader(out);
  std::lock_guard lock(mu_);
  for (const auto& [values, g] : series_) out += fmt::format("{}{} {}\n", name, LabelText(values), FormatValue(g->Value()));
}

template <>
void Family<Histogram>::Render(std::string& out) const {
  RenderHeader(out);
  std::lock_guard lock(mu_);
  for (const auto& [values, h] : series_) {
    const Histogram::Snapshot s = h->Read();
    for (size_t i = 0; i < s.cumulative.size(); ++i) {
      const std::string le =
          fmt::format("le=\"{}\"", i < bounds.size() ? FormatValue(bounds[i]) : std::string("+Inf"));
      out += fmt::format("{}_bucket{} {}\n", name, LabelText(values, le), s.cumulative[i]);
    }
    out += fmt::format("{}_sum{} {}\n", name, LabelText(values), FormatValue(s.sum));
    out += fmt::format("{}_count{} {}\n", name, LabelText(values), s.count);
  }
}

detail::FamilyBase& Registry::Add(std::unique_ptr<detail::FamilyBase> family) {
  std::lock_guard lock(mu_);
  for (const auto& f : families_) {
    if (f->name != family->name) continue;
    if (f->type != family->type || f->help != family->help || f->label_names != family->label_names ||
        f->bounds != family->bounds)
      Misuse(fmt::format("metric '{}' is registered twice with different definitions", family->name));
    return *f;
  }
  families_.push_back(std::move(family));
  return *families_.back();
}

Family<Counter>& Registry::AddCounterFamily(std::string name, std::string help, std::vector<std::string> label_names) {
  return static_cast<Family<Counter>&>(Add(std::make_unique<Family<Counter>>(
      std::move(name), std::move(help), detail::Type::kCounter, std::move(label_names), std::vector<double>{})));
}

Family<Gauge>& Registry::AddGaugeFamily(std::string name, std::string help, std::vector<std::string> label_names) {
  return static_cast<Family<Gauge>&>(Add(std::make_unique<Family<Gauge>>(
      std::move(name), std::move(help), detail::Type::kGauge, std::move(label_names), std::vector<double>{})));
}

Family<Histogram>& Registry::AddHistogramFamily(std::string name, std::string help,
                                                std::vector<std::string> label_names, std::vector<double> bounds) {
  return static_cast<Family<Histogram>&>(Add(std::make_unique<Family<Histogram>>(
      std::move(name), std::move(help), detail::Type::kHistogram, std::move(label_names), std::move(bounds))));
}

Counter& Registry::AddCounter(std::string name, std::string help) {
  return AddCounterFamily(std::move(name), std::move(help), {}).With({});
}

Gauge& Registry::AddGauge(std::string name, std::string help) {
  return AddGaugeFamily(std::move(name), std::move(help), {}).With({});
}

Histogram& Registry::AddHistogram(std::string name, std::string help, std::vector<double> bounds) {
  return AddHistogramFamily(std::move(name), std::move(help), {}, std::move(bounds)).With({});
}

std::string Registry::Render() const {
  std::string out;
  std::lock_guard lock(mu_);
  for (const auto& f : families_) f->Render(out);
  return out;
}

void Health::Add(std::string name, std::optional<Clock::duration> max_age, std::string pending) {
  std::lock_guard lock(mu_);
  Check fresh{name, max_age, std::move(pending), std::nullopt, std::nullopt};
  if (Check* c = Find(name)) *c = std::move(fresh);
  else checks_.push_back(std::move(fresh));
}

Health::Check* Health::Find(std::string_view name) {
  for (Check& c : checks_)
    if (c.name == name) return &c;
  return nullptr;
}

void Health::Pass(std::string_view name) {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  if (Check* c = Find(name)) {
    c->last_pass = now;
    c->failure.reset();
  }
}

void Health::Fail(std::string_view name, std::string reason) {
  std::lock_guard lock(mu_);
  if (Check* c = Find(name)) c->failure = std::move(reason);
}

HealthReport Health::Report() const {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  std::string problems;
  for (const Check& c : checks_) {
    std::string why;
    if (c.failure) {
      why = *c.failure;
    } else if (c.max_age && !c.last_pass) {
      why = c.pending.empty() ? "not confirmed yet" : c.pending;
    } else if (c.max_age && now - *c.last_pass > *c.max_age) {
      // Seconds to a tenth: "17.2", "15".
      const auto seconds = [](Clock::duration d) { return std::round(std::chrono::duration<double>(d).count() * 10) / 10; };
      why = fmt::format("not confirmed for {} s (at most {} s allowed)", seconds(now - *c.last_pass),
                        seconds(*c.max_age));
    }
    if (!why.empty()) problems += fmt::format("{}: {}\n", c.name, why);
  }
  if (problems.empty()) return {};
  return {false, problems};
}

}  // namespace khls::metrics
