"""llama.cpp beside flint in `flint bench engine`: same checkpoint, same thread count, same decode loop shape.

Needs `llama-cpp-python` (optional; README says how to build it). The command converts the
benchmark checkpoint to a float32 GGUF itself (`flint.bench.gguf`) and makes q8_0 and q4_0 files
from it with llama.cpp's own quantizer (which keeps the token embedding, here also the tied output
matrix, in q6_K for q4_0, as llama.cpp does). Decode is timed like flint's: evaluate the prompt
once, then greedy sample + evaluate one token per step for N tokens, and divide N by the loop time.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

PRECISIONS = ("f32", "q8_0", "q4_0")


def available() -> str | None:
    """None if llama_cpp imports, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - missing, or a build that does not load
        return f"llama-cpp-python is not importable ({type(exc).__name__}: {exc}); see README to install it"
    return None


def make_ggufs(checkpoint: Path, out_dir: Path) -> dict[str, Path]:
    """f32 GGUF converted by flint, q8_0 and q4_0 quantized from it by llama.cpp; reused when present."""
    import llama_cpp

    from flint.bench.gguf import write_llama_gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {p: out_dir / f"{checkpoint.name}-{p}.gguf" for p in PRECISIONS}
    if not files["f32"].is_file():
        write_llama_gguf(checkpoint, files["f32"])
    for precision, ftype in (("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)):
        if files[precision].is_file():
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        rc = llama_cpp.llama_model_quantize(str(files["f32"]).encode(), str(files[precision]).encode(),
                                            ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {precision} failed with code {rc}")
    return files


class LlamaCppDecoder:
    """One GGUF loaded in llama.cpp with `threads` threads; `decode` times greedy decode of N tokens."""

    def __init__(self, file: Path, threads: int, context: int):
        from llama_cpp import Llama

        self.file = file
        self.llm = Llama(model_path=str(file), n_threads=threads, n_threads_batch=threads, n_batch=512,
                         n_ctx=context, verbose=False)

    def decode(self, prompt: list[int], tokens: int) -> tuple[float, list[int]]:
        """(tokens/s, generated ids): prompt evaluated first, then N steps of greedy sample + eval."""
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        out = []
        t = time.perf_counter()
        for _ in range(tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
            out.append(int(token))
        return tokens / (time.perf_counter() - t), out

    def close(self) -> None:
        self.llm.close()


def file_bytes(files: dict[str, Path]) -> dict[str, int]:
    return {p: f.stat().st_size for p, f in files.items()}
