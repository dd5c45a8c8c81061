#!/usr/bin/env bash
# CI leg: the CPU path on aarch64 (the Pi 4's ISA: numba's portable, non-x86 vector path), without a Pi.
#
# An arm64 Debian root made with `mmdebstrap --variant=extract` (Debian's python3 and the C/C++ runtime
# libraries numba and tokenizers need), the aarch64 wheels of pimoe's dependencies from the package index
# (`pip install --target`), and qemu-user (`qemu-aarch64-static -L ROOT`) running that Python. It checks
# what a new user on a Pi would see: `pimoe run -n 8` prints the same text as on this x86 machine, and the
# CPU path's tests (kernels, quantization, the model against numpy) pass.
#
# The root, the wheels and numba's compiled kernels are cached in $PIMOE_AARCH64_CACHE (default
# ~/.cache/pimoe/aarch64), so only the first run pays for the downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${PIMOE_AARCH64_CACHE:-$HOME/.cache/pimoe/aarch64}
ROOT=$CACHE/root
SITE=$CACHE/site
SUITE=${PIMOE_AARCH64_SUITE:-bookworm}          # Debian release of the root (its python3 is the wheels' target)
mkdir -p "$CACHE"
start=$(date +%s)

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if ((${#need[@]})); then
    echo "aarch64 leg: installing ${need[*]} (Debian packages)"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$ROOT/usr/bin/python3" ]; then
    echo "aarch64 leg: making the arm64 Debian root ($SUITE) in $ROOT"
    rm -rf "$ROOT"
    mmdebstrap --quiet --variant=extract --architectures=arm64 \
        --include=python3,libstdc++6,libgomp1,zlib1g,libgcc-s1,ca-certificates "$SUITE" "$ROOT"
fi
PY=("qemu-aarch64-static" "-L" "$ROOT" "$ROOT/usr/bin/python3")
PYVER=$("${PY[@]}" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')

if [ ! -f "$SITE/.done" ]; then
    echo "aarch64 leg: aarch64 wheels for cp$PYVER into $SITE"
    rm -rf "$SITE"
    python3 -m pip install --quiet --target "$SITE" --only-binary=:all: --implementation cp \
        --python-version "$PYVER" --abi "cp$PYVER" --platform manylinux2014_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 --platform any \
        numpy numba tokenizers gguf tqdm jinja2 pytest
    touch "$SITE/.done"
fi
setup=$(( $(date +%s) - start ))

export XDG_CACHE_HOME="$CACHE/xdg"            # the built-in model, made once, shared by both runs
x86=$(python3 -m pimoe run -n 8 -p "Once upon a time" 2>/dev/null)     # this machine's own Python
export PYTHONPATH="$SITE:$REPO" NUMBA_CACHE_DIR="$CACHE/numba" PYTHONDONTWRITEBYTECODE=1
"${PY[@]}" -c 'import platform, numpy, numba; print("aarch64 leg:", platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__)'

# the same text on both machines (greedy decoding of the built-in model)
arm=$("${PY[@]}" -m pimoe run -n 8 -p "Once upon a time" 2>/dev/null)
if [ "$x86" != "$arm" ]; then
    echo "aarch64 leg: FAILED: pimoe run -n 8 differs"; echo "x86:     $x86"; echo "aarch64: $arm"; exit 1
fi
echo "aarch64 leg: pimoe run -n 8 gives the same text as on $(uname -m): $arm"

t0=$(date +%s)
"${PY[@]}" -m pytest -q -p no:cacheprovider tests/test_kernels*.py tests/test_quant.py tests/test_model.py
echo "aarch64 leg: setup ${setup} s, tests $(( $(date +%s) - t0 )) s, total $(( $(date +%s) - start )) s"
