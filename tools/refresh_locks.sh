#!/usr/bin/env bash
# Refresh the install locks on purpose (docs/install.md). Never run by CI.
#
#   tools/refresh_locks.sh cpu   # newest releases setup.py's ranges allow, in a fresh virtualenv;
#                                # runs the whole suite on them and writes requirements/lock-cpu.txt
#                                # only if it passes
#   tools/refresh_locks.sh gpu   # resolves requirements/gpu.in (SGLang's pins) for Linux x86_64,
#                                # Python 3.11, into requirements/lock-gpu.txt (needs `uv`)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:?usage: tools/refresh_locks.sh cpu|gpu}"
today="$(date -u +%Y-%m-%d)"

case "$what" in
cpu)
    venv="$(mktemp -d)/venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    python -m pip install -q --upgrade pip setuptools wheel  # the newest build backend, as build isolation gets
    python -m pip install -q torch==2.13.0
    python -m pip install -q -e '.[test]'
    python -m pytest -n 2 tests   # the lock records only versions the suite passed on
    out=requirements/lock-cpu.txt
    {
        sed -n '1,/^# Refreshed:/p' "$out" | sed "s/^# Refreshed: .*/# Refreshed: $today, suite green on it (docs\/install.md says how to refresh)./"
        python -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
        echo "pip==$(python -m pip --version | cut -d' ' -f2)"
        python - <<'PY'
import importlib.metadata as md
for name in ("setuptools", "wheel"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
    } > "$out.new"
    mv "$out.new" "$out"
    echo "wrote $out; commit it with the suite's result in the message"
    ;;
gpu)
    command -v uv >/dev/null || { echo "needs uv (pip install uv)" >&2; exit 1; }
    out=requirements/lock-gpu.txt
    uv pip compile requirements/gpu.in --python-version 3.11 --python-platform x86_64-manylinux_2_34 \
        --no-header -o "$out.body"
    { sed -n '1,/^# Refreshed:/p' "$out" | sed "s/^# Refreshed: .*/# Refreshed: $today (resolved; install and run the gpu tests on a GPU before committing)./"
      cat "$out.body"; } > "$out.new"
    rm "$out.body"
    mv "$out.new" "$out"
    echo "wrote $out"
    ;;
*)
    echo "usage: tools/refresh_locks.sh cpu|gpu" >&2
    exit 2
    ;;
esac
