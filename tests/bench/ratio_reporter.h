#pragma once

// A Google Benchmark reporter that prints, after the usual table, each benchmark's throughput as
// a ratio to a baseline benchmark of the same run (the peer it must beat, e.g. raw libevent).

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace snow::bench {

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(std::string baseline) : baseline_(std::move(baseline)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      auto it = run.counters.find("items_per_second");
      if (it != run.counters.end() && run.run_type == Run::RT_Iteration) {
        order_.push_back(run.benchmark_name());
        perSecond_[run.benchmark_name()] = it->second.value;
      }
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    auto base = perSecond_.find(baseline_);
    if (base == perSecond_.end() || base->second <= 0) {
      std::printf("\n(no baseline '%s' in this run: no ratios)\n", baseline_.c_str());
      return;
    }
    std::printf("\n%-48s %16s %12s %14s\n", "benchmark", "items/s", "ns/item", "x baseline cost");
    for (const auto& name : order_) {
      const double rate = perSecond_[name];
      std::printf("%-48s %16.0f %12.1f %14.2f\n", name.c_str(), rate, 1e9 / rate,
                  base->second / rate);
    }
    std::printf("(baseline: %s; 'x baseline cost' = time per item relative to it)\n",
                baseline_.c_str());
  }

 private:
  std::string baseline_;
  std::vector<std::string> order_;
  std::map<std::string, double> perSecond_;
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
