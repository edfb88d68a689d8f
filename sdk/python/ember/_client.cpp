// ember._client: the C++ Client API (ember/client.hpp) for Python, bound with pybind11. ember/client.py
// builds the public, FLARE-shaped API on it.
//
// Tensors cross without copies both ways: a received tensor is a Tensor object that owns a share of the
// message's memory and exposes it as a NumPy array (numpy()) and as a DLPack capsule (__dlpack__, which torch
// takes for bfloat16 too); a sent tensor is any C-contiguous buffer (a NumPy array, or a torch tensor's
// numpy() view) that the session reads chunk by chunk while the buffer is held. No LibTorch here.
//
// The GIL is released while a call waits on the job (receive, send, clear, shutdown), so other Python
// threads run and Ctrl-C is seen between the short waits client.py makes.

#include <Python.h>
#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ember/client.hpp>

namespace py = pybind11;

namespace ember::python {
namespace {

// Raised for every failure the Client API reports; its message names the file, key, tensor or peer.
class ClientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class T>
T value_or_raise(Result<T> result) {
  if (!result) {
    throw ClientError(result.error().message);
  }
  if constexpr (!std::is_void_v<T>) {
    return std::move(*result);
  }
}

// NumPy's name for a wire dtype; bfloat16 has none in NumPy, so its raw bits arrive as uint16.
const char* numpy_name(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
      return "bool";
    case DType::U8:
      return "uint8";
    case DType::I8:
      return "int8";
    case DType::I16:
      return "int16";
    case DType::U16:
    case DType::BF16:
      return "uint16";
    case DType::I32:
      return "int32";
    case DType::U32:
      return "uint32";
    case DType::I64:
      return "int64";
    case DType::U64:
      return "uint64";
    case DType::F16:
      return "float16";
    case DType::F32:
      return "float32";
    case DType::F64:
      return "float64";
  }
  return "uint8";
}

// DLPack's code for a wire dtype. DLPack 0.6 has no boolean: BOOL goes as uint8 (torch reads it as such),
// which is why client.py hands torch its booleans through NumPy instead.
DLDataType dl_type(DType dtype) {
  auto bits = static_cast<std::uint8_t>(element_size(dtype) * 8);
  switch (dtype) {
    case DType::BOOL:
    case DType::U8:
    case DType::U16:
    case DType::U32:
    case DType::U64:
      return {kDLUInt, bits, 1};
    case DType::I8:
    case DType::I16:
    case DType::I32:
    case DType::I64:
      return {kDLInt, bits, 1};
    case DType::BF16:
      return {kDLBfloat, bits, 1};
    case DType::F16:
    case DType::F32:
    case DType::F64:
      return {kDLFloat, bits, 1};
  }
  return {kDLUInt, 8, 1};
}

// One exported DLManagedTensor: it holds a share of the message's memory, so the consumer (torch) keeps
// it alive; its deleter needs no GIL (torch may call it from any thread).
struct DLContext {
  std::shared_ptr<const void> owner;
  std::vector<std::int64_t> shape;
  DLManagedTensor managed{};
};

void capsule_destructor(PyObject* capsule) {
  // Only a capsule nobody consumed still holds its tensor ("used_dltensor" once torch took it).
  if (PyCapsule_IsValid(capsule, "dltensor") != 0) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    managed->deleter(managed);
  }
}

// A received tensor: a share of the message's memory with its name, dtype and shape.
class Tensor {
 public:
  explicit Tensor(WireTensor tensor) : t_(std::move(tensor)) {}

  const std::string& name() const { return t_.name; }
  std::string dtype() const { return std::string(to_string(t_.dtype)); }
  py::tuple shape() const { return py::cast(t_.shape); }
  std::uintptr_t address() const { return reinterpret_cast<std::uintptr_t>(t_.bytes.data()); }
  std::size_t nbytes() const { return t_.bytes.size(); }

  // A writable NumPy view of the bytes; its base keeps the message's memory alive.
  py::array numpy() const {
    std::vector<py::ssize_t> shape(t_.shape.begin(), t_.shape.end());
    std::vector<py::ssize_t> strides(shape.size());
    auto step = static_cast<py::ssize_t>(element_size(t_.dtype));
    for (std::size_t i = shape.size(); i-- > 0;) {
      strides[i] = step;
      step *= shape[i];
    }
    auto* keep = new std::shared_ptr<const void>(t_.owner);
    py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
    // The trainer owns its received message: it may change it in place (the bytes are its own heap buffer).
    void* data = const_cast<std::byte*>(t_.bytes.data());
    return py::array(py::dtype(numpy_name(t_.dtype)), shape, strides, data, base);
  }

