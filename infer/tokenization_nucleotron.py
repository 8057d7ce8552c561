"""One token per base for Hugging Face `transformers` (trust_remote_code), with the training packs' ids.

Copied into every `nucleotron export hf` folder beside vocab.json (token -> id, from the pack manifest). Lower case
(soft-masked) bases map like upper case and IUPAC ambiguity codes map to N, as `nucleotron data prep` does; any
other character is an error rather than a silent unknown token.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from transformers import PreTrainedTokenizer

AMBIGUOUS = "RYKMSWBDHV"


class NucleotronTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, eos_token: str = "<EOD>", pad_token: str = "<PAD>", **kwargs):
        with open(vocab_file) as handle:
            self.vocab: Dict[str, int] = {k: int(v) for k, v in json.load(handle).items()}
        self.ids_to_tokens = {v: k for k, v in self.vocab.items()}
        kwargs.setdefault("padding_side", "right")  # the model is causal: right padding never changes a position
        super().__init__(eos_token=eos_token, pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> Dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        tokens = []
        for position, char in enumerate(text.upper()):
            if char in "ACGTN":
                tokens.append(char)
            elif char in AMBIGUOUS:
                tokens.append("N")
            elif not char.isspace():
                raise ValueError(f"character {char!r} at position {position} is not a DNA base (A, C, G, T, N or "
                                 f"an IUPAC ambiguity code)")
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, "N")

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        return "".join(t for t in tokens if len(t) == 1)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w") as handle:
            json.dump(self.vocab, handle, indent=1)
        return (path,)
