"""Tiny Llama-style models and a tokenizer with a chat template, built at test time.

No hub downloads: a byte-level BPE tokenizer is trained on a few sentences with the
``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast``; two ``LlamaForCausalLM``
models are created from a ``LlamaConfig`` and saved to a temporary directory.

The full model is briefly trained to *babble*: asked :data:`CODE_PROMPT`, it answers with a
closed code block and then keeps chatting (:data:`BABBLE_ANSWER`), the pattern the
babbling guard must cut. The smaller model keeps its random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]

CODE_PROMPT = "Write code that prints one."
#: What the trained model answers to CODE_PROMPT: the code block, then chatter.
BABBLE_ANSWER = (
    "```python\nprint(1)\n```\n"
    "Hope this helps! This code prints one. Let me know if you need anything else, "
    "I am always happy to help with more code and more words and more words."
)
CORPUS = [
    CODE_PROMPT,
    BABBLE_ANSWER,
    "The quick brown fox jumps over the lazy dog.",
    "Always answer briefly. You are a helpful assistant.",
    "What is the capital of France? Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n",
]


@dataclass(frozen=True)
class TinyModels:
    """Paths of the built models."""

    full: Path
    small: Path


def build_tokenizer():
    """A byte-level BPE tokenizer with special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(vocab_size: int, hidden: int, layers: int, eos_id: int, pad_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )


def _train_to_babble(model, tokenizer, steps: int = 150) -> None:
    """Overfit ``model`` on the CODE_PROMPT conversation so that it babbles on cue."""
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CODE_PROMPT}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text + BABBLE_ANSWER, return_tensors="pt").input_ids
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()


def build_tiny_models(root: Path) -> TinyModels:
    """Build, train and save both tiny models under ``root`` (a couple of seconds)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids("<|end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|pad|>")
    out = TinyModels(root / "tiny-llama", root / "tiny-llama-small")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for path, hidden, layers, train in ((out.full, 32, 2, True), (out.small, 16, 1, False)):
            model = LlamaForCausalLM(_config(len(tokenizer), hidden, layers, eos_id, pad_id))
            if train:
                _train_to_babble(model, tokenizer)
            model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
    return out
