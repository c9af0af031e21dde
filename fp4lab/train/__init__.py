"""Trainer, checkpoints, schedules and distributed set-up (see trainer.py for the numerics)."""
from fp4lab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fp4lab.train.config import TrainConfig
from fp4lab.train.schedule import lr_at
from fp4lab.train.trainer import train, train_step

__all__ = ["CheckpointError", "TrainConfig", "load_checkpoint", "lr_at", "save_checkpoint", "train",
           "train_step"]
