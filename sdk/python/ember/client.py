"""The ember Client API for Python training scripts.

    import ember.client as flare      # a FLARE Client API script changes this line only

    flare.init()
    while flare.is_running():
        model = flare.receive()       # FLModel: params (name -> tensor), metrics, meta, rounds
        ...                           # train, or evaluate when flare.is_evaluate()
        flare.send(flare.FLModel(params=net.state_dict(), metrics={"num_samples": n}))

Every call runs the C++ Client API (ember._client): one implementation of the session protocol.

Tensors are not copied. A received tensor is a NumPy array, or a torch tensor (when the job
declares a torch converter, or init(params_format="torch")), that views the message's memory and
keeps it alive. A sent tensor (a NumPy array, or a CPU torch tensor) is read by the session from
its own memory, chunk by chunk. NumPy has no bfloat16: NumPy users receive bfloat16 tensors as
uint16 arrays holding the raw bits, tagged with dtype.metadata == {"ember_dtype": "BF16"} so that
sending them back keeps them bfloat16 (see bfloat16_to_float32() and float32_to_bfloat16()). Torch
users get torch.bfloat16 tensors.

docs/client-api.md lists every call and each departure from the FLARE Client API.
"""

import atexit
import os
import sys
import time

from . import _client

# json and traceback are imported where they are used: a trainer's start to SESSION_READY does not
# wait for them (nor for numpy, nor torch).

__all__ = [
    "AnalyticsDataType", "EmberError", "FLModel", "LogKind", "ParamsType",
    "abort_requested", "bfloat16_to_float32", "clear", "float32_to_bfloat16",
    "get_config", "get_job_id", "get_site_name", "get_task_name", "init",
    "is_evaluate", "is_running", "is_submit_model", "is_train", "log",
    "receive", "send", "shutdown", "system_info",
]

EmberError = _client.EmberError

# The longest single wait inside receive(): Ctrl-C and other threads are served at least this
# often.
_WAIT_STEP_S = 0.1


# Plain string constants rather than enum.Enum (whose import alone costs a trainer's start about
# 5 ms): they compare equal to the strings the wire and FLARE scripts use.
class ParamsType:
    """Whether params are the whole model or a difference to the one received."""

    FULL = "FULL"
    DIFF = "DIFF"


class LogKind:
    """What log() records. The names follow FLARE's AnalyticsDataType."""

    SCALAR = "SCALAR"
    SCALARS = "SCALARS"
    METRIC = "METRIC"
    METRICS = "METRICS"
    TEXT = "TEXT"


# The name a FLARE script uses for the kinds of log().
AnalyticsDataType = LogKind


class FLModel:
    """A model as a training script sees it; the field names are the FLARE Client API's."""

    def __init__(self, params_type=None, params=None, optimizer_params=None,
                 metrics=None, start_round=0, current_round=None,
                 total_rounds=None, meta=None):
        self.params_type = params_type
        self.params = params
        self.optimizer_params = optimizer_params
        self.metrics = metrics
        self.start_round = start_round
        self.current_round = current_round
        self.total_rounds = total_rounds
        self.meta = {} if meta is None else meta

    def __repr__(self):
        names = sorted(self.params) if self.params else []
        return (f"FLModel(params_type={self.params_type}, params={names}, "
                f"metrics={self.metrics}, current_round={self.current_round}, "
                f"total_rounds={self.total_rounds})")


class _State:
    def __init__(self):
        self.initialized = False
        self.params_format = "numpy"
        self.current = None  # the received model whose task send() has not answered


_state = _State()

_NUMPY_TO_WIRE = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16",
    "uint16": "U16", "int32": "I32", "uint32": "U32", "int64": "I64",
    "uint64": "U64", "float16": "F16", "float32": "F32", "float64": "F64",
}
# Wire dtypes torch 1.13 has no type for: they stay NumPy arrays in torch mode.
_NUMPY_ONLY = {"U16", "U32", "U64"}


def _numpy():
    import numpy  # imported on first use: a trainer's start does not wait for it
    return numpy


def _torch():
    return sys.modules.get("torch")


def _bf16_dtype():
    np = _numpy()
    return np.dtype(np.uint16, metadata={"ember_dtype": "BF16"})


def bfloat16_to_float32(array):
    """A float32 copy of a bfloat16 array (raw uint16 bits, as NumPy receives them). Exact."""
    np = _numpy()
    bits = np.asarray(array).astype(np.uint32) << 16
    return bits.view(np.float32)


