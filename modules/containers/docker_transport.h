#pragma once

// The Docker client's engine thread (private to docker.cc): HTTP/1.1 over a unix socket with
// libcurl's multi interface, every transfer on one thread.
//
// The thread sleeps in curl_multi_poll(). submit() and abort() queue work under a mutex and wake
// it with curl_multi_wakeup(). What the transfers receive is gathered while libcurl runs, and
// handed to `deliver` once per pass (a batch: one post() to the loop, not one per chunk), in the
// order it arrived. Bytes of one transfer that arrive in one pass travel as one Data event.
//
// Contract:
//   - Thread: submit() and abort() from any thread; `deliver` runs on the engine thread only.
//   - Ownership: the thread owns each request from submit() until its Done event (or abort).
//     The request body is uploaded from the request's own string, never copied.
//   - Every submitted request ends in exactly one Done event, unless it was aborted or the
//     thread stopped first. Nothing is delivered after the destructor returned.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <curl/curl.h>

#include "snow/core/dispatcher.h"
#include "snow/core/function.h"

namespace snow::containers::detail {

struct HttpRequest {
  uint64_t id = 0;
  const char* method = "GET";  // "GET", "POST", "DELETE": static strings.
  std::string target;          // "/v1.41/containers/json?all=1"
  std::string body;            // Sent for POST (may be empty).
  const char* contentType = nullptr;
};

struct HttpEvent {
  enum class Kind : uint8_t { Data, Done };

  static HttpEvent done(uint64_t id, std::string error) {
    HttpEvent event;
    event.id = id;
    event.kind = Kind::Done;
    event.error = std::move(error);
    return event;
  }

  uint64_t id = 0;
  Kind kind = Kind::Data;
  long status = 0;    // The HTTP status; 0 while (or when) none arrived.
  std::string bytes;  // Data: body bytes, in order.
  // Done: "" for a complete answer, else why the transfer failed, in curl's and the OS's words.
  std::string error;
  bool connectFailed = false;  // Done: the socket could not be connected at all.
};

class EngineThread {
 public:
  using Deliver = UniqueFunction<void(std::vector<HttpEvent>&& events)>;

  // Starts the thread. Throws std::runtime_error when libcurl cannot be set up.
  EngineThread(std::string socketPath, Duration connectTimeout, Deliver deliver);
  // Aborts every transfer and joins the thread.
  ~EngineThread();
  EngineThread(const EngineThread&) = delete;
  EngineThread& operator=(const EngineThread&) = delete;

  void submit(std::unique_ptr<HttpRequest> request);
  // Drops the transfer (closing its connection); no Done event follows unless one was already
  // on its way. Unknown ids are ignored.
  void abort(uint64_t id);

 private:
  struct Transfer;

  void run();
  void begin(std::unique_ptr<HttpRequest> request);
  void finishDone();
  static size_t onBody(char* data, size_t size, size_t count, void* transfer);

  const std::string socketPath_;
  const long connectTimeoutMs_;
  Deliver deliver_;
  CURLM* multi_ = nullptr;

  std::mutex mutex_;
  std::vector<std::unique_ptr<HttpRequest>> submitted_;  // Guarded by mutex_.
  std::vector<uint64_t> aborted_;                        // Guarded by mutex_.
  bool stopping_ = false;                                // Guarded by mutex_.

  // Engine thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::vector<HttpEvent> events_;

  std::thread thread_;
};

}  // namespace snow::containers::detail
