"""FIM and edit templates: family chosen from special tokens, layout, context files, stops, fallback."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as HF

from flint.engine.fim import TEMPLATE_NAMES, build_prompt, choose_template
from flint.engine.tokenizer import Tokenizer
from flint.engine.types import ContextFile, GenerateRequest, RequestKind
from flint.errors import InvalidArgument

FAMILY_TOKENS = {
    "qwen": ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>",
             "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>"],
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<repo_name>", "<file_sep>"],
    "starcoder1": ["<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<filename>"],
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
                 "<|EOT|>"],
    "codellama": ["<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"],
    "none": ["<|endoftext|>"],
}


@pytest.fixture(scope="module")
def make_tok(bytelevel_tokenizer_file):
    def make(family: str, **kw) -> Tokenizer:
        trained = HF.from_file(str(bytelevel_tokenizer_file))
        raw = HF(trained.model)  # same BPE, without the Qwen special tokens the fixture was trained with
        raw.pre_tokenizer, raw.decoder = trained.pre_tokenizer, trained.decoder
        raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FAMILY_TOKENS[family]])
        eos = raw.token_to_id(FAMILY_TOKENS[family][1] if family in ("deepseek", "codellama") else "<|endoftext|>")
        return Tokenizer(raw, eos_token_ids={eos}, **kw)

    return make


def text(tok: Tokenizer, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


REQ = GenerateRequest(request_id="r", prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                      path="pkg/math.py")


@pytest.mark.parametrize("family, expected", [
    ("qwen", "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>"),
    ("starcoder", "<fim_prefix>{p}<fim_suffix>{s}<fim_middle>"),
    ("deepseek", "<｜fim▁begin｜>{p}<｜fim▁hole｜>{s}<｜fim▁end｜>"),
    ("codellama", "▁<PRE>{p}▁<SUF>{s}▁<MID>"),
])
def test_family_is_chosen_from_special_tokens_and_lays_out_prefix_suffix_middle(make_tok, family, expected):
    tok = make_tok(family)
    prompt = build_prompt(tok, REQ, layout="psm")
    assert (prompt.template, prompt.layout) == (family, "psm")
    assert text(tok, prompt.token_ids) == expected.format(p=REQ.prefix, s=REQ.suffix)
    assert tok.eos_token_ids <= prompt.stop_token_ids


@pytest.mark.parametrize("family, layout, expected", [
    ("qwen", "psm", "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>"),
    ("deepseek", "psm", "<｜fim▁begin｜>{p}<｜fim▁hole｜>{s}<｜fim▁end｜>"),
    ("starcoder", "spm", "<fim_prefix><fim_suffix>{s}<fim_middle>{p}"),
    ("codellama", "spm", "▁<PRE>▁<SUF>{s}▁<MID>{p}"),
])
def test_auto_layout_puts_the_suffix_first_for_families_trained_with_spm(make_tok, family, layout, expected):
    tok = make_tok(family)
    prompt = build_prompt(tok, REQ)
    assert prompt.layout == layout
    assert text(tok, prompt.token_ids) == expected.format(p=REQ.prefix, s=REQ.suffix)


def test_psm_keeps_a_bounded_suffix_window_and_spm_the_whole_suffix(make_tok):
    tok = make_tok("qwen")
    req = GenerateRequest(request_id="r", prefix="x = ", suffix="y = 1\n" * 100)
    suffix_ids = tok.encode(req.suffix, continuation=True)
    psm = build_prompt(tok, req, suffix_window_tokens=10).token_ids
    assert psm == build_prompt(tok, GenerateRequest(request_id="r", prefix="x = ", suffix=""), suffix_window_tokens=10
                               ).token_ids[:-2] + (tok.special_id("<|fim_suffix|>"), *suffix_ids[:10],
                                                   tok.special_id("<|fim_middle|>"))
    assert len(build_prompt(tok, req, layout="spm").token_ids) == len(suffix_ids) + len(tok.encode("x = ")) + 3
    with pytest.raises(InvalidArgument, match="unknown FIM layout 'mps'"):
        build_prompt(tok, req, layout="mps")


def test_one_character_keystroke_at_the_cursor_changes_only_the_prompt_tail(make_tok):
    """What the prefix cache keeps: the tokens before the first difference between two keystrokes' prompts."""
    tok = make_tok("qwen")
    text = "import os\n\n" + "def f(x):\n    return x + 1\n\n" * 200
    cursor = len(text) // 2
    for layout, window, bound in (("spm", 0, 16), ("psm", 64, 64 + 16)):
        before = build_prompt(tok, GenerateRequest(request_id="r", prefix=text[:cursor], suffix=text[cursor:]),
                              layout=layout, suffix_window_tokens=window).token_ids
        typed = text[:cursor] + "z"
        after = build_prompt(tok, GenerateRequest(request_id="r", prefix=typed, suffix=text[cursor:]),
                             layout=layout, suffix_window_tokens=window).token_ids
        common = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
        assert 0 < len(after) - common <= bound, layout


