// A shared object with a snow_plugin_descriptor that does not match this snow-core: another
// plugin API version (FAKE_API_VERSION) or, with FAKE_OTHER_ABI, another ABI signature.

#include "snow/core/module.h"

namespace {
void registerNothing(snow::ModuleRegistry*, const char*) {}

#ifdef FAKE_OTHER_ABI
constexpr const char* kAbi = "snow-core 0.0.1; g++ 99.0; libstdc++ cxx11-abi 0; C++ 201703";
#else
constexpr const char* kAbi = SNOW_ABI_SIGNATURE;
#endif
}  // namespace

extern "C" __attribute__((visibility("default")))
const snow::SnowPluginDescriptor snow_plugin_descriptor = {snow::kPluginMagic, FAKE_API_VERSION,
                                                           kAbi, &registerNothing};