def float32_to_bfloat16(array):
    """A bfloat16 array (raw uint16 bits, tagged for send()), rounded to nearest even."""
    np = _numpy()
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(array, dtype=np.float32))
    out[nan] = 0x7FC0
    return out.view(_bf16_dtype())


def _require_init():
    if not _state.initialized:
        raise RuntimeError("call ember.client.init() first")


def _excepthook(exc_type, exc, tb):
    # An unhandled error ends the session cleanly: the job's task fails with the error's text (the
    # site reports it), instead of waiting for a trainer that is gone.
    import traceback
    where = ""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        where = f" ({os.path.basename(last.filename)}:{last.lineno})"
    reason = f"the trainer raised {exc_type.__name__}: {exc}{where}"
    try:
        _client.end_with_error(reason)
    finally:
        _state.current = None
        _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook


def init(rank=None, config_file=None, params_format=None):
    """Joins the job: reads the bootstrap file (config_file, else $EMBER_BOOTSTRAP) and says HELLO.

    rank: this process's rank (else $RANK, else 0); only rank 0 talks to the job.
    params_format: "numpy" or "torch" for received params; by default "torch" when the job
    declares a torch converter, else "numpy". A second init() warns and does nothing.
    """
    global _previous_excepthook
    if params_format not in (None, "numpy", "torch"):
        raise ValueError(f"params_format must be 'numpy' or 'torch', not {params_format!r}")
    if _state.initialized:
        _client.init(None, None)  # the C++ API warns
        return
    if rank is not None:
        try:
            rank = int(rank)
        except (TypeError, ValueError):
            raise ValueError(f"rank must be an integer, not {rank!r}") from None
    _client.init(rank, None if config_file is None else os.fspath(config_file))
    _state.initialized = True
    if params_format is None:
        formats = _client.system_info()["formats"]
        params_format = "torch" if "torch" in formats else "numpy"
    _state.params_format = params_format
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(shutdown)


def _from_wire(tensor):
    dtype = tensor.dtype
    if _state.params_format == "torch" and dtype not in _NUMPY_ONLY:
        import torch
        if dtype == "BF16":
            from torch.utils.dlpack import from_dlpack
            return from_dlpack(tensor.__dlpack__())
        return torch.from_numpy(tensor.numpy())
    array = tensor.numpy()
    if dtype == "BF16":
        array = array.view(_bf16_dtype())
    return array


def _to_model(fields):
    params = {}
    wire = {}
    for tensor in fields["params"]:
        params[tensor.name] = _from_wire(tensor)
        wire[tensor.name] = (tensor.address, tensor.nbytes)
    model = FLModel(
        params_type=fields["params_type"],
        params=params,
        metrics=dict(fields["metrics"]),
        current_round=fields["current_round"],
        total_rounds=fields["total_rounds"],
        meta=dict(fields["meta"]),
    )
    # Where each tensor's bytes are in the received message (tests check that params view them).
    model._ember_wire = wire
    return model


def receive(timeout=None):
    """The current task's model: the next task's, or the one not yet answered.

    None when the job has ended (is_running() is then False) or, with a timeout in seconds, when no
    task came in time. The wait is made of short steps, so Ctrl-C and other threads are served
    meanwhile.
    """
    _require_init()
    if _state.current is not None:
        return _state.current
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while True:
        step = _WAIT_STEP_S
        if deadline is not None:
            step = min(step, deadline - time.monotonic())
            if step <= 0:
                return None
        status, fields = _client.receive(step)
        if status == "task":
            _state.current = _to_model(fields)
            return _state.current
        if status == "end":
            return None


def _wire_tensor(name, value):
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # one copy to host
        if not t.is_contiguous():
            t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return (name, "BF16", list(t.shape), t.view(torch.int16).numpy())
        value = t.numpy()
    np = _numpy()
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value).reshape(value.shape)
    metadata = value.dtype.metadata or {}
    if metadata.get("ember_dtype") == "BF16":
        dtype = "BF16"
    else:
        dtype = _NUMPY_TO_WIRE.get(value.dtype.name)
        if dtype is None or value.dtype.byteorder == ">":
            raise TypeError(f"tensor '{name}': dtype {value.dtype} cannot be sent "
                            f"(ember sends {', '.join(sorted(_NUMPY_TO_WIRE))} and bfloat16)")
    return (name, dtype, list(value.shape), value)


