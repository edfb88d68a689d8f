"""Echoes every task's params back, as they were received, for dtype_echo_test.cpp (the job end).

    echo_trainer.py numpy|torch

It checks that each received tensor views the message's memory (exit code 3 if not) and sends the
very same arrays or tensors back, so the result is read from the received message's memory.
"""

import sys

import ember.client as flare


def main():
    flare.init(params_format=sys.argv[1])
    while True:
        model = flare.receive()
        if model is None:
            break
        for name, value in model.params.items():
            if model._ember_wire[name][1] == 0:
                continue  # no bytes, nothing to share
            address = value.data_ptr() if hasattr(value, "data_ptr") else value.ctypes.data
            if address != model._ember_wire[name][0]:
                print(f"echo_trainer: tensor '{name}' is a copy", file=sys.stderr)
                sys.exit(3)
        flare.send(flare.FLModel(params=model.params, metrics={"tensors": len(model.params)}))
    flare.shutdown()


if __name__ == "__main__":
    main()
