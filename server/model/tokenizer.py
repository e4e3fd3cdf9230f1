"""Kimi-VL tokenizer without remote code: tiktoken BPE (`tiktoken.model`) plus 256 special ids
right after the regular vocabulary, exposed as a slow transformers tokenizer and registered with
AutoTokenizer and vLLM so that the default tokenizer mode resolves to it."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import tiktoken
from transformers import AddedToken, PreTrainedTokenizer

VOCAB_FILE = "tiktoken.model"
TURN_END = "<|im_end|>"
NUM_RESERVED_SPECIAL_TOKENS = 256
DEFAULT_CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Kimi pre-tokenisation: Han runs are their own pieces; letter classes exclude Han through
# character-class intersection (supported by tiktoken's fancy-regex and by `regex` with V1).
_LETTERS_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_LETTERS_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
PAT_STR = "|".join(
    [
        r"[\p{Han}]+",
        rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+{_CONTRACTION}",
        rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*{_CONTRACTION}",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

# tiktoken's Rust core panics or crawls on huge inputs and very long single-class runs.
_MAX_ENCODE_CHARS = 400_000
_MAX_RUN_CHARS = 25_000
_LONG_RUN = re.compile(rf"\s{{{_MAX_RUN_CHARS + 1},}}|\S{{{_MAX_RUN_CHARS + 1},}}")

AllowedSpecial = Literal["all"] | frozenset[str] | set[str]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable character map; token strings use it so they round-trip bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse `tiktoken.model` (`base64(bytes) rank` per line) into mergeable ranks."""
    if not path.is_file():
        raise FileNotFoundError(f"Kimi-VL tokenizer vocabulary not found: {path}")
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'base64 rank', got {line[:80]!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be exactly 0..{len(ranks) - 1}, once each")
    return ranks


def _split_long_runs(text: str) -> Iterator[str]:
    """Cut text into blocks of at most _MAX_ENCODE_CHARS and cut whitespace or non-whitespace
    runs longer than _MAX_RUN_CHARS (the upstream tokenizer's policy); other text is untouched."""
    for start in range(0, len(text), _MAX_ENCODE_CHARS):
        block = text[start : start + _MAX_ENCODE_CHARS]
        pos = 0
        for run in _LONG_RUN.finditer(block):
            for cut in range(run.start() + _MAX_RUN_CHARS, run.end(), _MAX_RUN_CHARS):
                yield block[pos:cut]
                pos = cut
        yield block[pos:]


class TikTokenTokenizer(PreTrainedTokenizer):
    """Slow HF tokenizer equivalent to Moonshot's remote `tokenization_moonshot.TikTokenTokenizer`.

    Regular ids are the ranks of `tiktoken.model`; ids num_base..num_base+255 are special tokens
    named from `added_tokens_decoder` (unnamed ones `<|reserved_token_{id}|>`). Token strings are
    GPT-2 byte-level strings, so `convert_tokens_to_string` reassembles exact bytes."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        bos_token: str | AddedToken = "[BOS]",
        eos_token: str | AddedToken = "[EOS]",
        unk_token: str | AddedToken = "[UNK]",
        pad_token: str | AddedToken = "[PAD]",
        added_tokens_decoder: dict[int, AddedToken] | None = None,
        chat_template: str | dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if vocab_file is None:
            base = kwargs.get("name_or_path") or "."
            vocab_path = Path(base) / VOCAB_FILE
        else:
            vocab_path = Path(vocab_file)
        ranks = read_tiktoken_ranks(vocab_path)
        self.vocab_file = str(vocab_path)
        self.num_base_tokens = len(ranks)
        special_range = range(
            self.num_base_tokens, self.num_base_tokens + NUM_RESERVED_SPECIAL_TOKENS
        )

        named = {int(i): str(tok) for i, tok in (added_tokens_decoder or {}).items()}
        stray = sorted(i for i in named if i not in special_range)
        if stray:
            raise ValueError(
                f"added_tokens_decoder ids {stray[:5]} lie outside the special range "
                f"{special_range.start}..{special_range.stop - 1} of {vocab_path}"
            )
        self.special_tokens: dict[str, int] = {
            named.get(i, f"<|reserved_token_{i}|>"): i for i in special_range
        }
        self.model = tiktoken.Encoding(
            name=vocab_path.parent.name or "kimi_vl",
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )

        byte_map = bytes_to_unicode()
        self._byte_decoder = {ch: b for b, ch in byte_map.items()}
        self._id_to_token: list[str] = [""] * self.num_base_tokens
        for token_bytes, rank in ranks.items():
            self._id_to_token[rank] = "".join(byte_map[b] for b in token_bytes)
        self._token_to_id = {tok: i for i, tok in enumerate(self._id_to_token)}

        # Every id of the special range is special, so skip_special_tokens drops reserved ids too.
        self._added_tokens_decoder = {
            i: AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True)
            for content, i in self.special_tokens.items()
        }
        named_extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            listed = kwargs.pop(key, None)
            if isinstance(listed, (list, tuple)):  # a v5 dict of named extras carries no ids
                named_extra += [str(t) for t in listed if str(t) not in named_extra]
        reserved = [t for t in self.special_tokens if t not in named_extra]
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
        if str(eos_token) == "[EOS]" and TURN_END in self.special_tokens:
            # Every turn ends with <|im_end|>, but the checkpoints declare only [EOS]; vLLM
            # stops on the tokenizer's EOS plus generation_config's eos ids ([EOS]), so
            # reporting <|im_end|> here makes stock vLLM stop on both (llama.cpp patched
            # Kimi-VL's EOS the same way; docs/model.md#tokenizer).
            eos_token = TURN_END
        kwargs.setdefault("special_tokens_pattern", "none")  # no BOS/EOS added on encode
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            extra_special_tokens=named_extra + reserved,
            chat_template=chat_template,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        # transformers rewrites any OSError raised in __init__ into a generic message, so check
        # local checkpoints up front to name the missing file.
        local = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if local.is_dir() and not (local / VOCAB_FILE).is_file():
            raise FileNotFoundError(f"Kimi-VL tokenizer vocabulary not found: {local / VOCAB_FILE}")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """All ids the model can see: regular tokens plus the 256 special ids."""
        return self.num_base_tokens + NUM_RESERVED_SPECIAL_TOKENS

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._token_to_id)
        vocab.update(self.special_tokens)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        found = self._token_to_id.get(token)
        if found is not None:
            return found
        return self.special_tokens.get(token, self.special_tokens.get(str(self.unk_token), 0))

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < self.num_base_tokens:
            return self._id_to_token[index]
        return ""  # out-of-vocab ids (e.g. from dummy weights) decode to nothing

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out = bytearray()
        decoder = self._byte_decoder
        for token in tokens:
            if token in self._added_tokens_encoder:
                out += token.encode("utf-8")
            else:
                out += bytes(decoder[ch] for ch in token)
        return out.decode("utf-8", errors="replace")

    # ---- encoding ---------------------------------------------------------------------------
    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [self._id_to_token[i] for i in self._encode_ordinary(text)]

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _split_long_runs(text):
            ids.extend(self.model.encode_ordinary(piece))
        return ids

    def encode_text(self, text: str, *, allowed_special: AllowedSpecial = frozenset()) -> list[int]:
        """tiktoken-style encoding: special-token text becomes a special id only if allowed
        ("all" or a set of token strings); otherwise it is encoded as ordinary text."""
        if allowed_special == "all":
            return self._encode_with_added_tokens(text)
        if not allowed_special:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for piece in _split_long_runs(text):
            ids.extend(
                self.model.encode(
                    piece, allowed_special=set(allowed_special), disallowed_special=()
                )
            )
        return ids

    def _encode_with_added_tokens(self, text: str) -> list[int]:
        # The trie also knows tokens added at runtime (e.g. vLLM's prompt-embeds placeholder).
        ids: list[int] = []
        for chunk in self.tokens_trie.split(text):
            added = self._added_tokens_encoder.get(chunk)
            if added is not None:
                ids.append(added)
            elif chunk:
                ids.extend(self._encode_ordinary(chunk))
        return ids

    def _encode_plus(  # type: ignore[override]  # forwards the full keyword set via **kwargs
        self, text: Any, text_pair: Any = None, **kwargs: Any
    ) -> Any:
        """Fast path for plain strings: ids straight from tiktoken, no token-string round trip.
        Special-token text is recognised (as HF and the upstream tokenizer do) unless
        `split_special_tokens=True`; rendered chat prompts rely on that."""
        split = kwargs.pop("split_special_tokens", self.split_special_tokens)
        plain = isinstance(text, str) and isinstance(text_pair, (str, type(None)))
        if plain and not kwargs.get("is_split_into_words", False):
            allowed: AllowedSpecial = frozenset() if split else "all"
            ids = self.encode_text(text, allowed_special=allowed)
            pair = (
                None if text_pair is None else self.encode_text(text_pair, allowed_special=allowed)
            )
            if ids and (pair is None or pair):  # the base class reads [] as an empty batch
                return super()._encode_plus(ids, pair, **kwargs)
        return super()._encode_plus(text, text_pair, split_special_tokens=split, **kwargs)

    def save_vocabulary(
        self, save_directory: str, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        target = (
            Path(save_directory) / f"{filename_prefix + '-' if filename_prefix else ''}{VOCAB_FILE}"
        )
        lines = (
            f"{base64.b64encode(bytes(self._byte_decoder[c] for c in tok)).decode()} {i}\n"
            for i, tok in enumerate(self._id_to_token)
        )
        target.write_text("".join(lines), encoding="ascii")
        return (str(target),)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids generation must stop on: `<|im_end|>` (ends every turn) and `[EOS]`."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in ("<|im_end|>", "[EOS]") if t in vocab]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in ids:
        ids.append(eos)
    if not ids:
        raise ValueError("tokenizer has neither <|im_end|> nor [EOS]")
    return ids


class KimiVLTokenizer:
    """vLLM `tokenizer_mode="kimi_vl"` entry: our tokenizer behind vLLM's cached HF wrapper."""

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        *args: Any,
        trust_remote_code: bool = False,
        revision: str | None = None,
        download_dir: str | None = None,
        **kwargs: Any,
    ) -> Any:
        from vllm.tokenizers.hf import get_cached_tokenizer

        kwargs.pop("config", None)
        tokenizer = TikTokenTokenizer.from_pretrained(
            path_or_repo_id, *args, revision=revision, cache_dir=download_dir, **kwargs
        )
        return get_cached_tokenizer(tokenizer)


