// Status codes: which are retryable, their names, and RpcError's message (status.h).

#include "snow/rpc/status.h"

#include <gtest/gtest.h>

namespace snow::rpc {
namespace {

TEST(StatusTest, OnlyUnavailableIsRetryableAndNamesAreGrpcs) {
  EXPECT_TRUE(retryable(Code::Unavailable));
  EXPECT_FALSE(retryable(Code::DeadlineExceeded));
  EXPECT_FALSE(retryable(Code::Internal));
  EXPECT_FALSE(retryable(Code::Unknown));
  EXPECT_EQ(codeName(Code::Ok), "OK");
  EXPECT_EQ(codeName(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
  EXPECT_EQ(codeName(Code::Unauthenticated), "UNAUTHENTICATED");
  EXPECT_EQ(codeName(static_cast<Code>(99)), "UNKNOWN");
  const RpcError error(Code::Unavailable, "connection refused", "/a.B/C", "unix:/x.sock");
  EXPECT_STREQ(error.what(), "/a.B/C on unix:/x.sock: UNAVAILABLE: connection refused");
  EXPECT_EQ(error.statusMessage(), "connection refused");
  EXPECT_EQ(error.code(), Code::Unavailable);
}

}  // namespace
}  // namespace snow::rpc
