"""Every Python example in README.md runs verbatim (8 simulated CPU devices) and prints what the
README says it prints (`# prints: ...` comments, in order)."""
import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def expected_prints(code: str) -> list[str]:
    return [m.strip() for m in re.findall(r"# prints: (.*)$", code, re.M)]


def test_readme_has_examples_that_say_what_they_print():
    assert len(BLOCKS) >= 4
    assert all(expected_prints(b) for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_verbatim(index):
    code = BLOCKS[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    lines = [ln.strip() for ln in out.getvalue().splitlines()]
    pos = 0
    for want in expected_prints(code):
        hits = [i for i in range(pos, len(lines)) if lines[i] == want]
        assert hits, f"block {index} should print {want!r}; printed:\n{out.getvalue()[-2000:]}"
        pos = hits[0] + 1
