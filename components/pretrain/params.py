"""The pretrain stage's parameters (PretrainParams), apart from the stage: the pipeline's one-line `plan` task
builds them to decide whether to pretrain, and importing the stage (numpy, pandas) would add ~0.6 s to its
start-up. `domaintune.components.pretrain.stage` re-exports the class."""
from __future__ import annotations

from dataclasses import dataclass

from domaintune.components.core.errors import fraction, non_negative, positive, require
from domaintune.components.io.base_models import PACKAGED_MODEL
from domaintune.components.training.precision import PRECISIONS


@dataclass
class PretrainParams:
    base_model: str = PACKAGED_MODEL
    s3_endpoint_url: str = ""
    domain_corpus: str = ""
    pretrain_on_train_text: bool = False
    corpus_text_column: str = "text"
    mlm_epochs: float = 1.0
    mlm_max_steps: int = 300
    mlm_learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    mlm_batch_size: int = 32
    mlm_head_warmup_steps: int = 200
    max_length: int = 128
    precision: str = "auto"
    seed: int = 42
    checkpoint_dir: str = ""
    num_processes: int = 0  # 0: one process per GPU the pod has (DDP under torchrun when more than one)

    @property
    def wanted(self) -> bool:
        """Whether the pipeline pretrains at all (DAPT on a corpus, or TAPT on the training texts)."""
        return bool(self.domain_corpus) or self.pretrain_on_train_text

    def __post_init__(self):
        require(bool(self.corpus_text_column), "--corpus-text-column must not be empty")
        positive("mlm-epochs", self.mlm_epochs, kind=float)
        require(not isinstance(self.mlm_max_steps, bool) and isinstance(self.mlm_max_steps, int)
                and self.mlm_max_steps >= 0,
                f"--mlm-max-steps must be a non-negative integer, 0 for no cap (got {self.mlm_max_steps!r})")
        positive("mlm-learning-rate", self.mlm_learning_rate, kind=float)
        fraction("mlm-probability", self.mlm_probability, allow_zero=False)
        positive("mlm-batch-size", self.mlm_batch_size)
        require(not isinstance(self.mlm_head_warmup_steps, bool) and isinstance(self.mlm_head_warmup_steps, int)
                and self.mlm_head_warmup_steps >= 0,
                f"--mlm-head-warmup-steps must be a non-negative integer (got {self.mlm_head_warmup_steps!r})")
        positive("max-length", self.max_length)
        require(self.max_length >= 8, f"--max-length must be at least 8 for masked-LM blocks (got {self.max_length})")
        require(self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        non_negative("num-processes", self.num_processes, kind=int)
