#!/usr/bin/env python3
"""A federation's costs, each beside a baseline measured in the same run (issue "A real federation").

  submit   `ember submit` to the first task reaching a trainer, on loopback with mutual TLS (target < 1 s);
           baseline: `ember simulate` of the same job, from its start to its first task.
  round    a FedAvg round of a 100 MiB model with 8 sites over the cell network (the server job, the server,
           each site's daemon and client job, each its own process); baseline: the same round in
           `ember simulate` (target <= 1.5x).
  abort    `ember abort` mid-round to the last process of the job gone, beside the job's shutdown_grace.

  federation_bench.py --ember PATH --trainer PATH [--sites N] [--mib M] [--rounds R] [--runs K]
                      [--section FILE]

Every process is started here and stopped here; everything lives in a temporary folder that is removed.
With --section, the "Federation" section of FILE (docs/BENCHMARKS.md) is replaced by the table.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2:].split()
        if rest[0] != "Z":
            children.setdefault(int(rest[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


class Federation:
    def __init__(self, ember, trainer, sites, tmp):
        self.ember, self.trainer, self.tmp = ember, trainer, tmp
        self.sites = [f"site-{i + 1}" for i in range(sites)]
        port = free_port()
        project = (f'[project]\nname = "bench"\n[server]\nhosts = ["127.0.0.1"]\nport = {port}\n'
                   + "".join(f'[[sites]]\nname = "{s}"\n' for s in self.sites)
                   + '[[admins]]\nname = "bench@example.org"\n')
        with open(f"{tmp}/project.toml", "w") as f:
            f.write(project)
        subprocess.run([ember, "provision", f"{tmp}/project.toml", "--out", f"{tmp}/kits"], check=True,
                       stdout=subprocess.DEVNULL)
        self.kit = f"{tmp}/kits/bench@example.org"
        self.procs = []
        self.server = self.start(["server", f"{tmp}/kits/server", "-w", f"{tmp}/server-ws"], "server")
        for s in self.sites:
            self.start(["client", f"{tmp}/kits/{s}", "-w", f"{tmp}/{s}-ws"], s)
        deadline = time.time() + 60
        while time.time() < deadline:
            sites = self.admin("status").get("sites", [])
            if sum(1 for s in sites if s.get("connected")) == len(self.sites):
                return
            time.sleep(0.1)
        raise RuntimeError("the sites did not join the server")

    def start(self, args, name):
        log = open(f"{self.tmp}/{name}.log", "w")
        p = subprocess.Popen([self.ember] + args, stdout=log, stderr=log, start_new_session=True,
                             env=dict(os.environ, EMBER_LOG="warn"))
        self.procs.append(p)
        return p

    def admin(self, *args):
        r = subprocess.run([self.ember, *args, "--kit", self.kit, "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ember {' '.join(args)}: {r.stderr}")
        return json.loads(r.stdout)

    def processes(self):
        return sum(len(descendants(p.pid)) for p in self.procs)

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def write_job(folder, trainer, floats, rounds, min_clients, delay_ms=0, grace="2s"):
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/job.toml", "w") as f:
        f.write(f'schema_version = 1\n[job]\nname = "bench"\n[timeouts]\nlaunch = "60s"\ntask_wait = "60s"\n'
                f'result_wait = "10m"\nshutdown_grace = "{grace}"\nstream_idle = "60s"\n'
                f'[components.fedavg]\ntype = "workflow.fedavg"\nrounds = {rounds}\nmin_clients = {min_clients}\n'
                f'[components.trainer]\ntype = "executor.external-trainer"\n'
                f'command = ["{trainer}", "--size", "{floats}", "--delay-ms", "{delay_ms}"]\n'
                f'[components.launcher]\ntype = "launcher.process"\n[components.pipe]\ntype = "pipe.socket"\n')
    return folder


def first_task(paths, deadline):
    """Seconds since the epoch when a told.txt under `paths` first holds a task line (polled every 2 ms)."""
    while time.time() < deadline:
        for root in paths:
            for dirpath, _, files in os.walk(root):
                if "told.txt" in files:
                    with open(os.path.join(dirpath, "told.txt")) as f:
                        if "\ntask " in "\n" + f.read():
                            return time.time()
        time.sleep(0.002)
    seen = [os.path.join(d, f) for root in paths for d, _, fs in os.walk(root) for f in fs]
    raise RuntimeError(f"no task reached a trainer under {paths}: {seen[:20]}")


def wait_state(fed, job_id, done, bound=600):
    deadline = time.time() + bound
    while time.time() < deadline:
        s = fed.admin("status", job_id)
        if done(s):
            return s
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not get there")


def over(s):
    return s.get("state") in ("finished", "failed", "aborted")


def simulate(ember, job, clients, tmp, name):
    ws = f"{tmp}/{name}"
    t0 = time.time()
    p = subprocess.Popen([ember, "simulate", job, "--clients", str(clients), "--workspace", ws, "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = first_task([ws], time.time() + 60)
    p.wait(600)
    rounds = []
    with open(f"{ws}/metrics.jsonl") as f:
        for line in f:
            m = json.loads(line)
            if m.get("key") == "round_seconds" and m.get("source", "server") == "server":
                rounds.append(m["value"])
    return first - t0, rounds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", required=True)
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--section")
    ap.add_argument("--how", default="`bench/run_benchmarks.sh --federation-only` (release tree)",
                    help="how the figures were made, for the section's first line")
    ap.add_argument("--from-json", help="write the section from an earlier run's JSON instead of running")
    a = ap.parse_args()
    if a.from_json:
        write_section(a.section, json.load(open(a.from_json)), a)
        return 0
    # SIGTERM ends the run like Ctrl-C: the daemons it started are stopped and the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    a.ember, a.trainer = os.path.abspath(a.ember), os.path.abspath(a.trainer)
    tmp = tempfile.mkdtemp(prefix="ember-fed-bench.")
    results = {}
    fed = None
    try:
        fed = Federation(a.ember, a.trainer, a.sites, tmp)
        ws = [f"{tmp}/{s}-ws" for s in fed.sites]
        # submit -> first task, against simulate's start -> first task, same small job.
        small = write_job(f"{tmp}/small", a.trainer, 4, 1, 1)
        submit, sim_first = [], []
        for i in range(a.runs):
            t0 = time.time()
            job_id = fed.admin("submit", small)["job_id"]
            submit.append(first_task(ws, t0 + 60) - t0)
            wait_state(fed, job_id, over)
            sim_first.append(simulate(a.ember, small, a.sites, tmp, f"sim-small-{i}")[0])
            for root in ws:  # the next run's first task must be a new one
                for entry in os.listdir(root):
                    if entry.startswith("bench-"):
                        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        results["submit"] = {"federation_s": statistics.median(submit), "simulate_s": statistics.median(sim_first),
                             "runs": a.runs}
        # A FedAvg round of an M MiB model with every site.
        floats = a.mib * (1 << 20) // 4
        big = write_job(f"{tmp}/big", a.trainer, floats, a.rounds, a.sites)
        s = wait_state(fed, fed.admin("submit", big)["job_id"], over)
        fed_rounds = [r["metrics"]["round_seconds"] for r in s["rounds"] if "round_seconds" in r["metrics"]]
        _, sim_rounds = simulate(a.ember, big, a.sites, tmp, "sim-big")
        # Round 1 carries no model to the sites (FedAvg has none yet): later rounds move it both ways.
        results["round"] = {"federation_s": statistics.median(fed_rounds[1:] or fed_rounds),
                            "simulate_s": statistics.median(sim_rounds[1:] or sim_rounds),
                            "sites": a.sites, "mib": a.mib}
        # Abort mid-round to the last process gone.
        slow = write_job(f"{tmp}/slow", a.trainer, 4, 100000, 1, delay_ms=300, grace="2s")
        aborts = []
        for _ in range(3):
            job_id = fed.admin("submit", slow)["job_id"]
            wait_state(fed, job_id, lambda st: len(st.get("rounds", [])) >= 2)
            t0 = time.time()
            fed.admin("abort", job_id)
            while fed.processes() > 0 and time.time() - t0 < 30:
                time.sleep(0.005)
            aborts.append(time.time() - t0)
        results["abort"] = {"seconds": statistics.median(aborts), "shutdown_grace_s": 2.0}
    finally:
        if fed:
            fed.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if a.section:
        write_section(a.section, results, a)


def write_section(path, r, a):
    lines = [
        "## Federation",
        "",
        f"{a.how}: `ember server`, {a.sites} `ember client` daemons and their job processes on this machine",
        "(2 cores), over mutual TLS on loopback, driven by the admin commands (bench/federation_bench.py). Each",
        "federation number is beside a baseline measured in the same run.",
        "",
        "| case | federation | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
        f"| `ember submit` to the first task at a trainer (median of {r['submit']['runs']}) | "
        f"{r['submit']['federation_s'] * 1000:.0f} ms | `ember simulate` start to its first task: "
        f"{r['submit']['simulate_s'] * 1000:.0f} ms | {r['submit']['federation_s'] / r['submit']['simulate_s']:.2f}x | < 1 s |",
        f"| a FedAvg round, {r['round']['mib']} MiB model, {r['round']['sites']} sites (median of rounds 2..) | "
        f"{r['round']['federation_s']:.2f} s | the same round in `ember simulate`: {r['round']['simulate_s']:.2f} s | "
        f"{r['round']['federation_s'] / r['round']['simulate_s']:.2f}x | <= 1.5x |",
        f"| `ember abort` mid-round to the last process gone (median of 3) | {r['abort']['seconds'] * 1000:.0f} ms | "
        f"shutdown_grace {r['abort']['shutdown_grace_s']:.0f} s | | <= grace + 1 s |",
        "",
    ]
    section = "\n".join(lines)
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pattern = re.compile(r"## Federation\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    sys.exit(main())
