"""quanta.qintegrations.metrics (`quanta eval`, the demo) on tiny models with known answers."""

import math

import pytest
import torch
from torch import nn

from quanta.qintegrations import metrics

VOCAB = 37


class UniformLM(nn.Module):
    """A causal LM whose logits are equal for every token: perplexity must be the vocab size."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, VOCAB)


class OracleLM(nn.Module):
    """A causal LM that puts all probability on `next_token[current token]`."""

    def __init__(self, next_token: dict[int, int]) -> None:
        super().__init__()
        self.next_token = next_token

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.full((*ids.shape, VOCAB), -1e4)
        for position, token in enumerate(ids[0].tolist()):
            logits[0, position, self.next_token.get(token, 0)] = 0.0
        return logits


@pytest.mark.parametrize("n_tokens, window", [(10, 4), (64, 64), (100, 512)])
def test_perplexity_of_uniform_logits_is_the_vocab_size(n_tokens, window):
    ids = torch.randint(1, VOCAB, (n_tokens,))
    assert metrics.perplexity(UniformLM(), ids, bos_token_id=0, window=window) == pytest.approx(
        VOCAB, rel=1e-5
    )


def test_perplexity_of_a_perfect_predictor_is_one():
    ids = torch.full((20,), 5)  # BOS (0) and every token predict token 5
    model = OracleLM({0: 5, 5: 5})
    assert metrics.perplexity(model, ids, bos_token_id=0, window=5) == pytest.approx(1.0)


def test_perplexity_without_bos_scores_all_but_each_window_s_first_token():
    ids = torch.full((20,), 5)
    model = OracleLM({5: 5})  # nothing predicts the first 5: it is context only
    assert metrics.perplexity(model, ids, bos_token_id=None, window=4) == pytest.approx(1.0)
    uniform = metrics.perplexity(UniformLM(), torch.ones(9, dtype=torch.long), None, window=4)
    assert uniform == pytest.approx(VOCAB, rel=1e-5)  # the last window, one token, scores none


def test_perplexity_of_nothing_to_score_is_refused():
    with pytest.raises(ValueError, match="perplexity needs tokens to score, got 1"):
        metrics.perplexity(UniformLM(), torch.ones(1, dtype=torch.long), bos_token_id=None)


@pytest.mark.parametrize("bos, eos, expected", [(1, 2, 1), (None, 2, 2), (None, None, None)])
def test_the_prefix_token_is_bos_else_eos(bos, eos, expected):
    class Tokenizer:
        bos_token_id, eos_token_id = bos, eos

    assert metrics.prefix_token_id(Tokenizer()) == expected


def test_perplexity_accepts_a_model_output_with_logits():
    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class WrappedLM(nn.Module):
        def forward(self, ids):
            return Output(UniformLM()(ids))

    value = metrics.perplexity(WrappedLM(), torch.ones(8, dtype=torch.long), bos_token_id=0)
    assert math.isclose(value, VOCAB, rel_tol=1e-5)


def test_cosine_of_identical_embeddings_is_one():
    embeddings = torch.randn(16, 8)
    assert metrics.mean_cosine(embeddings, embeddings.clone()) == pytest.approx(1.0)


def test_cosine_ignores_scale_and_averages_rows():
    reference = torch.eye(4)
    candidate = torch.stack([3 * reference[0], reference[1], -reference[2], reference[0]])
    # rows: same direction, same, opposite, orthogonal -> (1 + 1 - 1 + 0) / 4
    assert metrics.mean_cosine(reference, candidate) == pytest.approx(0.25)


def test_top1_agreement_counts_matching_argmax():
    reference = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    candidate = torch.tensor([[0.8, 0.2], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])
    assert metrics.top1_agreement(reference, reference) == 1.0
    assert metrics.top1_agreement(reference, candidate) == 0.75


def test_classify_batches_give_the_same_logits_as_one_pass():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    images = torch.randn(10, 3, 8, 8)
    torch.testing.assert_close(metrics.classify(model, images, batch_size=3), model(images))


class CharTokenizer:
    """Tokenizes by character with right padding, like a Hugging Face tokenizer call."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        length = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids[row, : len(text)] = torch.tensor([ord(c) % 50 + 1 for c in text])
            mask[row, : len(text)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(51, 6)

    def forward(self, input_ids, attention_mask):
        class Output:
            last_hidden_state = self.embedding(input_ids)

        return Output()


def test_sentence_embeddings_are_unit_norm_and_ignore_padding():
    model, tokenizer = TinyEncoder(), CharTokenizer()
    texts = ["short", "a much longer sentence", "mid size"]
    together = metrics.sentence_embeddings(model, tokenizer, texts, batch_size=3)
    alone = torch.cat([metrics.sentence_embeddings(model, tokenizer, [t]) for t in texts])
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(together, alone)  # padding in a batch changes nothing
