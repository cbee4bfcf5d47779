#include "core/packed_matrix.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "quant/panel.h"
#include "quant/quantize.h"
#include "runtime/aligned_buffer.h"
#include "runtime/thread_pool.h"

namespace linly {

namespace {
// bytes [0, size) into a new weight-arena block, the pages faulted in by every thread.
AlignedBuffer copy_to_arena(const uint8_t* bytes, int64_t size) {
  AlignedBuffer out = AlignedBuffer::weights(size);
  constexpr int64_t kPiece = 1 << 20;
  uint8_t* dst = out.data();
  global_pool()->parallel_for((size + kPiece - 1) / kPiece, [&](int64_t b, int64_t e) {
    const int64_t lo = b * kPiece, hi = e * kPiece < size ? e * kPiece : size;
    std::memcpy(dst + lo, bytes + lo, (size_t)(hi - lo));
  });
  return out;
}
}  // namespace

// Every matrix ends up in the weight arena, converted or not: there it sits on huge pages,
// back to back with the matrices loaded before it, where a file mapping has 4 KiB
// page-cache pages (paired decode runs, Zen 3, session 22: panels of a .linly file 1.03x
// copied, f16 rows 1.02-1.12x at two threads and 1.05x at one).
PackedMatrix::PackedMatrix(Format fmt, int64_t n, int64_t k, const uint8_t* bytes, const KernelTable& kernels,
                           Layout layout)
    : fmt_(fmt), n_(n), k_(k), kernels_(&kernels) {
  const bool want_panels = kernels.uses_panels && format_has_panels(fmt);
  const int64_t rb = row_bytes(fmt, k);
  if (want_panels && layout == Layout::Panels) {  // a .linly file's panels, as they are
    owned_ = copy_to_arena(bytes, panel_count(n) * panel_layout(fmt, n, k).panel_bytes);
    panels_ = owned_.data();
  } else if (want_panels) {  // rows repacked into panels
    owned_ = AlignedBuffer::weights(panel_count(n) * panel_layout(fmt, n, k).panel_bytes);
    uint8_t* out = owned_.data();
    global_pool()->parallel_for(panel_count(n), [&](int64_t p0, int64_t p1) {
      repack_to_panels(fmt, bytes, n, k, out, p0, p1);
    });
    panels_ = out;
  } else if (layout == Layout::Panels) {  // e.g. the scalar path given a panel-stored file
    owned_ = AlignedBuffer::weights(n * rb);
    unpack_from_panels(fmt, bytes, n, k, owned_.data());
    plain_ = owned_.data();
  } else {  // rows the kernels read as they are: dense formats, or any format on the scalar path
    owned_ = copy_to_arena(bytes, n * rb);
    plain_ = owned_.data();
  }
}

void PackedMatrix::dequantize_row(int64_t r, float* out) const {
  if (!input_order_.empty()) {  // stored columns → input positions
    thread_local std::vector<float> stored;
    stored.resize((size_t)k_);
    PackedMatrix::dequantize_stored_row(r, stored.data());
    for (int64_t j = 0; j < k_; ++j) out[input_order_[(size_t)j]] = stored[(size_t)j];
    return;
  }
  dequantize_stored_row(r, out);
}

void PackedMatrix::dequantize_stored_row(int64_t r, float* out) const {
  const int64_t rb = row_bytes(fmt_, k_);
  if (plain_) {
    linly::dequantize_row(fmt_, plain_ + r * rb, out, k_);
    return;
  }
  thread_local std::vector<uint8_t> row;
  if ((int64_t)row.size() < rb) row.resize(rb);
  panel_row_to_plain(fmt_, panels_, n_, k_, r, row.data());
  linly::dequantize_row(fmt_, row.data(), out, k_);
}

int64_t PackedMatrix::weight_bytes() const {
  return panels_ ? panel_count(n_) * panel_layout(fmt_, n_, k_).panel_bytes : n_ * row_bytes(fmt_, k_);
}

void quantize_activations(const KernelTable& kt, const float* x, int64_t m, int64_t k, block_q8_act* out) {
  const int64_t nb = k / QK;
  if (m * k < (1 << 16)) {  // decode-sized: not worth waking the pool
    for (int64_t i = 0; i < m; ++i) kt.quantize_act(x + i * k, out + i * nb, k);
    return;
  }
  global_pool()->parallel_for(m, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) kt.quantize_act(x + i * k, out + i * nb, k);
  });
}

