"""Per-token views of the credit: rich terminal text and a self-contained HTML heat map."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftcli.score.pairs import ScoredPair


def _heat(x: float) -> tuple[int, int, int]:
    """0..1 -> a white-to-orange-to-red ramp (readable on light and dark terminals)."""
    x = max(0.0, min(1.0, x))
    if x < 0.5:
        t = x / 0.5
        return (255, int(255 - 90 * t), int(255 - 200 * t))
    t = (x - 0.5) / 0.5
    return (int(255 - 55 * t), int(165 - 140 * t), int(55 - 30 * t))


def _norm(item: ScoredPair) -> list[float]:
    resp = [t for t, s in zip(item.tau, item.segment, strict=True) if s == "response"]
    top = max(resp) if resp and max(resp) > 0 else 1.0
    return [t / top for t in item.tau]


def _show(tok: str) -> str:
    return tok.replace("\n", "⏎\n")


def render_terminal(console: Console, item: ScoredPair, index: int | None = None) -> None:
    """Question and response token by token, coloured by throughput tau; selected tokens are
    bold and underlined, answer tokens framed with ⟦ ⟧; then the strongest edges and counts."""
    norm = _norm(item)
    head = f"[bold]#{index}[/bold] " if index is not None else ""
    console.rule(f"{head}FlowTracer credit")
    q = Text("question: ", style="bold")
    for i, (tok, seg) in enumerate(zip(item.tokens, item.segment, strict=True)):
        if seg == "prompt" and item.question[i]:
            r, g, b = _heat(norm[i])
            q.append(_show(tok), style=f"black on rgb({r},{g},{b})")
    console.print(q)
    t = Text("response: ", style="bold")
    for i, (tok, seg) in enumerate(zip(item.tokens, item.segment, strict=True)):
        if seg != "response":
            continue
        r, g, b = _heat(norm[i])
        style = f"black on rgb({r},{g},{b})"
        if item.selected[i]:
            style += " bold underline"
        if item.answer[i]:
            t.append("⟦", style="bold magenta")
        t.append(_show(tok) if tok else "∅", style=style)
        if item.answer[i]:
            t.append("⟧", style="bold magenta")
    console.print(t)
    if item.edges:
        table = Table(title="strongest backbone edges  f(i)·W'[i,k]", show_lines=False)
        table.add_column("from", justify="right")
        table.add_column("token")
        table.add_column("to", justify="right")
        table.add_column("token")
        table.add_column("flow", justify="right")
        for e in item.edges:
            i, k = e["from"], e["to"]
            table.add_row(str(i), repr(item.tokens[i]), str(k), repr(item.tokens[k]), f"{e['flow']:.4f}")
        console.print(table)
    n_resp = item.segment.count("response")
    console.print(
        f"response tokens {n_resp} · selected {sum(item.selected)} (k_sel {item.k_sel}, weight "
        f"{max(item.weights):g}) · question tokens {sum(item.question)} · answer tokens "
        f"{sum(item.answer)} · absorbed flow {item.absorbed:.4f}"
    )
    if item.answer_text is not None:
        console.print(f"answer: [bold]{item.answer_text}[/bold]")
    if item.fallback:
        reason = "no answer found in the response" if not any(item.answer) else "no question tokens"
        console.print(
            f"[yellow]{reason}: uniform fallback, every token keeps weight 1.0 (plain GRPO)[/yellow]"
        )


_HTML_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
.seq{{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ddd;padding:.8rem;border-radius:6px}}
.t{{border-radius:3px;padding:1px 0}}
.sel{{outline:2px solid #b00;font-weight:bold}}
.ans{{box-shadow:inset 0 -3px 0 #7b2cbf}}
.q{{text-decoration:underline dotted}}
.meta{{color:#555;font-size:.9rem}}
table{{border-collapse:collapse;font-size:.85rem}} td,th{{border:1px solid #ddd;padding:2px 6px}}
.legend span{{display:inline-block;width:2.2rem;height:1rem}}
</style></head><body><h1>{title}</h1>
<p class="meta">Colour = throughput τ (normalised per response); <span class="sel">outlined</span> =
selected (top {ratio}), weight γ; <span class="ans">underlined purple</span> = answer span; dotted = question.
Hover a token for h, f, τ.</p>
<div class="legend">{legend}</div>
"""


def render_html(items: Sequence[ScoredPair], title: str = "FlowTracer credit", settings: dict | None = None) -> str:
    """A self-contained HTML page: one per-token heat map per pair (like the paper's Fig. 2)."""
    settings = settings or {}
    legend = "".join(
        f'<span style="background:rgb{_heat(i / 9)}"></span>' for i in range(10)
    ) + " low → high τ"
    parts = [
        _HTML_HEAD.format(
            title=html.escape(title), ratio=html.escape(str(settings.get("ratio", 0.4))), legend=legend
        )
    ]
    if settings:
        parts.append(f'<p class="meta">{html.escape(json.dumps(settings))}</p>')
    for n, item in enumerate(items):
        norm = _norm(item)
        parts.append(f"<h2>#{n}</h2>")
        for seg_name in ("prompt", "response"):
            spans = []
            for i, (tok, seg) in enumerate(zip(item.tokens, item.segment, strict=True)):
                if seg != seg_name or (seg == "prompt" and not item.question[i]):
                    continue
                cls = ["t"]
                if item.selected[i]:
                    cls.append("sel")
                if item.answer[i]:
                    cls.append("ans")
                if item.question[i]:
                    cls.append("q")
                tip = f"pos {i}  h={item.h[i]:.4g}  f={item.f[i]:.4g}  tau={item.tau[i]:.4g}"
                spans.append(
                    f'<span class="{" ".join(cls)}" style="background:rgb{_heat(norm[i])}" '
                    f'title="{tip}">{html.escape(tok)}</span>'
                )
            label = "question" if seg_name == "prompt" else "response"
            parts.append(f"<h3>{label}</h3><div class='seq'>{''.join(spans)}</div>")
        fb = " — <b>uniform fallback</b> (no answer span)" if item.fallback else ""
        parts.append(
            f"<p class='meta'>selected {sum(item.selected)} of {item.segment.count('response')} "
            f"response tokens · absorbed {item.absorbed:.4f} · answer "
            f"{html.escape(repr(item.answer_text))}{fb}</p>"
        )
        if item.edges:
            rows = "".join(
                f"<tr><td>{e['from']}</td><td>{html.escape(repr(item.tokens[e['from']]))}</td>"
                f"<td>{e['to']}</td><td>{html.escape(repr(item.tokens[e['to']]))}</td>"
                f"<td>{e['flow']:.4f}</td></tr>"
                for e in item.edges
            )
            parts.append(
                "<table><tr><th>from</th><th>token</th><th>to</th><th>token</th><th>flow</th></tr>"
                f"{rows}</table>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
