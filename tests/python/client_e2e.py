"""Python trainers end to end: ember simulate with tests/python/py_trainer.py as every site's
trainer. Each test checks what the job reports, what the trainer saw (its report.json) and that no
trainer survived.
"""

import os
import struct
import sys
import tempfile
import unittest

import harness

harness.require("numpy")

TRAINER = os.path.join(harness.HERE, "py_trainer.py")


def initial_model():
    """Every dtype fedavg averages (not BOOL), with values that a mean of equals keeps exact."""
    import numpy as np
    bf16 = struct.pack("<4H", 0x3FC0, 0xC010, 0x0000, 0x4049)  # 1.5, -2.25, 0, 3.140625
    return {
        "f32": ("F32", (2, 2), np.array([[1.5, -2.0], [0.25, 8.0]], np.float32).tobytes()),
        "f64": ("F64", (3,), np.array([1e-300, -0.5, 3.0], np.float64).tobytes()),
        "f16": ("F16", (2,), np.array([0.5, -65504.0], np.float16).tobytes()),
        "bf16": ("BF16", (4,), bf16),
        "i8": ("I8", (2,), np.array([-128, 127], np.int8).tobytes()),
        "u8": ("U8", (2,), np.array([0, 255], np.uint8).tobytes()),
        "i16": ("I16", (1,), np.array([-300], np.int16).tobytes()),
        "u16": ("U16", (1,), np.array([65000], np.uint16).tobytes()),
        "i32": ("I32", (1,), np.array([-70000], np.int32).tobytes()),
        "u32": ("U32", (1,), np.array([4000000000], np.uint32).tobytes()),
        "i64": ("I64", (1,), np.array([-(2 ** 40)], np.int64).tobytes()),
        "u64": ("U64", (1,), np.array([2 ** 41], np.uint64).tobytes()),
        "scalar": ("F32", (), np.array(7.0, np.float32).tobytes()),
    }


