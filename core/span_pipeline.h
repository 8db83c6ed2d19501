#pragma once

// The export side of snow-core's tracer (private): the bounded queue of finished spans and the
// thread that sends them in batches through a SpanExporter, with retries. tracer.h states the
// behaviour; this is the machinery.
//
// Thread: push(), flush(), stop() and stats() from any thread; the exporter runs on the
// pipeline's own thread only.

#include <condition_variable>
#include <mutex>
#include <thread>

#include "snow/core/tracer.h"

namespace snow::tracing {

class SpanPipeline {
 public:
  SpanPipeline(const TracerOptions& options, std::unique_ptr<SpanExporter> exporter,
               std::vector<Attribute> resource);
  ~SpanPipeline();  // stop()s.
  SpanPipeline(const SpanPipeline&) = delete;
  SpanPipeline& operator=(const SpanPipeline&) = delete;

  // Queues a finished span, or drops and counts it when the queue is full or closed.
  void push(SpanData&& span) noexcept;
  bool flush(Duration timeout) noexcept;
  void stop() noexcept;
  [[nodiscard]] TracerStats stats() const;

 private:
  using Clock = std::chrono::steady_clock;

  void run();
  // Spans waiting, not counting the batch in flight.
  [[nodiscard]] size_t queued() const noexcept { return queue_.size() - head_; }
  // Moves up to batchSize spans from the front of the queue into `batch` (empty).
  void takeBatch(std::vector<SpanData>& batch);
  // Sends `batch` until it is delivered or refused, or the shutdown deadline passes. Called and
  // returns with the lock held; releases it while exporting and backing off.
  void exportBatch(std::unique_lock<std::mutex>& lock, std::span<const SpanData> batch);
  // Logs the drops since the last report, at most once per dropLogInterval (or now, at close).
  void reportDrops(std::unique_lock<std::mutex>& lock, bool now);

  const TracerOptions& options_;
  std::unique_ptr<SpanExporter> exporter_;
  const std::vector<Attribute> resource_;
  const std::shared_ptr<spdlog::logger> logger_;
  const std::string destination_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;     // The export thread: a full batch, a flush, close.
  std::condition_variable settled_;  // flush() callers: the queue drained.
  std::vector<SpanData> queue_;      // Waiting spans are [head_, end); before head_: taken.
  size_t head_ = 0;
  size_t inFlight_ = 0;
  bool flushWanted_ = false;
  bool closing_ = false;
  bool closed_ = false;  // The thread ended; nothing more is exported.
  Clock::time_point closeDeadline_;
  TracerStats stats_;
  uint64_t dropsReported_ = 0;
  Clock::time_point lastDropReport_;

  std::mutex closeMutex_;  // One closer joins the thread.
  std::thread thread_;
};

}  // namespace snow::tracing
