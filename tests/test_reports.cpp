#include <stb_image.h>

#include <cstdio>
#include <cstring>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "tools/lib/metrics.h"
#include "tools/lib/plot.h"
#include "tools/lib/report.h"
#include "tools/lib/results_table.h"
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

TEST(Metrics, MacroAveragesSkipClassesWithNeitherLabelsNorPredictions) {
  // 10 classes, 3 images (eval --limit 3): labels 0, 1, 2 predicted as 0, 1, 1.
  // As scikit-learn's default, the means run over classes 0-2 only.
  std::vector<float> v(30, 0.0f);
  v[0] = v[10 + 1] = v[20 + 1] = 5.0f;
  ClassificationMetrics m(10);
  m.update(Tensor::from_vector(v, {3, 10}), Tensor::from_vector_i64({0, 1, 2}, {3}));
  EXPECT_EQ(m.macro_class_count(), 3);
  EXPECT_DOUBLE_EQ(m.macro_precision(), (1.0 + 0.5 + 0.0) / 3);
  EXPECT_DOUBLE_EQ(m.macro_recall(), (1.0 + 1.0 + 0.0) / 3);
  EXPECT_NEAR(m.macro_f1(), (1.0 + 2 * 0.5 * 1.0 / 1.5 + 0.0) / 3, 1e-12);
  // A class only predicted counts too: its precision is 0.
  v[20 + 1] = 0.0f;
  v[20 + 7] = 5.0f;
  ClassificationMetrics p(10);
  p.update(Tensor::from_vector(v, {3, 10}), Tensor::from_vector_i64({0, 1, 2}, {3}));
  EXPECT_EQ(p.macro_class_count(), 4);
  EXPECT_DOUBLE_EQ(p.macro_precision(), (1.0 + 1.0 + 0.0 + 0.0) / 4);
  EXPECT_EQ(ClassificationMetrics(4).macro_f1(), 0.0) << "no images: no classes, no mean";
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

namespace {

// The protobuf fields of one message, as TensorBoard reads them: varints,
// 8- and 4-byte fixed values and length-delimited bytes, by field number.
struct ProtoField {
  int number = 0, wire = 0;
  uint64_t varint = 0;
  std::string bytes;  // wire 1, 2 and 5: the raw bytes
};

std::vector<ProtoField> parse_proto(const std::string& msg) {
  std::vector<ProtoField> fields;
  size_t pos = 0;
  auto varint = [&]() {
    uint64_t v = 0;
    for (int shift = 0; pos < msg.size(); shift += 7) {
      const auto b = static_cast<uint8_t>(msg[pos++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ADD_FAILURE() << "a varint runs past the message's end";
    return v;
  };
  while (pos < msg.size()) {
    ProtoField f;
    const uint64_t key = varint();
    f.number = static_cast<int>(key >> 3);
    f.wire = static_cast<int>(key & 7);
    size_t n = 0;
    if (f.wire == 0) f.varint = varint();
    else if (f.wire == 1) n = 8;
    else if (f.wire == 5) n = 4;
    else if (f.wire == 2) n = static_cast<size_t>(varint());
    else ADD_FAILURE() << "wire type " << f.wire << " is not one an Event uses";
    if (pos + n > msg.size()) {
      ADD_FAILURE() << "field " << f.number << " runs past the message's end";
      break;
    }
    f.bytes = msg.substr(pos, n);
    pos += n;
    fields.push_back(f);
  }
  return fields;
}

const ProtoField* field(const std::vector<ProtoField>& fields, int number) {
  for (const ProtoField& f : fields)
    if (f.number == number) return &f;
  return nullptr;
}

uint32_t masked_crc(const std::string& bytes, size_t pos, size_t n) {
  const uint32_t c = crc32c(reinterpret_cast<const uint8_t*>(bytes.data() + pos), n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

}  // namespace

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
  std::vector<std::string> events;
  while (pos < bytes.size()) {
    ASSERT_LE(pos + 12, bytes.size());
    uint64_t len;
    std::memcpy(&len, bytes.data() + pos, 8);
    uint32_t len_crc, data_crc;
    std::memcpy(&len_crc, bytes.data() + pos + 8, 4);
    EXPECT_EQ(len_crc, masked_crc(bytes, pos, 8)) << "record " << events.size();
    ASSERT_LE(pos + 12 + len + 4, bytes.size());
    std::memcpy(&data_crc, bytes.data() + pos + 12 + len, 4);
    EXPECT_EQ(data_crc, masked_crc(bytes, pos + 12, len)) << "record " << events.size() << ": payload CRC";
    events.push_back(bytes.substr(pos + 12, len));
    pos += 12 + len + 4;
  }
  EXPECT_EQ(pos, bytes.size());
  ASSERT_EQ(events.size(), 3u);  // version header + two scalars
  const std::vector<ProtoField> header = parse_proto(events[0]);
  const ProtoField* version = field(header, 3);  // Event.file_version
  ASSERT_NE(version, nullptr);
  EXPECT_EQ(version->bytes, "brain.Event:2");
  const double values[] = {0.5, 0.25};
  for (int k = 1; k <= 2; ++k) {
    const std::vector<ProtoField> event = parse_proto(events[static_cast<size_t>(k)]);
    const ProtoField* step = field(event, 2);
    const ProtoField* summary = field(event, 5);
    ASSERT_TRUE(step && summary) << "event " << k << " lacks its step or summary";
    EXPECT_EQ(step->varint, static_cast<uint64_t>(k));
    const std::vector<ProtoField> values_of_summary = parse_proto(summary->bytes);
    const ProtoField* value = field(values_of_summary, 1);  // Summary.value
    ASSERT_NE(value, nullptr);
    const std::vector<ProtoField> v = parse_proto(value->bytes);
    const ProtoField* tag = field(v, 1);
    const ProtoField* simple = field(v, 2);
    ASSERT_TRUE(tag && simple && simple->wire == 5) << "event " << k << ": no tag or float simple_value";
    EXPECT_EQ(tag->bytes, "train/loss");
    float x;
    std::memcpy(&x, simple->bytes.data(), 4);
    EXPECT_EQ(x, values[k - 1]);
  }
}

// A resumed run's writer marks where it logs again from: an Event at that
// step holding SessionLog { status: START }, which TensorBoard purges after.
TEST(TensorBoard, RestartWritesASessionLogStartAtItsStep) {
  std::string path;
  {
    TensorBoardWriter w(kestrel::testing::temp_path("tb_restart"));
    w.restart_at(3);
    path = w.path();
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> payloads;
  for (size_t pos = 0; pos + 12 <= bytes.size();) {
    uint64_t len;
    std::memcpy(&len, bytes.data() + pos, 8);
    payloads.push_back(bytes.substr(pos + 12, len));
    pos += 12 + len + 4;
  }
  ASSERT_EQ(payloads.size(), 2u);  // version header + the restart
  // wall_time (tag 0x09 + 8 bytes), step (0x10, varint 3), session_log (0x3a, 2 bytes: status 0x08 = START 1).
  EXPECT_EQ(payloads[1].substr(9), std::string("\x10\x03\x3a\x02\x08\x01", 6));
}

namespace {

EvalReport two_class_report() {
  EvalReport r;
  r.model = "cifar10_200k";
  r.dataset = "folder";
  r.classes = {"c|d", "Straße"};
  r.images = 3;
  r.support = {2, 1};
  r.per_class_accuracy = r.precision = r.recall = r.f1 = {1.0, 1.0};
  r.confusion = {{2, 0}, {0, 1}};
  r.macro_classes = 2;
  return r;
}

// The cells of a Markdown table row: split at | not escaped as \|.
std::vector<std::string> markdown_cells(const std::string& row) {
  std::vector<std::string> cells(1);
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] == '|' && (i == 0 || row[i - 1] != '\\'))
      cells.emplace_back();
    else
      cells.back() += row[i];
  }
  return cells;
}

}  // namespace

TEST(Report, MarkdownTablesEscapePipesInClassNames) {
  const std::string md = report_markdown(two_class_report());
  std::stringstream lines(md);
  size_t columns = 0;
  int rows = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '|') {
      columns = 0;  // the next table starts
      continue;
    }
    const size_t n = markdown_cells(line).size();
    if (columns == 0) columns = n;
    EXPECT_EQ(n, columns) << "a row of another width than its table's header: " << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3 + 4);  // header, rule, model; header, rule, 2 classes
  EXPECT_NE(md.find("| c\\|d | 2 |"), std::string::npos) << md;
}

// kestrel table: a run or data set named with a | keeps the table's columns.
TEST(Report, ResultsTableEscapesPipesInNames) {
  tools::ResultsRow row;
  row.run = "a|b";
  row.model = "cifar10_200k";
  row.dataset = "folder|x";
  row.device = "cpu";
  const std::string md = tools::results_table_markdown({row});
  const std::string last = md.substr(md.rfind('\n', md.size() - 2) + 1);
  EXPECT_NE(last.find("| a\\|b |"), std::string::npos) << last;
  EXPECT_NE(last.find("folder\\|x"), std::string::npos) << last;
}

TEST(Report, UntimedEvalLeavesOutLatencyAndThroughput) {
  EvalReport r = two_class_report();
  const std::string untimed = report_markdown(r);
  EXPECT_EQ(untimed.find("Throughput"), std::string::npos) << untimed;
  EXPECT_EQ(untimed.find("b=0"), std::string::npos) << untimed;
  EXPECT_NE(untimed.find("latency and throughput not measured"), std::string::npos) << untimed;
  r.latency_iters = 5;
  r.latency_median_ms = 1.5;
  r.throughput_batch = 16;
  r.throughput = 900;
  const std::string timed = report_markdown(r);
  EXPECT_NE(timed.find("| Latency b=1 (ms, median / p95) | Throughput (img/s, b=16) |"), std::string::npos) << timed;
  EXPECT_NE(timed.find("| 1.50 / 0.00 | 900 |"), std::string::npos) << timed;
}

TEST(Report, MacroAveragesSayWhichClassesTheyCover) {
  EvalReport r = two_class_report();
  r.classes.push_back("unseen");  // no images, no predictions
  r.support.push_back(0);
  for (std::vector<double>* v : {&r.per_class_accuracy, &r.precision, &r.recall, &r.f1}) v->push_back(0.0);
  for (auto& row : r.confusion) row.push_back(0);
  r.confusion.push_back({0, 0, 0});
  const std::string md = report_markdown(r);
  EXPECT_NE(md.find("Macro averages over the 2 of 3 classes present in the labels or the predictions"),
            std::string::npos)
      << md;
  EXPECT_EQ(report_json(r)["macro_classes"].get<int64_t>(), 2);
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

TEST(Plot, HeatmapLabelsTheColumnsAsWellAsTheRows) {
  // Row labels sit left of the grid (x < 90); anything the labels change to
  // the right of that is a column label.
  const std::string named = kestrel::testing::temp_path("named.png"), bare = kestrel::testing::temp_path("bare.png");
  write_heatmap(named, {{5, 1}, {0, 6}}, {"cat", "dog"}, "confusion");
  write_heatmap(bare, {{5, 1}, {0, 6}}, {"", ""}, "confusion");
  int w1, h1, w2, h2, c;
  unsigned char* a = stbi_load(named.c_str(), &w1, &h1, &c, 3);
  unsigned char* b = stbi_load(bare.c_str(), &w2, &h2, &c, 3);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(w1, w2);
  ASSERT_EQ(h1, h2);
  int differ_right = 0;
  for (int y = 0; y < h1; ++y)
    for (int x = 90; x < w1; ++x) differ_right += std::memcmp(a + (y * w1 + x) * 3, b + (y * w1 + x) * 3, 3) != 0;
  stbi_image_free(a);
  stbi_image_free(b);
  EXPECT_GT(differ_right, 20) << "no column labels drawn";
}
