// Making packed weights from numpy, and the scalar reference kernels for tests.
#include <vector>

#include "bindings/common.h"
#include "core/packed_matrix.h"
#include "quant/matmul_ref.h"
#include "quant/panel.h"
#include "quant/fp16.h"
#include "quant/quantize.h"

#include <cmath>
#include "runtime/thread_pool.h"

namespace linly::py_bind {

namespace {
py::array_t<uint8_t> quantize_np(const py::array& w, const std::string& fmt_name) {
  const Format fmt = parse_format_or_throw(fmt_name);
  require_f32(w, "w", 2, 2);
  const int64_t n = w.shape(0), k = w.shape(1);
  require_k(fmt, k);
  const int64_t rb = row_bytes(fmt, k);
  py::array_t<uint8_t> out({n, rb});
  const float* src = static_cast<const float*>(w.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    global_pool()->parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) quantize_row(fmt, src + r * k, dst + r * rb, k);
    });
  }
  return out;
}

py::array_t<float> dequantize_np(const py::array& data, const std::string& fmt_name, int64_t k) {
  const Format fmt = parse_format_or_throw(fmt_name);
  require_packed_rows(data, fmt, k);
  const int64_t n = data.shape(0), rb = row_bytes(fmt, k);
  py::array_t<float> out({n, k});
  const uint8_t* src = static_cast<const uint8_t*>(data.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    global_pool()->parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) dequantize_row(fmt, src + r * rb, dst + r * k, k);
    });
  }
  return out;
}
}  // namespace

