"""Checkpoints as HF Llama directories, in both directions.

A directory holds config.json (model_type "llama" + a `lighthouse` block), model.safetensors (HF names; or
sharded model-*.safetensors + model.safetensors.index.json when reading), tokenizer.json +
tokenizer_config.json (with a chat template) and generation_config.json.

Only safetensors are read: pickle files (.bin/.pt/.pth/.ckpt) are refused, since loading them runs code.
Every tensor is checked against the model before anything is copied; a missing, extra, mis-shaped or
truncated tensor is reported by name. Any file that cannot be read or parsed (JSON, safetensors header,
tokenizer) raises CheckpointError naming it; `verify_checkpoint` checks all of them up front (the server runs
it before loading). Writes go to a temporary file that is renamed into place, so a crash never leaves a
half-written file under the real name.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lighthouse.model.config import ModelConfig
from lighthouse.model.llama import LlamaForCausalLM

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# tensors some HF checkpoints carry that are recomputed, never learned
_IGNORED_KEYS = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded; the message says what is wrong and where."""


def default_checkpoint_dir() -> Path:
    """The bundled default checkpoint (what `lighthouse serve` uses with no --checkpoint)."""
    return Path(__file__).resolve().parent / "assets" / "default-checkpoint"


# ---------------------------------------------------------------- saving


