// qvdp native all-gather-with-reorder.
//
// Every rank holds its rows of one or more outputs (main embeddings + deepstack features) in
// local order; the shard plan says, for each contiguous run of rows, which rank owns it, where
// it starts in the owner's local buffer and where it lands in the original-order output.
// One NCCL group call moves every run straight into its final rows on every rank:
//   mode "bcast": one ncclBroadcast per (run, output), rooted at the owner;
//   mode "p2p":   the owner ncclSend's each run to every peer, peers ncclRecv into the slice.
// When every rank owns one run of the same n rows, rank r's landing at rows [r*n, (r+1)*n), the
// gather is a plain all-gather: all_gather() issues one ncclAllGather per output in one group.
// No padding, no staging buffer, no reorder pass. Work is enqueued on the current CUDA stream.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// A failed CUDA or NCCL call throws "qvdp: <lib> error '<text>' in <call>" (a Python RuntimeError).
inline void check_status(bool ok, const char* lib, const char* text, const char* call) {
  if (!ok) throw std::runtime_error(std::string("qvdp: ") + lib + " error '" + text + "' in " + call);
}
#define QVDP_NCCL_CHECK(cmd)                                                      \
  do {                                                                           \
    ncclResult_t r_ = (cmd);                                                     \
    check_status(r_ == ncclSuccess, "NCCL", ncclGetErrorString(r_), #cmd);       \
  } while (0)
#define QVDP_CUDA_CHECK(cmd)                                                      \
  do {                                                                           \
    cudaError_t e_ = (cmd);                                                      \
    check_status(e_ == cudaSuccess, "CUDA", cudaGetErrorString(e_), #cmd);       \
  } while (0)

ncclDataType_t nccl_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kDouble: return ncclFloat64;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: throw std::invalid_argument("qvdp: dtype not supported by the NCCL gather");
  }
}

py::bytes unique_id() {
  ncclUniqueId id;
  QVDP_NCCL_CHECK(ncclGetUniqueId(&id));
  return py::bytes(id.internal, NCCL_UNIQUE_ID_BYTES);
}

class Comm {
 public:
  Comm(const std::string& uid, int world, int rank, int device) : world_(world), rank_(rank), device_(device) {
    if (uid.size() != NCCL_UNIQUE_ID_BYTES) throw std::invalid_argument("qvdp: bad NCCL unique id length");
    if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("qvdp: bad rank/world");
    ncclUniqueId id;
    std::memcpy(id.internal, uid.data(), NCCL_UNIQUE_ID_BYTES);
    c10::cuda::CUDAGuard guard(device);
    QVDP_NCCL_CHECK(ncclCommInitRank(&comm_, world, id, rank));
  }
  ~Comm() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int world() const { return world_; }
  int rank() const { return rank_; }

  // local[k]: [n, width_k] on every rank; out[k]: [world * n, width_k]; rank r's rows land at r*n.
  void all_gather(const std::vector<at::Tensor>& local, const std::vector<at::Tensor>& out) {
    if (local.size() != out.size() || out.empty()) throw std::invalid_argument("qvdp: local/out count mismatch");
    const auto dtype = out[0].scalar_type();
    const ncclDataType_t nd = nccl_dtype(dtype);
    for (size_t k = 0; k < out.size(); ++k) {
      const auto& o = out[k];
      const auto& l = local[k];
      if (!o.is_cuda() || o.get_device() != device_ || o.dim() != 2 || !o.is_contiguous() || !l.is_cuda() ||
          l.get_device() != device_ || l.dim() != 2 || !l.is_contiguous())
        throw std::invalid_argument("qvdp: all_gather tensors must be contiguous 2-D on the communicator's device");
      if (o.scalar_type() != dtype || l.scalar_type() != dtype)
        throw std::invalid_argument("qvdp: all tensors must share one dtype");
      if (l.size(1) != o.size(1) || o.size(0) != l.size(0) * world_)
        throw std::invalid_argument("qvdp: all_gather needs out [world * n, w] for local [n, w]");
    }
    c10::cuda::CUDAGuard guard(device_);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    QVDP_NCCL_CHECK(ncclGroupStart());
    for (size_t k = 0; k < out.size(); ++k)
      QVDP_NCCL_CHECK(ncclAllGather(local[k].data_ptr(), out[k].data_ptr(), static_cast<size_t>(local[k].numel()),
                                    nd, comm_, stream));
    QVDP_NCCL_CHECK(ncclGroupEnd());
  }

