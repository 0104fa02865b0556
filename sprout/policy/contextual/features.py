"""Prompt featurisation: the text of a prompt as a sparse vector, bounded in cost.

Sublinear tf-idf of the prompt's word 1- and 2-grams over a compact vocabulary
(L2-normalised), then a few standardised shape features (length, lines, answer options, a
question mark, digits). Only the prompt text: never a dataset label. Prompts are cut to
their first :attr:`FeatureConfig.max_tokens` tokens, in training and in serving alike, so
the cost of a decision is bounded.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sprout.errors import ConfigError

if TYPE_CHECKING:
    from scipy import sparse

# scikit-learn's default token pattern, lower-cased: words of two or more characters.
_TOKEN = re.compile(r"\b\w\w+\b")
# A line that opens an answer option: "(A): ...", "A) ...", "B. ...".
_OPTION = re.compile(r"\n[ \t]{0,3}\(?[A-Ha-h][ \t]?[):.]")
#: Shape features appended after the vocabulary, in this order.
DENSE_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "options",
    "question_mark",
    "digit_share",
)
# Characters of a prompt that are scanned for tokens (the token cap binds long before this)
# and for the shape features: bounded, so that a decision costs the same on any prompt.
_CHARS_PER_TOKEN = 16
_SHAPE_CHARS = 512
#: The ASCII digits, counted one by one with str.count (C loops; str.translate is slow on
#: non-ASCII text).
_DIGITS = "0123456789"


@dataclass(frozen=True)
class FeatureConfig:
    """How prompts become features, and how the model is fitted.

    Attributes:
        max_tokens: tokens of a prompt that are read (bounds the cost of a decision).
        ngram_max: longest word n-gram.
        min_df: fewest training prompts a term must occur in.
        max_features: vocabulary size (the most frequent terms).
        c: inverse regularisation of the preference model.
        ridge_alpha: regularisation of the energy and latency regressions.
        cv_folds: folds of the out-of-fold predictions used for calibration and the margin.
        seed: seed of the folds and of anything else random in training.
    """

    max_tokens: int = 64
    ngram_max: int = 2
    min_df: int = 2
    max_features: int = 8000
    c: float = 0.1
    ridge_alpha: float = 1.0
    cv_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("max_tokens", self.max_tokens >= 1),
            ("ngram_max", 1 <= self.ngram_max <= 3),
            ("min_df", self.min_df >= 1),
            ("max_features", self.max_features >= 1),
            ("c", self.c > 0),
            ("ridge_alpha", self.ridge_alpha > 0),
            ("cv_folds", self.cv_folds >= 2),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"contextual model: {name}={getattr(self, name)!r} is invalid")


def prompt_terms(text: str, max_tokens: int, ngram_max: int) -> list[str]:
    """The word n-grams of a prompt's first ``max_tokens`` tokens (lower-cased)."""
    # Tokens average well under 16 characters: the prefix holds the first max_tokens.
    tokens = _TOKEN.findall(text[: max_tokens * _CHARS_PER_TOKEN].lower())[:max_tokens]
    terms = list(tokens)
    if ngram_max >= 2:
        terms.extend([a + " " + b for a, b in itertools.pairwise(tokens)])
    for n in range(3, ngram_max + 1):
        terms.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return terms


def shape_features(text: str) -> list[float]:
    """The raw values of :data:`DENSE_FEATURES` for one prompt (all but the length from its
    first characters)."""
    head = text[:_SHAPE_CHARS]
    digits = sum(map(head.count, _DIGITS))
    return [
        math.log1p(len(text)),
        math.log1p(len(head.split())),
        math.log1p(head.count("\n")),
        float(len(_OPTION.findall("\n" + head)) >= 2),
        float(head.rstrip().endswith("?")),
        digits / max(1, len(head)),
    ]


def json_floats(values: Any, digits: int = 7) -> list[Any]:
    """Nested lists of floats rounded to ``digits`` significant digits (compact JSON).

    Raises:
        ValueError: a value is not finite (a stored model must load as numbers).
    """
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite model parameter")
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(arr).tolist()


