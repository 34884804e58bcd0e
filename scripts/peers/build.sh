#!/usr/bin/env bash
# Build the peers of `evmamba bench kernels --peers` / `evmamba bench layer --peers` from their source
# distributions, on the GPU machine (no network, no package index), for sm_90 only.
#
#   bash scripts/peers/build.sh [BUDGET_SECONDS]      # from anywhere; default budget 360 s
#
# Reads .devout/peers/*.tar.gz (downloaded by scripts/peers/fetch.sh where there is network), and first unpacks
# .devout/peers/prebuilt-site.tar.xz when there is one (scripts/peers/prebuild.sh: built on another machine).
# Installs causal-conv1d and mamba-ssm into $PEERS_SITE (default /tmp/peers-site) and lrnnx into
# $PEERS_SITE/lrnnx-site
# (its compiled scan is a top-level module `selective_scan_cuda`, like mamba_ssm's: they cannot share a folder).
# Nothing of theirs is edited: scripts/peers/setup_runner.py runs each setup.py with the nvcc flags narrowed to
# $PEERS_GENCODE and, where torch's headers need it, -std=c++20 (it prints what it changed).
#
# Order: causal-conv1d and mamba-ssm start at the same time (they do not depend on each other and together
# compile 14 files, fewer than the 16 cores), and lrnnx (its selective scan only) starts as soon as mamba-ssm is
# done, while causal-conv1d -- the longest, ~330 s on an H200 machine, most of it in a few files -- still
# compiles; PEERS_PARALLEL=0 builds the three one after the other. PEERS_ONLY="lrnnx" (names separated by spaces
# or commas) builds only those. A build still running when the budget is spent is killed and reported; the
# unpacked trees under $PEERS_WORK are kept, so a later call on the same (warm) machine resumes the compilation
# where ninja left it, and a package already built and importable is not built again.
#
# Ends with one line per package: `peer NAME: ok VERSION ...` or `peer NAME: FAILED (why)` and the log's
# errors and last lines. Exit status 0 when every package asked for is ok.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUDGET=${1:-360}
SRC=${PEERS_DIR:-$ROOT/.devout/peers}
SITE=${PEERS_SITE:-/tmp/peers-site}
LRNNX_SITE=$SITE/lrnnx-site
WORK=${PEERS_WORK:-/tmp/peers-build}
RUNNER=$ROOT/scripts/peers/setup_runner.py
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PEERS_GENCODE=${PEERS_GENCODE:-arch=compute_90,code=sm_90}
# Their setup.py otherwise tries to download a prebuilt wheel first (and, with no network, dies on the URLError).
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
export PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
say() { echo "[peers +$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$SITE" "$LRNNX_SITE" "$WORK"
rm -f "$WORK"/*.result  # a result line is this call's, never an earlier one's
# Packages built on another machine for this one's torch and Python (scripts/peers/prebuild.sh): unpacked
# first; each is then imported like a package built here, and compiled here only if that import fails.
PREBUILT=${PEERS_PREBUILT:-$SRC/prebuilt-site.tar.xz}
if [ -f "$PREBUILT" ]; then
    if tar xJf "$PREBUILT" -C "$SITE"; then
        say "unpacked $PREBUILT into $SITE: $(cd "$SITE" && find . -maxdepth 2 -name '.peers-built-*' | sed 's|.*/.peers-built-||' | tr '\n' ' ')"
    else
        say "could not unpack $PREBUILT: building everything here"
    fi
fi

# ---------------------------------------------------------------- the machine
say "budget ${BUDGET}s; sdists from $SRC; install to $SITE (lrnnx: $LRNNX_SITE); work in $WORK"
say "MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST PEERS_GENCODE=$PEERS_GENCODE cores=$(nproc)"
ls -l "$SRC"/*.tar.gz 2>&1 | sed 's/^/  /'
python3 - <<'EOF' 2>&1 | sed 's/^/  /'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "setuptools", "wheel", "packaging", "ninja", "einops", "transformers"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: MISSING ({type(exc).__name__}: {exc})")
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    print("torch cuda", torch.version.cuda, "| CUDA_HOME", CUDA_HOME,
          "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
except Exception as exc:
    print("torch / CUDA_HOME:", exc)
EOF
NVCC=$(python3 -c "from torch.utils.cpp_extension import CUDA_HOME; print((CUDA_HOME or '') + '/bin/nvcc')" 2>/dev/null)
if [ -x "$NVCC" ]; then say "nvcc: $NVCC: $("$NVCC" --version | tail -n 2 | head -n 1)"; else say "nvcc: NOT FOUND (torch's CUDA_HOME gives '$NVCC'): nothing can be compiled"; fi
say "host compiler: $(c++ --version 2>&1 | head -n 1)"

# Build helpers fetched beside the sdists (fetch.sh), used only for what this machine lacks.
HELPERS=$WORK/helpers
for mod in setuptools packaging; do
    if ! python3 -c "import $mod" 2>/dev/null; then
        whl=$(ls "$SRC"/helpers/$mod-*.whl 2>/dev/null | tail -n 1)
        if [ -n "$whl" ]; then
            python3 -m pip install -q --no-index --no-deps --target "$HELPERS" "$whl" && say "$mod missing: installed $(basename "$whl") into $HELPERS"
            export PYTHONPATH=$HELPERS${PYTHONPATH:+:$PYTHONPATH}
        else
            say "$mod missing and no helper wheel in $SRC/helpers: the builds will fail"
        fi
    fi
done
if ! ninja --version >/dev/null 2>&1; then
    NINJA_BIN=$(python3 -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null)
    if [ -z "$NINJA_BIN" ]; then
        whl=$(ls "$SRC"/helpers/ninja-*.whl 2>/dev/null | tail -n 1)
        [ -n "$whl" ] && python3 -m pip install -q --no-index --no-deps --target "$HELPERS" "$whl" && \
            NINJA_BIN=$(PYTHONPATH=$HELPERS python3 -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null)
    fi
    [ -n "$NINJA_BIN" ] && export PATH=$NINJA_BIN:$PATH
fi
if ninja --version >/dev/null 2>&1; then say "ninja $(ninja --version)"; else say "WARNING: no ninja: torch compiles the .cu files one at a time (much slower)"; fi

# ---------------------------------------------------------------- one package
# build_one NAME SDIST_GLOB TARGET MODULE_TO_IMPORT [ONLY_EXT]: writes $WORK/NAME.result
build_one() {
    local name=$1 pattern=$2 target=$3 module=$4 only=${5:-}
    local log=$WORK/$name.log res=$WORK/$name.result
    : > "$log"
    local tarball
    tarball=$(ls "$SRC"/$pattern 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$tarball" ]; then
        echo "FAILED (no $pattern in $SRC: run scripts/peers/fetch.sh where there is network, then carry .devout/peers)" > "$res"; return
    fi
    local base version
    base=$(basename "$tarball" .tar.gz); version=${base##*-}
    if [ -f "$target/.peers-built-$base" ] && (cd /tmp && PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} python3 -c "import torch, $module") >/dev/null 2>&1; then
        echo "ok $version (already built in $target)" > "$res"; say "$name: $base already built"; return
    fi
    local budget; budget=$(left)
    if [ "$budget" -lt 30 ]; then echo "FAILED (not started: ${budget}s of the budget left)" > "$res"; return; fi
    local dir=$WORK/$name-src/$base
    if [ ! -f "$dir/setup.py" ]; then
        rm -rf "$WORK/$name-src"; mkdir -p "$WORK/$name-src"
        tar xzf "$tarball" -C "$WORK/$name-src" || { echo "FAILED (cannot unpack $tarball)" > "$res"; return; }
    else
        say "$name: resuming in $dir (objects compiled by an earlier call are kept)"
    fi
    rm -rf "$WORK/$name-dist"
    say "$name: building $base (limit ${budget}s) -> $log"
    local t=$(date +%s) rc
    ( cd "$dir" && PEERS_ONLY_EXT=$only timeout -k 10 "$budget" python3 "$RUNNER" bdist_wheel -d "$WORK/$name-dist" ) >> "$log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t ))
    if [ $rc -ne 0 ]; then
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            echo "FAILED (over the budget: killed after ${took}s; a later call resumes the compilation)" > "$res"
        else
            echo "FAILED (setup.py exit $rc after ${took}s)" > "$res"
        fi
        say "$name: build stopped, exit $rc after ${took}s"; return
    fi
    say "$name: compiled in ${took}s; installing into $target"
    if ! python3 -m pip install --no-build-isolation --no-deps --no-index --no-compile --upgrade --target "$target" "$WORK/$name-dist"/*.whl >> "$log" 2>&1; then
        echo "FAILED (built in ${took}s, but pip could not install the wheel)" > "$res"; return
    fi
    local where
    if ! where=$(cd /tmp && PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} python3 -c "import torch, $module; print($module.__file__)" 2>>"$log"); then
        echo "FAILED (built in ${took}s, but 'import $module' fails)" > "$res"; return
    fi
    case "$where" in
        "$target"/*) ;;
        *) echo "FAILED (built in ${took}s, but 'import $module' finds $where, not the one in $target)" > "$res"; return ;;
    esac
    touch "$target/.peers-built-$base"
    echo "ok $version (built in ${took}s; $module from $where)" > "$res"
    say "$name: ok"
}

# The errors in a log (nvcc's and the compiler's first, then the last lines), indented.
explain() {
    local log=$1
    [ -s "$log" ] || { echo "    (empty log $log)"; return; }
    grep -E "error|Error|ERROR|FAILED|refus|unsupported|killed|Killed" "$log" | grep -v -E "^\s*(-|\[setup_runner\]|raise )|Werror|error-limit|CalledProcessError" | awk '!seen[$0]++' | head -n 12 | cut -c1-400 | sed 's/^/    error> /'
    tail -n 4 "$log" | cut -c1-400 | sed 's/^/    last> /'
    echo "    (whole log: $log)"
}

# ---------------------------------------------------------------- the three
ALL="causal-conv1d mamba-ssm lrnnx"
ONLY=$(echo "${PEERS_ONLY:-$ALL}" | tr ',' ' ')
for name in $ONLY; do
    case " $ALL " in *" $name "*) ;; *) say "PEERS_ONLY: unknown peer '$name' (known: $ALL)"; exit 2 ;; esac
done
wanted() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# build NAME: one package, or a line saying it was left out.
build() {
    if ! wanted "$1"; then echo "not built (PEERS_ONLY=$ONLY)" > "$WORK/$1.result"; return; fi
    case $1 in
        causal-conv1d) build_one causal-conv1d "causal_conv1d-*.tar.gz" "$SITE" causal_conv1d_cuda ;;
        mamba-ssm) build_one mamba-ssm "mamba_ssm-*.tar.gz" "$SITE" selective_scan_cuda ;;
        # lrnnx: only its selective scan (the Mamba layer's); its S5 and S4 kernels are not used by the benchmarks.
        lrnnx) build_one lrnnx "lrnnx-*.tar.gz" "$LRNNX_SITE" selective_scan_cuda selective_scan_cuda ;;
    esac
}
if [ "${PEERS_PARALLEL:-1}" = "1" ]; then
    build causal-conv1d &
    P1=$!
    sleep 2
    { build mamba-ssm; build lrnnx; } &
    P2=$!
    wait $P1 $P2
else
    for name in $ALL; do build "$name"; done
fi

status=0
echo
say "summary after $(( $(date +%s) - T0 ))s (site $SITE; run the benchmarks with --peers $SITE)"
for name in causal-conv1d mamba-ssm lrnnx; do
    res=$(cat "$WORK/$name.result" 2>/dev/null || echo "FAILED (no result: the build did not run)")
    echo "peer $name: $res"
    case "$res" in ok*|"not built"*) ;; *) status=1; explain "$WORK/$name.log" ;; esac
done
exit $status
