// Minimal PNG charts: training curves and a confusion-matrix heatmap.
#pragma once
#include <string>
#include <vector>

namespace kestrel::tools {

struct Series {
  std::string label;
  std::vector<double> x, y;
};

struct Panel {
  std::string title;
  std::vector<Series> series;
};

// Panels side by side in one PNG; throws IOError when the file cannot be written.
void write_line_chart(const std::string& path, const std::vector<Panel>& panels);
// Row-normalized heatmap of counts[true][pred] with class labels.
void write_heatmap(const std::string& path, const std::vector<std::vector<long long>>& counts,
                   const std::vector<std::string>& labels, const std::string& title);

}  // namespace kestrel::tools
