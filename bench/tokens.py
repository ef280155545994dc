"""Measure the fallback token estimator against tiktoken, and time both methods.

Usage::

    .venv/bin/python bench/tokens.py            # error table + timing; last line is key=value
    .venv/bin/python bench/tokens.py --fit      # refit the fallback coefficients (prints them)

Why a bench and not only a test: the numbers in docs/tokens.md come from here, so anyone can
reproduce them, and ``--fit`` is how the coefficients in ``sluicegate/cost/fallback.py`` were made.

Errors are absolute percentage errors per sample (|estimate - tiktoken| / tiktoken), reported as
mean and p95 per text kind, plus the signed mean (bias; positive = overestimate). The corpus is
``tests/test_cost_corpus.py`` ("eval" split: fragments never seen by the fit). The ``ext-*`` kinds
are real text found on this machine, never used for fitting: CPython standard-library sources
(code), their docstrings plus the Python licence (English prose), and the CJK test files of
CPython's codec tests; they are skipped when the stdlib test package is not installed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import sys
import sysconfig
import textwrap
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sluicegate.cost import SSEUsageTracker, estimate_request, fallback  # noqa: E402
from sluicegate.cost.encodings import EncodingName, get_encoding  # noqa: E402

ENCODINGS: tuple[EncodingName, ...] = ("o200k_base", "cl100k_base")


def load_corpus_module() -> ModuleType:
    path = ROOT / "tests" / "test_cost_corpus.py"
    spec = importlib.util.spec_from_file_location("sluicegate_cost_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def external_samples(limit: int = 8000) -> list[tuple[str, str]]:
    """Real-world text available offline: stdlib code, stdlib docstrings, CPython CJK test files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    modules = sorted(stdlib.glob("*.py"))[::7][:60]
    for path in modules:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out.append(("ext-code", source[:limit]))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        docs = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        ]
        prose = "\n\n".join(d for d in docs if len(d) > 80)
        if len(prose) > 200:
            out.append(("ext-prose", prose[:limit]))
    licence = stdlib / "LICENSE.txt"
    if licence.exists():
        text = licence.read_text(encoding="utf-8")
        out.extend(("ext-prose", text[i : i + 4000]) for i in range(0, len(text), 4000))
    for path in sorted((stdlib / "test" / "cjkencodings").glob("*-utf8.txt")):
        text = path.read_bytes().decode("utf-8", "replace")
        out.extend(("ext-cjk", text[i : i + 2000]) for i in range(0, len(text), 2000))
    return out


def stats(est: list[int], truth: list[int]) -> tuple[float, float, float]:
    """(mean abs % error, p95 abs % error, signed mean % error)."""
    signed = [(e - t) / t * 100 for e, t in zip(est, truth, strict=True) if t > 0]
    absolute = sorted(abs(x) for x in signed)
    p95 = absolute[min(len(absolute) - 1, math.ceil(0.95 * len(absolute)) - 1)]
    return sum(absolute) / len(absolute), p95, sum(signed) / len(signed)