void bind_quant(py::module_& m) {
  m.def("formats", [] {
    std::vector<std::string> v;
    for (int i = 0; i < (int)Format::kCount; ++i) v.push_back(format_info((Format)i).name);
    return v;
  }, "Names of the weight formats.");

  m.def("format_info", [](const std::string& name) {
    const FormatInfo& fi = format_info(parse_format_or_throw(name));
    py::dict d;
    d["name"] = fi.name;
    d["block_elems"] = fi.block_elems;
    d["block_bytes"] = fi.block_bytes;
    d["bits_per_weight"] = 8.0 * fi.block_bytes / fi.block_elems;
    d["integer_path"] = fi.integer_path;
    return d;
  }, py::arg("fmt"));

  m.def("row_bytes", [](const std::string& name, int64_t k) {
    const Format f = parse_format_or_throw(name);
    require_k(f, k);
    return row_bytes(f, k);
  }, py::arg("fmt"), py::arg("k"));

  m.def("quantize", &quantize_np, py::arg("w"), py::arg("fmt"),
        "f32 [n, k] -> uint8 [n, bytes_per_row] in the on-disk layout of `fmt`.");
  m.def("dequantize", &dequantize_np, py::arg("data"), py::arg("fmt"), py::arg("k"),
        "uint8 [n, bytes_per_row] of `fmt` -> f32 [n, k].");

  m.def("quantize_activations", [](const py::array& x, const py::object& isa) {
    require_f32(x, "x", 2, 2);
    const int64_t mm = x.shape(0), k = x.shape(1);
    require_k(Format::Q8_0, k);
    const KernelTable& kt = kernels_or_default(isa);
    py::array_t<uint8_t> out({mm, (int64_t)(k / QK * sizeof(block_q8_act))});
    const float* src = static_cast<const float*>(x.data());
    auto* dst = reinterpret_cast<block_q8_act*>(out.mutable_data());
    {
      py::gil_scoped_release nogil;
      quantize_activations(kt, src, mm, k, dst);
    }
    return out;
  }, py::arg("x"), py::arg("isa") = py::none(),
     "Activation blocks (f32 d, i32 sum, 32 x i8) as the integer kernels see them; for tests.");

  m.def("round_activations_f16", [](const py::array& x, const py::object& isa) -> py::object {
    require_f32(x, "x", 1, 1);
    const KernelTable& kt = kernels_or_default(isa);
    const int64_t k = x.shape(0);
    py::array_t<uint16_t> out(k);
    bool in_range;
    {
      py::gil_scoped_release nogil;
      in_range = kt.round_act_f16(static_cast<const float*>(x.data()), out.mutable_data(), k);
    }
    if (!in_range) return py::none();
    return std::move(out);
  }, py::arg("x"), py::arg("isa") = py::none(),
     "x rounded to f16 bits as an f16 decode matmul sees it, or None when some |x| is beyond "
     "the f16 range (the matmul then keeps x in f32); for tests.");

  m.def("matmul_ref", [](const py::array& x, const py::array& data, const std::string& fmt_name, int64_t k,
                         bool precise, bool f32_activations) {
    const Format fmt = parse_format_or_throw(fmt_name);
    require_packed_rows(data, fmt, k);
    require_f32(x, "x", 2, 2);
    if (x.shape(1) != k)
      throw py::value_error("x has shape " + shape_str(x) + " but the weights have k=" + std::to_string(k));
    const int64_t mm = x.shape(0), n = data.shape(0);
    py::array_t<float> y({mm, n});
    std::vector<block_q8_act> xq;
    std::vector<uint16_t> xh;
    MatmulArgs a{fmt, static_cast<const uint8_t*>(data.data()), false, n, k, mm,
                 static_cast<const float*>(x.data()), nullptr, y.mutable_data(), precise};
    {
      py::gil_scoped_release nogil;
      if (format_info(fmt).integer_path && !f32_activations) {
        xq.resize((size_t)(mm * (k / QK)));
        for (int64_t i = 0; i < mm; ++i) quantize_row_act_ref(a.x + i * k, xq.data() + i * (k / QK), k);
        a.xq = xq.data();
        a.x = nullptr;
      }
      if (takes_f16_input(fmt, mm) && !f32_activations) {  // as PackedMatrix::matmul
        xh.resize((size_t)k);
        if (round_act_f16_ref(a.x, xh.data(), k)) a.xh = xh.data();
      }
      matmul_ref(a, 0, n);
    }
    return y;
  }, py::arg("x"), py::arg("data"), py::arg("fmt"), py::arg("k"), py::arg("precise") = false,
     py::arg("f32_activations") = false,
     "Single-threaded scalar reference of y = x · Wᵀ on the on-disk layout. f32_activations: x "
     "unquantised against the dequantised weights (the reference of matmul(activations='f32')).");

  m.def("attention_head", [](const py::array& q, const py::array& k, const py::array& v, const py::object& isa,
                             const std::string& cache) {
    require_f32(q, "q", 1, 1);
    require_f32(k, "k", 2, 2);
    require_f32(v, "v", 2, 2);
    const int64_t hd = q.shape(0), len = k.shape(0);
    if (k.shape(1) != hd || v.shape(0) != len || v.shape(1) != hd || len < 1)
      throw py::value_error("need q [hd], k and v [len >= 1, hd]; got " + shape_str(q) + ", " + shape_str(k) + ", " +
                            shape_str(v));
    const KernelTable& kt = kernels_or_default(isa);
    py::array_t<float> out(hd);
    std::vector<float> scores((size_t)len);
    const float* qp = static_cast<const float*>(q.data());
    const float* kp = static_cast<const float*>(k.data());
    const float* vp = static_cast<const float*>(v.data());
    const float scale = 1.0f / std::sqrt((float)hd);
    if (cache == "q8_0") {
      if (hd % QK != 0) throw py::value_error("a q8_0 cache needs hd % 32 == 0, got hd = " + std::to_string(hd));
      std::vector<block_q8_0> kq((size_t)(len * hd / QK)), vq(kq.size());
      quantize_row_q8_0_amax(kp, kq.data(), len * hd);
      quantize_row_q8_0_amax(vp, vq.data(), len * hd);
      kt.attn_scores_q8(qp, kq.data(), hd / QK, len, hd, scale, scores.data());
      kt.softmax(scores.data(), len);
      kt.attn_mix_q8(scores.data(), vq.data(), hd / QK, len, hd, out.mutable_data());
    } else if (cache == "f16") {
      std::vector<uint16_t> kh((size_t)(len * hd)), vh((size_t)(len * hd));
      for (size_t i = 0; i < kh.size(); ++i) { kh[i] = fp32_to_fp16(kp[i]); vh[i] = fp32_to_fp16(vp[i]); }
      kt.attn_scores_f16(qp, kh.data(), hd, len, hd, scale, scores.data());
      kt.softmax(scores.data(), len);
      kt.attn_mix_f16(scores.data(), vh.data(), hd, len, hd, out.mutable_data());
    } else if (cache == "f32") {
      kt.attn_scores_f32(qp, kp, hd, len, hd, scale, scores.data());
      kt.softmax(scores.data(), len);
      kt.attn_mix_f32(scores.data(), vp, hd, len, hd, out.mutable_data());
    } else {
      throw py::value_error("cache must be 'f32', 'f16' or 'q8_0', got '" + cache + "'");
    }
    return out;
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("isa") = py::none(), py::arg("cache") = "f32",
     "softmax(q·kᵀ/√hd)·v for one head, through the given ISA's attention kernels; for tests.");

  m.def("attention_group", [](const py::array& q, const py::array& k, const py::array& v, const py::object& isa) {
    require_f32(q, "q", 2, 2);
    require_f32(k, "k", 2, 2);
    require_f32(v, "v", 2, 2);
    const int64_t G = q.shape(0), hd = q.shape(1), len = k.shape(0);
    if (G < 1 || k.shape(1) != hd || v.shape(0) != len || v.shape(1) != hd || len < 1)
      throw py::value_error("need q [G >= 1, hd], k and v [len >= 1, hd]; got " + shape_str(q) + ", " + shape_str(k) +
                            ", " + shape_str(v));
    const KernelTable& kt = kernels_or_default(isa);
    std::vector<uint16_t> kh((size_t)(len * hd)), vh((size_t)(len * hd));
    const float* kp = static_cast<const float*>(k.data());
    const float* vp = static_cast<const float*>(v.data());
    for (size_t i = 0; i < kh.size(); ++i) { kh[i] = fp32_to_fp16(kp[i]); vh[i] = fp32_to_fp16(vp[i]); }
    const int64_t ld = len + 3;  // a row pitch past len: the kernels must honour ld
    std::vector<float> scores((size_t)(G * ld));
    py::array_t<float> out({G, hd});
    kt.attn_scores_f16_group(static_cast<const float*>(q.data()), G, kh.data(), hd, len, hd,
                             1.0f / std::sqrt((float)hd), scores.data(), ld);
    for (int64_t g = 0; g < G; ++g) kt.softmax(scores.data() + g * ld, len);
    for (int64_t g = 0; g < G; ++g)
      kt.attn_mix_f16(scores.data() + g * ld, vh.data(), hd, len, hd, out.mutable_data() + g * hd);
    return out;
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("isa") = py::none(),
     "softmax(q_g·kᵀ/√hd)·v for G query heads sharing one f16 K/V head, through the given ISA's grouped "
     "score kernel (then softmax and mix per head); for tests.");

  m.def("swiglu", [](const py::array& gate, const py::array& up, const py::object& isa) {
    require_f32(gate, "gate", 1, 1);
    require_f32(up, "up", 1, 1);
    if (gate.shape(0) != up.shape(0))
      throw py::value_error("gate and up must have the same length; got " + shape_str(gate) + " and " + shape_str(up));
    const KernelTable& kt = kernels_or_default(isa);
    py::array_t<float> out(gate.shape(0));
    std::copy_n(static_cast<const float*>(gate.data()), gate.shape(0), out.mutable_data());
    kt.swiglu(out.mutable_data(), static_cast<const float*>(up.data()), gate.shape(0));
    return out;
  }, py::arg("gate"), py::arg("up"), py::arg("isa") = py::none(),
     "silu(gate) · up through the given ISA's kernel (the decoder's SwiGLU); for tests.");

  m.def("panel_bytes", [](const std::string& name, int64_t k) {
    const Format f = parse_format_or_throw(name);
    require_k(f, k);
    if (!format_has_panels(f)) throw py::value_error(std::string(format_info(f).name) + " has no panel layout");
    return panel_layout(f, 1, k).panel_bytes;
  }, py::arg("fmt"), py::arg("k"), "Bytes of one 16-row panel (its pieces of every K-slice together).");

  m.def("repack_panels", [](const py::array& data, const std::string& fmt_name, int64_t k) {
    const Format fmt = parse_format_or_throw(fmt_name);
    require_packed_rows(data, fmt, k);
    if (!format_has_panels(fmt)) throw py::value_error(std::string(format_info(fmt).name) + " has no panel layout");
    const int64_t n = data.shape(0);
    py::array_t<uint8_t> out(panel_count(n) * panel_layout(fmt, n, k).panel_bytes);
    repack_to_panels(fmt, static_cast<const uint8_t*>(data.data()), n, k, out.mutable_data());
    return out;
  }, py::arg("data"), py::arg("fmt"), py::arg("k"), "On-disk rows -> 16-row panels (in-memory layout).");

  m.def("unpack_panels", [](const py::array& panels, const std::string& fmt_name, int64_t n, int64_t k) {
    const Format fmt = parse_format_or_throw(fmt_name);
    require_k(fmt, k);
    if (!format_has_panels(fmt)) throw py::value_error(std::string(format_info(fmt).name) + " has no panel layout");
    if (n < 1) throw py::value_error("n must be >= 1");
    const int64_t need = panel_count(n) * panel_layout(fmt, n, k).panel_bytes;
    if (panels.dtype().kind() != 'u' || panels.itemsize() != 1 || panels.ndim() != 1 ||
        !(panels.flags() & py::array::c_style) || panels.shape(0) != need)
      throw py::value_error("panels must be a contiguous 1-D uint8 array of " + std::to_string(need) + " bytes");
    py::array_t<uint8_t> out({n, row_bytes(fmt, k)});
    unpack_from_panels(fmt, static_cast<const uint8_t*>(panels.data()), n, k, out.mutable_data());
    return out;
  }, py::arg("panels"), py::arg("fmt"), py::arg("n"), py::arg("k"), "Inverse of repack_panels.");
}

}  // namespace linly::py_bind