  // local[k]: [local_rows, width_k] on this rank; out[k]: [total_rows, width_k];
  // runs: int64 CPU tensor [R, 4] = (owner rank, local_start, out_start, rows).
  void gather_runs(const std::vector<at::Tensor>& local, const std::vector<at::Tensor>& out,
                   const at::Tensor& runs, bool p2p) {
    if (local.size() != out.size() || out.empty()) throw std::invalid_argument("qvdp: local/out count mismatch");
    if (runs.device().type() != at::kCPU || runs.scalar_type() != at::kLong || runs.dim() != 2 ||
        runs.size(1) != 4)
      throw std::invalid_argument("qvdp: runs must be an int64 CPU tensor [R, 4]");
    const auto dtype = out[0].scalar_type();
    const ncclDataType_t nd = nccl_dtype(dtype);
    for (size_t k = 0; k < out.size(); ++k) {
      const auto& o = out[k];
      const auto& l = local[k];
      if (!o.is_cuda() || o.get_device() != device_ || o.dim() != 2 || !o.is_contiguous())
        throw std::invalid_argument("qvdp: out tensors must be contiguous 2-D on the communicator's device");
      if (o.scalar_type() != dtype || l.scalar_type() != dtype)
        throw std::invalid_argument("qvdp: all tensors must share one dtype");
      if (l.dim() != 2 || l.size(1) != o.size(1) || (l.numel() > 0 && (!l.is_cuda() || !l.is_contiguous())))
        throw std::invalid_argument("qvdp: local tensors must be contiguous [rows, width] CUDA tensors");
    }
    c10::cuda::CUDAGuard guard(device_);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    const int64_t* r = runs.data_ptr<int64_t>();
    const int64_t R = runs.size(0);
    // bounds, checked on the host before anything is enqueued
    for (int64_t i = 0; i < R; ++i) {
      const int64_t src = r[4 * i], ls = r[4 * i + 1], os = r[4 * i + 2], n = r[4 * i + 3];
      if (src < 0 || src >= world_ || n < 0 || os < 0 || os + n > out[0].size(0))
        throw std::out_of_range("qvdp: run outside the output");
      if (src == rank_ && (ls < 0 || ls + n > local[0].size(0)))
        throw std::out_of_range("qvdp: run outside the local buffer");
    }
    if (p2p) {  // own rows: one device copy each, outside the group
      for (int64_t i = 0; i < R; ++i) {
        const int64_t src = r[4 * i], ls = r[4 * i + 1], os = r[4 * i + 2], n = r[4 * i + 3];
        if (src != rank_ || n == 0) continue;
        for (size_t k = 0; k < out.size(); ++k) {
          const int64_t w = out[k].size(1), es = out[k].element_size();
          QVDP_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(out[k].data_ptr()) + os * w * es,
                                          static_cast<const char*>(local[k].data_ptr()) + ls * w * es,
                                          n * w * es, cudaMemcpyDeviceToDevice, stream));
        }
      }
    }
    QVDP_NCCL_CHECK(ncclGroupStart());
    for (int64_t i = 0; i < R; ++i) {
      const int src = static_cast<int>(r[4 * i]);
      const int64_t ls = r[4 * i + 1], os = r[4 * i + 2], n = r[4 * i + 3];
      if (n == 0) continue;
      for (size_t k = 0; k < out.size(); ++k) {
        const int64_t w = out[k].size(1), es = out[k].element_size();
        char* recv = static_cast<char*>(out[k].data_ptr()) + os * w * es;
        const char* send = src == rank_ ? static_cast<const char*>(local[k].data_ptr()) + ls * w * es : recv;
        const size_t count = static_cast<size_t>(n * w);
        if (!p2p) {
          QVDP_NCCL_CHECK(ncclBroadcast(send, recv, count, nd, src, comm_, stream));
        } else if (src == rank_) {
          for (int p = 0; p < world_; ++p)
            if (p != rank_) QVDP_NCCL_CHECK(ncclSend(send, count, nd, p, comm_, stream));
        } else {
          QVDP_NCCL_CHECK(ncclRecv(recv, count, nd, src, comm_, stream));
        }
      }
    }
    QVDP_NCCL_CHECK(ncclGroupEnd());
  }

 private:
  ncclComm_t comm_ = nullptr;
  int world_, rank_, device_;
};

}  // namespace

// csrc/push.cu: the push gather (SM stores over NVLink into symmetric-memory outputs, flag barriers)
void push_flag_barrier(const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                       int64_t epoch, int64_t timeout_ns);
int64_t push_gather(const std::vector<at::Tensor>& srcs, const std::vector<at::Tensor>& tables,
                    const std::vector<int64_t>& dst_strides, const std::vector<int64_t>& dst_cols,
                    const at::Tensor& stage1, const std::vector<at::Tensor>& fwd_srcs,
                    const std::vector<at::Tensor>& fwd_tables, const at::Tensor& stage2, bool relay,
                    const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                    int64_t epoch, int64_t timeout_ns);
int64_t push_gather_pipelined(const at::Tensor& src, const at::Tensor& table, const at::Tensor& own,
                              int64_t dst_stride, const at::Tensor& units, const at::Tensor& ready_peers,
                              const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                              int64_t epoch, int64_t timeout_ns, int64_t piece_rows, int64_t blocks_per_sm,
                              bool fence_sc);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "qvdp native NCCL all-gather-with-reorder";
  m.def("nccl_unique_id", &unique_id, "a new NCCL unique id (bytes)");
  m.def("nccl_version", []() { int v = 0; ncclGetVersion(&v); return v; });
  m.def("push_flag_barrier", &push_flag_barrier, "one flag barrier on the current stream");
  m.def("push_gather_pipelined", &push_gather_pipelined, "the pipelined gather: one launch of dependent copy units (one source, one buffer)",
        py::call_guard<py::gil_scoped_release>());
  m.def("push_gather", &push_gather, "the push gather on the current stream; returns the last epoch",
        py::call_guard<py::gil_scoped_release>());
  py::class_<Comm>(m, "NcclComm")
      .def(py::init<const std::string&, int, int, int>(), py::arg("unique_id"), py::arg("world"), py::arg("rank"),
           py::arg("device"))
      .def_property_readonly("world", &Comm::world)
      .def_property_readonly("rank", &Comm::rank)
      .def("gather_runs", &Comm::gather_runs, py::arg("local"), py::arg("out"), py::arg("runs"),
           py::arg("p2p") = false, py::call_guard<py::gil_scoped_release>())
      .def("all_gather", &Comm::all_gather, py::arg("local"), py::arg("out"),
           py::call_guard<py::gil_scoped_release>());
}