class PythonTrainer(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="ember-py-")
        self.ws = os.path.join(self.dir.name, "ws")

    def tearDown(self):
        self.assertEqual(harness.trainers_left(self.ws), [], "a trainer survived its job")
        self.dir.cleanup()

    def run_job(self, args, log_level=None, **job):
        path = harness.write_job(self.dir.name, ["python3", TRAINER] + args, **job)
        code, out, err = harness.simulate(path, self.ws, log_level=log_level)
        return code, out + err

    def check_round_trip(self, fmt, pipe):
        model = os.path.join(self.dir.name, "initial.safetensors")
        harness.write_safetensors(model, initial_model())
        config = {"lr": 0.5, "name": "cnn", "layers": [1, 2], "nested": {"a": True}}
        code, out = self.run_job(["--check", model, "--format", fmt], pipe=pipe,
                                 initial_model=model, trainer_config=config,
                                 executor={"train_task": "fit"}, converters=fmt == "torch")
        # fedavg sends "train": with train_task = "fit" the trainer's is_train() says no.
        self.assertEqual(code, 0, out)
        for site in ("site-1", "site-2"):
            report = harness.report(self.ws, site)
            self.assertEqual(report["mismatch"], [], site)
            self.assertTrue(report["zero_copy"] and all(report["zero_copy"]), report["zero_copy"])
            self.assertTrue(report["kept_ok"], "a tensor kept past its message changed")
            self.assertEqual(report["config"], config)
            self.assertEqual(report["system_info"]["site_name"], site)
            self.assertEqual(report["system_info"]["job_id"], "py-e2e")
            self.assertEqual(report["system_info"]["train_task"], "fit")
            self.assertFalse(report["rounds"][0]["train"])
            self.assertEqual(report["rounds"][0]["task"], "train")
            self.assertTrue(report["rounds"][-1]["evaluate"])
            self.assertFalse(report["ended_running"])
        final = harness.read_safetensors(os.path.join(self.ws, "server", "model.safetensors"))
        for name, (dtype, shape, raw) in initial_model().items():
            self.assertEqual(final[name], (dtype, shape, raw), name)

    def test_every_dtype_round_trips_as_numpy_views_over_the_socket_pipe(self):
        self.check_round_trip("numpy", "pipe.socket")

    def test_every_dtype_round_trips_as_torch_views_over_the_file_pipe(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            self.skipTest("python3-torch is not installed")
        self.check_round_trip("torch", "pipe.file")

    def test_a_tensor_kept_past_its_message_keeps_its_memory_and_logs_reach_the_job(self):
        # Each round doubles the model: had the first round's memory gone back to the message buffers'
        # pool, a later round would have overwritten the tensor the trainer kept.
        code, out = self.run_job(["--scale", "2"], rounds=4, log_level="info")
        self.assertEqual(code, 0, out)
        for site in ("site-1", "site-2"):
            self.assertTrue(harness.report(self.ws, site)["kept_ok"], site)
        with open(os.path.join(self.ws, "metrics.jsonl")) as f:
            metrics = f.read()
        for key in ('"loss"', '"pair/a"', '"pair/b"'):
            self.assertIn(key, metrics)
        with open(os.path.join(self.ws, "site-1", "log.txt")) as f:
            self.assertIn("trainer: note: round 1 done", f.read())

    def test_a_trainer_that_raises_ends_its_session_and_the_site_reports_the_error(self):
        code, out = self.run_job(["--mode", "raise", "--bad-site", "site-2", "--from-round", "1"],
                                 rounds=3)
        self.assertEqual(code, 0, out)
        self.assertIn("site-2  FAILED", out)
        self.assertIn("the trainer raised ValueError: boom in round 1 (py_trainer.py:", out)
        # site-1 goes on: 3 rounds and the final evaluation
        self.assertEqual(len(harness.report(self.ws, "site-1")["rounds"]), 4, out)

    def test_a_trainer_killed_by_sigkill_is_reported_as_a_cpp_one_is(self):
        code, out = self.run_job(["--mode", "sigkill", "--bad-site", "site-2",
                                  "--from-round", "1"])
        self.assertEqual(code, 0, out)
        self.assertIn("site-2  FAILED", out)
        self.assertIn("killed by signal 9", out)

    def test_clear_declines_a_task_and_the_trainer_lives_on(self):
        code, out = self.run_job(["--mode", "clear", "--bad-site", "site-2", "--from-round", "1"],
                                 rounds=3)
        self.assertEqual(code, 0, out)
        self.assertIn("the trainer declined task 'train' round 1: site site-2 declines round 1",
                      out)
        rounds = [r["round"] for r in harness.report(self.ws, "site-2")["rounds"]]
        self.assertEqual(rounds, [0, 1, 2, 3], out)  # it went on after declining round 1

    def test_receive_times_out_and_ctrl_c_interrupts_a_waiting_receive(self):
        code, out = self.run_job(["--mode", "interrupt", "--bad-site", "site-2",
                                  "--slow-site", "site-1"], min_clients=2)
        self.assertEqual(code, 0, out)
        report = harness.report(self.ws, "site-2")
        self.assertEqual(report["timeouts"], 1, out)
        self.assertIsInstance(report["interrupted"], float, out)
        self.assertLess(report["interrupted"], 1.0, out)

    def test_a_flare_style_script_runs_with_its_import_line_changed(self):
        script = os.path.join(harness.HERE, "flare_style.py")
        with open(script) as f:
            imports = [line for line in f
                       if line.startswith(("import ", "from ")) and "flare" in line]
        self.assertEqual(
            imports, ["import ember.client as flare  # was: import nvflare.client as flare\n"])
        path = harness.write_job(self.dir.name, ["python3", script], rounds=2,
                                 trainer_config={"scale": 2.0})
        code, out, err = harness.simulate(path, self.ws)
        self.assertEqual(code, 0, out + err)
        self.assertIn("finished", out)
        for site in ("site-1", "site-2"):
            with open(os.path.join(self.ws, site, "flare-style.txt")) as f:
                self.assertEqual(f.read().split(), ["train", "train", "evaluate", "done"])


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
