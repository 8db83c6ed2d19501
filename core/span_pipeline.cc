#include "span_pipeline.h"

#include <algorithm>

#include <fmt/chrono.h>
#include <spdlog/spdlog.h>

namespace snow::tracing {
namespace {

// After the first failure is logged, a collector that stays down is reported this often.
constexpr Duration kStillFailingLogInterval = std::chrono::minutes(1);

}  // namespace

SpanPipeline::SpanPipeline(const TracerOptions& options, std::unique_ptr<SpanExporter> exporter,
                           std::vector<Attribute> resource)
    : options_(options),
      exporter_(std::move(exporter)),
      resource_(std::move(resource)),
      logger_(options.logger ? options.logger : spdlog::default_logger()),
      destination_(exporter_->describe()) {
  stats_.destination = destination_;
  queue_.reserve(options_.batchSize);
  thread_ = std::thread([this] { run(); });
}

SpanPipeline::~SpanPipeline() {
  stop();
}

void SpanPipeline::push(SpanData&& span) noexcept {
  const std::lock_guard lock(mutex_);
  ++stats_.finished;
  if (closing_ || queued() + inFlight_ >= options_.queueSize) {
    ++stats_.dropped;
    return;
  }
  queue_.push_back(std::move(span));
  // Once per batch, not per span: the thread wakes on its own every batchDelay.
  if (queued() == options_.batchSize) {
    wake_.notify_one();
  }
}

bool SpanPipeline::flush(Duration timeout) noexcept {
  std::unique_lock lock(mutex_);
  if (closing_) {
    return false;
  }
  flushWanted_ = true;
  wake_.notify_one();
  return settled_.wait_for(lock, timeout, [this] {
    return closed_ || (queued() == 0 && inFlight_ == 0);
  }) && !closed_;
}

void SpanPipeline::stop() noexcept {
  const std::lock_guard closer(closeMutex_);
  if (!thread_.joinable()) {
    return;
  }
  {
    const std::lock_guard lock(mutex_);
    closing_ = true;
    closeDeadline_ = Clock::now() + options_.shutdownTimeout;
  }
  wake_.notify_one();
  thread_.join();
}

TracerStats SpanPipeline::stats() const {
  const std::lock_guard lock(mutex_);
  TracerStats stats = stats_;
  stats.queued = queued() + inFlight_;
  return stats;
}

void SpanPipeline::run() {
  std::unique_lock lock(mutex_);
  std::vector<SpanData> batch;
  batch.reserve(options_.batchSize);
  while (true) {
    wake_.wait_for(lock, options_.batchDelay,
                   [this] { return closing_ || flushWanted_ || queued() >= options_.batchSize; });
    reportDrops(lock, false);
    if (queued() == 0) {
      flushWanted_ = false;
      settled_.notify_all();
      if (closing_) {
        break;
      }
      continue;
    }
    takeBatch(batch);
    inFlight_ = batch.size();
    exportBatch(lock, batch);
    inFlight_ = 0;
    // Freeing 512 spans takes a while: not while push() waits for the lock. Only this thread
    // touches `batch`.
    lock.unlock();
    batch.clear();
    lock.lock();
    if (closing_ && Clock::now() >= closeDeadline_) {
      stats_.unsent += queued();
      queue_.clear();
      head_ = 0;
    }
    if (queued() == 0) {
      settled_.notify_all();
    }
  }
  reportDrops(lock, true);
  if (stats_.unsent > 0) {
    const uint64_t unsent = stats_.unsent;
    lock.unlock();
    logger_->error("tracing: {} spans were not exported to {} before the shutdown deadline ({})",
                   unsent, destination_, options_.shutdownTimeout);
    lock.lock();
  }
  closed_ = true;
  settled_.notify_all();
}

void SpanPipeline::takeBatch(std::vector<SpanData>& batch) {
  if (head_ == 0 && queue_.size() <= options_.batchSize) {
    batch.swap(queue_);  // The common case: everything, without moving a span.
    return;
  }
  const size_t n = std::min(options_.batchSize, queued());
  const auto first = queue_.begin() + static_cast<std::ptrdiff_t>(head_);
  std::move(first, first + static_cast<std::ptrdiff_t>(n), std::back_inserter(batch));
  head_ += n;
  // Taking from the front costs O(batch), not O(queue): the taken slots are dropped only once
  // they are half of the vector, which keeps that O(1) per span.
  if (head_ == queue_.size()) {
    queue_.clear();
    head_ = 0;
  } else if (head_ * 2 >= queue_.size()) {
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
}

void SpanPipeline::exportBatch(std::unique_lock<std::mutex>& lock,
                               std::span<const SpanData> batch) {
  Backoff backoff(options_.retry, options_.seed ^ 0x5bd1e995ULL);
  uint64_t failures = 0;
  Clock::time_point lastFailureLog;
  while (true) {
    Clock::time_point deadline = Clock::now() + options_.exportTimeout;
    if (closing_) {
      deadline = std::min(deadline, closeDeadline_);
    }
    lock.unlock();
    const SpanExporter::Result result = exporter_->exportSpans(batch, resource_, deadline);
    lock.lock();
    using Outcome = SpanExporter::Result::Outcome;
    if (result.outcome == Outcome::Exported) {
      const uint64_t rejected = std::min<uint64_t>(result.rejected, batch.size());
      stats_.exported += batch.size() - rejected;
      stats_.rejected += rejected;
      stats_.lastError.clear();
      lock.unlock();
      if (failures > 0) {
        logger_->info("tracing: exporting to {} again, after {} failed attempt{}", destination_,
                      failures, failures == 1 ? "" : "s");
      }
      if (rejected > 0) {
        logger_->warn("tracing: {} refused {} of {} spans: {}", destination_, rejected,
                      batch.size(), result.error);
      }
      lock.lock();
      return;
    }
    if (result.outcome == Outcome::Rejected) {
      stats_.rejected += batch.size();
      stats_.lastError = result.error;
      lock.unlock();
      logger_->error("tracing: {} refused a batch of {} spans, which is dropped: {}", destination_,
                     batch.size(), result.error);
      lock.lock();
      return;
    }
    ++failures;
    ++stats_.failedExports;
    stats_.lastError = result.error;
    const Clock::time_point now = Clock::now();
    if (closing_ && now >= closeDeadline_) {
      stats_.unsent += batch.size();
      return;
    }
    Duration delay = backoff.next();
    if (closing_) {
      delay = std::min<Duration>(delay, closeDeadline_ - now);
    }
    if (failures == 1 || now - lastFailureLog >= kStillFailingLogInterval) {
      lastFailureLog = now;
      const size_t waiting = queued() + batch.size();
      lock.unlock();
      logger_->warn(
          "tracing: cannot export {} spans to {}: {}; retrying in {} ({} spans queued, at most "
          "{} are kept)",
          batch.size(), destination_, result.error,
          std::chrono::duration_cast<std::chrono::milliseconds>(delay), waiting,
          options_.queueSize);
      lock.lock();
    }
    // close() cuts the wait short: the shutdown deadline may be nearer than the backoff.
    const bool wasClosing = closing_;
    wake_.wait_for(lock, delay, [&] { return closing_ != wasClosing; });
  }
}

void SpanPipeline::reportDrops(std::unique_lock<std::mutex>& lock, bool now) {
  const uint64_t dropped = stats_.dropped;
  if (dropped == dropsReported_) {
    return;
  }
  const Clock::time_point at = Clock::now();
  if (!now && at - lastDropReport_ < options_.dropLogInterval) {
    return;
  }
  const uint64_t fresh = dropped - dropsReported_;
  dropsReported_ = dropped;
  lastDropReport_ = at;
  lock.unlock();
  logger_->warn(
      "tracing: dropped {} finished span{} because the export queue was full ({} spans); {} "
      "dropped since start",
      fresh, fresh == 1 ? "" : "s", options_.queueSize, dropped);
  lock.lock();
}

}  // namespace snow::tracing