def _metric_value(key, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric '{key}': {value!r} is not a number "
                        "(metrics are numbers; put other values in meta)") from None


def send(model, clear_cache=True):
    """Answers the current task with `model` and waits for the job to accept it.

    Raises EmberError with the job's reason when it rejects the result (e.g. a tensor's shape).
    With clear_cache (the default) the sent model's params and the received model's params are
    released.
    """
    _require_init()
    if not isinstance(model, FLModel):
        raise TypeError(f"send() takes an FLModel, not {type(model).__name__}")
    if _state.current is None:
        raise RuntimeError('"receive" needs to be called before sending model!')
    params = []
    for name, value in (model.params or {}).items():
        params.append(_wire_tensor(str(name), value))
    params_type = str(getattr(model.params_type, "value", model.params_type) or ParamsType.FULL)
    if params_type not in (ParamsType.FULL, ParamsType.DIFF):
        raise ValueError(f"params_type must be FULL or DIFF, not {model.params_type!r}")
    metrics = {str(k): _metric_value(k, v) for k, v in (model.metrics or {}).items()}
    import json
    meta = {}
    for k, v in (model.meta or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    received = _state.current
    try:
        _client.send(params, params_type, metrics, meta)
    finally:
        del params
    _state.current = None
    if clear_cache:
        model.params = None
        received.params = None


def clear(reason=None):
    """Lets go of the current task: if send() has not answered it, the job hears that the trainer
    declined it (TASK_FAILED with `reason`), and the next receive() waits for a new task."""
    _require_init()
    if _state.current is not None:
        _state.current = None
        _client.clear(reason or "the trainer cleared the task")


def log(key, value, kind=LogKind.SCALAR, data_type=None, **kwargs):
    """Records a metric, several metrics (a dict: key/name each) or a line of text in the job.

    Best effort: it never blocks training. `global_step` or `step` in kwargs is the metric's step;
    other kwargs are accepted and ignored.
    """
    _require_init()
    kind = str(getattr(data_type or kind, "value", data_type or kind)).upper()
    step = kwargs.get("global_step", kwargs.get("step"))
    step = None if step is None else int(step)
    kinds = (LogKind.SCALAR, LogKind.SCALARS, LogKind.METRIC, LogKind.METRICS, LogKind.TEXT)
    if kind not in kinds:
        raise ValueError(f"log('{key}'): kind {kind} is not supported "
                         "(SCALAR, SCALARS, METRIC, METRICS or TEXT)")
    if kind == LogKind.TEXT:
        _client.log_text(f"{key}: {value}" if key else str(value))
    elif kind in (LogKind.SCALARS, LogKind.METRICS):
        if not isinstance(value, dict):
            raise TypeError(f"log('{key}'): {kind} takes a dict of numbers")
        for name, v in value.items():
            _client.log_metric(f"{key}/{name}", _metric_value(name, v), step)
    else:
        _client.log_metric(str(key), _metric_value(key, value), step)


def system_info():
    """What the job told this trainer: job_id, job_name, site_name, rank, workspace, formats and
    the
    job's task names."""
    _require_init()
    return _client.system_info()


def get_config():
    """The job's [trainer_config] table, as a dict ({} when the job has none)."""
    _require_init()
    import json
    return json.loads(_client.get_config())


def get_job_id():
    return system_info()["job_id"]


def get_site_name():
    return system_info()["site_name"]


def get_task_name():
    """The current task's name ("train"), or "" between tasks."""
    _require_init()
    return _client.task_name()


def is_running():
    """Whether there is a task to work on: waits for the next one when none is current (as FLARE's
    does), and is False once the job has ended or its session failed."""
    if not _state.initialized:
        return False
    if _state.current is not None:
        return True
    if not _client.is_rank0():
        return _client.is_running()
    try:
        return receive() is not None
    except EmberError as e:
        # The session failed (the job went silent, the pipe broke): the loop ends, saying why.
        print(f"ember.client: the job's session ended: {e}", file=sys.stderr)
        return False


def is_train():
    _require_init()
    return _client.is_train()


def is_evaluate():
    _require_init()
    return _client.is_evaluate()


def is_submit_model():
    _require_init()
    return _client.is_submit_model()


def abort_requested():
    """True once the job sent ABORT or went silent: a training loop should stop early."""
    return _state.initialized and _client.abort_requested()


def shutdown():
    """Ends the session (bounded) and frees the plugins. Idempotent; also run at exit."""
    _state.current = None
    if _state.initialized:
        _client.shutdown()
