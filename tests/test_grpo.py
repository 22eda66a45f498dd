"""GRPO: the clipped token loss by hand, group advantages, dynamic sampling, rewards, one step on a tiny model."""
import contextlib
import json
import threading
import time
import warnings

import pytest
import torch

from glyph_rt.train.grpo import Group, dynamic_sample, group_advantages, grpo_token_loss, score_groups
from glyph_rt.train.rewards import (Judge, RewardSet, cer, f1_score, format_reward, ocr_reward, split_thinking,
                                    verifiable_reward)

from conftest import chat_completion, http_endpoint


def test_loss_by_hand_clips_both_sides():
    ratio = torch.tensor([[1.5, 0.9, 1.1], [0.5, 1.2, 2.0]])
    old = torch.zeros(2, 3)
    logp = ratio.log().requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    s, st = grpo_token_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # row 0 (A=+1): 1.5 clipped to 1.28, 0.9 kept, third token masked; row 1 (A=-1): 0.5 clipped to 0.8,
    # 1.2 kept, 2.0 kept (a negative advantage is never clipped above)
    want = -1.28 - 0.9 + 0.8 + 1.2 + 2.0
    v = s.item()
    assert v == pytest.approx(want, abs=1e-6) and v / 5 == pytest.approx(0.364, abs=1e-6)
    assert st["clipped_high"] == 1 and st["clipped_low"] == 1
    s.backward()
    g = logp.grad
    # clipped tokens pass no gradient; the others get -A * ratio (d ratio / d logp = ratio)
    torch.testing.assert_close(g, torch.tensor([[0.0, -0.9, 0.0], [0.0, 1.2, 2.0]]))


def test_kl_term_k3():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    s0, _ = grpo_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2))
    s, st = grpo_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    d = ref - logp
    k3 = float((torch.exp(d) - d - 1).sum())
    assert float(s0) == 0 and float(s) == pytest.approx(0.1 * k3) and st["kl"] == pytest.approx(k3)


def test_group_advantages():
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    s = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    torch.testing.assert_close(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6))
    assert torch.all(a[1] == 0)


class ScriptedRollout:
    """A Rollout that answers each record with the texts it carries (the interface a vLLM client would fill)."""

    def __init__(self):
        self.calls = []

    def __call__(self, records, n):
        self.calls.append(len(records))
        return [Group(r, [1, 2], torch.zeros(0, 1176), torch.zeros(0, 3, dtype=torch.long),
                      [[5]] * n, list(r["texts"])[:n]) for r in records]


def test_dynamic_sampling_drops_uniform_groups_and_refills():
    right, wrong = "<think>x</think> Paris", "<think>x</think> Rome"
    records = iter([{"answer": "Paris", "texts": [right] * 4},            # all correct: dropped
                    {"answer": "Paris", "texts": [right, wrong, wrong, right]},
                    {"answer": "Paris", "texts": [wrong] * 4},            # all wrong: dropped
                    {"answer": "Paris", "texts": [wrong, right, wrong, wrong]},
                    {"answer": "Paris", "texts": [right, right, right, wrong]}])
    rollout, rewards = ScriptedRollout(), RewardSet({"verifiable": 1.0})

    def draw(k):
        gs = rollout([next(records) for _ in range(k)], 4)
        score_groups(gs, rewards)
        return gs

    kept, st = dynamic_sample(draw, want=3, max_refills=4)
    assert [g.rewards for g in kept] == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]]
    assert st == {"draws": 2, "dropped_groups": 2} and rollout.calls == [3, 2]
    # without refills the batch is what the first draw left
    records = iter([{"answer": "a", "texts": ["a"] * 2}, {"answer": "a", "texts": ["a", "b"]}])
    kept, st = dynamic_sample(draw, want=2, max_refills=0)
    assert len(kept) == 1 and st == {"draws": 1, "dropped_groups": 1}


def test_dynamic_sampling_keeps_ranks_in_step():
    """A rank already full draws one prompt (and keeps nothing) while another rank still needs groups: under FSDP
    every rank must run as many rollouts."""
    rollout, rewards = ScriptedRollout(), RewardSet({"verifiable": 1.0})
    records = iter([{"answer": "a", "texts": ["a", "b"]}, {"answer": "a", "texts": ["a", "c"]},
                    {"answer": "a", "texts": ["b", "a"]}])

    def draw(k):
        gs = rollout([next(records) for _ in range(k)], 2)
        score_groups(gs, rewards)
        return gs

    others = iter([1, 1, 0])  # what the other ranks still need, as an all-reduce of the need would tell
    kept, st = dynamic_sample(draw, want=1, max_refills=4, most=lambda need: max(need, next(others)))
    assert len(kept) == 1 and kept[0].texts == ["a", "b"] and st["draws"] == 2 and rollout.calls == [1, 1]


