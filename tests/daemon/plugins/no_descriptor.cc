// A well-formed shared object that is no snow-core plugin.
extern "C" __attribute__((visibility("default"))) int snowTestNotAPlugin() {
  return 42;
}
