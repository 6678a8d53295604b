"""CrossThinkQA (Nemotron-CrossThink QA, in ROLL's RLVR format): single-choice questions.

The shared file is a byte prefix of ROLL's `general_CrossThink-QA_deal.jsonl`: 811 complete
records and a cut-off last line (skipped with one warning). Each prompt is ROLL's instruction
line, the question and lettered options (`A: ...` or `A. ...`), used verbatim as the user
message. Golds are `"X: text"` / `"X. text"`; in 117 `"X. "` records the letter disagrees with
the option carrying that text, so the gold letter is mapped back by option text.

There is only one file, so `test` (200) and `validation` (100) are carved from it with a fixed
seed and `train` is the rest. The prediction is the option letter that the last `\\boxed{}`
after the last `</think>`, else the text right after the last "answer is", begins with
(ROLL's `crossthinkqa_reward_fn`, stricter: one answer is one option letter, so a span naming
several options, `F and A`, or stating something else first, `not F`, has no prediction). Rewards follow ROLL's schemes: `soft` (default: 1 correct
and boxed, 0.5 correct unboxed, -0.5 boxed but wrong, -1 otherwise), `loose`, `strict`, or
`binary` (1 / 0).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ftcli.tasks.base import (
    Messages,
    Sample,
    Span,
    last_boxed_span,
    last_match,
    select_split,
)
from ftcli.tasks.loading import (
    Records,
    check_field,
    data_file,
    read_records,
    resolve_root,
    row_error,
)

from ftcli.spans import scan_start

log = logging.getLogger("ftcli.tasks")

HUB_ID = "nvidia/Nemotron-CrossThink"  # Data/Nemotron-CrossThink-QA.jsonl; ROLL's processed copy
FILE = "crossthinkqa/general_CrossThink-QA_deal.jsonl"
MANIFEST = {"train": 811}  # complete records (plus one cut-off line)
ANSWER_WINDOW = 100  # characters searched after the last "answer is"

# reward schemes (ROLL): (correct & boxed, correct & unboxed, wrong & boxed, otherwise)
REWARD_SCHEMES = {
    "soft": (1.0, 0.5, -0.5, -1.0),
    "loose": (1.0, 1.0, -1.0, -1.0),
    "strict": (1.0, -1.0, -1.0, -1.0),
    "binary": (1.0, 1.0, 0.0, 0.0),
}

_OPTION_LINE = re.compile(r"^([A-Z])([:.])[ \t]?", re.MULTILINE)
_LETTER = re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
_GOLD = re.compile(r"[A-Z][:.]")  # a gold label: "F: text" or "A. text"
_CHOICE_LEAD = re.compile(
    r"(?:\s|[:*$(\[]|\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{"
    r"|\b(?:the|final|correct|answer|option|choice|is)\b)*",
    re.IGNORECASE,
)
_CHOICE_CLOSE = re.compile(r"[)\]}*$]*")
_SECOND_OPTION = re.compile(
    r"\s*(?:[,;&/+]|\\text\s*\{\s*(?:and|or)\b|(?:and|or|and/or)\b|(?-i:[(\[]?[A-Z](?![A-Za-z])))",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------
# Parsing the prompt and the gold
# ---------------------------------------------------------------------------------------------
def split_prompt(prompt: str) -> tuple[str, str, list[str]]:
    """(question with options, question stem, option texts A, B, ...) of a ROLL prompt.

    Options are the line-initial markers `A:`/`A.`, `B:`/`B.`, ... in order (same separator);
    an option runs until the next marker; notes after the last option's first paragraph are
    not part of it.
    """
    _, _, body = prompt.partition("\n")
    body = body.strip()
    starts = _option_starts(body)
    if not starts:
        return body, body, []
    options = []
    for k, (_, end) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else len(body)
        text = body[end:stop].strip()
        if k + 1 == len(starts):
            text = _first_paragraph(text)
        options.append(text)
    return body, body[: starts[0][0]].strip(), options


def _option_starts(body: str) -> list[tuple[int, int]]:
    """(marker start, text start) of the options: the first `A` marker followed by B, C, ..."""
    markers = list(_OPTION_LINE.finditer(body))
    for i, first in enumerate(markers):
        if first.group(1) != "A":
            continue
        chain, want, sep = [first], "B", first.group(2)
        for m in markers[i + 1 :]:
            if m.group(1) == want and m.group(2) == sep:
                chain.append(m)
                want = chr(ord(want) + 1)
        if len(chain) >= 2:
            return [(m.start(), m.end()) for m in chain]
    return []


def _first_paragraph(text: str) -> str:
    """Up to the first blank line outside a ``` code block."""
    in_code = False
    lines = []
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            in_code = not in_code
        if not line.strip() and not in_code and lines:
            break
        lines.append(line)
    return "\n".join(lines).strip()


def _norm(text: str) -> str:
    return " ".join(text.split()).rstrip(".").lower()


def gold_letter(ground_truth: str, options: list[str]) -> tuple[str, bool]:
    """(letter, remapped): the option whose text is the gold text; the written letter when
    it already carries that text, or when the text matches no single option."""
    letter, text = ground_truth[:1], _norm(ground_truth[2:])
    matches = [chr(65 + i) for i, opt in enumerate(options) if _norm(opt) == text]
    if not matches:
        matches = [chr(65 + i) for i, opt in enumerate(options) if _norm(opt).startswith(text)]
    if letter in matches or len(matches) != 1:
        return letter, False
    return matches[0], True


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------
def find_choice(response: str) -> tuple[Span | None, bool]:
    """(span of the chosen letter, boxed?) - ROLL's extraction, one option only.

    Where: the last `\\boxed{}` after the last `</think>`, else the text right after the
    last "answer is". What: one standalone capital letter at the start of that text (after
    words like "the answer is", "option", `(`, `**`, `\\text{`), not followed by a second
    option (`F and A`, `F, A`, `F or A`, `F/A`): a span naming several options, or stating
    something else first (`The answer is not F, it is A.`), has no choice. Only the last
    `MAX_SCAN_CHARS` characters are searched.
    """
    start = scan_start(response)
    think_end = response.rfind("</think>", start)
    offset = think_end + len("</think>") if think_end >= 0 else start
    box = last_boxed_span(response[offset:])
    if box is not None:
        return single_choice(response, offset + box[0], offset + box[1]), True
    last = last_match(_ANSWER_IS, response, offset)
    if last is not None:
        end = min(len(response), last.end() + ANSWER_WINDOW)
        return single_choice(response, last.end(), end), False
    return None, False


def single_choice(text: str, start: int, end: int) -> Span | None:
    """Span of the one option letter that `text[start:end]` begins with, else None."""
    lead = _CHOICE_LEAD.match(text, start, end)
    m = _LETTER.match(text, lead.end(), end)
    if m is None:
        return None
    if _SECOND_OPTION.match(text, _CHOICE_CLOSE.match(text, m.end(), end).end(), end):
        return None
    return (m.start(), m.end())


class CrossThinkQATask:
    """CrossThinkQA with seeded `train` / `validation` / `test` splits from the one file.

    Options: `data_root`, `reward_scheme` (`soft` | `loose` | `strict` | `binary`),
    `test_size` (200), `val_size` (100), `split_seed` (0).
    """

    name = "crossthinkqa"

    def __init__(
        self,
        data_root: str | Path | None = None,
        reward_scheme: str = "soft",
        test_size: int = 200,
        val_size: int = 100,
        split_seed: int = 0,
    ):
        if reward_scheme not in REWARD_SCHEMES:
            raise ValueError(
                f"unknown reward_scheme {reward_scheme!r}; known: {', '.join(REWARD_SCHEMES)}"
            )
        self.root = resolve_root(data_root)
        self.reward_scheme = reward_scheme
        self.holdout = {"test": test_size, "validation": val_size}
        self.split_seed = split_seed
        self.splits = ("train", "validation", "test")
        self.files, self.manifest = {"train": FILE}, dict(MANIFEST)

    def load(self, split: str = "test") -> list[Sample]:
        """Samples with `id`, `question` (stem + options), `answer` (letter), `options`."""
        return select_split(self.name, split, {"train": self._read}, self.holdout, self.split_seed)

    def _read(self) -> list[Sample]:
        records = read_records(data_file(self.root, FILE))
        samples = [self._sample(records, i) for i in range(len(records.rows))]
        remapped = sum(s.pop("_remapped") for s in samples)
        log.debug("%s: %d gold letters mapped by option text", FILE, remapped)
        return samples

    def _sample(self, records: Records, i: int) -> Sample:
        """One checked row: `id`, `prompt` with at least two lettered options, and
        `ground_truth` as `"X: text"` / `"X. text"` naming one of them (else DataError
        `FILE:LINE: field ...`)."""
        raw_id = check_field(records, i, "id", "id")
        prompt = check_field(records, i, "prompt", "text")
        truth = check_field(records, i, "ground_truth", "text")
        question, stem, options = split_prompt(prompt)
        if len(options) < 2:
            raise row_error(records, i, "prompt", "no lettered options (A: ..., B: ...)")
        if not _GOLD.match(truth):
            raise row_error(records, i, "ground_truth", f"{truth[:40]!r} is not 'X: text'")
        letter, remapped = gold_letter(truth, options)
        if not "A" <= letter < chr(ord("A") + len(options)):
            raise row_error(
                records, i, "ground_truth", f"letter {letter} is not one of {len(options)} options"
            )
        return {
            "id": str(raw_id),
            "question": question,
            "answer": letter,
            "options": options,
            "stem": stem,
            "prompt_text": prompt,
            "gold_text": truth,
            "_remapped": remapped,
        }

    def prompt(self, sample: Sample) -> Messages:
        """ROLL's prompt, verbatim, as the user message."""
        return [{"role": "user", "content": sample["prompt_text"]}]

    def assistant_prefix(self, sample: Sample) -> str:
        """No pre-filled assistant text."""
        return ""

    def answer_span(self, response: str) -> Span | None:
        """The chosen option letter (one character)."""
        return find_choice(response)[0]

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """`{extracted, boxed, correct, reward}`."""
        span, boxed = find_choice(response)
        extracted = response[span[0] : span[1]] if span else None
        correct = extracted is not None and extracted == sample["answer"]
        r_box, r_plain, r_wrong_box, r_else = REWARD_SCHEMES[self.reward_scheme]
        if correct:
            reward = r_box if boxed else r_plain
        else:
            reward = r_wrong_box if boxed else r_else
        return {"extracted": extracted, "boxed": boxed, "correct": correct, "reward": reward}

    def verify(self, response: str, sample: Sample) -> bool:
        """Is the chosen letter the gold letter?"""
        return self.grade(response, sample)["correct"]

    def reward(self, response: str, sample: Sample) -> float:
        """ROLL letter-match reward under `reward_scheme`."""
        return self.grade(response, sample)["reward"]