def test_rewards_on_known_strings():
    assert split_thinking("<think>hmm</think>  42 ") == ("hmm", "42")
    assert split_thinking("42") == (None, "42")
    assert format_reward(["<think>a</think> b", "<think>a</think>", "b", "<think>a</think> b </think>"]) == \
        [1.0, 0.0, 0.0, 0.0]
    r = ["<think>...</think> The Eiffel Tower.", "<think>...</think> a tower in Paris", "eiffel tower"]
    assert verifiable_reward(r, ["Eiffel Tower"] * 3, "exact") == [1.0, 0.0, 1.0]
    assert verifiable_reward(r, ["Eiffel Tower"] * 3, "contains") == [1.0, 0.0, 1.0]
    assert verifiable_reward(["tower in Paris"], ["Eiffel Tower"], "f1")[0] == pytest.approx(f1_score(
        "tower in Paris", "Eiffel Tower")) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert ocr_reward(["hello wrld", "<think>x</think> hello world"], ["hello world"] * 2) == \
        pytest.approx([1 - 1 / 11, 1.0])
    assert cer(["hello wrld", "cat"], ["hello world", "cut"]) == pytest.approx(2 / 14)
    # thoughts with no answer after them score as no answer, not as the answer
    assert split_thinking("<think>The number is 1234567</think>") == (None, "")
    assert verifiable_reward(["<think>The number is 1234567</think>"], ["1234567"], "contains") == [0.0]
    assert ocr_reward(["<think>hello world</think>", " hello world\n"], ["hello world", "\nhello world "]) == [0.0, 1.0]
    # any script's punctuation, NFKC, CJK characters as words; a reference of no words matches only none
    assert verifiable_reward(["北京。", "“Paris”", "cafe\u0301", "Ｐａｒｉｓ"], ["北京", "Paris", "café", "paris"],
                             "exact") == [1.0, 1.0, 1.0, 1.0]
    assert verifiable_reward(["首都是北京"], ["北京"], "f1")[0] == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert verifiable_reward(["anything at all", "!!", ""], ["The"] * 3, "contains") == [0.0, 1.0, 1.0]
    assert verifiable_reward(["concatenate", "a cat sat"], ["cat"] * 2, "contains") == [0.0, 1.0]
    total, parts = RewardSet({"format": 0.5, "ocr": 1.0})(["<think>x</think> abc", "abd"], ["abc", "abc"])
    assert total == pytest.approx([1.5, 2 / 3]) and parts["format"] == [1.0, 0.0]


def test_rewards_read_the_thinking_tags_and_no_other_added_token():
    from tokenizers import AddedToken

    from glyph_rt.models.tiny import GLM_SPECIAL, tiny_tokenizer
    from glyph_rt.train.grpo import reward_hidden_ids

    tok = tiny_tokenizer(special=GLM_SPECIAL + ["<think>", "</think>"])
    tok.add_tokens([AddedToken("<|begin_of_box|>", special=False), AddedToken("<|end_of_box|>", special=False)])
    ids = tok("<think>so</think>\n<|begin_of_box|>Paris<|end_of_box|><|user|>", add_special_tokens=False)["input_ids"]
    hidden = reward_hidden_ids(tok)
    text = tok.decode([t for t in ids if t not in hidden], skip_special_tokens=False)
    assert text == "<think>so</think>\nParis"
    assert verifiable_reward([text], ["paris"], "exact") == [1.0] and format_reward([text]) == [1.0]


def test_llm_judge_over_an_openai_endpoint():
    with judge_server(lambda prompt: "CORRECT" if "Candidate: 1889" in prompt else "INCORRECT") as (url, stats):
        judge = Judge(url, "judge-model", api_key="k")
        got = verifiable_reward(["<think>t</think> 1889", "<think>t</think> 1900"], ["in 1889"] * 2, "judge", judge)
    body = stats["bodies"][0]
    assert got == [1.0, 0.0] and body["model"] == "judge-model" and body["temperature"] == 0.0


@contextlib.contextmanager
def judge_server(reply, latency: float = 0.0):
    """A local OpenAI-compatible chat endpoint answering each request in its own thread: reply(prompt) gives the
    verdict, or an HTTP status to fail with (and a 10 ms Retry-After). Yields (base_url, stats): requests, peak
    requests in flight, the request bodies."""
    stats, lock = {"requests": 0, "in_flight": 0, "peak": 0, "bodies": []}, threading.Lock()

    def respond(raw):
        body = json.loads(raw)
        with lock:
            stats["bodies"].append(body)
            stats["requests"] += 1
            stats["in_flight"] += 1
            stats["peak"] = max(stats["peak"], stats["in_flight"])
        time.sleep(latency)
        with lock:
            stats["in_flight"] -= 1
            got = reply(body["messages"][0]["content"])
        if isinstance(got, int):
            return got, b"", {"Retry-After-Ms": "10"}
        return 200, chat_completion(got, body["model"]), {}

    with http_endpoint(respond) as url:
        yield url, stats


def verdict_of(prompt: str) -> str:
    return "CORRECT" if "Candidate: right" in prompt else "INCORRECT"


