"""Training: loss, optimizers (Adafactor as in the paper, Adam) and a partitionable step."""
from .step import (AUX_LOSS_WEIGHT, adafactor, adam, cross_entropy, init_train_state, loss_fn,
                   make_optimizer, make_train_step, rsqrt_schedule)

__all__ = ["AUX_LOSS_WEIGHT", "adafactor", "adam", "cross_entropy", "init_train_state", "loss_fn",
           "make_optimizer", "make_train_step", "rsqrt_schedule"]
