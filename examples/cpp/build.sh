#!/usr/bin/env bash
# Build camdeploy-host into examples/cpp/build/ (or $CAMDEPLOY_HOST_BUILD_DIR).
#
# It links against the ONNX Runtime library that the onnxruntime Python wheel ships (the same
# runtime as `camdeploy run`; found through $PYTHON, by default the repository's .venv), and
# compiles against ONNX Runtime's C/C++ headers, which the wheel lacks: Debian trixie's
# libonnxruntime-dev, fetched with apt into a private apt state under the build folder (the
# system's sources and package state are never touched) and unpacked with dpkg-deb. Headers for a C
# API version no newer than the library's work: the C API is backward compatible.
# $ONNXRUNTIME_INCLUDE_DIR skips the download; $CAMDEPLOY_DEBIAN_MIRROR overrides the Debian
# mirror, which is otherwise the one this system's apt uses for its own release.
#
# Needs: gcc, g++, cmake, make, apt-get, dpkg-deb and OpenCV's core, imgproc and imgcodecs headers
# (Debian: libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev; .ci/system-packages
# installs them all).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${CAMDEPLOY_HOST_BUILD_DIR:-$here/build}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"

fail() {
  echo "build.sh: error: $*" >&2
  exit 1
}

# --- tools ---------------------------------------------------------------------------------------
missing=()
for tool in cc c++ cmake make readelf; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]}; on Debian: apt-get install gcc g++ cmake make (or run .ci/system-packages)"

# --- the library: the onnxruntime wheel's ---------------------------------------------------------
python="${PYTHON:-}"
if [ -z "$python" ]; then
  python="$repo/.venv/bin/python"
  [ -x "$python" ] || python=python3
fi
command -v "$python" >/dev/null || fail "PYTHON=$python: no such Python; set PYTHON to the interpreter whose onnxruntime to use"
library="$("$python" - <<'PY'
import glob, importlib.util, os, sys
spec = importlib.util.find_spec("onnxruntime")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
found = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "capi", "libonnxruntime.so.*")))
print(found[-1] if found else "")
PY
)" || true
[ -n "$library" ] || fail "$python has no onnxruntime with a libonnxruntime.so in onnxruntime/capi; install it: $python -m pip install -c constraints.txt -e . (or set PYTHON)"
library_version="${library##*/libonnxruntime.so.}"           # e.g. 1.32.0
library_api="$(echo "$library_version" | cut -d. -f2)"        # ONNX Runtime 1.N offers C API versions 1..N
[[ "$library_version" =~ ^1\.[0-9]+\.[0-9]+$ ]] || fail "cannot tell the version of $library; expected libonnxruntime.so.1.N.M"
soname="$(readelf -d "$library" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"
[ -n "$soname" ] || fail "$library has no SONAME; is it an ONNX Runtime library?"

# --- the headers ----------------------------------------------------------------------------------
api_of() { sed -n 's/^#define ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "$1/onnxruntime_c_api.h"; }

include="${ONNXRUNTIME_INCLUDE_DIR:-}"
if [ -z "$include" ]; then
  apt_root="$build/apt"
  include="$apt_root/unpacked/usr/include/onnxruntime"
  if [ ! -f "$include/onnxruntime_cxx_api.h" ]; then
    for tool in apt-get dpkg-deb; do
      command -v "$tool" >/dev/null || fail "$tool is needed to fetch ONNX Runtime's headers (Debian's libonnxruntime-dev); or set ONNXRUNTIME_INCLUDE_DIR to a folder holding onnxruntime_cxx_api.h"
    done
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || fail "$keyring is missing (apt-get install debian-archive-keyring); it verifies the headers' package"
    mirror="${CAMDEPLOY_DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
      codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
      mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
                awk -v release="$codename" '$2 == release && $3 == "main" {print $1; exit}')"
      [ -n "$mirror" ] || fail "this system's apt has no Debian mirror for '$codename' main; set CAMDEPLOY_DEBIAN_MIRROR to a Debian mirror URL"
    fi
    echo "build.sh: fetching ONNX Runtime's headers (Debian trixie's libonnxruntime-dev) from $mirror"
    rm -rf "$apt_root"
    mkdir -p "$apt_root"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial,debs}
    : > "$apt_root/state/status"
    echo "deb [signed-by=$keyring] $mirror trixie main" > "$apt_root/etc/sources.list"
    arch="$(dpkg --print-architecture)"
    apt_private=(
      -o "Dir::Etc::SourceList=$apt_root/etc/sources.list" -o "Dir::Etc::SourceParts=$apt_root/etc/sources.list.d"
      -o "Dir::Etc::Preferences=$apt_root/etc/preferences" -o "Dir::Etc::PreferencesParts=$apt_root/etc/preferences.d"
      -o "Dir::State=$apt_root/state" -o "Dir::State::status=$apt_root/state/status" -o "Dir::Cache=$apt_root/cache"
      -o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o Acquire::Languages=none -o Debug::NoLocking=1
    )
    # apt drops root to its _apt user for downloads, which cannot write into this folder.
    [ "$(id -u)" != 0 ] || apt_private+=(-o APT::Sandbox::User=root)
    apt-get "${apt_private[@]}" -q update > "$apt_root/update.log" 2>&1 ||
      fail "apt-get update for trixie failed (see $apt_root/update.log); set ONNXRUNTIME_INCLUDE_DIR to skip the download"
    (cd "$apt_root/debs" && apt-get "${apt_private[@]}" -q download libonnxruntime-dev > "$apt_root/download.log" 2>&1) ||
      fail "cannot download libonnxruntime-dev (see $apt_root/download.log)"
    deb="$(ls "$apt_root"/debs/libonnxruntime-dev_*.deb)"
    dpkg-deb -x "$deb" "$apt_root/unpacked"
    [ -f "$include/onnxruntime_cxx_api.h" ] || fail "$deb holds no usr/include/onnxruntime/onnxruntime_cxx_api.h"
    echo "build.sh: unpacked $(basename "$deb") into $apt_root/unpacked"
  fi
fi
[ -f "$include/onnxruntime_cxx_api.h" ] && [ -f "$include/onnxruntime_c_api.h" ] ||
  fail "ONNXRUNTIME_INCLUDE_DIR=$include has no onnxruntime_cxx_api.h and onnxruntime_c_api.h"
header_api="$(api_of "$include")"
[ -n "$header_api" ] || fail "$include/onnxruntime_c_api.h defines no ORT_API_VERSION"
if [ "$header_api" -gt "$library_api" ]; then
  fail "headers in $include are for C API $header_api, newer than the library's ($library: ONNX Runtime $library_version, C API $library_api); use headers for API <= $library_api"
fi

# --- build ------------------------------------------------------------------------------------------
# The wheel's file is named libonnxruntime.so.1.N.M; the program asks for its SONAME at run time.
mkdir -p "$build/onnxruntime/lib"
ln -sfn "$library" "$build/onnxruntime/lib/$soname"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DONNXRUNTIME_INCLUDE_DIR="$include" -DONNXRUNTIME_LIBRARY="$build/onnxruntime/lib/$soname" > "$build/configure.log" ||
  { cat "$build/configure.log" >&2; fail "cmake could not configure the build (above)"; }
cmake --build "$build" -j "$(nproc)"
echo "build.sh: built $build/camdeploy-host with ONNX Runtime $library_version (headers: C API $header_api)"
"$build/camdeploy-host" --version
