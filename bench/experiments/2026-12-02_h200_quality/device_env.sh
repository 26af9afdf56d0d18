# Sourced on the device machine: the SDK's dependencies (pydantic; httpx is in the image) from the carried wheels
# in .whl/, the repository and the SDK on PYTHONPATH. See ../../../.library/device notes in the session log.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python PYTHONUNBUFFERED=1 PYTHON=python3
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
