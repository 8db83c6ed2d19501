// The portal's decoder of peers' bytes: frames, then the envelope in each. Whatever the input,
// it must end in frames, FrameError or EnvelopeError, never a crash or a hang; and an envelope
// that decodes must encode to JSON that decodes to the same envelope.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include <google/protobuf/util/message_differencer.h>

#include "frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  // The first byte chooses how the stream is chunked, as reads would cut it.
  const size_t chunk = 1 + data[0] % 17;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  snow::portal::FrameDecoder decoder(4096);
  try {
    for (size_t at = 0; at < input.size(); at += chunk) {
      decoder.feed(input.substr(at, chunk));
      while (auto frame = decoder.next()) {
        try {
          const auto envelope = snow::portal::decodeEnvelope(*frame);
          const auto again = snow::portal::decodeEnvelope(snow::portal::encodeEnvelope(envelope));
          if (!google::protobuf::util::MessageDifferencer::Equals(again, envelope)) {
            __builtin_trap();
          }
        } catch (const snow::portal::EnvelopeError&) {
        }
      }
    }
  } catch (const snow::portal::FrameError&) {
  }
  return 0;
}
