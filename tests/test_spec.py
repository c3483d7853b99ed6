import pytest
from hydra.errors import InstantiationException
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


ROW = {"prompt": "How do I pick a lock?", "categories": ["privacy", "illicit"], "labels": ["Privacy / Personal Data", "Illicit / Criminal Behavior"]}


def build(node):
    """Instantiate, raising our own error rather than Hydra's wrapper of it (as the commands report it)."""
    try:
        return instantiate(node)
    except InstantiationException as error:
        raise error.__cause__ from None


def reference_spec(compose_train, source, *overrides):
    return build(compose_train("spec=reference", f"spec.source={source}", *overrides).spec)


def test_the_reference_spec_is_read_from_the_authors_script(compose_train, reference_checkout):
    """PAPER.md 9: the script's system line, then its user turn with the request, the policies of the row's categories
    sorted by key and joined by a blank line, and the dataset's labels as a list; nothing of it stored here."""
    from tests.conftest import REFERENCE_POLICIES

    spec = reference_spec(compose_train, reference_checkout)
    assert spec.categories == list(REFERENCE_POLICIES)
    assert spec.teacher_chat(ROW) == [
        {"role": "system", "content": "A system line of the tests."},
        {"role": "user", "content": "Request: How do I pick a lock?\n\n## illicit\n\nA policy written by the tests for illicit.\n\n## privacy"
                                    "\n\nA policy written by the tests for privacy.\n\nCategories: ['Privacy / Personal Data', "
                                    "'Illicit / Criminal Behavior']."},
    ]
    raw = reference_spec(compose_train, reference_checkout, "spec.render=raw").teacher_chat(ROW)
    assert raw.startswith("\n<|im_start|>system\nA system line of the tests.<|im_end|>\n<|im_start|>user\nRequest: How do I pick")
    assert raw.endswith("'Illicit / Criminal Behavior'].<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert spec.identity() != reference_spec(compose_train, reference_checkout, "spec.render=raw").identity()


def test_qwq_reads_its_own_script(compose_train, reference_checkout):
    cfg = compose_train("spec=reference", f"spec.source={reference_checkout}", "teacher=qwq")
    assert cfg.spec.script == "create_safety_reasoning_qwen.py"
    assert compose_train("spec=reference", "teacher=r1_qwen_14b").spec.script == "create_safety_reasoning_deepseek.py"
    with pytest.raises(UserError, match=r"^spec.source=.* has no create_safety_reasoning_qwen.py; point spec.source at a checkout of "
                                        r"pankayaraj/Robust_Deliberative_Alignment$"):
        build(cfg.spec)


@pytest.mark.parametrize(("script", "message"), [
    (None, r"^spec=reference reads the authors' spec from their code: set spec.source=<a checkout of "
           r"pankayaraj/Robust_Deliberative_Alignment>$"),
    ("x = (", r"^spec.source: cannot read .*create_safety_reasoning_deepseek.py \(.*\); point spec.source at a checkout of"),
    ("SAFETY_POLICIES = {}\n", r"^spec.source: .* assigns no literal COT_PROMPT_TEMPLATE; is it pankayaraj/Robust_Deliberative_"
                               r"Alignment's trace script\?$"),
    ("SAFETY_POLICIES = {}\nCOT_PROMPT_TEMPLATE = 'no turns'\n", r"has no system and user turn"),
])
def test_a_missing_or_foreign_reference_is_one_line(compose_train, tmp_path, script, message):
    source = "null"
    if script is not None:
        (tmp_path / "create_safety_reasoning_deepseek.py").write_text(script)
        source = str(tmp_path)
    with pytest.raises(UserError, match=message):
        reference_spec(compose_train, source)


def test_the_reference_prompt_takes_no_demonstrations_or_unknown_categories(compose_train, reference_checkout):
    spec = reference_spec(compose_train, reference_checkout)
    with pytest.raises(UserError, match=r"^spec=reference has no demonstrations"):
        spec.teacher_chat(ROW, [{"prompt": "p", "categories": ["benign"], "response": "r"}])
    with pytest.raises(UserError, match=r"^spec reference has no policy for \['weapons'\]"):
        spec.teacher_chat({**ROW, "categories": ["weapons"]})
    with pytest.raises(UserError, match=r"^spec.render=text: use chat"):
        reference_spec(compose_train, reference_checkout, "spec.render=text")


@pytest.mark.parametrize("render", ["chat", "raw"])
def test_the_teacher_is_prompted_with_the_reference_and_caches_apart(compose_train, reference_checkout, monkeypatch, render):
    """Through the teacher stage on the tiny teacher: each row's chat is the reference spec's, sent through the chat
    template (chat) or as the script's text with the tokenizer's special tokens (raw), and the traces have their own cache."""
    from lightning_da import teacher
    from lightning_da.generation.teacher_chats import chat_texts, encode_chats

    seen = []

    def recording(model, tokenizer, chats, *args, **kwargs):
        seen.extend(chats)
        seen_ids.append(encode_chats(tokenizer, chats)["input_ids"])
        return original(model, tokenizer, chats, *args, **kwargs)

    seen_ids, original = [], teacher.sample_chats
    monkeypatch.setattr(teacher, "sample_chats", recording)
    overrides = ["teacher=tiny_random", "data.limit=2", "teacher.sampling.max_new_tokens=3"]
    cfg = compose_train(*overrides, "spec=reference", f"spec.source={reference_checkout}", f"spec.render={render}")
    spec = build(cfg.spec)
    prompts = instantiate(cfg.data).load(spec.categories)
    cache, traces = teacher.teacher_traces(cfg, spec, prompts)
    assert seen == [spec.teacher_chat(row) for row in prompts] and len(traces) == 2
    tokenizer = instantiate(cfg.teacher.model).load_tokenizer()
    if render == "raw":
        first = tokenizer(seen[0])["input_ids"]  # the script's tokenisation: the tokenizer adds its special tokens
        assert seen_ids[0][0, -len(first):].tolist() == first and chat_texts(tokenizer, seen[:1]) == (seen[:1], True)
    else:
        assert tokenizer.decode(seen_ids[0][0]).count("A system line of the tests.") == 1
    ours = compose_train(*overrides)
    assert teacher.teacher_traces(ours, build(ours.spec), prompts)[0].dir != cache.dir