def report(samples: list[tuple[str, str]], encoding: EncodingName) -> dict[str, float]:
    enc = get_encoding(encoding)
    assert enc is not None, "tiktoken and the shipped encodings are needed for the bench"
    kinds = sorted({k for k, _ in samples})
    print(f"\n{encoding}: |error| % per sample (mean / p95), bias = signed mean")
    print(f"{'kind':<10} {'n':>4}  {'fallback mean/p95/bias':>24}  {'bytes/4 mean/p95/bias':>23}")
    summary: dict[str, float] = {}
    all_est: list[int] = []
    all_truth: list[int] = []
    all_texts: list[str] = []
    for kind in kinds:
        texts = [t for k, t in samples if k == kind]
        truth = [len(enc.encode_ordinary(t)) for t in texts]
        est = [fallback.estimate_tokens(t, encoding) for t in texts]
        naive = [max(1, math.ceil(len(t.encode("utf-8", "surrogatepass")) / 4)) for t in texts]
        m, p, b = stats(est, truth)
        nm, np_, nb = stats(naive, truth)
        print(
            f"{kind:<10} {len(texts):>4}  {m:6.1f} / {p:6.1f} / {b:+6.1f}"
            f"   {nm:6.1f} / {np_:6.1f} / {nb:+6.1f}"
        )
        summary[f"{kind}_p95"] = p
        if not kind.startswith("ext-") and kind != "random":
            all_est += est
            all_truth += truth
            all_texts += texts
    m, p, b = stats(all_est, all_truth)
    print(
        f"{'corpus*':<10} {len(all_est):>4}  {m:6.1f} / {p:6.1f} / {b:+6.1f}   (* all but random)"
    )
    weighted = (sum(all_est) - sum(all_truth)) / sum(all_truth) * 100
    print(f"corpus* token-weighted bias (sum of estimates vs sum of tokens): {weighted:+.1f}%")
    print("corpus* by sample size:")
    for label, low, high in (
        ("< 256 B", 0, 256),
        ("256 B-2 KB", 256, 2048),
        (">= 2 KB", 2048, 1e9),
    ):
        pairs = [
            (e, y)
            for t, e, y in zip(all_texts, all_est, all_truth, strict=True)
            if low <= len(t.encode("utf-8", "surrogatepass")) < high
        ]
        bm, bp, bb = stats([e for e, _ in pairs], [y for _, y in pairs])
        print(f"  {label:<11} {len(pairs):>4}  {bm:6.1f} / {bp:6.1f} / {bb:+6.1f}")
    summary.update(mean=m, p95=p, bias=b, weighted_bias=weighted)
    return summary


def timing(text: str, encoding: EncodingName, repeat: int = 2000) -> tuple[float, float]:
    """Microseconds per call for tiktoken.encode_ordinary and the fallback, same text."""
    enc = get_encoding(encoding)
    assert enc is not None

    def per_call(fn: Callable[[], object]) -> float:
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeat // 5):
                fn()
            best = min(best, (time.perf_counter() - start) / (repeat // 5))
        return best * 1e6

    return (
        per_call(lambda: len(enc.encode_ordinary(text))),
        per_call(lambda: fallback.estimate_tokens(text, encoding)),
    )


def request_timing(body: dict[str, object], *, use_tiktoken: bool) -> float:
    """Microseconds per estimate_request call on a whole chat body."""

    def call() -> object:
        path = "/v1/chat/completions"
        return estimate_request(body, "openai", path, default_output=0, use_tiktoken=use_tiktoken)

    return min(timeit.repeat(call, number=400, repeat=5)) / 400 * 1e6


def sse_timing() -> float:
    """Microseconds per chunk for SSEUsageTracker on a typical chat stream (~180 B chunks)."""
    chunk = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
        b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":" word"},'
        b'"finish_reason":null}],"usage":null}\n\n'
    )

    def stream() -> object:
        tracker = SSEUsageTracker("openai", model="gpt-4o")
        for _ in range(1000):
            tracker.feed(chunk)
        return tracker.usage()

    return min(timeit.repeat(stream, number=5, repeat=5)) / 5 / 1000 * 1e6


def solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are 13x13)."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            factor = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= factor * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


def fit(
    samples: list[tuple[str, str]], encoding: EncodingName, *, tau: float = 0.85
) -> tuple[float, ...]:
    """Bounded expectile regression on relative error, by iteratively reweighted least squares.

    Minimises sum(a_i * ((f_i.w - y_i) / y_i)^2) with a_i = tau where the sample is
    underestimated and 1 - tau where it is overestimated: tau > 0.5 is what makes the estimator
    lean towards overestimation in a principled way (an underestimate costs tau / (1 - tau) = 3x
    more than an overestimate of the same size), rather than by a flat fudge factor.
    Non-ASCII classes get a floor of 0.2 tokens per character, so a script that is rare in the
    corpus cannot come out free just because another feature happens to explain it there.
    """
    enc = get_encoding(encoding)
    assert enc is not None
    kind_weight = {"random": 0.2}  # adversarial text should not drag the common kinds
    rows: list[tuple[list[float], float]] = []
    for kind, text in samples:
        y = len(enc.encode_ordinary(text))
        if y:
            rows.append(([f / y for f in fallback.features(text)], kind_weight.get(kind, 1.0)))
    n = fallback.N_FEATURES
    lower = [0.0] * fallback.N_ASCII_FEATURES + [0.2] * (n - fallback.N_ASCII_FEATURES)
    asym = [0.5] * len(rows)
    coefficients = [0.0] * n
    for _ in range(30):
        coefficients = _bounded_lsq(
            rows, [a * w for a, (_, w) in zip(asym, rows, strict=True)], lower
        )
        asym = [
            tau if sum(c * f for c, f in zip(coefficients, r, strict=True)) < 1 else 1 - tau
            for r, _ in rows
        ]
    return tuple(round(c, 4) for c in coefficients)


