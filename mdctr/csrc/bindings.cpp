#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("grouped_linear", &grouped_linear, "row blocks times their own weights (MLoRA's routed layer)");
  m.def("grouped_linear_backward", &grouped_linear_backward, "backward of grouped_linear by block");
  m.def("own_rows_forward", &own_rows_forward, "a domain's own embedding rows, pooled per bag");
  m.def("own_rows_backward", &own_rows_backward, "backward of own_rows_forward");
  m.def("hash_dropout", &hash_dropout, "x scaled by 1 / (1 - p) where hash(seed, i) >= p * 2^32, else 0");
}