def test_llm_judge_sends_requests_concurrently_in_order():
    answers = [f"<think>t</think> {w}" for w in ["right", "wrong"] * 4]
    with judge_server(verdict_of, latency=0.2) as (url, stats):
        t0 = time.perf_counter()
        got = verifiable_reward(answers, ["x"] * 8, "judge", Judge(url, "m", api_key="k"))
        took = time.perf_counter() - t0
        assert got == [1.0, 0.0] * 4 and stats["peak"] == 8 and took < 1.0  # one at a time: 1.6 s
        stats["peak"] = 0
        assert verifiable_reward(answers, ["x"] * 8, "judge", Judge(url, "m", api_key="k", concurrency=3)) == got
        assert stats["peak"] == 3


def test_llm_judge_retries_a_transient_outage_and_names_the_endpoint_when_it_lasts(tmp_path):
    """A burst of 503s shorter than grpo.judge_max_retries does not stop the step; one that outlasts them raises
    JudgeError naming the endpoint."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import TrainConfigError, load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training
    from glyph_rt.train.rewards import JudgeError

    failing = {"left": 8}

    def flaky(prompt):
        if failing["left"] > 0:
            failing["left"] -= 1
            return 503
        return verdict_of(prompt)

    path = make_tiny_checkpoint(tmp_path / "tiny")
    over = [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=4", "data.global_batch=1",
            "data.micro_batch=4", "grpo.max_new_tokens=3", "grpo.rewards={verifiable: 1.0}", "grpo.verifier=judge",
            "grpo.judge_model=m", "grpo.max_refills=0", "grpo.judge_max_retries=5", "tensorboard=false",
            "plot=false", "model.gradient_checkpointing=false", "steps=1", "export=false"]
    with pytest.raises(TrainConfigError, match=r"^grpo.judge_concurrency: 0 must be >= 1"):
        load_config("rl", None, [*over, "grpo.judge_base_url=http://x/v1", "grpo.judge_concurrency=0"])
    with judge_server(flaky) as (url, stats):
        cfg = load_config("rl", None, [*over, f"grpo.judge_base_url={url}"])
        gm = load_for_training(cfg.model, torch.device("cpu"))
        m = GRPOTrainer(cfg, gm, progress=False).fit([{"context": "red fox", "question": "Read.", "answer": "x"}])
        assert failing["left"] == 0 and stats["requests"] == 8 + 4  # the group's 4 requests, 8 of them retried
        assert m["reward_verifiable_mean"] == 0.0 and m["dropped_groups"] == 1
        failing["left"] = 10**6
        with pytest.raises(JudgeError, match=rf"^the judge at {url}/ \(model 'm'\) failed on answer \d after 2 "
                                             r"retries: InternalServerError"):
            verifiable_reward(["a", "b"], ["x"] * 2, "judge", Judge(url, "m", api_key="k", max_retries=2))


def test_number_answers_keep_their_sign_decimal_point_and_fraction_bar():
    """'-5' is not '5', '3.14' not '314', '1/2' not '12'; a sentence's full stop, thousands separators and the
    rest of SQuAD's normalisation go as before. A reference that is a number is scored as its text; one that is
    neither a string nor a number is refused, by its index."""
    assert verifiable_reward(["-5", "314", "12", "1,2", "5.", "x-5"], ["5", "3.14", "1/2", "12", "5", "x5"],
                             "exact") == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert verifiable_reward(["<think>t</think> -5.", "(-5)", "\u22125", "3.14.", "1,000 people",
                              "1 / 2", "2.5/10"], ["-5", "-5", "-5", "3.14", "1000 people", "1 2", "2.5/10"],
                             "exact") == [1.0] * 7
    assert verifiable_reward(["It is -5.", "pi is 3.14, roughly", "a half (1/2)", "1,000,000"],
                             ["-5", "3.14", "1/2", "1000000"], "contains") == [1.0] * 4
    assert verifiable_reward(["It is 5.", "pi is 314"], ["-5", "3.14"], "contains") == [0.0, 0.0]
    assert verifiable_reward(["-5 apples"], ["5 apples"], "f1") == [pytest.approx(0.5)]
    assert verifiable_reward(["42", "<think>t</think> 2.5"], [42, 2.5], "exact") == [1.0, 1.0]
    assert ocr_reward(["42"], [42]) == [1.0]
    with pytest.raises(TypeError, match=r"^references\[1\]: NoneType None; a reference must be a string or a number"):
        verifiable_reward(["a", "b"], ["a", None], "f1")


def test_answer_words_fraction_slashes_case_folding_and_superscripts():
    """NFKC writes '½' as 1 FRACTION SLASH 2 (a symbol): it is '1/2', not '12', and so are the fraction and division
    slashes between digits; '2½' is '2 1/2'. Case folds fully ('STRASSE' is 'straße', 'İ' is 'i') while the marks
    of other scripts stay. A superscript exponent is ^ ('10³' is '10^3' as typed, not '103')."""
    from glyph_rt.train.rewards import answer_words

    assert answer_words("½") == answer_words("1\u20442") == answer_words("1\u22152") == ["1/2"]
    assert answer_words("2½ cups") == ["2", "1/2", "cups"] and answer_words("¾") == ["3/4"]
    assert verifiable_reward(["½", "¾", "2½", "3\u22154"], ["12", "34", "212", "34"], "exact") == [0.0] * 4
    assert verifiable_reward(["½", "2½", "3\u22154", "3\u2215 4"], ["1/2", "2 1/2", "3/4", "3 4"], "exact") == [1.0] * 4
    assert verifiable_reward(["straße", "İstanbul", "ΣΟΦΟΣ"], ["STRASSE", "istanbul", "σοφος"], "exact") == [1.0] * 3
    assert answer_words("ı") == ["ı"] and answer_words("नमस्ते ภาษาไทย café") == ["नमस्ते", "ภาษาไทย", "café"]
    assert answer_words("10³") == answer_words("10^3") == ["10^3"] and answer_words("10⁻¹²") == ["10^-12"]
    assert verifiable_reward(["10³", "x²"], ["103", "x2"], "exact") == [0.0, 1.0]


def test_grpo_step_on_a_tiny_model(tmp_path):
    pytest.importorskip("transformers")
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=4",
                                   "data.global_batch=2", "data.micro_batch=4", "grpo.max_new_tokens=6",
                                   "grpo.rewards={ocr: 1.0, format: 0.5}", "tensorboard=false", "plot=false",
                                   "model.gradient_checkpointing=false", "optim.lr=1e-3", "steps=1", "export=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    before = [p.detach().clone() for p in gm.model.parameters()]
    records = [{"context": f"red fox {i}", "question": "Read the text.", "answer": f"red fox {i}"} for i in range(8)]
    t = GRPOTrainer(cfg, gm, progress=False)
    m = t.fit(records)
    assert t.step == 1 and m["groups"] == 2 and m["response_tokens"] > 0
    for k in ("reward_mean", "reward_std", "reward_ocr_mean", "reward_format_mean", "clip_fraction",
              "dropped_groups", "response_len_mean", "loss", "lr"):
        assert k in m, k
    assert any(not torch.equal(a, b) for a, b in zip(before, gm.model.parameters()))
    assert (tmp_path / "run" / "checkpoints" / "step_00000001").is_dir()
    assert m["updates"] == 1 and m["clip_fraction"] == 0  # one update: the ratio is 1


def test_rl_records_that_end_end_the_run_after_its_last_whole_step(tmp_path):
    """RL records with data.loader.epochs end: the run ends after its last whole step, saved with the records'
    position as of that step, and a warning says so (it used to be a ValueError, "the RL prompts ran out"); records
    that end before the first step are an error naming the step."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.data import RecordStream
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=2",
                                   "data.global_batch=2", "grpo.max_new_tokens=3", "grpo.rewards={ocr: 1.0}",
                                   "grpo.dynamic_sampling=false", "tensorboard=false", "plot=false", "steps=3",
                                   "model.gradient_checkpointing=false", "export=false", "save_every=0",
                                   "data.loader.epochs=1"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    records = [{"context": f"red fox {i}", "question": "Read the text.", "answer": f"red fox {i}"} for i in range(3)]
    t = GRPOTrainer(cfg, gm, progress=False)
    with pytest.warns(UserWarning, match=r"the data ran out in step 2 of 3 \(3 records drawn, 0 of them skipped\): "
                                         "training ends after step 1, which is saved; data.loader.epochs=1"):
        t.fit(RecordStream(records, epochs=1, shuffle=False))
    assert t.step == 1 and t.ran_out
    assert torch.load(t.ckpt.latest() / "rank_0.pt", weights_only=False)["data"]["pos"] == 2
    fresh = GRPOTrainer(load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'fresh'}",
                                                 "data.global_batch=2", "tensorboard=false", "plot=false"]),
                        gm, progress=False)
    with pytest.raises(ValueError, match="the data ran out in step 1 of 500: nothing to train"):
        fresh.fit(records[:1])


