#!/bin/sh
# Fuzzes one target for a bounded time with libFuzzer (clang, ASan + UBSan).
#
#   tests/fuzz/run_fuzz.sh [--build-dir DIR] [--time SECONDS] [--fuzzer PATH] TARGET [-- LIBFUZZER_ARGS...]
#
# TARGET is config (job and site config loading), frame (the frame codec), safetensors (the safetensors
# reader) or cell (the cell network's decoder and reassembly); with --fuzzer it may be left out when the executable is named TARGET_fuzz. Without --fuzzer it
# configures DIR (default: build-fuzz at the top of the source tree) if needed, with
#   CXX=clang++ meson setup DIR --wrap-mode=nodownload -Dfuzz=true -Dtests=enabled -Dbench=disabled -Db_lundef=false
# and builds the TARGET_fuzz target in it. The fuzzer runs on a copy of the seed corpus (corpus/TARGET/) in a
# temporary folder, so generated inputs never land in the source tree, with TARGET.dict when there is one;
# crash, leak and timeout reproducers go to DIR/fuzz-artifacts/ (or, with --fuzzer, to the fuzzer's folder).
# Exits non-zero on any finding.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_root=$(cd "$here/../.." && pwd)
build_dir="$source_root/build-fuzz"
seconds=60
fuzzer=""
target=""

while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --time) seconds=$2; shift 2 ;;
    --fuzzer) fuzzer=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "run_fuzz.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    *)
      if [ -n "$target" ]; then
        echo "run_fuzz.sh: one target at a time ('$target', then '$1')" >&2
        exit 2
      fi
      target=$1; shift ;;
  esac
done

if [ -z "$target" ] && [ -n "$fuzzer" ]; then
  target=$(basename "$fuzzer" _fuzz)
fi
if [ -z "$target" ]; then
  echo "run_fuzz.sh: which target? config, frame, safetensors or cell (try --help)" >&2
  exit 2
fi
if [ ! -d "$here/corpus/$target" ]; then
  echo "run_fuzz.sh: no target '$target' (no seed corpus at $here/corpus/$target)" >&2
  exit 2
fi

if [ -z "$fuzzer" ]; then
  if [ ! -f "$build_dir/build.ninja" ]; then
    CXX=${CXX:-clang++} meson setup "$build_dir" "$source_root" --wrap-mode=nodownload \
      -Dfuzz=true -Dtests=enabled -Dbench=disabled -Db_lundef=false
  fi
  # Two cores are shared on the reference machine: never more than two jobs.
  ninja -C "$build_dir" -j2 "tests/fuzz/${target}_fuzz"
  fuzzer="$build_dir/tests/fuzz/${target}_fuzz"
  artifacts="$build_dir/fuzz-artifacts"
else
  artifacts="$(cd "$(dirname "$fuzzer")" && pwd)/fuzz-artifacts"
fi
if [ ! -x "$fuzzer" ]; then
  echo "run_fuzz.sh: $fuzzer is not an executable (was the build configured with -Dfuzz=true under clang?)" >&2
  exit 2
fi
mkdir -p "$artifacts"

work=$(mktemp -d "${TMPDIR:-/tmp}/ember-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/corpus"
cp "$here/corpus/$target/"* "$work/corpus/"
seeds=$(ls "$work/corpus" | wc -l)
dict=""
if [ -f "$here/$target.dict" ]; then
  dict="-dict=$here/$target.dict"
fi

echo "run_fuzz.sh: fuzzing $fuzzer for ${seconds}s from $seeds seeds; reproducers go to $artifacts/"
status=0
# halt_on_error and -fno-sanitize-recover make every sanitizer report a crash that libFuzzer records.
# libFuzzer exits 77 on a crash or leak by default, which Meson reads as "skipped": use 1 instead
# (timeouts exit 70 and out-of-memory 71, as libFuzzer sets them).
# shellcheck disable=SC2086 # $dict is one word or none
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 -print_final_stats=1 \
  $dict -artifact_prefix="$artifacts/${target}-" "$@" "$work/corpus" >"$work/log" 2>&1 || status=$?

# libFuzzer's own summary lines, then the verdict.
grep -E '^(INFO: Seed|INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::)' "$work/log" || true
if [ "$status" -ne 0 ]; then
  echo "run_fuzz.sh: FAILED (exit $status); the fuzzer's report follows" >&2
  grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|RELOAD)' "$work/log" | tail -n 80 >&2
  echo "run_fuzz.sh: $target: reproducer(s) in $artifacts/:" >&2
  ls -1 "$artifacts" | grep "^${target}-" | sed "s|^|  $artifacts/|" >&2 || true
  echo "run_fuzz.sh: replay one with '$fuzzer FILE'; docs/fuzzing.md says how to minimise it and keep it" >&2
  exit "$status"
fi
echo "run_fuzz.sh: $target: no crash, leak or timeout in ${seconds}s; corpus grew from $seeds to $(ls "$work/corpus" | wc -l) inputs (discarded)"
