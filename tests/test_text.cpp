// join (engine/text.h): the one way lists are written in messages and CSV rows.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "engine/text.h"

using kestrel::join;

TEST(Join, PutsTheSeparatorBetweenItemsOnly) {
  EXPECT_EQ(join(std::vector<std::string>{"a", "b", "c"}, ", "), "a, b, c");
  EXPECT_EQ(join(std::vector<std::string>{"only"}, ", "), "only");
  EXPECT_EQ(join(std::vector<std::string>{}, ", "), "");
  const char* keys[] = {"model", "batch"};
  EXPECT_EQ(join(keys, ","), "model,batch");
}

// A CSV row whose first field is empty keeps its comma (the "x.empty() ? "" :
// sep" idiom it replaced dropped it).
TEST(Join, EmptyItemsKeepTheirSeparators) {
  EXPECT_EQ(join(std::vector<std::string>{"", "b", ""}, ","), ",b,");
  EXPECT_EQ(join(std::vector<std::string>{"", ""}, ","), ",");
}

TEST(Join, TakesTheTextOfEachItemFromAFunction) {
  EXPECT_EQ(join(std::vector<int>{3, 1, 4}, "x", [](int v) { return std::to_string(v); }), "3x1x4");
  const std::map<std::string, int> counts = {{"Conv", 2}, {"Relu", 1}};
  EXPECT_EQ(join(counts, ", ", [](const auto& c) { return c.first + " " + std::to_string(c.second); }),
            "Conv 2, Relu 1");
}
