#!/usr/bin/env bash
# Installs the PyTorch peer of `malt bench train --torch PYTHON` (scripts/torch_peer.py) into a
# cache venv and prints the python to pass to --torch. PyPI's default torch wheel (it pulls the
# CUDA libraries too, a few GiB) runs on the CPU; the versions are the ones the peer's reference
# figure (11.3-11.8 s a step, 8 x 256 tokens, 2 threads) and tests/fixtures/reference/ were
# measured with. scripts/gpu-check --cpu-smoke and the reference suite
# (MALT_REFERENCE_PYTHON) can use the same venv.
#
# Usage: scripts/torch-peer-venv.sh [VENV]    (default ${MALT_CACHE:-~/.cache/malt}/torch-venv)
# Then:  malt bench train --torch "$(scripts/torch-peer-venv.sh | tail -1)"
set -euo pipefail
venv=${1:-${MALT_CACHE:-$HOME/.cache/malt}/torch-venv}
pins=(torch==2.15.0 transformers==5.25.0 peft==0.21.2 trl==1.16.0 gguf==0.19.0 numpy)

if [[ ! -x $venv/bin/python ]]; then
	echo "creating $venv" >&2
	python3 -m venv "$venv" || {
		echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
		exit 1
	}
fi
echo "installing ${pins[*]} into $venv" >&2
# pip prints its progress on stdout; the last line of this script's stdout is the python path.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
"$venv/bin/python" - >&2 <<'EOF'
import peft, torch, transformers, trl, gguf  # noqa: F401 - fails here, not in the bench
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}")
EOF
echo "$venv/bin/python"
