"""What the Python tests share: skipping when a module is missing, writing a job, running it."""

import errno
import json
import os
import struct
import subprocess
import sys

BUILD_ROOT = os.environ.get("EMBER_BUILD_ROOT", "")
SOURCE_ROOT = os.environ.get("EMBER_SOURCE_ROOT", "")
HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77  # meson's code for a skipped test


def require(*modules):
    """Exits with the skip code, saying why, when a module the test needs is missing."""
    if os.environ.get("EMBER_TEST_SANITIZED"):
        print("SKIP: a sanitizer build: /usr/bin/python3 cannot load the instrumented extension")
        sys.exit(SKIP)
    for name in modules:
        try:
            __import__(name)
        except ImportError as e:
            print(f"SKIP: {name} is not installed ({e}); install python3-{name} (scripts/deps.sh)")
            sys.exit(SKIP)
    if not BUILD_ROOT:
        print("SKIP: EMBER_BUILD_ROOT is not set (run through meson test)")
        sys.exit(SKIP)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def write_job(folder, command, pipe="pipe.socket", rounds=2, min_clients=1, initial_model="",
              trainer_config=None, converters=False, executor=None):
    lines = [
        "schema_version = 1", "[job]", 'name = "py-e2e"', "[timeouts]", 'launch = "30s"',
        'heartbeat_interval = "500ms"', 'heartbeat_timeout = "5s"', 'task_wait = "10s"',
        'result_wait = "2m"', 'shutdown_grace = "2s"', 'stream_idle = "10s"',
    ]
    if trainer_config is not None:
        lines.append("[trainer_config]")
        lines += [f"{k} = {toml_value(v)}" for k, v in trainer_config.items()]
    lines += ["[components.fedavg]", 'type = "workflow.fedavg"', f"rounds = {rounds}",
              f"min_clients = {min_clients}", f"initial_model = {json.dumps(initial_model)}",
              "[components.trainer]", 'type = "executor.external-trainer"',
              f"command = {toml_value(command)}"]
    for k, v in (executor or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    if converters:
        lines += ['converters = ["tensors"]', "[components.tensors]", 'type = "converter.torch"']
    lines += ["[components.launcher]", 'type = "launcher.process"',
              "[components.pipe]", f'type = "{pipe}"']
    path = os.path.join(folder, "job.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def simulate(job, workspace, clients=2, timeout=240, log_level=None):
    """Runs ember simulate; returns (exit code, stdout, stderr)."""
    env = dict(os.environ)
    if log_level:
        env["EMBER_LOG"] = log_level
    ember = os.path.join(BUILD_ROOT, "kernel", "ember")
    run = subprocess.run([ember, "simulate", job, "--clients", str(clients),
                          "--workspace", workspace, "--job-id", "py-e2e"],
                         capture_output=True, text=True, timeout=timeout, env=env)
    return run.returncode, run.stdout, run.stderr


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def trainers_left(workspace, clients=2):
    """The pids of trainers that survived their job (each wrote trainer.pid in its workspace)."""
    left = []
    for i in range(1, clients + 1):
        try:
            with open(os.path.join(workspace, f"site-{i}", "trainer.pid")) as f:
                pid = int(f.read())
        except FileNotFoundError:
            continue
        if alive(pid):
            left.append(pid)
    return left


def report(workspace, site):
    with open(os.path.join(workspace, site, "report.json")) as f:
        return json.load(f)


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, raw bytes), written in the safetensors layout."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    """name -> (dtype, shape, raw bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    base = 8 + size
    tensors = {}
    for name, h in header.items():
        begin, end = h["data_offsets"]
        tensors[name] = (h["dtype"], tuple(h["shape"]), data[base + begin:base + end])
    return tensors
