#!/bin/sh
# Builds a release tree, runs the plugin-load, start-up, pipe, aggregation, job and cell network benchmarks
# and writes docs/BENCHMARKS.md.
#
#   bench/run_benchmarks.sh [--build-dir DIR] [--runs N] [--pipe-runs M] [--cell-runs K] [--no-profile]
#                           [--output FILE] [--cell-only] [--docker-only] [--docker-runs D] [--federation-only]
#
# --docker-only runs only launcher.docker's benchmark (docker_bench: launch to SESSION_READY in a container
# beside `podman run` of the same image through the same engine, D samples each, default 10) and replaces the
# "Docker launcher" section of the output. It needs podman, runc and busybox-static (scripts/deps.sh).
#
# --federation-only runs only bench/federation_bench.py (ember server, 8 client daemons and their jobs on this
# machine, beside `ember simulate` of the same job) and replaces the "Federation" section of the output.
# --cell-only runs only the cell network's benchmarks (cell_bench, and pipe_bench's pipe.cell cases beside
# pipe.socket and raw TCP) and replaces the "Cell network" section of the output, leaving the rest as it is.
# K is the number of runs of each cell_bench case (default 3).
#
# DIR defaults to build-bench at the top of the source tree, configured (or reconfigured) as
#   meson setup DIR --wrap-mode=nodownload --buildtype=release -Dbench=enabled -Dtests=disabled
# N is the number of fresh-process samples per start-up case (default 50), M the number of runs of each
# pipe case (default 5; each run is a fresh pair of processes). Unless --no-profile, and if `perf` works,
# a few pipe cases are then run once more under `perf record` for the "where the time goes" tables. Every
# number in the output sits beside a baseline measured in the same run; nothing here is a pass/fail test.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_root=$(cd "$here/.." && pwd)
build_dir="$source_root/build-bench"
runs=50
pipe_runs=5
profile=yes
cell_runs=3
cell_only=no
federation_only=no
docker_only=no
docker_runs=10
output="$source_root/docs/BENCHMARKS.md"
invocation="bench/run_benchmarks.sh${*:+ $*}"

while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --pipe-runs) pipe_runs=$2; shift 2 ;;
    --cell-runs) cell_runs=$2; shift 2 ;;
    --cell-only) cell_only=yes; shift ;;
    --federation-only) federation_only=yes; shift ;;
    --docker-only) docker_only=yes; shift ;;
    --docker-runs) docker_runs=$2; shift 2 ;;
    --no-profile) profile=no; shift ;;
    --output) output=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run_benchmarks.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

options="--buildtype=release -Dbench=enabled -Dtests=disabled"
if [ -f "$build_dir/build.ninja" ]; then
  # shellcheck disable=SC2086
  meson configure "$build_dir" $options
else
  # shellcheck disable=SC2086
  meson setup "$build_dir" "$source_root" --wrap-mode=nodownload $options
fi
# Two cores are shared on the reference machine: never more than two jobs. --cell-only builds only what it
# runs (the whole tree, LibTorch's plugins included, takes long).
if [ "$federation_only" = yes ]; then
  ninja -C "$build_dir" -j2 kernel/ember bench/ember-bench-trainer plugins/ember-workflow-fedavg.so \
    plugins/ember-executor-external-trainer.so plugins/ember-launcher-process.so plugins/ember-pipe-socket.so
  python3 "$here/federation_bench.py" --ember "$build_dir/kernel/ember" \
    --trainer "$build_dir/bench/ember-bench-trainer" --section "$output"
  exit 0
fi
if [ "$cell_only" = yes ]; then
  targets="bench/cell_bench bench/cell_node"
  if grep -q '^build bench/pipe_bench:' "$build_dir/build.ninja"; then
    targets="$targets bench/pipe_bench plugins/ember-pipe-socket.so plugins/ember-pipe-cell.so"
  fi
  if ! grep -q '^build bench/cell_bench:' "$build_dir/build.ninja"; then
    echo "run_benchmarks.sh: $build_dir has no cell_bench (no gRPC, or -Dcell=disabled)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  ninja -C "$build_dir" -j2 $targets
elif [ "$docker_only" = yes ]; then
  ninja -C "$build_dir" -j2 bench/docker_bench bench/ember-bench-trainer plugins/ember-launcher-docker.so \
    plugins/ember-launcher-process.so plugins/ember-pipe-socket.so plugins/ember-executor-external-trainer.so
