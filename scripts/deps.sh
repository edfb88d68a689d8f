#!/usr/bin/env bash
# Installs the Debian 12 packages ember builds and tests with, if any is missing. Sourced by run and test.
set -euo pipefail

EMBER_PACKAGES=(
  meson ninja-build pkg-config g++ ccache python3
  libboost-dev libtomlplusplus-dev libspdlog-dev libfmt-dev libexpected-dev libcli11-dev nlohmann-json3-dev
  libssl-dev libtorch-dev libelf-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc openssl iproute2
  pybind11-dev python3-dev python3-numpy python3-torch libdlpack-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang clang-format libclang-rt-14-dev
  podman runc busybox-static
)

ember_install_deps() {
  local missing=()
  for pkg in "${EMBER_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "ember: installing missing Debian packages: ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "ember: not root and no sudo: install these packages first: ${missing[*]}" >&2
      return 1
    fi
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Configures (once) and builds one build folder. Usage: ember_build DIR [meson options...]
ember_build() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" --wrap-mode=nodownload "$@"
  fi
  ninja -C "$dir"
}
