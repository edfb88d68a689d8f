#!/usr/bin/env python3
"""Writes the "Docker launcher" section of docs/BENCHMARKS.md from docker_bench's JSON, replacing the section if
the file has one, else placing it before "## Notes" (or at the end). The rest of the file is left as it is, so
`bench/run_benchmarks.sh --docker-only` refreshes this section alone."""

import argparse
import json
import re

HEADING = "## Docker launcher (issue 16)"
TARGET_MS = 50.0


def ms(value):
    return f"{value:.1f} ms"


def section(data, meta):
    launch = data["launch_docker"]["median_ms"]
    run_trainer = data["run_trainer"]["median_ms"]
    run_true = data["run_true"]["median_ms"]
    process = data["launch_process"]["median_ms"]
    overhead = launch - run_trainer
    met = "met" if overhead <= TARGET_MS else "not met"
    out = [HEADING, ""]
    out.append(
        "`bench/docker_bench.cpp` starts podman's Docker-compatible service for the run (its own store, a busybox "
        "image imported without a registry, `--network none`), then drives `executor.external-trainer`'s start() "
        "in process through `launcher.docker`: the bootstrap file, container create and start over the Engine API, "
        "and `ember-bench-trainer` (the tests' Client API trainer, run from the build tree, which the container sees "
        "read-only with the host's /usr) until SESSION_READY. The baselines go through the same engine in the same "
        "run: `podman --remote run --rm` of the same image and mounts, running the same trainer (it finds no "
        "bootstrap file and exits) and busybox's `true`, each to its exit. "
        f"{data['runs']} samples of each after one warm-up, taken in turn; {meta.get('engine', '').strip()}.")
    out.append("")
    out.append(f"Machine: {meta.get('nproc', '?')} cores, load {meta.get('load', '?')}; {meta.get('build', '')}; "
               f"commit {meta.get('commit', '?')}; {meta.get('date', '')}. Command: `{meta.get('command', '')}`.")
    out.append("")
    out.append("| Measured | median | Baseline (same run, same engine) | median |")
    out.append("|---|---:|---|---:|")
    out.append(f"| launch to SESSION_READY through launcher.docker | {ms(launch)} | "
               f"`podman run --rm` of the same image and trainer, to its exit | {ms(run_trainer)} |")
    out.append(f"| | | `podman run --rm` of the same image running `true` | {ms(run_true)} |")
    out.append(f"| launch to SESSION_READY through launcher.process (no container) | {ms(process)} | | |")
    out.append("")
    out.append(f"Target: ember's overhead at most {TARGET_MS:.0f} ms over the engine's own start. Launch to "
               f"SESSION_READY minus `podman run` of the same trainer: {overhead:+.1f} ms ({met}). `podman run` "
               "pays for its own client process, attaching to the container's output, waiting for the exit and "
               "removing the container, which a launch does after SESSION_READY or not at all on this path; the "
               "launch pays for the session (bootstrap, plugin load, HELLO), which launcher.process's row shows "
               "alone. Samples (ms): "
               + "; ".join(f"{data[k]['what']}: " + ", ".join(f"{v:.0f}" for v in data[k]['samples_ms'])
                           for k in ("launch_docker", "run_trainer", "run_true", "launch_process")) + ".")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docker", required=True, help="docker_bench --json output")
    parser.add_argument("--output", required=True, help="docs/BENCHMARKS.md: the section is replaced or added")
    parser.add_argument("--meta", action="append", default=[], help="key=value shown in the section's header")
    args = parser.parse_args()
    data = json.load(open(args.docker))
    meta = dict(m.split("=", 1) for m in args.meta)
    meta.setdefault("engine", data.get("engine", ""))
    new = "\n".join(section(data, meta)) + "\n"
    try:
        text = open(args.output).read()
    except FileNotFoundError:
        text = "# Benchmarks\n\n"
    start = text.find(HEADING + "\n")
    if start >= 0:
        rest = re.search(r"^## ", text[start + len(HEADING):], re.M)
        end = start + len(HEADING) + rest.start() if rest else len(text)
        text = text[:start] + new + "\n" + text[end:] if rest else text[:start] + new
    else:
        notes = re.search(r"^## Notes$", text, re.M)
        text = text[:notes.start()] + new + "\n" + text[notes.start():] if notes else text.rstrip("\n") + "\n\n" + new
    with open(args.output, "w") as out:
        out.write(text)


if __name__ == "__main__":
    main()