std::string PackedMatrix::set_input_order(std::vector<int32_t> order) {
  if ((int64_t)order.size() != k_)
    return "input order has " + std::to_string(order.size()) + " entries, the matrix " + std::to_string(k_) + " inputs";
  std::vector<bool> seen((size_t)k_, false);
  for (int32_t i : order) {
    if (i < 0 || i >= k_ || seen[(size_t)i]) return "input order is not a permutation of 0.." + std::to_string(k_ - 1);
    seen[(size_t)i] = true;
  }
  input_order_ = std::move(order);
  return "";
}

namespace {
// x [m, k] as activation blocks, in a per-thread scratch that only grows: no allocation
// per token once the largest batch has been seen.
const block_q8_act* quantized_input(const KernelTable& kt, const float* x, int64_t m, int64_t k) {
  thread_local std::vector<block_q8_act> scratch;
  const size_t need = (size_t)(m * (k / QK));
  if (scratch.size() < need) scratch.resize(need);
  quantize_activations(kt, x, m, k, scratch.data());
  return scratch.data();
}

// x [1, k] rounded to f16 for f16 weights at decode (takes_f16_input), in a per-thread
// scratch; null when x must stay f32 because some value is beyond the f16 range.
const uint16_t* f16_input(const KernelTable& kt, const float* x, int64_t k) {
  thread_local std::vector<uint16_t> scratch;
  if (scratch.size() < (size_t)k) scratch.resize((size_t)k);
  return kt.round_act_f16(x, scratch.data(), k) ? scratch.data() : nullptr;
}

// x [m, k] laid out once for the table's matmul_f32 (KernelTable::prepare_prompt_input),
// the rows split over the pool, in a per-thread scratch that only grows; null when the
// table has no such step or no matrix here takes it.
const uint8_t* prompt_input(const KernelTable& kt, bool wanted, const float* x, int64_t m, int64_t k) {
  if (!wanted || !kt.prepare_prompt_input) return nullptr;
  thread_local AlignedBuffer scratch;
  const int64_t bytes = kt.prompt_input_bytes(m, k);
  if (scratch.size() < bytes) scratch = AlignedBuffer(bytes);
  uint8_t* out = scratch.data();
  global_pool()->parallel_for(kt.prompt_input_tiles(m),
                              [&](int64_t t0, int64_t t1) { kt.prepare_prompt_input(x, m, k, t0, t1, out); });
  return out;
}

// Prompt-sized f32 matmuls run long enough for a shared VM's cores to drift apart in
// speed, so their work goes to whichever thread is free (ThreadPool::
// parallel_for_dynamic, down to single panels at the end); decode-sized ones keep one
// fixed chunk per thread. A matmul over several matrices (matmul_shared_input) is cut
// into this many byte ranges per thread for it.
constexpr int64_t kSharedPiecesPerThread = 64;

bool f32_kernel(Activations act) { return act == Activations::F32 || act == Activations::Bf16Prompt; }

bool takes_f16_input(Format f, int64_t m, Activations act) { return !f32_kernel(act) && takes_f16_input(f, m); }

// Integer formats multiply quantised activation blocks unless F32 asks for the f32 prompt
// kernel; dense formats multiply x in f32 (or f16: f16_input above) either way.
bool takes_quantized_input(Format f, Activations act) {
  return format_info(f).integer_path && !f32_kernel(act);
}
}  // namespace

void PackedMatrix::matmul(const float* x, int64_t m, float* y, Activations act) const {
  thread_local std::vector<float> gathered;  // [m, k] inputs in stored column order
  if (!input_order_.empty()) {
    if (gathered.size() < (size_t)(m * k_)) gathered.resize((size_t)(m * k_));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k_; ++j) gathered[(size_t)(i * k_ + j)] = x[i * k_ + input_order_[(size_t)j]];
    x = gathered.data();
  }
  const KernelTable* kt = kernels_;
  const bool quantized = takes_quantized_input(fmt_, act);
  MatmulArgs a = quantized ? args(nullptr, quantized_input(*kt, x, m, k_), m, y, act) : args(x, nullptr, m, y, act);
  if (takes_f16_input(fmt_, m, act)) a.xh = f16_input(*kt, x, k_);
  if (!f32_kernel(act)) {
    global_pool()->parallel_for(units(), [&](int64_t b, int64_t e) { kt->matmul(a, b, e); });
    return;
  }
  a.xs = prompt_input(*kt, reads_prompt_input(), x, m, k_);
  const int64_t rows = f32_unit_rows();
  global_pool()->parallel_for_dynamic((units() + rows - 1) / rows, 1, [&](int64_t b, int64_t e) {
    kt->matmul_f32(a, b * rows, std::min(e * rows, units()));
  });
}

bool PackedMatrix::reads_prompt_input() const {
  if (!kernels_->prepare_prompt_input) return false;
  if (panels_) return format_info(fmt_).integer_path;
  return fmt_ == Format::F16 && kernels_->f16_prompt_input && k_ % QK == 0;
}

