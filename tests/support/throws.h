#pragma once

// What a call throws, for tests that check a refusal's message.

#include <functional>
#include <stdexcept>
#include <string>

namespace snow::testing {

// The what() of the std::logic_error `f` throws, or "" when it throws nothing.
inline std::string logicErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::logic_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace snow::testing
