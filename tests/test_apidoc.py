"""The API reference: generated from the docstrings, committed, complete."""
import inspect
from pathlib import Path

from mubench import hookspecs
from mubench.apidoc import HOOKS, pages

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api"


def test_the_committed_reference_is_what_the_code_generates():
    generated = pages()
    committed = {path.name: path.read_text() for path in DOCS.glob("*.md")}
    assert sorted(committed) == sorted(generated), "rebuild it: mubench docs"
    stale = [name for name in generated if committed[name] != generated[name]]
    assert not stale, f"stale pages (rebuild them with `mubench docs`): {stale}"


def test_every_hook_states_its_arguments_and_return_type_and_every_member_is_documented():
    assert set(HOOKS) == {name for name in dir(hookspecs) if name.startswith("mubench_")} and len(HOOKS) == 7
    for name in HOOKS:
        hook = getattr(hookspecs, name)
        assert inspect.signature(hook, eval_str=False).return_annotation is not inspect.Signature.empty, name
        assert "Returns" in hook.__doc__, name
    for name, text in pages().items():
        assert "(no docstring)" not in text, name
    method = pages()["Method.md"]
    for member in ("### `passes(epoch: int) -> list[Pass]`", "### `loss(batch: Batch, phase: str) -> torch.Tensor`", "### `paired(",
                   "`defaults: ClassVar[dict] = {'epochs': 1"):
        assert member in method, member