@dataclass(frozen=True)
class TextFeatures:
    """A fitted featurizer: vocabulary, idf weights and the shape features' scaling.

    Attributes:
        vocabulary: term -> column.
        idf: (terms,) inverse document frequency per column.
        dense_mean, dense_scale: (shape features,) standardisation.
        config: the settings it was fitted with.
    """

    vocabulary: Mapping[str, int]
    idf: np.ndarray
    dense_mean: np.ndarray
    dense_scale: np.ndarray
    config: FeatureConfig
    # Python copies of the arrays for the per-request path (set in __post_init__).
    _idf_list: list[float] = field(init=False, repr=False, compare=False)
    _mean_list: list[float] = field(init=False, repr=False, compare=False)
    _scale_list: list[float] = field(init=False, repr=False, compare=False)
    _sublinear: list[float] = field(init=False, repr=False, compare=False)  # 1 + log(count)

    @property
    def n_terms(self) -> int:
        """Vocabulary size."""
        return int(self.idf.shape[0])

    @property
    def n_features(self) -> int:
        """Columns of a feature vector: the vocabulary, then the shape features."""
        return self.n_terms + len(DENSE_FEATURES)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        config: FeatureConfig,
        terms: Sequence[list[str]] | None = None,
    ) -> TextFeatures:
        """Choose the vocabulary and scalings from training prompts (``terms``: their
        :func:`prompt_terms`, where the caller has them)."""
        if not texts:
            raise ConfigError("contextual model: no training prompts")
        if terms is None:
            terms = [prompt_terms(t, config.max_tokens, config.ngram_max) for t in texts]
        df: dict[str, int] = {}
        for text_terms in terms:
            for term in set(text_terms):
                df[term] = df.get(term, 0) + 1
        kept = sorted((t for t, n in df.items() if n >= config.min_df), key=lambda t: (-df[t], t))
        kept = sorted(kept[: config.max_features])  # sorted: a stable, readable column order
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept])
        dense = np.array([shape_features(t) for t in texts])
        scale = dense.std(axis=0)
        return cls(
            vocabulary={t: j for j, t in enumerate(kept)},
            idf=idf,
            dense_mean=dense.mean(axis=0),
            dense_scale=np.where(scale > 1e-12, scale, 1.0),
            config=config,
        )

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One prompt's sparse feature vector: (column indices, values)."""
        cfg = self.config
        return self._vector(text, prompt_terms(text, cfg.max_tokens, cfg.ngram_max))

    def _vector(self, text: str, terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`vector` of a prompt whose terms are known."""
        # Plain Python on a few dozen terms: cheaper than numpy's per-call overhead.
        # Terms outside the vocabulary count under -1, dropped after: no Python-level filter.
        counts = Counter(map(self.vocabulary.get, terms, itertools.repeat(-1, len(terms))))
        counts.pop(-1, None)
        idf = self._idf_list
        idx = list(counts)
        tf = self._sublinear  # 1 + log(count), tabulated
        val = [tf[c] * idf[j] for j, c in counts.items()]
        norm = math.hypot(*val)
        if norm > 0:
            val = [v / norm for v in val]
        n_terms = len(idf)
        idx.extend(range(n_terms, n_terms + len(DENSE_FEATURES)))
        val.extend(
            (v - m) / sc
            for v, m, sc in zip(
                shape_features(text), self._mean_list, self._scale_list, strict=True
            )
        )
        return np.array(idx, dtype=np.int64), np.array(val)

    def __post_init__(self) -> None:
        # Python copies for the per-request path.
        object.__setattr__(self, "_idf_list", [float(v) for v in self.idf])
        object.__setattr__(self, "_mean_list", [float(v) for v in self.dense_mean])
        object.__setattr__(self, "_scale_list", [float(v) for v in self.dense_scale])
        # A prompt has at most max_tokens * ngram_max terms, so no count exceeds that.
        most = self.config.max_tokens * self.config.ngram_max
        object.__setattr__(
            self, "_sublinear", [0.0] + [1.0 + math.log(c) for c in range(1, most + 1)]
        )

    def matrix(
        self, texts: Sequence[str], terms: Sequence[list[str]] | None = None
    ) -> sparse.csr_matrix:
        """Feature vectors of many prompts as a sparse matrix (the same values as
        :meth:`vector`, row by row; ``terms``: their :func:`prompt_terms`, where the
        caller has them)."""
        from scipy import sparse

        if terms is None:
            cfg = self.config
            terms = [prompt_terms(t, cfg.max_tokens, cfg.ngram_max) for t in texts]
        indptr = [0]
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for text, text_terms in zip(texts, terms, strict=True):
            idx, val = self._vector(text, text_terms)
            indices.append(idx)
            values.append(val)
            indptr.append(indptr[-1] + idx.size)
        return sparse.csr_matrix(
            (
                np.concatenate(values) if values else np.empty(0),
                np.concatenate(indices) if indices else np.empty(0, dtype=np.int64),
                np.array(indptr),
            ),
            shape=(len(texts), self.n_features),
        )

    def to_params(self) -> dict[str, Any]:
        """JSON-safe form (terms in column order)."""
        terms = [""] * self.n_terms
        for term, j in self.vocabulary.items():
            terms[j] = term
        return {
            "config": asdict(self.config),
            "terms": terms,
            "idf": json_floats(self.idf),
            "dense_features": list(DENSE_FEATURES),
            "dense_mean": json_floats(self.dense_mean),
            "dense_scale": json_floats(self.dense_scale),
        }

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> TextFeatures:
        """Inverse of :meth:`to_params`.

        Raises:
            ConfigError: the parameters are malformed.
        """
        try:
            config = FeatureConfig(**raw["config"])
            terms = [str(t) for t in raw["terms"]]
            idf = np.asarray(raw["idf"], dtype=float)
            mean = np.asarray(raw["dense_mean"], dtype=float)
            scale = np.asarray(raw["dense_scale"], dtype=float)
            dense_names = tuple(raw["dense_features"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"contextual model: malformed features ({e!r})") from e
        if dense_names != DENSE_FEATURES:
            raise ConfigError(
                f"contextual model: shape features {list(dense_names)} differ from this "
                f"version's {list(DENSE_FEATURES)}; retrain the model"
            )
        n_dense = (len(DENSE_FEATURES),)
        if idf.shape != (len(terms),) or mean.shape != n_dense or scale.shape != n_dense:
            raise ConfigError("contextual model: feature arrays do not match the vocabulary")
        if len(set(terms)) != len(terms):
            raise ConfigError("contextual model: the vocabulary repeats a term")
        return cls({t: j for j, t in enumerate(terms)}, idf, mean, scale, config)
