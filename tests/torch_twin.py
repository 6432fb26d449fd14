"""The training loss on Hugging Face transformers' GPT2LMHeadModel: the independent reference
that gradients and AdamW steps are checked against (tests/test_reference.py, test_train.py,
bench/bench_train.py)."""

from __future__ import annotations

import reference


def lm_loss(model, texts):
    """The token-weighted mean of -log p(token) over texts (token lists), each token predicted
    from <|endoftext|> and the tokens before it, as gpt2.loss defines it: a torch scalar."""
    import torch

    n_total = sum(len(t) for t in texts)
    loss = 0
    for ids in texts:
        if ids:
            inputs, targets = reference.lm_example(ids)
            logits = model(torch.tensor([inputs])).logits[0]
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="sum") / n_total
    return loss