def test_grpo_epochs_and_mini_batches_reuse_the_rollout(tmp_path):
    """grpo.epochs x grpo.mini_batches optimizer updates per rollout batch, each against the rollout policy's
    log-probs: after the first update the ratio moves off 1 and the clip bites; the schedule counts rollout steps."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=4",
                                   "data.global_batch=2", "data.micro_batch=2", "grpo.max_new_tokens=6",
                                   "grpo.rewards={ocr: 1.0}", "grpo.epochs=3", "grpo.mini_batches=2",
                                   "tensorboard=false", "plot=false", "model.gradient_checkpointing=false",
                                   "optim.lr=3e-2", "optim.warmup_steps=0", "optim.schedule=cosine",
                                   "optim.min_lr=1e-3", "steps=2", "export=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    records = [{"context": f"red fox {i}", "question": "Read the text.", "answer": f"red fox {i}"} for i in range(8)]
    t = GRPOTrainer(cfg, gm, progress=False)
    m = t.fit(records)
    assert t.step == 2 and m["updates"] == 6 and m["clip_fraction"] > 0
    assert t.scheduler.last_epoch == 2  # once per rollout step, not per update



def test_mini_batches_split_the_sequences_whatever_the_micro_batch(tmp_path):
    """grpo.mini_batches slices a step's sequences, not its micro-batches: the updates are the same whatever
    data.micro_batch (3 mini-batches of 4 sequences were 2 updates of one micro-batch of 2 at micro_batch=2),
    and 4 sequences in a micro-batch of 4 make 4 updates at grpo.mini_batches=6 (it used to make 1, silently) and
    warn once, naming the counts."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.data import RecordStream
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    records = [{"context": f"red fox {i} jumps", "question": "Read the text.", "answer": f"red fox {i} jumps"}
               for i in range(16)]

    def run(name, *over):
        cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / name}", "grpo.group_size=4",
                                       "data.global_batch=1", "grpo.max_new_tokens=4", "grpo.rewards={ocr: 1.0}",
                                       "tensorboard=false", "plot=false", "model.gradient_checkpointing=false",
                                       "optim.lr=1e-2", "optim.grad_clip=0", "optim.eps=1", "export=false",
                                       "save_every=0", *over])  # eps 1: the weights move by ~lr * gradient
        torch.manual_seed(0)
        gm = load_for_training(cfg.model, torch.device("cpu"))
        torch.manual_seed(0)
        t = GRPOTrainer(cfg, gm, progress=False)
        grads, step = [], t.optimizer.step
        t.optimizer.step = lambda *a, **k: grads.append(torch.cat([
            p.grad.flatten() for p in gm.model.parameters() if p.grad is not None])) or step(*a, **k)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            m = t.fit(RecordStream(records, seed=0))
        return m, grads, [str(x.message) for x in w if "mini_batches" in str(x.message)]

    (m1, g1, w1), (m2, g2, w2) = (run(f"mb{mb}", f"data.micro_batch={mb}", "grpo.mini_batches=3", "steps=1")
                                  for mb in (1, 2))  # 1, 1 and 2 sequences an update, in micro-batches of 1 or 2
    assert m1["updates"] == m2["updates"] == len(g1) == len(g2) == 3 and not w1 + w2
    for a, b in zip(g1, g2):  # each update's gradient
        assert a.abs().max() > 1e-2
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    m, _, w = run("six", "data.micro_batch=4", "grpo.mini_batches=6", "steps=2")
    assert m["updates"] == 4 and w == ["grpo.mini_batches=6 but step 1 has 4 sequences to train on (the most on a "
                                       "rank): 4 optimizer updates per pass, not 6; lower grpo.mini_batches or raise "
                                       "data.global_batch or grpo.group_size (warned once)"]


