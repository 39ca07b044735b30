"""A small decoder-only transformer over CIF tokens (CrystaLLM's model, in flax).

GPT-2's layout as CrystaLLM uses it (nanoGPT): token + learned position embeddings,
pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final
LayerNorm and logits tied to the token embedding. Training is next-token cross-entropy
on padded sequences. Sampling runs the same network in flax's autoregressive-cache
mode (keys and values of the positions done are kept, so a token costs one position's
work): one jitted step of fixed shape feeds every row its token at the same position,
the prompt's own next token while the prompt lasts, else one drawn with temperature
and top-k, so prompts of different lengths share a batch. By default the draw is
constrained to tokens that can continue a CIF of the prompt's formula (`cif_grammar`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnome_loop.generative.checkpoint import load_params, read_card, save_generator
from gnome_loop.generative.cif_grammar import CifConstraint, allowed_mask
from gnome_loop.generative.cif_tokens import EOS, PAD, decode, encode, vocabulary
from gnome_loop.generative.training import make_step

ARCHITECTURE = "cif-transformer"
PAD_ID, EOS_ID = vocabulary().index(PAD), vocabulary().index(EOS)


@dataclass(frozen=True)
class LMConfig:
    """The network's shape; `max_len` bounds a CIF's tokens (prompt and end token included)."""

    max_len: int = 512
    width: int = 256
    depth: int = 4
    heads: int = 8


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    width: int
    heads: int
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width,
                                                decode=self.decode)(y, y, mask=mask)
        y = nn.LayerNorm()(x)
        return x + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(y)))


class CifTransformer(nn.Module):
    """Token ids (batch, length) in, next-token logits (batch, length, vocabulary) out.

    With `decode` the input is one token per row at position `start`, and the keys and
    values of earlier positions come from the "cache" collection (flax's
    autoregressive cache, created by `init` on a full-length input)."""

    config: LMConfig
    decode: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, start: jax.Array | int = 0) -> jax.Array:
        config = self.config
        embed = nn.Embed(len(vocabulary()), config.width, embedding_init=nn.initializers.normal(0.02))
        position = self.param("position", nn.initializers.normal(0.02), (config.max_len, config.width))
        x = embed(tokens) + jax.lax.dynamic_slice_in_dim(position, start, tokens.shape[1])
        mask = None if self.decode else nn.make_causal_mask(tokens)
        for _ in range(config.depth):
            x = Block(config.width, config.heads, self.decode)(x, mask)
        return embed.attend(nn.LayerNorm()(x))


def init_params(config: LMConfig, seed: int = 0) -> Any:
    return CifTransformer(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, config.max_len), jnp.int32))


def token_batch(texts: Sequence[str], max_len: int, multiple: int | None = None) -> np.ndarray:
    """Texts as token ids, each ended by EOS and padded, `max_len` columns or, with
    `multiple`, the longest row's length rounded up to a multiple of it (the network
    takes any length up to `max_len`: less padding, the same loss); ValueError for a
    text that does not fit."""
    rows = [encode(text) + [EOS_ID] for text in texts]
    for ids in rows:
        if len(ids) > max_len:
            raise ValueError(f"{len(ids)} tokens do not fit max_len {max_len}")
    longest = max(map(len, rows), default=1)
    width = min(max_len, -(-longest // multiple) * multiple) if multiple else max_len
    out = np.full((len(texts), width), PAD_ID, np.int32)
    for row, ids in enumerate(rows):
        out[row, : len(ids)] = ids
    return out


def sequence_loss(model: CifTransformer, params: Any, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the real (non-padding) targets."""
    logits = model.apply(params, tokens[:, :-1])
    targets = tokens[:, 1:]
    weight = (targets != PAD_ID).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@functools.lru_cache(maxsize=4)
def make_train_step(config: LMConfig, optimizer: optax.GradientTransformation):
    """(params, opt_state, tokens, key) -> (params, opt_state, loss): one jitted Adam step."""
    model = CifTransformer(config)
    return make_step(lambda params, tokens, key: sequence_loss(model, params, tokens), optimizer)


@functools.lru_cache(maxsize=4)
def make_eval_loss(config: LMConfig):
    """(params, tokens) -> mean cross-entropy, jitted."""
    model = CifTransformer(config)
    return jax.jit(lambda params, tokens: sequence_loss(model, params, tokens))


