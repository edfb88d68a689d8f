#!/bin/sh
# Builds a release tree, runs the plugin-load and start-up benchmarks and writes docs/BENCHMARKS.md.
#
#   bench/run_benchmarks.sh [--build-dir DIR] [--runs N] [--output FILE]
#
# DIR defaults to build-bench at the top of the source tree, configured (or reconfigured) as
#   meson setup DIR --wrap-mode=nodownload --buildtype=release -Dbench=enabled -Dtests=disabled
# N is the number of fresh-process samples per case (default 50). Every number in the output sits beside
# a baseline measured in the same run; nothing here is a pass/fail test.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_root=$(cd "$here/.." && pwd)
build_dir="$source_root/build-bench"
runs=50
output="$source_root/docs/BENCHMARKS.md"
invocation="bench/run_benchmarks.sh${*:+ $*}"

while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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
# Two cores are shared on the reference machine: never more than two jobs.
ninja -C "$build_dir" -j2

work=$(mktemp -d "${TMPDIR:-/tmp}/ember-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

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
"$build_dir/bench/startup_bench" --ember "$ember" --raw "$build_dir/bench/dlopen_raw" --plugins "$plugins" \
  --runs "$runs" --json "$work/startup.json"
echo "run_benchmarks.sh: in-process discovery and load (Google Benchmark)"
"$build_dir/bench/plugin_load_bench" --benchmark_out="$work/load.json" --benchmark_out_format=json \
  --benchmark_format=console
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
# Meson 1.0 has no introspection of compilers; its log names the one it chose ("gcc 12.2.0").
compiler=$(sed -n 's/^C++ compiler for the host machine: .*(\([a-z]* [0-9.]*\) .*/\1/p' \
  "$build_dir/meson-logs/meson-log.txt" | tail -n 1)
commit=$(git -C "$source_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$source_root" status --porcelain 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi

mkdir -p "$(dirname "$output")"
python3 "$here/write_benchmarks_md.py" \
  --startup "$work/startup.json" --load "$work/load.json" --output "$output" \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "cpu=$cpu" \
  --meta "nproc=$(nproc)" \
  --meta "memory=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
  --meta "kernel=$(uname -sr)" \
  --meta "load=$load_before (before), $load_after (after)" \
  --meta "compiler=$compiler" \
  --meta "build=release (-O3, NDEBUG), build dir $(basename "$build_dir")" \
  --meta "commit=$commit" \
  --meta "command=$invocation"
echo "run_benchmarks.sh: wrote $output"