  py::capsule dlpack() const {
    auto context = std::make_unique<DLContext>();
    context->owner = t_.owner;
    context->shape = t_.shape;
    DLTensor& d = context->managed.dl_tensor;
    d.data = const_cast<std::byte*>(t_.bytes.data());
    d.device = {kDLCPU, 0};
    d.ndim = static_cast<std::int32_t>(context->shape.size());
    d.dtype = dl_type(t_.dtype);
    d.shape = context->shape.data();
    d.strides = nullptr;  // compact, row-major
    d.byte_offset = 0;
    context->managed.manager_ctx = context.get();
    context->managed.deleter = [](DLManagedTensor* self) {
      delete static_cast<DLContext*>(self->manager_ctx);
    };
    PyObject* capsule = PyCapsule_New(&context->managed, "dltensor", capsule_destructor);
    if (capsule == nullptr) {
      throw py::error_already_set();
    }
    context.release();  // the capsule (or its consumer) owns it now
    return py::reinterpret_steal<py::capsule>(capsule);
  }

 private:
  WireTensor t_;
};

// Holds a Python buffer (a sent tensor's memory) for as long as the session may read it. The session may drop
// its last reference on its own thread, so the release takes the GIL.
struct HeldBuffer {
  Py_buffer view{};
  ~HeldBuffer() {
    if (view.obj != nullptr && Py_IsInitialized() != 0) {
      PyGILState_STATE state = PyGILState_Ensure();
      PyBuffer_Release(&view);
      PyGILState_Release(state);
    }
  }
};

WireTensor wire_tensor(const std::string& name, const std::string& dtype_name,
                       const std::vector<std::int64_t>& shape, const py::object& data) {
  auto dtype = parse_dtype(dtype_name);
  if (!dtype) {
    throw py::value_error("tensor '" + name + "': unknown dtype '" + dtype_name + "'");
  }
  auto held = std::make_shared<HeldBuffer>();
  if (PyObject_GetBuffer(data.ptr(), &held->view, PyBUF_C_CONTIGUOUS) != 0) {
    PyErr_Clear();
    throw py::type_error(
        "tensor '" + name +
        "': its memory is not a C-contiguous buffer (pass a NumPy array or a CPU torch tensor)");
  }
  WireTensor t;
  t.name = name;
  t.dtype = *dtype;
  t.shape = shape;
  t.bytes = std::span<const std::byte>(static_cast<const std::byte*>(held->view.buf),
                                       static_cast<std::size_t>(held->view.len));
  t.owner = held;
  if (!t.consistent()) {
    throw py::value_error("tensor '" + name + "': " + std::to_string(t.bytes.size()) +
                          " bytes do not hold a " + dtype_name + " tensor of that shape");
  }
  return t;
}

py::dict model_dict(client::FLModel&& model) {
  py::list params;
  for (auto& t : model.params) {
    params.append(Tensor(std::move(t)));
  }
  py::dict out;
  out["params"] = params;
  out["params_type"] = model.params_type == ParamsType::diff ? "DIFF" : "FULL";
  out["metrics"] = py::cast(model.metrics);
  out["meta"] = py::cast(model.meta);
  out["current_round"] = model.current_round;
  out["total_rounds"] = model.total_rounds;
  return out;
}

// One bounded wait for the next task: ("task", model), ("timeout", None) or ("end", None).
py::tuple receive(double timeout_s) {
  auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000.0));
  Result<std::optional<client::FLModel>> got = std::optional<client::FLModel>{};
  {
    py::gil_scoped_release unlocked;
    got = client::receive(std::max(timeout, std::chrono::milliseconds(1)));
  }
  if (!got) {
    if (got.error().code == Errc::timeout) {
      return py::make_tuple("timeout", py::none());
    }
    throw ClientError(got.error().message);
  }
  if (!*got) {
    return py::make_tuple("end", py::none());
  }
  return py::make_tuple("task", model_dict(std::move(**got)));
}

