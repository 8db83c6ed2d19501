// A plugin that needs a symbol nothing defines: dlopen(RTLD_NOW) must refuse it up front.
extern "C" int snowTestNowhere();
extern "C" __attribute__((visibility("default"))) int snowTestCallsNowhere() {
  return snowTestNowhere();
}