else
  ninja -C "$build_dir" -j2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ember-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

commit=$(git -C "$source_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$source_root" status --porcelain 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi

# The cell network (bench/cell_bench.cpp) beside raw gRPC, and pipe.cell beside pipe.socket (pipe_bench).
# Writes $work/cell.json and, with pipe_bench, $work/cell_pipes.json; sets cell_section_args.
cell_section_args=""
run_cell() {
  if [ ! -x "$build_dir/bench/cell_bench" ]; then
    echo "run_benchmarks.sh: no $build_dir/bench/cell_bench (no gRPC, or -Dcell=disabled): no cell benchmarks"
    return 0
  fi
  cell_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "run_benchmarks.sh: the cell network beside raw gRPC, $cell_runs runs per case"
  "$build_dir/bench/cell_bench" --cell-node "$build_dir/bench/cell_node" --runs "$cell_runs" \
    --json "$work/cell.json"
  cell_section_args="--cell $work/cell.json"
  # Diagnosis: the 100 MiB cases again with glibc's malloc asking for transparent huge pages on its large
  # mappings (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which shows how much of each figure is page faults on
  # fresh memory (a receiver's whole-message buffer, gRPC's receive buffers).
  echo "run_benchmarks.sh: cell_bench --quick again with glibc.malloc.hugetlb=1 (a diagnosis, not a figure)"
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$build_dir/bench/cell_bench" --quick --no-tls --no-rss \
    --runs "$cell_runs" --json "$work/cell_thp.json" >/dev/null
  cell_section_args="$cell_section_args --cell-thp $work/cell_thp.json"
  if [ -f "$work/pipes.json" ]; then
    cell_section_args="$cell_section_args --pipes $work/pipes.json"  # the full pipe run had the cell cases
  elif [ -x "$build_dir/bench/pipe_bench" ]; then
    echo "run_benchmarks.sh: pipe.cell beside pipe.socket and raw TCP, $pipe_runs runs per case"
    cases=""
    for t in cell socket-tcp socket-unix raw-tcp; do
      for c in throughput/1MiB throughput/100MiB throughput/1GiB latency/64B rate/64B; do
        cases="$cases --case $t/$c"
      done
    done
    # shellcheck disable=SC2086
    "$build_dir/bench/pipe_bench" --runs "$pipe_runs" --no-pieces $cases --json "$work/cell_pipes.json"
    cell_section_args="$cell_section_args --pipes $work/cell_pipes.json"
  fi
  cell_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  # Where the time goes: each side once more under perf, apart from the measured runs.
  if [ "$profile" = yes ] && perf record -q -e cpu-clock -o "$work/probe.data" true >/dev/null 2>&1; then
    for side in cell raw; do
      echo "run_benchmarks.sh: perf record of cell_bench --side $side"
      # DWARF call graphs: the release build has no frame pointers, and the cell's inlined steps would vanish.
      perf record -q -e cpu-clock -F 299 --call-graph dwarf,16384 -o "$work/cell_$side.data" -- \
        "$build_dir/bench/cell_bench" \
        --quick --no-tls --no-rss --runs 2 --side "$side" >/dev/null 2>&1
      perf report -i "$work/cell_$side.data" --stdio --children --sort sym -g none \
        >"$work/cell_$side.txt" 2>/dev/null
    done
    cell_section_args="$cell_section_args --perf cell=$work/cell_cell.txt --perf raw-gRPC=$work/cell_raw.txt"
  fi
}

write_cell() {
  if [ -n "$cell_section_args" ]; then
    # shellcheck disable=SC2086
    python3 "$here/write_cell_section.py" $cell_section_args --output "$output" \
      --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
      --meta "nproc=$(nproc)" \
      --meta "load=$cell_load_before (before), $cell_load_after (after)" \
      --meta "build=release (-O3, NDEBUG), build dir $(basename "$build_dir")" \
      --meta "commit=$commit" \
      --meta "command=$invocation"
  fi
}

# launcher.docker beside podman run through the same engine (bench/docker_bench.cpp); exits 77 without podman.
docker_json=""
run_docker() {
  if [ ! -x "$build_dir/bench/docker_bench" ]; then
    echo "run_benchmarks.sh: no $build_dir/bench/docker_bench: no Docker launcher benchmark"
    return 0
  fi
  docker_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "run_benchmarks.sh: launcher.docker beside podman run, $docker_runs samples per case"
  status=0
  "$build_dir/bench/docker_bench" --ember-build "$build_dir" --trainer "$build_dir/bench/ember-bench-trainer" \
    --runs "$docker_runs" --json "$work/docker.json" >/dev/null || status=$?
  if [ "$status" -eq 77 ]; then
    echo "run_benchmarks.sh: podman cannot run here: no Docker launcher benchmark"
    return 0
  elif [ "$status" -ne 0 ]; then
    echo "run_benchmarks.sh: docker_bench failed ($status)" >&2
    exit 1
  fi
  docker_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  docker_json="$work/docker.json"
}

write_docker() {
  if [ -n "$docker_json" ]; then
    python3 "$here/write_docker_section.py" --docker "$docker_json" --output "$output" \
      --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
      --meta "nproc=$(nproc)" \
      --meta "load=$docker_load_before (before), $docker_load_after (after)" \
      --meta "build=release (-O3, NDEBUG), build dir $(basename "$build_dir")" \
      --meta "commit=$commit" \
      --meta "command=$invocation"
  fi
}

if [ "$docker_only" = yes ]; then
  run_docker
  mkdir -p "$(dirname "$output")"
  write_docker
  echo "run_benchmarks.sh: wrote the Docker launcher section of $output"
  exit 0
fi

if [ "$cell_only" = yes ]; then
  run_cell
  mkdir -p "$(dirname "$output")"
  write_cell
  echo "run_benchmarks.sh: wrote the cell network section of $output"
  exit 0
fi

ember="$build_dir/kernel/ember"
plugins="$build_dir/bench/plugins"

# The benchmark is only meaningful if all ten plugins load: check before measuring.
"$ember" --no-default-plugins --no-env-plugin-path --plugin-path "$plugins" plugins --json >"$work/plugins.json"
python3 - "$work/plugins.json" <<'EOF'
import json, sys
listing = json.load(open(sys.argv[1]))
loaded, refused = len(listing["plugins"]), len(listing["refused"])
if loaded != 10 or refused != 0:
    sys.exit(f"run_benchmarks.sh: expected 10 loaded plugins and no refusal, got {loaded} and {refused}")
EOF

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "run_benchmarks.sh: fresh-process start-up, $runs samples per case"
tree_args=""
if [ -d "$build_dir/plugins" ]; then
  tree_args="--tree $build_dir/plugins"
fi
# shellcheck disable=SC2086
"$build_dir/bench/startup_bench" --ember "$ember" --raw "$build_dir/bench/dlopen_raw" --plugins "$plugins" \
  $tree_args --runs "$runs" --json "$work/startup.json"
echo "run_benchmarks.sh: in-process discovery and load (Google Benchmark)"
"$build_dir/bench/plugin_load_bench" --benchmark_out="$work/load.json" --benchmark_out_format=json \
  --benchmark_format=console
pipe_bench="$build_dir/bench/pipe_bench"
pipe_args=""
pipe_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -x "$pipe_bench" ]; then
  echo "run_benchmarks.sh: pipes through the session layer beside raw sockets and files, $pipe_runs runs per case"
  "$pipe_bench" --runs "$pipe_runs" --json "$work/pipes.json"
  pipe_args="--pipes $work/pipes.json"