@functools.lru_cache(maxsize=4)
def _decoder(config: LMConfig, top_k: int | None):
    """(batch, max_len) -> an empty cache; and one jitted decoding step at `position`:
    every row's token there goes in, the row's token at `position + 1` comes out (the
    prompt's while it lasts, else drawn from the `allowed` tokens (rows × vocabulary
    booleans) by the logits scaled by the temperature and cut to the top k; padding once
    the row has ended), and that token column. The cache and the tokens are donated:
    updated in place, not copied every token."""
    model = CifTransformer(config, decode=True)

    def empty_cache(rows: int):
        return model.init(jax.random.PRNGKey(0), jnp.zeros((rows, config.max_len), jnp.int32))["cache"]

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def step(params, cache, tokens, prompt_lengths, finished, position, key, temperature, allowed):
        token = jax.lax.dynamic_slice_in_dim(tokens, position, 1, axis=1)
        logits, variables = model.apply({**params, "cache": cache}, token, position, mutable=["cache"])
        logits = jnp.where(allowed, logits[:, 0], -jnp.inf).at[:, PAD_ID].set(-jnp.inf) / temperature
        if top_k is not None:
            logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][:, -1:], -jnp.inf, logits)
        drawn = jnp.where(finished, PAD_ID, jax.random.categorical(key, logits))
        in_prompt = position + 1 < prompt_lengths
        new = jnp.where(in_prompt, jax.lax.dynamic_slice_in_dim(tokens, position + 1, 1, axis=1)[:, 0], drawn)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], position + 1, axis=1)
        return variables["cache"], tokens, finished | (~in_prompt & (new == EOS_ID)), new

    return empty_cache, step


def sample(config: LMConfig, params: Any, prompts: Sequence[str], key: jax.Array, temperature: float = 1.0,
           top_k: int | None = None, max_len: int | None = None, constrained: bool = True
           ) -> list[tuple[str, bool]]:
    """Complete every prompt once: `(text, finished)` per prompt, `finished` False when
    the text ran into `max_len` tokens (at most, and by default, the model's) before
    the model ended it. `constrained` masks the tokens that cannot continue a CIF of the
    prompt's formula (`cif_grammar`: space group, Wyckoff positions, room for each atom,
    sites, end), at the
    cost of reading each drawn token back to the host."""
    if temperature <= 0:
        raise ValueError("temperature must be positive (use top_k=1 for greedy decoding)")
    max_len = min(max_len or config.max_len, config.max_len)
    prompt_ids = [encode(p) for p in prompts]
    if not all(0 < len(ids) < max_len for ids in prompt_ids):
        raise ValueError(f"every prompt needs 1 to {max_len - 1} tokens")
    tokens = np.full((len(prompts), config.max_len), PAD_ID, np.int32)
    for row, ids in enumerate(prompt_ids):
        tokens[row, : len(ids)] = ids
    grammar = [CifConstraint() for _ in prompts] if constrained else []
    for constraint, ids in zip(grammar, prompt_ids):
        for token in ids:
            constraint.push(token)
    empty_cache, step = _decoder(config, top_k)
    cache, tokens = empty_cache(len(prompts)), jnp.asarray(tokens)
    lengths = np.array([len(ids) for ids in prompt_ids])
    device_lengths, finished = jnp.asarray(lengths), jnp.zeros(len(prompts), bool)
    allowed, done = jnp.ones((len(prompts), len(vocabulary())), bool), np.zeros(len(prompts), bool)
    for position in range(max_len - 1):
        if grammar:
            allowed = allowed_mask(grammar, (position + 1 >= lengths) & ~done)
        cache, tokens, finished, new = step(params, cache, tokens, device_lengths, finished, position,
                                            jax.random.fold_in(key, position), temperature, allowed)
        if grammar:
            drawn = np.asarray(new)
            for row in np.flatnonzero((position + 1 >= lengths) & ~done):
                grammar[row].push(int(drawn[row]))
            done = np.asarray(finished)
            if done.all():
                break
        elif position % 16 == 15 and bool(jnp.all(finished)):
            break
    rows = np.asarray(tokens)[:, :max_len]
    return [(decode(row), bool(done)) for row, done in zip(rows, np.asarray(finished))]


def vocabulary_hash() -> str:
    """Identifies the tokenizer a model was trained with."""
    return hashlib.sha1("\n".join(vocabulary()).encode()).hexdigest()[:16]


def save_lm(directory: str | Path, config: LMConfig, params: Any, card: dict | None = None) -> None:
    """Parameters and a model card (the config, the vocabulary's hash, plus `card`)."""
    save_generator(directory, params, {**(card or {}), "architecture": ARCHITECTURE, "config": asdict(config),
                                       "vocabulary": vocabulary_hash()})


def load_lm(directory: str | Path) -> tuple[LMConfig, Any, dict]:
    """The config, parameters and card saved by `save_lm`; ValueError when the folder holds
    no language model or one of another vocabulary."""
    card = read_card(directory, ARCHITECTURE)
    if card.get("vocabulary") != vocabulary_hash():
        raise ValueError(f"{directory}: trained with another CIF vocabulary than this gnome_loop's")
    config = LMConfig(**card["config"])
    return config, load_params(directory, init_params(config)), card