int64_t PackedMatrix::f32_unit_rows() const { return !panels_ && reads_prompt_input() ? kPanelRows : 1; }

MatmulArgs PackedMatrix::args(const float* x, const block_q8_act* xq, int64_t m, float* y, Activations act) const {
  MatmulArgs a{fmt_, panels_ ? panels_ : plain_, panels_ != nullptr, n_, k_, m, x, xq, y,
               act == Activations::Int8x2 || act == Activations::Int8x2Prompt};
  a.prompt = act == Activations::Int8x2Prompt;
  a.x_bf16 = act == Activations::Bf16Prompt;
  return a;
}

int64_t PackedMatrix::units() const { return panels_ ? panel_count(n_) : n_; }

void matmul_shared_input(const PackedMatrix* const* ws, float* const* ys, int count, const float* x, int64_t m,
                         Activations act) {
  bool together = count >= 2 && count <= kMaxSharedInput;
  for (int i = 0; i < count && together; ++i)
    together = ws[i]->input_order().empty() && &ws[i]->kernels() == &ws[0]->kernels() && ws[i]->k() == ws[0]->k();
  if (!together) {
    for (int i = 0; i < count; ++i) ws[i]->matmul(x, m, ys[i], act);
    return;
  }
  const KernelTable& kt = ws[0]->kernels();
  bool any_quantized = false, any_f16 = false;
  for (int i = 0; i < count; ++i) {
    any_quantized |= takes_quantized_input(ws[i]->format(), act);
    any_f16 |= takes_f16_input(ws[i]->format(), m, act);
  }
  const block_q8_act* xq = any_quantized ? quantized_input(kt, x, m, ws[0]->k()) : nullptr;
  const uint16_t* xh = any_f16 ? f16_input(kt, x, ws[0]->k()) : nullptr;
  bool any_prompt_input = false;  // a matrix whose f32 kernel reads the prompt input
  for (int i = 0; i < count; ++i) any_prompt_input |= f32_kernel(act) && ws[i]->reads_prompt_input();
  const uint8_t* xs = prompt_input(kt, any_prompt_input, x, m, ws[0]->k());
  struct Part {
    MatmulArgs args;
    void (*run)(const MatmulArgs&, int64_t, int64_t);
    int64_t units, unit_rows, kernel_units;  // units of unit_rows kernel units (the last one may be short)
    double first_byte, unit_bytes;  // where it starts in the job's weight bytes, a unit's share
  } parts[kMaxSharedInput];
  double total = 0;
  for (int i = 0; i < count; ++i) {
    const PackedMatrix& w = *ws[i];
    const bool quantized = takes_quantized_input(w.format(), act);  // as PackedMatrix::matmul
    parts[i].args = w.args(quantized ? nullptr : x, quantized ? xq : nullptr, m, ys[i], act);
    if (takes_f16_input(w.format(), m, act)) parts[i].args.xh = xh;
    parts[i].args.xs = xs;
    parts[i].run = f32_kernel(act) ? kt.matmul_f32 : kt.matmul;
    parts[i].unit_rows = f32_kernel(act) ? w.f32_unit_rows() : 1;
    parts[i].kernel_units = w.units();
    parts[i].units = (w.units() + parts[i].unit_rows - 1) / parts[i].unit_rows;
    parts[i].first_byte = total;
    parts[i].unit_bytes = (double)w.weight_bytes() / (double)parts[i].units;
    total += (double)w.weight_bytes();
  }
  // Chunk c of nc covers bytes [c, c+1) · total/nc; unit u of part i belongs to the chunk
  // its first byte falls in, so the chunks tile every part exactly.
  const bool dynamic = f32_kernel(act);
  const int nc = global_pool()->size() * (dynamic ? (int)kSharedPiecesPerThread : 1);
  const auto first_unit = [&](const Part& p, int c) {
    const double at = total * c / nc - p.first_byte;
    const int64_t u = at <= 0 ? 0 : (int64_t)std::ceil(at / p.unit_bytes);
    return u < p.units ? u : p.units;
  };
  const auto chunks = [&](int64_t c0, int64_t c1) {
    for (int i = 0; i < count; ++i) {
      const int64_t b = first_unit(parts[i], (int)c0), e = first_unit(parts[i], (int)c1);
      const Part& q = parts[i];
      if (b < e) q.run(q.args, b * q.unit_rows, std::min(e * q.unit_rows, q.kernel_units));
    }
  };
  if (dynamic) global_pool()->parallel_for_dynamic(nc, 1, chunks);
  else global_pool()->parallel_for(nc, chunks);
}

}  // namespace linly
