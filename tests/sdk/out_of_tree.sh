#!/usr/bin/env bash
# The SDK as a third party sees it: install the SDK from this build tree into a temporary destdir, build
# sdk/examples/reverse_applet against that install only (pkg-config ember-sdk), and check that this build's
# `ember` loads, lists, describes and validates the resulting plugin.
#
# usage: out_of_tree.sh BUILD_ROOT EXAMPLE_SOURCE_DIR EMBER_EXE CXX...
#   CXX... is the main build's C++ compiler command: the kernel refuses a plugin whose build id (compiler,
#   standard library) differs from its own, so the example must be built by the same compiler.
set -euo pipefail

if (($# < 4)); then
  echo "usage: $0 BUILD_ROOT EXAMPLE_SOURCE_DIR EMBER_EXE CXX..." >&2
  exit 2
fi
build_root=$(realpath "$1")
example=$(realpath "$2")
ember=$(realpath "$3")  # meson may pass it relative to the build root, the cwd of a test
shift 3
cxx="$*"

work=$(mktemp -d "${TMPDIR:-/tmp}/ember-sdk-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest=$work/dest
example_build=$work/build
mkdir -p "$work/home"
export HOME=$work/home  # hermetic: no user config reaches meson, pkg-config or ember
unset EMBER_PLUGIN_PATH

die() {
  echo "FAIL: $*" >&2
  exit 1
}

# Runs a command quietly, showing its output only when it fails.
run_logged() {
  local log=$work/$1.log
  shift
  echo "+ $*"
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    die "'$*' failed"
  fi
}

py_check() {
  python3 -c "$1" "${@:2}" || die "check failed: see above"
}

# 1. Install the SDK only (headers, ember-sdk.pc and the Client API's ember-client.pc carry the 'devel' tag).
run_logged install meson install -C "$build_root" --no-rebuild --tags devel --destdir "$dest"
pc=$(find "$dest" -name ember-sdk.pc -print -quit)
[[ -n $pc ]] || die "no ember-sdk.pc under $dest"
echo "installed: $pc"
stray=$(find "$dest" -type f ! -path '*/include/ember/*.hpp' ! -name ember-sdk.pc ! -name ember-client.pc)
[[ -z $stray ]] || die "the devel install holds more than the SDK headers and the .pc files:"$'\n'"$stray"

export PKG_CONFIG_PATH=${pc%/*}
# A .pc generated with pkgconfig.relocatable=true finds its prefix from its own folder. Otherwise its
# prefix is the configured one (say /usr/local), which after a destdir install lives at $dest/usr/local:
# PKG_CONFIG_SYSROOT_DIR makes pkg-config put $dest in front of the include path it hands the compiler.
if ! grep -qF "\${pcfiledir}" "$pc"; then
  export PKG_CONFIG_SYSROOT_DIR=$dest
fi
read -r include_flag _ < <(pkg-config --cflags-only-I ember-sdk)
include_dir=${include_flag#-I}
[[ -f $include_dir/ember/plugin.hpp ]] ||
  die "pkg-config ember-sdk points at '$include_dir', which holds no ember/plugin.hpp"
[[ $include_dir == "$dest"/* ]] || die "pkg-config ember-sdk points outside the destdir: $include_dir"
echo "pkg-config ember-sdk: $(pkg-config --cflags ember-sdk)"

# 2. Build the example as its author would, with warnings as errors.
run_logged setup env CXX="$cxx" meson setup "$example_build" "$example" --wrap-mode=nodownload -Dwerror=true
run_logged compile meson compile -C "$example_build"
plugin=$(find "$example_build" -maxdepth 1 -name '*.so' -print -quit)
[[ -n $plugin ]] || die "the example built no .so in $example_build"
echo "built: $plugin"
in_tree_sdk=$(realpath "$example/../../include")
if grep -qF -- "-I$in_tree_sdk" "$example_build/compile_commands.json"; then
  die "the example was compiled against the source tree's SDK ($in_tree_sdk), not the installed one"
fi
if command -v nm >/dev/null; then
  exports=$(nm -D --defined-only "$plugin")
  grep -qw ember_plugin <<<"$exports" || die "$plugin does not export 'ember_plugin'"
fi

ember_here=("$ember" --no-default-plugins --no-env-plugin-path --plugin-path "$example_build")

# 3. `ember plugins --json`: the plugin is accepted and nothing is refused.
set +e
"${ember_here[@]}" plugins --json >"$work/plugins.json" 2>"$work/plugins.err"
rc=$?
set -e
cat "$work/plugins.err" >&2
((rc == 0)) || {
  cat "$work/plugins.json" >&2
  die "ember plugins exited with $rc"
}
py_check '
import json, sys
report = json.load(open(sys.argv[1]))
refused = report["refused"]
assert not refused, "refused: %s" % json.dumps(refused, indent=2)
plugins = [p for p in report["plugins"] if any(c["type"] == "applet.reverse" for c in p["components"])]
assert len(plugins) == 1, "applet.reverse not listed: %s" % json.dumps(report, indent=2)
plugin = plugins[0]
assert plugin["name"] == "reverse-applet", plugin["name"]
assert plugin["path"].startswith(sys.argv[2]), plugin["path"]
print("listed: %s %s from %s" % (plugin["name"], plugin["version"], plugin["path"]))
' "$work/plugins.json" "$example_build"

# 4. `ember plugins describe`: the option schema, as text and as JSON.
run_logged describe "${ember_here[@]}" plugins describe applet.reverse
cat "$work/describe.log"
grep -q 'max_message_bytes' "$work/describe.log" || die "describe does not show max_message_bytes"
"${ember_here[@]}" plugins describe applet.reverse --json >"$work/describe.json"
py_check '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["type"] == "applet.reverse" and d["kind"] == "applet", d
options = {o["name"]: o for o in d["options"]}
assert options["max_message_bytes"]["type"] == "integer", options
assert options["max_message_bytes"]["default"] == "1048576", options
assert options["log_messages"]["type"] == "boolean", options
assert not any(o["required"] for o in options.values()), options
' "$work/describe.json"

# 5. `ember validate`: a job that uses the plugin passes; a mistyped option is a config error (exit 3).
mkdir -p "$work/job" "$work/bad-job"
cat >"$work/job/job.toml" <<'TOML'
schema_version = 1

[components.reverse]
type = "applet.reverse"
max_message_bytes = 4096
TOML
cat >"$work/bad-job/job.toml" <<'TOML'
schema_version = 1

[components.reverse]
type = "applet.reverse"
max_message_bytes = "4096"
TOML
run_logged validate "${ember_here[@]}" validate "$work/job"
set +e
"${ember_here[@]}" validate "$work/bad-job" >/dev/null 2>"$work/bad-job.err"
rc=$?
set -e
((rc == 3)) || {
  cat "$work/bad-job.err" >&2
  die "validating a mistyped option exited with $rc, expected 3 (invalid_config)"
}
grep -q 'max_message_bytes' "$work/bad-job.err" || die "the error does not name the option"

echo "PASS: an out-of-tree plugin builds against the installed SDK and loads"
