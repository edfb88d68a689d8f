#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md from startup_bench's and plugin_load_bench's JSON (see run_benchmarks.sh)."""

import argparse
import json

TARGET_MS = 20.0

# Fresh-process rows: (measured case, its baseline case, what the difference of the two stands for).
STARTUP_ROWS = [
    ("ember_plugins", "ember_version", "plugin discovery + load + listing, above bare start-up"),
    ("ember_plugins", "ember_plugins_empty", "the ten plugins alone (same command, empty folder)"),
    ("raw_dlopen", "raw_dlopen_empty", "mapping and relocating the ten files, nothing else"),
    ("ember_plugins_empty", "ember_version", "kernel set-up, search and JSON with no plugin"),
]

# In-process rows: (benchmark, baseline benchmark, note).
LOAD_ROWS = [
    ("kernel_load/bench10", "raw_dlopen/bench10", "Kernel + load_plugins() vs bare dlopen/dlclose"),
    ("kernel_load/bench10", "discovery/bench10", "Kernel + load_plugins() vs discovery alone"),
    ("kernel_load/reference", "raw_dlopen/reference", "Kernel + load_plugins() vs bare dlopen/dlclose"),
    ("kernel_load/reference", "discovery/reference", "Kernel + load_plugins() vs discovery alone"),
    ("kernel_load/reference", "kernel_construct", "Kernel + load_plugins() vs a Kernel that loads nothing"),
]

LOAD_LABELS = {
    "kernel_load/bench10": "Kernel, discover + load the 10 benchmark plugins",
    "kernel_load/reference": "Kernel, discover + load the 4 reference plugins (`<build>/plugins`)",
    "discovery/bench10": "discovery only (10 plugins)",
    "discovery/reference": "discovery only (reference tree)",
    "raw_dlopen/bench10": "bare dlopen + dlclose of the 10 files",
    "raw_dlopen/reference": "bare dlopen + dlclose of the 4 files",
    "kernel_construct": "construct a Kernel, load nothing",
}


def startup_stats(path):
    data = json.load(open(path))
    return data, {c["id"]: c for c in data["cases"]}


def load_stats(path):
    """{benchmark: {aggregate: real time in microseconds}}, from Google Benchmark's JSON output."""
    factor = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
    out = {}
    for b in json.load(open(path))["benchmarks"]:
        if b.get("run_type") != "aggregate" or "error_occurred" in b:
            continue
        name = b["run_name"].split("/min_time:")[0].split("/repeats:")[0]
        out.setdefault(name, {})[b["aggregate_name"]] = b["real_time"] * factor[b["time_unit"]]
        out[name]["repetitions"] = b["repetitions"]
    return out


def fmt(value, digits=2):
    return f"{value:.{digits}f}"