def save_checkpoint(model: LlamaForCausalLM, tokenizer, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write `model` (+ `tokenizer`, a PreTrainedTokenizerFast, or None for the byte tokenizer) to out_dir.

    dtype: store weights in this dtype (default: as they are). Weights are written before config.json.
    """
    from lighthouse.tokenizer import write_byte_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, t in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue  # HF omits the tied head; it is the embedding
        t = t.detach().to("cpu")
        state[name] = (t.to(dtype) if dtype is not None else t).contiguous()
    stored_dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    _atomic(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    if tokenizer is None:
        write_byte_tokenizer(out, model_max_length=model.config.max_position_embeddings)
    else:
        _save_tokenizer(tokenizer, out)
    gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": _stop_ids(model.config, tokenizer),
           "pad_token_id": model.config.pad_token_id, "do_sample": False}
    _atomic_json(out / "generation_config.json", gen)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = stored_dtype
    _atomic_json(out / "config.json", cfg)
    return out


def _stop_ids(config: ModelConfig, tokenizer) -> list[int] | int | None:
    ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    ids = [i for i in ids if i is not None]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if tokenizer is not None else 261
    if isinstance(eot, int) and eot >= 0 and eot != getattr(tokenizer, "unk_token_id", None) and eot not in ids:
        if eot < config.vocab_size:
            ids.append(eot)
    return ids if len(ids) != 1 else ids[0]


def _save_tokenizer(tokenizer, out: Path) -> None:
    tmp = out / f".tokenizer-tmp-{os.getpid()}"
    tokenizer.save_pretrained(str(tmp))
    # transformers 5 writes the chat template to chat_template.jinja only; keep it in tokenizer_config.json as well,
    # where every transformers version reads it, so a copy of the usual files keeps the chat layout
    conf = tmp / "tokenizer_config.json"
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and conf.exists():
        data = json.loads(conf.read_text(encoding="utf-8"))
        if "chat_template" not in data:
            data["chat_template"] = template
            conf.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600; a server user must read it
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_json(path: Path, obj) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


# ---------------------------------------------------------------- loading


@contextmanager
def _reading(path: Path, what: str = ""):
    """Any failure inside becomes a CheckpointError that names `path`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        raise CheckpointError(f"{path} is corrupt or unreadable{what}: {detail}") from exc


def _regular(path: Path) -> None:
    """Refuse a FIFO, socket or device under a checkpoint file's name: reading one blocks or never ends."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or a dangling link: whoever reads it says so
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"{path} is {kind}; a checkpoint's files must be regular files")


def _read_json(path: Path) -> dict:
    _regular(path)
    with _reading(path, " (expected a JSON object)"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"found a JSON {type(data).__name__}")
        return data


def load_config(ckpt_dir: str | os.PathLike) -> ModelConfig:
    path = Path(ckpt_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir} has no config.json; is it a checkpoint directory?")
    data = _read_json(path)
    with _reading(path, " (not a Llama config)"):
        try:
            return ModelConfig.from_hf_dict(data)
        except ValueError as exc:  # a field out of bounds: the message names it and what it may be
            raise CheckpointError(f"{path} is not a usable model config: {exc}") from None


def verify_checkpoint(ckpt_dir: str | os.PathLike, *, require_tokenizer: bool = False) -> None:
    """Check, without loading tensors, that every file of the checkpoint directory is present and readable:
    config.json, the safetensors headers (every tensor inside its file), the tokenizer files and
    generation_config.json. Raises CheckpointError naming the first bad or missing file."""
    ckpt = Path(ckpt_dir)
    _refuse_pickle(ckpt)
    for entry in ckpt.iterdir():  # tokenizer loaders read files this module never names
        if not entry.is_dir():
            _regular(entry)
    config = load_config(ckpt)
    _check_shapes(ckpt, config)
    from lighthouse.tokenizer import TOKENIZER_FILES_TEXT, tokenizer_files

    tok = ckpt / "tokenizer.json"
    if require_tokenizer and tokenizer_files(ckpt) is None:
        raise CheckpointError(f"{ckpt} has no tokenizer; serving needs one: {TOKENIZER_FILES_TEXT} (with the "
                              "model's tokenizer_config.json), as the model's repository ships them")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (ckpt / name).exists():
            _read_json(ckpt / name)
    if tok.exists():
        from tokenizers import Tokenizer

        with _reading(tok, " (not a tokenizers JSON)"):
            Tokenizer.from_file(str(tok))
    gen = ckpt / "generation_config.json"
    if gen.exists():
        eos = _read_json(gen).get("eos_token_id")
        ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise CheckpointError(f"{gen} is corrupt: eos_token_id must be an integer or a list of them, got {eos!r}")


def _hub_hint(path: Path) -> str:
    """For a name shaped like a hub id (ORG/NAME, not a path that exists): how models are loaded here instead."""
    text = str(path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return ""
    from lighthouse.catalog.models import KNOWN_MODELS

    return (f". It looks like a model hub id: checkpoints are loaded from local folders only (nothing is downloaded "
            f"at run time). Download the model into a folder first (e.g. `huggingface-cli download {text} "
            f"--local-dir DIR`, or `git clone` its repository) and pass --checkpoint DIR; a GGUF file converts with "
            f"`lighthouse convert gguf FILE --out DIR`; the models that install from the package index serve with "
            f"--model NAME ({', '.join(sorted(KNOWN_MODELS))})")


def load_checkpoint(
    ckpt_dir: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    load_tokenizer: bool = True,
):
    """-> (LlamaForCausalLM in eval mode on device/dtype, PreTrainedTokenizerFast or None)."""
    from lighthouse.tokenizer import load_tokenizer as _load_tok

    ckpt = Path(ckpt_dir)
    _refuse_pickle(ckpt)
    config = load_config(ckpt)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device)
    model.inv_freq = _fresh_inv_freq(config).to(device)
    model.lighthouse_inv_freq = _fresh_inv_freq(config, lighthouse=True).to(device)
    load_weights(model, ckpt, dtype=dtype)
    model.to(dtype=dtype).eval()
    tok = None
    from lighthouse.tokenizer import tokenizer_files

    files = tokenizer_files(ckpt) if load_tokenizer else None
    if files is not None:
        with _reading(ckpt / files[0], " (or its tokenizer_config.json)"):
            tok = _load_tok(ckpt)
    return model, tok


def _fresh_inv_freq(config: ModelConfig, *, lighthouse: bool = False) -> torch.Tensor:
    """The model's RoPE buffers (not stored): inv_freq, or lighthouse_inv_freq with lighthouse=True."""
    from lighthouse.ops.rope import lighthouse_inv_freq, rope_inv_freq

    return lighthouse_inv_freq(config) if lighthouse else rope_inv_freq(config)


def _refuse_pickle(ckpt: Path) -> None:
    if ckpt.is_file():
        if ckpt.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"refusing to load {ckpt}: pickle checkpoints can run arbitrary code; convert it to safetensors")
        raise CheckpointError(f"{ckpt} is a file; pass the checkpoint directory (config.json + model.safetensors)")
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt} does not exist" + _hub_hint(ckpt))
    has_st = (ckpt / WEIGHTS_NAME).exists() or (ckpt / INDEX_NAME).exists()
    pickles = sorted(p.name for p in ckpt.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_st:
        if pickles:
            raise CheckpointError(
                f"{ckpt} only has pickle weights ({', '.join(pickles)}); they are refused because loading them can run "
                "arbitrary code. Re-save as safetensors (model.save_pretrained(dir, safe_serialization=True))."
            )
        raise CheckpointError(f"{ckpt} has no {WEIGHTS_NAME} (or {INDEX_NAME})")


def _weight_files(ckpt: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it."""
    if (ckpt / WEIGHTS_NAME).exists():
        return {name: ckpt / WEIGHTS_NAME for name in _check_header(ckpt / WEIGHTS_NAME)}
    index = _read_json(ckpt / INDEX_NAME)
    with _reading(ckpt / INDEX_NAME, " (no weight_map of tensor -> file)"):
        shards = sorted(set(index["weight_map"].values()))
    files = {}
    for f in shards:
        if not (ckpt / f).is_file():
            raise CheckpointError(f"{ckpt / f} is missing (listed in {INDEX_NAME})")
        for name in _check_header(ckpt / f):
            files[name] = ckpt / f
    return files


def _check_shapes(ckpt: Path, config: ModelConfig) -> None:
    """Every stored tensor has the shape config.json implies, read from the headers alone, so that a config whose
    sizes are wrong is refused before the model is allocated from them (a model of the config's size would be)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    for name, (path, shape) in _weight_shapes(ckpt).items():
        want = expected.get(name)
        if want is not None and shape != want:
            raise CheckpointError(f"tensor '{name}' in {path.name} has shape {shape}; {ckpt / 'config.json'} implies "
                                  f"{want}: the config does not describe these weights")


def _weight_shapes(ckpt: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    files = _weight_files(ckpt)
    shapes: dict[Path, dict[str, tuple[int, ...]]] = {}
    for f in sorted(set(files.values())):
        with _reading(f), safe_open(str(f), framework="pt") as sf:
            shapes[f] = {name: tuple(sf.get_slice(name).get_shape()) for name in sf.keys()}
    return {name: (f, shapes[f][name]) for name, f in files.items()}


def _check_header(path: Path) -> list[str]:
    """Tensor names in a safetensors file, after checking every tensor's bytes lie inside the file."""
    _regular(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): not even a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CheckpointError(f"{path} is truncated: its header needs {n} bytes, the file has {size}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header: {e}") from None
    data = size - 8 - n
    names = []
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header: not a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        with _reading(path, f" (tensor '{name}' has no valid data_offsets in the header)"):
            end = int(info["data_offsets"][1])
        if end > data:
            raise CheckpointError(
                f"{path} is truncated: tensor '{name}' needs bytes up to {end} of the data section, which has {data}"
            )
        names.append(name)
    return names


def load_weights(model: LlamaForCausalLM, ckpt: Path, *, dtype: torch.dtype) -> None:
    files = _weight_files(Path(ckpt))
    expected = dict(model.state_dict())
    tied = model.config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    stored = {k: v for k, v in files.items() if not k.endswith(_IGNORED_KEYS)}
    if tied and "lm_head.weight" in stored:
        stored.pop("lm_head.weight")  # some exporters write the tied head anyway
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise CheckpointError(f"{ckpt} is missing tensor '{missing[0]}'" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise CheckpointError(f"{ckpt} has tensor '{extra[0]}' that this model does not have (config mismatch?)")
    by_file: dict[Path, list[str]] = {}
    for name, f in stored.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        with _reading(f), safe_open(str(f), framework="pt") as sf:
            for name in names:
                shape = tuple(sf.get_slice(name).get_shape())
                want = tuple(expected[name].shape)
                if shape != want:
                    raise CheckpointError(f"tensor '{name}' in {f.name} has shape {shape}; the config implies {want}")
                with torch.no_grad():
                    expected[name].copy_(sf.get_tensor(name).to(dtype))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
