// CUDA runtime queries exposed to Python; the kernels themselves live beside this file.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace py = pybind11;

void register_cuda(py::module_& m) {
  m.def("cuda_devices", []() {
    // Names of visible CUDA devices; empty when there is no driver or no GPU.
    std::vector<std::string> names;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return names;
    }
    for (int i = 0; i < n; ++i) {
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) names.emplace_back(prop.name);
    }
    return names;
  });
  m.attr("cuda_archs") = py::str(GLYPH_RT_CUDA_ARCHS_STR);
}