@lru_cache(maxsize=1)
def _name_key_config() -> type:
    """A config class no checkpoint uses, so registering under it only records our class by
    its name "TikTokenTokenizer". Mapping KimiVLConfig itself would make transformers prefer
    the checkpoint's auto_map (absent remote code) whenever trust_remote_code=True; a name-only
    registration counts as explicit local code and wins in every case."""
    from transformers import PreTrainedConfig

    return type("KimiVLTokenizerNameKey", (PreTrainedConfig,), {"model_type": "kimi_vl_tokenizer"})


_MODE = "kimi_vl"
_VLLM_ENTRY = ("server.model.tokenizer", "KimiVLTokenizer")
_VLLM_RENDERER = ("vllm.renderers.hf", "HfRenderer")
_registered = False


def register_tokenizer() -> None:
    """Make `AutoTokenizer` (trust_remote_code=False) and vLLM resolve Kimi-VL checkpoints to
    TikTokenTokenizer. Idempotent; vLLM is imported only here, not at module import."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry
    from vllm.transformers_utils.configs.kimi_vl import KimiVLConfig

    if _MODE not in CONFIG_MAPPING:
        AutoConfig.register(_MODE, KimiVLConfig)
    AutoTokenizer.register(_name_key_config(), tokenizer_class=TikTokenTokenizer, exist_ok=True)

    if TokenizerRegistry.tokenizers.get(_MODE) != _VLLM_ENTRY:
        TokenizerRegistry.register(_MODE, *_VLLM_ENTRY)
    if _MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(_MODE, *_VLLM_RENDERER)
    _registered = True
