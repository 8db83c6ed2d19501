#include "docker_transport.h"

#include <array>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <spdlog/spdlog.h>

namespace snow::containers::detail {
namespace {

// The longest the thread sleeps when nothing happens; wake-ups and libcurl's own timers cut it
// short, so it only bounds how long a lost wake-up could go unnoticed.
constexpr int kIdlePollMs = 1000;

// libcurl's global state, set up once before the first engine thread starts (curl_global_init is
// not thread-safe in every build of libcurl). Never cleaned up: other libraries may share it.
void initCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT); code != CURLE_OK) {
      throw std::runtime_error(std::string("curl_global_init failed: ") + curl_easy_strerror(code));
    }
  });
}

}  // namespace

struct EngineThread::Transfer {
  explicit Transfer(EngineThread& thread) : owner(thread) {}
  ~Transfer() {
    if (easy != nullptr) {
      curl_multi_remove_handle(owner.multi_, easy);
      curl_easy_cleanup(easy);
    }
    curl_slist_free_all(headers);
  }
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  EngineThread& owner;
  std::unique_ptr<HttpRequest> request;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::array<char, CURL_ERROR_SIZE> error{};
};

EngineThread::EngineThread(std::string socketPath, Duration connectTimeout, Deliver deliver)
    : socketPath_(std::move(socketPath)),
      connectTimeoutMs_(static_cast<long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(connectTimeout).count())),
      deliver_(std::move(deliver)) {
  initCurlOnce();
  multi_ = curl_multi_init();
  if (multi_ == nullptr) {
    throw std::runtime_error("curl_multi_init failed");
  }
  thread_ = std::thread([this] { run(); });
}

EngineThread::~EngineThread() {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  curl_multi_wakeup(multi_);
  thread_.join();
  curl_multi_cleanup(multi_);
}

void EngineThread::submit(std::unique_ptr<HttpRequest> request) {
  {
    const std::lock_guard lock(mutex_);
    submitted_.push_back(std::move(request));
  }
  curl_multi_wakeup(multi_);
}

void EngineThread::abort(uint64_t id) {
  {
    const std::lock_guard lock(mutex_);
    aborted_.push_back(id);
  }
  curl_multi_wakeup(multi_);
}

void EngineThread::run() {
  std::vector<std::unique_ptr<HttpRequest>> submitted;
  std::vector<uint64_t> aborted;
  while (true) {
    {
      const std::lock_guard lock(mutex_);
      if (stopping_) {
        break;
      }
      submitted.swap(submitted_);
      aborted.swap(aborted_);
    }
    for (auto& request : submitted) {
      begin(std::move(request));
    }
    submitted.clear();
    for (const uint64_t id : aborted) {
      transfers_.erase(id);  // Removes the handle from the multi and closes its connection.
    }
    aborted.clear();

    int running = 0;
    curl_multi_perform(multi_, &running);
    finishDone();
    if (!events_.empty()) {
      try {
        deliver_(std::exchange(events_, {}));
      } catch (const std::exception& e) {  // post() out of memory: the calls hang; say why.
        spdlog::error("docker: cannot hand the engine's answers to the loop: {}", e.what());
      }
    }
    curl_multi_poll(multi_, nullptr, 0, kIdlePollMs, nullptr);
  }
  transfers_.clear();
}

void EngineThread::begin(std::unique_ptr<HttpRequest> request) {
  const uint64_t id = request->id;
  auto transfer = std::make_unique<Transfer>(*this);
  transfer->request = std::move(request);
  const HttpRequest& r = *transfer->request;
  CURL* easy = curl_easy_init();
  if (easy == nullptr) {
    events_.push_back(HttpEvent::done(id, "curl_easy_init failed"));
    return;
  }
  transfer->easy = easy;
  const std::string url = "http://docker" + r.target;  // The host is ignored on a unix socket.
  curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH, socketPath_.c_str());
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMs_);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, transfer->error.data());
  curl_easy_setopt(easy, CURLOPT_PRIVATE, transfer.get());
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &EngineThread::onBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, transfer.get());

  const std::string_view method = r.method;
  if (method == "POST") {
    // From the request's own string: POSTFIELDS does not copy (COPYPOSTFIELDS would).
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, r.body.data());
  } else if (method != "GET") {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, r.method);
  }
  // No "Expect: 100-continue" round trip before a large build context: the engine reads it all.
  transfer->headers = curl_slist_append(transfer->headers, "Expect:");
  if (r.contentType != nullptr) {
    transfer->headers = curl_slist_append(transfer->headers,
                                          (std::string("Content-Type: ") + r.contentType).c_str());
  }
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, transfer->headers);

  if (const CURLMcode code = curl_multi_add_handle(multi_, easy); code != CURLM_OK) {
    transfer->easy = nullptr;  // Not in the multi: clean it up here.
    curl_easy_cleanup(easy);
    events_.push_back(
        HttpEvent::done(id, std::string("curl_multi_add_handle: ") + curl_multi_strerror(code)));
    return;
  }
  transfers_[id] = std::move(transfer);
}

size_t EngineThread::onBody(char* data, size_t size, size_t count, void* transfer) {
  auto* t = static_cast<Transfer*>(transfer);
  const size_t n = size * count;
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  std::vector<HttpEvent>& events = t->owner.events_;
  const uint64_t id = t->request->id;
  if (!events.empty() && events.back().id == id && events.back().kind == HttpEvent::Kind::Data) {
    events.back().bytes.append(data, n);
  } else {
    HttpEvent& event = events.emplace_back();
    event.id = id;
    event.status = status;
    event.bytes.assign(data, n);
  }
  return n;
}

void EngineThread::finishDone() {
  int left = 0;
  while (CURLMsg* message = curl_multi_info_read(multi_, &left)) {
    if (message->msg != CURLMSG_DONE) {
      continue;
    }
    char* priv = nullptr;
    curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, &priv);
    auto* transfer = reinterpret_cast<Transfer*>(priv);
    const CURLcode code = message->data.result;
    const uint64_t id = transfer->request->id;
    HttpEvent done = HttpEvent::done(id, "");
    curl_easy_getinfo(transfer->easy, CURLINFO_RESPONSE_CODE, &done.status);
    if (code != CURLE_OK) {
      done.connectFailed = code == CURLE_COULDNT_CONNECT;
      done.error = curl_easy_strerror(code);
      long osErrno = 0;
      curl_easy_getinfo(transfer->easy, CURLINFO_OS_ERRNO, &osErrno);
      if (osErrno != 0) {
        done.error += " (" + std::system_category().message(static_cast<int>(osErrno)) + ")";
      } else if (transfer->error[0] != '\0') {
        done.error += " (" + std::string(transfer->error.data()) + ")";
      }
    }
    events_.push_back(std::move(done));
    transfers_.erase(id);  // Invalidates `message` and `transfer`: read nothing after this.
  }
}

}  // namespace snow::containers::detail
