"""The hello-pt job (configs/jobs/hello-pt) over the socket pipe and the file pipe: the Python
PyTorch trainer completes every round and the final model is clearly better than the first
round's."""

import os
import sys
import tempfile
import unittest

import harness

harness.require("numpy", "torch")


def accuracy_of_row(out, row):
    # Summary rows: "<row> <clients> <seconds> <train_loss> <val_accuracy> <val_loss>".
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 6 and cells[0] == row:
            return float(cells[4])
    return -1.0


class HelloPt(unittest.TestCase):
    def check(self, job_file):
        job = os.path.join(harness.SOURCE_ROOT, "configs", "jobs", "hello-pt", job_file)
        with tempfile.TemporaryDirectory(prefix="ember-hello-pt-") as folder:
            ws = os.path.join(folder, "ws")
            code, out, err = harness.simulate(job, ws)
            self.assertEqual(code, 0, out + err)
            self.assertIn("val_accuracy", out)
            first, last = accuracy_of_row(out, "1"), accuracy_of_row(out, "final")
            self.assertGreater(first, 0, out)
            self.assertGreater(last, first + 0.2, out)
            self.assertTrue(os.path.exists(os.path.join(ws, "server", "model.safetensors")))

    def test_socket_pipe(self):
        self.check("job.toml")

    def test_file_pipe(self):
        self.check("file-pipe.toml")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