def test_reward_statistics_cover_every_drawn_group(tmp_path, monkeypatch):
    """reward_mean/std are over every group the step drew, the all-correct ones dynamic sampling drops too (a
    policy that gets better shows it); reward_kept_* are the kept groups' alone. The step keeps only the rewards of
    a dropped group, not its pages, and nothing of its groups once it is done."""
    import weakref

    import glyph_rt.train.grpo as G
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    class Scripted:  # record "all": every response right; record "half": 2 of 4 right
        weights = {"verifiable": 1.0}

        def __call__(self, texts, refs):
            r = [1.0] * len(texts) if refs[0] == "all" else [1.0, 0.0] * (len(texts) // 2)
            return r, {"verifiable": r}

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=4",
                                   "data.global_batch=2", "data.micro_batch=4", "grpo.max_new_tokens=4",
                                   "grpo.rewards={verifiable: 1.0}", "grpo.max_refills=4", "tensorboard=false",
                                   "plot=false", "model.gradient_checkpointing=false", "steps=1", "export=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    records = [{"context": "red fox", "question": "Read.", "answer": "all"},
               {"context": "blue sky", "question": "Read.", "answer": "half"},
               {"context": "green sea", "question": "Read.", "answer": "all"},
               {"context": "grey rock", "question": "Read.", "answer": "half"}]
    t = GRPOTrainer(cfg, gm, rewards=Scripted(), progress=False)
    drawn, rollout = [], t.rollout

    def watched(recs, n):
        out = rollout(recs, n)
        drawn.extend(weakref.ref(g) for g in out)
        return out

    t.rollout = watched
    alive = []
    logps = G.token_logps

    def spy_logps(model, batch, *a, **k):  # during the training forwards: the kept groups and the spare alone
        alive.append([(g().record["answer"], g() is t._spare) for g in drawn if g() is not None])
        return logps(model, batch, *a, **k)

    monkeypatch.setattr(G, "token_logps", spy_logps)
    m = t.fit(records)
    assert (m["groups"], m["dropped_groups"], m["draws"]) == (2, 2, 3) and len(drawn) == 4
    assert alive and all(sorted(a) == [("half", False), ("half", True)] for a in alive)
    assert t._drawn == [] and t._spare is None
    assert m["reward_mean"] == pytest.approx(0.75) and m["reward_verifiable_mean"] == pytest.approx(0.75)
    assert m["reward_std"] == pytest.approx(torch.tensor([1.0] * 12 + [0.0] * 4).std().item())
    assert m["reward_kept_mean"] == pytest.approx(0.5)