else
  echo "run_benchmarks.sh: no $pipe_bench (configured with -Dreference_plugins=false?): no pipe benchmarks"
  profile=no
fi
pipe_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
load_after=$pipe_load_after

# Where the time goes: a few pipe cases once more under perf (software clock: works in a VM), apart from
# the measured runs so that the profiler's overhead touches no number above.
if [ "$profile" = yes ] && perf record -q -e cpu-clock -o "$work/probe.data" true >/dev/null 2>&1; then
  for case in socket-unix/throughput/1GiB file/throughput/1GiB socket-unix/rate/64B file/rate/64B; do
    name=$(echo "$case" | tr '/' '_')
    echo "run_benchmarks.sh: perf record of pipe_bench --case $case"
    perf record -q -e cpu-clock -F 999 -o "$work/$name.data" -- \
      "$pipe_bench" --runs 1 --no-pieces --case "$case" >/dev/null
    perf report -i "$work/$name.data" --stdio --no-children --sort comm,dso,sym \
      >"$work/$name.txt" 2>/dev/null
    pipe_args="$pipe_args --profile $case=$work/$name.txt"
  done
elif [ "$profile" = yes ]; then
  echo "run_benchmarks.sh: perf is missing or not allowed here: no profiles (try apt-get install linux-perf)"
