"""Each PRM adapter against a plain per-step reference written from its authors' published usage.

The models are tiny and randomly initialised, built locally in each format: the right
architecture class, and tokenizers with the real models' special tokens and chat templates.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

from reasoning_viz.models.loading import load_scorer
from reasoning_viz.models.prm_adapters import QWEN_SYSTEM, LLMJudge, QwenProcessRewardModel, RLHFlowPRM

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Mia has 12 apples. She buys 5 more: 12 + 5 = 17. Is Step 2 correct? Answer Yes or No. "
          "Please reason step by step, and put your final answer within \\boxed{}. Solution so far:"] * 20
QUESTION = "Mia has 12 apples. She buys 5 more apples. She gives 3 away. How many are left?"
PATHS = [["Buys 5 more: 12 + 5 = 17"], ["Buys 5 more: 12 + 5 = 17", "Gives 3: 17 - 3 = 14"],
         ["Buys 5: 12 + 5 = 18", "Gives 3: 18 - 3 = 15", "The answer is \\boxed{15}."]]


def tokenizer(specials: list[str], template: str, bos: str | None, eos: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   chat_template=template)


def llama_tokenizer():
    return tokenizer(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                     LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")


def qwen_tokenizer():
    return tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"], QWEN_TEMPLATE, "<|endoftext|>",
                     "<|im_end|>")


def small(cfg_cls, tok, **extra):
    torch.manual_seed(0)
    return cfg_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **extra)


def test_rlhflow_matches_the_per_step_reference():
    tok = llama_tokenizer()
    model = LlamaForCausalLM(small(LlamaConfig, tok)).eval()
    prm = RLHFlowPRM(model, tok)
    got = prm.score(QUESTION, PATHS)
    plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
    for steps, scores in zip(PATHS, got):
        # RLHF-Reward-Modeling's prm_evaluate.py: one forward per step, the logits at position -3
        want, conversation = [], []
        for k, step in enumerate(steps):
            conversation.append({"content": QUESTION + " " + step if k == 0 else step, "role": "user"})
            conversation.append({"content": "+", "role": "assistant"})
            ids = tok.apply_chat_template(conversation, return_tensors="pt", return_dict=False)
            with torch.no_grad():
                logits = model(ids).logits[:, -3, [plus, minus]]
            want.append(logits.softmax(-1)[0, 0].item())
        assert scores == pytest.approx(want, abs=1e-5)


def test_qwen_prm_matches_the_model_card(tmp_path):
    tok = qwen_tokenizer()
    QwenProcessRewardModel(small(Qwen2Config, tok, num_labels=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prm = load_scorer("qwen-prm", str(tmp_path), torch.device("cpu"))
    got = prm.score(QUESTION, PATHS)
    model = prm.model
    tok = AutoTokenizer.from_pretrained(tmp_path)  # as the model card loads it (the Qwen2 tokenizer class)
    sep = tok.encode("<extra_0>")[0]
    for steps, scores in zip(PATHS, got):
        # the model card: steps joined and ended by <extra_0>; positive-class probability at each one
        messages = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = tok.encode(text, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids)[0], -1) * (ids == sep)[0].unsqueeze(-1)
        want = probs[probs != 0].view(-1, 2)[:, 1].tolist()
        assert len(scores) == len(steps) and scores == pytest.approx(want, abs=1e-5)


def test_skywork_matches_its_inference_code(tmp_path):
    tok = qwen_tokenizer()
    base = Qwen2ForCausalLM(small(Qwen2Config, tok)).eval()
    base.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    head = torch.nn.Linear(32, 1)
    weights = load_file(tmp_path / "model.safetensors")
    weights.update({"v_head.summary.weight": head.weight.detach().clone(),
                    "v_head.summary.bias": head.bias.detach().clone()})
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    prm = load_scorer("skywork", str(tmp_path), torch.device("cpu"))
    got = prm.score(QUESTION, PATHS)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    step_id = tok.encode("\n")[-1]
    for steps, scores in zip(PATHS, got):
        # skywork-o1-prm-inference's prepare_input + derive_step_rewards, with sigmoid(value head)
        ids = tok.encode(tok.bos_token + QUESTION + "\n")
        flags = [0] * len(ids)
        for step in "\n".join(steps).split("\n"):
            step_ids = tok.encode(step) + [step_id]
            ids += step_ids
            flags += [0] * (len(step_ids) - 1) + [1]
        with torch.no_grad():
            hidden = base(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
            rewards = torch.sigmoid(head(hidden).squeeze(-1))[0]
        want = rewards[torch.tensor(flags) == 1].tolist()
        assert scores == pytest.approx(want, abs=1e-5)


def test_llm_judge_reads_yes_against_no():
    tok = qwen_tokenizer()
    model = Qwen2ForCausalLM(small(Qwen2Config, tok)).eval()
    judge = LLMJudge(model, tok)
    got = judge.score(QUESTION, PATHS[1:2])[0]
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    for k, score in enumerate(got):
        text = tok.apply_chat_template(
            [{"role": "system", "content": LLMJudge.SYSTEM},
             {"role": "user", "content": f"Question: {QUESTION}\n\nSolution so far:\n"
              + "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(PATHS[1][: k + 1]))
              + f"\n\nIs Step {k + 1} correct? Answer Yes or No."}], tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            logits = model(torch.tensor([tok.encode(text, add_special_tokens=False)])).logits[0, -1]
        assert score == pytest.approx(logits[[yes, no]].softmax(-1)[0].item(), abs=1e-5)
    before = judge.tokens_scored
    judge.score(QUESTION, PATHS[1:2])  # already judged: served from memory
    assert judge.tokens_scored == before


def test_adapter_out_of_memory_is_one_sentence_and_the_count_is_per_run(monkeypatch):
    """The shared loop: a run's token count starts at zero, and a device out of memory is a sentence."""
    from reasoning_viz.models.generator import OutOfMemory

    tok = llama_tokenizer()
    judge = LLMJudge(LlamaForCausalLM(small(LlamaConfig, tok)).eval(), tok)
    run = judge.for_run()
    run.score(QUESTION, PATHS[:1])
    assert run.tokens_scored == len(judge.prompt_ids(QUESTION, PATHS[0])) and judge.tokens_scored == 0

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(judge.model, "forward", no_memory)
    with pytest.raises(OutOfMemory, match="scoring one path"):
        judge.for_run().score(QUESTION, PATHS[1:2])
