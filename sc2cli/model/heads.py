"""Sequence- and token-classification heads on the base model (spec §5)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import ModelOutput, Starcoder2Model, Starcoder2PreTrainedModel


class Starcoder2ForSequenceClassification(Starcoder2PreTrainedModel):
    """Scores every position, then keeps the logits of each row's right-most non-pad token."""

    base_model_prefix = "model"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = Starcoder2Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        **_: object,
    ) -> ModelOutput:
        out = self.model(input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states=output_hidden_states)
        logits = self.score(out.last_hidden_state)  # (B, S, num_labels)
        batch = logits.shape[0]
        last = self.last_token_index(input_ids, batch, logits.shape[1], logits.device)
        out.logits = logits[torch.arange(batch, device=logits.device), last]
        if labels is not None:
            out.loss = sequence_classification_loss(self.config, out.logits, labels)
        return out

    def last_token_index(self, input_ids: Tensor | None, batch: int, length: int, device) -> Tensor:
        pad = self.config.pad_token_id
        if pad is None and batch > 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        if pad is None:
            return torch.full((batch,), -1, dtype=torch.long, device=device)
        if input_ids is None:
            warnings.warn("padding is not detected with inputs_embeds; pooling the last position of every row")
            return torch.full((batch,), -1, dtype=torch.long, device=device)
        non_pad = (input_ids != pad).to(device, torch.int32)
        return (torch.arange(length, device=device, dtype=torch.int32) * non_pad).argmax(-1)


def sequence_classification_loss(config, logits: Tensor, labels: Tensor) -> Tensor:
    """Resolves `problem_type` on first use and stores it in the config, as the reference does."""
    labels = labels.to(logits.device)
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1), ignore_index=-100)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class Starcoder2ForTokenClassification(Starcoder2PreTrainedModel):
    base_model_prefix = "model"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = Starcoder2Model(config)
        # The reference falls back to 0.1 because Starcoder2Config defines neither of the first two keys.
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        bias = getattr(config, "token_classification_bias", True)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=bias)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        **_: object,
    ) -> ModelOutput:
        out = self.model(input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states=output_hidden_states)
        out.logits = self.score(self.dropout(out.last_hidden_state))
        if labels is not None:
            logits = out.logits.float().view(-1, self.config.num_labels)
            out.loss = F.cross_entropy(logits, labels.to(logits.device).view(-1), ignore_index=-100)
        return out