def _bounded_lsq(
    rows: list[tuple[list[float], float]], weights: list[float], lower: list[float]
) -> list[float]:
    """Weighted least squares of rows.w ~ 1 with w >= lower (greedy active set)."""
    n = len(lower)
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        target = [1 - sum(r[i] * v for i, v in fixed.items()) for r, _ in rows]
        ata = [
            [sum(w * r[i] * r[j] for (r, _), w in zip(rows, weights, strict=True)) for j in free]
            for i in free
        ]
        for k in range(len(free)):
            ata[k][k] += 1e-6  # ridge: keeps unseen classes solvable
        atb = [
            sum(w * r[i] * t for (r, _), w, t in zip(rows, weights, target, strict=True))
            for i in free
        ]
        sol = solve(ata, atb)
        worst = min(range(len(sol)), key=lambda k: sol[k] - lower[free[k]])
        if sol[worst] >= lower[free[worst]]:
            break
        fixed[free[worst]] = lower[free[worst]]
    result = dict(fixed) | dict(zip(free, sol, strict=True))
    return [result[i] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit and print coefficients")
    args = parser.parse_args()
    corpus_module = load_corpus_module()
    if args.fit:
        train = [(s.kind, s.text) for s in corpus_module.corpus("fit")]
        print("COEFFICIENTS: Final[dict[EncodingName, tuple[float, ...]]] = {")
        for encoding in ENCODINGS:
            values = ", ".join(f"{c:g}" for c in fit(train, encoding))
            body = textwrap.fill(values, 92, initial_indent=" " * 8, subsequent_indent=" " * 8)
            print(f'    "{encoding}": (\n{body},\n    ),')
        print("}")
        return
    samples = [(s.kind, s.text) for s in corpus_module.corpus("eval")]
    samples += external_samples()
    summaries = {e: report(samples, e) for e in ENCODINGS}

    prompt = "\n\n".join(corpus_module.PROSE + corpus_module.CODE)[:4096]
    tk_us, fb_us = timing(prompt, "o200k_base")
    print(f"\ntiming, 4 KB English+code prompt: tiktoken {tk_us:.1f} us, fallback {fb_us:.1f} us")
    chat_body: dict[str, object] = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user" if i % 2 else "assistant", "content": prompt[i * 512 : (i + 1) * 512]}
            for i in range(8)
        ],
        "max_tokens": 256,
    }
    tk_req, fb_req = (request_timing(chat_body, use_tiktoken=flag) for flag in (True, False))
    sse_us = sse_timing()
    print(f"timing, SSEUsageTracker.feed: {sse_us:.1f} us per ~180 B chat chunk")
    print(
        f"timing, estimate_request on a 4 KB / 8-message chat body: "
        f"tiktoken {tk_req:.1f} us, fallback {fb_req:.1f} us"
    )
    o, c = summaries["o200k_base"], summaries["cl100k_base"]
    print(
        f"o200k_mean_abs_pct={o['mean']:.1f} o200k_p95_abs_pct={o['p95']:.1f} "
        f"o200k_token_bias_pct={o['weighted_bias']:+.1f} cl100k_mean_abs_pct={c['mean']:.1f} "
        f"cl100k_p95_abs_pct={c['p95']:.1f} cl100k_token_bias_pct={c['weighted_bias']:+.1f} "
        f"tiktoken_us_per_4kb={tk_us:.1f} fallback_us_per_4kb={fb_us:.1f} "
        f"request_tiktoken_us={tk_req:.1f} request_fallback_us={fb_req:.1f} "
        f"sse_us_per_chunk={sse_us:.1f}"
    )


if __name__ == "__main__":
    main()
