"""A tiny random Llama with a locally trained tokenizer and chat template, and learnable chat data."""
import json
import random
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "red green blue cat dog bird one two three four five six seven eight nine ten".split()


def finetunejob(name: str, spec: dict):
    from kubetune.api import FineTuneJob

    return FineTuneJob.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                       "metadata": {"name": name}, "spec": spec})


def settings(tmp_path: Path, **overrides):
    """Trainer settings for a test: scratch under tmp_path, no metrics port, every step logged."""
    from kubetune.trainer.settings import TrainerSettings

    return TrainerSettings(**{"cache_dir": tmp_path / "cache", "metrics_port": 0,
                              "termination_log": tmp_path / "term", "log_every_steps": 1, **overrides})


def qa_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Questions whose answers follow a rule a small model can learn: echo the word after 'say'."""
    rng = random.Random(seed)
    return [(f"please say {w} now", f"{w} {w}") for w in (rng.choice(WORDS) for _ in range(n))]


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in qa_pairs(n, seed)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file://{path}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lines = [f"{q} {a}" for q, a in qa_pairs(2000)] + ["the quick brown fox jumps over the lazy dog"] * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id)
    import torch
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