def test_old_log_probs_are_the_rollout_policys_without_dropout(tmp_path, monkeypatch):
    """The old log-probs (and page embeddings) are taken in eval mode, as the rollout sampled, and the updates in
    train mode; a policy that does not move (lr ~ 0) then has a ratio of exactly 1. rl refuses LoRA dropout,
    which would make the ratio noise."""
    import glyph_rt.train.grpo as G
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import TrainConfigError, load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    over = [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "grpo.group_size=4", "data.global_batch=2",
            "data.micro_batch=4", "grpo.max_new_tokens=6", "grpo.rewards={ocr: 1.0}", "grpo.epochs=2",
            "tensorboard=false", "plot=false", "model.gradient_checkpointing=false", "optim.lr=1e-30",
            "optim.min_lr=0", "steps=1", "export=false", "model.lora.r=8", "model.freeze_vision=true",
            "grpo.dynamic_sampling=false", "optim.grad_clip=0"]
    with pytest.raises(TrainConfigError, match=r"^model.lora.dropout: 0.1 must be 0 for rl"):
        load_config("rl", None, [*over, "model.lora.dropout=0.1"])
    cfg = load_config("rl", None, over)
    torch.manual_seed(0)
    gm = load_for_training(cfg.model, torch.device("cpu"))
    with torch.no_grad():  # a trained adapter (B != 0), as after some steps
        for n, p in gm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    modes, ratios = [], []
    logps, loss = G.token_logps, G.grpo_token_loss

    def spy_logps(model, batch, *a, **k):
        modes.append((torch.is_grad_enabled(), model.training))
        return logps(model, batch, *a, **k)

    def spy_loss(logp, old, adv, mask, *a, **k):
        ratios.append(torch.exp(logp - old)[mask.bool()].detach())
        return loss(logp, old, adv, mask, *a, **k)

    monkeypatch.setattr(G, "token_logps", spy_logps)
    monkeypatch.setattr(G, "grpo_token_loss", spy_loss)
    records = [{"context": f"red fox {i}", "question": "Read the text.", "answer": f"red fox {i}"} for i in range(8)]
    m = GRPOTrainer(cfg, gm, progress=False).fit(records)
    assert m["updates"] == 2 and set(modes) == {(False, False), (True, True)}  # old: eval, no grad; update: train
    assert gm.model.training
    torch.testing.assert_close(ratios[0], torch.ones_like(ratios[0]), rtol=0, atol=1e-5)
    assert m["clip_fraction"] == 0


@pytest.mark.parametrize("arch", ["glm4v", "qwen2_5_vl"])
def test_token_logps_on_response_tokens_equal_full_logits(tmp_path, arch):
    """GRPO's log-probs come from logits made only before response tokens, with each group's pages through the
    vision tower once however many of its responses the batch holds: equal to log_softmax over the full logits of
    the rows each with its own copy of the pages (the placeholder ids the rollout never samples left out, as its
    suppress_tokens does), forward and backward. With the pages' embeddings taken beforehand (page_embeddings) the
    log-probs are the same again."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GlyphRollout, page_embeddings, sequence_batch, token_logps
    from glyph_rt.train.model import base_model, load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny", arch)
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}",
                                   "model.gradient_checkpointing=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    torch.manual_seed(0)
    groups = GlyphRollout(gm, max_new_tokens=5)([{"context": "red fox", "question": "Read the text."},
                                                 {"context": "a much longer line of text here", "question": "Read."}],
                                                2)
    rows = [(groups[0], 0), (groups[1], 0), (groups[0], 1), (groups[1], 1), (groups[1], 0)]
    batch = sequence_batch(rows, gm.image_token_id, gm.tokenizer.pad_token_id, torch.device("cpu"))
    assert len(batch["pixel_values"]) == len(groups[0].pixel_values) + len(groups[1].pixel_values)
    inner = base_model(gm.model).model
    calls = []
    run = inner.get_image_features
    inner.get_image_features = lambda pv, grids, **kw: calls.append(len(grids)) or run(pv, grids, **kw)
    got = token_logps(gm.model, batch, temperature=0.7)
    assert calls == [2]  # the two groups' pages, once each
    mask = batch["resp_mask"][:, 1:]
    (got * mask).sum().backward()
    g1 = [p.grad.clone() for p in gm.model.parameters()]
    gm.model.zero_grad()
    fwd = {k: v for k, v in batch.items() if k not in ("resp_mask", "_groups")}
    fwd["pixel_values"] = torch.cat([g.pixel_values for g, _ in rows])  # every row its own copy
    logits = gm.model(**fwd, use_cache=False).logits[:, :-1].float() / 0.7
    logits[..., GlyphRollout(gm).suppress] = float("-inf")
    want = torch.gather(torch.log_softmax(logits, -1), 2, batch["input_ids"][:, 1:, None]).squeeze(2)
    (want * mask).sum().backward()
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-5, atol=1e-6)
    assert torch.all(got[~mask] == 0) and int(mask.sum()) > 0
    for a, b in zip(g1, [p.grad for p in gm.model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    calls.clear()
    embeds = page_embeddings(gm.model, groups, torch.device("cpu"))
    with torch.no_grad():
        cached = token_logps(gm.model, batch, temperature=0.7, embeds=embeds)
    assert calls == [1, 1]  # page_embeddings' call per group; the forward ran no vision tower
    torch.testing.assert_close(cached, got.detach(), rtol=1e-5, atol=1e-6)


def test_token_logps_are_the_samplers_log_probs(tmp_path):
    """The rollout suppresses the placeholder ids; the loss's log-probs (token_logps, as GRPOTrainer calls it with
    the rollout's `suppress`) leave them out too: the log-probs of the sampled tokens under generate's processed
    scores, to float rounding (a softmax over every id made them differ by ~1e-2 on the tiny model)."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GlyphRollout, sequence_batch, token_logps
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}",
                                   "model.gradient_checkpointing=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    roll = GlyphRollout(gm, max_new_tokens=6, temperature=0.7)
    assert roll.suppress
    bare = roll.generation_config

    def scored():
        c = bare()
        c.output_scores = c.return_dict_in_generate = True
        return c

    roll.generation_config, scores, generate = scored, [], gm.model.generate
    gm.model.generate = lambda *a, **k: (lambda out: scores.append(torch.stack(out.scores, 1)) or out.sequences)(
        generate(*a, **k))
    torch.manual_seed(0)
    groups = roll([{"context": "red fox jumps over the lazy dog", "question": "Read the text."}], 3)
    gm.model.eval()
    for j, ids in enumerate(groups[0].responses):
        sampler = torch.log_softmax(scores[0][j, :len(ids)].float(), -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        batch = sequence_batch([(groups[0], j)], gm.image_token_id, gm.tokenizer.pad_token_id, torch.device("cpu"))
        mask = batch["resp_mask"][0, 1:]
        with torch.no_grad():
            for suppress in (roll.suppress, None):  # None: the model's placeholder ids
                got = token_logps(gm.model, batch, 0.7, suppress=suppress)[0][mask]
                torch.testing.assert_close(got, sampler, rtol=0, atol=1e-5)
            assert (token_logps(gm.model, batch, 0.7, suppress=())[0][mask] - sampler).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["glm4v", "qwen2_5_vl"])
