"""Python trainers against the C++ test trainer, through `ember simulate` (one site, Unix socket).

    /usr/bin/python3 bench/python_bench.py --build BUILD [--runs N] [--rounds R] [--mib M]
                                           [--cpp-trainer PROGRAM] [--json FILE]

Measures, each beside its baseline taken in the same run (cases interleaved, medians):
  - trainer launch to SESSION_READY (the executor's "ready in" figure): a Python trainer that
    imports ember.client only (no torch), and ember-test-trainer (C++); beside the interpreter
    starting and exiting, and starting with `import ember.client`.
  - a round with an M MiB model (F32, four tensors): both trainers add one to every element into
    buffers kept across rounds and send them back; the round's wall time, and the same less the
    trainer's own work (its train_ms metric); beside one copy of the M MiB in this process (the
    floor of touching the bytes).
It prints a Markdown table (for docs/BENCHMARKS.md) and, with --json, writes the raw samples.
Not a test: nothing here passes or fails.
"""

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

PY_TRAINER = r'''
import time
import ember.client as flare
flare.init(params_format="numpy")
import numpy as np  # after init(): SESSION_READY does not wait for NumPy
buffers = {}
while flare.is_running():
    model = flare.receive()
    start = time.perf_counter()
    out = {}
    for name, value in (model.params or {}).items():
        buf = buffers.get(name)
        if buf is None or buf.shape != value.shape:
            buf = buffers[name] = np.empty_like(value)
        np.add(value, 1.0, out=buf)
        out[name] = buf
    if not out:
        out = {"w": np.ones(4, np.float32)}
    train_ms = (time.perf_counter() - start) * 1000
    flare.send(flare.FLModel(params=out, metrics={"num_samples": 10, "train_ms": train_ms}))
'''


