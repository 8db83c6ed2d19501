#pragma once

// A Google Benchmark reporter that prints, after the usual table, each benchmark's throughput as
// a ratio to a baseline benchmark of the same run (the peer it must beat, e.g. raw libevent).

#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace snow::bench {

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(std::string baseline) : baseline_(std::move(baseline)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    // With --benchmark_repetitions, the median stands for the benchmark: this machine's noise
    // between runs is larger than most differences worth measuring.
    for (const auto& run : runs) {
      auto it = run.counters.find("items_per_second");
      if (it == run.counters.end()) {
        continue;
      }
      const std::string name = run.run_name.str();
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Iteration || median) {
        if (perSecond_.find(name) == perSecond_.end()) {
          order_.push_back(name);
        }
        if (median || !medians_.count(name)) {
          perSecond_[name] = it->second.value;
        }
        if (median) {
          medians_.insert(name);
        }
      }
    }
  }

  // A benchmark "name/arg" is compared with "baseline/arg" when the baseline ran with that
  // argument, else with the plain baseline.
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\n%-48s %16s %12s %14s\n", "benchmark", "items/s", "ns/item", "x baseline cost");
    for (const auto& name : order_) {
      const double rate = perSecond_[name];
      const auto slash = name.find('/');
      auto base =
          perSecond_.find(slash == std::string::npos ? baseline_ : baseline_ + name.substr(slash));
      if (base == perSecond_.end()) {
        base = perSecond_.find(baseline_);
      }
      if (base == perSecond_.end() || base->second <= 0) {
        std::printf("%-48s %16.0f %12.1f %14s\n", name.c_str(), rate, 1e9 / rate, "-");
      } else {
        std::printf("%-48s %16.0f %12.1f %14.2f\n", name.c_str(), rate, 1e9 / rate,
                    base->second / rate);
      }
    }
    std::printf(
        "(baseline: %s with the same argument; 'x baseline cost' = time per item "
        "relative to it)\n",
        baseline_.c_str());
  }

 private:
  std::string baseline_;
  std::vector<std::string> order_;
  std::map<std::string, double> perSecond_;
  std::set<std::string> medians_;
};

// main() for a benchmark binary whose ratios are relative to `baseline`.
inline int runWithRatios(int argc, char** argv, const char* baseline) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  RatioReporter reporter(baseline);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace snow::bench
