"""A document keystroke's prompt is built from int64 arrays end to end, with the same ids as from tuples.

At 128K tokens, turning the prefix and suffix into Python ints (split's lists, tuples, then np.asarray in the
engine) cost ~5 ms of CPU per keystroke; the arrays from `IncrementalTokenizer.split_ids` now go straight
into the prompt (`Prompt.ids`) and the engine's request.
"""

from dataclasses import replace

import numpy as np
import pytest

from flint.engine.fim import build_prompt
from flint.engine.incremental import IncrementalTokenizer
from flint.engine.tokenizer import Tokenizer
from flint.engine.types import GenerateRequest


@pytest.mark.parametrize("layout", ["spm", "psm"])
def test_prompt_from_split_arrays_equals_prompt_from_tuples(demo_checkpoint, layout):
    tok = Tokenizer.from_dir(demo_checkpoint)
    text = "import os\n\ndef main(argv):\n    return len(argv)  # done\n\nclass A:\n    pass\n" * 20
    inc = IncrementalTokenizer(tok)
    doc = inc.full(text)
    cursor = len(text) // 2
    prefix, suffix = inc.split_ids(doc, cursor)
    assert isinstance(prefix, np.ndarray) and prefix.dtype == np.int64
    assert (prefix.tolist(), suffix.tolist()) == inc.split(doc, cursor)
    req = GenerateRequest(request_id="r", path="a.py")
    from_arrays = build_prompt(tok, replace(req, prefix_ids=prefix, suffix_ids=suffix), layout=layout)
    from_tuples = build_prompt(tok, replace(req, prefix_ids=tuple(prefix.tolist()),
                                            suffix_ids=tuple(suffix.tolist())), layout=layout)
    assert isinstance(from_arrays.ids, np.ndarray) and from_arrays.ids.dtype == np.int64
    assert from_arrays.token_ids == from_tuples.token_ids
    assert from_arrays.token_ids == build_prompt(tok, replace(req, prefix=text[:cursor], suffix=text[cursor:]),
                                                 layout=layout).token_ids