def test_rollout_prefills_each_prompt_once(tmp_path, kind):
    """GlyphRollout prefills each prompt once and copies its KV to the group's n rows: with the same seed, the very
    samples of generate with num_return_sequences (which runs the vision tower and the prefill n times)."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GlyphRollout
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny", kind)
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}",
                                   "model.gradient_checkpointing=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    roll = GlyphRollout(gm, max_new_tokens=8)
    inputs, _, _ = gm.build_inputs(["red fox jumps over the lazy dog " * 6, "blue sky"], ["Read the text.", "Read."])
    gm.model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        want = gm.model.generate(**inputs, do_sample=True, top_k=0, num_return_sequences=3, max_new_tokens=8,
                                 suppress_tokens=roll.suppress)
        torch.manual_seed(0)
        got = roll.sample(inputs, 3)
        # a checkpoint whose generation_config.json sets a repetition penalty, min_p or an n-gram ban (which
        # generate would take for every field its generation_config leaves unset): the rollout's sampler ignores
        # them (the policy loss's log-probs model the temperature and top-p alone)
        own = gm.model.generation_config
        own.repetition_penalty, own.min_p, own.no_repeat_ngram_size = 1.8, 0.9, 1
        torch.manual_seed(0)
        leaky = gm.model.generate(**inputs, do_sample=True, top_k=0, num_return_sequences=3, max_new_tokens=8,
                                  suppress_tokens=roll.suppress)
        torch.manual_seed(0)
        again = roll.sample(inputs, 3)
    assert not torch.equal(leaky, want)  # the settings do change this model's samples
    assert torch.equal(got, want) and torch.equal(again, want)
    assert gm.model.generation_config is own and (own.min_p, own.no_repeat_ngram_size) == (0.9, 1)  # put back


def test_grpo_step_in_bf16_over_fp32_master_weights(tmp_path):
    """model.dtype=bfloat16 on one process, as on a GPU: rollouts, page embeddings, old log-probs, a KL reference
    (loaded in bf16) and LoRA under bf16 autocast over the fp32 trainable weights; the step trains them."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}", "model.dtype=bfloat16",
                                   "model.lora.r=4", "grpo.group_size=4", "data.global_batch=2", "data.micro_batch=2",
                                   "grpo.max_new_tokens=5", "grpo.rewards={ocr: 1.0}", "grpo.epochs=2",
                                   "grpo.kl_coef=0.1", "tensorboard=false", "plot=false", "steps=1", "export=false",
                                   "model.gradient_checkpointing=false", "optim.lr=1e-3"])
    torch.manual_seed(0)
    gm = load_for_training(cfg.model, torch.device("cpu"))
    trainable = [p for p in gm.model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}
    assert {p.dtype for p in gm.model.parameters() if not p.requires_grad} == {torch.bfloat16}
    before = [p.detach().clone() for p in trainable]
    records = [{"context": f"red fox {i}", "question": "Read the text.", "answer": f"red fox {i}"} for i in range(8)]
    t = GRPOTrainer(cfg, gm, progress=False)
    assert next(t.reference.parameters()).dtype == torch.bfloat16
    m = t.fit(records)
    assert m["updates"] == 2 and m["loss"] == m["loss"]  # not NaN
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))


