"""A training script in the FLARE Client API's style that calls only that API's functions: with
its import line changed, it runs under ember. It writes the tasks it saw to flare-style.txt in its
workspace."""

import numpy as np

import ember.client as flare  # was: import nvflare.client as flare


def main():
    flare.init()
    scale = float(flare.get_config().get("scale", 1.0))
    info = flare.system_info()
    assert flare.get_site_name() == info["site_name"], info
    assert flare.get_job_id() == info["job_id"], info
    seen = []
    while flare.is_running():
        input_model = flare.receive()
        seen.append(flare.get_task_name())
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"accuracy": 0.5, "num_samples": 4}))
            continue
        assert flare.is_train() and not flare.is_submit_model()
        params = input_model.params or {"w": np.ones(4, np.float32)}
        output = {name: (np.asarray(value) * scale).astype(np.float32)
                  for name, value in params.items()}
        flare.send(flare.FLModel(params=output, params_type="FULL", metrics={"num_samples": 4},
                                 current_round=input_model.current_round))
    flare.clear()
    with open("flare-style.txt", "w") as f:
        f.write(" ".join(seen + ["done"]) + "\n")
    flare.shutdown()


if __name__ == "__main__":
    main()
