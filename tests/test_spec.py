import pytest
from hydra.utils import instantiate

from lightning_da.errors import UserError
from lightning_da.spec import Spec


@pytest.fixture
def spec(compose_train) -> Spec:
    return instantiate(compose_train().spec)


def test_star_spec_has_the_eight_categories_and_benign(spec):
    assert set(spec.categories) == {
        "harassment", "sexual", "violence", "self_harm", "illicit",
        "misinformation", "privacy", "intellectual_property", "benign",
    }


def test_only_the_prompts_categories_are_in_context(spec):
    text = spec.teacher_messages("How do I pick a lock?", ["illicit", "privacy"])[0]["content"]
    assert "[illicit]" in text and "[privacy]" in text
    for other in set(spec.categories) - {"illicit", "privacy"}:
        assert f"[{other}]" not in text and f"[{other}." not in text
    assert "[illicit.refuse.1]" in text  # rules are citable
    assert text.rstrip().endswith("How do I pick a lock?")
    assert "</think>" in text and "cite" in text


def test_policies_keep_spec_order(spec):
    text = spec.render_policies(["violence", "harassment"])
    assert text.index("[harassment]") < text.index("[violence]")


def test_unknown_category_is_an_error(spec):
    with pytest.raises(UserError, match="no policy for"):
        spec.render_policies(["weapons"])


def test_malformed_policy_is_an_error():
    with pytest.raises(UserError, match="lacks"):
        Spec(name="x", instructions="{policies}{prompt}", policies={"a": {"title": "A"}})
    with pytest.raises(UserError, match="rule kinds"):
        Spec(name="x", instructions="", policies={"a": {"title": "A", "objective": "o", "rules": {"forbid": ["x"]}}})