def test_saving_before_the_first_update_leaves_the_optimizer_as_it_was(tmp_path):
    """A GRPO step whose groups are all uniform makes no update; a checkpoint saved then (save_every=1) leaves the
    optimizer without state (DCP's get_state_dict would give Adam a step at lr 0, shrinking the first real update),
    and resuming from it too: the weights after the next step are those of a run that saved nothing."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GRPOTrainer
    from glyph_rt.train.model import load_for_training

    class Scripted:  # "all": every response right (a uniform group, dropped); "half": 2 of 4 right
        weights = {"verifiable": 1.0}

        def __call__(self, texts, refs):
            r = [1.0] * len(texts) if refs[0] == "all" else [1.0, 0.0] * (len(texts) // 2)
            return r, {"verifiable": r}

    class Records:
        def __init__(self):
            self.pos = 0

        def __iter__(self):
            recs = [{"context": c, "question": "Read.", "answer": a}
                    for c, a in [("red fox", "all"), ("blue sky", "all"), ("green sea", "half"), ("grey rock", "half")]]
            while self.pos < len(recs):
                self.pos += 1
                yield recs[self.pos - 1]

        def state_dict(self):
            return {"pos": self.pos}

        def load_state_dict(self, s):
            self.pos = s["pos"]

    path = make_tiny_checkpoint(tmp_path / "tiny")

    def run(out, save_every, steps):
        cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / out}", "grpo.group_size=4",
                                       "data.global_batch=2", "data.micro_batch=4", "grpo.max_new_tokens=4",
                                       "grpo.rewards={verifiable: 1.0}", "grpo.max_refills=0", "optim.lr=1e-3",
                                       "optim.warmup_steps=0", f"steps={steps}", f"save_every={save_every}",
                                       "tensorboard=false", "plot=false", "model.gradient_checkpointing=false",
                                       "export=false"])
        torch.manual_seed(0)
        gm = load_for_training(cfg.model, torch.device("cpu"))
        t = GRPOTrainer(cfg, gm, rewards=Scripted(), progress=False)
        m = t.fit(Records())
        return t, m, [p.detach().clone() for p in gm.model.parameters()]

    t, m, plain = run("plain", 0, 2)
    assert m["updates"] == 1 and float(next(iter(t.optimizer.state.values()))["step"]) == 1
    t, m, saved = run("saved", 1, 1)
    assert m["updates"] == 0 and not t.optimizer.state
    t, m, saved = run("saved", 1, 2)  # resumes from step 1
    assert m["updates"] == 1 and float(next(iter(t.optimizer.state.values()))["step"]) == 1
    assert all(torch.equal(a, b) for a, b in zip(plain, saved))


def test_rollout_keeps_the_pad_ids_the_model_samples(tmp_path):
    """A tokenizer whose pad token is no stop token: the pad ids a response samples are its tokens (generate pads a
    row only after its stop), so each response is its row of generate's output up to its first stop, or whole."""
    from glyph_rt.models.tiny import make_tiny_checkpoint
    from glyph_rt.train.config import load_config
    from glyph_rt.train.grpo import GlyphRollout
    from glyph_rt.train.model import load_for_training

    path = make_tiny_checkpoint(tmp_path / "tiny")
    cfg = load_config("rl", None, [f"model.path={path}", f"out_dir={tmp_path / 'run'}",
                                   "model.gradient_checkpointing=false"])
    gm = load_for_training(cfg.model, torch.device("cpu"))
    pad, stops = 300, gm.prompts.stop_ids
    gm.tokenizer.pad_token = gm.tokenizer.convert_ids_to_tokens(pad)
    assert gm.tokenizer.pad_token_id == pad and pad not in stops

    def likely(module, args, logits):  # pad and the stops sampled often
        logits = logits.clone()
        logits[..., pad] += 4.0
        logits[..., sorted(stops)] += 3.0
        return logits

    gm.model.get_output_embeddings().register_forward_hook(likely)
    roll = GlyphRollout(gm, max_new_tokens=12)
    sampled = []
    sample = roll.sample
    roll.sample = lambda inputs, n: sampled.append((inputs["input_ids"].shape[1], sample(inputs, n))) or \
        sampled[-1][1]
    torch.manual_seed(0)
    n = 8
    groups = roll([{"context": "red fox", "question": "Read."}, {"context": "blue sky", "question": "Read."}], n)
    (P, out), = sampled
    unstopped_pads = 0
    for b, g in enumerate(groups):
        for j, resp in enumerate(g.responses):
            row = out[b * n + j, P:].tolist()
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            assert resp == row[:cut] and all(t == pad for t in row[cut:])
            unstopped_pads += cut == len(row) and pad in resp
    assert unstopped_pads and any(r[-1] in stops for g in groups for r in g.responses)  # both kinds of rows
