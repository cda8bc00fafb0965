#!/bin/sh
# Make the TensorFlow Lite Micro source trees the firmware tests build against, at the commit
# the exporter pins (firmware_bridge/targets.py TFLM_COMMIT; ../shared/tflm/VERSIONS on the
# project's build machine holds the same commit). Needs git, make, curl, unzip and python3 with
# numpy and pillow (TFLM's project_generation/requirements.txt), and internet.
#
#   scripts/fetch_tflm.sh DIR          # -> DIR/tree-ref, DIR/tree-cmsis, DIR/VERSIONS
#   export NONN_TFLM_DIR=DIR           # the tests and exported CMake projects use it
#
# tree-ref: TARGET=linux, reference kernels (host builds). tree-cmsis: cortex_m_generic with
# CMSIS-NN kernels, plus the two headers folders TFLM's generator leaves out (CMSIS_6's
# Core/Include/m-profile and Cortex_DFP's Device/ARMCM*/Include).
set -eu
TFLM_COMMIT=90b983c2b3f1480642e040bbd2ddb37b998f3424
dest=${1:?usage: scripts/fetch_tflm.sh DIR}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet --filter=blob:none https://github.com/tensorflow/tflite-micro.git "$work/tflm"
git -C "$work/tflm" checkout --quiet "$TFLM_COMMIT"
cd "$work/tflm"
gen=tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py
if [ ! -f "$dest/tree-ref/tensorflow/lite/micro/micro_interpreter.h" ]; then
  python3 "$gen" --makefile_options="TARGET=linux TARGET_ARCH=x86_64" "$dest/tree-ref"
  echo "TARGET=linux TARGET_ARCH=x86_64" > "$dest/tree-ref/MAKEFILE_OPTIONS.txt"
fi
if [ ! -f "$dest/tree-cmsis/tensorflow/lite/micro/micro_interpreter.h" ]; then
  opts="TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 OPTIMIZED_KERNEL_DIR=cmsis_nn"
  python3 "$gen" --makefile_options="$opts" "$dest/tree-cmsis"
  echo "$opts" > "$dest/tree-cmsis/MAKEFILE_OPTIONS.txt"
  dl=tensorflow/lite/micro/tools/make/downloads
  core="$dest/tree-cmsis/third_party/cmsis/CMSIS/Core/Include"
  mkdir -p "$core"
  cp -r "$dl/cmsis/CMSIS/Core/Include/m-profile" "$core/"
  for cpu in ARMCM0 ARMCM0plus ARMCM3 ARMCM4 ARMCM7 ARMCM33 ARMCM55 ARMCM85; do
    src="$dl/cmsis/Cortex_DFP/Device/$cpu/Include"
    [ -d "$src" ] || continue
    mkdir -p "$dest/tree-cmsis/third_party/cmsis/Cortex_DFP/Device/$cpu"
    cp -r "$src" "$dest/tree-cmsis/third_party/cmsis/Cortex_DFP/Device/$cpu/"
  done
fi
printf 'tflite-micro %s\n' "$TFLM_COMMIT" > "$dest/VERSIONS"
cp "$dest/VERSIONS" "$dest/tree-ref/VERSIONS.txt"
cp "$dest/VERSIONS" "$dest/tree-cmsis/VERSIONS.txt"
echo "TFLM $TFLM_COMMIT trees in $dest; export NONN_TFLM_DIR=$dest"
