"""The shared prompt builder: placeholders expanded per page, labels on the assistant's tokens only."""
import pytest

from glyph_rt.models.prompt import IGNORE_INDEX, PromptBuilder, tokens_per_image
from glyph_rt.models.tiny import GLM_SPECIAL, GLM_TEMPLATE, QWEN_SPECIAL, QWEN_TEMPLATE, tiny_tokenizer


@pytest.fixture(scope="module", params=["glm4v", "qwen2_5_vl"])
def builder(request):
    if request.param == "glm4v":
        tok = tiny_tokenizer(GLM_SPECIAL, GLM_TEMPLATE)
        return PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>"))
    tok = tiny_tokenizer(QWEN_SPECIAL, QWEN_TEMPLATE)
    return PromptBuilder(tok, tok.convert_tokens_to_ids("<|image_pad|>"), [tok.convert_tokens_to_ids("<|im_end|>")])


def test_tokens_per_image():
    assert tokens_per_image([[1, 60, 42], [1, 4, 6]]) == [630, 6]


def test_prompt_expands_each_page(builder):
    text = builder.prompt([6, 4], "Who?")
    assert text.count(builder.image_token) == 10 and text.index(builder.image_token) < text.index("Who?")
    with pytest.raises(ValueError, match="contains the image token"):
        builder.prompt([6], f"a {builder.image_token}")


def test_labels_cover_exactly_the_response(builder):
    answer = "<think>short</think>The answer is 42."
    enc = builder.encode(builder.messages(2, "What is it?", answer=answer), [4, 8])
    assert len(enc.input_ids) == len(enc.labels)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert builder.tokenizer.decode(trained, skip_special_tokens=True).strip() == answer
    assert builder.stop_ids & set(trained[-2:])  # the model learns to stop
    assert enc.input_ids.count(builder.image_token_id) == 12
    first = enc.labels.index(next(x for x in enc.labels if x != IGNORE_INDEX))
    prompt = builder.tokenizer(builder.prompt([4, 8], "What is it?"), add_special_tokens=False)["input_ids"]
    assert enc.input_ids[:first] == prompt  # the training prompt is the inference prompt


def test_multi_turn_and_errors(builder):
    msgs = builder.messages(1, "Q1", answer="A1") + [{"role": "user", "content": "Q2"},
                                                      {"role": "assistant", "content": "A2"}]
    enc = builder.encode(msgs, [4])
    text = builder.tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX],
                                    skip_special_tokens=True)
    assert "A1" in text and "A2" in text and "Q2" not in text
    with pytest.raises(ValueError, match="no assistant turn"):
        builder.encode(builder.messages(1, "Q"), [4])
    with pytest.raises(ValueError, match="2 pages"):
        builder.encode(builder.messages(1, "Q", answer="A"), [4, 4])
    with pytest.raises(ValueError, match="pages"):
        builder.messages(-1, "Q")


def test_a_middle_turn_learns_the_stop_its_template_writes():
    """GLM's template ends an assistant turn with the next <|user|>, one of GLM-4.1V's stop ids: a middle turn
    learns to stop on it (what inference sees), not on an eos inserted into the conversation."""
    tok = tiny_tokenizer(GLM_SPECIAL, GLM_TEMPLATE)
    user, eos = tok.convert_tokens_to_ids(["<|user|>", "<|endoftext|>"])
    image = tok.convert_tokens_to_ids("<|image|>")
    b = PromptBuilder(tok, image, stop_ids=[eos, user])
    msgs = b.messages(1, "Q1?", answer="A1") + [{"role": "user", "content": "Q2?"},
                                                {"role": "assistant", "content": "A2"}]
    enc = b.encode(msgs, [4])
    prompt = b.ids(b.expand(b.template(msgs[:3], True), [4]))
    assert enc.input_ids[:len(prompt)] == prompt and enc.input_ids.count(eos) == 1 and enc.input_ids[-1] == eos
    trained = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == "A1<|user|>A2<|endoftext|>"
    newline = tiny_tokenizer(GLM_SPECIAL, GLM_TEMPLATE.replace(  # "\n<|user|>" after an assistant turn
        "{% for m in messages %}", "{% for m in messages %}{% if m['role'] == 'user' and not loop.first %}"
                                   "{{ '\\n' }}{% endif %}"))
    b = PromptBuilder(newline, image, stop_ids=[eos, user])  # a template writing "\n<|user|>": learnt with it
    enc = b.encode(msgs, [4])
    trained = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert newline.decode(trained) == "A1\n<|user|>A2<|endoftext|>" and enc.input_ids.count(eos) == 1