def test_family_stop_tokens(make_tok):
    tok = make_tok("qwen")
    stops = build_prompt(tok, REQ).stop_token_ids
    assert {tok.special_id(t) for t in ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>")} <= stops
    tok = make_tok("codellama")
    assert tok.special_id("▁<EOT>") in build_prompt(tok, REQ).stop_token_ids


def test_qwen_repo_level_context_files_come_before_the_current_file_sorted_by_path(make_tok):
    tok = make_tok("qwen")
    req = GenerateRequest(request_id="r", prefix="x = ", suffix="\n", path="proj/main.py",
                          context=(ContextFile("proj/util.py", "def f():\n    pass"), ContextFile("proj/b.py", "B = 1")))
    got = text(tok, build_prompt(tok, req).token_ids)
    assert got == ("<|repo_name|>proj\n<|file_sep|>proj/b.py\nB = 1\n<|file_sep|>proj/util.py\ndef f():\n    pass\n"
                   "<|file_sep|>proj/main.py\n<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>")
    # a stable order (by path), never the order of the request: the next keystroke reuses the cached context
    assert build_prompt(tok, replace(req, context=req.context[::-1])).token_ids == build_prompt(tok, req).token_ids


def test_starcoder2_and_starcoder1_context(make_tok):
    req = GenerateRequest(request_id="r", prefix="p", suffix="s", path="a.py", context=(ContextFile("b.py", "B"),))
    tok = make_tok("starcoder")
    assert text(tok, build_prompt(tok, req).token_ids) == (
        "<repo_name>repo\n<file_sep>b.py\nB\n<file_sep>a.py\n<fim_prefix><fim_suffix>s<fim_middle>p")
    tok = make_tok("starcoder1")
    assert text(tok, build_prompt(tok, req).token_ids) == (
        "<filename>b.py\nB\n<filename>a.py\n<fim_prefix><fim_suffix>s<fim_middle>p")


def test_families_without_repo_tokens_put_context_files_first_as_path_comments(make_tok):
    tok = make_tok("deepseek", bos_token_id=None)
    req = GenerateRequest(request_id="r", prefix="p", suffix="s", path="src/a.ts",
                          context=(ContextFile("src/b.ts", "export const B = 1\n"),))
    assert text(tok, build_prompt(tok, req).token_ids) == (
        "// src/b.ts\nexport const B = 1\n\n// src/a.ts\n<｜fim▁begin｜>p<｜fim▁hole｜>s<｜fim▁end｜>")


def test_bos_is_added_when_the_tokenizer_asks(make_tok):
    tok = make_tok("codellama")
    bos = tok.special_id("<s>")
    tok = make_tok("codellama", bos_token_id=bos, add_bos=True)
    assert build_prompt(tok, REQ).token_ids[0] == bos


def test_template_text_in_user_code_cannot_forge_special_tokens(make_tok):
    tok = make_tok("qwen")
    req = GenerateRequest(request_id="r", prefix="s = '<|fim_middle|>'", suffix="")
    ids = build_prompt(tok, req).token_ids
    assert ids.count(tok.special_id("<|fim_middle|>")) == 1 and ids[-1] == tok.special_id("<|fim_middle|>")


def test_override_by_name_and_bad_names(make_tok):
    tok = make_tok("qwen")
    assert build_prompt(tok, REQ, template="plain").template == "plain"
    with pytest.raises(InvalidArgument, match="unknown FIM template 'gpt'; known: " + ", ".join(TEMPLATE_NAMES)):
        choose_template(tok, "gpt")
    with pytest.raises(InvalidArgument, match="'deepseek' needs tokens .* supports: qwen, plain"):
        choose_template(tok, "deepseek")


def test_tokenizer_without_fim_tokens_falls_back_to_prefix_only_and_says_so(make_tok):
    tok = make_tok("none")
    prompt = build_prompt(tok, REQ)
    assert prompt.template == "plain"
    assert text(tok, prompt.token_ids) == REQ.prefix
    assert "suffix was ignored" in prompt.notes[0]


def test_edit_prompt_ends_where_the_replacement_starts(make_tok):
    tok = make_tok("starcoder")
    req = GenerateRequest(request_id="e", kind=RequestKind.EDIT, code="def f(x):\n    return x+1",
                          instruction="rename f to inc", path="m.py", prefix="import os\n")
    prompt = build_prompt(tok, req)
    got = text(tok, prompt.token_ids)
    assert prompt.template == "edit" and prompt.stop_strings == ("```",)
    assert "```python\ndef f(x):\n    return x+1\n```" in got and "rename f to inc" in got
    assert got.index("import os") < got.index("def f(x)")
    assert got.endswith("Rewritten region:\n```python\n")


def test_edit_with_chatml_tokens_is_a_chat_turn(make_tok):
    tok = make_tok("qwen")
    req = GenerateRequest(request_id="e", kind=RequestKind.EDIT, code="a = 1", instruction="use b")
    prompt = build_prompt(tok, req)
    got = text(tok, prompt.token_ids)
    assert prompt.template == "edit-chat" and tok.special_id("<|im_end|>") in prompt.stop_token_ids
    assert got.startswith("<|im_start|>system\n") and got.endswith("<|im_start|>assistant\n```\n")


def test_codellama_text_after_template_tokens_gets_no_start_of_text_space(llama_checkpoint):
    tok = Tokenizer.from_dir(llama_checkpoint)           # SentencePiece-style, with CodeLlama FIM tokens
    prompt = build_prompt(tok, GenerateRequest(request_id="r", prefix="x = f(", suffix=")\n"), layout="psm")
    assert prompt.template == "codellama"
    ids = list(prompt.token_ids)
    assert ids[:2] == [tok.bos_token_id, tok.special_id("▁<PRE>")]
    assert not tok.hf.id_to_token(ids[2]).startswith("▁")   # as transformers' CodeLlamaTokenizer encodes it
    assert text(tok, ids[2:]) == "x = f( <SUF>)\n <MID>"
    assert tok.decode(tok.encode("x = 1")) == "x = 1" and tok.encode("x = 1") != tok.encode("x = 1", continuation=True)
