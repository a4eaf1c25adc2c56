#include <stb_image.h>

#include <cstdio>
#include <fstream>

#include "test_util.h"
#include "tools/lib/metrics.h"
#include "tools/lib/plot.h"
#include "tools/lib/tb_writer.h"

using namespace kestrel;
using namespace kestrel::tools;

TEST(Metrics, TopKPrecisionRecallAndConfusionMatchHandCounts) {
  // 3 classes, 4 samples: predictions 0, 1, 1, 2 for labels 0, 1, 2, 2.
  Tensor logits = Tensor::from_vector({5, 1, 0,  0, 4, 1,  0, 3, 2,  1, 0, 6}, {4, 3});
  Tensor labels = Tensor::from_vector_i64({0, 1, 2, 2}, {4});
  ClassificationMetrics m(3);
  m.update(logits, labels);
  EXPECT_DOUBLE_EQ(m.top1(), 0.75);
  EXPECT_DOUBLE_EQ(m.top5(), 1.0);
  EXPECT_EQ(m.confusion()[2][1], 1);
  EXPECT_EQ(m.confusion()[2][2], 1);
  EXPECT_DOUBLE_EQ(m.precision()[1], 0.5);
  EXPECT_DOUBLE_EQ(m.recall()[2], 0.5);
  EXPECT_NEAR(m.macro_f1(), (1.0 + 2 * 0.5 * 1.0 / 1.5 + 2 * 1.0 * 0.5 / 1.5) / 3, 1e-12);
  EXPECT_THROW(m.update(logits, Tensor::from_vector_i64({0, 1, 3, 2}, {4})), ValueError);
}

TEST(Metrics, LatencyStatsGiveMedianAndP95) {
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  const LatencyStats s = latency_stats(v);
  EXPECT_DOUBLE_EQ(s.median, 50.5);
  EXPECT_DOUBLE_EQ(s.p95, 95.0);
}

TEST(TensorBoard, Crc32cMatchesTheStandardCheckValue) {
  const char* s = "123456789";
  EXPECT_EQ(crc32c(reinterpret_cast<const uint8_t*>(s), 9), 0xE3069283u);
}

TEST(TensorBoard, EventFileIsAValidRecordStream) {
  std::string path;
  {
    TensorBoardWriter w(kestrel::testing::temp_path("tb"));
    w.add_scalar("train/loss", 0.5, 1);
    w.add_scalar("train/loss", 0.25, 2);
    path = w.path();
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t pos = 0;
  int records = 0;
  while (pos < bytes.size()) {
    ASSERT_LE(pos + 12, bytes.size());
    uint64_t len;
    std::memcpy(&len, bytes.data() + pos, 8);
    uint32_t len_crc;
    std::memcpy(&len_crc, bytes.data() + pos + 8, 4);
    const uint32_t c = crc32c(reinterpret_cast<const uint8_t*>(bytes.data() + pos), 8);
    EXPECT_EQ(len_crc, ((c >> 15) | (c << 17)) + 0xa282ead8u);
    pos += 12 + len + 4;
    ++records;
  }
  EXPECT_EQ(pos, bytes.size());
  EXPECT_EQ(records, 3);  // version header + two scalars
  EXPECT_NE(bytes.find("train/loss"), std::string::npos);
}

TEST(Plot, LineChartAndHeatmapAreReadablePngs) {
  const std::string chart = kestrel::testing::temp_path("curves.png");
  write_line_chart(chart, {{"loss", {{"train", {1, 2, 3}, {1.0, 0.6, 0.4}}, {"val", {1, 2, 3}, {1.1, 0.8, 0.7}}}},
                           {"accuracy", {{"val", {1, 2, 3}, {0.5, 0.7, 0.8}}}}});
  int w, h, c;
  unsigned char* px = stbi_load(chart.c_str(), &w, &h, &c, 3);
  ASSERT_NE(px, nullptr);
  EXPECT_EQ(w, 840);
  long dark = 0;
  for (int i = 0; i < w * h * 3; ++i) dark += px[i] < 128;
  EXPECT_GT(dark, 500);  // axes, text and lines were drawn
  stbi_image_free(px);
  const std::string heat = kestrel::testing::temp_path("confusion.png");
  write_heatmap(heat, {{5, 1}, {0, 6}}, {"cat", "dog"}, "confusion");
  px = stbi_load(heat.c_str(), &w, &h, &c, 3);
  ASSERT_NE(px, nullptr);
  stbi_image_free(px);
  EXPECT_THROW(write_line_chart("/nonexistent-dir/x.png", {}), IOError);
}