def write(args):
    meta = dict(item.split("=", 1) for item in args.meta)
    startup, cases = startup_stats(args.startup)
    load = load_stats(args.load)
    lines = []
    add = lines.append

    add("# Benchmarks")
    add("")
    add("Plugin discovery and loading, and `ember` start-up. Written by `bench/run_benchmarks.sh`; do not edit "
        "by hand, run it again. Every number sits beside a baseline measured in the same run.")
    add("")
    add("| | |")
    add("|---|---|")
    for key, label in [("date", "Date"), ("cpu", "CPU (/proc/cpuinfo)"), ("nproc", "nproc"),
                       ("memory", "Memory"), ("kernel", "OS kernel"), ("load", "Load average (1, 5, 15 min)"),
                       ("compiler", "Compiler"), ("build", "Build"), ("commit", "Commit")]:
        add(f"| {label} | {meta.get(key, '?')} |")
    add(f"| Command | `{meta.get('command', 'bench/run_benchmarks.sh')}` |")
    add("")

    ten = cases["ember_plugins"]
    work = ten["median_ms"] - cases["ember_version"]["median_ms"]
    verdict = "met" if ten["median_ms"] < TARGET_MS else "NOT met"
    add("## Summary")
    add("")
    add(f"Target: ten plugins without LibTorch discovered and loaded in under {TARGET_MS:.0f} ms — **{verdict}**. "
        f"A whole `ember plugins --json` process with the ten plugins takes {fmt(ten['median_ms'])} ms "
        f"(median; p90 {fmt(ten['p90_ms'])} ms), of which {fmt(work)} ms is above a bare `ember version`.")
    add("")

    add(f"## 1. Fresh process per sample ({startup['runs']} samples per case, {startup['warmup']} warm-up)")
    add("")
    add("Each sample spawns a new process (`posix_spawn` to `waitpid`, output to /dev/null), so no plugin library "
        "is mapped when it starts; the files themselves are in the page cache after the warm-up. The cases run "
        "interleaved. Times in milliseconds.")
    add("")
    add("| Measured | median | p90 | Baseline (same run) | median | p90 | Difference of medians |")
    add("|---|---:|---:|---|---:|---:|---|")
    for measured, baseline, meaning in STARTUP_ROWS:
        m, b = cases[measured], cases[baseline]
        add(f"| {m['label']} | {fmt(m['median_ms'])} | {fmt(m['p90_ms'])} | {b['label']} | "
            f"{fmt(b['median_ms'])} | {fmt(b['p90_ms'])} | {fmt(m['median_ms'] - b['median_ms'])}: {meaning} |")
    add("")
    add("All cases:")
    add("")
    add("| Case | median | p90 | min | mean | Command |")
    add("|---|---:|---:|---:|---:|---|")
    for c in startup["cases"]:
        add(f"| {c['label']} | {fmt(c['median_ms'])} | {fmt(c['p90_ms'])} | {fmt(c['min_ms'])} | "
            f"{fmt(c['mean_ms'])} | `{c['command']}` |")
    add("")

    reps = next(iter(load.values()), {}).get("repetitions", "?")
    add(f"## 2. In process, libraries already mapped (Google Benchmark, {reps} repetitions)")
    add("")
    add("A fresh `Kernel` per iteration runs `load_plugins()` on one folder. The benchmark holds its own "
        "`dlopen` handle on every file for the whole run, so each `dlopen` only finds the library already "
        "mapped: this is the kernel's own work (folder scan, entry symbol, descriptor checks, option defaults, "
        "registry), not mapping and relocation (section 1 measures those). Median and p90 over the "
        "repetitions of wall-clock time per iteration, in microseconds.")
    add("")
    add("| Measured | median | p90 | Baseline (same run) | median | p90 | Note |")
    add("|---|---:|---:|---|---:|---:|---|")
    for measured, baseline, note in LOAD_ROWS:
        if measured not in load or baseline not in load:
            continue
        m, b = load[measured], load[baseline]
        add(f"| {LOAD_LABELS[measured]} | {fmt(m['median'], 1)} | {fmt(m['p90'], 1)} | {LOAD_LABELS[baseline]} | "
            f"{fmt(b['median'], 1)} | {fmt(b['p90'], 1)} | {note} |")
    add("")

    add("## Notes")
    add("")
    add("- The ten benchmark plugins are `bench/plugins/bench_plugin.cpp` compiled ten times (`applet.bench0` to "
        "`applet.bench9`, two options each), in one folder `<build>/bench/plugins`.")
    add("- `raw dlopen` is `bench/dlopen_raw.cpp`: it lists the folder and `dlopen`s each file with "
        "`RTLD_NOW | RTLD_LOCAL`, nothing else. Both it and `ember` are C++ programs linked against libstdc++, "
        "so their empty-folder runs are the process start-up floor of each.")
    add("- The machine is shared (see the load average): medians and p90 are reported rather than means, and "
        "the cases are interleaved so that load falls on measured and baseline alike.")
    add("- Benchmarks are not tests: nothing here fails a build. `meson test --benchmark -C <build>` runs the same "
        "programs without writing this file.")
    add("")
    with open(args.output, "w") as out:
        out.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--startup", required=True, help="startup_bench --json output")
    parser.add_argument("--load", required=True, help="plugin_load_bench --benchmark_out JSON")
    parser.add_argument("--output", required=True, help="the Markdown file to write")
    parser.add_argument("--meta", action="append", default=[], help="key=value shown in the header table")
    write(parser.parse_args())


if __name__ == "__main__":
    main()
