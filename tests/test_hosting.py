"""What a host relies on: allowlists, no remote code from user input, memory checks, OOM recovery."""

import pytest
import torch

from reasoning_viz import service
from reasoning_viz.models import loading, presets
from reasoning_viz.models.generator import OutOfMemory, SamplingParams
from reasoning_viz.models.presets import PRESETS, check_fits, check_model_ref, estimate_memory_gb, trusts_remote_code


def test_typed_ids_need_the_hosts_allowlist(monkeypatch):
    monkeypatch.delenv("RV_ALLOWED_MODELS", raising=False)
    with pytest.raises(ValueError, match="not on this host's list"):
        check_model_ref("someone/evil-model")
    monkeypatch.setenv("RV_ALLOWED_MODELS", "someone/good-model, other/model")
    assert check_model_ref("someone/good-model") == "someone/good-model"
    assert check_model_ref(PRESETS["TinyGSM student + PRM (bundled, CPU)"].policy)  # presets are always allowed
    with pytest.raises(ValueError, match="empty"):
        check_model_ref("  ")


def test_local_paths_only_inside_the_models_folder(monkeypatch, tmp_path):
    inside = tmp_path / "models" / "tiny"
    inside.mkdir(parents=True)
    (inside / "config.json").write_text("{}")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    monkeypatch.delenv("RV_MODELS_DIR", raising=False)
    with pytest.raises(ValueError, match="off on this host"):
        check_model_ref(str(inside))
    monkeypatch.setenv("RV_MODELS_DIR", str(tmp_path / "models"))
    assert check_model_ref(str(inside)) == str(inside.resolve())
    # one message for "outside the folder" and "no model there" (#20 item 13: nothing of the disk leaks)
    for ref in (str(outside), str(inside / ".." / ".." / "elsewhere"), str(tmp_path / "models" / "missing")):
        with pytest.raises(ValueError, match="is not a model folder inside this host's models folder") as err:
            check_model_ref(ref)
        assert str(tmp_path / "models") not in str(err.value).replace(ref, "")


def test_remote_code_only_for_ids_the_host_marked(monkeypatch):
    monkeypatch.delenv("RV_TRUST_REMOTE_CODE", raising=False)
    assert not trusts_remote_code("org/model")
    monkeypatch.setenv("RV_ALLOWED_MODELS", "org/model")  # allowed to load is not trusted to run code
    assert not trusts_remote_code("org/model")
    monkeypatch.setenv("RV_TRUST_REMOTE_CODE", "org/model")
    assert trusts_remote_code("org/model") and not trusts_remote_code("org/other")


def test_a_preset_that_does_not_fit_is_refused(monkeypatch):
    monkeypatch.setattr(presets, "available_memory_gb", lambda device: 4.0)
    monkeypatch.setattr(loading, "pick_device", lambda: torch.device("cpu"))
    with pytest.raises(ValueError, match="needs about 37.0 GB of CPU RAM"):
        loading.load_preset("Qwen2.5-Math-1.5B-Instruct + Qwen2.5-Math-PRM-7B")
    check_fits(PRESETS["TinyGSM student + PRM (bundled, CPU)"].memory_gb, torch.device("cpu"), "it")  # fits


def test_a_typed_model_gets_the_same_memory_check_as_its_preset(monkeypatch):
    """#20 item 8: the same hub pair typed into Custom models skipped the check and started loading."""
    monkeypatch.setattr(presets, "available_memory_gb", lambda device: 4.0)
    monkeypatch.setattr(loading, "pick_device", lambda: torch.device("cpu"))
    with pytest.raises(ValueError, match="needs about 37.0 GB of CPU RAM"):
        service.get_models("", "Qwen/Qwen2.5-Math-1.5B-Instruct", "qwen-prm", "Qwen/Qwen2.5-Math-PRM-7B")
    assert estimate_memory_gb([str(presets.BUNDLED_STUDENT), "calculator"]) == pytest.approx(0.01)


def test_a_local_model_is_estimated_from_its_weight_files(monkeypatch, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2**20)
    assert estimate_memory_gb([str(tmp_path)]) == pytest.approx(2**-10)


def test_out_of_memory_halves_the_batch_then_explains(tiny_models, monkeypatch):
    gen = tiny_models.generator
    real_forward = gen.model.forward
    seen = []

    def forward_with_small_memory(*args, **kwargs):
        rows = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        seen.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(gen.model, "forward", forward_with_small_memory)
    prefix = gen.prompt_ids("Mia has 3 apples.")
    greedy = SamplingParams(temperature=0.0, max_step_tokens=4, ignore_eos=True)
    out = gen.expand([prefix, prefix + [5]], 4, greedy)
    assert [len(children) for children in out] == [4, 4] and max(seen) > 2  # it failed, then fitted
    assert gen.memory_budget_bytes == 1024 * 2**20  # the budget is restored for the next call

    def always_out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gen.model, "forward", always_out_of_memory)
    with pytest.raises(OutOfMemory, match="one sequence at a time"):
        gen.expand([prefix], 2, greedy)


def test_prm_out_of_memory_halves_its_batch(tiny_models, monkeypatch):
    prm = tiny_models.scorer
    prm.reset()
    real = prm._score_batch
    sizes = []

    def small_batches(question, paths):
        sizes.append(len(paths))
        if len(paths) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(question, paths)

    monkeypatch.setattr(prm, "_score_batch", small_batches)
    scores = prm.score("Mia has 3 apples.", [["3 + 1 = 4"]] * 6)
    assert len(scores) == 6 and sizes[0] == 6
    assert sizes[-3:] == [2, 2, 2] and sizes == sorted(sizes, reverse=True)  # halved until it fitted