def write_model(path, mib):
    elements = mib * (1 << 20) // 4 // 4
    header = {}
    for i in range(4):
        header[f"t{i}"] = {"dtype": "F32", "shape": [elements],
                           "data_offsets": [i * elements * 4, (i + 1) * elements * 4]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        chunk = b"\0" * (1 << 20)
        for _ in range(mib):
            f.write(chunk)


def job(folder, command, rounds, model=""):
    text = f'''schema_version = 1
[job]
name = "python-bench"
[timeouts]
launch = "60s"
heartbeat_interval = "1s"
heartbeat_timeout = "30s"
task_wait = "60s"
result_wait = "10m"
shutdown_grace = "5s"
stream_idle = "60s"
[components.fedavg]
type = "workflow.fedavg"
rounds = {rounds}
initial_model = {json.dumps(model)}
evaluate_final = false
keep_checkpoints = 1
[components.trainer]
type = "executor.external-trainer"
command = {json.dumps(command)}
[components.launcher]
type = "launcher.process"
[components.pipe]
type = "pipe.socket"
'''
    path = os.path.join(folder, "job.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def simulate(ember, job_file, workspace):
    run = subprocess.run([ember, "simulate", job_file, "--clients", "1",
                          "--workspace", workspace, "--quiet"],
                         capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, EMBER_LOG="info"))
    if run.returncode != 0:
        sys.exit(f"python_bench.py: ember simulate failed ({run.returncode}):\n"
                 f"{run.stdout}\n{run.stderr}")
    return run.stdout


def ready_ms(workspace):
    with open(os.path.join(workspace, "site-1", "log.txt")) as f:
        found = re.findall(r"trainer \d+ ready in ([0-9.]+) ms", f.read())
    if not found:
        sys.exit(f"python_bench.py: no 'ready in' line in {workspace}/site-1/log.txt")
    return float(found[0])


def round_rows(out):
    """(seconds, train_ms) of each round of the summary table."""
    rows, columns = [], None
    for line in out.splitlines():
        cells = line.split()
        if cells[:3] == ["round", "clients", "seconds"]:
            columns = cells
        elif columns and cells and cells[0].isdigit() and len(cells) == len(columns):
            row = dict(zip(columns, cells))
            rows.append((float(row["seconds"]), float(row.get("train_ms", "0"))))
    return rows


def time_command(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", required=True)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--cpp-trainer",
                        help="the C++ trainer (default: BUILD's bench/ember-bench-trainer, else "
                             "tests/e2e/ember-test-trainer)")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.build = os.path.abspath(args.build)
    ember = os.path.join(args.build, "kernel", "ember")
    cpp_trainer = args.cpp_trainer
    for candidate in (("bench", "ember-bench-trainer"), ("tests", "e2e", "ember-test-trainer")):
        if cpp_trainer is None and os.path.exists(os.path.join(args.build, *candidate)):
            cpp_trainer = os.path.join(args.build, *candidate)
    if cpp_trainer is None:
        sys.exit("python_bench.py: no C++ trainer in the build (give --cpp-trainer)")
    python_dir = os.path.join(args.build, "sdk", "python")
    os.environ["PYTHONPATH"] = python_dir
    # As a user's environment has it: the first (warm-up) run caches the package's bytecode.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import numpy as np

    samples = {k: [] for k in ("ready_py", "ready_cpp", "python_exit", "python_import")}
    rounds = {"py": [], "cpp": []}
    with tempfile.TemporaryDirectory(prefix="ember-python-bench-") as work:
        script = os.path.join(work, "bench_trainer.py")
        with open(script, "w") as f:
            f.write(PY_TRAINER)
        small_py = job(os.path.join(work), ["python3", script], 1)
        os.rename(small_py, os.path.join(work, "small_py.toml"))
        small_cpp = job(work, [cpp_trainer], 1)
        os.rename(small_cpp, os.path.join(work, "small_cpp.toml"))
        print(f"python_bench.py: launch to SESSION_READY, {args.runs} runs each", file=sys.stderr)
        for i in range(args.runs + 1):  # the first run of each warms the page cache
            for key, name in (("ready_py", "small_py.toml"), ("ready_cpp", "small_cpp.toml")):
                ws = os.path.join(work, f"ws-{key}-{i}")
                simulate(ember, os.path.join(work, name), ws)
                if i:
                    samples[key].append(ready_ms(ws))
            if i:
                samples["python_exit"].append(time_command(["/usr/bin/python3", "-c", "pass"]))
                samples["python_import"].append(
                    time_command(["/usr/bin/python3", "-c", "import ember.client"]))

        model = os.path.join(work, "model.safetensors")
        write_model(model, args.mib)
        print(f"python_bench.py: {args.rounds} rounds of {args.mib} MiB with each trainer",
              file=sys.stderr)
        for key, command in (("py", ["python3", script]), ("cpp", [cpp_trainer])):
            job_file = job(work, command, args.rounds, model)
            out = simulate(ember, job_file, os.path.join(work, f"ws-round-{key}"))
            rounds[key] = round_rows(out)[1:]  # round 1 allocates the trainer's buffers
        src = np.ones(args.mib * (1 << 20) // 4, np.float32)
        dst = np.empty_like(src)
        copies = []
        for _ in range(max(5, args.runs)):
            start = time.perf_counter()
            np.copyto(dst, src)
            copies.append((time.perf_counter() - start) * 1000)

    med = statistics.median
    py_round = med(s for s, _ in rounds["py"]) * 1000
    cpp_round = med(s for s, _ in rounds["cpp"]) * 1000
    py_net = med(s * 1000 - t for s, t in rounds["py"])
    cpp_net = med(s * 1000 - t for s, t in rounds["cpp"])
    ready_py, ready_cpp = med(samples["ready_py"]), med(samples["ready_cpp"])
    table = [
        "| Measured | median | Baseline (same run) | median |",
        "|---|---:|---|---:|",
        "| launch to SESSION_READY: Python trainer (`import ember.client`, no torch) "
        f"| {ready_py:.2f} ms "
        f"| C++ trainer (the tests' Client API program) | {ready_cpp:.2f} ms |",
        f"| the Python trainer's overhead over the C++ one | {ready_py - ready_cpp:.2f} ms "
        f"| `python3 -c pass` / `python3 -c 'import ember.client'` (fork, exec, exit) "
        f"| {med(samples['python_exit']):.2f} / {med(samples['python_import']):.2f} ms |",
        f"| one round, {args.mib} MiB model, 1 site, Python trainer (wall) | {py_round:.2f} ms "
        f"| the same with the C++ trainer | {cpp_round:.2f} ms |",
        f"| the same, less each trainer's own work (Python / C++) "
        f"| {py_net:.2f} / {cpp_net:.2f} ms | ratio Python / C++ (wall; less the work) "
        f"| {py_round / cpp_round:.2f} / {py_net / cpp_net:.2f} |",
        f"| | | one copy of the {args.mib} MiB in one process (NumPy copyto, the floor) "
        f"| {med(copies):.2f} ms |",
    ]
    print("\n".join(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": samples, "rounds": rounds, "copies_ms": copies, "mib": args.mib,
                       "runs": args.runs, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
