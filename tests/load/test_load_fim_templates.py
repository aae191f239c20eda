"""The OpenAI target's FIM prompts: one per model family, parsed into that family's FIM tokens.

vLLM refuses the `suffix` field; vLLM, SGLang and llama.cpp all parse special-token text in a completion
prompt with the model's tokenizer. So a prompt is right when a tokenizer with the family's special tokens
(what those servers load) reads it as prefix token, prefix, suffix token, suffix, middle token.
"""

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as HF

from flint.engine.fim import TEMPLATES
from flint.errors import InvalidArgument
from flint.load.config import TargetConfig
from flint.load.targets.openai_http import fim_family, fim_prompt, request_body
from flint.load.workload import RequestSpec

PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


def spec(**kw) -> RequestSpec:
    return RequestSpec(label="t", prefix=PREFIX, suffix=SUFFIX, max_tokens=8, **kw)


@pytest.mark.parametrize("family", ["qwen", "starcoder", "deepseek"])
def test_family_prompt_text_parses_into_the_family_fim_tokens(bytelevel_tokenizer_file, family):
    t = next(t for t in TEMPLATES if t.name == family)
    trained = HF.from_file(str(bytelevel_tokenizer_file))
    tok = HF(trained.model)
    tok.pre_tokenizer, tok.decoder = trained.pre_tokenizer, trained.decoder
    tok.add_special_tokens([AddedToken(x, special=True, normalized=False) for x in (t.prefix, t.suffix, t.middle)])
    ids = tok.encode(fim_prompt(family, PREFIX, SUFFIX), add_special_tokens=False).ids
    p, s, m = (tok.token_to_id(x) for x in (t.prefix, t.suffix, t.middle))
    assert ids[0] == p and ids[-1] == m and ids.count(s) == 1
    assert tok.decode(ids[1:ids.index(s)]) == PREFIX and tok.decode(ids[ids.index(s) + 1:-1]) == SUFFIX


def test_codellama_prompt_is_the_published_psm_text():
    assert fim_prompt("codellama", "P", "S") == "<PRE> P <SUF>S <MID>"


@pytest.mark.parametrize("model, family", [("Qwen/Qwen2.5-Coder-1.5B", "qwen"), ("bigcode/starcoder2-3b", "starcoder"),
                                           ("deepseek-ai/deepseek-coder-1.3b-base", "deepseek"),
                                           ("codellama/CodeLlama-7b-hf", "codellama"), ("flint-demo", "suffix")])
def test_auto_picks_the_family_from_the_model_name_and_sends_no_suffix_field(model, family):
    assert fim_family("auto", model) == family
    body = request_body(spec(), model, "auto")
    if family == "suffix":
        assert body["suffix"] == SUFFIX and body["prompt"] == PREFIX
    else:
        assert "suffix" not in body and body["prompt"] == fim_prompt(family, PREFIX, SUFFIX)


def test_suffix_template_sends_the_suffix_field_and_bad_names_are_refused():
    assert request_body(spec(), "m", "suffix")["suffix"] == SUFFIX
    with pytest.raises(InvalidArgument, match="fim_template must be one of auto, suffix, qwen"):
        TargetConfig(protocol="openai", address="http://127.0.0.1:1", fim_template="gpt")


@pytest.mark.parametrize("owner, sent_suffix", [("flint", True), ("vllm", False)])
async def test_auto_sends_suffix_to_flint_and_family_tokens_to_other_servers(owner, sent_suffix):
    # A Qwen model name: vLLM/SGLang/llama.cpp get Qwen FIM tokens in the prompt; flint's own door gets
    # `suffix` (it lays out FIM itself and never parses template tokens in user text).
    from aiohttp import web

    from flint.load.targets import RequestState
    from flint.load.targets.openai_http import OpenAITarget
    from flint.load.record import RequestRecord

    bodies = []

    async def models(request):
        return web.json_response({"data": [{"id": "Qwen/Qwen2.5-Coder-1.5B", "owned_by": owner}]})

    async def completions(request):
        bodies.append(await request.json())
        return web.Response(text="data: [DONE]\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    target = OpenAITarget(TargetConfig(protocol="openai", address=f"http://127.0.0.1:{port}"), clock=lambda: 0.0)
    try:
        await target.start()
        session = await target.open_session(0)
        state = RequestState(spec(), RequestRecord(id="r", job=0, step=0, label="t"), lambda: 0.0)
        await session.send(state)
        await state.done.wait()
        await session.close()
    finally:
        await target.close()
        await runner.cleanup()
    assert bodies[0]["model"] == "Qwen/Qwen2.5-Coder-1.5B"
    assert ("suffix" in bodies[0]) == sent_suffix
    assert bodies[0]["prompt"].startswith("<|fim_prefix|>") != sent_suffix
