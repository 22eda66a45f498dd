import pytest

from glyph_rt import TextTokenizer, visual_tokens
from glyph_rt.render.tokens import VISION_MODELS, smart_resize_glm4v, smart_resize_qwen2_5_vl

SIZES = [(595, 842), (588, 840), (100, 30), (3000, 2000), (28, 28), (1190, 1684), (400, 5000)]


def test_glyph_page_tokens():
    assert VISION_MODELS["glm4v"].grid(842, 595) == (1, 60, 42)
    assert visual_tokens([(595, 842)], "glm4v") == [630]


@pytest.mark.parametrize("w,h", SIZES)
def test_matches_transformers_smart_resize(w, h):
    glm = pytest.importorskip("transformers.models.glm4v.image_processing_pil_glm4v")
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    assert smart_resize_glm4v(h, w) == glm.smart_resize(2, h, w, 2, 28, 112 * 112, 28 * 28 * 15000)
    assert smart_resize_qwen2_5_vl(h, w) == qwen.smart_resize(h, w, 28, 3136, 12845056)
    for lo, hi in ((3136, 200704), (100352, 9633792)):  # a checkpoint's own limits
        assert VISION_MODELS["glm4v"].with_limits(lo, hi).resize(h, w) == glm.smart_resize(2, h, w, 2, 28, lo, hi)
        assert VISION_MODELS["qwen2_5_vl"].with_limits(lo, hi).resize(h, w) == qwen.smart_resize(h, w, 28, lo, hi)


def test_real_tokenizer_counts():
    tok = TextTokenizer()
    assert tok.count("") == 0
    assert tok.count("Hello world") == 2
    long = "The quick brown fox jumps over the lazy dog.\n" * 30000  # > 1 MiB: chunked
    assert tok.count(long) == 30000 * tok.count("The quick brown fox jumps over the lazy dog.\n")


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        TextTokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer(tmp_path / "path/to/tokenizer.json")


def test_unknown_model():
    with pytest.raises(ValueError, match="glm4v"):
        visual_tokens([(10, 10)], "llava")


def test_lone_surrogates_are_counted_as_replacement_characters(tmp_path, monkeypatch):
    """Layout keeps a lone surrogate (drawn as a box); the text tokens count it as '?', with either engine."""
    import json

    import glyph_rt
    from glyph_rt.render.tokens import get_tokenizer

    tok = get_tokenizer(None)
    assert tok.count("x\ud83d") == tok.count("x?")
    hf = TextTokenizer()
    monkeypatch.setattr(hf, "_fast", None)  # the tokenizers engine, as for a tokenizer.json tiktoken cannot read
    assert hf.count("x\ud83d end") == tok.count("x? end")
    glyph_rt.render(json.loads('"broken emoji \\ud83d end"')).save(tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["complete"] and s["text_tokens"] == tok.count("broken emoji ? end")
    assert s["missing_glyphs"]["chars"] == {"\ud83d": 1} and s["unplaced_chars"] == 0


def test_long_texts_count_in_chunks_as_a_whole():
    """The `tokenizers` path (a tokenizer.json that tiktoken cannot reproduce) counts a long text in ~1 MiB chunks;
    a chunk never ends inside a run of blank lines, which the pre-tokenizer keeps as one piece."""
    tok = TextTokenizer()
    tok._fast = None
    word = "lorem ipsum dolor sit amet "
    head = (word * ((1 << 20) // len(word) + 1))[:(1 << 20) - 2]
    for body in (head + "\n\n\n\n" + word * 10, head + word * 10, (head + "\n") * 2 + " x"):
        assert tok.count(body) == len(tok._tok.encode(body, add_special_tokens=False).ids)


def test_a_metaspace_tokenizer_counts_a_long_text_whole(tmp_path):
    """SentencePiece-style tokenizers (Metaspace prepends ▁ to each text it sees) would count one token more per
    ~1 MiB chunk: they count the text whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    hf.train_from_iterator(["lorem ipsum dolor sit amet\nconsectetur adipiscing"] * 50,
                           trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = TextTokenizer(tmp_path)
    text = "lorem ipsum dolor sit amet\nconsectetur adipiscing\n" * 45000  # > 2 MiB
    assert tok.engine == "tokenizers"
    assert tok.count(text) == len(hf.encode(text, add_special_tokens=False).ids)


def test_a_json_file_that_is_no_tokenizer_is_refused_by_name(tmp_path):
    for body in ("{}", '{"architectures": ["Glm4vForConditionalGeneration"]}'):
        (tmp_path / "tokenizer.json").write_text(body)
        with pytest.raises(ValueError, match="is not a valid tokenizer.json"):
            TextTokenizer(tmp_path / "tokenizer.json")
