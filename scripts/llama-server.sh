#!/usr/bin/env bash
# Builds llama.cpp's OpenAI-compatible server (`llama-server`) from the llama.cpp source vendored
# in the PyPI sdist of llama-cpp-python, for malt's llama.cpp tests (tests/llama_server.rs) and
# benchmarks (`malt bench serve --llama-server`, `malt bench generate --llama-cpp`).
#
#   scripts/llama-server.sh [--tools] [--python] [DIR]
#
# DIR (default target/llama.cpp) receives the source and build/bin/. --tools also builds
# llama-bench, llama-batched-bench, llama-quantize and llama-cli. --python also installs
# llama-cpp-python[server] (its own build of the same source) into DIR/venv: the server that
# ignores `n`. A finished build is reused. Measured on the 2-core machine (shared, niced):
# llama-server alone is 97 % of the build; the five tools took 12.6 min of CPU (17.5 min wall),
# the llama-cpp-python wheel 12.3 min of CPU (20 min wall).
#
# Prints the variables the tests read:
#   export MALT_LLAMA_SERVER=DIR/build/bin/llama-server
#   export MALT_LLAMA_CPP_PYTHON=DIR/venv/bin/python      (with --python)
set -euo pipefail

VERSION=0.3.36 # llama-cpp-python; its vendored llama.cpp reports ggml 0.25.3, llama 0.5.0
tools=(llama-server)
python=0
dir=target/llama.cpp
for a in "$@"; do
    case "$a" in
        --tools) tools+=(llama-bench llama-batched-bench llama-quantize llama-cli) ;;
        --python) python=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "unknown option $a (see --help)" >&2; exit 2 ;;
        *) dir=$a ;;
    esac
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
src=$dir/src/llama_cpp_python-$VERSION
jobs=$(nproc 2>/dev/null || echo 2)

step() { printf '==> %s (%s)\n' "$*" "$(date +%H:%M:%S)" >&2; }

if [ ! -d "$src/vendor/llama.cpp" ]; then
    step "downloading the llama-cpp-python $VERSION sdist from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$dir/src"
    tar -xzf "$dir/src/llama_cpp_python-$VERSION.tar.gz" -C "$dir/src"
fi

# cmake and ninja: the system's, else PyPI's wheels in a private virtual environment.
path_extra=
if ! command -v cmake >/dev/null; then
    if [ ! -x "$dir/venv-build/bin/cmake" ]; then
        step "installing cmake and ninja from PyPI into $dir/venv-build"
        python3 -m venv "$dir/venv-build" || {
            echo "cannot create a Python virtual environment: install cmake (apt-get install cmake)" \
                 "or python3-venv" >&2
            exit 1
        }
        "$dir/venv-build/bin/pip" install --quiet cmake ninja
    fi
    path_extra=$dir/venv-build/bin
fi
export PATH=${path_extra:+$path_extra:}$PATH
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

# GGML_NATIVE tunes for this CPU, but not its AMX tiles: on Sapphire Rapids and later, -march=native
# turns on ggml-cpu's AMX kernels, and this llama.cpp's crash on the first quantized matmul
# (SIGSEGV: a general protection fault on ldtilecfg in a worker thread, measured on a 2-core
# Xeon VM; ggml-org/llama.cpp#20824). They serve quantized weights only (Q4_0, Q4_1, Q8_0, K
# quants), so f32 and bf16 comparisons lose nothing. GCC and Clang let an explicit -mno-*
# override -march=native whatever the order.
cflags=
if [ "$(uname -m)" = x86_64 ] &&
    echo 'int main(void) { return 0; }' |
        "${CC:-cc}" -x c -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 - -o /dev/null 2>/dev/null; then
    cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
configure=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$cflags"
    "-DCMAKE_CXX_FLAGS=$cflags" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF)

# A build made with other settings (an older version of this script, a target/ carried over from
# another CPU) is rebuilt, not reused: the stamp holds the settings and this CPU's model name.
build=$dir/build
stamp="$VERSION ${configure[*]} $(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null || true)"
missing=()
if [ "$(cat "$build/malt-build-stamp" 2>/dev/null)" != "$stamp" ]; then
    [ -d "$build/bin" ] && step "the build in $build was made with other settings or on another CPU: rebuilding"
    rm -rf "$build/malt-build-stamp" "$build/bin"
    missing=("${tools[@]}")
else
    for t in "${tools[@]}"; do
        [ -x "$build/bin/$t" ] || missing+=("$t")
    done
fi
if [ ${#missing[@]} -gt 0 ]; then
    step "configuring llama.cpp (GGML_NATIVE without AMX: tuned for this CPU)"
    cmake -S "$src/vendor/llama.cpp" -B "$build" "${generator[@]}" "${configure[@]}" >/dev/null
    step "building ${missing[*]} with $jobs jobs"
    start=$(date +%s)
    cmake --build "$build" -j "$jobs" --target "${missing[@]}" >"$dir/build.log" 2>&1 || {
        tail -n 30 "$dir/build.log" >&2
        exit 1
    }
    step "built in $(( $(date +%s) - start )) s (log: $dir/build.log)"
    echo "$stamp" >"$build/malt-build-stamp"
fi

if [ "$python" = 1 ] && { [ "$(cat "$dir/venv/malt-build-stamp" 2>/dev/null)" != "$stamp" ] ||
    ! "$dir/venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; }; then
    step "building llama-cpp-python[server] $VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$cflags' -DCMAKE_CXX_FLAGS='$cflags'" \
        CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$dir/venv/bin/pip" install --quiet --force-reinstall \
        --no-cache-dir "llama-cpp-python[server]==$VERSION"
    echo "$stamp" >"$dir/venv/malt-build-stamp"
fi

echo "export MALT_LLAMA_SERVER=$build/bin/llama-server"
if [ "$python" = 1 ]; then
    echo "export MALT_LLAMA_CPP_PYTHON=$dir/venv/bin/python"
fi
