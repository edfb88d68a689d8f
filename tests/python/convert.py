"""ember.client without a job: tensor conversion for send(), the bfloat16 helpers, errors."""

import os
import subprocess
import sys
import unittest

import harness

harness.require("numpy")

import numpy as np  # noqa: E402

import ember.client as client  # noqa: E402


class Convert(unittest.TestCase):
    def test_numpy_dtypes_map_to_wire_dtypes(self):
        for dtype, wire in [(np.bool_, "BOOL"), (np.uint8, "U8"), (np.int8, "I8"),
                            (np.int16, "I16"), (np.uint16, "U16"), (np.int32, "I32"),
                            (np.uint32, "U32"), (np.int64, "I64"), (np.uint64, "U64"),
                            (np.float16, "F16"), (np.float32, "F32"), (np.float64, "F64")]:
            a = np.zeros((2, 3), dtype)
            name, got, shape, buf = client._wire_tensor("t", a)
            self.assertEqual((name, got, shape), ("t", wire, [2, 3]))
            self.assertIs(buf, a)  # no copy

    def test_a_non_contiguous_array_is_made_contiguous_keeping_its_shape(self):
        a = np.arange(12, dtype=np.float32).reshape(3, 4).T
        _, _, shape, buf = client._wire_tensor("t", a)
        self.assertEqual(shape, [4, 3])
        self.assertTrue(buf.flags.c_contiguous)
        np.testing.assert_array_equal(buf, a)

    def test_an_unsupported_dtype_is_refused_naming_the_tensor(self):
        with self.assertRaisesRegex(TypeError, "tensor 'c': dtype complex64 cannot be sent"):
            client._wire_tensor("c", np.zeros(2, np.complex64))

    def test_bfloat16_helpers_are_exact_and_tag_the_array(self):
        values = np.array([1.5, -2.25, 0.0, 3.140625, 1e30], np.float32)
        bf16 = client.float32_to_bfloat16(values)
        self.assertEqual(bf16.dtype.metadata, {"ember_dtype": "BF16"})
        self.assertEqual(client._wire_tensor("b", bf16)[1], "BF16")
        back = client.bfloat16_to_float32(bf16)
        np.testing.assert_array_equal(back[:4], values[:4])
        halfway = client.float32_to_bfloat16(np.float32(1.00390625))
        self.assertEqual(int(halfway.item()), 0x3F80)  # ties go to even

    def test_torch_tensors_are_sent_from_their_memory_and_bfloat16_keeps_its_dtype(self):
        try:
            import torch
        except ImportError:
            self.skipTest("python3-torch is not installed")
        t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        _, dtype, shape, buf = client._wire_tensor("t", t)
        self.assertEqual((dtype, shape), ("F32", [2, 3]))
        self.assertEqual(buf.ctypes.data, t.data_ptr())
        b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
        _, dtype, _, buf = client._wire_tensor("b", b)
        self.assertEqual(dtype, "BF16")
        self.assertEqual(buf.ctypes.data, b.data_ptr())
        self.assertEqual(buf.view(np.uint16).tolist(), [0x3FC0, 0xC000])
        _, dtype, shape, buf = client._wire_tensor("nc", torch.zeros(3, 2).t())
        self.assertEqual((dtype, shape), ("F32", [2, 3]))

    def test_calls_before_init_say_so(self):
        with self.assertRaisesRegex(RuntimeError, r"call ember.client.init\(\) first"):
            client.receive()
        self.assertFalse(client.is_running())

    def test_init_without_a_bootstrap_names_what_is_missing(self):
        env = dict(os.environ)
        env.pop("EMBER_BOOTSTRAP", None)
        code = ("import ember.client as c\n"
                "try:\n    c.init()\nexcept c.EmberError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=30).stdout
        self.assertIn("EMBER_BOOTSTRAP is not set", out)

    def test_a_bad_params_format_is_refused(self):
        with self.assertRaisesRegex(ValueError, "params_format must be 'numpy' or 'torch'"):
            client.init(params_format="jax")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
