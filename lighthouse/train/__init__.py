"""The offline trainer: data (files, JSONL, stdlib text, synthetic retrieval tasks), Lighthouse stage + dense tail."""

from lighthouse.train.config import TRAIN_PRESETS, TrainConfig, train_preset

__all__ = ["TRAIN_PRESETS", "TrainConfig", "train_preset"]
