"""ember-test-trainer's Python twin: a trainer for the Python tests, written against ember.client.

It answers each task with its params (or a layout of its own when the task has none) and misbehaves
on purpose on one site when asked to:
    py_trainer.py [--mode echo|raise|sigkill|clear|interrupt] [--bad-site SITE] [--from-round R]
                  [--check FILE] [--format numpy|torch] [--slow-site SITE] [--scale X]
--check FILE: the job's initial model (safetensors); every received tensor must equal it, dtype
and bytes, and view the message's memory. It writes its pid to trainer.pid (in the site workspace,
its cwd), and what it saw to report.json, so a test can check both.
"""

import argparse
import gc
import json
import os
import signal
import threading
import time

import ember.client as flare
from harness import read_safetensors


def tensor_bytes_and_address(value):
    """The bytes of a received tensor and where they are, without copying to find the address."""
    if hasattr(value, "data_ptr"):  # torch
        import torch
        address = value.data_ptr()
        if value.dtype == torch.bfloat16:
            value = value.view(torch.int16)
        return value.numpy().tobytes(), address
    return value.tobytes(), value.ctypes.data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="echo")
    parser.add_argument("--bad-site", default="")
    parser.add_argument("--from-round", type=int, default=0)
    parser.add_argument("--check", default="")
    parser.add_argument("--format", default=None)
    parser.add_argument("--slow-site", default="")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    with open("trainer.pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    site = os.environ.get("EMBER_SITE", "")
    bad = site == args.bad_site
    flare.init(params_format=args.format)
    flare.init()  # a second init() warns and does nothing
    report = {"config": flare.get_config(), "system_info": flare.system_info(), "rounds": [],
              "zero_copy": [], "mismatch": [], "kept_ok": None, "timeouts": 0, "interrupted": None}
    expected = read_safetensors(args.check) if args.check else {}
    kept = None  # a tensor kept past its message, checked at the end
    kept_bytes = None

    def save():
        with open("report.json", "w") as f:
            json.dump(report, f, indent=1)

    while flare.is_running():
        model = flare.receive()
        rnd = model.current_round
        misbehave = bad and rnd >= args.from_round
        report["rounds"].append({"round": rnd, "task": flare.get_task_name(),
                                 "train": flare.is_train(), "evaluate": flare.is_evaluate()})
        if misbehave and args.mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if misbehave and args.mode == "raise":
            save()
            raise ValueError(f"boom in round {rnd}")
        if misbehave and args.mode == "clear" and rnd == args.from_round:
            flare.clear(reason=f"site {site} declines round {rnd}")
            save()
            continue
        for name, value in (model.params or {}).items():
            data, address = tensor_bytes_and_address(value)
            report["zero_copy"].append(address == model._ember_wire[name][0])
            if name in expected:
                dtype, shape, raw = expected[name]
                if raw != data or tuple(value.shape) != shape:
                    report["mismatch"].append(name)
            if kept is None:
                kept, kept_bytes = value, data
        params = dict(model.params or {})
        if args.scale != 1.0:
            params = {name: value * args.scale for name, value in params.items()}
        result = flare.FLModel(params=params,
                               metrics={"num_samples": 10, "loss": 1.0 / (rnd + 1)},
                               meta={"site": site, "round": rnd})
        flare.log("loss", 1.0 / (rnd + 1), flare.AnalyticsDataType.SCALAR, global_step=rnd)
        flare.log("pair", {"a": 1, "b": 2}, "SCALARS")
        flare.log("note", f"round {rnd} done", flare.LogKind.TEXT)
        if not model.params and not flare.is_evaluate():
            result.params = {"w": [1.0, 2.0, 3.0, 4.0]}
        if flare.is_evaluate():
            result.params = None
        if site == args.slow_site and rnd == 0:
            time.sleep(1.5)  # the other sites' next task waits for this one
        flare.send(result)
        if misbehave and args.mode == "interrupt" and report["interrupted"] is None:
            # The next task waits for a slow site: a short receive() times out, a SIGINT ends a
            # long one. (not is_running(): as FLARE's, it would wait for the next task itself)
            if flare.receive(timeout=0.2) is None:
                report["timeouts"] += 1
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            start = time.monotonic()
            try:
                flare.receive()
                report["interrupted"] = "not interrupted"
            except KeyboardInterrupt:
                report["interrupted"] = round(time.monotonic() - start, 3)
            timer.join()
        save()
    gc.collect()
    if kept is not None:
        report["kept_ok"] = tensor_bytes_and_address(kept)[0] == kept_bytes
    report["ended_running"] = flare.is_running()
    save()
    flare.shutdown()


if __name__ == "__main__":
    main()
