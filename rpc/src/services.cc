#include "snow/rpc/services.h"

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>

namespace snow::rpc {

Services::Registration& Services::Registration::operator=(Registration&& other) noexcept {
  if (this != &other) {
    reset();
    services_ = std::exchange(other.services_, nullptr);
    name_ = std::move(other.name_);
  }
  return *this;
}

void Services::Registration::reset() noexcept {
  if (services_ != nullptr) {
    services_->methods_.erase(name_);
    services_ = nullptr;
  }
}

Services::Registration Services::add(Method method) {
  const int handlers =
      (method.unary ? 1 : 0) + (method.stream ? 1 : 0) + (method.clientStream ? 1 : 0);
  if (method.request == nullptr || handlers != 1) {
    throw std::logic_error(
        fmt::format("method {}: needs a request type and one handler", method.name));
  }
  std::string name = method.name;
  auto [it, inserted] = methods_.try_emplace(name, std::make_unique<Method>(std::move(method)));
  if (!inserted) {
    throw std::logic_error(fmt::format("method {} is registered already", name));
  }
  return Registration(*this, std::move(name));
}

Services::Method* Services::find(std::string_view name) {
  auto it = methods_.find(std::string(name));
  return it == methods_.end() ? nullptr : it->second.get();
}

std::vector<std::string> Services::names() const {
  std::vector<std::string> out;
  out.reserve(methods_.size());
  for (const auto& [name, method] : methods_) {
    out.push_back(name);
  }
  return out;
}

void Services::checkDeclared(std::string_view name, const Message& request, const Message& reply,
                             Kind kind) {
  // "/package.Service/Method"
  const auto slash = name.rfind('/');
  if (name.size() < 4 || name.front() != '/' || slash == 0 || slash + 1 >= name.size()) {
    throw std::logic_error(
        fmt::format("method name '{}' is not of the form /package.Service/Method", name));
  }
  const std::string service(name.substr(1, slash - 1));
  const std::string_view methodName = name.substr(slash + 1);
  const auto* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  if (descriptor == nullptr) {
    return;  // Not declared in a linked .proto: nothing to check against.
  }
  const auto* declared = descriptor->FindMethodByName(std::string(methodName));
  if (declared == nullptr) {
    throw std::logic_error(fmt::format("service {} declares no method {}", service, methodName));
  }
  if (declared->input_type() != request.GetDescriptor() ||
      declared->output_type() != reply.GetDescriptor()) {
    throw std::logic_error(fmt::format(
        "method {} is declared as ({}) returns ({}), the handler takes ({}) returns ({})", name,
        declared->input_type()->full_name(), declared->output_type()->full_name(),
        request.GetDescriptor()->full_name(), reply.GetDescriptor()->full_name()));
  }
  if (kind == Kind::ClientStream &&
      (!declared->client_streaming() || declared->server_streaming())) {
    throw std::logic_error(fmt::format(
        "method {} is not declared client-streaming (rpc {}(stream {}) returns ({})), as a "
        "client-stream handler needs",
        name, methodName, declared->input_type()->name(), declared->output_type()->name()));
  }
}

}  // namespace snow::rpc