void send(const py::list& params, const std::string& params_type,
          const std::map<std::string, double>& metrics, const std::map<std::string, std::string>& meta) {
  // Built and destroyed with the GIL held: the tensors' buffers are Python objects.
  client::FLModel model;
  for (const auto& entry : params) {
    auto item = entry.cast<py::tuple>();
    model.params.push_back(wire_tensor(item[0].cast<std::string>(), item[1].cast<std::string>(),
                                       item[2].cast<std::vector<std::int64_t>>(), item[3]));
  }
  if (params_type != "FULL" && params_type != "DIFF") {
    throw py::value_error("params_type must be FULL or DIFF, not '" + params_type + "'");
  }
  model.params_type = params_type == "DIFF" ? ParamsType::diff : ParamsType::full;
  model.metrics = metrics;
  model.meta = meta;
  Result<void> sent;
  {
    py::gil_scoped_release unlocked;
    sent = client::send(model);
  }
  value_or_raise(std::move(sent));
}

py::dict system_info() {
  client::SystemInfo info;
  {
    py::gil_scoped_release unlocked;
    info = client::system_info();
  }
  py::dict out;
  out["job_id"] = info.job_id;
  out["job_name"] = info.job_name;
  out["site_name"] = info.site;
  out["rank"] = info.rank;
  out["workspace"] = info.workspace.string();
  out["formats"] = py::cast(info.formats);
  out["train_task"] = info.train_task;
  out["evaluate_task"] = info.evaluate_task;
  out["submit_model_task"] = info.submit_model_task;
  return out;
}

}  // namespace
}  // namespace ember::python

PYBIND11_MODULE(_client, m) {
  using namespace ember;
  using namespace ember::python;
  m.doc() = "The ember Client API (C++) for Python; use ember.client";
  py::register_exception<ClientError>(m, "EmberError", PyExc_RuntimeError);

  py::class_<Tensor>(m, "Tensor")
      .def_property_readonly("name", &Tensor::name)
      .def_property_readonly("dtype", &Tensor::dtype)
      .def_property_readonly("shape", &Tensor::shape)
      .def_property_readonly("address", &Tensor::address, "where the bytes are (the message's memory)")
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def("numpy", &Tensor::numpy)
      .def(
          "__dlpack__", [](const Tensor& t, const py::object&) { return t.dlpack(); },
          py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const Tensor&) { return py::make_tuple(static_cast<int>(kDLCPU), 0); });

  m.def(
      "init",
      [](std::optional<int> rank, std::optional<std::string> bootstrap) {
        client::InitOptions options;
        options.rank = rank;
        if (bootstrap) {
          options.bootstrap = *bootstrap;
        }
        Result<void> ready;
        {
          py::gil_scoped_release unlocked;
          ready = client::init(options);
        }
        value_or_raise(std::move(ready));
      },
      py::arg("rank") = py::none(), py::arg("bootstrap") = py::none());
  m.def("receive", &receive, py::arg("timeout_s"));
  m.def("send", &send);
  m.def("log_metric", [](const std::string& key, double value, std::optional<std::uint64_t> step) {
    client::log(key, value, step);
  });
  m.def("log_text", [](const std::string& text) { client::log_text(text); });
  m.def("clear", [](const std::string& reason) {
    Result<void> cleared;
    {
      py::gil_scoped_release unlocked;
      cleared = client::clear(reason);
    }
    value_or_raise(std::move(cleared));
  });
  m.def("end_with_error", [](const std::string& reason) {
    py::gil_scoped_release unlocked;
    client::end_with_error(reason);
  });
  m.def("shutdown", [] {
    py::gil_scoped_release unlocked;
    client::shutdown();
  });
  // These may wait while another thread's receive() holds the client: without the GIL.
  auto unlocked = py::call_guard<py::gil_scoped_release>();
  m.def("task_name", &client::task_name, unlocked);
  m.def("is_train", &client::is_train, unlocked);
  m.def("is_evaluate", &client::is_evaluate, unlocked);
  m.def("is_submit_model", &client::is_submit_model, unlocked);
  m.def("is_rank0", &client::is_rank0, unlocked);
  m.def("is_running", [] { return client::is_running(); });
  m.def("abort_requested", [] { return client::abort_requested(); });
  m.def("get_config", &client::get_config, unlocked);
  m.def("system_info", &system_info);
}
