"""TrainConfig: every setting of a training run, with the preset's defaults filled in by `resolve`."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainConfig:
    out: str
    preset: str = "tiny"
    recipe: str = "bf16"
    data: str | None = None           # prepared data dir; None = bundled tinyshakespeare
    tokens: int | None = None         # training tokens; None = preset default
    steps: int | None = None          # optimizer steps; overrides tokens
    batch_size: int | None = None     # sequences per micro-batch per process
    seq_len: int | None = None
    grad_accum: int = 1
    lr: float | None = None
    min_lr_ratio: float = 0.1
    warmup: float = 0.05              # >= 1: steps; < 1: fraction of the run
    schedule: str = "cosine"          # cosine | wsd
    decay_fraction: float = 0.2       # wsd only
    weight_decay: float = 0.1
    beta2: float | None = None        # AdamW beta2; None = the preset's (0.95 unless it says otherwise)
    dropout: float | None = None      # embedding/attention/residual dropout; None = the preset's (0.0)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int | None = None     # 0: only at the end; None: 10 evaluations per run
    eval_batches: int | None = None   # None: the preset's default, else 8
    ckpt_every: int | None = None     # 0: only at the end; -1: never; None: 10 per run
    log_every: int = 1                # metrics rows are materialised every N steps (one sync)
    compile: bool = False
    compile_mode: str = "default"     # torch.compile mode; "reduce-overhead" replays CUDA graphs
    device: str = "auto"
    parallel: str = "ddp"             # ddp | fsdp2, under torchrun
    switch_at: float | None = None    # fraction of steps after which switch_to applies
    switch_to: str | None = None
    forward_only: bool = False
    spike_threshold: float = 1.0
    per_layer_grad_norm: bool = False
    progress: bool | None = None      # None: on when stderr is a terminal
    save_model: bool = True
    max_steps: int | None = None      # stop after this many steps (the schedule is unchanged)
    resume: bool = False

    def resolve(self, world_size: int = 1) -> "TrainConfig":
        """Fill preset defaults and compute ``steps`` from ``tokens``."""
        from fp4lab.models import preset_train_defaults

        d = preset_train_defaults(self.preset)
        batch = self.batch_size or d.get("batch_size", 8)
        seq = self.seq_len or d.get("seq_len", 256)
        lr = self.lr if self.lr is not None else d.get("lr", 1e-3)
        beta2 = self.beta2 if self.beta2 is not None else d.get("beta2", 0.95)
        dropout = self.dropout if self.dropout is not None else d.get("dropout", 0.0)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        if batch < 1 or seq < 1 or self.grad_accum < 1:
            raise ValueError("batch_size, seq_len and grad_accum must be >= 1")
        per_step = batch * seq * self.grad_accum * world_size
        if self.steps is not None:
            steps = self.steps
        else:
            tokens = self.tokens if self.tokens is not None else d.get("tokens", 1_000_000)
            steps = math.ceil(tokens / per_step)
        if steps < 1:
            raise ValueError(f"the run has {steps} optimizer steps; give more --tokens or --steps")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if (self.switch_at is None) != (self.switch_to is None):
            raise ValueError("--switch-at and --switch-to go together")
        if self.switch_at is not None and not 0.0 <= self.switch_at <= 1.0:
            raise ValueError(f"--switch-at must be a fraction in [0, 1], got {self.switch_at}")
        every = max(1, steps // 10)
        return replace(self, batch_size=batch, seq_len=seq, lr=lr, steps=steps, beta2=beta2, dropout=dropout,
                       tokens=steps * per_step,
                       eval_every=every if self.eval_every is None else self.eval_every,
                       ckpt_every=every if self.ckpt_every is None else self.ckpt_every,
                       eval_batches=self.eval_batches or d.get("eval_batches", 8))

    def tokens_per_step(self, world_size: int) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * world_size

    def run_identity(self, world_size: int, data_meta: dict) -> dict:
        """Settings that decide the numbers; a resumed run must match them all."""
        keys = ("preset", "recipe", "steps", "batch_size", "seq_len", "grad_accum", "lr",
                "min_lr_ratio", "warmup", "schedule", "decay_fraction", "weight_decay", "beta2", "dropout",
                "grad_clip", "seed", "switch_at", "switch_to", "forward_only", "parallel")
        ident = {k: getattr(self, k) for k in keys}
        ident["world_size"] = world_size
        ident["data_vocab_size"] = data_meta["vocab_size"]
        ident["data_train_tokens"] = data_meta["train_tokens"]
        return ident

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