def test_escaped_text_is_plain_on_both_tokenizing_paths():
    """escape()d text: no added token matched, special or not, through tiktoken's BPE and through the tokenizer's
    own model alike; plain ids() still match them (inference prompts)."""
    from tokenizers import AddedToken

    tok = tiny_tokenizer(GLM_SPECIAL, GLM_TEMPLATE)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    fast, slow = (PromptBuilder(tok, tok.convert_tokens_to_ids("<|image|>")) for _ in range(2))
    slow._bpe = None  # the tokenizer's own path
    text = fast.escape("the text <think> and <|endoftext|> end")
    plain = fast.ids(text, escaped=True)
    assert fast._bpe is not None and slow.ids(text, escaped=True) == plain
    assert not {tok.convert_tokens_to_ids("<think>"), tok.eos_token_id} & set(plain)
    assert tok.decode(plain) == "the text <think> and <|endoftext|> end"
    assert tok.decode(fast.ids("a \U0010F000 b")) == "a \U0010F000 b"  # not unescaped outside training


def test_encode_pieces_trains_only_marked_text(builder):
    enc = builder.encode_pieces([(builder.image_token * 3, False), ("hello world", True)])
    assert enc.labels[:3] == [IGNORE_INDEX] * 3 and enc.loss_tokens == len(enc.input_ids) - 3


def test_fast_ids_equal_the_tokenizers_and_survive_pickling(builder):
    import pickle

    from glyph_rt.render.textio import sample_text

    msgs = builder.messages(2, "Read it.", answer=sample_text()[:3000] + "\n\n  tail <|endoftext|> é 東京")
    fast = builder.encode(msgs, [4, 8])
    assert builder._bpe is not None  # the tiny tokenizers are tiktoken-shaped
    slow = PromptBuilder(builder.tokenizer, builder.image_token_id, builder.stop_ids)
    slow._bpe = None  # transformers' tokenizer
    assert slow.encode(msgs, [4, 8]) == fast
    again = pickle.loads(pickle.dumps(builder))  # as DataLoader workers receive it
    assert again.encode(msgs, [4, 8]) == fast


def test_a_questions_added_token_text_is_plain_text_as_in_training(builder):
    """A question holding an added token's text ("<|endoftext|>", a turn marker): the inference prompt's ids are
    those of the training sample before its answer (tasks escape the question), the text plain, not the token."""
    marker = "<|user|>" if "<|user|>" in builder._added else "<|im_start|>"
    question = f"What does <|endoftext|> mean, and {marker}?"
    controls = builder.tokenizer.convert_tokens_to_ids(["<|endoftext|>", marker])
    got = builder.prompt_ids([4, 8], question)
    enc = builder.encode(builder.messages(2, builder.escape(question), answer="It ends."), [4, 8])
    first = enc.labels.index(next(x for x in enc.labels if x != IGNORE_INDEX))
    assert got == enc.input_ids[:first]
    plain = builder.prompt_ids([4, 8], "What does it mean?")
    assert [got.count(t) for t in controls] == [plain.count(t) for t in controls]  # only the template's markup
    assert builder.ids(builder.prompt([4, 8], question), escaped=True) == got
    assert builder.tokenizer.decode(got).count("<|endoftext|>") == 1  # the question's text, read back
    with pytest.raises(ValueError, match="contains the image token"):
        builder.prompt_ids([4], f"a {builder.image_token}")


def test_a_lone_surrogate_is_tokenized_as_a_question_mark(builder):
    """"\\ud800" (legal JSON, not UTF-8) is tokenized as '?', as the renderer's token counter counts it; through
    tiktoken's BPE and the tokenizer alike."""
    slow = PromptBuilder(builder.tokenizer, builder.image_token_id, builder.stop_ids)
    slow._bpe = None
    for b in (builder, slow):
        assert b.ids("a\ud800b \udfff") == b.ids("a?b ?") != []
        assert b.ids(b.escape("x\ud800 <|endoftext|>"), escaped=True) == b.ids(b.escape("x? <|endoftext|>"),
                                                                              escaped=True)
    assert builder.prompt_ids([4], "who\ud800?") == builder.prompt_ids([4], "who??")
