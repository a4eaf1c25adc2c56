#include "tools/lib/plot.h"

#include <stb_easy_font.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "engine/error.h"

namespace kestrel::tools {

namespace {

struct Color {
  uint8_t r, g, b;
};

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(w) * h * 3, 255) {}
  void set(int x, int y, Color c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &px_[(static_cast<size_t>(y) * w_ + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void rect(int x0, int y0, int x1, int y1, Color c) {
    for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y)
      for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
  }
  void line(int x0, int y0, int x1, int y1, Color c, int thick = 1) {
    const int steps = std::max(std::abs(x1 - x0), std::abs(y1 - y0)) + 1;
    for (int i = 0; i <= steps; ++i) {
      const int x = x0 + (x1 - x0) * i / steps, y = y0 + (y1 - y0) * i / steps;
      rect(x - thick / 2, y - thick / 2, x + thick / 2, y + thick / 2, c);
    }
  }
  void text(int x, int y, const std::string& s, Color c, int scale = 1) {
    for_each_glyph_quad(s, [&](int qx0, int qy0, int qx1, int qy1) {
      rect(x + qx0 * scale, y + qy0 * scale, x + qx1 * scale - 1, y + qy1 * scale - 1, c);
    });
  }
  // The same text turned a quarter turn anticlockwise (read bottom to top),
  // starting at (x, y) and rising from there: for column labels.
  void text_up(int x, int y, const std::string& s, Color c) {
    for_each_glyph_quad(s, [&](int qx0, int qy0, int qx1, int qy1) {
      rect(x + qy0, y - qx1 + 1, x + qy1 - 1, y - qx0, c);
    });
  }
  static int text_width(const std::string& s) { return stb_easy_font_width(const_cast<char*>(s.c_str())); }
  void save(const std::string& path) const {
    if (!stbi_write_png(path.c_str(), w_, h_, 3, px_.data(), w_ * 3))
      throw IOError("cannot write PNG " + path);
  }

 private:
  // stb_easy_font emits quads (4 vertices of x,y,z,color = 16 bytes each);
  // f(x0, y0, x1, y1) gets each one's corners.
  template <typename F>
  static void for_each_glyph_quad(const std::string& s, F f) {
    static char buffer[99999];
    const int quads = stb_easy_font_print(0, 0, const_cast<char*>(s.c_str()), nullptr, buffer, sizeof(buffer));
    for (int q = 0; q < quads; ++q) {
      const float* v = reinterpret_cast<const float*>(buffer + q * 64);
      f(static_cast<int>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[8]), static_cast<int>(v[9]));
    }
  }

  int w_, h_;
  std::vector<uint8_t> px_;
};

const Color kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189}};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), std::abs(v) >= 100 || v == std::floor(v) ? "%.0f" : "%.3g", v);
  return buf;
}

void draw_panel(Canvas& cv, int ox, int oy, int w, int h, const Panel& panel) {
  const int left = 50, right = 10, top = 25, bottom = 30;
  const Color axis{60, 60, 60}, grid{225, 225, 225};
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  for (const Series& s : panel.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  if (xmin > xmax) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + 1;
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad;
  ymax += pad;
  const int px0 = ox + left, px1 = ox + w - right, py0 = oy + top, py1 = oy + h - bottom;
  auto X = [&](double x) { return px0 + static_cast<int>((x - xmin) / (xmax - xmin) * (px1 - px0)); };
  auto Y = [&](double y) { return py1 - static_cast<int>((y - ymin) / (ymax - ymin) * (py1 - py0)); };
  for (int i = 0; i <= 4; ++i) {
    const double yv = ymin + (ymax - ymin) * i / 4;
    cv.line(px0, Y(yv), px1, Y(yv), grid);
    cv.text(ox + 4, Y(yv) - 4, fmt(yv), axis);
    const double xv = xmin + (xmax - xmin) * i / 4;
    cv.text(X(xv) - 6, py1 + 8, fmt(xv), axis);
  }
  cv.line(px0, py0, px0, py1, axis);
  cv.line(px0, py1, px1, py1, axis);
  cv.text(px0 + (px1 - px0) / 2 - Canvas::text_width(panel.title), oy + 6, panel.title, axis, 2);
  int legend_y = py0 + 4;
  for (size_t k = 0; k < panel.series.size(); ++k) {
    const Series& s = panel.series[k];
    const Color c = kPalette[k % 5];
    for (size_t i = 1; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.y[i - 1]) && std::isfinite(s.y[i]))
        cv.line(X(s.x[i - 1]), Y(s.y[i - 1]), X(s.x[i]), Y(s.y[i]), c, 2);
    if (s.x.size() == 1) cv.rect(X(s.x[0]) - 2, Y(s.y[0]) - 2, X(s.x[0]) + 2, Y(s.y[0]) + 2, c);
    cv.rect(px1 - 90, legend_y + 2, px1 - 80, legend_y + 6, c);
    cv.text(px1 - 76, legend_y, s.label, axis);
    legend_y += 12;
  }
}

}  // namespace

void write_line_chart(const std::string& path, const std::vector<Panel>& panels) {
  const int pw = 420, ph = 300;
  Canvas cv(pw * static_cast<int>(std::max<size_t>(panels.size(), 1)), ph);
  for (size_t i = 0; i < panels.size(); ++i) draw_panel(cv, static_cast<int>(i) * pw, 0, pw, ph, panels[i]);
  cv.save(path);
}

void write_heatmap(const std::string& path, const std::vector<std::vector<long long>>& counts,
                   const std::vector<std::string>& labels, const std::string& title) {
  const int n = static_cast<int>(counts.size());
  const int cell = std::max(8, std::min(40, 600 / std::max(n, 1)));
  const bool named = cell >= 10;  // room for a line of text per row and column
  // Row labels on the left, column labels above the grid, read upwards; 14 characters fit either.
  const int label_w = 90, top = named ? 30 + label_w : 40;
  const std::string heading = title + " (rows: true, columns: predicted)";
  Canvas cv(label_w + std::max(n * cell, Canvas::text_width(heading)) + 20, top + n * cell + 20);
  cv.text(label_w, 10, heading, Color{40, 40, 40});
  for (int p = 0; p < n && named && p < static_cast<int>(labels.size()); ++p)
    cv.text_up(label_w + p * cell + cell / 2 - 4, top - 5, labels[p].substr(0, 14), Color{40, 40, 40});
  for (int t = 0; t < n; ++t) {
    long long row_sum = 0;
    for (long long v : counts[t]) row_sum += v;
    if (t < static_cast<int>(labels.size()) && named)
      cv.text(4, top + t * cell + cell / 2 - 3, labels[t].substr(0, 14), Color{40, 40, 40});
    for (int p = 0; p < n; ++p) {
      const double frac = row_sum ? static_cast<double>(counts[t][p]) / row_sum : 0.0;
      const uint8_t shade = static_cast<uint8_t>(255 - 220 * frac);
      cv.rect(label_w + p * cell, top + t * cell, label_w + (p + 1) * cell - 2, top + (t + 1) * cell - 2,
              Color{shade, shade, 255});
      if (cell >= 30) {
        const std::string s = std::to_string(counts[t][p]);
        cv.text(label_w + p * cell + 3, top + t * cell + cell / 2 - 3, s, frac > 0.5 ? Color{255, 255, 255} : Color{0, 0, 0});
      }
    }
  }
  cv.save(path);
}

}  // namespace kestrel::tools
