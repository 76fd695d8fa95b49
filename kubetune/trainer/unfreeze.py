"""Gradual unfreezing for full fine-tuning (ULMFiT): train the head first, then one more transformer block
from the top every N steps (freeze.unfreezeEverySteps) or every N epochs (freeze.unfreezeEveryEpochs), and
the embedding layer (everything below the first block) last.

The top layers are the most task-specific; unfreezing downwards lets the new head settle before its gradients
reach, and disturb, the general-purpose lower layers. Which parameters train is a pure function of the step,
so a resumed run freezes exactly what the interrupted one did. Frozen parameters get no gradient, so AdamW
leaves them (and their weight decay) alone until they thaw.
"""
import torch

from kubetune.api.spec import Freeze
from kubetune.trainer.errors import BadInput


def transformer_blocks(model) -> list:
    """The model's stack of transformer blocks (the ModuleList as long as num_hidden_layers)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    raise BadInput("method.freeze: cannot find the model's transformer blocks")


def gradual(freeze: Freeze | None) -> bool:
    return freeze is not None and bool(freeze.unfreeze_every_steps or freeze.unfreeze_every_epochs)


class GradualUnfreezing:
    def __init__(self, model, freeze: Freeze, steps_per_epoch: int):
        self.every_steps = freeze.unfreeze_every_steps
        self.every_epochs = freeze.unfreeze_every_epochs
        self.start = freeze.trainable_top_layers or 0
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.keep_embeddings = freeze.embeddings
        self.embeddings = model.get_input_embeddings().weight
        blocks = transformer_blocks(model)
        in_block = {id(p) for b in blocks for p in b.parameters()}
        first = next(iter(blocks[0].parameters()))
        # Parameters registered before the first block are the embedding layer (token, position, type
        # embeddings and their norm); those after the last block (final norm, pooler, head) always train.
        params = list(model.parameters())
        cut = next(i for i, p in enumerate(params) if p is first)
        self.bottom = [p for p in params[:cut] if id(p) not in in_block]
        # Units in unfreezing order: the blocks from the top down, then the embedding layer.
        self.units = [list(b.parameters()) for b in reversed(blocks)] + [self.bottom]
        self.current: int | None = None

    def units_trainable(self, step: int) -> int:
        """How many units (blocks from the top, then the embeddings) train at optimizer step `step`."""
        if self.every_steps:
            thawed = step // self.every_steps
        else:
            thawed = step // (self.every_epochs * self.steps_per_epoch)
        return min(self.start + thawed, len(self.units))

    def apply(self, step: int) -> int | None:
        """Sets requires_grad for `step`; returns the number of trainable units when it changed."""
        n = self.units_trainable(step)
        if n == self.current:
            return None
        for i, unit in enumerate(self.units):
            for p in unit:
                p.requires_grad_(i < n)
        if self.keep_embeddings:
            self.embeddings.requires_grad_(False)
        self.current = n
        return n