fi

# FedAvg aggregation beside a plain read of the same bytes (about 900 MiB of client buffers at once).
aggregation_bench="$build_dir/bench/aggregation_bench"
aggregation_args=""
aggregation_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -x "$aggregation_bench" ]; then
  echo "run_benchmarks.sh: FedAvg aggregation (Google Benchmark)"
  "$aggregation_bench" --benchmark_out="$work/aggregation.json" --benchmark_out_format=json \
    --benchmark_format=console
  aggregation_args="--aggregation $work/aggregation.json"
else
  echo "run_benchmarks.sh: no $aggregation_bench (configured with -Dreference_plugins=false?): no aggregation"
fi
aggregation_load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# The job path: trainer launch, a 100 MiB round with 2 and 8 sites, relaying 1 GiB (bench/job_bench.cpp).
job_bench="$build_dir/bench/job_bench"
job_args=""
job_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -x "$job_bench" ]; then
  echo "run_benchmarks.sh: the job path (trainer launch, rounds, relay)"
  "$job_bench" --ember-build "$build_dir" --trainer "$build_dir/bench/ember-bench-trainer" \
    --hello-trainer "$build_dir/examples/ember-hello-trainer" --launch-runs 20 --round-runs 9 \
    --relay-mib 1024 --json "$work/job.json" >/dev/null
  job_args="--job $work/job.json"
fi
job_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
load_after=$job_load_after

# Python trainers beside the C++ one (bench/python_bench.py), when the package was built and NumPy is there.
python_args=""
python_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -d "$build_dir/sdk/python/ember" ] && [ -x "$build_dir/bench/ember-bench-trainer" ] &&
  /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  echo "run_benchmarks.sh: Python trainers (launch, a 100 MiB round)"
  /usr/bin/python3 "$here/python_bench.py" --build "$build_dir" --runs 9 --rounds 6 --mib 100 \
    --cpp-trainer "$build_dir/bench/ember-bench-trainer" --json "$work/python.json" >/dev/null
  python_args="--python $work/python.json"
else
  echo "run_benchmarks.sh: no Python package in $build_dir, or no NumPy: no Python trainer benchmark"
fi
python_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
load_after=$python_load_after

run_cell

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
# Meson 1.0 has no introspection of compilers; its log names the one it chose ("gcc 12.2.0").
compiler=$(sed -n 's/^C++ compiler for the host machine: .*(\([a-z]* [0-9.]*\) .*/\1/p' \
  "$build_dir/meson-logs/meson-log.txt" | tail -n 1)
# Extra compiler arguments a developer set on the build dir (meson configure -Dcpp_args=...), if any.
cpp_args=$(meson introspect "$build_dir" --buildoptions | python3 -c \
  'import json, sys; print(" ".join(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "cpp_args")))')
mkdir -p "$(dirname "$output")"
# shellcheck disable=SC2086
python3 "$here/write_benchmarks_md.py" \
  --startup "$work/startup.json" --load "$work/load.json" $pipe_args $aggregation_args $job_args $python_args \
  --output "$output" \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "cpu=$cpu" \
  --meta "nproc=$(nproc)" \
  --meta "memory=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
  --meta "kernel=$(uname -sr)" \
  --meta "load=$load_before (before), $load_after (after)" \
  --meta "pipe_load=$pipe_load_before (before), $pipe_load_after (after)" \
  --meta "aggregation_load=$aggregation_load_before (before), $aggregation_load_after (after)" \
  --meta "job_load=$job_load_before (before), $job_load_after (after)" \
  --meta "python_load=$python_load_before (before), $python_load_after (after)" \
  --meta "compiler=$compiler" \
  --meta "build=release (-O3, NDEBUG)${cpp_args:+, cpp_args $cpp_args}, build dir $(basename "$build_dir")" \
  --meta "commit=$commit" \
  --meta "command=$invocation"
write_cell
run_docker
write_docker
echo "run_benchmarks.sh: wrote $output"
